using Calm.Engine.Cpu;
using Calm.Engine.Cuda;
using Calm.Engine.Generation;
using Calm.Engine.Model;
using Calm.Engine.Quant;
using Calm.Engine.Session;
using Calm.Engine.Synthetic;
using Calm.Engine.Tests.Fixtures;
using Calm.Engine.Tests.Generation;
using Calm.Engine.Weights;

namespace Calm.Engine.Tests.Cuda;

/// <summary>
/// fp8/int4 weights on the GPU (CudaBackend + CudaQuantKernels) against the CPU backend on the very same quantized
/// weights: tiny-wp imported with -DType on both devices, every transformers fixture architecture (MoE experts with a
/// bf16 router, biases, tied classifiers), a synthetic Llama-3.2-1B shape, the upload layout byte for byte, and greedy
/// generation. The only differences left between the two are the GPU's fp16 KV cache and summation order.
/// </summary>
[Trait("Category", "GPU")]
[Collection("GPU")]
public class QuantBackendGpuTests
{
    /// <summary>Relative L2 of GPU vs CPU logits per position on the same quantized weights (the task's bound).</summary>
    public const double SameWeightsTolerance = 1e-3;

    private static void RequireGpu()
    {
        if (CudaDeviceInfo.Unavailable() is { } why) Assert.Skip("No usable CUDA device: " + why);
    }

    private static void Log(string s) => TestContext.Current.SendDiagnosticMessage(s);

    /// <summary>Prefill of <paramref name="prompt"/> (all logits) then <paramref name="decode"/> single-token steps that follow
    /// the CPU's greedy choice, on both backends; asserts relative L2 ≤ bound at every position, returns the worst.</summary>
    private static double CompareForward(IForwardBackend cpu, IForwardBackend gpu, int vocab, int[] prompt, int decode, double bound, string what)
    {
        int n = prompt.Length;
        // the per-token path (the quantized matvecs) against the CPU; the batched prefill of fp8/int4 models (wgmma
        // GEMMs, f16 activations) is held to the per-token path in PrefillTests.QuantizedBatchedPrefillEqualsPerTokenPrefill
        if (gpu is CudaBackend cb) cb.BatchedPrefill = false;
        var a = new float[n * vocab];
        var g = new float[n * vocab];
        Array.Fill(g, float.NaN);
        cpu.Forward(prompt, 0, a, allLogits: true);
        gpu.Forward(prompt, 0, g, allLogits: true);
        double worst = 0;
        for (int p = 0; p < n; p++)
        {
            var gp = g.AsSpan(p * vocab, vocab);
            foreach (var v in gp) Assert.True(float.IsFinite(v), $"{what}: non-finite GPU logit at prefill position {p}");
            double e = Gpu.RelL2(gp, a.AsSpan(p * vocab, vocab));
            worst = Math.Max(worst, e);
            Assert.True(e <= bound, $"{what}: prefill position {p}: GPU vs CPU relative L2 {e:E2} > {bound:E0}");
        }
        var lc = a.AsSpan((n - 1) * vocab, vocab).ToArray();
        var lg = new float[vocab];
        for (int i = 0; i < decode; i++)
        {
            int tok = Array.IndexOf(lc, lc.Max());
            Array.Fill(lg, float.NaN);
            cpu.Forward(new[] { tok }, n + i, lc, false);
            gpu.Forward(new[] { tok }, n + i, lg, false);
            double e = Gpu.RelL2(lg, lc);
            worst = Math.Max(worst, e);
            Assert.True(e <= bound, $"{what}: decode step {i} (position {n + i}): GPU vs CPU relative L2 {e:E2} > {bound:E0}");
        }
        return worst;
    }

    /// <summary><see cref="CompareForward"/> over a random 24-token prompt and 16 decode steps, with the same-weights bound; logs the worst.</summary>
    private static void CompareOnRandomPrompt(LoadedModel cpu, LoadedModel gpu, string what)
    {
        int seed = Gpu.Rng().Next();
        var r = new Random(seed);
        var prompt = Enumerable.Range(0, 24).Select(_ => r.Next(cpu.Config.VocabSize)).ToArray();
        double worst = CompareForward(cpu.Backend, gpu.Backend, cpu.Config.VocabSize, prompt, 16, SameWeightsTolerance, $"{what} (seed {seed})");
        Log($"{what} (seed {seed}): worst GPU vs CPU relative L2 over 24 prefill + 16 decode positions {worst:E2}");
    }

