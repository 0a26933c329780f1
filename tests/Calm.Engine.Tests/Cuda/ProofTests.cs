using Calm.Engine.Cpu;
using Calm.Engine.Cuda;
using Calm.Engine.Model;
using Calm.Engine.Session;
using Calm.Engine.Synthetic;
using Calm.Engine.Tests.Fixtures;
using Calm.Engine.Weights;

namespace Calm.Engine.Tests.Cuda;

/// <summary>
/// The CUDA issue's proofs: transformers fixtures on the GPU, GPU against CPU on a Llama-3.2-1B shape, import/remove
/// cycles leaving GPU memory as it was, out-of-memory at upload, synthetic weights made on the GPU bit for bit.
/// </summary>
[Trait("Category", "GPU")]
[Collection("GPU")]   // one at a time: the tests read free GPU memory, which a parallel test would change
public class ProofTests
{
    public const double FixtureTolerance = 2e-3;

    private static void RequireGpu()
    {
        if (CudaDeviceInfo.Unavailable() is { } why) Assert.Skip("No usable CUDA device: " + why);
    }

    private static void Log(string s) => TestContext.Current.SendDiagnosticMessage(s);

    [Theory]
    [MemberData(nameof(TransformersFixtureTests.Names), MemberType = typeof(TransformersFixtureTests))]
    public void FixturePrefillAndDecodeMatchTransformersOnGpu(string name)
    {
        RequireGpu();
        var reference = TransformersFixtureTests.LoadReference(name);
        var folder = ModelFolderLoader.Load(Path.Combine(TransformersFixtureTests.FixturesDir, name), null, default);
        using (folder.Store)
        using (var b = new CudaBackend(folder.Config, folder.Weights, 64))
        {
            int v = folder.Config.VocabSize, n = reference.InputIds.Length;
            var all = new float[n * v];
            b.Forward(reference.InputIds, 0, all, allLogits: true);
            double worst = 0;
            for (int p = 0; p < n; p++)
            {
                double err = TransformersFixtureTests.RelL2(all.AsSpan(p * v, v), reference.Logits[p]);
                worst = Math.Max(worst, err);
                Assert.True(err <= FixtureTolerance, $"{name}: GPU prefill position {p}: relative L2 {err:E2} > {FixtureTolerance:E0}");
            }
            var one = new float[v];
            double worstDecode = 0;
            for (int p = 0; p < n; p++)
            {
                Array.Fill(one, float.NaN);
                b.Forward(reference.InputIds.AsSpan(p, 1), p, one, allLogits: false);
                double err = TransformersFixtureTests.RelL2(one, reference.Logits[p]);
                worstDecode = Math.Max(worstDecode, err);
                Assert.True(err <= FixtureTolerance, $"{name}: GPU decode position {p}: relative L2 {err:E2} > {FixtureTolerance:E0}");
            }
            Log($"{name} ({reference.Dtype}): worst relative L2 prefill {worst:E2}, decode {worstDecode:E2} over {n} positions");
        }
    }

    [Fact]
    public void Llama32_1BShapeGpuMatchesCpuOver32DecodeSteps()
    {
        RequireGpu();
        int seed = Gpu.Rng().Next();
        var opt = new ImportOptions { ContextLength = 64 };
        using var cpu = ModelFactory.CreateSynthetic("Llama-3.2-1B", seed, DType.BF16, opt with { Device = DeviceChoice.Cpu });
        using var gpu = ModelFactory.CreateSynthetic("Llama-3.2-1B", seed, DType.BF16, opt with { Device = DeviceChoice.Cuda });
        Assert.Equal("Cuda", gpu.DeviceKind);
        Assert.All(gpu.Weights.AllTensors(), t => Assert.True(t.IsDeviceOnly));          // no host copy
        Assert.Equal(cpu.WeightBytes, gpu.WeightBytes);
        int v = cpu.Config.VocabSize;
        var lc = new float[v]; var lg = new float[v];
        int token = new Random(seed).Next(v);
        double worst = 0;
        for (int p = 0; p < 32; p++)
        {
            cpu.Backend.Forward(new[] { token }, p, lc, false);
            Array.Fill(lg, float.NaN);
            gpu.Backend.Forward(new[] { token }, p, lg, false);
            double err = Gpu.RelL2(lg, lc);
            worst = Math.Max(worst, err);
            Assert.True(err <= 1e-2, $"step {p}: GPU vs CPU logits relative L2 {err:E2} > 1e-2");
            token = Array.IndexOf(lc, lc.Max());    // both follow the CPU's greedy path
        }
        Log($"Llama-3.2-1B shape bf16, seed {seed}: worst GPU vs CPU relative L2 over 32 decode steps {worst:E2}");
    }

