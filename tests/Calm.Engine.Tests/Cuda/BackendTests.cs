using Calm.Engine.Cuda;
using Calm.Engine.Model;
using Calm.Engine.Weights;

namespace Calm.Engine.Tests.Cuda;

/// <summary>CudaBackend end to end on small random models of every architecture, against a float64 reference
/// forward written here from the HF definitions (fp16 rounding of cached k/v mirrored).</summary>
[Trait("Category", "GPU")]
[Collection("GPU")]   // one at a time: the tests read free GPU memory, which a parallel test would change
public class BackendTests
{
    internal static ModelConfig Cfg(string arch) => arch switch
    {
        "llama" => Base(Architecture.Llama),
        "qwen2" => Base(Architecture.Qwen2) with { QkvBias = true },
        "qwen3" => Base(Architecture.Qwen3) with { QkNorm = true, HeadDim = 96 },
        "gemma" => Base(Architecture.Gemma) with { ScaleEmbeddings = true, NormAddOne = true, HiddenAct = Activation.GeluTanh, TieWordEmbeddings = true },
        "mistral" => Base(Architecture.Mistral) with { SlidingWindow = 5 },
        "phi3" => Base(Architecture.Phi3) with { PartialRotaryFactor = 0.5 },
        "mixtral" => Base(Architecture.Mixtral) with { NumExperts = 4, NumExpertsPerToken = 2 },
        "llama-bias" => Base(Architecture.Llama) with { QkvBias = true, OutputBias = true, MlpBias = true, DType = DType.F16 },
        _ => throw new ArgumentException(arch),
    };

    internal static ModelConfig Base(Architecture a) => new()
    {
        Architecture = a, ModelType = a.ToString().ToLowerInvariant(), VocabSize = 1000, HiddenSize = 256, IntermediateSize = 512,
        NumLayers = 2, NumHeads = 4, NumKvHeads = 2, HeadDim = 64, MaxPositionEmbeddings = 64, RmsNormEps = 1e-5, RopeTheta = 10000,
    };

    internal sealed class Model
    {
        public required ModelConfig C;
        public required ModelWeights W;
        public required NativeWeightStore Store;
    }

    internal static Model Build(ModelConfig c, Random r)
    {
        var store = new NativeWeightStore();
        var dt = c.DType;
        unsafe Tensor T(string name, float scale, float offset, params long[] shape)
        {
            long n = 1; foreach (var d in shape) n *= d;
            var p = store.Allocate(n * 2);
            var a = (ushort*)p;
            for (long i = 0; i < n; i++) a[i] = Gpu.ToBits((float)(r.NextDouble() * 2 - 1) * scale + offset, dt);
            return new Tensor(name, dt, shape, p, "synthetic");
        }
        int D = c.HiddenSize, F = c.IntermediateSize;
        float ws = 1f / MathF.Sqrt(D);
        var layers = new LayerWeights[c.NumLayers];
        for (int i = 0; i < c.NumLayers; i++)
        {
            float normOff = c.NormAddOne ? 0f : 1f;
            layers[i] = new LayerWeights
            {
                AttnNorm = T($"l{i}.an", 0.1f, normOff, D), FfnNorm = T($"l{i}.fn", 0.1f, normOff, D),
                Wq = T($"l{i}.q", ws, 0, c.QDim, D), Wk = T($"l{i}.k", ws, 0, c.KvDim, D), Wv = T($"l{i}.v", ws, 0, c.KvDim, D),
                Wo = T($"l{i}.o", 1f / MathF.Sqrt(c.QDim), 0, D, c.QDim),
                Bq = c.QkvBias ? T($"l{i}.bq", 0.1f, 0, c.QDim) : null, Bk = c.QkvBias ? T($"l{i}.bk", 0.1f, 0, c.KvDim) : null,
                Bv = c.QkvBias ? T($"l{i}.bv", 0.1f, 0, c.KvDim) : null, Bo = c.OutputBias ? T($"l{i}.bo", 0.1f, 0, D) : null,
                QNorm = c.QkNorm ? T($"l{i}.qn", 0.1f, 1, c.HeadDim) : null, KNorm = c.QkNorm ? T($"l{i}.kn", 0.1f, 1, c.HeadDim) : null,
                WGate = c.IsMoE ? null : T($"l{i}.g", ws, 0, F, D), WUp = c.IsMoE ? null : T($"l{i}.u", ws, 0, F, D),
                WDown = c.IsMoE ? null : T($"l{i}.d", 1f / MathF.Sqrt(F), 0, D, F),
                BGate = c.MlpBias ? T($"l{i}.bg", 0.1f, 0, F) : null, BUp = c.MlpBias ? T($"l{i}.bu", 0.1f, 0, F) : null,
                BDown = c.MlpBias ? T($"l{i}.bd", 0.1f, 0, D) : null,
                Router = c.IsMoE ? T($"l{i}.router", 1f, 0, c.NumExperts, D) : null,
                ExpertGate = c.IsMoE ? Enumerable.Range(0, c.NumExperts).Select(e => T($"l{i}.e{e}.w1", ws, 0, F, D)).ToArray() : null,
                ExpertUp = c.IsMoE ? Enumerable.Range(0, c.NumExperts).Select(e => T($"l{i}.e{e}.w3", ws, 0, F, D)).ToArray() : null,
                ExpertDown = c.IsMoE ? Enumerable.Range(0, c.NumExperts).Select(e => T($"l{i}.e{e}.w2", 1f / MathF.Sqrt(F), 0, D, F)).ToArray() : null,
            };
        }
        var emb = T("emb", 1f, 0, c.VocabSize, D);
        var w = new ModelWeights
        {
            Embedding = emb, Layers = layers, FinalNorm = T("norm", 0.1f, c.NormAddOne ? 0f : 1f, D),
            LmHead = c.TieWordEmbeddings ? emb : T("lm", ws, 0, c.VocabSize, D),
        };
        return new Model { C = c, W = w, Store = store };
    }

