using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Calm.Engine.Tokenization;

/// <summary>A tokenizer.json normalizer: text -> text, applied to each piece between added tokens.</summary>
internal abstract class NormalizerStep
{
    public abstract string Apply(string text);
}

internal sealed class UnicodeNormalizerStep(NormalizationForm form) : NormalizerStep
{
    public override string Apply(string text) => text.IsNormalized(form) ? text : text.Normalize(form);
}

internal sealed class ReplaceNormalizerStep(string? pattern, Regex? regex, string content) : NormalizerStep
{
    public override string Apply(string text) => regex != null ? regex.Replace(text, content) : text.Replace(pattern!, content, StringComparison.Ordinal);
}

/// <summary>Prepend: only to a non-empty piece (as Hugging Face does).</summary>
internal sealed class PrependNormalizerStep(string prefix) : NormalizerStep
{
    public override string Apply(string text) => text.Length == 0 ? text : prefix + text;
}

internal sealed class LowercaseNormalizerStep : NormalizerStep
{
    public override string Apply(string text) => text.ToLowerInvariant();
}

internal sealed class StripNormalizerStep(bool left, bool right) : NormalizerStep
{
    public override string Apply(string text) => left && right ? text.Trim() : left ? text.TrimStart() : right ? text.TrimEnd() : text;
}

internal sealed class SequenceNormalizerStep(NormalizerStep[] steps) : NormalizerStep
{
    public override string Apply(string text)
    {
        foreach (var s in steps) text = s.Apply(text);
        return text;
    }
}

/// <summary>One piece of text during pre-tokenization. AtStart: it begins at offset 0 of the original input.</summary>
internal readonly record struct Piece(string Text, bool AtStart);

/// <summary>A tokenizer.json pre-tokenizer: pieces -> finer pieces.</summary>
internal abstract class PreTokenizerStep
{
    public abstract void Apply(List<Piece> input, List<Piece> output);
}

internal enum SplitBehavior { Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous }

/// <summary>
/// Split on a regex or a literal string with Hugging Face's behaviours. .NET regexes see UTF-16, so \p{L} and the like
/// never match a supplementary code point; to match like Hugging Face (which works on code points) the regex runs over a
/// projection of the text where each supplementary code point is one BMP char of the same general category.
/// </summary>
internal sealed class SplitStep(Regex regex, SplitBehavior behavior, bool invert) : PreTokenizerStep
{
    public override void Apply(List<Piece> input, List<Piece> output)
    {
        var spans = new List<(int Start, int End, bool IsMatch)>();
        foreach (var piece in input)
        {
            spans.Clear();
            Segment(piece.Text, spans);
            if (invert) for (int i = 0; i < spans.Count; i++) spans[i] = spans[i] with { IsMatch = !spans[i].IsMatch };
            Emit(piece, spans, output);
        }
    }

    void Segment(string text, List<(int, int, bool)> spans)
    {
        bool hasSurrogate = false;
        foreach (char c in text) if (char.IsSurrogate(c)) { hasSurrogate = true; break; }
        string subject = text;
        int[]? map = null; // projected index -> original index; map[len] = text.Length
        if (hasSurrogate) (subject, map) = Project(text);
        int last = 0;
        for (var m = regex.Match(subject); m.Success; m = m.NextMatch())
        {
            if (m.Length == 0) continue;
            int s = map == null ? m.Index : map[m.Index], e = map == null ? m.Index + m.Length : map[m.Index + m.Length];
            if (s > last) spans.Add((last, s, false));
            spans.Add((s, e, true));
            last = e;
        }
        if (last < text.Length) spans.Add((last, text.Length, false));
    }

    void Emit(Piece piece, List<(int Start, int End, bool IsMatch)> spans, List<Piece> output)
    {
        string t = piece.Text;
        var pending = new List<(int S, int E)>();
        switch (behavior)
        {
            case SplitBehavior.Isolated:
                foreach (var sp in spans) pending.Add((sp.Start, sp.End));
                break;
            case SplitBehavior.Removed:
                foreach (var sp in spans) if (!sp.IsMatch) pending.Add((sp.Start, sp.End));
                break;
            case SplitBehavior.MergedWithPrevious:
                foreach (var sp in spans)
                    if (sp.IsMatch && pending.Count > 0 && pending[^1].E == sp.Start) pending[^1] = (pending[^1].S, sp.End);
                    else pending.Add((sp.Start, sp.End));
                break;
            case SplitBehavior.MergedWithNext:
                bool carry = false;
                foreach (var sp in spans)
                {
                    if (carry) { pending[^1] = (pending[^1].S, sp.End); carry = sp.IsMatch; continue; }
                    pending.Add((sp.Start, sp.End));
                    carry = sp.IsMatch;
                }
                break;
            case SplitBehavior.Contiguous:
                bool lastMatch = false;
                foreach (var sp in spans)
                {
                    if (sp.IsMatch && lastMatch) pending[^1] = (pending[^1].S, sp.End);
                    else pending.Add((sp.Start, sp.End));
                    lastMatch = sp.IsMatch;
                }
                break;
        }
        foreach (var (s, e) in pending)
            if (e > s) output.Add(new Piece(t[s..e], piece.AtStart && s == 0));
    }

