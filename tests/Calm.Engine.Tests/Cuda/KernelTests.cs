using Calm.Engine.Cuda;
using Calm.Engine.Model;

namespace Calm.Engine.Tests.Cuda;

/// <summary>Each kernel against a CPU reference on fresh random data (runs where a GPU and NVRTC are present).</summary>
[Trait("Category", "GPU")]
[Collection("GPU")]   // one at a time: the tests read free GPU memory, which a parallel test would change
public class KernelTests
{
    [Theory]
    [InlineData(DType.BF16, 300, 1024, false, false)]
    [InlineData(DType.F16, 257, 4096, true, true)]
    [InlineData(DType.BF16, 64, 100, true, false)]   // cols % 8 != 0: scalar path
    [InlineData(DType.F16, 1000, 2056, false, true)] // tail after the unrolled loop
    [InlineData(DType.BF16, 300, 4096, true, true, 16)]  // deep kernels: whole 4096-column row in flight
    [InlineData(DType.F16, 77, 4104, false, true, 16)]   // deep with a tail
    [InlineData(DType.BF16, 64, 14336, false, false, 8)] // deep 8, several passes
    [InlineData(DType.F16, 129, 2048, true, false, 8)]
    [InlineData(DType.BF16, 129, 2048, true, false, 16)] // too short for deep 16: deep 8 (Llama-3.2-1B's rows)
    [InlineData(DType.F16, 200, 3072, false, true, 16)]  // deep 8 with half a pass left
    [InlineData(DType.BF16, 99, 2040, true, true, 16)]   // too short for deep 8 too: the plain kernel
    public void MatvecMatchesReference(DType dt, int rows, int cols, bool bias, bool accumulate, int deep = 0)
    {
        var why = CudaDeviceInfo.Unavailable();
        if (why is not null) Assert.Skip("No usable CUDA device: " + why);
        using var ctx = CudaContext.Acquire(0);
        using var k = new CudaKernels(ctx, CudaDeviceInfo.List()[0].Arch, null, 2, null, null, deep);
        using var s = new CudaStream(ctx);
        var r = Gpu.Rng();
        var (wb, wv) = Gpu.RandHalf(r, rows * cols, dt, 0.1f);
        var x = Gpu.RandF(r, cols);
        var b = Gpu.RandF(r, rows);
        var y0 = Gpu.RandF(r, rows);
        using var W = Gpu.Up(ctx, wb); using var X = Gpu.Up(ctx, x); using var B = Gpu.Up(ctx, b); using var Y = Gpu.Up(ctx, y0);
        k.Matvec(s, dt, W.Ptr, X.Ptr, Y.Ptr, bias ? B.Ptr : 0, rows, cols, accumulate);
        s.Synchronize();
        var want = new float[rows];
        for (int i = 0; i < rows; i++)
        {
            double a = 0;
            for (int j = 0; j < cols; j++) a += (double)wv[(long)i * cols + j] * x[j];
            if (bias) a += b[i];
            if (accumulate) a += y0[i];
            want[i] = (float)a;
        }
        Gpu.Close(Y.ToArray<float>(rows), want, dt == DType.BF16 ? 2e-6 : 2e-6, $"matvec {dt} {rows}x{cols}");
    }

    /// <summary>The fp16 caches [K, maxCtx, Hd] hold head(H + h) (k) and head(H + K + h) (v) at <paramref name="pos"/>
    /// within fp16 rounding; returns both caches' bits.</summary>
    private static (ushort[] K, ushort[] V) CheckCacheRows(CudaDeviceMemory KC, CudaDeviceMemory VC, int H, int K, int Hd, int maxCtx, int pos, Func<int, float[]> head)
    {
        var kc = KC.ToArray<ushort>(K * maxCtx * Hd); var vc = VC.ToArray<ushort>(K * maxCtx * Hd);
        var gotK = new List<float>(); var wantK = new List<float>(); var gotV = new List<float>(); var wantV = new List<float>();
        for (int h = 0; h < K; h++)
        {
            var kk = head(H + h); var vv = head(H + K + h);
            for (int d = 0; d < Hd; d++)
            {
                gotK.Add((float)BitConverter.UInt16BitsToHalf(kc[(h * maxCtx + pos) * Hd + d])); wantK.Add(kk[d]);
                gotV.Add((float)BitConverter.UInt16BitsToHalf(vc[(h * maxCtx + pos) * Hd + d])); wantV.Add(vv[d]);
            }
        }
        Gpu.Close(gotK.ToArray(), wantK.ToArray(), 1e-3, "k in fp16 cache");   // fp16 rounding: 2^-11 relative
        Gpu.Close(gotV.ToArray(), wantV.ToArray(), 1e-3, "v in fp16 cache");
        return (kc, vc);
    }

