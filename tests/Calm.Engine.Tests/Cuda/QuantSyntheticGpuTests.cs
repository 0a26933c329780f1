using System.Diagnostics;
using Calm.Engine.Cuda;
using Calm.Engine.Model;
using Calm.Engine.Quant;
using Calm.Engine.Synthetic;
using Calm.Engine.Weights;

namespace Calm.Engine.Tests.Cuda;

/// <summary>
/// Quantized synthetic weights made on the GPU (kernels/quantize.cu, New-CalmModel -DType fp8|int4 -Device Cuda) are
/// byte for byte the host's: <see cref="SyntheticWeights.Build"/> at bf16 then <see cref="Quantizer.QuantizeModel"/>.
/// Every tensor's values and scales are read back (<see cref="CudaBackend.ReadDeviceTensor"/>, ":scales" and
/// ":quantized" suffixes) and compared: int4 rows with cols % 32 != 0 (padding), odd widths, tied classifiers (their
/// own quantized copy), MoE experts, the real Llama-3.2-1B and Mixtral-8x7B layer shapes.
/// </summary>
[Trait("Category", "GPU")]
[Collection("GPU")]
public class QuantSyntheticGpuTests
{
    private static void RequireGpu()
    {
        if (CudaDeviceInfo.Unavailable() is { } why) Assert.Skip("No usable CUDA device: " + why);
    }

    private static void Log(string s) => TestContext.Current.SendDiagnosticMessage(s);

    /// <summary>bf16 source configs by name (DType = the synthetic source dtype).</summary>
    public static ModelConfig Config(string name)
    {
        var tiny = Presets.Get("tiny") with { DType = SyntheticWeights.QuantizedSourceDType };
        return name switch
        {
            "tiny" => tiny,                                                             // F = 688: down rows 688 = 21.5 groups
            "tiny-tied-bias" => tiny with { TieWordEmbeddings = true, QkvBias = true, NumLayers = 2 },
            "tiny-odd" => tiny with { IntermediateSize = 700, NumLayers = 2 },          // 700 % 32 = 28, fp8 rows not 16-aligned
            "tiny-moe" => tiny with
            {
                Architecture = Architecture.Mixtral, ModelType = "mixtral", NumExperts = 4, NumExpertsPerToken = 2,
                IntermediateSize = 336, NumLayers = 2,                                  // 336 % 32 = 16
            },
            "llama-3.2-1b-2l" => Presets.Get("Llama-3.2-1B") with { DType = SyntheticWeights.QuantizedSourceDType, NumLayers = 2 },   // tied 128256 x 2048
            "mixtral-1l" => Presets.Get("Mixtral-8x7B") with { DType = SyntheticWeights.QuantizedSourceDType, NumLayers = 1 },        // experts 14336 x 4096
            _ => throw new ArgumentException(name),
        };
    }

    /// <summary>Compares every tensor of the host-made quantized model with the device's bytes; returns the tensors checked.</summary>
    private static unsafe int CompareWithHost(ModelWeights host, CudaBackend b)
    {
        int n = 0;
        foreach (var t in host.AllTensors())
        {
            bool tiedCopy = DTypes.IsQuantized(t.DType) && ReferenceEquals(t, host.LmHead) && t.Name == host.Embedding.Name;
            string key = tiedCopy ? t.Name + CudaBackend.QuantizedCopySuffix : t.Name;
            var dev = b.ReadDeviceTensor(key, out bool asF32);
            Assert.True(dev is not null, $"{key} is not on the device");
            if (DTypes.IsQuantized(t.DType))
            {
                SameBytes(key, "values", new ReadOnlySpan<byte>((void*)t.Data, checked((int)t.DataBytes)), dev!, t.RowDataBytes);
                var ds = b.ReadDeviceTensor(key + CudaBackend.ScalesSuffix, out _);
                Assert.True(ds is not null, $"{key}{CudaBackend.ScalesSuffix} is not on the device");
                SameBytes(key, "scales", new ReadOnlySpan<byte>((void*)t.Scales, checked((int)t.ScaleBytes)), ds!, t.RowScaleBytes);
            }
            else if (!asF32)
                SameBytes(key, "values", new ReadOnlySpan<byte>((void*)t.Data, checked((int)t.ByteLength)), dev!, t.RowDataBytes);
            else
                for (long i = 0; i < t.ElementCount; i++)
                    Assert.True(BitConverter.SingleToUInt32Bits(t.GetFloat(i)) == BitConverter.ToUInt32(dev!, (int)(i * 4)), $"{t.Name}[{i}] differs");
            n++;
        }
        return n;
    }

