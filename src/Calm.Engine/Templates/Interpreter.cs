using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Calm.Engine.Templates;

/// <summary>Bounds on one render. Exceeding any of them stops the render with Calm.TemplateLimitExceeded.</summary>
public sealed record TemplateLimits
{
    /// <summary>Total loop iterations over the whole render (all loops together), and the largest range() built.</summary>
    public int MaxLoopIterations { get; init; } = 100_000;
    /// <summary>Deepest chain of nested macro calls.</summary>
    public int MaxCallDepth { get; init; } = 64;
    /// <summary>Longest output, and longest string any expression may build, in UTF-16 chars.</summary>
    public int MaxOutputChars { get; init; } = 4_000_000;
    /// <summary>Wall-clock budget for one render.</summary>
    public TimeSpan MaxTime { get; init; } = TimeSpan.FromSeconds(5);

    public static TemplateLimits Default { get; } = new();
}

/// <summary>Thrown by the template's raise_exception(message).</summary>
internal sealed class TemplateRaised : Exception
{
    public TemplateRaised(string message) : base(message) { }
}

/// <summary>A limit was hit; carries which one.</summary>
internal sealed class TemplateLimitHit : Exception
{
    public TemplateLimitHit(string message) : base(message) { }
}

internal sealed class Frame
{
    public readonly Dictionary<string, JValue> Vars = new(StringComparer.Ordinal);
    public readonly Frame? Parent;
    public Frame(Frame? parent) => Parent = parent;

    public bool TryLookup(string name, out JValue v)
    {
        for (var f = this; f is not null; f = f.Parent)
            if (f.Vars.TryGetValue(name, out v!)) return true;
        v = null!;
        return false;
    }
}

/// <summary>Tree-walking evaluator. One instance per render; not thread-safe, holds no state between renders.</summary>
internal sealed partial class Interpreter
{
    private enum Flow { Normal, Break, Continue }

    private readonly TemplateLimits _limits;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly Func<DateTime> _now;
    private long _iterations;
    private long _charsWritten;
    private int _callDepth;
    private int _line;
    private StringBuilder _out = new();

    public Interpreter(TemplateLimits limits, Func<DateTime> now)
    {
        _limits = limits;
        _now = now;
    }

    public int CurrentLine => _line;

    public string Render(List<Node> body, Frame globals)
    {
        var top = new Frame(globals);
        Exec(body, top);
        return _out.ToString();
    }

    // ---- limits ----
    private void Tick()
    {
        if (_clock.Elapsed > _limits.MaxTime)
            throw new TemplateLimitHit($"render took longer than {_limits.MaxTime.TotalSeconds:0.###} s");
    }

    private void CountIteration()
    {
        if (++_iterations > _limits.MaxLoopIterations)
            throw new TemplateLimitHit($"more than {_limits.MaxLoopIterations} loop iterations");
        Tick();
    }

    internal string CheckLength(string s)
    {
        if (s.Length > _limits.MaxOutputChars)
            throw new TemplateLimitHit($"a string of {s.Length} chars exceeds the {_limits.MaxOutputChars}-char limit");
        return s;
    }

    private void Write(string s)
    {
        if (s.Length == 0) return;
        _charsWritten += s.Length;
        if (_charsWritten > _limits.MaxOutputChars || _out.Length + s.Length > _limits.MaxOutputChars)
            throw new TemplateLimitHit($"output longer than {_limits.MaxOutputChars} chars");
        _out.Append(s);
        Tick();
    }