    // paired rows: the qkv matvec with RoPE + KV write (vs matvec then the rotation on the CPU), and gate_up with the
    // activation; bias, f16/bf16, a partial last block, columns with a tail after the 8-deep loop and a scalar path
    [Theory]
    [InlineData(DType.BF16, 8, 2, 64, 512, true, 7)]
    [InlineData(DType.F16, 6, 3, 128, 4104, false, 130)]
    [InlineData(DType.BF16, 4, 4, 96, 100, true, 0)]
    public void MatvecQkvRopeMatchesReference(DType dt, int H, int K, int Hd, int D, bool bias, int pos)
    {
        var (ctx, k, s) = Gpu.Require();
        using var _c = ctx; using var _k = k; using var _s = s;
        var r = Gpu.Rng();
        int maxCtx = 160, half = Hd / 2, rows = (H + 2 * K) * Hd;
        var (wb, wv) = Gpu.RandHalf(r, rows * D, dt, 0.1f);
        var x = Gpu.RandF(r, D);
        var b = Gpu.RandF(r, rows);
        var (cos, sin) = Gpu.RopeTables(maxCtx, Hd);
        using var W = Gpu.Up(ctx, wb); using var X = Gpu.Up(ctx, x); using var B = Gpu.Up(ctx, b);
        using var Q = Gpu.Up(ctx, Enumerable.Repeat(float.NaN, rows).ToArray());
        using var C = Gpu.Up(ctx, cos); using var S = Gpu.Up(ctx, sin);
        using var KC = Gpu.Zeros(ctx, (long)K * maxCtx * Hd * 2); using var VC = Gpu.Zeros(ctx, (long)K * maxCtx * Hd * 2);
        using var step = Gpu.Up(ctx, new[] { 0, pos });
        k.MatvecQkvRope(s, dt, W.Ptr, X.Ptr, Q.Ptr, bias ? B.Ptr : 0, H, K, Hd, D, C.Ptr, S.Ptr, KC.Ptr, VC.Ptr, maxCtx, step.Ptr);
        s.Synchronize();
        var y = new double[rows];
        for (int i = 0; i < rows; i++)
        {
            double a = 0;
            for (int j = 0; j < D; j++) a += (double)wv[(long)i * D + j] * x[j];
            y[i] = a + (bias ? b[i] : 0);
        }
        float[] Head(int u)
        {
            var o = new float[Hd];
            for (int i = 0; i < half; i++)
            {
                double v0 = y[u * Hd + i], v1 = y[u * Hd + i + half];
                if (u < H + K)
                {
                    double c = cos[pos * half + i], si = sin[pos * half + i];
                    o[i] = (float)(v0 * c - v1 * si); o[i + half] = (float)(v1 * c + v0 * si);
                }
                else { o[i] = (float)v0; o[i + half] = (float)v1; }
            }
            return o;
        }
        Gpu.Close(Q.ToArray<float>(H * Hd), Enumerable.Range(0, H).SelectMany(Head).ToArray(), 3e-6, "rotated q");
        var (kc, vc) = CheckCacheRows(KC, VC, H, K, Hd, maxCtx, pos, Head);
        // nothing else in the caches was touched
        for (int h = 0; h < K; h++)
            for (int p = 0; p < maxCtx; p++)
                if (p != pos)
                    for (int d = 0; d < Hd; d++)
                        Assert.True(kc[(h * maxCtx + p) * Hd + d] == 0 && vc[(h * maxCtx + p) * Hd + d] == 0, $"cache written at position {p}");
    }

