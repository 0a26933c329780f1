using Calm.Engine.Cpu;
using Calm.Engine.Cuda;
using Calm.Engine.Model;
using Calm.Engine.Quant;
using Calm.Engine.Session;
using Calm.Engine.Synthetic;
using Calm.Engine.Weights;

namespace Calm.Engine.Tests.Cuda;

/// <summary>
/// The persistent decode kernel (kernels/decode_persistent.cu, one cooperative kernel per token with grid barriers)
/// against the float64 reference of <see cref="BackendTests"/> at every position (deep enough that the split attention
/// merges several chunks), against the CPU backend on a real-sized shape in bf16, fp8 and int4, bit-reproducible
/// from run to run (a race would move the bits), and its in-kernel stage timing.
/// </summary>
[Trait("Category", "GPU")]
[Collection("GPU")]
public class PersistentTests
{
    private static void RequireGpu()
    {
        if (CudaDeviceInfo.Unavailable() is { } why) Assert.Skip("No usable CUDA device: " + why);
    }

    private static void Log(string s) => TestContext.Current.SendDiagnosticMessage(s);

    [Theory]
    [InlineData("llama")] [InlineData("qwen2")] [InlineData("gemma")] [InlineData("mistral")] [InlineData("llama-bias")]
    public void LogitsMatchReferenceAtEveryPositionIncludingSplitMerges(string arch)
    {
        RequireGpu();
        var r = Gpu.Rng();
        var m = BackendTests.Build(BackendTests.Cfg(arch) with { MaxPositionEmbeddings = 256 }, r);
        using var _store = m.Store;
        int n = 150, V = m.C.VocabSize;   // split chunks are 64 positions: the last steps merge 3 chunks per kv head
        var tokens = Enumerable.Range(0, n).Select(_ => r.Next(V)).ToArray();
        var want = BackendTests.Reference(m, tokens);
        using var b = new CudaBackend(m.C, m.W, 200, decode: "persistent");
        Assert.Equal("persistent", b.DecodeMode);
        Assert.Null(b.PersistentUnavailableReason);
        b.BatchedPrefill = false;   // every position through the persistent kernel
        var all = new float[n * V];
        Array.Fill(all, float.NaN);
        b.Forward(tokens, 0, all, allLogits: true);
        double worst = 0;
        for (int p = 0; p < n; p++)
        {
            Gpu.Close(all.AsSpan(p * V, V), want[p], 2e-3, $"{arch} persistent logits at position {p}");
            worst = Math.Max(worst, Gpu.RelL2(all.AsSpan(p * V, V), want[p]));
        }
        Log($"{arch}: persistent vs float64 reference, worst relative L2 over {n} positions {worst:E2}");
        // the kernel's own argmax (last block) agrees with the logits it wrote
        var last = all.AsSpan((n - 1) * V, V).ToArray();
        int g = b.ForwardGreedy(tokens.AsSpan(n - 1, 1), n - 1);
        Assert.Equal(Array.IndexOf(last, last.Max()), g);
        // batched prefill, then persistent decode steps
        b.BatchedPrefill = true;
        var lp = new float[V];
        b.Forward(tokens.AsSpan(0, n - 4), 0, lp, false);
        for (int p = n - 4; p < n; p++) b.Forward(tokens.AsSpan(p, 1), p, lp, false);
        Gpu.Close(lp, want[n - 1], 2e-3, $"{arch} persistent decode after batched prefill");
    }

    [Theory]
    [InlineData("qwen3", "q/k norms")] [InlineData("phi3", "partial rotary")] [InlineData("mixtral", "mixture-of-experts")]
    public void UnsupportedShapesDecodeWithTheGraphAndSayWhy(string arch, string reason)
    {
        RequireGpu();
        var m = BackendTests.Build(BackendTests.Cfg(arch), Gpu.Rng());
        using var _store = m.Store;
        using var b = new CudaBackend(m.C, m.W, 32, decode: "persistent");
        Assert.Equal("graph", b.DecodeMode);
        Assert.Contains(reason, b.PersistentUnavailableReason);
        var lg = new float[m.C.VocabSize];
        b.Forward(new[] { 1, 2, 3 }, 0, lg, false);
        Assert.All(lg, v => Assert.True(float.IsFinite(v)));
    }

