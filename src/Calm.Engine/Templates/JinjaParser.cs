namespace Calm.Engine.Templates;

// ---- Expression nodes ----
internal abstract record Expr(int Line);
internal sealed record LiteralExpr(JValue Value, int Line) : Expr(Line);
internal sealed record NameExpr(string Name, int Line) : Expr(Line);
internal sealed record AttrExpr(Expr Obj, string Name, int Line) : Expr(Line);
internal sealed record ItemExpr(Expr Obj, Expr Index, int Line) : Expr(Line);
internal sealed record SliceExpr(Expr Obj, Expr? Start, Expr? Stop, Expr? Step, int Line) : Expr(Line);
internal sealed record CallExpr(Expr Callee, List<Expr> Args, List<KeyValuePair<string, Expr>> Kwargs, int Line) : Expr(Line);
internal sealed record FilterExpr(Expr Value, string Name, List<Expr> Args, List<KeyValuePair<string, Expr>> Kwargs, int Line) : Expr(Line);
internal sealed record TestExpr(Expr Value, string Name, List<Expr> Args, bool Negated, int Line) : Expr(Line);
internal sealed record UnaryExpr(string Op, Expr Operand, int Line) : Expr(Line);
internal sealed record BinaryExpr(string Op, Expr Left, Expr Right, int Line) : Expr(Line);
internal sealed record CompareExpr(Expr First, List<(string Op, Expr Right)> Rest, int Line) : Expr(Line);
internal sealed record CondExpr(Expr Cond, Expr Then, Expr? Else, int Line) : Expr(Line);
internal sealed record ListExpr(List<Expr> Items, bool IsTuple, int Line) : Expr(Line);
internal sealed record DictExpr(List<(Expr Key, Expr Value)> Pairs, int Line) : Expr(Line);

// ---- Statement nodes ----
internal abstract record Node(int Line);
internal sealed record TextNode(string Text, int Line) : Node(Line);
internal sealed record OutputNode(Expr Value, int Line) : Node(Line);
internal sealed record IfNode(List<(Expr Cond, List<Node> Body)> Branches, List<Node>? Else, int Line) : Node(Line);
internal sealed record ForNode(List<string> Targets, Expr Iter, Expr? Filter, List<Node> Body, List<Node>? Else, int Line) : Node(Line);
internal sealed record SetNode(List<string> Targets, string? Attr, Expr Value, int Line) : Node(Line);
internal sealed record SetBlockNode(string Target, List<Node> Body, int Line) : Node(Line);
internal sealed record MacroNode(string Name, List<(string Name, Expr? Default)> Params, List<Node> Body, int Line) : Node(Line);
internal sealed record CallBlockNode(CallExpr Call, List<Node> Body, int Line) : Node(Line);
internal sealed record FilterBlockNode(string Filter, List<Expr> Args, List<Node> Body, int Line) : Node(Line);
internal sealed record BreakNode(int Line) : Node(Line);
internal sealed record ContinueNode(int Line) : Node(Line);
/// <summary>transformers' {% generation %} block (assistant-mask tracking): renders its body unchanged.</summary>
internal sealed record GenerationNode(List<Node> Body, int Line) : Node(Line);

/// <summary>Recursive-descent parser for the Jinja2 subset chat templates use, with Jinja2's operator precedence.</summary>
internal sealed class JinjaParser
{
    private const int MaxDepth = 200;
    private readonly List<Piece> _pieces;
    private int _pi;
    private List<Tok> _toks = new();
    private int _ti;
    private int _line;
    private int _depth;

    private JinjaParser(List<Piece> pieces) => _pieces = pieces;

    public static List<Node> Parse(string source)
    {
        var p = new JinjaParser(JinjaLexer.Lex(source));
        var body = p.ParseBody(Array.Empty<string>(), out var end);
        if (end is not null) throw new TemplateSyntaxError($"unexpected '{end}'", p._line);
        return body;
    }