    static (string, int[]) Project(string text)
    {
        var sb = new StringBuilder(text.Length);
        var map = new List<int>(text.Length + 1);
        for (int i = 0; i < text.Length; i++)
        {
            map.Add(i);
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                sb.Append(Representative(CharUnicodeInfo.GetUnicodeCategory(char.ConvertToUtf32(text[i], text[i + 1]))));
                i++;
            }
            else sb.Append(text[i]);
        }
        map.Add(text.Length);
        return (sb.ToString(), map.ToArray());
    }

    /// <summary>A BMP char with the given category that none of the known patterns treats specially (not s/t/r/v/m/l/d).</summary>
    static char Representative(UnicodeCategory c) => c switch
    {
        UnicodeCategory.UppercaseLetter => 'B',
        UnicodeCategory.LowercaseLetter => 'b',
        UnicodeCategory.TitlecaseLetter => '\u01C5',
        UnicodeCategory.ModifierLetter => '\u02B0',
        UnicodeCategory.OtherLetter => '\u05D0',
        UnicodeCategory.NonSpacingMark => '\u0300',
        UnicodeCategory.SpacingCombiningMark => '\u0903',
        UnicodeCategory.EnclosingMark => '\u20DD',
        UnicodeCategory.DecimalDigitNumber => '0',
        UnicodeCategory.LetterNumber => '\u2160',
        UnicodeCategory.OtherNumber => '\u00B2',
        _ => '\uE000',
    };
}

/// <summary>ByteLevel pre-tokenizer: optional prefix space, optional GPT-2 split, then bytes -> byte-level chars.</summary>
internal sealed class ByteLevelStep(bool addPrefixSpace, bool useRegex) : PreTokenizerStep
{
    internal const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    static readonly SplitStep Gpt2Split = new(new Regex(Gpt2Pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant), SplitBehavior.Isolated, false);

    public override void Apply(List<Piece> input, List<Piece> output)
    {
        var work = input;
        if (addPrefixSpace)
        {
            work = new List<Piece>(input.Count);
            foreach (var p in input) work.Add(p.Text.StartsWith(' ') ? p : p with { Text = " " + p.Text });
        }
        if (useRegex)
        {
            var split = new List<Piece>();
            Gpt2Split.Apply(work, split);
            work = split;
        }
        foreach (var p in work) output.Add(p with { Text = ByteLevelMap.Encode(p.Text) });
    }
}

/// <summary>Metaspace: spaces -> replacement char, a prefix replacement (always / first piece only / never), optional split.</summary>
internal sealed class MetaspaceStep(char replacement, string prependScheme, bool split) : PreTokenizerStep
{
    public override void Apply(List<Piece> input, List<Piece> output)
    {
        foreach (var p in input)
        {
            string t = p.Text.Replace(' ', replacement);
            bool prepend = prependScheme == "always" || (prependScheme == "first" && p.AtStart);
            if (prepend && !t.StartsWith(replacement)) t = replacement + t;
            if (!split) { if (t.Length > 0) output.Add(p with { Text = t }); continue; }
            int start = 0;
            for (int i = 1; i <= t.Length; i++)
                if (i == t.Length || t[i] == replacement)
                {
                    if (i > start) output.Add(new Piece(t[start..i], p.AtStart && start == 0));
                    start = i;
                }
        }
    }
}

internal sealed class SequencePreTokenizerStep(PreTokenizerStep[] steps) : PreTokenizerStep
{
    public override void Apply(List<Piece> input, List<Piece> output)
    {
        var cur = input;
        foreach (var s in steps)
        {
            var nxt = new List<Piece>(cur.Count * 2);
            s.Apply(cur, nxt);
            cur = nxt;
        }
        output.AddRange(cur);
    }
}
