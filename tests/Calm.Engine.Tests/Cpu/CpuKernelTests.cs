using Calm.Engine.Cpu;
using Calm.Engine.Model;
using Calm.Engine.Weights;

namespace Calm.Engine.Tests.Cpu;

/// <summary>Each CPU kernel/op against its naive double-precision reference on fresh random data.</summary>
public unsafe class CpuKernelTests
{
    private static readonly int Seed = Environment.TickCount;
    private static Random NewRng(int salt) => new(Seed + salt * 7919);

    public static TheoryData<DType> WeightTypes => new() { DType.F32, DType.F16, DType.BF16 };

    private static float[] RandomFloats(Random rng, int n, double scale = 1)
        => Enumerable.Range(0, n).Select(_ => (float)((rng.NextDouble() * 2 - 1) * scale)).ToArray();

    [Theory, MemberData(nameof(WeightTypes))]
    public void DotRowMatchesNaiveForEveryDTypeAndTail(DType dt)
    {
        var rng = NewRng((int)dt);
        using var store = new NativeWeightStore();
        foreach (int n in new[] { 1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 47, 100, 513, 1023, 2051 })
        {
            var w = TestModels.Make(store, "w", dt, new long[] { 3, n }, rng, 1, 0);
            var x = RandomFloats(rng, n);
            var xd = x.Select(v => (double)v).ToArray();
            for (int r = 0; r < 3; r++)
            {
                double want = NaiveOps.Dot(NaiveOps.Row(w, r), xd);
                double mag = NaiveOps.Row(w, r).Select((wi, i) => Math.Abs(wi * xd[i])).Sum();
                float got;
                fixed (float* px = x) got = CpuKernels.DotRow(w.Data, dt, r, n, px);
                Assert.True(Math.Abs(got - want) <= 1e-6 * mag + 1e-30, $"seed {Seed} {dt} n={n} row {r}: got {got}, want {want}");
            }
        }
    }

    [Theory, MemberData(nameof(WeightTypes))]
    public void ConvertRowIsExact(DType dt)
    {
        var rng = NewRng(10 + (int)dt);
        using var store = new NativeWeightStore();
        var w = TestModels.Make(store, "w", dt, new long[] { 2, 37 }, rng, 3, 0);
        var got = new float[37];
        CpuKernels.ConvertTensorRow(w, 1, got);
        for (int i = 0; i < 37; i++) Assert.Equal(w.GetFloat(37 + i), got[i]);
    }

    [Fact]
    public void HalfConversionIsExactForEveryBitPattern()
    {
        using var store = new NativeWeightStore();
        nint p = store.Allocate(65536 * 2);
        for (int i = 0; i < 65536; i++) ((ushort*)p)[i] = (ushort)i;
        var t = new Tensor("all-halves", DType.F16, new long[] { 1, 65536 }, p, "test");
        var got = new float[65536];
        CpuKernels.ConvertTensorRow(t, 0, got);
        for (int i = 0; i < 65536; i++)
        {
            float want = (float)BitConverter.UInt16BitsToHalf((ushort)i);
            if (float.IsNaN(want)) Assert.True(float.IsNaN(got[i]), $"0x{i:x4}");
            else Assert.True(BitConverter.SingleToInt32Bits(want) == BitConverter.SingleToInt32Bits(got[i]), $"0x{i:x4}: {got[i]} vs {want}");
        }
        // and through the fused dot: a row that is zero except one element (in the SIMD part, then in the tail)
        var row = new ushort[37]; var x = new float[37];
        foreach (int at in new[] { 20, 35 })
            foreach (int i in new[] { 0, 1, 0x3ff, 0x400, 0x3c00, 0x7bff, 0x8001, 0xfbff, 0x7c00, 0xfc00 })
            {
                Array.Clear(row); Array.Clear(x); row[at] = (ushort)i; x[at] = 1f;
                float d; fixed (ushort* pr = row) fixed (float* px = x) d = CpuKernels.DotF16((Half*)pr, px, 37);
                Assert.Equal((float)BitConverter.UInt16BitsToHalf((ushort)i), d);
            }
    }