    /// <summary>Parses nodes until a block tag whose keyword is in <paramref name="ends"/>; returns that keyword (tokens after it remain).</summary>
    private List<Node> ParseBody(IReadOnlyCollection<string> ends, out string? endTag)
    {
        if (++_depth > MaxDepth) throw new TemplateSyntaxError("blocks nested too deeply", _line);
        var nodes = new List<Node>();
        endTag = null;
        while (_pi < _pieces.Count)
        {
            var piece = _pieces[_pi++];
            _line = piece.Line;
            switch (piece)
            {
                case TextPiece t: nodes.Add(new TextNode(t.Text, t.Line)); break;
                case VarPiece v:
                    Begin(v.Toks, v.Line);
                    if (AtEnd) throw Error("expected an expression in '{{ }}'");
                    nodes.Add(new OutputNode(ParseTupleOrExpr(), v.Line));
                    ExpectEnd();
                    break;
                case BlockPiece b:
                    Begin(b.Toks, b.Line);
                    if (AtEnd) throw Error("empty block tag '{% %}'");
                    string kw = Peek.Text;
                    if (Peek.Type == TokType.Name && ends.Contains(kw))
                    {
                        _ti++;
                        endTag = kw;
                        _depth--;
                        return nodes;
                    }
                    nodes.Add(ParseStatement(b.Line));
                    break;
            }
        }
        if (ends.Count > 0)
            throw new TemplateSyntaxError($"unexpected end of template: expected one of {string.Join(", ", ends.Select(e => "'" + e + "'"))}", _line);
        _depth--;
        return nodes;
    }

    private Node ParseStatement(int line)
    {
        var kwTok = Next();
        if (kwTok.Type != TokType.Name) throw Error($"expected a statement keyword, got '{kwTok.Text}'");
        switch (kwTok.Text)
        {
            case "if":
            {
                var branches = new List<(Expr, List<Node>)>();
                List<Node>? els = null;
                var cond = ParseTupleOrExpr();
                ExpectEnd();
                while (true)
                {
                    var body = ParseBody(new[] { "elif", "else", "endif" }, out var end);
                    branches.Add((cond, body));
                    if (end == "elif") { cond = ParseTupleOrExpr(); ExpectEnd(); continue; }
                    if (end == "else")
                    {
                        ExpectEnd();
                        els = ParseBody(new[] { "endif" }, out _);
                    }
                    ExpectEnd();
                    break;
                }
                return new IfNode(branches, els, line);
            }
            case "for":
            {
                var targets = new List<string> { ExpectName() };
                while (TryOp(",")) targets.Add(ExpectName());
                ExpectKeyword("in");
                var iter = ParseExpr(noCondExpr: true);
                if (Peek is { Type: TokType.Op, Text: "," })
                {
                    var items = new List<Expr> { iter };
                    while (TryOp(",")) { if (AtEnd || IsKeyword("if") || IsKeyword("recursive")) break; items.Add(ParseExpr(noCondExpr: true)); }
                    iter = new ListExpr(items, true, line);
                }
                Expr? filter = null;
                if (TryKeyword("if")) filter = ParseExpr();
                if (IsKeyword("recursive")) throw Error("recursive for loops are not supported");
                ExpectEnd();
                var body = ParseBody(new[] { "else", "endfor" }, out var end);
                List<Node>? els = null;
                if (end == "else") { ExpectEnd(); els = ParseBody(new[] { "endfor" }, out _); }
                ExpectEnd();
                return new ForNode(targets, iter, filter, body, els, line);
            }
            case "set":
            {
                var first = ExpectName();
                if (TryOp("."))
                {
                    var attr = ExpectName();
                    ExpectOp("=");
                    var v = ParseTupleOrExpr();
                    ExpectEnd();
                    return new SetNode(new List<string> { first }, attr, v, line);
                }
                var targets = new List<string> { first };
                while (TryOp(",")) targets.Add(ExpectName());
                if (AtEnd && targets.Count == 1)
                {
                    var body = ParseBody(new[] { "endset" }, out _);
                    ExpectEnd();
                    return new SetBlockNode(first, body, line);
                }
                ExpectOp("=");
                var value = ParseTupleOrExpr();
                ExpectEnd();
                return new SetNode(targets, null, value, line);
            }
            case "macro":
            {
                var name = ExpectName();
                ExpectOp("(");
                var ps = new List<(string, Expr?)>();
                while (!TryOp(")"))
                {
                    if (ps.Count > 0) ExpectOp(",");
                    if (TryOp(")")) break;
                    var pn = ExpectName();
                    Expr? def = null;
                    if (TryOp("=")) def = ParseExpr();
                    ps.Add((pn, def));
                }
                ExpectEnd();
                var body = ParseBody(new[] { "endmacro" }, out _);
                if (!AtEnd && Peek.Type == TokType.Name && Peek.Text == name) _ti++;
                ExpectEnd();
                return new MacroNode(name, ps, body, line);
            }
            case "call":
            {
                var callee = ParseExpr();
                if (callee is not CallExpr ce) throw Error("'call' block expects a macro call");
                ExpectEnd();
                var body = ParseBody(new[] { "endcall" }, out _);
                ExpectEnd();
                return new CallBlockNode(ce, body, line);
            }
            case "filter":
            {
                var name = ExpectName();
                var args = new List<Expr>();
                if (TryOp("(")) args = ParseArgs(out _);
                ExpectEnd();
                var body = ParseBody(new[] { "endfilter" }, out _);
                ExpectEnd();
                return new FilterBlockNode(name, args, body, line);
            }
            case "generation":
            {
                ExpectEnd();
                var body = ParseBody(new[] { "endgeneration" }, out _);
                ExpectEnd();
                return new GenerationNode(body, line);
            }
            case "break": ExpectEnd(); return new BreakNode(line);
            case "continue": ExpectEnd(); return new ContinueNode(line);
            case "raw": return new TextNode("", line); // the lexer already emitted the raw text
            default:
                throw Error($"unknown or unsupported tag '{kwTok.Text}'" +
                            (kwTok.Text.StartsWith("end", StringComparison.Ordinal) ? " (no matching block is open)" : ""));
        }
    }

