using Calm.Engine.Cuda;
using Calm.Engine.Model;

namespace Calm.Engine.Tests.Cuda;

/// <summary>CUDA-side checks that need no GPU: kernel compilation with NVRTC (the CI check), hashes, tables, probing.</summary>
public class NoGpuTests
{
    [Fact]
    public void EveryKernelFileIsEmbedded()
    {
        Assert.Contains("matvec.cu", KernelCompiler.Sources.Keys);
        Assert.Contains("fill.cu", KernelCompiler.Sources.Keys);
        Assert.Contains("quantize.cu", KernelCompiler.Sources.Keys);
        Assert.Contains("synthetic.cuh", KernelCompiler.Headers.Keys);
        Assert.Contains("StepParams", KernelCompiler.Header);
        Assert.DoesNotContain(KernelCompiler.Sources.Values, s => s.Contains("#include <"));   // no toolkit headers
    }

    /// <summary>The CI kernel check: every kernel compiles for sm_80 and sm_90. CALM_REQUIRE_NVRTC=1 (set by
    /// tools/check-kernels) turns a missing NVRTC into a failure instead of a skip.</summary>
    [Theory]
    [InlineData(80)]
    [InlineData(90)]
    public void KernelsCompileWithNvrtc(int arch)
    {
        var why = Nvrtc.TryLoad();
        if (why is not null)
        {
            Assert.False(Environment.GetEnvironmentVariable("CALM_REQUIRE_NVRTC") == "1", "NVRTC is required here: " + why);
            Assert.Skip("NVRTC not found: " + why);
        }
        var log = new List<string>();
        var failures = KernelCompiler.CheckAll(arch, log.Add);
        TestContext.Current.SendDiagnosticMessage(string.Join("\n", log));
        Assert.True(failures.Count == 0, string.Join("\n", log));
        Assert.Equal(KernelCompiler.Sources.Count, log.Count(l => l.StartsWith("ok")));
    }

    /// <summary>The shapes the tensor-core fp8 split attention takes (CudaKernels.AttentionFp8Wide); the others keep the
    /// 8-per-lane kernel.</summary>
    [Theory]
    [InlineData(32, 8, 128, true)]     // Llama-3-8B
    [InlineData(8, 8, 128, true)]      // G = 1
    [InlineData(28, 4, 128, true)]     // G = 7 (g8)
    [InlineData(48, 2, 128, true)]     // G = 24: three head groups
    [InlineData(8, 2, 64, true)]
    [InlineData(8, 2, 256, true)]      // head_dim 256, G = 4
    [InlineData(16, 2, 256, false)]    // head_dim 256, G = 8: no g8 hd256 kernel
    [InlineData(4, 2, 32, false)]
    [InlineData(4, 2, 96, false)]      // not split-able for fp8 at all
    [InlineData(6, 4, 128, false)]     // H not a multiple of K
    public void Fp8WideSplitAttentionShapes(int H, int K, int Hd, bool taken)
        => Assert.Equal(taken, CudaKernels.SplitAttentionFp8WideSupported(H, K, Hd));

    /// <summary>The shapes the tensor-core fp16 split attention takes (CudaKernels.AttentionF16Wide): split-able shapes
    /// with head_dim 64 or 128 (g4 kernels for G up to 4, g8 with head groups beyond); the others keep the register kernel.</summary>
    [Theory]
    [InlineData(32, 8, 128, true)]     // Llama-3-8B
    [InlineData(32, 8, 64, true)]      // Llama-3.2-1B
    [InlineData(8, 8, 128, true)]      // G = 1
    [InlineData(48, 2, 128, true)]     // G = 24: three head groups
    [InlineData(8, 2, 256, false)]     // head_dim 256: a tile's loads alone would take 128 registers
    [InlineData(4, 2, 96, false)]
    [InlineData(4, 2, 32, false)]
    [InlineData(6, 4, 128, false)]     // H not a multiple of K
    public void F16WideSplitAttentionShapes(int H, int K, int Hd, bool taken)
        => Assert.Equal(taken, CudaKernels.SplitAttentionF16WideSupported(H, K, Hd));

