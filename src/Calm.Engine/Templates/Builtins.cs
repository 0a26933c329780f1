using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Calm.Engine.Templates;

using Args = List<JValue>;
using Kwargs = List<KeyValuePair<string, JValue>>;

/// <summary>Argument access for builtins: positional or by keyword, with defaults.</summary>
internal static class ArgX
{
    public static JValue? Get(Args a, Kwargs k, int pos, string name)
    {
        if (pos < a.Count) return a[pos];
        foreach (var (kk, v) in k) if (kk == name) return v;
        return null;
    }

    public static string Str(JValue v, string what) => v is JString s ? s.Value
        : throw new TemplateRuntimeError($"{what} must be a string, not {v.TypeName}");

    public static long Int(JValue v, string what) => Ops.AsIndex(v) ?? throw new TemplateRuntimeError($"{what} must be an integer, not {v.TypeName}");

    public static void Max(Args a, int n, string fn)
    {
        if (a.Count > n) throw new TemplateRuntimeError($"{fn}() takes at most {n} argument(s) ({a.Count} given)");
    }
}

/// <summary>The methods a template may call on values: Python str/dict/list read-only methods. Nothing else is reachable.</summary>
internal static class Methods
{
    private static readonly HashSet<string> StrMethods = new(StringComparer.Ordinal)
    {
        "strip", "lstrip", "rstrip", "upper", "lower", "title", "capitalize", "swapcase", "startswith", "endswith", "split",
        "rsplit", "splitlines", "replace", "find", "rfind", "index", "rindex", "count", "join", "isdigit", "isalpha",
        "isalnum", "isspace", "isupper", "islower", "isnumeric", "isdecimal", "removeprefix", "removesuffix", "zfill",
        "center", "ljust", "rjust", "partition", "rpartition",
    };
    private static readonly HashSet<string> DictMethods = new(StringComparer.Ordinal) { "items", "keys", "values", "get" };
    private static readonly HashSet<string> ListMethods = new(StringComparer.Ordinal) { "index", "count" };

    public static bool TryBind(JValue obj, string name, out JValue method)
    {
        bool ok = obj switch
        {
            JString => StrMethods.Contains(name),
            JDict => DictMethods.Contains(name),
            JList => ListMethods.Contains(name),
            _ => false,
        };
        method = ok ? new JCallable(obj.TypeName + "." + name, (it, a, k) => Call(it, obj, name, a, k)) : null!;
        return ok;
    }

    private static JValue Call(Interpreter it, JValue obj, string name, Args a, Kwargs k)
    {
        switch (obj)
        {
            case JString s: return StrMethod(it, s.Value, name, a, k);
            case JDict d:
                switch (name)
                {
                    case "items":
                        return new JList(d.Keys.Select(key => { d.TryGet(key, out var v); return (JValue)new JList(new[] { key, v }, true); }).ToList());
                    case "keys": return new JList(d.Keys.ToList());
                    case "values": return new JList(d.Keys.Select(key => { d.TryGet(key, out var v); return v; }).ToList());
                    case "get":
                    {
                        var key = ArgX.Get(a, k, 0, "key") ?? throw new TemplateRuntimeError("get() needs a key");
                        return d.TryGet(key, out var v) ? v : ArgX.Get(a, k, 1, "default") ?? JNone.Instance;
                    }
                }
                break;
            case JList l:
            {
                var x = ArgX.Get(a, k, 0, "value") ?? throw new TemplateRuntimeError($"{name}() needs an argument");
                if (name == "count") return new JInt(l.Items.Count(i => Ops.PyEquals(i, x)));
                for (int i = 0; i < l.Items.Count; i++) if (Ops.PyEquals(l.Items[i], x)) return new JInt(i);
                throw new TemplateRuntimeError($"{PyText.Repr(x)} is not in list");
            }
        }
        throw new TemplateRuntimeError($"'{obj.TypeName}' object has no method '{name}'");
    }

    internal static bool IsPySpace(char c) => char.IsWhiteSpace(c) || (c >= '\x1c' && c <= '\x1f');

    internal static string PyStrip(string s, JValue? chars, bool left, bool right)
    {
        Func<char, bool> strip = chars is null or JNone ? IsPySpace
            : chars is JString cs ? cs.Value.Contains
            : throw new TemplateRuntimeError("strip arg must be None or str");
        int a = 0, b = s.Length;
        if (left) while (a < b && strip(s[a])) a++;
        if (right) while (b > a && strip(s[b - 1])) b--;
        return s[a..b];
    }