    // ---- Expressions (Jinja2 precedence: if-else < or < and < not < compare < + - < ~ < * / // % < ** < unary < postfix/filters) ----

    private Expr ParseTupleOrExpr()
    {
        int line = _line;
        var e = ParseExpr();
        if (Peek is not { Type: TokType.Op, Text: "," }) return e;
        var items = new List<Expr> { e };
        while (TryOp(",")) { if (AtEnd) break; items.Add(ParseExpr()); }
        return new ListExpr(items, true, line);
    }

    private Expr ParseExpr(bool noCondExpr = false)
    {
        if (++_depth > MaxDepth) throw Error("expression nested too deeply");
        var e = ParseOr();
        while (!noCondExpr && TryKeyword("if"))
        {
            var cond = ParseOr();
            Expr? els = TryKeyword("else") ? ParseExpr() : null;
            e = new CondExpr(cond, e, els, e.Line);
        }
        _depth--;
        return e;
    }

    private Expr ParseOr()
    {
        var l = ParseAnd();
        while (TryKeyword("or")) l = new BinaryExpr("or", l, ParseAnd(), l.Line);
        return l;
    }

    private Expr ParseAnd()
    {
        var l = ParseNot();
        while (TryKeyword("and")) l = new BinaryExpr("and", l, ParseNot(), l.Line);
        return l;
    }

    private Expr ParseNot()
    {
        if (TryKeyword("not"))
        {
            if (++_depth > MaxDepth) throw Error("expression nested too deeply");
            var e = new UnaryExpr("not", ParseNot(), _line);
            _depth--;
            return e;
        }
        return ParseCompare();
    }

    private Expr ParseCompare()
    {
        var first = ParseMath1();
        var rest = new List<(string, Expr)>();
        while (true)
        {
            if (Peek.Type == TokType.Op && Peek.Text is "==" or "!=" or "<" or ">" or "<=" or ">=")
            {
                var op = Next().Text;
                rest.Add((op, ParseMath1()));
            }
            else if (TryKeyword("in")) rest.Add(("in", ParseMath1()));
            else if (IsKeyword("not") && PeekAt(1) is { Type: TokType.Name, Text: "in" })
            {
                _ti += 2;
                rest.Add(("notin", ParseMath1()));
            }
            else break;
        }
        return rest.Count == 0 ? first : new CompareExpr(first, rest, first.Line);
    }

    private Expr ParseMath1()
    {
        var l = ParseConcat();
        while (Peek.Type == TokType.Op && Peek.Text is "+" or "-")
        {
            var op = Next().Text;
            l = new BinaryExpr(op, l, ParseConcat(), l.Line);
        }
        return l;
    }

    private Expr ParseConcat()
    {
        var l = ParseMath2();
        while (TryOp("~")) l = new BinaryExpr("~", l, ParseMath2(), l.Line);
        return l;
    }

