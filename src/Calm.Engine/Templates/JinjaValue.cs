using System.Globalization;
using System.Text;

namespace Calm.Engine.Templates;

/// <summary>
/// A value inside the template interpreter. Closed set of immutable kinds (plus the namespace object, whose attributes
/// a template may assign): nothing here wraps a .NET object, so a template cannot reach anything but these values.
/// Semantics follow Python/Jinja2 (truthiness, equality 1 == 1.0 == True, str() and repr() text).
/// </summary>
public abstract class JValue
{
    public abstract bool Truthy { get; }
    /// <summary>Python type name, for error messages.</summary>
    public abstract string TypeName { get; }
    public override string ToString() => PyText.Str(this);
}

public sealed class JUndefined : JValue
{
    /// <summary>What was looked up (for "'x' is undefined" messages).</summary>
    public string Hint { get; }
    public JUndefined(string hint) => Hint = hint;
    public override bool Truthy => false;
    public override string TypeName => "Undefined";
}

public sealed class JNone : JValue
{
    public static readonly JNone Instance = new();
    private JNone() { }
    public override bool Truthy => false;
    public override string TypeName => "NoneType";
}

public sealed class JBool : JValue
{
    public static readonly JBool True = new(true), False = new(false);
    public bool Value { get; }
    private JBool(bool v) => Value = v;
    public static JBool Of(bool v) => v ? True : False;
    public override bool Truthy => Value;
    public override string TypeName => "bool";
}

public sealed class JInt : JValue
{
    public long Value { get; }
    public JInt(long v) => Value = v;
    public override bool Truthy => Value != 0;
    public override string TypeName => "int";
}

public sealed class JFloat : JValue
{
    public double Value { get; }
    public JFloat(double v) => Value = v;
    public override bool Truthy => Value != 0;
    public override string TypeName => "float";
}

public sealed class JString : JValue
{
    public static readonly JString Empty = new("");
    public string Value { get; }
    public JString(string v) => Value = v;
    public override bool Truthy => Value.Length > 0;
    public override string TypeName => "str";
}

/// <summary>List or tuple (the template cannot tell them apart except by repr).</summary>
public sealed class JList : JValue
{
    public IReadOnlyList<JValue> Items { get; }
    public bool IsTuple { get; }
    public JList(IReadOnlyList<JValue> items, bool isTuple = false) { Items = items; IsTuple = isTuple; }
    public override bool Truthy => Items.Count > 0;
    public override string TypeName => IsTuple ? "tuple" : "list";
}

/// <summary>Insertion-ordered mapping (Python dict). Keys are strings, numbers, bools or none.</summary>
public sealed class JDict : JValue
{
    private readonly Dictionary<JValue, JValue> _map;
    public IReadOnlyList<JValue> Keys { get; }

    public JDict(IEnumerable<KeyValuePair<JValue, JValue>> pairs)
    {
        _map = new Dictionary<JValue, JValue>(KeyComparer.Instance);
        var keys = new List<JValue>();
        foreach (var (k, v) in pairs)
        {
            if (!_map.ContainsKey(k)) keys.Add(k);
            _map[k] = v;
        }
        Keys = keys;
    }

    public int Count => Keys.Count;
    public bool TryGet(JValue key, out JValue value) => _map.TryGetValue(key, out value!);
    public bool TryGet(string key, out JValue value) => _map.TryGetValue(new JString(key), out value!);
    public override bool Truthy => Keys.Count > 0;
    public override string TypeName => "dict";

    /// <summary>Hashing/equality that follows Python's for hashable values (1 == 1.0 == True).</summary>
    internal sealed class KeyComparer : IEqualityComparer<JValue>
    {
        public static readonly KeyComparer Instance = new();
        public bool Equals(JValue? x, JValue? y) => x is not null && y is not null && Ops.PyEquals(x, y);
        public int GetHashCode(JValue v) => v switch
        {
            JString s => s.Value.GetHashCode(StringComparison.Ordinal),
            JInt i => i.Value.GetHashCode(),
            JBool b => (b.Value ? 1L : 0L).GetHashCode(),
            JFloat f when f.Value == Math.Floor(f.Value) && Math.Abs(f.Value) < 9e18 => ((long)f.Value).GetHashCode(),
            JFloat f => f.Value.GetHashCode(),
            JNone => 0x5bd1e995,
            _ => throw new TemplateRuntimeError($"unhashable type: '{v.TypeName}'"),
        };
    }
}