    /// <summary>The shapes the warp-per-head qkv_rope_rows_hd* kernels take (CudaPrefillKernels.QkvRowsWarpTakes): head_dim
    /// 32/64/96/128/256, rotDim/2 a multiple of head_dim/32, 16-byte aligned buffers; the others keep qkv_rope_rows.</summary>
    [Theory]
    [InlineData(128, 128, false, 0x1000, true)]    // Llama-3-8B
    [InlineData(128, 64, true, 0x1000, true)]      // partial rotary, qk-norm
    [InlineData(128, 96, true, 0x1000, true)]      // half 48: partner 12 lanes away
    [InlineData(128, 36, false, 0x1000, false)]    // half 18: not a multiple of 4 dims per lane
    [InlineData(128, 0, false, 0x1000, true)]      // no rotary
    [InlineData(128, 130, false, 0x1000, false)]   // rotDim > head_dim
    [InlineData(128, 127, false, 0x1000, false)]   // odd rotDim
    [InlineData(256, 256, true, 0x1000, true)]
    [InlineData(96, 96, false, 0x1000, true)]
    [InlineData(64, 32, false, 0x1000, true)]
    [InlineData(32, 32, true, 0x1000, true)]
    [InlineData(16, 16, false, 0x1000, false)]     // not 32 * EPL
    [InlineData(80, 80, false, 0x1000, false)]
    [InlineData(512, 512, false, 0x1000, false)]
    [InlineData(128, 128, false, 0x1008, false)]   // qkv not 16-byte aligned
    public void QkvRowsWarpShapes(int Hd, int rot, bool qkNorm, long qkv, bool taken)
        => Assert.Equal(taken, CudaPrefillKernels.QkvRowsWarpTakes(Hd, rot, qkNorm, (ulong)qkv, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0x7000));

    /// <summary>rmsnorm_rows_v4's block size (CudaPrefillKernels.RmsNormRowsV4Threads; 0: the rows take rmsnorm_rows).</summary>
    [Theory]
    [InlineData(4096, 0x1000, 0x2000, 256)]
    [InlineData(64, 0x1000, 0x2000, 32)]
    [InlineData(4100, 0x1000, 0x2000, 288)]
    [InlineData(16384, 0x1000, 0x2000, 1024)]
    [InlineData(16388, 0x1000, 0x2000, 0)]   // more than 4 float4s per thread of 1024
    [InlineData(37, 0x1000, 0x2000, 0)]      // n % 4 != 0
    [InlineData(4096, 0x1004, 0x2000, 0)]    // x not 16-byte aligned
    [InlineData(4096, 0x1000, 0x2004, 0)]    // out not 8-byte aligned
    public void RmsNormRowsV4Shapes(int n, long x, long outp, int threads)
        => Assert.Equal(threads, CudaPrefillKernels.RmsNormRowsV4Threads(n, (ulong)x, 0x3000, (ulong)outp));

    /// <summary>Variant 5's shared memory per weight format and tile width: 4 load stages (+ 3 f16 B tiles for fp8/int4)
    /// + 1 KB of alignment, every one within the 227 KB a block may have on sm_90.</summary>
    [Theory]
    [InlineData(DType.BF16, 128, 4 * 32768 + 1024)]
    [InlineData(DType.F16, 256, 4 * 49152 + 1024)]
    [InlineData(DType.F8E4M3, 256, 4 * 32768 + 3 * 32768 + 1024)]
    [InlineData(DType.F8E4M3, 192, 4 * 28672 + 3 * 24576 + 1024)]
    [InlineData(DType.Int4, 192, 4 * 24576 + 3 * 24576 + 1024)]   // 16 KB + 192 x 40 bytes, rounded up to 24 KB
    [InlineData(DType.Int4, 256, 4 * 26624 + 3 * 32768 + 1024)]
    public void GemmWSharedBytesFitsAnSm90Block(DType wt, int cols, int bytes)
    {
        Assert.Equal(bytes, CudaPrefillKernels.GemmWSharedBytes(wt, cols));
        foreach (var t in new[] { DType.BF16, DType.F16, DType.F8E4M3, DType.Int4 })
            foreach (var c in new[] { 128, 192, 256 })
                Assert.InRange(CudaPrefillKernels.GemmWSharedBytes(t, c), 1, 227 * 1024);
    }

    /// <summary>What the wgmma GEMM takes: bf16/f16/int4 with K % 8 == 0, fp8 with K % 16 == 0, nothing else.</summary>
    [Theory]
    [InlineData(DType.F8E4M3, 4096, true)]
    [InlineData(DType.F8E4M3, 4104, false)]   // fp8 rows are read in 16-byte chunks
    [InlineData(DType.Int4, 4104, true)]
    [InlineData(DType.Int4, 4100, false)]
    [InlineData(DType.BF16, 14336, true)]
    [InlineData(DType.F32, 4096, false)]
    public void GemmWTakesItsFormats(DType wt, int K, bool takes)
        => Assert.Equal(takes, CudaPrefillKernels.GemmWUnsupported(wt, K) is null);

