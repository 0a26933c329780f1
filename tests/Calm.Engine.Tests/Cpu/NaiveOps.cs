using Calm.Engine.Model;
using Calm.Engine.Weights;

namespace Calm.Engine.Tests.Cpu;

/// <summary>
/// Naive double-precision references for every CPU op, written straight from the Hugging Face transformers formulas
/// and independent of the engine's code (scalar loops, no SIMD, no shared helpers).
/// </summary>
internal static class NaiveOps
{
    public static double[] Row(Tensor t, long row)
    {
        long cols = t.Cols;
        var r = new double[cols];
        for (long i = 0; i < cols; i++) r[i] = t.GetFloat(row * cols + i);
        return r;
    }

    public static double[] Vector(Tensor t) => Row(t, 0);

    public static double Dot(double[] a, double[] b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += a[i] * b[i];
        return s;
    }

    /// <summary>y = W x, W [R, C] stored tensor.</summary>
    public static double[] MatVec(Tensor w, double[] x)
    {
        var y = new double[w.Rows];
        for (long r = 0; r < w.Rows; r++)
        {
            double s = 0;
            for (long c = 0; c < w.Cols; c++) s += w.GetFloat(r * w.Cols + c) * x[c];
            y[r] = s;
        }
        return y;
    }

    public static double[] RmsNorm(double[] x, double[] w, double eps, bool addOne)
    {
        double ms = 0;
        foreach (var v in x) ms += v * v;
        ms /= x.Length;
        double inv = 1.0 / Math.Sqrt(ms + eps);
        var y = new double[x.Length];
        for (int i = 0; i < x.Length; i++) y[i] = x[i] * inv * (addOne ? 1.0 + w[i] : w[i]);
        return y;
    }

    /// <summary>transformers' rope init functions (default, linear, llama3, longrope, dynamic), in double.</summary>
    public static double[] InvFreq(ModelConfig c, int seqLen, out double attentionFactor)
    {
        int dim = (int)(c.HeadDim * c.PartialRotaryFactor);
        dim -= dim % 2;
        double b = c.RopeTheta;
        var rs = c.RopeScaling;
        attentionFactor = 1;
        if (rs?.Type == RopeScalingType.Dynamic && seqLen > c.MaxPositionEmbeddings)
            b = b * Math.Pow(rs.Factor * seqLen / c.MaxPositionEmbeddings - (rs.Factor - 1), dim / (dim - 2.0));
        var f = new double[dim / 2];
        for (int k = 0; k < dim; k += 2) f[k / 2] = 1.0 / Math.Pow(b, (double)k / dim);
        if (rs is null) return f;
        if (rs.Type == RopeScalingType.Linear) return f.Select(x => x / rs.Factor).ToArray();
        if (rs.Type == RopeScalingType.Llama3)
        {
            double old = rs.OriginalMaxPositionEmbeddings;
            var outp = new double[f.Length];
            for (int i = 0; i < f.Length; i++)
            {
                double wl = 2 * Math.PI / f[i];
                double scaled = wl > old / rs.LowFreqFactor ? f[i] / rs.Factor : f[i];
                double smooth = (old / wl - rs.LowFreqFactor) / (rs.HighFreqFactor - rs.LowFreqFactor);
                double smoothed = (1 - smooth) * scaled / rs.Factor + smooth * scaled;
                bool medium = !(wl < old / rs.HighFreqFactor) && !(wl > old / rs.LowFreqFactor);
                outp[i] = medium ? smoothed : scaled;
            }
            return outp;
        }
        if (rs.Type == RopeScalingType.LongRope)
        {
            double orig = rs.OriginalMaxPositionEmbeddings;
            double factor = c.MaxPositionEmbeddings / orig;
            attentionFactor = factor <= 1 ? 1 : Math.Sqrt(1 + Math.Log(factor) / Math.Log(orig));
            var ext = seqLen > orig ? rs.LongFactor! : rs.ShortFactor!;
            var outp = new double[f.Length];
            for (int i = 0; i < f.Length; i++) outp[i] = 1.0 / (ext[i] * Math.Pow(b, 2.0 * i / dim));
            return outp;
        }
        return f;
    }