    [Theory]
    [InlineData(DType.BF16, 1000, 512, true, Activation.Silu)]
    [InlineData(DType.F16, 77, 4104, false, Activation.GeluTanh)]
    [InlineData(DType.BF16, 300, 100, true, Activation.Gelu)]
    public void MatvecGluMatchesReference(DType dt, int F, int D, bool bias, Activation act)
    {
        var (ctx, k, s) = Gpu.Require();
        using var _c = ctx; using var _k = k; using var _s = s;
        var r = Gpu.Rng();
        var (wb, wv) = Gpu.RandHalf(r, 2 * F * D, dt, 0.1f);
        var x = Gpu.RandF(r, D);
        var b = Gpu.RandF(r, 2 * F);
        using var W = Gpu.Up(ctx, wb); using var X = Gpu.Up(ctx, x); using var B = Gpu.Up(ctx, b);
        using var Hm = Gpu.Up(ctx, Enumerable.Repeat(float.NaN, F).ToArray());
        k.MatvecGlu(s, dt, W.Ptr, X.Ptr, Hm.Ptr, bias ? B.Ptr : 0, F, D, act);
        s.Synchronize();
        double Row(int i) { double a = 0; for (int j = 0; j < D; j++) a += (double)wv[(long)i * D + j] * x[j]; return a + (bias ? b[i] : 0); }
        double Act(double v) => act switch
        {
            Activation.Silu => v / (1 + Math.Exp(-v)),
            Activation.GeluTanh => 0.5 * v * (1 + Math.Tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))),
            _ => 0.5 * v * (1 + Erf(v / Math.Sqrt(2))),
        };
        var want = Enumerable.Range(0, F).Select(i => (float)(Act(Row(i)) * Row(F + i))).ToArray();
        Gpu.Close(Hm.ToArray<float>(F), want, 1e-5, $"glu {dt} {act} F={F} D={D}");
    }

    private static double Erf(double x)
    {
        // Abramowitz-Stegun 7.1.26 is too coarse for 1e-5; integrate the series (|x| small here: rows are O(1))
        double sum = 0, term = x, n = 0;
        while (Math.Abs(term) > 1e-17 && n < 200) { sum += term / (2 * n + 1); n++; term *= -x * x / n; }
        return 2 / Math.Sqrt(Math.PI) * sum;
    }

    // RMSNorm fused into the matvec: every depth, bf16/f16/f32, gemma's 1 + g, a partial last block, scalar tail
    [Theory]
    [InlineData(DType.BF16, 300, 4096, false, true, 16)]
    [InlineData(DType.F16, 203, 4096, true, false, 8)]
    [InlineData(DType.BF16, 1000, 2048, true, true, 0)]
    [InlineData(DType.BF16, 500, 3072, true, false, 16)]  // deep 16 asked, 3072 columns: deep 8
    [InlineData(DType.F32, 77, 1024, false, false, 0)]
    [InlineData(DType.BF16, 45, 100, false, true, 0)]     // cols % 8 != 0
    public void MatvecNormMatchesReference(DType dt, int rows, int cols, bool addOne, bool accumulate, int deep)
    {
        var why = CudaDeviceInfo.Unavailable();
        if (why is not null) Assert.Skip("No usable CUDA device: " + why);
        using var ctx = CudaContext.Acquire(0);
        using var k = new CudaKernels(ctx, CudaDeviceInfo.List()[0].Arch, null, 2, null, null, deep);
        using var s = new CudaStream(ctx);
        var r = Gpu.Rng();
        float[] wv; CudaDeviceMemory W;
        if (dt == DType.F32) { wv = Gpu.RandF(r, rows * cols, 0.1f); W = Gpu.Up(ctx, wv); }
        else { var (wb, v) = Gpu.RandHalf(r, rows * cols, dt, 0.1f); wv = v; W = Gpu.Up(ctx, wb); }
        using var _w = W;
        var x = Gpu.RandF(r, cols, 3); var g = Gpu.RandF(r, cols); var y0 = Gpu.RandF(r, rows); var b = Gpu.RandF(r, rows);
        using var X = Gpu.Up(ctx, x); using var G = Gpu.Up(ctx, g); using var Y = Gpu.Up(ctx, y0); using var B = Gpu.Up(ctx, b);
        k.MatvecNorm(s, dt, W.Ptr, X.Ptr, Y.Ptr, B.Ptr, rows, cols, accumulate, G.Ptr, 1e-5f, addOne);
        s.Synchronize();
        double ss = 0; foreach (var v in x) ss += (double)v * v;
        double inv = 1 / Math.Sqrt(ss / cols + 1e-5);
        var want = new float[rows];
        for (int i = 0; i < rows; i++)
        {
            double a = 0;
            for (int j = 0; j < cols; j++) a += (double)wv[(long)i * cols + j] * (x[j] * inv * (addOne ? 1 + g[j] : g[j]));
            a += b[i];
            if (accumulate) a += y0[i];
            want[i] = (float)a;
        }
        Gpu.Close(Y.ToArray<float>(rows), want, 2e-6, $"matvec+norm {dt} {rows}x{cols} deep {deep}");
    }

    // RMSNorm folded into the kernels around it (CudaKernels.FoldNorm): embed and an accumulating matvec as producers
    // (x, x * g and the per-block sums of x^2), each consumer kind (plain matvec at every depth, qkv + RoPE, gate_up +
    // activation) against rmsnorm-then-matvec in double; a partial last block and a scalar tail (D = 1003); early loads
    [Theory]
    [InlineData(DType.BF16, 4096, false, false)]
    [InlineData(DType.F16, 4096, true, true)]
    [InlineData(DType.BF16, 1003, true, false)]
    [InlineData(DType.F16, 2048, false, true)]
    public void FoldedNormMatchesRmsNormThenMatvec(DType dt, int D, bool addOne, bool early)
    {
        var why = CudaDeviceInfo.Unavailable();
        if (why is not null) Assert.Skip("No usable CUDA device: " + why);
        using var ctx = CudaContext.Acquire(0);
        using var k = new CudaKernels(ctx, CudaDeviceInfo.List()[0].Arch, matvecEarly: early);
        using var s = new CudaStream(ctx);
        var r = Gpu.Rng();
        const float eps = 1e-5f;
        int V = 7, tok = r.Next(V), Q = 512, F = 300, H = 4, K = 2, Hd = 64, qkvRows = (H + 2 * K) * Hd, maxCtx = 16, pos = 5;
        var (tb, tv) = Gpu.RandHalf(r, V * D, dt);
        var (ob, ov) = Gpu.RandHalf(r, D * Q, dt, 0.05f);
        var (cb, cv) = Gpu.RandHalf(r, 300 * D, dt, 0.1f);
        var (gb, gv) = Gpu.RandHalf(r, 2 * F * D, dt, 0.1f);
        var (qb, qv) = Gpu.RandHalf(r, qkvRows * D, dt, 0.1f);
        var att = Gpu.RandF(r, Q); var bo = Gpu.RandF(r, D); var bc = Gpu.RandF(r, 300);
        var g1 = Gpu.RandF(r, D); var g2 = Gpu.RandF(r, D);
        var (cos, sin) = Gpu.RopeTables(maxCtx, Hd);
        using var T = Gpu.Up(ctx, tb); using var Wo = Gpu.Up(ctx, ob); using var Wc = Gpu.Up(ctx, cb); using var Wg = Gpu.Up(ctx, gb); using var Wq = Gpu.Up(ctx, qb);
        using var A = Gpu.Up(ctx, att); using var Bo = Gpu.Up(ctx, bo); using var Bc = Gpu.Up(ctx, bc); using var G1 = Gpu.Up(ctx, g1); using var G2 = Gpu.Up(ctx, g2);
        using var C = Gpu.Up(ctx, cos); using var S = Gpu.Up(ctx, sin);
        using var X = Gpu.Zeros(ctx, D * 4L); using var Xg = Gpu.Zeros(ctx, D * 4L); using var Ss = Gpu.Zeros(ctx, D * 4L);
        using var Y1 = Gpu.Zeros(ctx, 300 * 4L); using var Y2 = Gpu.Zeros(ctx, 300 * 4L); using var Hh = Gpu.Zeros(ctx, F * 4L); using var Qo = Gpu.Zeros(ctx, qkvRows * 4L);
        using var KC = Gpu.Zeros(ctx, (long)K * maxCtx * Hd * 2); using var VC = Gpu.Zeros(ctx, (long)K * maxCtx * Hd * 2);
        using var step = Gpu.Up(ctx, new[] { tok, pos });

        // embed (producer of norm 1) -> classifier-like matvec and qkv + RoPE (consumers)
        k.Embed(s, dt, T.Ptr, X.Ptr, D, 1f, step.Ptr, NormFold.Producer(G1.Ptr, Xg.Ptr, Ss.Ptr, addOne));
        var c1 = NormFold.Consumer(Ss.Ptr, CudaKernels.EmbedBlocks(D), eps);
        k.Matvec(s, dt, Wc.Ptr, Xg.Ptr, Y1.Ptr, Bc.Ptr, 300, D, false, c1);
        k.MatvecQkvRope(s, dt, Wq.Ptr, Xg.Ptr, Qo.Ptr, 0, H, K, Hd, D, C.Ptr, S.Ptr, KC.Ptr, VC.Ptr, maxCtx, step.Ptr, c1);
        s.Synchronize();
        var x = tv.AsSpan(tok * D, D).ToArray();
        double[] Norm(float[] v, float[] g)
        {
            double ss = 0; foreach (var e in v) ss += (double)e * e;
            double inv = 1 / Math.Sqrt(ss / D + eps);
            return Enumerable.Range(0, D).Select(j => v[j] * inv * (addOne ? 1 + g[j] : g[j])).ToArray();
        }
        double Dot(float[] w, int row, double[] v) { double a = 0; for (int j = 0; j < D; j++) a += (double)w[(long)row * D + j] * v[j]; return a; }
        var n1 = Norm(x, g1);
        Gpu.Close(X.ToArray<float>(D), x, 0, "embed x");
        Gpu.Close(Xg.ToArray<float>(D), x.Select((v, j) => v * (addOne ? 1 + g1[j] : g1[j])).ToArray(), 1e-7, "embed x * g");
        Gpu.Close(Y1.ToArray<float>(300), Enumerable.Range(0, 300).Select(i => (float)(Dot(cv, i, n1) + bc[i])).ToArray(), 2e-6, $"consumer matvec after embed, {dt} D={D}");
        var qkv = Enumerable.Range(0, qkvRows).Select(i => (float)Dot(qv, i, n1)).ToArray();
        Gpu.Close(Qo.ToArray<float>(H * Hd), Enumerable.Range(0, H).SelectMany(b => Gpu.RopeHead(qkv, b, H, K, Hd, Hd / 2, cos, sin, pos)).ToArray(), 3e-6, "consumer qkv + RoPE");

        // o-like matvec accumulating into x (producer of norm 2) -> gate_up + activation and a plain matvec (consumers)
        k.Matvec(s, dt, Wo.Ptr, A.Ptr, X.Ptr, Bo.Ptr, D, Q, true, NormFold.Producer(G2.Ptr, Xg.Ptr, Ss.Ptr, addOne));
        var c2 = NormFold.Consumer(Ss.Ptr, CudaKernels.MatvecBlocks(D), eps);
        k.MatvecGlu(s, dt, Wg.Ptr, Xg.Ptr, Hh.Ptr, 0, F, D, Activation.Silu, c2);
        k.Matvec(s, dt, Wc.Ptr, Xg.Ptr, Y2.Ptr, 0, 300, D, false, c2);
        s.Synchronize();
        var x2 = new float[D];
        for (int i = 0; i < D; i++) { double a = 0; for (int j = 0; j < Q; j++) a += (double)ov[(long)i * Q + j] * att[j]; x2[i] = (float)(a + bo[i] + x[i]); }
        Gpu.Close(X.ToArray<float>(D), x2, 2e-6, "producer matvec residual");
        var n2 = Norm(x2, g2);
        var hWant = Enumerable.Range(0, F).Select(i => { double gt = Dot(gv, i, n2), up = Dot(gv, F + i, n2); return (float)(gt / (1 + Math.Exp(-gt)) * up); }).ToArray();
        Gpu.Close(Hh.ToArray<float>(F), hWant, 1e-5, "consumer gate_up + activation");
        Gpu.Close(Y2.ToArray<float>(300), Enumerable.Range(0, 300).Select(i => (float)Dot(cv, i, n2)).ToArray(), 2e-6, "consumer matvec after the producer matvec");
    }

    [Theory]
    [InlineData(4096, false)]
    [InlineData(3000, true)]
    public void RmsNormMatchesReference(int n, bool addOne)
    {
        var (ctx, k, s) = Gpu.Require();
        using var _c = ctx; using var _k = k; using var _s = s;
        var r = Gpu.Rng();
        var x = Gpu.RandF(r, n, 3); var w = Gpu.RandF(r, n);
        using var X = Gpu.Up(ctx, x); using var Wt = Gpu.Up(ctx, w); using var O = Gpu.Zeros(ctx, n * 4L);
        k.RmsNorm(s, X.Ptr, Wt.Ptr, O.Ptr, n, 1e-5f, addOne);
        s.Synchronize();
        double ss = 0; foreach (var v in x) ss += (double)v * v;
        double inv = 1 / Math.Sqrt(ss / n + 1e-5);
        var want = new float[n];
        for (int i = 0; i < n; i++) want[i] = (float)(x[i] * inv * (addOne ? 1 + w[i] : w[i]));
        Gpu.Close(O.ToArray<float>(n), want, 2e-6, "rmsnorm");
    }

    [Theory]
    [InlineData(8, 2, 64, 64, false, 7)]
    [InlineData(4, 4, 128, 96, true, 0)]     // partial rotary, qk-norm
    [InlineData(6, 3, 96, 96, false, 130)]
    public void QkvRopeCacheMatchesReference(int H, int K, int Hd, int rot, bool qkNorm, int pos)
    {
        var (ctx, k, s) = Gpu.Require();
        using var _c = ctx; using var _k = k; using var _s = s;
        var r = Gpu.Rng();
        int maxCtx = 160, half = rot / 2, n = (H + 2 * K) * Hd;
        var qkv = Gpu.RandF(r, n, 2);
        var qn = Gpu.RandF(r, Hd); var kn = Gpu.RandF(r, Hd);
        var (cos, sin) = Gpu.RopeTables(maxCtx, rot);
        using var Q = Gpu.Up(ctx, qkv); using var QN = Gpu.Up(ctx, qn); using var KN = Gpu.Up(ctx, kn);
        using var C = Gpu.Up(ctx, cos); using var S = Gpu.Up(ctx, sin);
        using var KC = Gpu.Zeros(ctx, (long)K * maxCtx * Hd * 2); using var VC = Gpu.Zeros(ctx, (long)K * maxCtx * Hd * 2);
        using var step = Gpu.Up(ctx, new[] { 0, pos });
        k.QkvRopeCache(s, Q.Ptr, QN.Ptr, KN.Ptr, qkNorm, 1e-6f, false, C.Ptr, S.Ptr, rot, KC.Ptr, VC.Ptr, maxCtx, H, K, Hd, step.Ptr);
        s.Synchronize();
        float[] Head(int b) => Gpu.RopeHead(qkv, b, H, K, Hd, half, cos, sin, pos, qkNorm, qn, kn);
        var gotQ = Q.ToArray<float>(H * Hd);
        var wantQ = Enumerable.Range(0, H).SelectMany(Head).ToArray();
        Gpu.Close(gotQ, wantQ, 3e-6, "rotated q");
        var (kc, vc) = CheckCacheRows(KC, VC, H, K, Hd, maxCtx, pos, Head);
    }

    [Theory]
    [InlineData(8, 2, 128, 37, 0)]
    [InlineData(4, 4, 64, 300, 0)]
    [InlineData(6, 2, 96, 200, 50)]    // sliding window
    [InlineData(2, 1, 256, 0, 0)]      // first position
    public void AttentionMatchesReference(int H, int K, int Hd, int pos, int window)
        => CheckAttention(H, K, Hd, pos, window, split: false, blocksPerSm: 2, pipelined: false);

    // split (flash-decoding) kernel: GQA groups of 1..16 query heads (16: two blocks per kv head), head_dim 16..256,
    // one chunk and many chunks, sliding window, different grid sizes
    [Theory]
    [InlineData(8, 2, 128, 37, 0, 2)]
    [InlineData(32, 8, 128, 3999, 0, 2)]   // Llama-3-8B heads at context 4000
    [InlineData(4, 1, 64, 300, 0, 8)]
    [InlineData(12, 2, 64, 1000, 100, 2)]  // G = 6 (MAXG 8), window
    [InlineData(16, 1, 32, 2000, 0, 1)]    // G = 16: two head groups
    [InlineData(2, 2, 16, 500, 0, 4)]      // G = 1, 2 lanes per row
    [InlineData(4, 2, 256, 700, 0, 3)]     // 32 lanes per row
    [InlineData(8, 2, 128, 0, 0, 2)]       // first position
    [InlineData(4, 2, 8, 129, 0, 2)]       // head_dim 8: one lane per row
    public void SplitAttentionMatchesReference(int H, int K, int Hd, int pos, int window, int blocksPerSm)
    {
        CheckAttention(H, K, Hd, pos, window, split: true, blocksPerSm, pipelined: true);
        CheckAttention(H, K, Hd, pos, window, split: true, blocksPerSm, pipelined: false);
    }

    // the fp16 cache on the tensor cores (CudaKernels.AttentionF16Wide): head_dim 64 and 128, GQA groups of 1..16 (g4 and
    // g8 kernels, two head groups), one chunk and many, sliding window, the first position, a tile cut by pos
    [Theory]
    [InlineData(8, 2, 128, 37, 0, 2)]
    [InlineData(32, 8, 128, 3999, 0, 2)]   // Llama-3-8B heads at context 4000
    [InlineData(32, 8, 128, 20000, 0, 2)]  // long: many tiles per warp
    [InlineData(4, 1, 64, 300, 0, 8)]
    [InlineData(12, 2, 64, 1000, 100, 2)]  // G = 6 (g8), window
    [InlineData(16, 1, 128, 2000, 0, 1)]   // G = 16: two head groups
    [InlineData(2, 2, 64, 500, 0, 4)]      // G = 1
    [InlineData(8, 2, 128, 0, 0, 2)]       // first position
    [InlineData(8, 4, 64, 16, 0, 2)]       // pos opens a tile
    public void WideF16SplitAttentionMatchesReference(int H, int K, int Hd, int pos, int window, int blocksPerSm)
        => CheckAttention(H, K, Hd, pos, window, split: true, blocksPerSm, pipelined: false, wide: true);

    // programmatic dependent launch: a chain matvec -> rmsnorm -> matvec (+= y) captured into a graph, each kernel
    // reading what the previous one wrote; launched early, a kernel that read before pdl_wait would see stale data
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void DependentChainMatchesReference(bool pdl)
    {
        var why = CudaDeviceInfo.Unavailable();
        if (why is not null) Assert.Skip("No usable CUDA device: " + why);
        using var ctx = CudaContext.Acquire(0);
        using var k = new CudaKernels(ctx, CudaDeviceInfo.List()[0].Arch, null, 2, pdl);
        using var s = new CudaStream(ctx);
        var r = Gpu.Rng();
        int n = 2048, m = 3072;
        var (w0b, w0) = Gpu.RandHalf(r, m * n, DType.BF16, 0.05f);
        var (w1b, w1) = Gpu.RandHalf(r, n * m, DType.BF16, 0.05f);
        var x = Gpu.RandF(r, n); var nw = Gpu.RandF(r, m); var c0 = Gpu.RandF(r, n);
        using var W0 = Gpu.Up(ctx, w0b); using var W1 = Gpu.Up(ctx, w1b); using var X = Gpu.Up(ctx, x); using var NW = Gpu.Up(ctx, nw);
        using var A = Gpu.Zeros(ctx, m * 4L); using var N = Gpu.Zeros(ctx, m * 4L); using var C = Gpu.Up(ctx, c0);
        s.Synchronize();
        s.BeginCapture();
        k.Matvec(s, DType.BF16, W0.Ptr, X.Ptr, A.Ptr, 0, m, n, false);
        k.RmsNorm(s, A.Ptr, NW.Ptr, N.Ptr, m, 1e-5f, false);
        k.Matvec(s, DType.BF16, W1.Ptr, N.Ptr, C.Ptr, 0, n, m, true);
        using var g = s.EndCapture();
        g.Launch(s);
        s.Synchronize();
        var a = new double[m];
        for (int i = 0; i < m; i++) { double t = 0; for (int j = 0; j < n; j++) t += (double)w0[(long)i * n + j] * x[j]; a[i] = t; }
        double ss = 0; foreach (var v in a) ss += v * v;
        double inv = 1 / Math.Sqrt(ss / m + 1e-5);
        var want = new float[n];
        for (int i = 0; i < n; i++)
        {
            double t = c0[i];
            for (int j = 0; j < m; j++) t += (double)w1[(long)i * m + j] * (a[j] * inv * nw[j]);
            want[i] = (float)t;
        }
        Gpu.Close(C.ToArray<float>(n), want, 1e-5, $"matvec -> rmsnorm -> matvec chain (pdl {pdl}, active {k.Programmatic})");
    }

    private static void CheckAttention(int H, int K, int Hd, int pos, int window, bool split, int blocksPerSm, bool pipelined, bool wide = false)
    {
        var why = CudaDeviceInfo.Unavailable();
        if (why is not null) Assert.Skip("No usable CUDA device: " + why);
        using var ctx = CudaContext.Acquire(0);
        using var k = new CudaKernels(ctx, CudaDeviceInfo.List()[0].Arch, null, blocksPerSm, null, pipelined, attentionF16Wide: wide);
        if (wide && !k.AttentionF16Wide) Assert.Skip($"the tensor-core fp16 attention needs sm_80 (this device is sm_{k.Arch})");
        if (wide) Assert.True(CudaKernels.SplitAttentionF16WideSupported(H, K, Hd), "the tensor-core fp16 kernel should take this shape");
        using var s = new CudaStream(ctx);
        var r = Gpu.Rng();
        int maxCtx = Math.Max(320, pos + 17);
        var q = Gpu.RandF(r, H * Hd);
        var kc = new ushort[K * maxCtx * Hd]; var vc = new ushort[K * maxCtx * Hd];
        for (int i = 0; i < kc.Length; i++) { kc[i] = BitConverter.HalfToUInt16Bits((Half)(r.NextDouble() * 2 - 1)); vc[i] = BitConverter.HalfToUInt16Bits((Half)(r.NextDouble() * 2 - 1)); }
        using var Q = Gpu.Up(ctx, q); using var KC = Gpu.Up(ctx, kc); using var VC = Gpu.Up(ctx, vc); using var O = Gpu.Zeros(ctx, H * Hd * 4L);
        using var step = Gpu.Up(ctx, new[] { 0, pos });
        long wsBytes = split ? k.AttentionWorkspaceBytes(H, K, Hd) : 0;
        if (split) Assert.True(wsBytes > 0, "split kernel should take this shape");
        using var WS = Gpu.Zeros(ctx, Math.Max(wsBytes, 4));
        float scale = 1f / MathF.Sqrt(Hd);
        var want = new float[H * Hd];
        int start = window > 0 ? Math.Max(0, pos - window + 1) : 0;
        for (int h = 0; h < H; h++)
        {
            int kh = h / (H / K);
            var sc = new double[pos + 1]; double mx = double.NegativeInfinity;
            for (int j = start; j <= pos; j++)
            {
                double a = 0;
                for (int d = 0; d < Hd; d++) a += q[h * Hd + d] * (double)(float)BitConverter.UInt16BitsToHalf(kc[(kh * maxCtx + j) * Hd + d]);
                sc[j] = a * scale; mx = Math.Max(mx, sc[j]);
            }
            double sum = 0; for (int j = start; j <= pos; j++) { sc[j] = Math.Exp(sc[j] - mx); sum += sc[j]; }
            for (int d = 0; d < Hd; d++)
            {
                double o = 0;
                for (int j = start; j <= pos; j++) o += sc[j] / sum * (float)BitConverter.UInt16BitsToHalf(vc[(kh * maxCtx + j) * Hd + d]);
                want[h * Hd + d] = (float)o;
            }
        }
        // twice, the output poisoned (NaN) before the second launch: the split kernel's counters must be reset by
        // the first launch or no block merges and NaN stays
        // (and bit-identical both times: the merge order is fixed, so a step is reproducible)
        float[]? first = null;
        for (int rep = 0; rep < 2; rep++)
        {
            if (rep == 1) O.CopyFromHost<float>(Enumerable.Repeat(float.NaN, H * Hd).ToArray());
            k.Attention(s, Q.Ptr, KC.Ptr, VC.Ptr, O.Ptr, H, K, Hd, maxCtx, window, scale, step.Ptr, split ? WS.Ptr : 0);
            s.Synchronize();
            var got = O.ToArray<float>(H * Hd);
            Gpu.Close(got, want, 1e-5, $"attention {(split ? (k.AttentionPipelined ? "split pipelined" : "split") : "single")} pos {pos} window {window} launch {rep + 1}");
            if (first is null) first = got;
            else Assert.True(first.AsSpan().SequenceEqual(got), "the same launch twice gave different bits");
        }
    }

    [Theory]
    [InlineData(Activation.Silu, 1)]
    [InlineData(Activation.GeluTanh, 2)]
    public void GateActMatchesReference(Activation act, int slots)
    {
        var (ctx, k, s) = Gpu.Require();
        using var _c = ctx; using var _k = k; using var _s = s;
        var r = Gpu.Rng();
        int F = 1000;
        var gu = Gpu.RandF(r, slots * 2 * F, 4);
        using var G = Gpu.Up(ctx, gu); using var Hm = Gpu.Zeros(ctx, slots * F * 4L);
        k.GateAct(s, G.Ptr, Hm.Ptr, F, slots, act);
        s.Synchronize();
        var want = new float[slots * F];
        for (int sl = 0; sl < slots; sl++) for (int i = 0; i < F; i++)
        {
            float g = gu[sl * 2 * F + i], u = gu[sl * 2 * F + F + i];
            want[sl * F + i] = (act == Activation.Silu ? Gpu.Silu(g) : Gpu.GeluTanh(g)) * u;
        }
        Gpu.Close(Hm.ToArray<float>(slots * F), want, 1e-5, $"gate {act}");
    }

    [Theory]
    [InlineData(DType.BF16, 8, 2)]
    [InlineData(DType.F16, 16, 4)]
    public void MoeRouteMatvecCombineMatchReference(DType dt, int E, int top)
    {
        var (ctx, k, s) = Gpu.Require();
        using var _c = ctx; using var _k = k; using var _s = s;
        var r = Gpu.Rng();
        int D = 256, R = 192;
        var logits = Gpu.RandF(r, E, 3);
        var x = Gpu.RandF(r, D);
        var experts = Enumerable.Range(0, E).Select(_ => Gpu.RandHalf(r, R * D, dt, 0.1f)).ToArray();
        using var L = Gpu.Up(ctx, logits); using var X = Gpu.Up(ctx, x);
        using var Idx = Gpu.Zeros(ctx, top * 4L); using var Wt = Gpu.Zeros(ctx, top * 4L);
        var mems = experts.Select(e => Gpu.Up(ctx, e.Bits)).ToArray();
        try
        {
            using var table = Gpu.Up(ctx, mems.Select(m => m.Ptr).ToArray());
            using var Y = Gpu.Zeros(ctx, top * R * 4L);
            k.MoeRoute(s, L.Ptr, E, top, Idx.Ptr, Wt.Ptr);
            k.MoeMatvec(s, dt, table.Ptr, Idx.Ptr, X.Ptr, 0, Y.Ptr, R, D, top);
            var resid = Gpu.RandF(r, R);
            using var Res = Gpu.Up(ctx, resid);
            k.MoeCombine(s, Res.Ptr, Y.Ptr, Wt.Ptr, top, R);
            s.Synchronize();
            var (order, weights) = RouteReference(logits.Select(v => (double)v).ToArray(), top);
            Assert.Equal(order, Idx.ToArray<int>(top));
            Gpu.Close(Wt.ToArray<float>(top), weights.Select(v => (float)v).ToArray(), 1e-5, "router weights");
            var want = (float[])resid.Clone();
            for (int sl = 0; sl < top; sl++)
            {
                var w = experts[order[sl]].Values; double ws = weights[sl];
                for (int i = 0; i < R; i++) { double a = 0; for (int j = 0; j < D; j++) a += (double)w[i * D + j] * x[j]; want[i] += (float)(ws * a); }
            }
            Gpu.Close(Res.ToArray<float>(R), want, 1e-5, "moe output");
        }
        finally { foreach (var m in mems) m.Dispose(); }
    }

    // The fused MoE gate against the three kernels' reference: the norm (written for the experts), the router's logits,
    // the routing. D 4096 takes the 16-byte path (bf16 / f16 routers), D 260 and the f32 router the element path; E 60
    // runs several rounds of rows (one warp per row), E 8 four warps per row.
    [Theory]
    [InlineData(DType.BF16, 4096, 8, 2, false)]
    [InlineData(DType.F16, 4096, 60, 4, true)]
    [InlineData(DType.BF16, 260, 8, 2, true)]
    [InlineData(DType.F32, 1024, 16, 2, false)]
    public void MoeGateMatchesNormRouterAndRoute(DType rt, int D, int E, int top, bool addOne)
    {
        var (ctx, k, s) = Gpu.Require();
        using var _c = ctx; using var _k = k; using var _s = s;
        var r = Gpu.Rng();
        var x = Gpu.RandF(r, D, 3); var g = Gpu.RandF(r, D);
        float[] router; CudaDeviceMemory R;
        if (rt == DType.F32) { router = Gpu.RandF(r, E * D, 0.05f); R = Gpu.Up(ctx, router); }
        else { var h = Gpu.RandHalf(r, E * D, rt, 0.05f); router = h.Values; R = Gpu.Up(ctx, h.Bits); }
        using var _r = R;
        using var X = Gpu.Up(ctx, x); using var Gm = Gpu.Up(ctx, g);
        using var Xn = Gpu.Zeros(ctx, D * 4L); using var Lg = Gpu.Zeros(ctx, E * 4L);
        using var Idx = Gpu.Zeros(ctx, top * 4L); using var Wt = Gpu.Zeros(ctx, top * 4L);
        k.MoeGate(s, rt, R.Ptr, X.Ptr, Gm.Ptr, 1e-5f, addOne, Xn.Ptr, Lg.Ptr, E, D, top, Idx.Ptr, Wt.Ptr);
        s.Synchronize();
        double ss = 0; foreach (var v in x) ss += (double)v * v;
        double inv = 1 / Math.Sqrt(ss / D + 1e-5);
        var xn = new double[D];
        for (int i = 0; i < D; i++) xn[i] = x[i] * inv * (addOne ? 1 + g[i] : g[i]);
        Gpu.Close(Xn.ToArray<float>(D), xn.Select(v => (float)v).ToArray(), 2e-6, "moe gate norm");
        var logits = new double[E];
        for (int e = 0; e < E; e++) { double a = 0; for (int i = 0; i < D; i++) a += (double)router[e * D + i] * xn[i]; logits[e] = a; }
        Gpu.Close(Lg.ToArray<float>(E), logits.Select(v => (float)v).ToArray(), 1e-5, "moe gate logits");
        var (order, weights) = RouteReference(logits, top);
        Assert.Equal(order, Idx.ToArray<int>(top));
        Gpu.Close(Wt.ToArray<float>(top), weights.Select(v => (float)v).ToArray(), 1e-5, "moe gate weights");
    }

    // moe_route's reference: softmax over all experts, the top k (ties: the lower id), their weights renormalised to 1
    private static (int[] Order, double[] Weights) RouteReference(double[] logits, int top)
    {
        double mx = logits.Max();
        var p = logits.Select(v => Math.Exp(v - mx)).ToArray(); double sum = p.Sum();
        var order = Enumerable.Range(0, logits.Length).OrderByDescending(e => p[e]).ThenBy(e => e).Take(top).ToArray();
        double chosen = order.Sum(e => p[e] / sum);
        return (order, order.Select(e => p[e] / sum / chosen).ToArray());
    }

    [Theory]
    [InlineData(128256, 1)]
    [InlineData(32000, 40)]
    [InlineData(5000, 64)]
    public void ArgmaxAndTopKMatchReference(int n, int topk)
    {
        var (ctx, k, s) = Gpu.Require();
        using var _c = ctx; using var _k = k; using var _s = s;
        var r = Gpu.Rng();
        var x = Gpu.RandF(r, n, 10);
        x[r.Next(n)] = 50; x[r.Next(n)] = 50;     // a tie at the top: the lower index wins
        using var X = Gpu.Up(ctx, x);
        using var pv = Gpu.Zeros(ctx, CudaKernels.ArgmaxBlocks * 4L); using var pi = Gpu.Zeros(ctx, CudaKernels.ArgmaxBlocks * 4L);
        using var res = Gpu.Zeros(ctx, 8);
        k.Argmax(s, X.Ptr, n, pv.Ptr, pi.Ptr, res.Ptr);
        int cand = CudaKernels.TopKBlocks(n) * topk;
        using var cv = Gpu.Zeros(ctx, cand * 4L); using var ci = Gpu.Zeros(ctx, cand * 4L);
        using var ov = Gpu.Zeros(ctx, topk * 4L); using var oi = Gpu.Zeros(ctx, topk * 4L);
        k.TopK(s, X.Ptr, n, topk, cv.Ptr, ci.Ptr, ov.Ptr, oi.Ptr);
        s.Synchronize();
        var order = Enumerable.Range(0, n).OrderByDescending(i => x[i]).ThenBy(i => i).Take(topk).ToArray();
        Assert.Equal(order[0], res.ToArray<int>(2)[0]);
        Assert.Equal(order, oi.ToArray<int>(topk));
        Assert.Equal(order.Select(i => x[i]).ToArray(), ov.ToArray<float>(topk));
    }

    [Theory]
    [InlineData(DType.BF16, false)]
    [InlineData(DType.F16, false)]
    [InlineData(DType.BF16, true)]
    public void EmbeddingMatchesReference(DType dt, bool gemma)
    {
        var (ctx, k, s) = Gpu.Require();
        using var _c = ctx; using var _k = k; using var _s = s;
        var r = Gpu.Rng();
        int V = 500, D = 384, tok = r.Next(V);
        var (tb, tv) = Gpu.RandHalf(r, V * D, dt);
        using var T = Gpu.Up(ctx, tb); using var O = Gpu.Zeros(ctx, D * 4L); using var step = Gpu.Up(ctx, new[] { tok, 0 });
        float scale = gemma ? MathF.Sqrt(D) : 1f;
        k.Embed(s, dt, T.Ptr, O.Ptr, D, scale, step.Ptr);
        s.Synchronize();
        Assert.Equal(tv.AsSpan(tok * D, D).ToArray().Select(v => v * scale).ToArray(), O.ToArray<float>(D));
    }

    [Theory]
    [InlineData(DType.BF16, false)]
    [InlineData(DType.F16, false)]
    [InlineData(DType.F32, false)]
    [InlineData(DType.BF16, true)]
    public void FillMatchesHostHashBitForBit(DType dt, bool asF32)
    {
        var (ctx, k, s) = Gpu.Require();
        using var _c = ctx; using var _k = k; using var _s = s;
        var r = Gpu.Rng();
        int n = 100_003; int seed = r.Next();
        string name = $"model.layers.{r.Next(32)}.mlp.up_proj.weight";
        ulong key = SyntheticHash.Key(seed, name);
        float scale = 0.02f + (float)r.NextDouble(), offset = asF32 ? 1f : 0f;
        int elem = dt == DType.F32 || asF32 ? 4 : 2;
        using var O = Gpu.Zeros(ctx, (long)n * elem);
        k.FillSynthetic(s, O.Ptr, n, key, scale, offset, dt, asF32);
        s.Synchronize();
        var want = Enumerable.Range(0, n).Select(i => SyntheticHash.Value(key, i, scale, offset)).ToArray();
        if (dt == DType.F32 || asF32)
        {
            var got = O.ToArray<float>(n);
            var exp = dt == DType.F32 ? want : want.Select(v => Gpu.FromBits(Gpu.ToBits(v, dt), dt)).ToArray();
            Assert.Equal(exp, got);
        }
        else Assert.Equal(want.Select(v => Gpu.ToBits(v, dt)).ToArray(), O.ToArray<ushort>(n));
    }
}