    /// <summary>gemm_wgmma.cu is built for sm_90a only where this NVRTC can (12.0+), never for other architectures, and
    /// CALM_NO_ARCH_SPECIFIC=1 turns it off; other files keep their plain target.</summary>
    [Fact]
    public void ArchSpecificFilesGetTheATargetOnlyWhereNvrtcBuildsIt()
    {
        if (Nvrtc.TryLoad() is { } why) Assert.Skip("NVRTC not found: " + why);
        Assert.Contains("gemm_wgmma.cu", KernelCompiler.ArchSpecificFiles);
        Assert.False(KernelCompiler.ArchSpecificTarget(80));
        bool a = Nvrtc.Version.Major >= 12;
        Assert.Equal(a, KernelCompiler.ArchSpecificTarget(90));
        Assert.Equal(a ? "sm_90a" : KernelCompiler.TargetFor(90).Target, KernelCompiler.TargetFor(90, "gemm_wgmma.cu").Target);
        Assert.Equal(KernelCompiler.TargetFor(90).Target, KernelCompiler.TargetFor(90, "gemm.cu").Target);
        Assert.Equal(KernelCompiler.TargetFor(80).Target, KernelCompiler.TargetFor(80, "gemm_wgmma.cu").Target);
        var old = Environment.GetEnvironmentVariable("CALM_NO_ARCH_SPECIFIC");
        try
        {
            Environment.SetEnvironmentVariable("CALM_NO_ARCH_SPECIFIC", "1");
            Assert.False(KernelCompiler.ArchSpecificTarget(90));
        }
        finally { Environment.SetEnvironmentVariable("CALM_NO_ARCH_SPECIFIC", old); }
    }

    [Fact]
    public void BrokenKernelSourceRaisesCompileErrorWithLog()
    {
        if (Nvrtc.TryLoad() is { } why) Assert.Skip("NVRTC not found: " + why);
        var ex = Assert.Throws<CalmException>(() => KernelCompiler.CompileSource("bad.cu",
            "#include \"common.cuh\"\nextern \"C\" __global__ void k(float* p) { p[0] = undefined_name; }", KernelCompiler.Options("--gpu-architecture=sm_80"), true, out _));
        Assert.Equal(ErrorIds.KernelCompileFailed, ex.ErrorId);
        Assert.Contains("undefined_name", ex.Message);
    }

    [Fact]
    public void HashMatchesReferenceConstants()
    {
        Assert.Equal(0xcbf29ce484222325UL, SyntheticHash.Fnv1a64(""));
        Assert.Equal(0xaf63dc4c8601ec8cUL, SyntheticHash.Fnv1a64("a"));
        Assert.Equal(0xe220a8397b1dcdafUL, SyntheticHash.SplitMix64(0));   // first output of splitmix64 seeded with 0
        var key = SyntheticHash.Key(7, "model.embed_tokens.weight");
        for (int i = 0; i < 1000; i++)
        {
            float v = SyntheticHash.Value(key, i, 0.5f, 0f);
            Assert.InRange(v, -0.5f, 0.5f);
        }
    }

    [Fact]
    public void PeakBandwidthFromAttributes()
    {
        // H200: HBM3e, 6144-bit bus; 2619 MHz reported memory clock -> ~4.02 TB/s by the 2*clock*width/8 rule
        Assert.Equal(2.0 * 2_619_000e3 * 768 / 1e9, CudaDeviceInfo.PeakBandwidth(2_619_000, 6144), 6);
    }

    [Fact]
    public void RopeTableFollowsHfConventions()
    {
        var c = new ModelConfig
        {
            Architecture = Architecture.Llama, ModelType = "llama", VocabSize = 10, HiddenSize = 64, IntermediateSize = 16,
            NumLayers = 1, NumHeads = 1, NumKvHeads = 1, HeadDim = 64, MaxPositionEmbeddings = 131072, RopeTheta = 500000,
            RopeScaling = new RopeScaling { Type = RopeScalingType.Llama3, Factor = 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 8192 },
        };
        var plain = RopeTable.InvFreq(c with { RopeScaling = null }, 100);
        var scaled = RopeTable.InvFreq(c, 100);
        Assert.Equal(1f, plain[0]);
        Assert.Equal(plain[0], scaled[0]);                                   // high frequency: unchanged
        Assert.Equal(plain[^1] / 8, scaled[^1], 1e-12f);                      // low frequency: divided by factor
        var (cos, sin) = RopeTable.Build(c with { RopeScaling = null }, 3);
        Assert.Equal((float)Math.Cos(2.0), cos[2 * 32], 6);
        Assert.Equal((float)Math.Sin(2.0), sin[2 * 32], 6);
        Assert.Equal(1f, cos[0]);
    }