    [Theory, MemberData(nameof(WeightTypes))]
    public void MatMulMatchesNaiveForDecodeAndPrefillShapes(DType dt)
    {
        var rng = NewRng(20 + (int)dt);
        using var store = new NativeWeightStore();
        // (rows, cols, tokens): small serial ones, and ones big enough for the parallel path and the token tiles.
        foreach (var (rows, cols, n) in new[] { (5, 9, 1), (67, 129, 1), (67, 129, 3), (33, 17, 5), (300, 301, 1), (260, 301, 37), (130, 2000, 6) })
        {
            var w = TestModels.Make(store, "w", dt, new long[] { rows, cols }, rng, 1.0 / Math.Sqrt(cols), 0);
            var x = RandomFloats(rng, n * cols);
            var y = new float[n * rows];
            if (n == 1) CpuKernels.MatVec(w, x, y); else CpuKernels.MatMul(w, x, n, y);
            var wrows = Enumerable.Range(0, rows).Select(r => NaiveOps.Row(w, r)).ToArray();
            for (int t = 0; t < n; t++)
            {
                var xt = x.AsSpan(t * cols, cols).ToArray().Select(v => (double)v).ToArray();
                for (int r = 0; r < rows; r++)
                {
                    double want = NaiveOps.Dot(wrows[r], xt);
                    double mag = wrows[r].Select((wi, i) => Math.Abs(wi * xt[i])).Sum();
                    Assert.True(Math.Abs(y[t * rows + r] - want) <= 1e-6 * mag, $"seed {Seed} {dt} {rows}x{cols} n={n} t={t} r={r}: got {y[t * rows + r]}, want {want}");
                }
            }
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(6)]
    public void MatMulGroupMatchesNaiveForEveryMember(int n)
    {
        var rng = NewRng(80 + n);
        using var store = new NativeWeightStore();
        int cols = 203;
        var ws = new[] { (DType.BF16, 300), (DType.F16, 45), (DType.F32, 129) }
            .Select((p, i) => TestModels.Make(store, $"w{i}", p.Item1, new long[] { p.Item2, cols }, rng, 0.1, 0)).ToArray();
        var x = RandomFloats(rng, n * cols);
        var ys = ws.Select(w => new float[n * w.Rows]).ToArray();
        var handles = ys.Select(y => System.Runtime.InteropServices.GCHandle.Alloc(y, System.Runtime.InteropServices.GCHandleType.Pinned)).ToArray();
        try
        {
            var jobs = ws.Select((w, i) => new CpuKernels.MatMulJob(w.Data, w.DType, (int)w.Rows, cols, handles[i].AddrOfPinnedObject(), (int)w.Rows)).ToArray();
            fixed (float* px = x) CpuKernels.MatMulGroup(jobs, px, n);
        }
        finally { foreach (var h in handles) h.Free(); }
        for (int k = 0; k < ws.Length; k++)
            for (int t = 0; t < n; t++)
            {
                var xt = x.AsSpan(t * cols, cols).ToArray().Select(v => (double)v).ToArray();
                for (int r = 0; r < ws[k].Rows; r++)
                {
                    var wr = NaiveOps.Row(ws[k], r);
                    double want = NaiveOps.Dot(wr, xt), mag = wr.Select((wi, i) => Math.Abs(wi * xt[i])).Sum();
                    Assert.True(Math.Abs(ys[k][t * ws[k].Rows + r] - want) <= 1e-6 * mag, $"seed {Seed} job {k} t={t} r={r}");
                }
            }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void RmsNormMatchesNaive(bool addOne)
    {
        var rng = NewRng(30);
        foreach (int n in new[] { 1, 7, 64, 333 })
        {
            var x = RandomFloats(rng, n, 3);
            var w = RandomFloats(rng, n, 1);
            var got = new float[n];
            CpuOps.RmsNorm(x, w, got, 1e-5f, addOne);
            var want = NaiveOps.RmsNorm(x.Select(v => (double)v).ToArray(), w.Select(v => (double)v).ToArray(), 1e-5, addOne);
            Assert.True(NaiveOps.RelL2(got, want) < 1e-6, $"seed {Seed} n={n}");
        }
        // in place (out aliases x) gives the same
        var x2 = RandomFloats(rng, 50); var w2 = RandomFloats(rng, 50); var sep = new float[50];
        CpuOps.RmsNorm(x2, w2, sep, 1e-6f, addOne);
        CpuOps.RmsNorm(x2, w2, x2, 1e-6f, addOne);
        Assert.Equal(sep, x2);
    }

    private static ModelConfig RopeConfig(RopeScaling? s, double partial = 1.0, int maxPos = 4096) => new()
    {
        Architecture = Architecture.Llama, ModelType = "llama", VocabSize = 10, HiddenSize = 64, IntermediateSize = 10,
        NumLayers = 1, NumHeads = 1, NumKvHeads = 1, HeadDim = 64, MaxPositionEmbeddings = maxPos, RopeTheta = 500000,
        RopeScaling = s, PartialRotaryFactor = partial,
    };

    public static TheoryData<string> RopeKinds => new() { "none", "linear", "llama3", "longrope-short", "longrope-long", "dynamic-inside", "dynamic-beyond" };

    private static (ModelConfig c, int seqLen) RopeCase(string kind)
    {
        var shortF = Enumerable.Range(0, 24).Select(i => 1.0 + 0.05 * i).ToArray();
        var longF = Enumerable.Range(0, 24).Select(i => 1.0 + 0.9 * i).ToArray();
        var longrope = new RopeScaling { Type = RopeScalingType.LongRope, OriginalMaxPositionEmbeddings = 4096, ShortFactor = shortF, LongFactor = longF };
        return kind switch
        {
            "none" => (RopeConfig(null), 10),
            "linear" => (RopeConfig(new RopeScaling { Type = RopeScalingType.Linear, Factor = 4 }), 10),
            "llama3" => (RopeConfig(new RopeScaling { Type = RopeScalingType.Llama3, Factor = 32, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 8192 }), 10),
            "longrope-short" => (RopeConfig(longrope, 0.75, 131072), 4096),
            "longrope-long" => (RopeConfig(longrope, 0.75, 131072), 4097),
            "dynamic-inside" => (RopeConfig(new RopeScaling { Type = RopeScalingType.Dynamic, Factor = 2 }, 1, 100), 100),
            "dynamic-beyond" => (RopeConfig(new RopeScaling { Type = RopeScalingType.Dynamic, Factor = 2 }, 1, 100), 150),
            _ => throw new ArgumentException(kind),
        };
    }

    [Theory, MemberData(nameof(RopeKinds))]
    public void RopeFrequenciesMatchTransformersFormulas(string kind)
    {
        var (c, seqLen) = RopeCase(kind);
        var got = CpuOps.RopeInvFreq(c, seqLen, out double scale);
        var want = NaiveOps.InvFreq(c, seqLen, out double wantScale);
        Assert.Equal(want.Length, got.Length);
        for (int i = 0; i < want.Length; i++) Assert.True(Math.Abs(got[i] - want[i]) <= 1e-12 * want[i], $"{kind} i={i}: {got[i]} vs {want[i]}");
        Assert.Equal(wantScale, scale, 12);
    }

    [Fact]
    public void RopeScalingPropertiesHold()
    {
        var plain = CpuOps.RopeInvFreq(RopeConfig(null), 10, out _);
        // llama3: the highest frequencies are unchanged, the lowest are divided by the factor, the middle is between.
        var l3 = CpuOps.RopeInvFreq(RopeCase("llama3").c, 10, out _);
        Assert.Equal(plain[0], l3[0]);
        Assert.Equal(plain[^1] / 32, l3[^1], 15);
        Assert.Contains(Enumerable.Range(0, plain.Length), i => l3[i] < plain[i] && l3[i] > plain[i] / 32);
        // linear: all divided.
        var lin = CpuOps.RopeInvFreq(RopeCase("linear").c, 10, out _);
        for (int i = 0; i < plain.Length; i++) Assert.Equal(plain[i] / 4, lin[i], 15);
        // longrope: short factors up to original_max_position_embeddings, long beyond; attention factor from 131072/4096.
        var (lc, _) = RopeCase("longrope-short");
        var s = CpuOps.RopeInvFreq(lc, 4096, out double sc);
        var l = CpuOps.RopeInvFreq(lc, 4097, out _);
        Assert.Equal(24, s.Length); // 0.75 * 64 / 2
        Assert.True(l[23] < s[23]);
        Assert.Equal(Math.Sqrt(1 + Math.Log(32) / Math.Log(4096)), sc, 12);
        // dynamic inside max_position_embeddings is plain rope.
        var dyn = CpuOps.RopeInvFreq(RopeCase("dynamic-inside").c, 100, out _);
        Assert.Equal(CpuOps.RopeInvFreq(RopeConfig(null, 1, 100), 100, out _), dyn);
    }

    [Theory]
    [InlineData(64, 1.0)]
    [InlineData(16, 0.75)]
    [InlineData(18, 1.0)]
    public void ApplyRopeMatchesRotateHalf(int hd, double partial)
    {
        var rng = NewRng(40 + hd);
        var c = RopeConfig(null, partial) with { HeadDim = hd, RopeTheta = 10000 };
        var inv = CpuOps.RopeInvFreq(c, 100, out double scale);
        foreach (int pos in new[] { 0, 1, 17, 99 })
        {
            var x = RandomFloats(rng, hd);
            var cos = new float[inv.Length]; var sin = new float[inv.Length];
            CpuOps.RopeCosSin(inv, pos, scale, cos, sin);
            var got = (float[])x.Clone();
            CpuOps.ApplyRope(got, cos, sin);
            var want = NaiveOps.Rope(x.Select(v => (double)v).ToArray(), NaiveOps.InvFreq(c, 100, out double ws), pos, ws);
            Assert.True(NaiveOps.RelL2(got, want) < 1e-6, $"seed {Seed} hd={hd} pos={pos}");
            for (int i = c.RotaryDim; i < hd; i++) Assert.Equal(x[i], got[i]); // pass-through dims untouched
        }
    }

    [Fact]
    public void ActivationsMatchNaive()
    {
        foreach (double x in new[] { -8.0, -3.1, -1.0, -0.3, 0.0, 0.2, 0.9, 2.6, 5.0, 11.0 })
        {
            Assert.True(Math.Abs(CpuOps.Silu((float)x) - NaiveOps.Silu(x)) <= 1e-6 * (1 + Math.Abs(x)), $"silu {x}");
            Assert.True(Math.Abs(CpuOps.GeluTanh((float)x) - NaiveOps.GeluTanh(x)) <= 1e-6 * (1 + Math.Abs(x)), $"gelu_tanh {x}");
            Assert.True(Math.Abs(CpuOps.Gelu((float)x) - NaiveOps.Gelu(x)) <= 1e-6 * (1 + Math.Abs(x)), $"gelu {x}");
        }
        // exact gelu and tanh gelu really differ (the test can tell them apart)
        Assert.True(Math.Abs(NaiveOps.Gelu(-2.6) - NaiveOps.GeluTanh(-2.6)) > 1e-4);
    }

    [Theory]
    [InlineData(Activation.Silu)]
    [InlineData(Activation.GeluTanh)]
    [InlineData(Activation.Gelu)]
    public void GatedActivationMatchesNaive(Activation act)
    {
        var rng = NewRng(70 + (int)act);
        var g = RandomFloats(rng, 301, 4); var u = RandomFloats(rng, 301, 2);
        var got = (float[])g.Clone();
        CpuOps.GatedActivation(got, u, act);
        for (int i = 0; i < g.Length; i++)
        {
            double want = NaiveOps.Act(act, g[i]) * u[i];
            Assert.True(Math.Abs(got[i] - want) <= 1e-6 * (1 + Math.Abs(want)), $"seed {Seed} {act} g={g[i]}: {got[i]} vs {want}");
        }
    }

    [Theory]
    [InlineData(8, 2, 32, null)]   // GQA 4:1, full causal
    [InlineData(4, 4, 16, null)]   // MHA
    [InlineData(6, 1, 24, 5)]      // MQA + sliding window
    [InlineData(4, 2, 18, 1)]      // window of one: only itself
    public void AttentionMatchesNaive(int heads, int kvHeads, int hd, int? window)
    {
        var rng = NewRng(50 + heads * 10 + hd);
        int T = 23, kvd = kvHeads * hd, group = heads / kvHeads;
        var keys = RandomFloats(rng, T * kvd, 2); var vals = RandomFloats(rng, T * kvd);
        var scores = new float[T];
        foreach (int pos in new[] { 0, 4, 5, 22 })
            for (int h = 0; h < heads; h++)
            {
                int kvh = h / group;
                var q = RandomFloats(rng, hd, 2);
                var got = new float[hd];
                CpuOps.AttendHead(q, keys.AsSpan(kvh * hd), vals.AsSpan(kvh * hd), kvd, pos, window, 1f / MathF.Sqrt(hd), scores, got);
                var K = Enumerable.Range(0, T).Select(j => keys.AsSpan(j * kvd + kvh * hd, hd).ToArray().Select(v => (double)v).ToArray()).ToList();
                var V = Enumerable.Range(0, T).Select(j => vals.AsSpan(j * kvd + kvh * hd, hd).ToArray().Select(v => (double)v).ToArray()).ToList();
                var want = NaiveOps.Attend(q.Select(v => (double)v).ToArray(), K, V, j => j <= pos && (window is not int w || j > pos - w));
                Assert.True(NaiveOps.RelL2(got, want) < 1e-5, $"seed {Seed} pos={pos} h={h}");
            }
    }

    [Fact]
    public void SlidingWindowBoundaryIsTransformersMask()
    {
        // transformers: kv_idx > q_idx - W. Query 10 with W=4 sees 7, 8, 9, 10.
        Assert.Equal(7, CpuOps.FirstVisibleKey(10, 4));
        Assert.Equal(0, CpuOps.FirstVisibleKey(2, 4));
        Assert.Equal(0, CpuOps.FirstVisibleKey(10, null));
        Assert.Equal(10, CpuOps.FirstVisibleKey(10, 1));
    }

    [Theory]
    [InlineData(8, 2)]
    [InlineData(5, 1)]
    [InlineData(7, 3)]
    [InlineData(4, 4)]
    public void MoeRoutingMatchesNaive(int e, int k)
    {
        var rng = NewRng(60 + e * k);
        for (int rep = 0; rep < 20; rep++)
        {
            var logits = RandomFloats(rng, e, 3);
            var ex = new int[k]; var wt = new float[k];
            CpuOps.MoeRoute(logits, k, ex, wt);
            var (wantEx, wantWt) = NaiveOps.Route(logits.Select(v => (double)v).ToArray(), k);
            Assert.Equal(wantEx, ex);
            for (int j = 0; j < k; j++) Assert.True(Math.Abs(wantWt[j] - wt[j]) <= 1e-6, $"seed {Seed} weight {j}: {wt[j]} vs {wantWt[j]}");
            Assert.True(Math.Abs(1.0 - wt.Sum()) <= 1e-6);
        }
    }
}