    [Theory]
    [InlineData(DType.F8E4M3)]
    [InlineData(DType.Int4)]
    public void TinyWpImportedQuantizedOnGpuMatchesCpu(DType dt)
    {
        RequireGpu();
        using var cpu = ModelFactory.Import(TinyWp.Folder, new ImportOptions { Device = DeviceChoice.Cpu, WeightDType = dt, ContextLength = 128 });
        using var gpu = ModelFactory.Import(TinyWp.Folder, new ImportOptions { Device = DeviceChoice.Cuda, WeightDType = dt, ContextLength = 128 });
        Assert.Equal("Cuda", gpu.DeviceKind);
        Assert.Equal(dt, gpu.Config.DType);
        Assert.True(gpu.Backend is CudaBackend { HasQuantizedWeights: true });
        Assert.Equal(dt, gpu.Weights.Layers[0].Wq.DType);
        Assert.Equal(dt, gpu.Weights.LmHead.DType);
        Assert.Equal(cpu.WeightBytes, gpu.WeightBytes);
        CompareOnRandomPrompt(cpu, gpu, $"tiny-wp {DTypes.Name(dt)}");
    }

    [Theory]
    [InlineData("channel")]
    [InlineData("block")]
    public void TinyWpAsAPreQuantizedFp8CheckpointOnGpuMatchesCpu(string granularity)
    {
        // the checkpoint's fp8 values (memory-mapped, row scales; or requantized from 128x128 blocks) uploaded as they are
        RequireGpu();
        using var dir = new Calm.Engine.Tests.Loading.TempDir();
        Calm.Engine.Tests.Loading.Fp8CheckpointTests.WriteFp8CopyOf(TinyWp.Folder, dir.Path, granularity, DType.BF16);
        using var cpu = ModelFactory.Import(dir.Path, new ImportOptions { Device = DeviceChoice.Cpu, ContextLength = 128 });
        using var gpu = ModelFactory.Import(dir.Path, new ImportOptions { Device = DeviceChoice.Cuda, ContextLength = 128 });
        Assert.Equal(DType.F8E4M3, gpu.Config.DType);
        Assert.True(gpu.Backend is CudaBackend { HasQuantizedWeights: true });
        Assert.Equal(cpu.WeightBytes, gpu.WeightBytes);
        CompareOnRandomPrompt(cpu, gpu, $"tiny-wp fp8 checkpoint ({granularity})");
    }

    [Theory]
    [InlineData(DType.F8E4M3)]
    [InlineData(DType.Int4)]
    public void TinyWpQuantizedGreedyGenerationOnGpu(DType dt)
    {
        RequireGpu();
        using var gpu = ModelFactory.Import(TinyWp.Folder, new ImportOptions { Device = DeviceChoice.Cuda, WeightDType = dt, ContextLength = 128 });
        var golden = TinyWp.Training().GetProperty("greedy");
        var want = golden.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var res = Generator.Generate(gpu, golden.GetProperty("prompt").GetString()!, new GenerateOptions { MaxTokens = 12 });
        Assert.Equal(12, res.Ids.Length);
        // as on the CPU (Quant/ModelQuantTests): the first tokens of the bf16 golden continuation survive quantization
        Assert.Equal(want[..3], res.Ids[..3]);
        Assert.False(string.IsNullOrWhiteSpace(res.Text));
        // the device argmax is the argmax of the device logits
        var b = (CudaBackend)gpu.Backend;
        var ids = res.PromptIds;
        int greedy = b.ForwardGreedy(ids, 0);
        var logits = new float[gpu.Config.VocabSize];
        b.Forward(ids, 0, logits, false);
        Assert.Equal(Array.IndexOf(logits, logits.Max()), greedy);
        Log($"tiny-wp {DTypes.Name(dt)} on the GPU: {res.Text}");
    }

