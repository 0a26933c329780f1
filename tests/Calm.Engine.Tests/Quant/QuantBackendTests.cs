using Calm.Engine.Cpu;
using Calm.Engine.Model;
using Calm.Engine.Quant;
using Calm.Engine.Tests.Cpu;
using Calm.Engine.Weights;

namespace Calm.Engine.Tests.Quant;

/// <summary>
/// The CPU backend on quantized weights of every architecture (phi3 fused slices, mixtral experts, odd sizes that
/// pad int4 rows) equals the same backend on an f32 copy of the dequantized weights: every matrix is read with its
/// own scales. Also the progress and cleanup contract of <see cref="Quantizer.QuantizeModel"/>.
/// </summary>
public unsafe class QuantBackendTests
{
    private static readonly int Seed = Environment.TickCount;

    /// <summary>f32 copy of every quantized tensor (values from the naive per-element dequantization), others shared.</summary>
    private static ModelWeights Dequantized(ModelWeights q, NativeWeightStore store)
    {
        var map = new Dictionary<Tensor, Tensor>(ReferenceEqualityComparer.Instance);
        Tensor D(Tensor t)
        {
            if (!DTypes.IsQuantized(t.DType)) return t;
            if (map.TryGetValue(t, out var have)) return have;
            nint p = store.Allocate(t.ElementCount * 4);
            for (long i = 0; i < t.ElementCount; i++) ((float*)p)[i] = (float)QuantDequant(t, i);
            return map[t] = new Tensor(t.Name, DType.F32, t.Shape, p, "dequantized");
        }
        Tensor? DO(Tensor? t) => t is null ? null : D(t);
        return new ModelWeights
        {
            Embedding = D(q.Embedding), FinalNorm = D(q.FinalNorm), LmHead = D(q.LmHead),
            Layers = q.Layers.Select(l => new LayerWeights
            {
                AttnNorm = l.AttnNorm, FfnNorm = l.FfnNorm, Wq = D(l.Wq), Wk = D(l.Wk), Wv = D(l.Wv), Wo = D(l.Wo),
                Bq = l.Bq, Bk = l.Bk, Bv = l.Bv, Bo = l.Bo, QNorm = l.QNorm, KNorm = l.KNorm,
                WGate = DO(l.WGate), WUp = DO(l.WUp), WDown = DO(l.WDown), BGate = l.BGate, BUp = l.BUp, BDown = l.BDown,
                Router = DO(l.Router),
                ExpertGate = l.ExpertGate?.Select(D).ToArray(), ExpertUp = l.ExpertUp?.Select(D).ToArray(), ExpertDown = l.ExpertDown?.Select(D).ToArray(),
            }).ToArray(),
        };
    }

    /// <summary>Element i from the documented layout (independent of Tensor.GetFloat).</summary>
    private static double QuantDequant(Tensor t, long i)
    {
        long r = i / t.Cols, c = i % t.Cols;
        if (t.DType == DType.F8E4M3) return QuantFormatTests.NaiveE4M3(((byte*)t.Data)[r * t.Cols + c]) * ((float*)t.Scales)[r];
        long groups = (t.Cols + 31) / 32;
        byte b = ((byte*)t.Data)[r * groups * 16 + c / 2];
        int u = c % 2 == 0 ? b & 15 : b >> 4;
        return (u - 8) * (double)((Half*)t.Scales)[r * groups + c / 32];
    }

    public static TheoryData<string, DType> Cases()
    {
        var d = new TheoryData<string, DType>();
        foreach (var n in TestModels.Names) { d.Add(n, DType.F8E4M3); d.Add(n, DType.Int4); }
        return d;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void QuantizedForwardEqualsDequantizedF32Forward(string arch, DType dt)
    {
        var rng = new Random(Seed);
        using var m = TestModels.Build(TestModels.Config(arch), rng);
        var (qw, qs) = Quantizer.QuantizeModel(m.Weights, dt);
        using var _ = qs;
        Assert.All(new[] { qw.Layers[0].Wq, qw.Layers[^1].Wo, qw.LmHead }, t => Assert.Equal(dt, t.DType));
        Assert.NotSame(qw.LmHead, qw.Embedding);
        using var ds = new NativeWeightStore();
        var dw = Dequantized(qw, ds);
        var c = m.Config;
        int[] prompt = Enumerable.Range(0, 6).Select(_ => rng.Next(c.VocabSize)).ToArray();
        float[] Run(ModelWeights w)
        {
            using var b = new CpuBackend(c, w, 16);
            var all = new float[prompt.Length * c.VocabSize + c.VocabSize];
            b.Forward(prompt, 0, all.AsSpan(0, prompt.Length * c.VocabSize), allLogits: true);        // prefill (matmul)
            b.Forward(new[] { 3 }, prompt.Length, all.AsSpan(prompt.Length * c.VocabSize), allLogits: false); // decode (matvec)
            return all;
        }
        var got = Run(qw); var want = Run(dw); var orig = Run(m.Weights);
        double num = 0, den = 0, qerr = 0;
        for (int i = 0; i < got.Length; i++)
        {
            num += Math.Pow(got[i] - want[i], 2); den += want[i] * (double)want[i]; qerr += Math.Pow(orig[i] - want[i], 2);
        }
        Assert.True(Math.Sqrt(num / den) < 2e-5, $"{arch} {DTypes.Name(dt)}: quantized vs dequantized-f32 relative difference {Math.Sqrt(num / den):E2} (seed {Seed})");
        // And quantization did change the model (the comparison above is not trivially of identical weights).
        Assert.True(Math.Sqrt(qerr / den) > 1e-4, $"{arch}: quantization changed nothing?");
    }

    [Fact]
    public void QuantizeModelReportsProgressAndStopsWhenCancelled()
    {
        using var m = TestModels.Build(TestModels.Config("llama"), new Random(Seed));
        var reports = new List<LoadProgress>();
        var (qw, qs) = Quantizer.QuantizeModel(m.Weights, DType.Int4, new SyncProgress(reports.Add));
        using (qs)
        {
            Assert.NotEmpty(reports);
            Assert.All(reports, r => Assert.Equal("Quantizing weights to int4", r.Activity));
            Assert.Equal(1.0, reports[^1].Fraction);
            Assert.True(qs.Bytes >= qw.TotalBytes);
        }
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => Quantizer.QuantizeModel(m.Weights, DType.F8E4M3, null, cts.Token));
    }

    private sealed class SyncProgress(Action<LoadProgress> a) : IProgress<LoadProgress>
    {
        public void Report(LoadProgress value) => a(value);
    }
}