    internal static List<string> PySplit(string s, JValue? sep, long maxsplit)
    {
        var r = new List<string>();
        if (sep is null or JNone)
        {
            int i = 0;
            while (true)
            {
                while (i < s.Length && IsPySpace(s[i])) i++;
                if (i >= s.Length) break;
                if (maxsplit >= 0 && r.Count == maxsplit) { r.Add(s[i..].TrimEnd().Length == 0 ? "" : PyStrip(s[i..], null, false, true)); break; }
                int j = i;
                while (j < s.Length && !IsPySpace(s[j])) j++;
                r.Add(s[i..j]);
                i = j;
            }
            return r;
        }
        string sp = ArgX.Str(sep, "separator");
        if (sp.Length == 0) throw new TemplateRuntimeError("empty separator");
        int start = 0;
        while (maxsplit < 0 || r.Count < maxsplit)
        {
            int idx = s.IndexOf(sp, start, StringComparison.Ordinal);
            if (idx < 0) break;
            r.Add(s[start..idx]);
            start = idx + sp.Length;
        }
        r.Add(s[start..]);
        return r;
    }

    private static bool Affix(string s, JValue arg, bool starts)
    {
        IEnumerable<JValue> options = arg is JList l ? l.Items : new[] { arg };
        foreach (var o in options)
        {
            var p = ArgX.Str(o, starts ? "startswith argument" : "endswith argument");
            if (starts ? s.StartsWith(p, StringComparison.Ordinal) : s.EndsWith(p, StringComparison.Ordinal)) return true;
        }
        return false;
    }

    internal static string PyCapitalize(string s) =>
        s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();

