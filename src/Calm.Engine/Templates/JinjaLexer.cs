using System.Globalization;
using System.Text;

namespace Calm.Engine.Templates;

internal enum TokType { Name, Str, Int, Float, Op, End }

internal readonly record struct Tok(TokType Type, string Text, int Line, long Int = 0, double Float = 0);

/// <summary>One piece of the template: literal text, a <c>{{ expr }}</c> or a <c>{% stmt %}</c> with its tokens.</summary>
internal abstract record Piece(int Line);
internal sealed record TextPiece(string Text, int Line) : Piece(Line);
internal sealed record VarPiece(List<Tok> Toks, int Line) : Piece(Line);
internal sealed record BlockPiece(List<Tok> Toks, int Line) : Piece(Line);

/// <summary>Template syntax error carrying its line; the public API turns it into Calm.TemplateError.</summary>
internal sealed class TemplateSyntaxError : Exception
{
    public int Line { get; }
    public TemplateSyntaxError(string message, int line) : base(message) => Line = line;
}

/// <summary>
/// Splits a template into pieces the way Jinja2's lexer does with trim_blocks=True, lstrip_blocks=True,
/// keep_trailing_newline=False: newlines normalised to \n, one trailing newline dropped, "-" strips all whitespace on
/// that side, "+" disables lstrip/trim for that tag, and block/comment tags eat the newline after them.
/// </summary>
internal static class JinjaLexer
{
    private static readonly string[] Ops2 = { "//", "**", "==", "!=", "<=", ">=" };
    private const string Ops1 = "+-*/%~<>()[]{},.:|=;";

    public static List<Piece> Lex(string source, bool trimBlocks = true, bool lstripBlocks = true)
    {
        string src = NormalizeNewlines(source);
        var pieces = new List<Piece>();
        int pos = 0, line = 1;
        while (pos < src.Length)
        {
            int idx = FindTagStart(src, pos);
            string text = idx < 0 ? src[pos..] : src[pos..idx];
            int textLine = line;
            if (idx < 0)
            {
                if (text.Length > 0) pieces.Add(new TextPiece(text, textLine));
                break;
            }
            char kind = src[idx + 1]; // '{', '%' or '#'
            char mod = idx + 2 < src.Length ? src[idx + 2] : '\0';
            if (mod == '-') text = text.TrimEnd();
            else if (kind != '{' && mod != '+' && lstripBlocks)
            {
                int lpos = text.LastIndexOf('\n') + 1;
                bool lineStarting = pos == 0 || src[pos - 1] == '\n';
                if ((lpos > 0 || lineStarting) && lpos < text.Length && text[lpos..].All(char.IsWhiteSpace))
                    text = text[..lpos];
            }
            if (text.Length > 0) pieces.Add(new TextPiece(text, textLine));
            line += CountLines(src, pos, idx);
            int tagLine = line;
            int p = idx + 2 + (mod == '-' || mod == '+' ? 1 : 0);
            bool stripAfter, trimAfter;
            if (kind == '#')
            {
                int end = src.IndexOf("#}", p, StringComparison.Ordinal);
                if (end < 0) throw new TemplateSyntaxError("unclosed comment: '{#' has no matching '#}'", tagLine);
                stripAfter = end > p && src[end - 1] == '-';
                trimAfter = trimBlocks && !(end > p && src[end - 1] == '+');
                line += CountLines(src, idx, end + 2);
                pos = end + 2;
            }
            else
            {
                var toks = new List<Tok>();
                p = LexTag(src, p, kind, toks, ref line, out stripAfter);
                trimAfter = kind == '%' && trimBlocks && !(src[p - 3] == '+');
                pos = p;
                if (kind == '{') pieces.Add(new VarPiece(toks, tagLine));
                else
                {
                    pieces.Add(new BlockPiece(toks, tagLine));
                    if (toks.Count == 1 && toks[0] is { Type: TokType.Name, Text: "raw" })
                    {
                        pos = LexRaw(src, pos, pieces, ref line, stripAfter, trimAfter, tagLine);
                        continue;
                    }
                }
            }
            if (stripAfter)
            {
                int q = pos;
                while (q < src.Length && char.IsWhiteSpace(src[q])) q++;
                line += CountLines(src, pos, q);
                pos = q;
            }
            else if (trimAfter && pos < src.Length && src[pos] == '\n') { pos++; line++; }
        }
        return pieces;
    }