    [Fact]
    public void CudaChoiceWithoutGpuIsAClearError()
    {
        if (CudaDeviceInfo.Unavailable() is null) Assert.Skip("a GPU is present here; this checks the no-GPU path");
        var c = new ModelConfig
        {
            Architecture = Architecture.Llama, ModelType = "llama", VocabSize = 10, HiddenSize = 8, IntermediateSize = 16,
            NumLayers = 1, NumHeads = 1, NumKvHeads = 1, HeadDim = 8, MaxPositionEmbeddings = 16, DType = DType.F32,
        };
        var (weights, store) = Calm.Engine.Synthetic.SyntheticWeights.Build(c, 1, null, default);
        using var _ = store;
        var ex = Assert.Throws<CalmException>(() => ModelFactory.CreateBackend(c, weights, new ImportOptions { Device = DeviceChoice.Cuda }, null, default));
        Assert.Equal(ErrorIds.DeviceNotAvailable, ex.ErrorId);
        Assert.Contains("Cpu", ex.Message);
        var warnings = new List<string>();
        using var b = ModelFactory.CreateBackend(c, weights, new ImportOptions { Device = DeviceChoice.Auto, Warning = warnings.Add }, null, default);
        Assert.Equal("Cpu", b.DeviceKind);
        Assert.Single(warnings);
        Assert.Contains("CPU", warnings[0]);
    }

    /// <summary>Every CALM_* variable the engine reads is a kernel switch that measurements record
    /// (<see cref="KernelSwitches.Names"/>) or one of the few that choose no kernel; a new switch must join the list.</summary>
    [Fact]
    public void EveryKernelSwitchTheEngineReadsIsRecorded()
    {
        var notKernelChoices = new HashSet<string> { "CALM_CACHE_DIR", "CALM_NVRTC_PATH", "CALM_TOKENIZER_REFS", "CALM_TOKENIZER_CACHE" };
        var src = Path.Combine(Calm.Engine.Tests.Generation.TinyWp.RepoRoot, "src", "Calm.Engine");
        var read = new SortedSet<string>();
        foreach (var f in Directory.EnumerateFiles(src, "*.cs", SearchOption.AllDirectories))
        {
            if (f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}") || f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}")) continue;
            foreach (System.Text.RegularExpressions.Match m in System.Text.RegularExpressions.Regex.Matches(File.ReadAllText(f), "\"(CALM_[A-Z0-9_]+)\""))
                read.Add(m.Groups[1].Value);
        }
        Assert.Contains("CALM_FOLD_NORM", read);   // the scan sees the engine's switches
        var missing = read.Where(n => !notKernelChoices.Contains(n) && !KernelSwitches.Names.Contains(n)).ToArray();
        Assert.True(missing.Length == 0, "CALM_* variables read by the engine but not in KernelSwitches.Names: " + string.Join(", ", missing));
        var stale = KernelSwitches.Names.Where(n => !read.Contains(n)).ToArray();
        Assert.True(stale.Length == 0, "KernelSwitches.Names lists variables the engine never reads: " + string.Join(", ", stale));
    }

    [Fact]
    public void KernelSwitchesDescribeTheSetOnesInListOrder()
    {
        Assert.Equal("", KernelSwitches.Describe(_ => null));
        var env = new Dictionary<string, string?> { ["CALM_MV_EARLY"] = "1", ["CALM_DECODE"] = "persistent", ["CALM_ATT_BLOCKS"] = "", ["CALM_CACHE_DIR"] = "/tmp/x" };
        Assert.Equal("CALM_DECODE=persistent;CALM_MV_EARLY=1", KernelSwitches.Describe(n => env.GetValueOrDefault(n)));
    }

    /// <summary>The prefill GEMMs' column tiles at T = 512 on the H200's 132 multiprocessors, as their docs give them:
    /// variant 4 qkv 6144 -> 192, o / down 4096 -> 128, gate_up 28672 -> 192; variant 5 qkv -> 192, o / down -> 128,
    /// gate_up -> 256 (also as the gated F = 14336).</summary>
    [Fact]
    public void PrefillTileColsPickTheDocumentedTiles()
    {
        int V4(int cols, bool gated = false) => CudaPrefillKernels.PickTileCols(512, cols, gated, CudaPrefillKernels.Gemm4TileRows, 132, CudaPrefillKernels.Gemm4TileEfficiency);
        int V5(int cols, bool gated = false) => CudaPrefillKernels.PickTileCols(512, cols, gated, CudaPrefillKernels.GemmWTileRows, 132, CudaPrefillKernels.GemmWTileEfficiency);
        Assert.Equal((192, 128, 192, 192), (V4(6144), V4(4096), V4(28672), V4(14336, gated: true)));
        Assert.Equal((192, 128, 256, 256), (V5(6144), V5(4096), V5(28672), V5(14336, gated: true)));
    }
}