    internal static string PyTitle(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool prevCased = false;
        foreach (char c in s)
        {
            bool cased = char.IsLetter(c);
            sb.Append(cased ? (prevCased ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c)) : c);
            prevCased = cased;
        }
        return sb.ToString();
    }

    private static JValue StrMethod(Interpreter it, string s, string name, Args a, Kwargs k)
    {
        JValue A(int i, string n) => ArgX.Get(a, k, i, n) ?? throw new TemplateRuntimeError($"str.{name}() is missing argument '{n}'");
        switch (name)
        {
            case "strip": return new JString(PyStrip(s, ArgX.Get(a, k, 0, "chars"), true, true));
            case "lstrip": return new JString(PyStrip(s, ArgX.Get(a, k, 0, "chars"), true, false));
            case "rstrip": return new JString(PyStrip(s, ArgX.Get(a, k, 0, "chars"), false, true));
            case "upper": return new JString(s.ToUpperInvariant());
            case "lower": return new JString(s.ToLowerInvariant());
            case "swapcase": return new JString(string.Concat(s.Select(c => char.IsUpper(c) ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c))));
            case "title": return new JString(PyTitle(s));
            case "capitalize": return new JString(PyCapitalize(s));
            case "startswith": return JBool.Of(Affix(s, A(0, "prefix"), true));
            case "endswith": return JBool.Of(Affix(s, A(0, "suffix"), false));
            case "split":
                return new JList(PySplit(s, ArgX.Get(a, k, 0, "sep"), ArgX.Int(ArgX.Get(a, k, 1, "maxsplit") ?? new JInt(-1), "maxsplit"))
                    .Select(x => (JValue)new JString(x)).ToList());
            case "rsplit":
            {
                long max = ArgX.Int(ArgX.Get(a, k, 1, "maxsplit") ?? new JInt(-1), "maxsplit");
                var sep = ArgX.Get(a, k, 0, "sep");
                if (max < 0) return StrMethod(it, s, "split", a, k);
                if (sep is null or JNone) throw new TemplateRuntimeError("rsplit with maxsplit needs a separator in templates");
                string sp = ArgX.Str(sep, "separator");
                var parts = new List<string>();
                int end = s.Length;
                while (parts.Count < max)
                {
                    int idx = end == 0 ? -1 : s.LastIndexOf(sp, end - 1, StringComparison.Ordinal);
                    if (idx < 0 || idx + sp.Length > end) break;
                    parts.Insert(0, s[(idx + sp.Length)..end]);
                    end = idx;
                }
                parts.Insert(0, s[..end]);
                return new JList(parts.Select(x => (JValue)new JString(x)).ToList());
            }
            case "splitlines":
                return new JList(s.Length == 0 ? new List<JValue>()
                    : JinjaLexer.NormalizeNewlines(s).Split('\n').Select(x => (JValue)new JString(x)).ToList());
            case "replace":
            {
                string old = ArgX.Str(A(0, "old"), "old"), nw = ArgX.Str(A(1, "new"), "new");
                long count = ArgX.Int(ArgX.Get(a, k, 2, "count") ?? new JInt(-1), "count");
                return new JString(it.CheckLength(PyReplace(s, old, nw, count)));
            }
            case "find": return new JInt(s.IndexOf(ArgX.Str(A(0, "sub"), "sub"), StringComparison.Ordinal));
            case "rfind": return new JInt(s.LastIndexOf(ArgX.Str(A(0, "sub"), "sub"), StringComparison.Ordinal));
            case "index":
            case "rindex":
            {
                string sub = ArgX.Str(A(0, "sub"), "sub");
                int i = name == "index" ? s.IndexOf(sub, StringComparison.Ordinal) : s.LastIndexOf(sub, StringComparison.Ordinal);
                return i >= 0 ? new JInt(i) : throw new TemplateRuntimeError("substring not found");
            }
            case "count":
            {
                string sub = ArgX.Str(A(0, "sub"), "sub");
                if (sub.Length == 0) return new JInt(Runes.Length(s) + 1);
                int n = 0;
                for (int i = s.IndexOf(sub, StringComparison.Ordinal); i >= 0; i = s.IndexOf(sub, i + sub.Length, StringComparison.Ordinal)) n++;
                return new JInt(n);
            }
            case "join":
                return new JString(it.CheckLength(string.Join(s, Interpreter.Iterate(A(0, "iterable")).Select(x => ArgX.Str(x, "join item")))));
            case "isdigit": case "isnumeric": case "isdecimal": return JBool.Of(s.Length > 0 && s.All(char.IsDigit));
            case "isalpha": return JBool.Of(s.Length > 0 && s.All(char.IsLetter));
            case "isalnum": return JBool.Of(s.Length > 0 && s.All(char.IsLetterOrDigit));
            case "isspace": return JBool.Of(s.Length > 0 && s.All(IsPySpace));
            case "isupper": return JBool.Of(s.Any(char.IsLetter) && !s.Any(char.IsLower));
            case "islower": return JBool.Of(s.Any(char.IsLetter) && !s.Any(char.IsUpper));
            case "removeprefix": { var p = ArgX.Str(A(0, "prefix"), "prefix"); return new JString(s.StartsWith(p, StringComparison.Ordinal) ? s[p.Length..] : s); }
            case "removesuffix": { var p = ArgX.Str(A(0, "suffix"), "suffix"); return new JString(p.Length > 0 && s.EndsWith(p, StringComparison.Ordinal) ? s[..^p.Length] : s); }
            case "zfill":
            case "center":
            case "ljust":
            case "rjust":
            {
                long w = ArgX.Int(A(0, "width"), "width");
                if (w > it.MaxStringChars) throw new TemplateLimitHit($"width {w} exceeds the {it.MaxStringChars}-char limit");
                int pad = (int)Math.Max(0, w - Runes.Length(s));
                char fill = name == "zfill" ? '0' : (ArgX.Get(a, k, 1, "fillchar") is JString fc && fc.Value.Length == 1 ? fc.Value[0] : ' ');
                return new JString(name switch
                {
                    "ljust" => s + new string(fill, pad),
                    "center" => new string(fill, pad / 2 + (int)(pad & w & 1)) + s + new string(fill, pad - (pad / 2 + (int)(pad & w & 1))),
                    _ => new string(fill, pad) + s,
                });
            }
            case "partition":
            case "rpartition":
            {
                string sep = ArgX.Str(A(0, "sep"), "sep");
                int i = name == "partition" ? s.IndexOf(sep, StringComparison.Ordinal) : s.LastIndexOf(sep, StringComparison.Ordinal);
                JValue S(string x) => new JString(x);
                if (i < 0) return name == "partition" ? new JList(new[] { S(s), S(""), S("") }, true) : new JList(new[] { S(""), S(""), S(s) }, true);
                return new JList(new[] { S(s[..i]), S(sep), S(s[(i + sep.Length)..]) }, true);
            }
        }
        throw new TemplateRuntimeError($"'str' object has no method '{name}'");
    }

    internal static string PyReplace(string s, string old, string nw, long count)
    {
        if (count < 0) return old.Length == 0 ? PyReplaceEmpty(s, nw, long.MaxValue) : s.Replace(old, nw, StringComparison.Ordinal);
        if (old.Length == 0) return PyReplaceEmpty(s, nw, count);
        var sb = new StringBuilder();
        int start = 0;
        for (long n = 0; n < count; n++)
        {
            int i = s.IndexOf(old, start, StringComparison.Ordinal);
            if (i < 0) break;
            sb.Append(s, start, i - start).Append(nw);
            start = i + old.Length;
        }
        return sb.Append(s, start, s.Length - start).ToString();
    }

    private static string PyReplaceEmpty(string s, string nw, long count)
    {
        var sb = new StringBuilder();
        long n = 0;
        foreach (var r in Runes.Of(s))
        {
            if (n++ < count) sb.Append(nw);
            sb.Append(r);
        }
        if (n < count) sb.Append(nw);
        return sb.ToString();
    }
}