/// <summary>The one mutable object: <c>namespace(...)</c>, whose attributes <c>{% set ns.x = ... %}</c> may assign.</summary>
public sealed class JNamespace : JValue
{
    internal readonly Dictionary<string, JValue> Attrs = new(StringComparer.Ordinal);
    internal readonly List<string> Order = new();
    public override bool Truthy => true;
    public override string TypeName => "Namespace";
    internal void Set(string name, JValue v)
    {
        if (!Attrs.ContainsKey(name)) Order.Add(name);
        Attrs[name] = v;
    }
}

/// <summary>Something callable from the template: a macro, a global function or a bound method of a value.</summary>
public sealed class JCallable : JValue
{
    public string Name { get; }
    internal readonly Func<Interpreter, List<JValue>, List<KeyValuePair<string, JValue>>, JValue> Invoke;
    internal JCallable(string name, Func<Interpreter, List<JValue>, List<KeyValuePair<string, JValue>>, JValue> invoke)
    { Name = name; Invoke = invoke; }
    public override bool Truthy => true;
    public override string TypeName => "function";
}

/// <summary>An error raised while evaluating; the interpreter adds the template line and turns it into a CalmException.</summary>
public sealed class TemplateRuntimeError : Exception
{
    public TemplateRuntimeError(string message) : base(message) { }
}

/// <summary>Python's str(), repr() and json.dumps() text for values.</summary>
public static class PyText
{
    public static string Str(JValue v) => v switch
    {
        JString s => s.Value,
        JUndefined => "",
        _ => Repr(v),
    };

    public static string Repr(JValue v)
    {
        var sb = new StringBuilder();
        Repr(v, sb, 0);
        return sb.ToString();
    }

    private static void Repr(JValue v, StringBuilder sb, int depth)
    {
        if (depth > 200) throw new TemplateRuntimeError("value nested too deeply to print");
        switch (v)
        {
            case JUndefined: break;
            case JNone: sb.Append("None"); break;
            case JBool b: sb.Append(b.Value ? "True" : "False"); break;
            case JInt i: sb.Append(i.Value.ToString(CultureInfo.InvariantCulture)); break;
            case JFloat f: sb.Append(FloatRepr(f.Value)); break;
            case JString s: StrRepr(s.Value, sb); break;
            case JList l:
                sb.Append(l.IsTuple ? '(' : '[');
                for (int i = 0; i < l.Items.Count; i++)
                {
                    if (i > 0) sb.Append(", ");
                    Repr(l.Items[i], sb, depth + 1);
                }
                if (l.IsTuple && l.Items.Count == 1) sb.Append(',');
                sb.Append(l.IsTuple ? ')' : ']');
                break;
            case JDict d:
                sb.Append('{');
                for (int i = 0; i < d.Keys.Count; i++)
                {
                    if (i > 0) sb.Append(", ");
                    Repr(d.Keys[i], sb, depth + 1);
                    sb.Append(": ");
                    d.TryGet(d.Keys[i], out var val);
                    Repr(val, sb, depth + 1);
                }
                sb.Append('}');
                break;
            case JNamespace ns:
                sb.Append("<Namespace {");
                for (int i = 0; i < ns.Order.Count; i++)
                {
                    if (i > 0) sb.Append(", ");
                    StrRepr(ns.Order[i], sb);
                    sb.Append(": ");
                    Repr(ns.Attrs[ns.Order[i]], sb, depth + 1);
                }
                sb.Append("}>");
                break;
            case JCallable c: sb.Append("<function ").Append(c.Name).Append('>'); break;
            default: sb.Append(v.TypeName); break;
        }
    }

    /// <summary>Python's repr of a str: single quotes unless the text has ' and no ".</summary>
    public static void StrRepr(string s, StringBuilder sb)
    {
        char q = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        sb.Append(q);
        foreach (char c in s)
        {
            if (c == q || c == '\\') sb.Append('\\').Append(c);
            else if (c == '\n') sb.Append("\\n");
            else if (c == '\r') sb.Append("\\r");
            else if (c == '\t') sb.Append("\\t");
            else if (c < 0x20 || c == 0x7f) sb.Append("\\x").Append(((int)c).ToString("x2"));
            else sb.Append(c);
        }
        sb.Append(q);
    }

