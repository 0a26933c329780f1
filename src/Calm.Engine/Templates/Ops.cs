namespace Calm.Engine.Templates;

/// <summary>Python operator semantics over <see cref="JValue"/>s.</summary>
internal static class Ops
{
    public static bool IsNumber(JValue v) => v is JInt or JFloat or JBool;

    public static long? AsIndex(JValue v) => v switch
    {
        JInt i => i.Value,
        JBool b => b.Value ? 1 : 0,
        _ => null,
    };

    private static double AsDouble(JValue v) => v switch
    {
        JInt i => i.Value,
        JFloat f => f.Value,
        JBool b => b.Value ? 1 : 0,
        _ => throw new InvalidOperationException(),
    };

    private static bool IsIntLike(JValue v) => v is JInt or JBool;

    public static bool PyEquals(JValue a, JValue b)
    {
        if (IsNumber(a) && IsNumber(b))
        {
            if (IsIntLike(a) && IsIntLike(b)) return AsIndex(a) == AsIndex(b);
            return AsDouble(a) == AsDouble(b);
        }
        switch (a)
        {
            case JString sa: return b is JString sb && sa.Value == sb.Value;
            case JNone: return b is JNone;
            case JUndefined: return b is JUndefined;
            case JList la:
                if (b is not JList lb || la.IsTuple != lb.IsTuple || la.Items.Count != lb.Items.Count) return false;
                for (int i = 0; i < la.Items.Count; i++) if (!PyEquals(la.Items[i], lb.Items[i])) return false;
                return true;
            case JDict da:
                if (b is not JDict db || da.Count != db.Count) return false;
                foreach (var k in da.Keys)
                {
                    if (!db.TryGet(k, out var vb)) return false;
                    da.TryGet(k, out var va);
                    if (!PyEquals(va, vb)) return false;
                }
                return true;
            default: return ReferenceEquals(a, b);
        }
    }

    /// <summary>Python ordering (&lt;); TypeError for mismatched kinds.</summary>
    public static int Compare(JValue a, JValue b)
    {
        if (IsNumber(a) && IsNumber(b))
        {
            if (IsIntLike(a) && IsIntLike(b)) return AsIndex(a)!.Value.CompareTo(AsIndex(b)!.Value);
            return AsDouble(a).CompareTo(AsDouble(b));
        }
        if (a is JString sa && b is JString sb) return string.CompareOrdinal(sa.Value, sb.Value) switch { < 0 => -1, > 0 => 1, _ => 0 };
        if (a is JList la && b is JList lb)
        {
            for (int i = 0; i < Math.Min(la.Items.Count, lb.Items.Count); i++)
            {
                if (PyEquals(la.Items[i], lb.Items[i])) continue;
                return Compare(la.Items[i], lb.Items[i]);
            }
            return la.Items.Count.CompareTo(lb.Items.Count);
        }
        throw new TemplateRuntimeError($"'<' not supported between instances of '{a.TypeName}' and '{b.TypeName}'");
    }

    public static bool CompareOp(string op, JValue l, JValue r) => op switch
    {
        "==" => PyEquals(l, r),
        "!=" => !PyEquals(l, r),
        "<" => Compare(l, r) < 0,
        "<=" => Compare(l, r) <= 0,
        ">" => Compare(l, r) > 0,
        ">=" => Compare(l, r) >= 0,
        "in" => Contains(r, l),
        "notin" => !Contains(r, l),
        _ => throw new TemplateRuntimeError($"unknown comparison '{op}'"),
    };

    public static bool Contains(JValue container, JValue item)
    {
        switch (container)
        {
            case JString s:
                if (item is not JString sub) throw new TemplateRuntimeError($"'in <string>' requires string as left operand, not {item.TypeName}");
                return s.Value.Contains(sub.Value, StringComparison.Ordinal);
            case JList l: return l.Items.Any(x => PyEquals(x, item));
            case JDict d:
                if (item is JList or JDict) throw new TemplateRuntimeError($"unhashable type: '{item.TypeName}'");
                return d.TryGet(item, out _);
            case JUndefined: return false;
            case JNamespace ns: return item is JString k && ns.Attrs.ContainsKey(k.Value);
            default: throw new TemplateRuntimeError($"argument of type '{container.TypeName}' is not iterable");
        }
    }

    public static JValue Negate(JValue v) => v switch
    {
        JInt i => i.Value == long.MinValue ? throw new TemplateRuntimeError("integer overflow") : new JInt(-i.Value),
        JBool b => new JInt(b.Value ? -1 : 0),
        JFloat f => new JFloat(-f.Value),
        _ => throw new TemplateRuntimeError($"bad operand type for unary -: '{v.TypeName}'"),
    };

    public static JValue Plus(JValue v) => v switch
    {
        JInt or JFloat => v,
        JBool b => new JInt(b.Value ? 1 : 0),
        _ => throw new TemplateRuntimeError($"bad operand type for unary +: '{v.TypeName}'"),
    };