internal sealed partial class Interpreter
{
    // ---- tests ----
    internal bool ApplyTest(string name, JValue v, Args a)
    {
        JValue Arg0() => a.Count > 0 ? a[0] : throw new TemplateRuntimeError($"test '{name}' needs an argument");
        switch (name)
        {
            case "defined": return v is not JUndefined;
            case "undefined": return v is JUndefined;
            case "none": return v is JNone;
            case "boolean": return v is JBool;
            case "true": return v is JBool { Value: true };
            case "false": return v is JBool { Value: false };
            case "integer": return v is JInt;
            case "float": return v is JFloat;
            case "number": return v is JInt or JFloat or JBool;
            case "string": return v is JString;
            case "mapping": return v is JDict;
            case "iterable": return v is JList or JDict or JString or JUndefined;
            case "sequence": return v is JList or JDict or JString or JUndefined;
            case "callable": return v is JCallable;
            case "odd": return (ArgX.Int(v, "odd test value") & 1) == 1;
            case "even": return (ArgX.Int(v, "even test value") & 1) == 0;
            case "divisibleby":
            {
                long d = ArgX.Int(Arg0(), "divisor");
                if (d == 0) throw new TemplateRuntimeError("divisibleby 0");
                return ArgX.Int(v, "divisibleby test value") % d == 0;
            }
            case "eq": case "equalto": case "==": return Ops.PyEquals(v, Arg0());
            case "ne": case "!=": return !Ops.PyEquals(v, Arg0());
            case "lt": case "lessthan": case "<": return Ops.Compare(v, Arg0()) < 0;
            case "le": case "<=": return Ops.Compare(v, Arg0()) <= 0;
            case "gt": case "greaterthan": case ">": return Ops.Compare(v, Arg0()) > 0;
            case "ge": case ">=": return Ops.Compare(v, Arg0()) >= 0;
            case "in": return Ops.Contains(Arg0(), v);
            case "sameas":
            {
                var o = Arg0();
                return (v, o) switch
                {
                    (JNone, JNone) => true,
                    (JBool x, JBool y) => x.Value == y.Value,
                    (JInt x, JInt y) => x.Value == y.Value && x.Value is >= -5 and <= 256,
                    _ => ReferenceEquals(v, o),
                };
            }
            case "lower": return v is JString ls && ls.Value == ls.Value.ToLowerInvariant();
            case "upper": return v is JString us && us.Value == us.Value.ToUpperInvariant();
            case "escaped": return false;
            case "filter": return a.Count > 0 && Arg0() is JString fs && KnownFilters.Contains(fs.Value);
            case "test": return a.Count > 0 && Arg0() is JString ts && KnownTests.Contains(ts.Value);
        }
        throw new TemplateRuntimeError($"no test named '{name}'");
    }

    private static readonly HashSet<string> KnownTests = new(StringComparer.Ordinal)
    {
        "defined", "undefined", "none", "boolean", "true", "false", "integer", "float", "number", "string", "mapping",
        "iterable", "sequence", "callable", "odd", "even", "divisibleby", "eq", "equalto", "==", "ne", "!=", "lt",
        "lessthan", "<", "le", "<=", "gt", "greaterthan", ">", "ge", ">=", "in", "sameas", "lower", "upper", "escaped",
        "filter", "test",
    };

    private static readonly HashSet<string> KnownFilters = new(StringComparer.Ordinal)
    {
        "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape", "first",
        "float", "indent", "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min", "reject",
        "rejectattr", "replace", "reverse", "round", "safe", "select", "selectattr", "slice", "sort", "string", "sum",
        "title", "tojson", "trim", "unique", "upper", "wordcount", "forceescape",
    };