    // ---- statements ----
    private Flow Exec(List<Node> nodes, Frame f)
    {
        foreach (var n in nodes)
        {
            _line = n.Line;
            switch (n)
            {
                case TextNode t: Write(t.Text); break;
                case OutputNode o: Write(PyText.Str(Eval(o.Value, f))); break;
                case IfNode i:
                {
                    List<Node>? chosen = i.Else;
                    foreach (var (cond, body) in i.Branches)
                    {
                        if (Eval(cond, f).Truthy) { chosen = body; break; }
                    }
                    if (chosen is not null)
                    {
                        var flow = Exec(chosen, f);
                        if (flow != Flow.Normal) return flow;
                    }
                    break;
                }
                case ForNode fn: ExecFor(fn, f); break;
                case SetNode s: ExecSet(s, f); break;
                case SetBlockNode sb: f.Vars[sb.Target] = new JString(Capture(sb.Body, new Frame(f))); break;
                case MacroNode m: f.Vars[m.Name] = MakeMacro(m, f); break;
                case CallBlockNode cb:
                {
                    var caller = new JCallable("caller", (it, a, k) => new JString(it.Capture(cb.Body, new Frame(f))));
                    var callee = Eval(cb.Call.Callee, f);
                    var (args, kwargs) = EvalArgs(cb.Call.Args, cb.Call.Kwargs, f);
                    kwargs.Add(new("caller", caller));
                    Write(PyText.Str(CallValue(callee, args, kwargs)));
                    break;
                }
                case FilterBlockNode fb:
                {
                    var text = new JString(Capture(fb.Body, f));
                    var args = fb.Args.Select(a => Eval(a, f)).ToList();
                    Write(PyText.Str(ApplyFilter(fb.Filter, text, args, new())));
                    break;
                }
                case GenerationNode g:
                {
                    var flow = Exec(g.Body, f);
                    if (flow != Flow.Normal) return flow;
                    break;
                }
                case BreakNode: return Flow.Break;
                case ContinueNode: return Flow.Continue;
            }
        }
        return Flow.Normal;
    }

    private string Capture(List<Node> body, Frame f)
    {
        var saved = _out;
        _out = new StringBuilder();
        try
        {
            Exec(body, f);
            return _out.ToString();
        }
        finally { _out = saved; }
    }

    private void ExecSet(SetNode s, Frame f)
    {
        var v = Eval(s.Value, f);
        if (s.Attr is not null)
        {
            if (!f.TryLookup(s.Targets[0], out var target) || target is not JNamespace ns)
                throw new TemplateRuntimeError($"cannot assign attribute '{s.Attr}' on '{s.Targets[0]}': only namespace() objects accept attribute assignment");
            ns.Set(s.Attr, v);
            return;
        }
        if (s.Targets.Count == 1) { f.Vars[s.Targets[0]] = v; return; }
        var items = Unpack(v, s.Targets.Count);
        for (int i = 0; i < items.Count; i++) f.Vars[s.Targets[i]] = items[i];
    }

    private static List<JValue> Unpack(JValue v, int n)
    {
        var items = Iterate(v).ToList();
        if (items.Count != n)
            throw new TemplateRuntimeError($"cannot unpack {items.Count} values into {n} names");
        return items;
    }

    private void ExecFor(ForNode fn, Frame outer)
    {
        var source = Eval(fn.Iter, outer);
        var all = source is JUndefined ? new List<JValue>() : Iterate(source).ToList();
        var loopFrame = new Frame(outer);
        // The "if" filter of a for loop runs before loop.* is computed (so loop.length counts only kept items).
        List<JValue> items;
        if (fn.Filter is null) items = all;
        else
        {
            items = new List<JValue>();
            foreach (var it in all)
            {
                CountIteration();
                Bind(fn.Targets, it, loopFrame);
                if (Eval(fn.Filter, loopFrame).Truthy) items.Add(it);
            }
        }
        if (items.Count == 0)
        {
            if (fn.Else is not null) Exec(fn.Else, new Frame(outer));
            return;
        }
        for (int i = 0; i < items.Count; i++)
        {
            CountIteration();
            loopFrame = new Frame(outer); // Jinja2: assignments inside the body do not carry over to the next iteration
            Bind(fn.Targets, items[i], loopFrame);
            loopFrame.Vars["loop"] = MakeLoop(items, i);
            var flow = Exec(fn.Body, loopFrame);
            if (flow == Flow.Break) break;
        }
    }

    private static void Bind(List<string> targets, JValue item, Frame f)
    {
        if (targets.Count == 1) { f.Vars[targets[0]] = item; return; }
        var parts = Unpack(item, targets.Count);
        for (int k = 0; k < parts.Count; k++) f.Vars[targets[k]] = parts[k];
    }