    [Fact]
    public void BadDecodeModeIsAnInvalidArgument()
    {
        RequireGpu();
        var m = BackendTests.Build(BackendTests.Cfg("llama"), Gpu.Rng());
        using var _store = m.Store;
        var ex = Assert.Throws<CalmException>(() => new CudaBackend(m.C, m.W, 32, decode: "fast"));
        Assert.Equal(ErrorIds.InvalidArgument, ex.ErrorId);
    }

    /// <summary>The Llama-3.2-1B shape (16 layers, hidden 2048, ffn 8192, 128k vocabulary, tied classifier), synthetic
    /// weights: persistent GPU vs the CPU backend on the same (quantized) weights over decode steps, the bound of the
    /// graph path's large-shape test; the same step twice gives the same bits; the stage profile covers the step.</summary>
    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F8E4M3)]
    [InlineData(DType.Int4)]
    public void Llama32_1BShapeMatchesCpuIsReproducibleAndProfiles(DType dt)
    {
        RequireGpu();
        int seed = Gpu.Rng().Next();
        var config = Presets.Get("Llama-3.2-1B") with { DType = DType.BF16 };
        var (bw, bstore) = SyntheticWeights.Build(config, seed, null, default);
        ModelWeights w = bw;
        NativeWeightStore? qs = null;
        try
        {
            if (dt != DType.BF16) (w, qs) = Quantizer.QuantizeModel(bw, dt, null, default);
            var qc = config with { DType = dt };
            using var cpu = new CpuBackend(qc, w, 128);
            using var gpu = new CudaBackend(qc, w, 128, decode: "persistent");
            Assert.Equal("persistent", gpu.DecodeMode);
            int v = qc.VocabSize;
            var lc = new float[v]; var lg = new float[v]; var lg2 = new float[v];
            int token = new Random(seed).Next(v);
            double worst = 0;
            for (int p = 0; p < 6; p++)
            {
                cpu.Forward(new[] { token }, p, lc, false);
                Array.Fill(lg, float.NaN);
                gpu.Forward(new[] { token }, p, lg, false);
                double err = Gpu.RelL2(lg, lc);
                worst = Math.Max(worst, err);
                Assert.True(err <= QuantBackendGpuTests.LargeShapeTolerance, $"step {p}: {DTypes.Name(dt)} persistent GPU vs CPU logits relative L2 {err:E2} > {QuantBackendGpuTests.LargeShapeTolerance:E0}");
                // the same step again (same position: the cache row is rewritten with the same values) gives the same bits
                Array.Fill(lg2, float.NaN);
                gpu.Forward(new[] { token }, p, lg2, false);
                for (int i = 0; i < v; i++)
                    Assert.True(BitConverter.SingleToInt32Bits(lg[i]) == BitConverter.SingleToInt32Bits(lg2[i]), $"step {p}: logit {i} differs between two runs of the same step ({lg[i]} vs {lg2[i]})");
                token = Array.IndexOf(lc, lc.Max());
            }
            Log($"Llama-3.2-1B shape {DTypes.Name(dt)}, seed {seed}: persistent GPU vs CPU worst relative L2 over 6 steps {worst:E2}");
            // in-kernel stage profile: every stage present, positive, and together about one step
            var bench = (IBenchmarkBackend)gpu;
            var stages = bench.ProfileDecodeStages(5, 5, default);
            Assert.Equal(Stages.All.Length, stages.Count);
            foreach (var s in stages) Assert.True(s.Ms > 0, $"{s.Stage}: {s.Ms} ms");
            double sum = stages.Sum(s => s.Ms);
            var step = bench.TimeDecodeSteps(5, 20, 3, default);
            double med = step.OrderBy(x => x).ElementAt(step.Length / 2);
            Log($"stages {string.Join(", ", stages.Select(s => $"{s.Stage} {s.Ms:F3}"))} = {sum:F3} ms; step {med:F3} ms");
            Assert.True(sum <= med * 1.2 && sum >= med * 0.5, $"stage sum {sum:F3} ms vs step {med:F3} ms");
        }
        finally
        {
            qs?.Dispose();
            bstore.Dispose();
        }
    }
}