    /// <summary>q * cos + rotate_half(q) * sin on the first 2*invFreq.Length dims, with cos = cat(cos, cos).</summary>
    public static double[] Rope(double[] x, double[] invFreq, int pos, double attentionFactor)
    {
        int rot = invFreq.Length * 2, half = invFreq.Length;
        var y = (double[])x.Clone();
        for (int i = 0; i < rot; i++)
        {
            double ang = pos * invFreq[i % half];
            double cos = Math.Cos(ang) * attentionFactor, sin = Math.Sin(ang) * attentionFactor;
            double rotated = i < half ? -x[i + half] : x[i - half];
            y[i] = x[i] * cos + rotated * sin;
        }
        return y;
    }

    public static double Silu(double x) => x / (1 + Math.Exp(-x));
    public static double GeluTanh(double x) => 0.5 * x * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
    public static double Gelu(double x) => 0.5 * x * (1 + Erf(x / Math.Sqrt(2)));

    public static double Act(Activation a, double x) => a switch
    {
        Activation.Silu => Silu(x), Activation.GeluTanh => GeluTanh(x), Activation.Gelu => Gelu(x), _ => throw new ArgumentException(),
    };

    /// <summary>erf to ~1e-14: Maclaurin series below 2.5, continued fraction for erfc above.</summary>
    public static double Erf(double x)
    {
        if (x < 0) return -Erf(-x);
        if (x < 2.5)
        {
            double sum = 0, term = x; // term = (-1)^n x^(2n+1) / n!
            for (int n = 0; n < 80; n++)
            {
                sum += term / (2 * n + 1);
                term *= -x * x / (n + 1);
            }
            return 2 / Math.Sqrt(Math.PI) * sum;
        }
        // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))), evaluated bottom-up.
        double cf = x;
        for (int k = 60; k >= 1; k--) cf = x + (k / 2.0) / cf;
        return 1 - Math.Exp(-x * x) / Math.Sqrt(Math.PI) / cf;
    }

    public static double[] Softmax(double[] x)
    {
        double max = x.Max();
        var e = x.Select(v => Math.Exp(v - max)).ToArray();
        double s = e.Sum();
        return e.Select(v => v / s).ToArray();
    }

    /// <summary>One query against keys/values [T][Hd] with a boolean visibility mask, scale 1/sqrt(Hd).</summary>
    public static double[] Attend(double[] q, IReadOnlyList<double[]> keys, IReadOnlyList<double[]> values, Func<int, bool> visible)
    {
        var idx = Enumerable.Range(0, keys.Count).Where(visible).ToArray();
        var scores = idx.Select(j => Dot(q, keys[j]) / Math.Sqrt(q.Length)).ToArray();
        var p = Softmax(scores);
        var o = new double[q.Length];
        for (int a = 0; a < idx.Length; a++)
            for (int i = 0; i < o.Length; i++) o[i] += p[a] * values[idx[a]][i];
        return o;
    }

    /// <summary>Mixtral routing: softmax over all experts, top-k by sorting, renormalise.</summary>
    public static (int[] Experts, double[] Weights) Route(double[] logits, int k)
    {
        var p = Softmax(logits);
        var top = Enumerable.Range(0, p.Length).OrderByDescending(i => p[i]).ThenBy(i => i).Take(k).ToArray();
        double s = top.Sum(i => p[i]);
        return (top, top.Select(i => p[i] / s).ToArray());
    }

    public static double RelL2(ReadOnlySpan<float> got, double[] want)
    {
        double num = 0, den = 0;
        for (int i = 0; i < want.Length; i++) { double e = got[i] - want[i]; num += e * e; den += want[i] * want[i]; }
        return Math.Sqrt(num / Math.Max(den, 1e-300));
    }

    public static double RelL2(ReadOnlySpan<float> got, ReadOnlySpan<float> want)
    {
        double num = 0, den = 0;
        for (int i = 0; i < want.Length; i++) { double e = (double)got[i] - want[i]; num += e * e; den += (double)want[i] * want[i]; }
        return Math.Sqrt(num / Math.Max(den, 1e-300));
    }
}