    private Expr ParseMath2()
    {
        var l = ParsePow();
        while (Peek.Type == TokType.Op && Peek.Text is "*" or "/" or "//" or "%")
        {
            var op = Next().Text;
            l = new BinaryExpr(op, l, ParsePow(), l.Line);
        }
        return l;
    }

    private Expr ParsePow()
    {
        var l = ParseUnary(true);
        while (TryOp("**")) l = new BinaryExpr("**", l, ParseUnary(true), l.Line);
        return l;
    }

    private Expr ParseUnary(bool withFilter)
    {
        if (++_depth > MaxDepth) throw Error("expression nested too deeply");
        Expr e;
        if (Peek is { Type: TokType.Op, Text: "-" or "+" })
        {
            var op = Next().Text;
            e = new UnaryExpr(op, ParseUnary(false), _line);
        }
        else e = ParsePostfix(ParsePrimary());
        if (withFilter) e = ParseFilters(e);
        _depth--;
        return e;
    }

    private Expr ParsePrimary()
    {
        var t = Next();
        switch (t.Type)
        {
            case TokType.Name:
                return t.Text switch
                {
                    "true" or "True" => new LiteralExpr(JBool.True, t.Line),
                    "false" or "False" => new LiteralExpr(JBool.False, t.Line),
                    "none" or "None" => new LiteralExpr(JNone.Instance, t.Line),
                    _ => new NameExpr(t.Text, t.Line),
                };
            case TokType.Str:
            {
                string s = t.Text;
                while (Peek.Type == TokType.Str) s += Next().Text; // adjacent literals concatenate
                return new LiteralExpr(new JString(s), t.Line);
            }
            case TokType.Int: return new LiteralExpr(new JInt(t.Int), t.Line);
            case TokType.Float: return new LiteralExpr(new JFloat(t.Float), t.Line);
            case TokType.Op when t.Text == "(":
            {
                if (TryOp(")")) return new ListExpr(new List<Expr>(), true, t.Line);
                var e = ParseExpr();
                if (TryOp(")")) return e;
                var items = new List<Expr> { e };
                while (TryOp(","))
                {
                    if (Peek is { Type: TokType.Op, Text: ")" }) break;
                    items.Add(ParseExpr());
                }
                ExpectOp(")");
                return new ListExpr(items, true, t.Line);
            }
            case TokType.Op when t.Text == "[":
            {
                var items = new List<Expr>();
                while (!TryOp("]"))
                {
                    if (items.Count > 0) { ExpectOp(","); if (TryOp("]")) break; }
                    items.Add(ParseExpr());
                }
                return new ListExpr(items, false, t.Line);
            }
            case TokType.Op when t.Text == "{":
            {
                var pairs = new List<(Expr, Expr)>();
                while (!TryOp("}"))
                {
                    if (pairs.Count > 0) { ExpectOp(","); if (TryOp("}")) break; }
                    var k = ParseExpr();
                    ExpectOp(":");
                    pairs.Add((k, ParseExpr()));
                }
                return new DictExpr(pairs, t.Line);
            }
            case TokType.End: throw Error("unexpected end of expression");
            default: throw Error($"unexpected '{t.Text}'");
        }
    }

    private Expr ParsePostfix(Expr e)
    {
        while (true)
        {
            if (TryOp("."))
            {
                var t = Next();
                if (t.Type == TokType.Name) e = new AttrExpr(e, t.Text, t.Line);
                else if (t.Type == TokType.Int) e = new ItemExpr(e, new LiteralExpr(new JInt(t.Int), t.Line), t.Line);
                else throw Error($"expected an attribute name after '.', got '{t.Text}'");
            }
            else if (Peek is { Type: TokType.Op, Text: "[" })
            {
                int line = Next().Line;
                Expr? a = null, b = null, c = null;
                bool slice = false;
                if (!(Peek is { Type: TokType.Op, Text: ":" })) a = ParseExpr();
                if (TryOp(":"))
                {
                    slice = true;
                    if (!(Peek is { Type: TokType.Op, Text: "]" or ":" })) b = ParseExpr();
                    if (TryOp(":") && !(Peek is { Type: TokType.Op, Text: "]" })) c = ParseExpr();
                }
                ExpectOp("]");
                e = slice ? new SliceExpr(e, a, b, c, line) : new ItemExpr(e, a ?? throw Error("empty subscript"), line);
            }
            else if (Peek is { Type: TokType.Op, Text: "(" })
            {
                int line = Next().Line;
                var args = ParseArgs(out var kw);
                e = new CallExpr(e, args, kw, line);
            }
            else return e;
        }
    }