    [Fact]
    public void TwentyImportRemoveCyclesOf1BModelLeaveFreeMemory()
    {
        RequireGpu();
        using var ctx = CudaContext.Acquire(0);
        long free0 = ctx.MemoryInfo().Free;
        long during = 0;
        for (int i = 0; i < 20; i++)
        {
            using var m = ModelFactory.CreateSynthetic("Llama-3.2-1B", i, DType.BF16, new ImportOptions { Device = DeviceChoice.Cuda, ContextLength = 2048 });
            Assert.True(m.Backend is CudaBackend { DeviceBytes: > 2_000_000_000L });
            during = Math.Max(during, free0 - ctx.MemoryInfo().Free);
            Assert.InRange(((IDeviceSampling)m.Backend).ForwardGreedy(new[] { 1 }, 0), 0, m.Config.VocabSize - 1);
        }
        long free1 = ctx.MemoryInfo().Free;
        Log($"20 cycles: free {free0:N0} -> {free1:N0} bytes (model took {during:N0} while loaded)");
        Assert.True(during > 2_000_000_000L, "the model did not take GPU memory");
        Assert.True(Math.Abs(free1 - free0) <= free0 / 100, $"free GPU memory {free0:N0} -> {free1:N0} after 20 import/remove cycles");
    }

    [Fact]
    public void OutOfMemoryAtUploadIsClearAndLeavesNothingAllocated()
    {
        RequireGpu();
        using var ctx = CudaContext.Acquire(0);
        long free0 = ctx.MemoryInfo().Free;
        // Llama-3.1-70B in f32 is about 282 GB: more than any single GPU here.
        var ex = Assert.Throws<CalmException>(() => ModelFactory.CreateSynthetic("Llama-3.1-70B", 1, DType.F32, new ImportOptions { Device = DeviceChoice.Cuda, ContextLength = 1024 }));
        Assert.Equal(ErrorIds.OutOfMemory, ex.ErrorId);
        Assert.Matches(@"needs [\d,]+ bytes", ex.Message);
        Assert.Matches(@"has [\d,]+ bytes .*free", ex.Message);
        Log(ex.Message);
        Assert.True(Math.Abs(ctx.MemoryInfo().Free - free0) <= free0 / 1000, "memory left allocated after the 70B refusal");
        // a huge context on a small real model: the KV cache does not fit
        var ex2 = Assert.Throws<CalmException>(() => ModelFactory.Import(Path.Combine(TransformersFixtureTests.FixturesDir, "llama"),
            new ImportOptions { Device = DeviceChoice.Cuda, ContextLength = 1_500_000_000 }));
        Assert.Equal(ErrorIds.OutOfMemory, ex2.ErrorId);
        Assert.Contains("KV cache", ex2.Message);
        Assert.True(Math.Abs(ctx.MemoryInfo().Free - free0) <= free0 / 1000, "memory left allocated after the huge-context refusal");
    }

    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    [InlineData(DType.F32)]
    public void GpuFilledSyntheticWeightsEqualHostFilledBitForBit(DType dt)
    {
        RequireGpu();
        int seed = Gpu.Rng().Next();
        var config = Presets.Get("tiny") with { DType = dt };
        var (host, store) = SyntheticWeights.Build(config, seed, null, default);
        using var _ = store;
        using var b = new CudaBackend(config, SyntheticWeights.DeviceOnly(config), 32, syntheticSeed: seed);
        int checkedTensors = 0;
        foreach (var t in host.AllTensors())
        {
            var dev = b.ReadDeviceTensor(t.Name, out bool asF32);
            Assert.True(dev is not null, $"{t.Name} is not on the device");
            if (!asF32)
            {
                unsafe { Assert.True(new ReadOnlySpan<byte>((void*)t.Data, (int)t.ByteLength).SequenceEqual(dev), $"{t.Name}: GPU-made bytes differ from the host's"); }
            }
            else
            {
                for (long i = 0; i < t.ElementCount; i++)
                    Assert.True(BitConverter.SingleToUInt32Bits(t.GetFloat(i)) == BitConverter.ToUInt32(dev, (int)(i * 4)), $"{t.Name}[{i}] differs");
            }
            checkedTensors++;
        }
        Assert.Equal(SyntheticWeights.Layout(config).Count, checkedTensors);
    }

    [Fact]
    public void TinySyntheticMadeOnGpuMatchesTinyMadeOnCpu()
    {
        RequireGpu();
        int seed = Gpu.Rng().Next();
        using var cpu = ModelFactory.CreateSynthetic("tiny", seed, DType.BF16, new ImportOptions { Device = DeviceChoice.Cpu, ContextLength = 64 });
        using var gpu = ModelFactory.CreateSynthetic("tiny", seed, DType.BF16, new ImportOptions { Device = DeviceChoice.Cuda, ContextLength = 64 });
        var r = new Random(seed);
        var toks = Enumerable.Range(0, 24).Select(_ => r.Next(cpu.Config.VocabSize)).ToArray();
        int v = cpu.Config.VocabSize;
        var a = new float[toks.Length * v]; var g = new float[toks.Length * v];
        cpu.Backend.Forward(toks, 0, a, true);
        gpu.Backend.Forward(toks, 0, g, true);
        for (int p = 0; p < toks.Length; p++)
        {
            double err = Gpu.RelL2(g.AsSpan(p * v, v), a.AsSpan(p * v, v));
            Assert.True(err <= 1e-2, $"position {p}: relative L2 {err:E2}");
        }
    }