    // ---- float64 reference forward ----
    private static double[] Vec(Tensor? t, int n) => t is null ? new double[n] : Enumerable.Range(0, n).Select(i => (double)t.GetFloat(i)).ToArray();
    private static double[] MatVec(Tensor w, double[] x)
    {
        var y = new double[w.Rows];
        for (long i = 0; i < w.Rows; i++) { double a = 0; for (long j = 0; j < w.Cols; j++) a += w.GetFloat(i * w.Cols + j) * x[j]; y[i] = a; }
        return y;
    }
    private static double[] Norm(double[] x, Tensor w, double eps, bool addOne)
    {
        double ss = x.Sum(v => v * v) / x.Length, inv = 1 / Math.Sqrt(ss + eps);
        return x.Select((v, i) => v * inv * (addOne ? 1 + w.GetFloat(i) : w.GetFloat(i))).ToArray();
    }
    private static double Act(double x, Activation a) => a == Activation.Silu ? x / (1 + Math.Exp(-x))
        : 0.5 * x * (1 + Math.Tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    private static double F16(double v) => (double)(Half)(float)v;

    internal static float[][] Reference(Model m, int[] tokens)
    {
        var c = m.C; var w = m.W; int D = c.HiddenSize, Hd = c.HeadDim, H = c.NumHeads, K = c.NumKvHeads;
        var (cos, sin) = RopeTable.Build(c, tokens.Length);
        int half = c.RotaryDim / 2;
        var kc = new List<double[]>[c.NumLayers]; var vc = new List<double[]>[c.NumLayers];
        for (int l = 0; l < c.NumLayers; l++) { kc[l] = new(); vc[l] = new(); }
        var outLogits = new float[tokens.Length][];
        for (int p = 0; p < tokens.Length; p++)
        {
            var x = Enumerable.Range(0, D).Select(d => (double)w.Embedding.GetFloat((long)tokens[p] * D + d) * (c.ScaleEmbeddings ? MathF.Sqrt(D) : 1)).ToArray();
            for (int l = 0; l < c.NumLayers; l++)
            {
                var L = w.Layers[l];
                var xn = Norm(x, L.AttnNorm, c.RmsNormEps, c.NormAddOne);
                var q = MatVec(L.Wq, xn).Zip(Vec(L.Bq, c.QDim), (a, b) => a + b).ToArray();
                var k = MatVec(L.Wk, xn).Zip(Vec(L.Bk, c.KvDim), (a, b) => a + b).ToArray();
                var v = MatVec(L.Wv, xn).Zip(Vec(L.Bv, c.KvDim), (a, b) => a + b).ToArray();
                void HeadOp(double[] a, int h, Tensor? nw)
                {
                    if (nw is not null)
                    {
                        double ss = 0; for (int d = 0; d < Hd; d++) ss += a[h * Hd + d] * a[h * Hd + d];
                        double inv = 1 / Math.Sqrt(ss / Hd + c.RmsNormEps);
                        for (int d = 0; d < Hd; d++) a[h * Hd + d] *= inv * (c.NormAddOne ? 1 + nw.GetFloat(d) : nw.GetFloat(d));
                    }
                    for (int i = 0; i < half; i++)
                    {
                        double x1 = a[h * Hd + i], x2 = a[h * Hd + i + half], cs = cos[p * half + i], sn = sin[p * half + i];
                        a[h * Hd + i] = x1 * cs - x2 * sn; a[h * Hd + i + half] = x2 * cs + x1 * sn;
                    }
                }
                for (int h = 0; h < H; h++) HeadOp(q, h, c.QkNorm ? L.QNorm : null);
                for (int h = 0; h < K; h++) HeadOp(k, h, c.QkNorm ? L.KNorm : null);
                kc[l].Add(k.Select(F16).ToArray()); vc[l].Add(v.Select(F16).ToArray());
                var att = new double[c.QDim];
                int start = c.SlidingWindow is int W ? Math.Max(0, p - W + 1) : 0;
                for (int h = 0; h < H; h++)
                {
                    int kh = h / (H / K);
                    var sc = new double[p + 1];
                    for (int j = start; j <= p; j++) { double a = 0; for (int d = 0; d < Hd; d++) a += q[h * Hd + d] * kc[l][j][kh * Hd + d]; sc[j] = a / Math.Sqrt(Hd); }
                    double mx = sc.Skip(start).Max(), sum = 0;
                    for (int j = start; j <= p; j++) { sc[j] = Math.Exp(sc[j] - mx); sum += sc[j]; }
                    for (int d = 0; d < Hd; d++) { double o = 0; for (int j = start; j <= p; j++) o += sc[j] / sum * vc[l][j][kh * Hd + d]; att[h * Hd + d] = o; }
                }
                var o2 = MatVec(L.Wo, att); var bo = Vec(L.Bo, D);
                for (int d = 0; d < D; d++) x[d] += o2[d] + bo[d];
                xn = Norm(x, L.FfnNorm, c.RmsNormEps, c.NormAddOne);
                if (!c.IsMoE)
                {
                    var g = MatVec(L.WGate!, xn); var u = MatVec(L.WUp!, xn); var bg = Vec(L.BGate, c.IntermediateSize); var bu = Vec(L.BUp, c.IntermediateSize);
                    var hh = g.Select((gv, i) => Act(gv + bg[i], c.HiddenAct) * (u[i] + bu[i])).ToArray();
                    var dn = MatVec(L.WDown!, hh); var bd = Vec(L.BDown, D);
                    for (int d = 0; d < D; d++) x[d] += dn[d] + bd[d];
                }
                else
                {
                    var rl = MatVec(L.Router!, xn); double mx = rl.Max();
                    var pr = rl.Select(z => Math.Exp(z - mx)).ToArray(); double s = pr.Sum();
                    var top = Enumerable.Range(0, c.NumExperts).OrderByDescending(e => pr[e]).ThenBy(e => e).Take(c.NumExpertsPerToken).ToArray();
                    double tot = top.Sum(e => pr[e] / s);
                    foreach (var e in top)
                    {
                        var g = MatVec(L.ExpertGate![e], xn); var u = MatVec(L.ExpertUp![e], xn);
                        var dn = MatVec(L.ExpertDown![e], g.Select((gv, i) => Act(gv, c.HiddenAct) * u[i]).ToArray());
                        for (int d = 0; d < D; d++) x[d] += pr[e] / s / tot * dn[d];
                    }
                }
            }
            var fx = Norm(x, w.FinalNorm, c.RmsNormEps, c.NormAddOne);
            outLogits[p] = MatVec(w.LmHead, fx).Select(v => (float)v).ToArray();
        }
        return outLogits;
    }

    [Theory]
    [InlineData("llama")] [InlineData("qwen2")] [InlineData("qwen3")] [InlineData("gemma")]
    [InlineData("mistral")] [InlineData("phi3")] [InlineData("mixtral")] [InlineData("llama-bias")]
    public void LogitsMatchReferenceAtEveryPosition(string arch)
    {
        if (CudaDeviceInfo.Unavailable() is { } why) Assert.Skip("No usable CUDA device: " + why);
        var r = Gpu.Rng();
        var m = Build(Cfg(arch), r);
        using var _store = m.Store;
        int n = 12, V = m.C.VocabSize;
        var tokens = Enumerable.Range(0, n).Select(_ => r.Next(V)).ToArray();
        var want = Reference(m, tokens);
        using var b = new CudaBackend(m.C, m.W, 32);
        var all = new float[n * V];
        b.Forward(tokens, 0, all, allLogits: true);
        for (int p = 0; p < n; p++) Gpu.Close(all.AsSpan(p * V, V), want[p], 2e-3, $"{arch} logits at position {p}");
        // prefill then decode one by one gives the same last logits
        var last = new float[V];
        b.Forward(tokens.AsSpan(0, n - 3), 0, last, false);
        for (int p = n - 3; p < n; p++) b.Forward(tokens.AsSpan(p, 1), p, last, false);
        Gpu.Close(last, want[n - 1], 2e-3, $"{arch} decode after prefill");
        // device greedy and top-k agree with the logits the GPU produced
        int g = b.ForwardGreedy(tokens.AsSpan(n - 1, 1), n - 1);
        Assert.Equal(Array.IndexOf(last, last.Max()), g);
        var ids = new int[10]; var vals = new float[10];
        b.ForwardTopK(tokens.AsSpan(n - 1, 1), n - 1, ids, vals);
        var order = Enumerable.Range(0, V).OrderByDescending(i => last[i]).ThenBy(i => i).Take(10).ToArray();
        Assert.Equal(order, ids);
        Assert.Equal(order.Select(i => last[i]).ToArray(), vals);
    }

    [Fact]
    public void DisposeReturnsGpuMemoryAndErrorsAreClear()
    {
        if (CudaDeviceInfo.Unavailable() is { } why) Assert.Skip("No usable CUDA device: " + why);
        var r = Gpu.Rng();
        var m = Build(Cfg("llama"), r);
        using var _store = m.Store;
        using var ctx = CudaContext.Acquire(0);
        long free0 = ctx.MemoryInfo().Free;
        for (int i = 0; i < 5; i++)
        {
            using var b = new CudaBackend(m.C, m.W, 64);
            Assert.True(ctx.MemoryInfo().Free < free0);
            var ex = Assert.Throws<CalmException>(() => b.Forward(new[] { 1, 2 }, 63, Span<float>.Empty, false));
            Assert.Equal(ErrorIds.ContextOverflow, ex.ErrorId);
            ex = Assert.Throws<CalmException>(() => b.Forward(new[] { m.C.VocabSize }, 0, Span<float>.Empty, false));
            Assert.Equal(ErrorIds.TokenOutOfRange, ex.ErrorId);
        }
        long free1 = ctx.MemoryInfo().Free;
        Assert.True(Math.Abs(free1 - free0) <= free0 / 100, $"free GPU memory {free0:N0} -> {free1:N0}");
        // more than the GPU has: clear error, nothing left allocated
        var (free, _) = ctx.MemoryInfo();
        var oom = Assert.Throws<CalmException>(() => new CudaBackend(m.C, m.W, (int)Math.Min(int.MaxValue, free / (2L * 2 * 2 * 64 * 2) + 1024)));
        Assert.Equal(ErrorIds.OutOfMemory, oom.ErrorId);
        Assert.Contains("free", oom.Message);
        Assert.True(Math.Abs(ctx.MemoryInfo().Free - free0) <= free0 / 100);
    }

    [Fact]
    public void DecodeStepHostTimeIsSmallFractionOfGpuTime()
    {
        if (CudaDeviceInfo.Unavailable() is { } why) Assert.Skip("No usable CUDA device: " + why);
        var r = Gpu.Rng();
        var m = Build(Cfg("llama") with { NumLayers = 8, HiddenSize = 1024, IntermediateSize = 4096, NumHeads = 16, NumKvHeads = 4 }, r);
        using var _store = m.Store;
        using var b = new CudaBackend(m.C, m.W, 256);
        b.ForwardGreedy(new[] { 1 }, 0);
        double gpuMs = b.TimeGraphLaunches(50, 100) / 50;
        var toks = Enumerable.Range(0, 50).Select(i => i % m.C.VocabSize).ToArray();
        b.Forward(toks, 0, Span<float>.Empty, false);
        double hostMs = b.LastHostMs / 50;
        TestContext.Current.SendDiagnosticMessage($"decode step: GPU {gpuMs:F3} ms, host enqueue {hostMs:F4} ms ({100 * hostMs / gpuMs:F1}%)");
        Assert.True(gpuMs > 0);
    }
}
