using System.Globalization;
using Calm.Engine.Cpu;
using Calm.Engine.Generation;
using Calm.Engine.Model;
using Calm.Engine.Quant;
using Calm.Engine.Session;
using Calm.Engine.Tests.Generation;
using Calm.Engine.Tests.Quant;

namespace Calm.Engine.Tests.Cpu;

/// <summary>The fp8 KV cache on the CPU reference: the row format (exact cases), forward against the f32 cache,
/// and tiny-wp's held-out perplexity.</summary>
public class KvCacheFp8Tests(ITestOutputHelper output)
{
    [Fact]
    public void ZeroRowHasScaleZeroAndZeroBytes()
    {
        var q = new byte[8]; Array.Fill(q, (byte)0xAA);
        Assert.Equal(0f, KvFp8.QuantizeRow(new float[8], q));
        Assert.All(q, b => Assert.Equal(0, b));
        var y = new float[8]; Array.Fill(y, 1f);
        KvFp8.DequantizeRow(q, 0f, y);
        Assert.All(y, v => Assert.Equal(0f, v));
    }

    [Fact]
    public void EveryFiniteE4M3ValueRoundTripsExactly()
    {
        // a row holding all 254 finite e4m3 values times 2^k: amax = 448 * 2^k, scale 2^k exactly, so every value
        // maps to its own code and back (zero, the subnormals 2^-9.., the normals, ±448)
        foreach (int k in new[] { 0, -10, 7 })
        {
            float s = MathF.ScaleB(1f, k);
            var codes = Enumerable.Range(0, 256).Where(b => (b & 0x7F) != 0x7F).Select(b => (byte)b).ToArray();
            var x = codes.Select(b => QuantFormats.E4M3ToFloat(b) * s).ToArray();
            var q = new byte[x.Length];
            Assert.Equal(s, KvFp8.QuantizeRow(x, q));
            for (int i = 0; i < x.Length; i++)
            {
                // -0 keeps its sign bit (0x80): the value is 0 either way
                if (x[i] == 0f) Assert.Equal(0f, QuantFormats.E4M3ToFloat(q[i])); else Assert.Equal(codes[i], q[i]);
            }
            var y = new float[x.Length];
            KvFp8.DequantizeRow(q, s, y);
            Assert.Equal(x, y);
        }
    }

    [Fact]
    public void RoundsToNearestEvenIncludingSubnormalsAndTheMaximum()
    {
        // scale 1 (amax 448): x / 1 = x
        float t = MathF.ScaleB(1f, -9);   // the smallest subnormal
        var x = new[] { 448f, -448f, 1f + 1f / 16, 1f + 3f / 16, t, t / 2, 3 * t / 2, 5 * t / 2, t * 0.49f, 240f, 232f, -0f };
        var want = new byte[] { 0x7E, 0xFE, 0x38, 0x3A, 0x01, 0x00, 0x02, 0x02, 0x00, 0x77, 0x76, 0x80 };
        var q = new byte[x.Length];
        Assert.Equal(1f, KvFp8.QuantizeRow(x, q));
        Assert.Equal(want, q);
        // the row's largest magnitude always lands on ±448 (0x7E): scale = amax / 448, amax / scale rounds to 448
        var r = new Random(5);
        for (int i = 0; i < 1000; i++)
        {
            var row = Enumerable.Range(0, 16).Select(_ => (float)((r.NextDouble() * 2 - 1) * Math.Pow(10, r.Next(-30, 30)))).ToArray();
            int at = Array.IndexOf(row, row.MaxBy(MathF.Abs));
            var qq = new byte[16];
            float sc = KvFp8.QuantizeRow(row, qq);
            Assert.Equal(row[at] < 0 ? 0xFE : 0x7E, qq[at]);
            var y = new float[16];
            KvFp8.DequantizeRow(qq, sc, y);
            for (int j = 0; j < 16; j++)   // 3 mantissa bits: relative error ≤ 2^-4 (normals), absolute ≤ scale·2^-10 (subnormals)
                Assert.True(MathF.Abs(y[j] - row[j]) <= MathF.Abs(row[j]) / 16 * 1.0001f + sc * MathF.ScaleB(1f, -10), $"{row[j]} -> {y[j]}");
        }
    }

    [Fact]
    public void KvCacheDTypeNamesAndErrors()
    {
        Assert.Equal("fp8", KvCacheTypes.Parse("FP8"));
        Assert.Equal("f16", KvCacheTypes.Parse("fp16"));
        var e = Assert.Throws<CalmException>(() => KvCacheTypes.Parse("int3"));
        Assert.Equal(ErrorIds.InvalidArgument, e.ErrorId);
    }

    /// <summary>Relative L2 of the fp8-KV logits vs the f32-KV logits at every position (prefill and decode), on the
    /// random 2-3 layer test models (fixed seeds). Bound: an e4m3 value carries a relative rounding error of at most
    /// 2^-4 (about 3% RMS over a row); these random models pass errors of k and v through their few layers almost
    /// undamped (measured 4-8% for the dense ones, 0.04-0.1 of headroom), and a MoE model may route one token to another
    /// expert (measured 13%). Dense 0.1, MoE 0.2; the quality bound that matters is the perplexity test below.</summary>
    public const double ForwardBound = 0.1, ForwardBoundMoE = 0.2;