    [Fact]
    public void BenchmarkBackendTimesStepsStagesAndPrefill()
    {
        RequireGpu();
        using var m = ModelFactory.CreateSynthetic("Llama-3.2-1B", 3, DType.BF16, new ImportOptions { Device = DeviceChoice.Cuda, ContextLength = 16384 });
        var b = (IBenchmarkBackend)m.Backend;
        b.FillKvCacheForBenchmark(16384, 5);
        var steps = b.TimeDecodeSteps(0, 20, 5, default);
        Assert.Equal(20, steps.Length);
        Assert.All(steps, t => Assert.True(t > 0));
        double step0 = CudaBackend.Median(steps);
        var deep = b.TimeDecodeSteps(16000, 20, 5, default);
        double stepDeep = CudaBackend.Median(deep);
        var st0 = b.ProfileDecodeStages(0, 10, default);
        var stDeep = b.ProfileDecodeStages(16000, 10, default);
        Assert.Equal(Stages.All, st0.Select(s => s.Stage).ToArray());
        double sum0 = st0.Sum(s => s.Ms);
        foreach (var s in stDeep) Log($"stage {s.Stage} at 16000: {s.Ms:F4} ms, {s.Bytes:N0} bytes, {s.Bytes / (s.Ms * 1e6):F0} GB/s");
        Log($"step at 0: {step0:F4} ms, at 16000: {stepDeep:F4} ms; stage sum at 0: {sum0:F4} ms; weights {m.WeightBytes:N0} B -> {m.WeightBytes / (step0 * 1e6):F0} GB/s");
        Assert.True(sum0 > 0.6 * step0 && sum0 < 1.6 * step0, $"stage times sum to {sum0:F4} ms vs a full step {step0:F4} ms");
        double att0 = st0.Single(s => s.Stage == Stages.Attention).Ms, attDeep = stDeep.Single(s => s.Stage == Stages.Attention).Ms;
        Assert.True(attDeep > 2 * att0, $"attention at 16000 ({attDeep:F4} ms) should cost far more than at 0 ({att0:F4} ms)");
        Assert.True(stepDeep > step0, "a deep position should be slower");
        Assert.True(st0.Single(s => s.Stage == Stages.Ffn).Ms > st0.Single(s => s.Stage == Stages.Other).Ms);
        double prefill = b.TimePrefill(64, 3, default);
        if (((CudaBackend)m.Backend).UsesBatchedPrefill(64))   // tensor-core GEMMs read each weight once for all 64 tokens
            Assert.True(prefill > 0.5 * step0 && prefill < 32 * step0, $"batched prefill of 64 tokens {prefill:F3} ms vs step {step0:F4} ms");
        else                                                    // token by token through the decode graph
            Assert.True(prefill > 16 * step0 && prefill < 256 * step0, $"prefill of 64 tokens {prefill:F3} ms vs step {step0:F4} ms");
        Assert.True(b.DeviceBytes > m.WeightBytes);
        var ex = Assert.Throws<CalmException>(() => b.TimeDecodeSteps(16380, 10, 0, default));
        Assert.Equal(ErrorIds.ContextOverflow, ex.ErrorId);
    }

    [Fact]
    public void BandwidthAndMicrobenchmarksReportPlausibleFigures()
    {
        RequireGpu();
        var info = CudaDeviceInfo.List()[0];
        var read = CudaBandwidth.Measure(CudaBandwidthKind.Read, 1L << 30, 5);
        var copy = CudaBandwidth.Measure(CudaBandwidthKind.Copy, 1L << 30, 5);
        Log($"{info.Name}: read {read.MedianGBps:F0} GB/s (spread {read.SpreadPercent:F1}%), copy {copy.MedianGBps:F0} GB/s, peak {info.PeakBandwidthGBps:F0}");
        Assert.Equal(5, read.SamplesGBps.Length);
        Assert.True(read.MedianGBps > 50, "read bandwidth implausibly low");
        if (info.PeakBandwidthGBps > 0) Assert.True(read.MaxGBps < 1.05 * info.PeakBandwidthGBps, "read bandwidth above the attribute peak: the buffer is cached or the bytes are miscounted");
        var mv = CudaMicrobench.Matvec(4096, 4096, DType.BF16, 10);
        var att = CudaMicrobench.Attention(4096, 32, 8, 128, 10);
        Log($"matvec 4096x4096 bf16: {mv.MedianMs * 1000:F1} us, {mv.MedianGBps:F0} GB/s; attention ctx 4096 32/8x128: {att.MedianMs * 1000:F1} us, {att.MedianGBps:F0} GB/s");
        Assert.Equal(4096L * 4096 * 2 + 4096 * 8, mv.Bytes);
        Assert.True(mv.MedianGBps < 1.1 * read.MedianGBps && mv.MedianGBps > 0.05 * read.MedianGBps);
        Assert.True(att.MedianGBps < 1.1 * read.MedianGBps && att.MedianMs > 0);
    }
}