    private static void SameBytes(string name, string what, ReadOnlySpan<byte> host, byte[] dev, long rowBytes)
    {
        Assert.True(host.Length == dev.Length, $"{name} {what}: host {host.Length} bytes, device {dev.Length}");
        int i = host.SequenceEqual(dev) ? -1 : FirstDifference(host, dev);
        if (i >= 0)
        {
            int count = 0;
            for (int j = i; j < host.Length; j++) if (host[j] != dev[j]) count++;
            Assert.Fail($"{name} {what}: {count} of {host.Length} bytes differ; first at byte {i} (row {i / Math.Max(rowBytes, 1)}, byte {i % Math.Max(rowBytes, 1)} of the row): host 0x{host[i]:X2}, device 0x{dev[i]:X2}");
        }
    }

    private static int FirstDifference(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b)
    {
        for (int i = 0; i < a.Length; i++) if (a[i] != b[i]) return i;
        return -1;
    }

    /// <summary>Host: bf16 synthetic + Quantizer; device: DeviceOnly(config, dt) filled by the backend; every byte equal.</summary>
    private static void CheckBitIdentical(string configName, DType dt, int seed)
    {
        var config = Config(configName);
        var sw = Stopwatch.StartNew();
        var (bw, bstore) = SyntheticWeights.Build(config, seed, null, default);
        ModelWeights qw; NativeWeightStore qs;
        try { (qw, qs) = Quantizer.QuantizeModel(bw, dt); }
        finally { bstore.Dispose(); }
        using var _ = qs;
        long hostMs = sw.ElapsedMilliseconds;
        var qconfig = config with { DType = dt };
        var dw = SyntheticWeights.DeviceOnly(config, dt);
        Assert.Equal(qw.TotalBytes, dw.TotalBytes);
        sw.Restart();
        using var b = new CudaBackend(qconfig, dw, 32, syntheticSeed: seed);
        long devMs = sw.ElapsedMilliseconds;
        int n = CompareWithHost(qw, b);
        Assert.Equal(qw.AllTensors().Count(), n);
        Log($"{configName} {DTypes.Name(dt)} seed {seed}: {n} tensors, {qw.TotalBytes / 1e6:F1} MB bit-identical (host build + quantize {hostMs} ms, GPU backend incl. make {devMs} ms)");
    }

    [Theory]
    [InlineData("tiny", DType.F8E4M3)]
    [InlineData("tiny", DType.Int4)]
    [InlineData("tiny-tied-bias", DType.F8E4M3)]
    [InlineData("tiny-tied-bias", DType.Int4)]
    [InlineData("tiny-odd", DType.F8E4M3)]
    [InlineData("tiny-odd", DType.Int4)]
    [InlineData("tiny-moe", DType.F8E4M3)]
    [InlineData("tiny-moe", DType.Int4)]
    public void QuantizedSyntheticMadeOnGpuIsBitIdenticalToHost(string configName, DType dt)
    {
        RequireGpu();
        CheckBitIdentical(configName, dt, Gpu.Rng().Next());
    }

    /// <summary>Real shapes: the Llama-3.2-1B tied classifier (128256 x 2048) and a Mixtral-8x7B layer (8 experts of
    /// 14336 x 4096, its 32000-row classifier); a layer's tensors have the same names, hence values, as in the full model.</summary>
    [Theory]
    [InlineData("llama-3.2-1b-2l", DType.F8E4M3)]
    [InlineData("llama-3.2-1b-2l", DType.Int4)]
    [InlineData("mixtral-1l", DType.F8E4M3)]
    [InlineData("mixtral-1l", DType.Int4)]
    public void QuantizedSyntheticRealShapesAreBitIdenticalToHost(string configName, DType dt)
    {
        RequireGpu();
        CheckBitIdentical(configName, dt, 1);
    }