    /// <summary>Python's float repr: shortest round-trip digits, "1.0" for integral values, "1e+16" style exponents.</summary>
    public static string FloatRepr(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsPositiveInfinity(d)) return "inf";
        if (double.IsNegativeInfinity(d)) return "-inf";
        if (d == 0) return 1 / d < 0 ? "-0.0" : "0.0";
        string r = d.ToString("R", CultureInfo.InvariantCulture); // shortest round-trip
        // Split into digits and decimal exponent, then format as Python does (exponent form when exp < -4 or >= 16).
        bool neg = r.StartsWith('-');
        if (neg) r = r[1..];
        int exp = 0;
        int e = r.IndexOfAny(new[] { 'E', 'e' });
        if (e >= 0) { exp = int.Parse(r[(e + 1)..], CultureInfo.InvariantCulture); r = r[..e]; }
        int dot = r.IndexOf('.');
        string digits = dot >= 0 ? r.Remove(dot, 1) : r;
        int pointPos = (dot >= 0 ? dot : r.Length) + exp; // position of the decimal point within digits
        int lead = 0;
        while (lead < digits.Length - 1 && digits[lead] == '0') { lead++; pointPos--; }
        digits = digits[lead..].TrimEnd('0');
        if (digits.Length == 0) digits = "0";
        int sciExp = pointPos - 1;
        string body;
        if (sciExp < -4 || sciExp >= 16)
        {
            body = digits.Length == 1 ? digits : digits[0] + "." + digits[1..];
            body += "e" + (sciExp < 0 ? "-" : "+") + Math.Abs(sciExp).ToString("00", CultureInfo.InvariantCulture);
        }
        else if (pointPos <= 0) body = "0." + new string('0', -pointPos) + digits;
        else if (pointPos >= digits.Length) body = digits + new string('0', pointPos - digits.Length) + ".0";
        else body = digits[..pointPos] + "." + digits[pointPos..];
        return neg ? "-" + body : body;
    }

    /// <summary>Python json.dumps(v, ensure_ascii, indent, separators, sort_keys), as transformers' tojson filter calls it.</summary>
    public static string Json(JValue v, bool ensureAscii, int? indent, string? itemSep, string? keySep, bool sortKeys)
    {
        itemSep ??= indent is null ? ", " : ",";
        keySep ??= ": ";
        var sb = new StringBuilder();
        Json(v, sb, ensureAscii, indent, itemSep, keySep, sortKeys, 0);
        return sb.ToString();
    }

    private static void Json(JValue v, StringBuilder sb, bool ascii, int? indent, string itemSep, string keySep, bool sort, int level)
    {
        if (level > 200) throw new TemplateRuntimeError("value nested too deeply for tojson");
        switch (v)
        {
            case JNone: sb.Append("null"); break;
            case JBool b: sb.Append(b.Value ? "true" : "false"); break;
            case JInt i: sb.Append(i.Value.ToString(CultureInfo.InvariantCulture)); break;
            case JFloat f:
                sb.Append(double.IsNaN(f.Value) ? "NaN" : double.IsPositiveInfinity(f.Value) ? "Infinity"
                    : double.IsNegativeInfinity(f.Value) ? "-Infinity" : FloatRepr(f.Value));
                break;
            case JString s: JsonString(s.Value, sb, ascii); break;
            case JList l:
                if (l.Items.Count == 0) { sb.Append("[]"); break; }
                sb.Append('[');
                for (int i = 0; i < l.Items.Count; i++)
                {
                    if (i > 0) sb.Append(itemSep);
                    NewLine(sb, indent, level + 1);
                    Json(l.Items[i], sb, ascii, indent, itemSep, keySep, sort, level + 1);
                }
                NewLine(sb, indent, level);
                sb.Append(']');
                break;
            case JDict d:
                if (d.Count == 0) { sb.Append("{}"); break; }
                IEnumerable<JValue> keys = d.Keys;
                if (sort) keys = d.Keys.OrderBy(k => k, Comparer<JValue>.Create(Ops.Compare)).ToList();
                sb.Append('{');
                bool first = true;
                foreach (var k in keys)
                {
                    if (!first) sb.Append(itemSep);
                    first = false;
                    NewLine(sb, indent, level + 1);
                    string ks = k switch
                    {
                        JString s => s.Value,
                        JBool b => b.Value ? "true" : "false",
                        JNone => "null",
                        JInt or JFloat => Str(k),
                        _ => throw new TemplateRuntimeError($"keys must be str, int, float, bool or None, not {k.TypeName}"),
                    };
                    JsonString(ks, sb, ascii);
                    sb.Append(keySep);
                    d.TryGet(k, out var val);
                    Json(val, sb, ascii, indent, itemSep, keySep, sort, level + 1);
                }
                NewLine(sb, indent, level);
                sb.Append('}');
                break;
            case JUndefined u: throw new TemplateRuntimeError($"'{u.Hint}' is undefined (tojson)");
            default: throw new TemplateRuntimeError($"Object of type {v.TypeName} is not JSON serializable");
        }
    }

    private static void NewLine(StringBuilder sb, int? indent, int level)
    {
        if (indent is null) return;
        sb.Append('\n').Append(' ', indent.Value * level);
    }

    private static void JsonString(string s, StringBuilder sb, bool ascii)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20 || (ascii && c > 0x7e)) sb.Append("\\u").Append(((int)c).ToString("x4"));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}