    // ---- filters ----
    internal JValue ApplyFilter(string name, JValue v, Args a, Kwargs k)
    {
        JValue? G(int pos, string n) => ArgX.Get(a, k, pos, n);
        switch (name)
        {
            case "trim": return new JString(Methods.PyStrip(PyText.Str(v), G(0, "chars"), true, true));
            case "upper": return new JString(PyText.Str(v).ToUpperInvariant());
            case "lower": return new JString(PyText.Str(v).ToLowerInvariant());
            case "capitalize": return new JString(Methods.PyCapitalize(PyText.Str(v)));
            case "title":
            {
                var parts = Regex.Split(PyText.Str(v), @"([-\s\(\{\[<]+)");
                return new JString(string.Concat(parts.Where(p => p.Length > 0).Select(p => char.ToUpperInvariant(p[0]) + p[1..].ToLowerInvariant())));
            }
            case "length":
            case "count":
                return v switch
                {
                    JString s => new JInt(Runes.Length(s.Value)),
                    JList l => new JInt(l.Items.Count),
                    JDict d => new JInt(d.Count),
                    JUndefined => new JInt(0),
                    _ => throw new TemplateRuntimeError($"object of type '{v.TypeName}' has no len()"),
                };
            case "string": return new JString(PyText.Str(v));
            case "safe": case "e": case "escape": case "forceescape":
                return name is "safe" ? v : new JString(Escape(PyText.Str(v)));
            case "replace":
            {
                string s = PyText.Str(v);
                string old = PyText.Str(G(0, "old") ?? throw new TemplateRuntimeError("replace needs 'old'"));
                string nw = PyText.Str(G(1, "new") ?? throw new TemplateRuntimeError("replace needs 'new'"));
                long count = ArgX.Int(G(2, "count") ?? new JInt(-1), "count");
                return new JString(CheckLength(Methods.PyReplace(s, old, nw, count)));
            }
            case "join":
            {
                string d = PyText.Str(G(0, "d") ?? JString.Empty);
                var attr = G(1, "attribute");
                var items = Iterate(v).Select(x => attr is null ? x : AttrPath(x, attr));
                return new JString(CheckLength(string.Join(d, items.Select(PyText.Str))));
            }
            case "first":
            {
                foreach (var x in Iterate(v)) return x;
                return new JUndefined("first of an empty sequence");
            }
            case "last":
            {
                var l = Iterate(v).ToList();
                return l.Count > 0 ? l[^1] : new JUndefined("last of an empty sequence");
            }
            case "list": return new JList(Iterate(v).ToList());
            case "reverse":
                if (v is JString rs) return new JString(string.Concat(Runes.Of(rs.Value).Reverse()));
                return new JList(Iterate(v).Reverse().ToList());
            case "items":
                if (v is JUndefined) return new JList(new List<JValue>());
                if (v is not JDict) throw new TemplateRuntimeError($"items filter expects a mapping, got {v.TypeName}");
                return CallValue(GetAttr(v, "items"), new(), new());
            case "default":
            case "d":
            {
                bool boolean = G(1, "boolean")?.Truthy ?? false;
                var def = G(0, "default_value") ?? JString.Empty;
                return v is JUndefined || (boolean && !v.Truthy) ? def : v;
            }
            case "tojson":
            {
                bool ascii = G(0, "ensure_ascii")?.Truthy ?? false;
                var ind = G(1, "indent");
                int? indent = ind is null or JNone ? null : (int)ArgX.Int(ind, "indent");
                var seps = G(2, "separators");
                string? itemSep = null, keySep = null;
                if (seps is JList sl && sl.Items.Count == 2)
                {
                    itemSep = ArgX.Str(sl.Items[0], "separator");
                    keySep = ArgX.Str(sl.Items[1], "separator");
                }
                bool sortKeys = G(3, "sort_keys")?.Truthy ?? false;
                return new JString(CheckLength(PyText.Json(v, ascii, indent, itemSep, keySep, sortKeys)));
            }
            case "int":
            {
                var def = G(0, "default") ?? new JInt(0);
                switch (v)
                {
                    case JInt: return v;
                    case JBool b: return new JInt(b.Value ? 1 : 0);
                    case JFloat f: return double.IsFinite(f.Value) ? new JInt((long)Math.Truncate(f.Value)) : def;
                    case JString s:
                        if (long.TryParse(s.Value.Trim().Replace("_", ""), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var iv)) return new JInt(iv);
                        if (double.TryParse(s.Value.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var dv) && double.IsFinite(dv)) return new JInt((long)Math.Truncate(dv));
                        return def;
                    default: return def;
                }
            }
            case "float":
            {
                var def = G(0, "default") ?? new JFloat(0);
                return v switch
                {
                    JFloat => v,
                    JInt i => new JFloat(i.Value),
                    JBool b => new JFloat(b.Value ? 1 : 0),
                    JString s when double.TryParse(s.Value.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var dv) => new JFloat(dv),
                    _ => def,
                };
            }
            case "abs":
                return v switch
                {
                    JInt i => i.Value == long.MinValue ? throw new TemplateRuntimeError("integer overflow") : new JInt(Math.Abs(i.Value)),
                    JFloat f => new JFloat(Math.Abs(f.Value)),
                    JBool b => new JInt(b.Value ? 1 : 0),
                    _ => throw new TemplateRuntimeError($"bad operand type for abs(): '{v.TypeName}'"),
                };
            case "round":
            {
                long prec = ArgX.Int(G(0, "precision") ?? new JInt(0), "precision");
                string method = G(1, "method") is JString ms ? ms.Value : "common";
                double x = v is JInt ri ? ri.Value : v is JFloat rf ? rf.Value : throw new TemplateRuntimeError("round expects a number");
                double m = Math.Pow(10, prec);
                double r = method switch
                {
                    "common" => prec is >= 0 and <= 15 ? Math.Round(x, (int)prec, MidpointRounding.ToEven) : Math.Round(x * m, MidpointRounding.ToEven) / m,
                    "ceil" => Math.Ceiling(x * m) / m,
                    "floor" => Math.Floor(x * m) / m,
                    _ => throw new TemplateRuntimeError("round method must be 'common', 'ceil' or 'floor'"),
                };
                return new JFloat(r);
            }
            case "selectattr":
            case "rejectattr":
            case "select":
            case "reject":
            {
                bool byAttr = name.EndsWith("attr", StringComparison.Ordinal);
                bool keep = name.StartsWith("select", StringComparison.Ordinal);
                int off = byAttr ? 1 : 0;
                JValue? attr = byAttr ? (a.Count > 0 ? a[0] : throw new TemplateRuntimeError($"{name} needs an attribute name")) : null;
                string? test = a.Count > off ? ArgX.Str(a[off], "test name") : null;
                var testArgs = a.Skip(off + 1).ToList();
                var r = new List<JValue>();
                foreach (var item in Iterate(v))
                {
                    CountIteration();
                    var x = attr is null ? item : AttrPath(item, attr);
                    bool ok = test is null ? x.Truthy : ApplyTest(test, x, testArgs);
                    if (ok == keep) r.Add(item);
                }
                return new JList(r);
            }
            case "map":
            {
                var r = new List<JValue>();
                var attr = k.FirstOrDefault(p => p.Key == "attribute").Value;
                var def = k.FirstOrDefault(p => p.Key == "default").Value;
                foreach (var item in Iterate(v))
                {
                    CountIteration();
                    if (attr is not null)
                    {
                        var x = AttrPath(item, attr);
                        r.Add(x is JUndefined && def is not null ? def : x);
                    }
                    else
                    {
                        if (a.Count == 0) throw new TemplateRuntimeError("map needs a filter name or attribute=");
                        r.Add(ApplyFilter(ArgX.Str(a[0], "filter name"), item, a.Skip(1).ToList(), k));
                    }
                }
                return new JList(r);
            }
            case "attr": return GetAttr(v, ArgX.Str(G(0, "name") ?? JString.Empty, "attribute name"));
            case "unique":
            {
                var r = new List<JValue>();
                var attr = G(1, "attribute");
                foreach (var item in Iterate(v))
                {
                    var key = attr is null ? item : AttrPath(item, attr);
                    if (!r.Any(x => Ops.PyEquals(attr is null ? x : AttrPath(x, attr), key))) r.Add(item);
                }
                return new JList(r);
            }
            case "sort":
            {
                bool reverse = G(0, "reverse")?.Truthy ?? false;
                bool cs = G(1, "case_sensitive")?.Truthy ?? false;
                var attr = G(2, "attribute");
                var items = Iterate(v).ToList();
                JValue Key(JValue x)
                {
                    var kx = attr is null ? x : AttrPath(x, attr);
                    return !cs && kx is JString s ? new JString(s.Value.ToLowerInvariant()) : kx;
                }
                var sorted = items.Select((x, i) => (x, i)).OrderBy(p => Key(p.x), Comparer<JValue>.Create(Ops.Compare)).ThenBy(p => p.i).Select(p => p.x).ToList();
                if (reverse) sorted.Reverse();
                return new JList(sorted);
            }
            case "dictsort":
            {
                if (v is not JDict d) throw new TemplateRuntimeError("dictsort expects a mapping");
                bool cs = G(0, "case_sensitive")?.Truthy ?? false;
                string by = G(1, "by") is JString bs ? bs.Value : "key";
                bool reverse = G(2, "reverse")?.Truthy ?? false;
                var pairs = d.Keys.Select(key => { d.TryGet(key, out var val); return (key, val); }).ToList();
                JValue Key((JValue key, JValue val) p)
                {
                    var kx = by == "value" ? p.val : p.key;
                    return !cs && kx is JString s ? new JString(s.Value.ToLowerInvariant()) : kx;
                }
                var sorted = pairs.OrderBy(Key, Comparer<JValue>.Create(Ops.Compare)).ToList();
                if (reverse) sorted.Reverse();
                return new JList(sorted.Select(p => (JValue)new JList(new[] { p.key, p.val }, true)).ToList());
            }
            case "min":
            case "max":
            {
                var items = Iterate(v).ToList();
                if (items.Count == 0) return new JUndefined($"{name} of an empty sequence");
                var attr = G(1, "attribute");
                bool cs = G(0, "case_sensitive")?.Truthy ?? false;
                JValue Key(JValue x)
                {
                    var kx = attr is null ? x : AttrPath(x, attr);
                    return !cs && kx is JString s ? new JString(s.Value.ToLowerInvariant()) : kx;
                }
                var best = items[0];
                foreach (var x in items.Skip(1))
                {
                    int c = Ops.Compare(Key(x), Key(best));
                    if (name == "min" ? c < 0 : c > 0) best = x;
                }
                return best;
            }
            case "sum":
            {
                var attr = G(0, "attribute");
                JValue total = G(1, "start") ?? new JInt(0);
                foreach (var x in Iterate(v)) total = Ops.Binary("+", total, attr is null ? x : AttrPath(x, attr), this);
                return total;
            }
            case "batch":
            case "slice":
            {
                long n = ArgX.Int(G(0, name == "batch" ? "linecount" : "slices") ?? throw new TemplateRuntimeError($"{name} needs a size"), "size");
                if (n <= 0) throw new TemplateRuntimeError($"{name} size must be positive");
                var items = Iterate(v).ToList();
                var r = new List<JValue>();
                if (name == "batch")
                    for (int i = 0; i < items.Count; i += (int)Math.Min(n, int.MaxValue)) r.Add(new JList(items.Skip(i).Take((int)n).ToList()));
                else
                {
                    int per = items.Count / (int)n, extra = items.Count % (int)n, pos = 0;
                    for (int i = 0; i < n; i++)
                    {
                        int len = per + (i < extra ? 1 : 0);
                        r.Add(new JList(items.Skip(pos).Take(len).ToList()));
                        pos += len;
                    }
                }
                return new JList(r);
            }
            case "indent":
            {
                var w = G(0, "width") ?? new JInt(4);
                string ind = w is JString ws ? ws.Value : new string(' ', (int)Math.Clamp(ArgX.Int(w, "width"), 0, 1000));
                bool first = G(1, "first")?.Truthy ?? false;
                bool blank = G(2, "blank")?.Truthy ?? false;
                var lines = PyText.Str(v).Split('\n');
                var sb = new StringBuilder();
                for (int i = 0; i < lines.Length; i++)
                {
                    if (i > 0) sb.Append('\n');
                    bool doIt = (i > 0 || first) && (blank || lines[i].Length > 0);
                    if (doIt) sb.Append(ind);
                    sb.Append(lines[i]);
                }
                return new JString(CheckLength(sb.ToString()));
            }
            case "center":
            {
                long w = ArgX.Int(G(0, "width") ?? new JInt(80), "width");
                return CallValue(GetAttr(new JString(PyText.Str(v)), "center"), new() { new JInt(w) }, new());
            }
            case "wordcount": return new JInt(Regex.Matches(PyText.Str(v), @"\w+").Count);
        }
        throw new TemplateRuntimeError($"no filter named '{name}'");
    }