    /// <summary>New-CalmModel -DType fp8|int4 -Device Cuda: no host copy of any tensor, the same sizes as the CPU model,
    /// and the same weights (the device bytes against the CPU model's host bytes).</summary>
    [Theory]
    [InlineData(DType.F8E4M3)]
    [InlineData(DType.Int4)]
    public void NewModelOnCudaMakesQuantizedWeightsOnGpuOnly(DType dt)
    {
        RequireGpu();
        int seed = Gpu.Rng().Next();
        var opt = new ImportOptions { ContextLength = 64 };
        using var cpu = ModelFactory.CreateSynthetic("tiny", seed, dt, opt with { Device = DeviceChoice.Cpu });
        var reports = new List<LoadProgress>();
        using var gpu = ModelFactory.CreateSynthetic("tiny", seed, dt, opt with { Device = DeviceChoice.Cuda }, new SyncProgress(reports.Add));
        Assert.Equal("Cuda", gpu.DeviceKind);
        Assert.Equal(dt, gpu.Config.DType);
        Assert.All(gpu.Weights.AllTensors(), t => Assert.True(t.IsDeviceOnly, $"{t.Name} has a host copy"));
        Assert.Equal(cpu.WeightBytes, gpu.WeightBytes);
        Assert.Equal(dt, gpu.Weights.LmHead.DType);
        Assert.Equal(cpu.Config.DType, gpu.Config.DType);
        Assert.Contains(reports, r => r.Activity.StartsWith("Making synthetic weights", StringComparison.Ordinal));
        Assert.DoesNotContain(reports, r => r.Activity.StartsWith("Quantizing", StringComparison.Ordinal));
        Assert.Equal(cpu.Weights.AllTensors().Count(), CompareWithHost(cpu.Weights, (CudaBackend)gpu.Backend));
    }

    [Fact]
    public void CancelledQuantizedMakeLeavesNothingAllocated()
    {
        RequireGpu();
        using var ctx = CudaContext.Acquire(0);
        long free0 = ctx.MemoryInfo().Free;
        using var cts = new CancellationTokenSource();
        int made = 0;
        var progress = new SyncProgress(p => { if (p.Activity.StartsWith("Making", StringComparison.Ordinal) && ++made == 20) cts.Cancel(); });
        Assert.ThrowsAny<OperationCanceledException>(() =>
            ModelFactory.CreateSynthetic("Llama-3.2-1B", 1, DType.F8E4M3, new ImportOptions { Device = DeviceChoice.Cuda, ContextLength = 256 }, progress, cts.Token));
        long leaked = free0 - ctx.MemoryInfo().Free;
        Assert.True(leaked < 64L << 20, $"{leaked:N0} bytes of device memory still allocated after cancelling");
    }

    [Fact]
    public void QuantizedSyntheticLargerThanTheGpuIsOutOfMemoryWithNothingAllocated()
    {
        RequireGpu();
        using var ctx = CudaContext.Acquire(0);
        long free0 = ctx.MemoryInfo().Free;
        var config = Presets.Get("Llama-3.1-70B") with { DType = SyntheticWeights.QuantizedSourceDType, NumLayers = 640 };   // ~440 GB of fp8
        var dw = SyntheticWeights.DeviceOnly(config, DType.F8E4M3);
        Assert.True(dw.TotalBytes > ctx.MemoryInfo().Total, $"{dw.TotalBytes:N0} bytes fit on this GPU");
        var ex = Assert.Throws<CalmException>(() => new CudaBackend(config with { DType = DType.F8E4M3 }, dw, 1024, syntheticSeed: 1));
        Assert.Equal(ErrorIds.OutOfMemory, ex.ErrorId);
        long leaked = free0 - ctx.MemoryInfo().Free;
        Assert.True(leaked < 64L << 20, $"{leaked:N0} bytes of device memory still allocated after the refusal");
    }

    /// <summary>The measurement needs Mixtral-8x7B fp8 on the GPU: made in seconds with no host memory (the
    /// host path had to build 93 GB of bf16). Also int4. Logs the time; one decode step gives finite logits.</summary>
    [Theory]
    [InlineData(DType.F8E4M3)]
    [InlineData(DType.Int4)]
    public void MixtralQuantizedMadeOnGpuInSeconds(DType dt)
    {
        RequireGpu();
        var sw = Stopwatch.StartNew();
        using var m = ModelFactory.CreateSynthetic("Mixtral-8x7B", 1, dt, new ImportOptions { Device = DeviceChoice.Cuda, ContextLength = 256 });
        double s = sw.Elapsed.TotalSeconds;
        Assert.All(m.Weights.AllTensors(), t => Assert.True(t.IsDeviceOnly, $"{t.Name} has a host copy"));
        var logits = new float[m.Config.VocabSize];
        m.Backend.Forward(new[] { 1 }, 0, logits, false);
        Assert.All(logits, v => Assert.True(float.IsFinite(v)));
        Log($"Mixtral-8x7B {DTypes.Name(dt)}: {m.WeightBytes / 1e9:F2} GB of weights made on the GPU in {s:F1} s (incl. kernel compile/load and graph capture)");
        Assert.True(s < 120, $"making Mixtral-8x7B {DTypes.Name(dt)} took {s:F1} s");
    }

    /// <summary>IProgress that reports on the calling thread (Progress&lt;T&gt; posts to the thread pool).</summary>
    private sealed class SyncProgress(Action<LoadProgress> a) : IProgress<LoadProgress>
    {
        public void Report(LoadProgress value) => a(value);
    }
}