    /// <summary>The tile order (CudaBackend.TileOrder, QuantTileOrder: int4 matrices) is on by default where the
    /// tensor-core kernels run and changes no result: tiny-wp int4 (every matrix fits the order) loaded twice, once with
    /// CALM_QUANT_TILE=0, gives the same logits bit for bit from the per-token and the batched prefill and over greedy
    /// decode steps; the same kernels read the same bytes from other addresses.</summary>
    [Fact]
    public void TheTileOrderIsTheDefaultAndChangesNoLogit()
    {
        const DType dt = DType.Int4;
        RequireGpu();
        var opts = new ImportOptions { Device = DeviceChoice.Cuda, WeightDType = dt, ContextLength = 64 };
        LoadedModel rows;
        var was = Environment.GetEnvironmentVariable("CALM_QUANT_TILE");
        try
        {
            Environment.SetEnvironmentVariable("CALM_QUANT_TILE", "0");
            rows = ModelFactory.Import(TinyWp.Folder, opts);
        }
        finally { Environment.SetEnvironmentVariable("CALM_QUANT_TILE", was); }
        using var _r = rows;
        using var tiled = ModelFactory.Import(TinyWp.Folder, opts);
        var a = (CudaBackend)rows.Backend;
        var b = (CudaBackend)tiled.Backend;
        Assert.False(a.TileOrder);
        Assert.Contains("CALM_QUANT_TILE=0", a.KernelSwitches);
        bool expect = CudaDeviceInfo.List()[0].Arch >= 80 && was != "0" && Environment.GetEnvironmentVariable("CALM_QUANT_TC") != "0"
                      && (Environment.GetEnvironmentVariable("CALM_DECODE") ?? CudaBackend.DefaultDecode) != "persistent";
        Assert.Equal(expect, b.TileOrder);
        if (!expect) Assert.Skip("The tile order is off in this configuration (sm < 80, or a switch), so there is nothing to compare.");
        int v = rows.Config.VocabSize, seed = Gpu.Rng().Next();
        var rng = new Random(seed);
        var prompt = Enumerable.Range(0, 20).Select(_ => rng.Next(v)).ToArray();
        foreach (bool batched in new[] { false, true })
        {
            a.BatchedPrefill = b.BatchedPrefill = batched;
            var la = new float[prompt.Length * v];
            var lb = new float[prompt.Length * v];
            a.Forward(prompt, 0, la, allLogits: true);
            b.Forward(prompt, 0, lb, allLogits: true);
            Assert.True(la.AsSpan().SequenceEqual(lb), $"{DTypes.Name(dt)} (seed {seed}): {(batched ? "batched" : "per-token")} prefill logits differ between the tile order and row-major");
            var da = la.AsSpan((prompt.Length - 1) * v, v).ToArray();
            var db = new float[v];
            for (int i = 0; i < 6; i++)
            {
                int tok = Array.IndexOf(da, da.Max());
                a.Forward(new[] { tok }, prompt.Length + i, da, false);
                b.Forward(new[] { tok }, prompt.Length + i, db, false);
                Assert.True(da.AsSpan().SequenceEqual(db), $"{DTypes.Name(dt)} (seed {seed}): decode step {i} logits differ between the tile order and row-major");
            }
        }
        Assert.True(b.DeviceBytes >= a.DeviceBytes);
    }

    [Theory]
    [InlineData("mixtral", DType.F8E4M3)]      // experts (fused gate|up per expert), a bf16 router
    [InlineData("mixtral", DType.Int4)]
    [InlineData("llama_tied", DType.Int4)]     // fused qkv and gate|up, the tied classifier's own quantized copy
    [InlineData("qwen2", DType.F8E4M3)]
    public void UploadedQuantizedWeightsEqualTheHostBytes(string name, DType dt)
    {
        RequireGpu();
        using var gpu = ModelFactory.Import(Path.Combine(TransformersFixtureTests.FixturesDir, name),
            new ImportOptions { Device = DeviceChoice.Cuda, WeightDType = dt, ContextLength = 32 });
        var b = (CudaBackend)gpu.Backend;
        int quantized = 0;
        var w = gpu.Weights;
        foreach (var t in w.AllTensors().Where(t => DTypes.IsQuantized(t.DType)))
        {
            // a tied classifier's quantized copy has the embedding's name
            string key = ReferenceEquals(t, w.LmHead) && t.Name == w.Embedding.Name ? t.Name + CudaBackend.QuantizedCopySuffix : t.Name;
            var values = b.ReadDeviceTensor(key, out _);
            var scales = b.ReadDeviceTensor(key + CudaBackend.ScalesSuffix, out _);
            Assert.True(values is not null && scales is not null, $"{key}: not on the device");
            unsafe
            {
                Assert.True(new ReadOnlySpan<byte>((void*)t.Data, checked((int)t.DataBytes)).SequenceEqual(values), $"{key}: device values differ from the host's");
                Assert.True(new ReadOnlySpan<byte>((void*)t.Scales, checked((int)t.ScaleBytes)).SequenceEqual(scales), $"{key}: device scales differ from the host's");
            }
            quantized++;
        }
        // every projection, expert and the classifier; the embedding and the router stay in the checkpoint's dtype
        var c = gpu.Config;
        Assert.Equal(c.NumLayers * (4 + 3 * (c.IsMoE ? c.NumExperts : 1)) + 1, quantized);
        Assert.False(DTypes.IsQuantized(w.Embedding.DType));
        if (c.IsMoE) Assert.False(DTypes.IsQuantized(w.Layers[0].Router!.DType));
        // the embedding keeps its own bytes under its own name
        var emb = b.ReadDeviceTensor(w.Embedding.Name, out _);
        unsafe { Assert.True(new ReadOnlySpan<byte>((void*)w.Embedding.Data, checked((int)w.Embedding.ByteLength)).SequenceEqual(emb), "embedding bytes differ"); }
    }