    /// <summary>Attribute path as selectattr/map use it: "a.b" or an integer index.</summary>
    private JValue AttrPath(JValue item, JValue attr)
    {
        if (attr is JInt) return item is JUndefined ? item : GetItem(item, attr);
        var x = item;
        foreach (var part in ArgX.Str(attr, "attribute").Split('.'))
        {
            if (x is JUndefined) return x;
            x = int.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out var ix) ? GetItem(x, new JInt(ix)) : GetItem(x, new JString(part));
        }
        return x;
    }

    private static string Escape(string s) => s.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;")
        .Replace("\"", "&#34;").Replace("'", "&#39;");

    // ---- globals ----
    internal static void AddGlobals(Frame g)
    {
        g.Vars["raise_exception"] = new JCallable("raise_exception", (it, a, k) =>
            throw new TemplateRaised(a.Count > 0 ? PyText.Str(a[0]) : "raise_exception() called"));
        g.Vars["strftime_now"] = new JCallable("strftime_now", (it, a, k) =>
            new JString(Strftime(it.Now(), a.Count > 0 ? ArgX.Str(a[0], "format") : throw new TemplateRuntimeError("strftime_now needs a format"))));
        g.Vars["range"] = new JCallable("range", (it, a, k) =>
        {
            if (a.Count is 0 or > 3) throw new TemplateRuntimeError("range expected 1 to 3 arguments");
            long start = 0, stop, step = 1;
            if (a.Count == 1) stop = ArgX.Int(a[0], "range argument");
            else { start = ArgX.Int(a[0], "range argument"); stop = ArgX.Int(a[1], "range argument"); }
            if (a.Count == 3) step = ArgX.Int(a[2], "range step");
            if (step == 0) throw new TemplateRuntimeError("range() arg 3 must not be zero");
            double count = Math.Max(0, Math.Ceiling(((double)stop - start) / step));
            it.Budget((long)Math.Min(count, long.MaxValue / 2));
            var r = new List<JValue>((int)count);
            for (long i = start; step > 0 ? i < stop : i > stop; i += step) r.Add(new JInt(i));
            return new JList(r);
        });
        g.Vars["namespace"] = new JCallable("namespace", (it, a, k) =>
        {
            var ns = new JNamespace();
            foreach (var d in a)
            {
                if (d is not JDict dd) throw new TemplateRuntimeError("namespace() positional argument must be a dict");
                foreach (var key in dd.Keys) { dd.TryGet(key, out var val); ns.Set(ArgX.Str(key, "namespace key"), val); }
            }
            foreach (var (key, val) in k) ns.Set(key, val);
            return ns;
        });
        g.Vars["dict"] = new JCallable("dict", (it, a, k) =>
        {
            var pairs = new List<KeyValuePair<JValue, JValue>>();
            foreach (var d in a)
            {
                if (d is not JDict dd) throw new TemplateRuntimeError("dict() positional argument must be a dict");
                foreach (var key in dd.Keys) { dd.TryGet(key, out var val); pairs.Add(new(key, val)); }
            }
            foreach (var (key, val) in k) pairs.Add(new(new JString(key), val));
            return new JDict(pairs);
        });
    }

    /// <summary>Python strftime for the directives templates use (C locale).</summary>
    internal static string Strftime(DateTime t, string fmt)
    {
        var ci = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        for (int i = 0; i < fmt.Length; i++)
        {
            if (fmt[i] != '%' || i + 1 >= fmt.Length) { sb.Append(fmt[i]); continue; }
            char c = fmt[++i];
            bool noPad = false;
            if (c == '-' && i + 1 < fmt.Length) { noPad = true; c = fmt[++i]; }
            string P(int v, int w) => noPad ? v.ToString(ci) : v.ToString(new string('0', w), ci);
            sb.Append(c switch
            {
                'd' => P(t.Day, 2),
                'm' => P(t.Month, 2),
                'Y' => t.Year.ToString(ci),
                'y' => P(t.Year % 100, 2),
                'H' => P(t.Hour, 2),
                'I' => P(t.Hour % 12 == 0 ? 12 : t.Hour % 12, 2),
                'M' => P(t.Minute, 2),
                'S' => P(t.Second, 2),
                'p' => t.Hour < 12 ? "AM" : "PM",
                'b' => t.ToString("MMM", ci),
                'B' => t.ToString("MMMM", ci),
                'a' => t.ToString("ddd", ci),
                'A' => t.ToString("dddd", ci),
                'j' => P(t.DayOfYear, 3),
                'e' => t.Day.ToString(ci).PadLeft(2),
                'F' => t.ToString("yyyy-MM-dd", ci),
                'T' => t.ToString("HH:mm:ss", ci),
                'D' => t.ToString("MM/dd/yy", ci),
                'w' => ((int)t.DayOfWeek).ToString(ci),
                '%' => "%",
                _ => "%" + (noPad ? "-" : "") + c,
            });
        }
        return sb.ToString();
    }
}