    private static JDict MakeLoop(List<JValue> items, int i)
    {
        int n = items.Count;
        var pairs = new List<KeyValuePair<JValue, JValue>>
        {
            new(new JString("index"), new JInt(i + 1)),
            new(new JString("index0"), new JInt(i)),
            new(new JString("revindex"), new JInt(n - i)),
            new(new JString("revindex0"), new JInt(n - i - 1)),
            new(new JString("first"), JBool.Of(i == 0)),
            new(new JString("last"), JBool.Of(i == n - 1)),
            new(new JString("length"), new JInt(n)),
            new(new JString("depth"), new JInt(1)),
            new(new JString("depth0"), new JInt(0)),
            new(new JString("cycle"), new JCallable("loop.cycle", (it, a, k) =>
            {
                if (a.Count == 0) throw new TemplateRuntimeError("loop.cycle() needs at least one argument");
                return a[i % a.Count];
            })),
        };
        if (i > 0) pairs.Add(new(new JString("previtem"), items[i - 1]));
        if (i < n - 1) pairs.Add(new(new JString("nextitem"), items[i + 1]));
        return new JDict(pairs);
    }

    private JCallable MakeMacro(MacroNode m, Frame defining)
    {
        return new JCallable(m.Name, (it, args, kwargs) =>
        {
            if (++it._callDepth > it._limits.MaxCallDepth)
                throw new TemplateLimitHit($"macro calls nested deeper than {it._limits.MaxCallDepth} (macro '{m.Name}')");
            it.Tick();
            try
            {
                var f = new Frame(defining);
                var extra = new List<JValue>();
                for (int i = 0; i < args.Count; i++)
                {
                    if (i < m.Params.Count) f.Vars[m.Params[i].Name] = args[i];
                    else extra.Add(args[i]);
                }
                var extraKw = new List<KeyValuePair<JValue, JValue>>();
                foreach (var (k, v) in kwargs)
                {
                    if (k == "caller") { f.Vars["caller"] = v; continue; }
                    if (m.Params.Any(p => p.Name == k)) f.Vars[k] = v;
                    else extraKw.Add(new(new JString(k), v));
                }
                foreach (var (pn, def) in m.Params)
                {
                    if (!f.Vars.ContainsKey(pn))
                        f.Vars[pn] = def is null ? new JUndefined(pn) : it.Eval(def, f);
                }
                f.Vars["varargs"] = new JList(extra, true);
                f.Vars["kwargs"] = new JDict(extraKw);
                int savedLine = it._line;
                var text = it.Capture(m.Body, f);
                it._line = savedLine;
                return new JString(text);
            }
            finally { it._callDepth--; }
        });
    }