    [Theory]
    [MemberData(nameof(FixtureCases))]
    public void FixtureArchitecturesQuantizedOnGpuMatchCpu(string name, DType dt)
    {
        RequireGpu();
        var folder = Path.Combine(TransformersFixtureTests.FixturesDir, name);
        using var cpu = ModelFactory.Import(folder, new ImportOptions { Device = DeviceChoice.Cpu, WeightDType = dt, ContextLength = 64 });
        using var gpu = ModelFactory.Import(folder, new ImportOptions { Device = DeviceChoice.Cuda, WeightDType = dt, ContextLength = 64 });
        Assert.Equal("Cuda", gpu.DeviceKind);
        var reference = TransformersFixtureTests.LoadReference(name);
        double worst = CompareForward(cpu.Backend, gpu.Backend, cpu.Config.VocabSize, reference.InputIds, 8, SameWeightsTolerance, $"{name} {DTypes.Name(dt)}");
        Log($"{name} {DTypes.Name(dt)}: worst GPU vs CPU relative L2 {worst:E2}");
    }

    public static TheoryData<string, DType> FixtureCases()
    {
        var d = new TheoryData<string, DType>();
        foreach (var n in TransformersFixtureTests.Names())
            foreach (var dt in new[] { DType.F8E4M3, DType.Int4 }) d.Add(n.Data, dt);
        return d;
    }

    /// <summary>Tolerance of the 1B shape: 16 layers of random weights, the bound of the transformers fixtures on the GPU.</summary>
    public const double LargeShapeTolerance = 2e-3;

    [Theory]
    [InlineData(DType.F8E4M3)]
    [InlineData(DType.Int4)]
    public void Llama32_1BShapeQuantizedGpuMatchesCpuOverDecodeSteps(DType dt)
    {
        RequireGpu();
        int seed = Gpu.Rng().Next();
        var config = Presets.Get("Llama-3.2-1B") with { DType = DType.BF16 };
        var (bw, bstore) = SyntheticWeights.Build(config, seed, null, default);
        ModelWeights qw; NativeWeightStore qs;
        using (bstore) (qw, qs) = Quantizer.QuantizeModel(bw, dt, null, default);
        using var _ = qs;
        var qc = config with { DType = dt };
        using var cpu = new CpuBackend(qc, qw, 64);
        using var gpu = new CudaBackend(qc, qw, 64);
        Assert.True(gpu.HasQuantizedWeights);
        int v = qc.VocabSize;
        var lc = new float[v]; var lg = new float[v];
        int token = new Random(seed).Next(v);
        double worst = 0;
        for (int p = 0; p < 6; p++)
        {
            cpu.Forward(new[] { token }, p, lc, false);
            Array.Fill(lg, float.NaN);
            gpu.Forward(new[] { token }, p, lg, false);
            double err = Gpu.RelL2(lg, lc);
            worst = Math.Max(worst, err);
            Assert.True(err <= LargeShapeTolerance, $"step {p}: {DTypes.Name(dt)} GPU vs CPU logits relative L2 {err:E2} > {LargeShapeTolerance:E0}");
            token = Array.IndexOf(lc, lc.Max());
        }
        Log($"Llama-3.2-1B shape {DTypes.Name(dt)}, seed {seed}: worst GPU vs CPU relative L2 over 6 decode steps {worst:E2}; device bytes {gpu.DeviceBytes:N0}");
    }

    [Theory]
    [InlineData(DType.F8E4M3)]
    [InlineData(DType.Int4)]
    public void SyntheticQuantizedPresetOnGpuMatchesCpu(DType dt)
    {
        // New-CalmModel -Device Cuda -DType fp8|int4: made and quantized on the GPU (kernels/quantize.cu), the CPU model on the host.
        RequireGpu();
        int seed = Gpu.Rng().Next();
        var opt = new ImportOptions { ContextLength = 64 };
        using var cpu = ModelFactory.CreateSynthetic("tiny", seed, dt, opt with { Device = DeviceChoice.Cpu });
        using var gpu = ModelFactory.CreateSynthetic("tiny", seed, dt, opt with { Device = DeviceChoice.Cuda });
        Assert.Equal("Cuda", gpu.DeviceKind);
        Assert.Equal(dt, gpu.Config.DType);
        Assert.Equal(cpu.WeightBytes, gpu.WeightBytes);
        var r = new Random(seed);
        var prompt = Enumerable.Range(0, 12).Select(_ => r.Next(cpu.Config.VocabSize)).ToArray();
        double worst = CompareForward(cpu.Backend, gpu.Backend, cpu.Config.VocabSize, prompt, 8, SameWeightsTolerance, $"tiny preset {DTypes.Name(dt)}");
        Log($"tiny preset {DTypes.Name(dt)} (seed {seed}): worst GPU vs CPU relative L2 {worst:E2}");
    }
}