    public static JValue Binary(string op, JValue a, JValue b, Interpreter it)
    {
        if (a is JUndefined ua) throw new TemplateRuntimeError($"'{ua.Hint}' is undefined (left operand of '{op}')");
        if (b is JUndefined ub) throw new TemplateRuntimeError($"'{ub.Hint}' is undefined (right operand of '{op}')");
        try
        {
            checked
            {
                switch (op)
                {
                    case "+":
                        if (a is JString sa && b is JString sb) return new JString(it.CheckLength(sa.Value + sb.Value));
                        if (a is JList la && b is JList lb && la.IsTuple == lb.IsTuple)
                        {
                            it.Budget(la.Items.Count + (long)lb.Items.Count);
                            return new JList(la.Items.Concat(lb.Items).ToList(), la.IsTuple);
                        }
                        if (IsIntLike(a) && IsIntLike(b)) return new JInt(AsIndex(a)!.Value + AsIndex(b)!.Value);
                        if (IsNumber(a) && IsNumber(b)) return new JFloat(AsDouble(a) + AsDouble(b));
                        break;
                    case "-":
                        if (IsIntLike(a) && IsIntLike(b)) return new JInt(AsIndex(a)!.Value - AsIndex(b)!.Value);
                        if (IsNumber(a) && IsNumber(b)) return new JFloat(AsDouble(a) - AsDouble(b));
                        break;
                    case "*":
                        if (IsIntLike(a) && IsIntLike(b)) return new JInt(AsIndex(a)!.Value * AsIndex(b)!.Value);
                        if (IsNumber(a) && IsNumber(b)) return new JFloat(AsDouble(a) * AsDouble(b));
                        if (a is JString rs && IsIntLike(b)) return Repeat(rs.Value, AsIndex(b)!.Value, it);
                        if (b is JString rs2 && IsIntLike(a)) return Repeat(rs2.Value, AsIndex(a)!.Value, it);
                        if (a is JList rl && IsIntLike(b)) return RepeatList(rl, AsIndex(b)!.Value, it);
                        if (b is JList rl2 && IsIntLike(a)) return RepeatList(rl2, AsIndex(a)!.Value, it);
                        break;
                    case "/":
                        if (IsNumber(a) && IsNumber(b))
                        {
                            if (AsDouble(b) == 0) throw new TemplateRuntimeError("division by zero");
                            return new JFloat(AsDouble(a) / AsDouble(b));
                        }
                        break;
                    case "//":
                        if (IsIntLike(a) && IsIntLike(b))
                        {
                            long x = AsIndex(a)!.Value, y = AsIndex(b)!.Value;
                            if (y == 0) throw new TemplateRuntimeError("integer division or modulo by zero");
                            long q = x / y;
                            if ((x % y != 0) && ((x < 0) != (y < 0))) q--;
                            return new JInt(q);
                        }
                        if (IsNumber(a) && IsNumber(b))
                        {
                            if (AsDouble(b) == 0) throw new TemplateRuntimeError("float floor division by zero");
                            return new JFloat(Math.Floor(AsDouble(a) / AsDouble(b)));
                        }
                        break;
                    case "%":
                        if (IsIntLike(a) && IsIntLike(b))
                        {
                            long x = AsIndex(a)!.Value, y = AsIndex(b)!.Value;
                            if (y == 0) throw new TemplateRuntimeError("integer division or modulo by zero");
                            long r = x % y;
                            if (r != 0 && ((r < 0) != (y < 0))) r += y;
                            return new JInt(r);
                        }
                        if (IsNumber(a) && IsNumber(b))
                        {
                            double x = AsDouble(a), y = AsDouble(b);
                            if (y == 0) throw new TemplateRuntimeError("float modulo");
                            double r = x % y;
                            if (r != 0 && ((r < 0) != (y < 0))) r += y;
                            return new JFloat(r);
                        }
                        if (a is JString) throw new TemplateRuntimeError("printf-style '%' string formatting is not supported in templates");
                        break;
                    case "**":
                        if (IsIntLike(a) && IsIntLike(b) && AsIndex(b) >= 0)
                        {
                            long bas = AsIndex(a)!.Value, e = AsIndex(b)!.Value, r = 1;
                            while (e > 0)
                            {
                                if ((e & 1) == 1) r *= bas;
                                e >>= 1;
                                if (e > 0) bas *= bas;
                            }
                            return new JInt(r);
                        }
                        if (IsNumber(a) && IsNumber(b)) return new JFloat(Math.Pow(AsDouble(a), AsDouble(b)));
                        break;
                }
            }
        }
        catch (OverflowException)
        {
            throw new TemplateRuntimeError($"integer overflow in '{op}' (templates use 64-bit integers)");
        }
        throw new TemplateRuntimeError($"unsupported operand type(s) for {op}: '{a.TypeName}' and '{b.TypeName}'");
    }

    private static JValue Repeat(string s, long n, Interpreter it)
    {
        if (n <= 0 || s.Length == 0) return JString.Empty;
        if ((double)s.Length * n > int.MaxValue) throw new TemplateLimitHit($"a string of {(double)s.Length * n:0} chars exceeds the output limit");
        long len = s.Length * n;
        if (len > it.MaxStringChars) throw new TemplateLimitHit($"a string of {len} chars exceeds the {it.MaxStringChars}-char limit");
        return new JString(string.Concat(Enumerable.Repeat(s, (int)n)));
    }

    private static JValue RepeatList(JList l, long n, Interpreter it)
    {
        if (n <= 0) return new JList(Array.Empty<JValue>(), l.IsTuple);
        it.Budget(l.Items.Count * n);
        var r = new List<JValue>();
        for (long i = 0; i < n; i++) r.AddRange(l.Items);
        return new JList(r, l.IsTuple);
    }
}