    // ---- expressions ----
    internal JValue Eval(Expr e, Frame f)
    {
        switch (e)
        {
            case LiteralExpr l: return l.Value;
            case NameExpr n: return f.TryLookup(n.Name, out var v) ? v : new JUndefined(n.Name);
            case AttrExpr a: return GetAttr(Eval(a.Obj, f), a.Name, a);
            case ItemExpr ix:
            {
                var obj = Eval(ix.Obj, f);
                var key = Eval(ix.Index, f);
                return GetItem(obj, key, ix);
            }
            case SliceExpr s: return Slice(Eval(s.Obj, f), Opt(s.Start, f), Opt(s.Stop, f), Opt(s.Step, f));
            case CallExpr c:
            {
                var callee = Eval(c.Callee, f);
                var (args, kwargs) = EvalArgs(c.Args, c.Kwargs, f);
                return CallValue(callee, args, kwargs, c.Callee);
            }
            case FilterExpr fe:
            {
                var val = Eval(fe.Value, f);
                var (args, kwargs) = EvalArgs(fe.Args, fe.Kwargs, f);
                return ApplyFilter(fe.Name, val, args, kwargs);
            }
            case TestExpr te:
            {
                var val = Eval(te.Value, f);
                var args = te.Args.Select(a => Eval(a, f)).ToList();
                bool r = ApplyTest(te.Name, val, args);
                return JBool.Of(te.Negated ? !r : r);
            }
            case UnaryExpr u:
            {
                var val = Eval(u.Operand, f);
                return u.Op switch
                {
                    "not" => JBool.Of(!val.Truthy),
                    "-" => Ops.Negate(val),
                    _ => Ops.Plus(val),
                };
            }
            case BinaryExpr b:
            {
                if (b.Op == "and")
                {
                    var l = Eval(b.Left, f);
                    return l.Truthy ? Eval(b.Right, f) : l;
                }
                if (b.Op == "or")
                {
                    var l = Eval(b.Left, f);
                    return l.Truthy ? l : Eval(b.Right, f);
                }
                var left = Eval(b.Left, f);
                var right = Eval(b.Right, f);
                if (b.Op == "~") return new JString(CheckLength(PyText.Str(left) + PyText.Str(right)));
                return Ops.Binary(b.Op, left, right, this);
            }
            case CompareExpr ce:
            {
                var left = Eval(ce.First, f);
                foreach (var (op, rexpr) in ce.Rest)
                {
                    var right = Eval(rexpr, f);
                    if (!Ops.CompareOp(op, left, right)) return JBool.False;
                    left = right;
                }
                return JBool.True;
            }
            case CondExpr c:
                return Eval(c.Cond, f).Truthy ? Eval(c.Then, f)
                    : c.Else is null ? new JUndefined("inline if without else") : Eval(c.Else, f);
            case ListExpr le:
                return new JList(le.Items.Select(i => Eval(i, f)).ToList(), le.IsTuple);
            case DictExpr de:
                return new JDict(de.Pairs.Select(p => new KeyValuePair<JValue, JValue>(Eval(p.Key, f), Eval(p.Value, f))).ToList());
            default:
                throw new TemplateRuntimeError($"cannot evaluate {e.GetType().Name}");
        }
    }

    private JValue? Opt(Expr? e, Frame f) => e is null ? null : Eval(e, f);

    private (List<JValue>, List<KeyValuePair<string, JValue>>) EvalArgs(List<Expr> args, List<KeyValuePair<string, Expr>> kwargs, Frame f)
    {
        var a = args.Select(x => Eval(x, f)).ToList();
        var k = kwargs.Select(p => new KeyValuePair<string, JValue>(p.Key, Eval(p.Value, f))).ToList();
        return (a, k);
    }

    internal JValue CallValue(JValue callee, List<JValue> args, List<KeyValuePair<string, JValue>> kwargs, Expr? what = null)
    {
        if (callee is JCallable c) return c.Invoke(this, args, kwargs);
        if (callee is JUndefined u) throw new TemplateRuntimeError($"'{u.Hint}' is undefined and cannot be called");
        throw new TemplateRuntimeError($"'{callee.TypeName}' object is not callable");
    }

    /// <summary>Jinja's getattr: methods of known value kinds, dict keys, namespace attributes; anything else is undefined.</summary>
    internal JValue GetAttr(JValue obj, string name, Expr? where = null)
    {
        switch (obj)
        {
            case JUndefined u: throw new TemplateRuntimeError($"'{u.Hint}' is undefined (while looking up attribute '{name}')");
            case JDict d:
                if (Methods.TryBind(obj, name, out var m)) return m;
                return d.TryGet(name, out var v) ? v : new JUndefined($"dict object has no attribute '{name}'");
            case JNamespace ns:
                return ns.Attrs.TryGetValue(name, out var nv) ? nv : new JUndefined($"namespace has no attribute '{name}'");
            default:
                if (Methods.TryBind(obj, name, out var bm)) return bm;
                return new JUndefined($"{obj.TypeName} object has no attribute '{name}'");
        }
    }