    private static int LexRaw(string src, int pos, List<Piece> pieces, ref int line, bool stripAfter, bool trimAfter, int tagLine)
    {
        if (stripAfter) while (pos < src.Length && char.IsWhiteSpace(src[pos])) { if (src[pos] == '\n') line++; pos++; }
        else if (trimAfter && pos < src.Length && src[pos] == '\n') { pos++; line++; }
        // Find {% endraw %} (with optional -/+ modifiers and spaces).
        int search = pos;
        while (true)
        {
            int s = src.IndexOf("{%", search, StringComparison.Ordinal);
            if (s < 0) throw new TemplateSyntaxError("'raw' block is not closed with 'endraw'", tagLine);
            int q = s + 2;
            char mod = q < src.Length ? src[q] : '\0';
            if (mod == '-' || mod == '+') q++;
            while (q < src.Length && char.IsWhiteSpace(src[q])) q++;
            if (string.CompareOrdinal(src, q, "endraw", 0, 6) != 0) { search = s + 2; continue; }
            q += 6;
            while (q < src.Length && char.IsWhiteSpace(src[q])) q++;
            bool strip = q < src.Length && src[q] == '-';
            if (q < src.Length && (src[q] == '-' || src[q] == '+')) q++;
            if (string.CompareOrdinal(src, q, "%}", 0, 2) != 0) { search = s + 2; continue; }
            string text = src[pos..s];
            if (mod == '-') text = text.TrimEnd();
            if (text.Length > 0) pieces.Add(new TextPiece(text, line));
            line += CountLines(src, pos, q + 2);
            pos = q + 2;
            if (strip) while (pos < src.Length && char.IsWhiteSpace(src[pos])) { if (src[pos] == '\n') line++; pos++; }
            else if (trimAfter && pos < src.Length && src[pos] == '\n') { pos++; line++; }
            return pos;
        }
    }

    /// <summary>Python's str.splitlines() separators become \n; one trailing newline is dropped (keep_trailing_newline=False).</summary>
    internal static string NormalizeNewlines(string s)
    {
        var sb = new StringBuilder(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (c == '\r') { if (i + 1 < s.Length && s[i + 1] == '\n') i++; sb.Append('\n'); }
            else if (c is '\v' or '\f' or '\x1c' or '\x1d' or '\x1e' or '\x85' or '\u2028' or '\u2029') sb.Append('\n');
            else sb.Append(c);
        }
        if (sb.Length > 0 && sb[^1] == '\n') sb.Length--;
        return sb.ToString();
    }

    private static int FindTagStart(string src, int from)
    {
        for (int i = src.IndexOf('{', from); i >= 0 && i + 1 < src.Length; i = src.IndexOf('{', i + 1))
        {
            char n = src[i + 1];
            if (n == '{' || n == '%' || n == '#') return i;
        }
        return -1;
    }

    private static int CountLines(string s, int from, int to)
    {
        int n = 0;
        for (int i = from; i < to && i < s.Length; i++) if (s[i] == '\n') n++;
        return n;
    }