    [Theory]
    [InlineData("llama")]
    [InlineData("mistral")]   // sliding window
    [InlineData("qwen3")]
    [InlineData("mixtral")]
    public void Fp8KvForwardIsCloseToF32Kv(string name)
    {
        var c = TestModels.Config(name);
        using var m = TestModels.Build(c, new Random(11));
        using var a = new CpuBackend(c, m.Weights, 64);
        using var b = new CpuBackend(c, m.Weights, 64, "fp8");
        using var h = new CpuBackend(c, m.Weights, 64, "f16");
        Assert.Equal("f32", a.KvCacheDType); Assert.Equal("fp8", b.KvCacheDType); Assert.Equal("f16", h.KvCacheDType);
        Assert.True(b.KvCacheBytes < a.KvCacheBytes / 3);
        int v = c.VocabSize, n = 20;
        var r = new Random(3);
        var prompt = Enumerable.Range(0, n).Select(_ => r.Next(v)).ToArray();
        var la = new float[n * v]; var lb = new float[n * v]; var lh = new float[n * v];
        a.Forward(prompt, 0, la, true); b.Forward(prompt, 0, lb, true); h.Forward(prompt, 0, lh, true);
        double worst = 0, worst16 = 0;
        for (int p = 0; p < n; p++)
        {
            worst = Math.Max(worst, Cuda.Gpu.RelL2(lb.AsSpan(p * v, v), la.AsSpan(p * v, v)));
            worst16 = Math.Max(worst16, Cuda.Gpu.RelL2(lh.AsSpan(p * v, v), la.AsSpan(p * v, v)));
        }
        // decode steps continue from the cache
        var da = new float[v]; var db = new float[v];
        for (int i = 0; i < 8; i++)
        {
            a.Forward(new[] { i + 1 }, n + i, da, false); b.Forward(new[] { i + 1 }, n + i, db, false);
            worst = Math.Max(worst, Cuda.Gpu.RelL2(db, da));
        }
        output.WriteLine(FormattableString.Invariant($"{name}: worst relative L2 of logits vs the f32 cache: fp8 {worst:E2}, f16 {worst16:E2}"));
        Assert.True(worst > 0, "the fp8 cache changed nothing");
        double bound = c.IsMoE ? ForwardBoundMoE : ForwardBound;
        Assert.True(worst <= bound, $"fp8 KV: relative L2 {worst:E2} > {bound}");
        Assert.True(worst16 <= 2e-3, $"f16 KV: relative L2 {worst16:E2}");
        Assert.True(worst16 < worst, "f16 should be closer than fp8");
    }

    [Fact]
    public void BenchmarkFillAndDecodeTimingRunOnTheFp8Cache()
    {
        var c = TestModels.Config("llama");
        using var m = TestModels.Build(c, new Random(2));
        using var be = new CpuBackend(c, m.Weights, 64, "fp8");
        be.FillKvCacheForBenchmark(40, 1);
        Assert.Equal(40, be.CachedPositions);
        var ms = be.TimeDecodeSteps(40, 5, 1, default);
        Assert.Equal(5, ms.Length);
        Assert.All(ms, x => Assert.True(x > 0));
        var logits = new float[c.VocabSize];
        be.Forward(new[] { 1 }, 45, logits, false);
        Assert.All(logits, v => Assert.True(float.IsFinite(v)));
    }

    /// <summary>
    /// tiny-wp on 4096 held-out War and Peace tokens (window 512, stride 256): the fp8 cache may raise the perplexity
    /// by at most 1% over the f32 cache (the same budget the issue gives fp8 weights; measured: see the test output
    /// and the report of the branch).
    /// </summary>
    [Fact]
    public void TinyWpHeldOutPerplexityChangesLittleWithFp8Kv()
    {
        double Ppl(string? kv)
        {
            using var m = ModelFactory.Import(TinyWp.Folder, new ImportOptions { Device = DeviceChoice.Cpu, Name = "tiny-wp", KvCacheDType = kv, ContextLength = 512 });
            Assert.Equal(kv ?? "f32", m.Backend.KvCacheDType);
            return Perplexity.Measure(m, ModelQuantTests.HeldOutIds(m, ModelQuantTests.HeldOutPrefixTokens), 512, 256).Perplexity;
        }
        double f32 = Ppl(null), f16 = Ppl("f16"), f8 = Ppl("fp8");
        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"tiny-wp held-out ppl: f32 KV {f32:F4}, f16 KV {f16:F4} ({(f16 / f32 - 1) * 100:+0.000;-0.000}%), fp8 KV {f8:F4} ({(f8 / f32 - 1) * 100:+0.000;-0.000}%)"));
        Assert.NotEqual(f32, f8);
        Assert.True(Math.Abs(f8 / f32 - 1) <= 0.01, $"fp8 KV perplexity {f8:F4} vs f32 KV {f32:F4}: more than 1% apart");
        Assert.True(Math.Abs(f16 / f32 - 1) <= 0.001, $"f16 KV perplexity {f16:F4} vs f32 KV {f32:F4}");
    }
}