    private Expr ParseFilters(Expr e)
    {
        while (true)
        {
            if (TryOp("|"))
            {
                var name = ExpectDottedName();
                var args = new List<Expr>();
                var kw = new List<KeyValuePair<string, Expr>>();
                if (TryOp("(")) args = ParseArgs(out kw);
                e = new FilterExpr(e, name, args, kw, e.Line);
            }
            else if (TryKeyword("is"))
            {
                bool neg = TryKeyword("not");
                var name = ExpectDottedName();
                var args = new List<Expr>();
                if (TryOp("(")) args = ParseArgs(out _);
                else if (!AtEnd && StartsTestArgument()) args.Add(ParsePostfix(ParsePrimary()));
                e = new TestExpr(e, name, args, neg, e.Line);
            }
            else return e;
        }
    }

    /// <summary>Jinja allows one bare argument after a test name ("is divisibleby 3", "is sameas false").</summary>
    private bool StartsTestArgument()
    {
        var t = Peek;
        if (t.Type is TokType.Str or TokType.Int or TokType.Float) return true;
        if (t.Type == TokType.Op) return t.Text is "[" or "{" or "-";
        return t.Type == TokType.Name && t.Text is not ("else" or "or" or "and" or "if" or "is" or "in" or "not" or "recursive");
    }

    private List<Expr> ParseArgs(out List<KeyValuePair<string, Expr>> kwargs)
    {
        var args = new List<Expr>();
        kwargs = new List<KeyValuePair<string, Expr>>();
        bool first = true;
        while (!TryOp(")"))
        {
            if (!first) { ExpectOp(","); if (TryOp(")")) break; }
            first = false;
            if (Peek.Type == TokType.Name && PeekAt(1) is { Type: TokType.Op, Text: "=" })
            {
                var n = Next().Text;
                _ti++;
                kwargs.Add(new(n, ParseExpr()));
            }
            else
            {
                if (kwargs.Count > 0) throw Error("positional argument follows keyword argument");
                args.Add(ParseExpr());
            }
        }
        return args;
    }

    // ---- token helpers ----
    private void Begin(List<Tok> toks, int line) { _toks = toks; _ti = 0; _line = line; }
    private bool AtEnd => _ti >= _toks.Count;
    private Tok Peek => _ti < _toks.Count ? _toks[_ti] : new Tok(TokType.End, "end of tag", _line);
    private Tok PeekAt(int k) => _ti + k < _toks.Count ? _toks[_ti + k] : new Tok(TokType.End, "end of tag", _line);
    private Tok Next()
    {
        var t = Peek;
        if (_ti < _toks.Count) { _ti++; _line = t.Line; }
        return t;
    }
    private bool TryOp(string op)
    {
        if (Peek.Type == TokType.Op && Peek.Text == op) { Next(); return true; }
        return false;
    }
    private void ExpectOp(string op)
    {
        if (!TryOp(op)) throw Error($"expected '{op}', got '{Peek.Text}'");
    }
    private bool IsKeyword(string kw) => Peek.Type == TokType.Name && Peek.Text == kw;
    private bool TryKeyword(string kw)
    {
        if (IsKeyword(kw)) { Next(); return true; }
        return false;
    }
    private void ExpectKeyword(string kw)
    {
        if (!TryKeyword(kw)) throw Error($"expected '{kw}', got '{Peek.Text}'");
    }
    private string ExpectName()
    {
        var t = Next();
        if (t.Type != TokType.Name) throw Error($"expected a name, got '{t.Text}'");
        return t.Text;
    }
    private string ExpectDottedName()
    {
        var n = ExpectName();
        while (Peek is { Type: TokType.Op, Text: "." } && PeekAt(1).Type == TokType.Name) { _ti++; n += "." + Next().Text; }
        return n;
    }
    private void ExpectEnd()
    {
        if (!AtEnd) throw Error($"expected end of tag, got '{Peek.Text}'");
    }
    private TemplateSyntaxError Error(string msg) => new(msg, _line);
}