/// <summary>
/// Straightforward double-precision transformer forward over a whole sequence (no KV cache, no chunking): the
/// independent oracle the CPU backend is checked against. Returns logits [T][V].
/// </summary>
internal static class ReferenceForward
{
    public static double[][] Run(ModelConfig c, ModelWeights w, int[] tokens)
    {
        int T = tokens.Length, D = c.HiddenSize, Hd = c.HeadDim, H = c.NumHeads, K = c.NumKvHeads;
        var invFreq = NaiveOps.InvFreq(c, T, out double attnFactor);
        var x = new double[T][];
        for (int t = 0; t < T; t++)
        {
            x[t] = NaiveOps.Row(w.Embedding, tokens[t]);
            if (c.ScaleEmbeddings) for (int i = 0; i < D; i++) x[t][i] *= Math.Sqrt(D);
        }
        foreach (var L in w.Layers)
        {
            var attnNorm = NaiveOps.Vector(L.AttnNorm);
            var q = new double[T][][]; var k = new double[T][][]; var v = new double[T][][];
            for (int t = 0; t < T; t++)
            {
                var xn = NaiveOps.RmsNorm(x[t], attnNorm, c.RmsNormEps, c.NormAddOne);
                var qf = Add(NaiveOps.MatVec(L.Wq, xn), L.Bq);
                var kf = Add(NaiveOps.MatVec(L.Wk, xn), L.Bk);
                var vf = Add(NaiveOps.MatVec(L.Wv, xn), L.Bv);
                q[t] = Heads(qf, H, Hd); k[t] = Heads(kf, K, Hd); v[t] = Heads(vf, K, Hd);
                for (int h = 0; h < H; h++)
                {
                    if (L.QNorm is not null) q[t][h] = NaiveOps.RmsNorm(q[t][h], NaiveOps.Vector(L.QNorm), c.RmsNormEps, c.NormAddOne);
                    q[t][h] = NaiveOps.Rope(q[t][h], invFreq, t, attnFactor);
                }
                for (int h = 0; h < K; h++)
                {
                    if (L.KNorm is not null) k[t][h] = NaiveOps.RmsNorm(k[t][h], NaiveOps.Vector(L.KNorm), c.RmsNormEps, c.NormAddOne);
                    k[t][h] = NaiveOps.Rope(k[t][h], invFreq, t, attnFactor);
                }
            }
            for (int t = 0; t < T; t++)
            {
                var att = new double[H * Hd];
                for (int h = 0; h < H; h++)
                {
                    int kh = h * K / H;
                    int tt = t;
                    var o = NaiveOps.Attend(q[t][h], k.Select(kk => kk[kh]).ToArray(), v.Select(vv => vv[kh]).ToArray(),
                        j => j <= tt && (c.SlidingWindow is not int W || tt - j < W));
                    Array.Copy(o, 0, att, h * Hd, Hd);
                }
                var o2 = Add(NaiveOps.MatVec(L.Wo, att), L.Bo);
                for (int i = 0; i < D; i++) x[t][i] += o2[i];
            }
            var ffnNorm = NaiveOps.Vector(L.FfnNorm);
            for (int t = 0; t < T; t++)
            {
                var xn = NaiveOps.RmsNorm(x[t], ffnNorm, c.RmsNormEps, c.NormAddOne);
                double[] y;
                if (c.IsMoE)
                {
                    var (ex, wt) = NaiveOps.Route(NaiveOps.MatVec(L.Router!, xn), c.NumExpertsPerToken);
                    y = new double[D];
                    for (int j = 0; j < ex.Length; j++)
                    {
                        var ye = Mlp(c, L.ExpertGate![ex[j]], L.ExpertUp![ex[j]], L.ExpertDown![ex[j]], null, null, null, xn);
                        for (int i = 0; i < D; i++) y[i] += wt[j] * ye[i];
                    }
                }
                else y = Mlp(c, L.WGate!, L.WUp!, L.WDown!, L.BGate, L.BUp, L.BDown, xn);
                for (int i = 0; i < D; i++) x[t][i] += y[i];
            }
        }
        var fn = NaiveOps.Vector(w.FinalNorm);
        return x.Select(xt => NaiveOps.MatVec(w.LmHead, NaiveOps.RmsNorm(xt, fn, c.RmsNormEps, c.NormAddOne))).ToArray();
    }

    private static double[] Mlp(ModelConfig c, Tensor g, Tensor u, Tensor d, Tensor? bg, Tensor? bu, Tensor? bd, double[] x)
    {
        var gv = Add(NaiveOps.MatVec(g, x), bg);
        var uv = Add(NaiveOps.MatVec(u, x), bu);
        var h = gv.Select((gi, i) => NaiveOps.Act(c.HiddenAct, gi) * uv[i]).ToArray();
        return Add(NaiveOps.MatVec(d, h), bd);
    }

    private static double[] Add(double[] a, Tensor? b)
    {
        if (b is null) return a;
        for (int i = 0; i < a.Length; i++) a[i] += b.GetFloat(i);
        return a;
    }

    private static double[][] Heads(double[] flat, int n, int hd)
        => Enumerable.Range(0, n).Select(h => flat.AsSpan(h * hd, hd).ToArray()).ToArray();
}