    /// <summary>Jinja's getitem: subscript first, then (for string keys) attribute lookup.</summary>
    internal JValue GetItem(JValue obj, JValue key, Expr? where = null)
    {
        switch (obj)
        {
            case JUndefined u: throw new TemplateRuntimeError($"'{u.Hint}' is undefined (while looking up item {PyText.Repr(key)})");
            case JDict d:
                if (key is JList or JDict) throw new TemplateRuntimeError($"unhashable type: '{key.TypeName}'");
                if (d.TryGet(key, out var v)) return v;
                break;
            case JList l when Ops.AsIndex(key) is long i:
            {
                long k = i < 0 ? i + l.Items.Count : i;
                if (k >= 0 && k < l.Items.Count) return l.Items[(int)k];
                return new JUndefined($"{l.TypeName} index {i} out of range");
            }
            case JString s when Ops.AsIndex(key) is long i:
            {
                var runes = Runes.Of(s.Value);
                long k = i < 0 ? i + runes.Count : i;
                if (k >= 0 && k < runes.Count) return new JString(runes[(int)k]);
                return new JUndefined($"string index {i} out of range");
            }
        }
        if (key is JString ks) return GetAttr(obj, ks.Value, where);
        return new JUndefined($"{obj.TypeName} object has no element {PyText.Repr(key)}");
    }

    private JValue Slice(JValue obj, JValue? start, JValue? stop, JValue? step)
    {
        long? Idx(JValue? v) => v is null or JNone ? null
            : Ops.AsIndex(v) ?? throw new TemplateRuntimeError("slice indices must be integers or None");
        long st = Idx(step) ?? 1;
        if (st == 0) throw new TemplateRuntimeError("slice step cannot be zero");
        switch (obj)
        {
            case JList l: return new JList(SliceList(l.Items, Idx(start), Idx(stop), st), l.IsTuple);
            case JString s: return new JString(string.Concat(SliceList(Runes.Of(s.Value), Idx(start), Idx(stop), st)));
            case JUndefined u: throw new TemplateRuntimeError($"'{u.Hint}' is undefined (while slicing)");
            default: throw new TemplateRuntimeError($"'{obj.TypeName}' object is not subscriptable");
        }
    }

    /// <summary>Python slice semantics, including negative steps ([::-1]).</summary>
    internal static List<T> SliceList<T>(IReadOnlyList<T> items, long? start, long? stop, long step)
    {
        long n = items.Count;
        long lo, hi;
        if (step > 0)
        {
            lo = start is null ? 0 : start < 0 ? Math.Max(0, start.Value + n) : Math.Min(start.Value, n);
            hi = stop is null ? n : stop < 0 ? Math.Max(0, stop.Value + n) : Math.Min(stop.Value, n);
            var r = new List<T>();
            for (long i = lo; i < hi; i += step) r.Add(items[(int)i]);
            return r;
        }
        else
        {
            lo = start is null ? n - 1 : start < 0 ? Math.Max(-1, start.Value + n) : Math.Min(start.Value, n - 1);
            hi = stop is null ? -1 : stop < 0 ? Math.Max(-1, stop.Value + n) : Math.Min(stop.Value, n - 1);
            var r = new List<T>();
            for (long i = lo; i > hi; i += step) r.Add(items[(int)i]);
            return r;
        }
    }

    /// <summary>Iteration as Python does it: lists, dict keys, string characters; undefined iterates as empty.</summary>
    internal static IEnumerable<JValue> Iterate(JValue v) => v switch
    {
        JList l => l.Items,
        JDict d => d.Keys,
        JString s => Runes.Of(s.Value).Select(r => (JValue)new JString(r)),
        JUndefined => Array.Empty<JValue>(),
        _ => throw new TemplateRuntimeError($"'{v.TypeName}' object is not iterable"),
    };

    internal DateTime Now() => _now();
    internal long MaxRange => _limits.MaxLoopIterations;
    internal int MaxStringChars => _limits.MaxOutputChars;
    internal void Budget(long items)
    {
        if (items > _limits.MaxLoopIterations)
            throw new TemplateLimitHit($"a sequence of {items} items exceeds the {_limits.MaxLoopIterations}-item limit");
        Tick();
    }
}

/// <summary>Strings indexed by code point, as Python does (a surrogate pair is one character).</summary>
internal static class Runes
{
    public static IReadOnlyList<string> Of(string s)
    {
        var r = new List<string>(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { r.Add(s.Substring(i, 2)); i++; }
            else r.Add(s[i].ToString());
        }
        return r;
    }

    public static int Length(string s)
    {
        int n = 0;
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) i++;
            n++;
        }
        return n;
    }
}