    /// <summary>Tokenizes an expression/statement until the closing "}}" or "%}"; returns the position after it.</summary>
    private static int LexTag(string src, int p, char kind, List<Tok> toks, ref int line, out bool stripAfter)
    {
        int depth = 0;
        int startLine = line;
        while (true)
        {
            while (p < src.Length && char.IsWhiteSpace(src[p])) { if (src[p] == '\n') line++; p++; }
            if (p >= src.Length)
                throw new TemplateSyntaxError(kind == '{' ? "unexpected end of template: '{{' is not closed with '}}'"
                    : "unexpected end of template: '{%' is not closed with '%}'", startLine);
            // Closing delimiter (checked before operators so "-}}" is not a minus sign).
            if (kind == '{' && depth == 0)
            {
                if (Match(src, p, "-}}")) { stripAfter = true; return p + 3; }
                if (Match(src, p, "}}")) { stripAfter = false; return p + 2; }
            }
            if (kind == '%')
            {
                if (Match(src, p, "-%}")) { stripAfter = true; return p + 3; }
                if (Match(src, p, "+%}")) { stripAfter = false; return p + 3; }
                if (Match(src, p, "%}")) { stripAfter = false; return p + 2; }
            }
            char c = src[p];
            if (char.IsLetter(c) || c == '_')
            {
                int s = p;
                while (p < src.Length && (char.IsLetterOrDigit(src[p]) || src[p] == '_')) p++;
                toks.Add(new Tok(TokType.Name, src[s..p], line));
            }
            else if (char.IsDigit(c))
            {
                int s = p;
                while (p < src.Length && (char.IsDigit(src[p]) || src[p] == '_')) p++;
                bool isFloat = false;
                if (p + 1 < src.Length && src[p] == '.' && char.IsDigit(src[p + 1]))
                {
                    isFloat = true; p++;
                    while (p < src.Length && (char.IsDigit(src[p]) || src[p] == '_')) p++;
                }
                if (p < src.Length && (src[p] == 'e' || src[p] == 'E'))
                {
                    int q = p + 1;
                    if (q < src.Length && (src[q] == '+' || src[q] == '-')) q++;
                    if (q < src.Length && char.IsDigit(src[q]))
                    {
                        isFloat = true; p = q;
                        while (p < src.Length && char.IsDigit(src[p])) p++;
                    }
                }
                string num = src[s..p].Replace("_", "");
                if (isFloat) toks.Add(new Tok(TokType.Float, num, line, Float: double.Parse(num, CultureInfo.InvariantCulture)));
                else if (long.TryParse(num, NumberStyles.None, CultureInfo.InvariantCulture, out long iv))
                    toks.Add(new Tok(TokType.Int, num, line, Int: iv));
                else throw new TemplateSyntaxError($"integer literal {num} is too large", line);
            }
            else if (c == '\'' || c == '"')
            {
                var sb = new StringBuilder();
                int s = p++;
                while (true)
                {
                    if (p >= src.Length) throw new TemplateSyntaxError("unterminated string literal", line);
                    char d = src[p];
                    if (d == c) { p++; break; }
                    if (d == '\n') line++;
                    if (d == '\\' && p + 1 < src.Length) { p = Escape(src, p, sb, line); continue; }
                    sb.Append(d); p++;
                }
                toks.Add(new Tok(TokType.Str, sb.ToString(), line));
            }
            else
            {
                string? op = null;
                foreach (var o in Ops2) if (Match(src, p, o)) { op = o; break; }
                if (op is null && Ops1.IndexOf(c) >= 0) op = c.ToString();
                if (op is null) throw new TemplateSyntaxError($"unexpected character '{c}'", line);
                if (op is "(" or "[" or "{") depth++;
                if (op is ")" or "]" or "}") depth--;
                toks.Add(new Tok(TokType.Op, op, line));
                p += op.Length;
            }
        }
    }

    /// <summary>Python string escapes (Jinja decodes literals with unicode-escape); unknown escapes stay as written.</summary>
    private static int Escape(string src, int p, StringBuilder sb, int line)
    {
        char e = src[p + 1];
        switch (e)
        {
            case 'n': sb.Append('\n'); return p + 2;
            case 't': sb.Append('\t'); return p + 2;
            case 'r': sb.Append('\r'); return p + 2;
            case '\\': sb.Append('\\'); return p + 2;
            case '\'': sb.Append('\''); return p + 2;
            case '"': sb.Append('"'); return p + 2;
            case 'a': sb.Append('\a'); return p + 2;
            case 'b': sb.Append('\b'); return p + 2;
            case 'f': sb.Append('\f'); return p + 2;
            case 'v': sb.Append('\v'); return p + 2;
            case '\n': return p + 2;
            case 'x': return Hex(src, p, 2, sb, line);
            case 'u': return Hex(src, p, 4, sb, line);
            case 'U': return Hex(src, p, 8, sb, line);
            default:
                if (e >= '0' && e <= '7')
                {
                    int q = p + 1, v = 0;
                    while (q < src.Length && q < p + 4 && src[q] >= '0' && src[q] <= '7') v = v * 8 + (src[q++] - '0');
                    sb.Append((char)v);
                    return q;
                }
                sb.Append('\\').Append(e);
                return p + 2;
        }
    }

    private static int Hex(string src, int p, int n, StringBuilder sb, int line)
    {
        if (p + 2 + n > src.Length || !int.TryParse(src.AsSpan(p + 2, n), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out int v))
            throw new TemplateSyntaxError($"truncated \\{src[p + 1]} escape in string literal", line);
        if (v > 0x10FFFF) throw new TemplateSyntaxError("illegal Unicode character in string literal", line);
        sb.Append(char.ConvertFromUtf32(v >= 0xD800 && v <= 0xDFFF ? 0xFFFD : v));
        return p + 2 + n;
    }

    private static bool Match(string s, int p, string what) => string.CompareOrdinal(s, p, what, 0, what.Length) == 0;
}
