using Calm.Engine.Model;

namespace Calm.Engine.Cuda;

/// <summary>
/// Launchers of the batched (prefill) kernels: kernels/gemm.cu (tensor-core GEMM, row-wise embed / norm / gating) and
/// kernels/prefill_attention.cu (per-row q/k norm + RoPE + KV write, causal attention of T queries). Shapes in the
/// comments match the .cu files. Needs sm_80+ (mma.sync, cp.async, ldmatrix).
/// </summary>
public sealed class CudaPrefillKernels : IDisposable
{
    public const int GemmTileN = 128, GemmTileK = 64, GemmThreads = 256, GemmStages = 3;
    /// <summary>Dynamic shared memory of the GEMM with <paramref name="tileRows"/> (64 or 128) rows of X per block, a k
    /// depth of <paramref name="depth"/> (32 or 64) per stage and <paramref name="stages"/> stages (3; 4 for variant 3):
    /// stages x (A + B tiles) x (depth + 8) halves per row.</summary>
    public static int GemmSharedBytes(int tileRows, int depth = GemmTileK, int stages = GemmStages) => stages * (tileRows + GemmTileN) * (depth + 8) * 2;
    /// <summary>k depth of a GEMM stage when the call does not say: 64 (measured faster in every Llama-3-8B shape on the
    /// H200, 2026-11-26); CALM_GEMM_K=32 for the old default.</summary>
    public int GemmDepth { get; }
    /// <summary>GEMM kernel variant when the call does not say (CALM_GEMM_VARIANT; default 5 where <see cref="WgmmaAvailable"/>,
    /// else 4. Llama-3-8B 512-token prefill on the H200, bench/RESULTS.md 2026-11-29: 21.8 ms with variant 5, 24.9 ms with 4,
    /// 31.9 ms with 2, 39.6 ms with 1): 5 = wgmma (sm_90a, kernels/gemm_wgmma.cu; also fp8/int4 weights); 1 = the first kernel (grid x over N
    /// tiles, bf16 converted in shared memory); 2 = grid x over row tiles (W read from DRAM once), bf16 converted in
    /// registers, float2 epilogue, two blocks per multiprocessor; 3 = variant 2 with 4 stages (one block per multiprocessor);
    /// 4 = 128-row x 128/192/256-column tiles with 64 x 32/48/64 warp tiles, XOR-swizzled shared memory, fragments
    /// double-buffered in registers, grouped block order (<see cref="Gemm4TileCols"/>). Variants 2-4 have k depth 64 only.</summary>
    public int GemmVariant { get; }
    /// <summary>Whether variant 5 runs here: the wgmma kernels (kernels/gemm_wgmma.cu) need sm_90 and an NVRTC that
    /// builds sm_90a (12.0+; <see cref="KernelCompiler.ArchSpecificTarget"/>). Where it does, variant 5 is the default.</summary>
    public bool WgmmaAvailable { get; }
    /// <summary>Variant 5's column tile when the call does not say (CALM_GEMM_WN = 128, 192 or 256; else 0: picked per
    /// shape by <see cref="GemmWTileCols"/>).</summary>
    public int GemmWCols { get; }
    /// <summary>Variant 5 kernels: 128 rows (two warpgroups of 64), k depth 64, 4 stages.</summary>
    public const int GemmWTileRows = 128, GemmWStages = 4;
    /// <summary>Dynamic shared memory of variant 5 for weights <paramref name="wt"/>: 4 load stages (the A tile, 128
    /// rows x 128 bytes, and the B tile: cols rows of 128 bytes for bf16/f16, of 64 bytes for fp8, of 32 bytes + 8 bytes
    /// of scale words for int4; each stage rounded up to 1 KB), for fp8/int4 3 f16 B tiles (cols x 128 bytes) that the raw
    /// bytes are converted into, plus 1 KB to align the stages to 1024 bytes (the 128-byte swizzle's period).</summary>
    public static int GemmWSharedBytes(DType wt, int cols)
    {
        int raw = wt switch { DType.F8E4M3 => cols * 64, DType.Int4 => cols * 40, _ => cols * 128 };
        int stage = (GemmWTileRows * 128 + raw + 1023) & ~1023;
        bool quant = wt is DType.F8E4M3 or DType.Int4;
        return GemmWStages * stage + (quant ? 3 * cols * 128 : 0) + 1024;
    }

    /// <summary>Why the wgmma GEMM cannot take weights <paramref name="wt"/> with K columns (null when it can):
    /// bf16/f16 and int4 need K % 8 == 0 (16-byte rows of X), fp8 K % 16 == 0 (16-byte rows of e4m3).</summary>
    public static string? GemmWUnsupported(DType wt, int K)
        => wt is not (DType.BF16 or DType.F16 or DType.F8E4M3 or DType.Int4) ? $"the wgmma GEMM takes bf16, f16, fp8 or int4 weights, not {wt}"
         : wt == DType.F8E4M3 && (K <= 0 || K % 16 != 0) ? $"the fp8 GEMM needs K (the reduced dimension) to be a positive multiple of 16; got {K}"
         : GemmUnsupported(K);
    /// <summary>Variant 4's column tile when the call does not say (CALM_GEMM_V4N = 128, 192 or 256; else 0: picked per
    /// shape by <see cref="Gemm4TileCols"/>).</summary>
    public int Gemm4Cols { get; }
    /// <summary>Variant 4 kernels: 128 rows, k depth 64, stages 4 (128/192 columns) or 3 (256 columns).</summary>
    public const int Gemm4TileRows = 128, Gemm4Depth = 64;
    public static int Gemm4Stages(int cols) => cols == 256 ? 3 : 4;
    /// <summary>Dynamic shared memory of variant 4: stages x (128 + cols) rows x 128 bytes (64 halves, no padding).</summary>
    public static int Gemm4SharedBytes(int cols) => Gemm4Stages(cols) * (Gemm4TileRows + cols) * Gemm4Depth * 2;
    /// <summary>Tile-height rule when the call does not say (CALM_GEMM_TILE): "auto" (default: 128 rows when that
    /// still fills half the multiprocessors, else 64), "auto2" (the first rule: 128 only with two blocks per
    /// multiprocessor), "64" or "128".</summary>
    public string GemmTileRule { get; }
    /// <summary>Prefill attention kernel when the call does not say (CALM_PREFILL_ATT): 2 = tensor cores (mma.sync,
    /// head_dim 64 or 128; other head dims take 1), 1 = the first kernel (fp32 FMA).</summary>
    public int AttentionVariant { get; }
    /// <summary>Multiprocessors of the device (picks the GEMM tile height).</summary>
    public int Multiprocessors { get; }
    public const int AttentionQueryTile = 16, AttentionKeyChunk = 32, AttentionThreads = 128, AttentionMaxHeadDim = 256;
    public const int QkvMaxHeadDim = 1024;
    /// <summary>Use the vectorized row kernels (rmsnorm_rows_v4, qkv_rope_rows_hd*) where they take the shape (default;
    /// CALM_PREFILL_ROWS=0 keeps the one-block-per-row / per-head kernels everywhere). Same values either way up to the
    /// order of the sums; tests switch it to run both.</summary>
    public bool RowKernels { get; set; } = Environment.GetEnvironmentVariable("CALM_PREFILL_ROWS") != "0";
    /// <summary>float4s of a row each thread of rmsnorm_rows_v4 holds (RN_V4 in kernels/gemm.cu).</summary>
    public const int RmsNormRowsVectors = 4;
    /// <summary>Warps per block of qkv_rope_rows_hd* (one (row, head) per warp).</summary>
    public const int QkvRowsWarps = 4;
    /// <summary>Head dims of the warp-per-head kernels qkv_rope_rows_hd* / qkv_rope_rows_fp8_hd* (32 * EPL dims per warp).</summary>
    public static readonly int[] QkvRowsWarpHeadDims = { 32, 64, 96, 128, 256 };

    public int Arch { get; }
    private readonly List<CudaModule> _modules = new();
    private readonly Dictionary<string, CudaKernel> _k = new();

    /// <summary>Whether a device of compute capability <paramref name="arch"/> runs these kernels (sm_80+).</summary>
    public static bool Supported(int arch) => arch >= 80;

    /// <summary>Why a GEMM of this shape cannot run (null when it can): K must be a positive multiple of 8 (16-byte rows).</summary>
    public static string? GemmUnsupported(int K)
        => K > 0 && K % 8 == 0 ? null : $"the GEMM needs K (the reduced dimension) to be a positive multiple of 8; got {K}";

    /// <summary>Why prefill attention cannot take this head shape (null when it can): head_dim even and ≤ 256, H a multiple of K.</summary>
    public static string? AttentionUnsupported(int H, int K, int Hd)
        => Hd <= 0 || Hd % 2 != 0 || Hd > AttentionMaxHeadDim ? $"prefill attention needs an even head_dim ≤ {AttentionMaxHeadDim}; got {Hd}"
         : K <= 0 || H % K != 0 ? $"prefill attention needs num_heads ({H}) to be a multiple of num_kv_heads ({K})" : null;

    public CudaPrefillKernels(CudaContext ctx, int arch, Action<string>? verbose = null, int? gemmDepth = null)
    {
        GemmDepth = gemmDepth ?? (Environment.GetEnvironmentVariable("CALM_GEMM_K") == "32" ? 32 : 64);
        if (GemmDepth is not (32 or 64)) throw new ArgumentOutOfRangeException(nameof(gemmDepth), "GEMM depth is 32 or 64");
        GemmWCols = Environment.GetEnvironmentVariable("CALM_GEMM_WN") switch { "128" => 128, "192" => 192, "256" => 256, _ => 0 };
        Gemm4Cols = Environment.GetEnvironmentVariable("CALM_GEMM_V4N") switch { "128" => 128, "192" => 192, "256" => 256, _ => 0 };
        GemmTileRule = Environment.GetEnvironmentVariable("CALM_GEMM_TILE") switch { "auto2" => "auto2", "64" => "64", "128" => "128", _ => "auto" };
        AttentionVariant = Environment.GetEnvironmentVariable("CALM_PREFILL_ATT") == "1" ? 1 : 2;
        if (!Supported(arch)) throw new NotSupportedException($"the prefill kernels need sm_80 or newer (this device is sm_{arch})");
        Arch = arch;
        Multiprocessors = Math.Max(1, CudaDeviceInfo.List().FirstOrDefault(d => d.Index == ctx.Device)?.Multiprocessors ?? 1);
        try
        {
            foreach (var file in new[] { "gemm.cu", "prefill_attention.cu" })
                _modules.Add(new CudaModule(ctx, KernelCompiler.Get(file, arch, verbose).Image, file));
            foreach (var name in new[] { "gemm_bf16", "gemm_f16", "gemm_bf16_m64", "gemm_f16_m64", "gemm_bf16_k64", "gemm_f16_k64", "gemm_bf16_m64_k64", "gemm_f16_m64_k64",
                                          "gemm_bf16_k64_v2", "gemm_f16_k64_v2", "gemm_bf16_m64_k64_v2", "gemm_f16_m64_k64_v2",
                                          "gemm_bf16_k64_v2s4", "gemm_f16_k64_v2s4", "gemm_bf16_m64_k64_v2s4", "gemm_f16_m64_k64_v2s4",
                                          "gemm_gated_bf16_k64", "gemm_gated_f16_k64", "gemm_gated_bf16_m64_k64", "gemm_gated_f16_m64_k64",
                                          "gemm_gated_bf16_k64_v2", "gemm_gated_f16_k64_v2", "gemm_gated_bf16_m64_k64_v2", "gemm_gated_f16_m64_k64_v2",
                                          "gemm_gated_bf16_k64_v2s4", "gemm_gated_f16_k64_v2s4", "gemm_gated_bf16_m64_k64_v2s4", "gemm_gated_f16_m64_k64_v2s4",
                                          "embed_rows", "rmsnorm_rows", "rmsnorm_rows_v4", "gate_act_rows" })
                _k[name] = _modules[0].GetKernel(name);
            foreach (var h in new[] { "bf16", "f16" })
                foreach (var cols in new[] { 128, 192, 256 })
                    foreach (var g in new[] { "", "gated_" })
                    {
                        var name = "gemm4_" + g + h + "_n" + cols;
                        _k[name] = _modules[0].GetKernel(name);
                        _k[name].SetMaxDynamicSharedMemory(Gemm4SharedBytes(cols));
                    }
            (WgmmaAvailable, WgmmaUnavailableReason) = LoadWgmma(ctx, arch, verbose);
            GemmVariant = Environment.GetEnvironmentVariable("CALM_GEMM_VARIANT") switch
            {
                "1" => 1, "2" => 2, "3" => 3, "4" => 4,
                _ => WgmmaAvailable ? 5 : 4,   // "5" where wgmma cannot run: variant 4
            };
            if (WgmmaAvailable)
            {
                foreach (var wt in new[] { DType.BF16, DType.F16, DType.F8E4M3, DType.Int4 })
                    foreach (var cols in new[] { 128, 192, 256 })
                        foreach (var g in new[] { "", "gated_" })
                        {
                            var name = "gemmw_" + g + WFormat(wt) + "_n" + cols;
                            _k[name] = _modules[^1].GetKernel(name);
                            _k[name].SetMaxDynamicSharedMemory(GemmWSharedBytes(wt, cols));
                        }
            }
            foreach (var name in new[] { "qkv_rope_rows", "attention_prefill", "attention_prefill_tc64", "attention_prefill_tc128", "qkv_rope_rows_fp8", "attention_prefill_fp8" })
                _k[name] = _modules[1].GetKernel(name);
            foreach (var hd in QkvRowsWarpHeadDims)
                foreach (var name in new[] { "qkv_rope_rows_hd" + hd, "qkv_rope_rows_fp8_hd" + hd })
                    _k[name] = _modules[1].GetKernel(name);
            foreach (var h in new[] { "bf16", "f16" })
            {
                foreach (var (v, st) in new[] { ("", GemmStages), ("_v2", 3), ("_v2s4", 4) })
                {
                    _k["gemm_gated_" + h + "_k64" + v].SetMaxDynamicSharedMemory(GemmSharedBytes(128, 64, st));
                    _k["gemm_gated_" + h + "_m64_k64" + v].SetMaxDynamicSharedMemory(GemmSharedBytes(64, 64, st));
                }
                _k["gemm_" + h + "_k64_v2"].SetMaxDynamicSharedMemory(GemmSharedBytes(128, 64));
                _k["gemm_" + h + "_m64_k64_v2"].SetMaxDynamicSharedMemory(GemmSharedBytes(64, 64));
                _k["gemm_" + h + "_k64_v2s4"].SetMaxDynamicSharedMemory(GemmSharedBytes(128, 64, 4));
                _k["gemm_" + h + "_m64_k64_v2s4"].SetMaxDynamicSharedMemory(GemmSharedBytes(64, 64, 4));
                _k["gemm_" + h].SetMaxDynamicSharedMemory(GemmSharedBytes(128));
                _k["gemm_" + h + "_m64"].SetMaxDynamicSharedMemory(GemmSharedBytes(64));
                _k["gemm_" + h + "_k64"].SetMaxDynamicSharedMemory(GemmSharedBytes(128, 64));
                _k["gemm_" + h + "_m64_k64"].SetMaxDynamicSharedMemory(GemmSharedBytes(64, 64));
            }
            _k["attention_prefill"].SetMaxDynamicSharedMemory(AttentionSharedBytes(AttentionMaxHeadDim));
            _k["attention_prefill_tc64"].SetMaxDynamicSharedMemory(AttentionTcSharedBytes(64));
            _k["attention_prefill_tc128"].SetMaxDynamicSharedMemory(AttentionTcSharedBytes(128));
            _k["attention_prefill_fp8"].SetMaxDynamicSharedMemory(AttentionSharedBytes(AttentionMaxHeadDim));
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Why variant 5 does not run here (null when it does): not sm_90, an NVRTC without sm_90a, or
    /// kernels/gemm_wgmma.cu failing to compile or load, or compiled without the sm_90a features (its gemmw_info probe).</summary>
    public string? WgmmaUnavailableReason { get; }

    /// <summary>Loads kernels/gemm_wgmma.cu where sm_90a code can be built and checks with its gemmw_info kernel that the
    /// image really has the wgmma code (an NVRTC that does not define __CUDA_ARCH_FEAT_SM90_ALL would build empty
    /// kernels); any failure leaves variant 5 off with the reason, and the other variants serve.</summary>
    private (bool, string?) LoadWgmma(CudaContext ctx, int arch, Action<string>? verbose)
    {
        if (arch != 90) return (false, $"wgmma needs sm_90 (this device is sm_{arch})");
        if (!KernelCompiler.ArchSpecificTarget(arch))
            return (false, "this NVRTC cannot build sm_90a code (needs 12.0 or newer), or CALM_NO_ARCH_SPECIFIC=1");
        CudaModule? module = null;
        try
        {
            module = new CudaModule(ctx, KernelCompiler.Get("gemm_wgmma.cu", arch, verbose).Image, "gemm_wgmma.cu");
            using var flag = CudaDeviceMemory.Allocate(ctx, 4, "wgmma probe");
            flag.Zero();
            using var st = new CudaStream(ctx);
            module.GetKernel("gemmw_info").Launch(st, 1, 1, 0, flag.Ptr);
            st.Synchronize();
            if (flag.ToArray<int>(1)[0] != 1)
            {
                module.Dispose();
                return (false, "kernels/gemm_wgmma.cu was compiled without the sm_90a features (__CUDA_ARCH_FEAT_SM90_ALL)");
            }
            _modules.Add(module);
            return (true, null);
        }
        catch (CalmException e)
        {
            module?.Dispose();
            verbose?.Invoke("GEMM variant 5 (wgmma) is off: " + e.Message);
            return (false, "kernels/gemm_wgmma.cu: " + e.Message);
        }
    }

    private static string WFormat(DType t) => t switch
    {
        DType.F8E4M3 => "fp8", DType.Int4 => "int4", _ => Half(t),
    };

    private static string Half(DType t) => t switch
    {
        DType.BF16 => "bf16", DType.F16 => "f16",
        _ => throw new NotSupportedException($"the tensor-core GEMM takes bf16 or f16 operands, not {t}"),
    };

    /// <summary>Rows of X per block for a T x N product (<see cref="GemmTileRule"/>): "auto" takes 128 when the
    /// 128-row grid still has a block for half the multiprocessors (T=512 on the H200: every Llama-3-8B shape; 128 rows
    /// measured faster in all of them), else 64 (short prompts, where 128-row tiles leave most multiprocessors idle).</summary>
    public int GemmTileRows(int T, int N)
    {
        long blocks128 = (long)((T + 127) / 128) * ((N + GemmTileN - 1) / GemmTileN);
        return GemmTileRule switch
        {
            "64" => 64,
            "128" => 128,
            "auto2" => blocks128 >= 2L * Multiprocessors ? 128 : 64,
            _ => 2 * blocks128 >= Multiprocessors ? 128 : 64,
        };
    }

    /// <summary>Variant 4's column tile (128, 192 or 256) for T rows and <paramref name="cols"/> output columns
    /// (gated: F, a block covering half its tile's columns of F): the fewest waves of one block per multiprocessor
    /// weighted by the tile's columns (a block's time) and a small per-flop penalty of the narrower tiles (more shared
    /// memory traffic per mma). T=512 on the H200 (132 SMs): qkv 6144 -> 192 (128 blocks, one wave), o / down 4096 -> 128
    /// (128 blocks), gate_up 28672 -> 192 (600 blocks, 5 waves of 192 / 0.95 against 7 of 128 / 0.88 and 4 of 256).</summary>
    public int Gemm4TileCols(int T, int cols, bool gated = false)
        => Gemm4Cols != 0 ? Gemm4Cols : PickTileCols(T, cols, gated, Gemm4TileRows, Multiprocessors, Gemm4TileEfficiency);

    /// <summary>Relative efficiency of each column tile (widest first): variant 4's penalty of the narrower tiles, and
    /// variant 5's fit to the H200 (see <see cref="GemmWTileCols"/>).</summary>
    internal static readonly (int Cols, double Efficiency)[] Gemm4TileEfficiency = { (256, 1.0), (192, 0.95), (128, 0.88) };
    internal static readonly (int Cols, double Efficiency)[] GemmWTileEfficiency = { (256, 1.0), (192, 0.89), (128, 0.74) };

    /// <summary>The column tile with the least cost = waves of one block per multiprocessor x columns / efficiency
    /// (a gated GEMM's block covers half its tile's columns of F); ties go to the wider tile.</summary>
    internal static int PickTileCols(int T, int cols, bool gated, int tileRows, int multiprocessors, (int Cols, double Efficiency)[] tiles)
    {
        long mTiles = (T + tileRows - 1) / tileRows;
        int best = tiles[0].Cols; double bestCost = double.MaxValue;
        foreach (var (c, eff) in tiles)
        {
            int per = gated ? c / 2 : c;
            long blocks = mTiles * ((cols + per - 1) / per);
            double cost = Math.Ceiling(blocks / (double)multiprocessors) * c / eff;
            if (cost < bestCost - 1e-9) { bestCost = cost; best = c; }
        }
        return best;
    }

    /// <summary>Kernel name of a GEMM launch (tile rows 64/128, depth 32/64, variant 1/2/3; variants 2 and 3 need depth 64).</summary>
    public static string GemmKernelName(DType wt, int tileRows, int depth, int variant)
        => "gemm_" + Half(wt) + (tileRows == 64 ? "_m64" : "") + (depth == 64 ? "_k64" : "") + (variant switch { 2 => "_v2", 3 => "_v2s4", _ => "" });

    /// <summary>Y [T, N] f32 = X [T, K] f16 . W [N, K]^T (wt: bf16 or f16, converted to f16 in shared memory or registers)
    /// (+ bias [N] f32 when nonzero) (+ Y when accumulate). The activations are f16 whatever the weights: bf16
    /// activations cost ~8x the rounding error (kernels/gemm.cu).
    /// K % 8 == 0; X and W 16-byte aligned. tileRows: 64 or 128 rows of X per block (0: <see cref="GemmTileRows"/>);
    /// depth: 32 or 64 columns of K per stage (0: <see cref="GemmDepth"/>; variants 2 and 3 take 64 whatever it says);
    /// variant: 1, 2 or 3 (0: <see cref="GemmVariant"/>).</summary>
    public void Gemm(CudaStream s, DType wt, ulong X, ulong W, ulong Y, ulong bias, int T, int N, int K, bool accumulate, int tileRows = 0, int depth = 0, int variant = 0, int tileCols = 0)
    {
        if (variant == 0) variant = GemmVariant;
        if (variant == 4) { Gemm4(s, wt, X, W, Y, bias, T, N, K, accumulate, tileCols); return; }
        if (variant == 5) { GemmW(s, wt, X, W, Y, bias, T, N, K, accumulate, false, tileCols, 0, DType.F16); return; }
        if (tileRows == 0) tileRows = GemmTileRows(T, N);
        if (depth == 0) depth = GemmDepth;
        if (variant is 2 or 3) depth = 64;
        if (tileRows is not (64 or 128)) throw new ArgumentOutOfRangeException(nameof(tileRows), "GEMM tiles are 64 or 128 rows");
        if (depth is not (32 or 64)) throw new ArgumentOutOfRangeException(nameof(depth), "GEMM depth is 32 or 64");
        if (variant is not (1 or 2 or 3)) throw new ArgumentOutOfRangeException(nameof(variant), "GEMM variants are 1 to 5");
        if (GemmUnsupported(K) is { } why) throw new NotSupportedException(why);
        if (T <= 0 || N <= 0) throw new ArgumentOutOfRangeException(nameof(T), $"empty GEMM {T}x{N}");
        if (((X | W) & 15) != 0) throw new ArgumentException("GEMM operands must be 16-byte aligned");
        int nTiles = (N + GemmTileN - 1) / GemmTileN, mTiles = (T + tileRows - 1) / tileRows;
        // variant 1: grid x over N tiles; 2, 3: grid x over row tiles (the blocks sharing a W tile are launched together)
        var grid = variant == 1 ? (nTiles, mTiles, 1) : (mTiles, nTiles, 1);
        _k[GemmKernelName(wt, tileRows, depth, variant)].Launch(s, grid, GemmThreads, GemmSharedBytes(tileRows, depth, variant == 3 ? 4 : GemmStages),
            X, W, Y, bias, T, N, K, accumulate ? 1 : 0);
    }

    /// <summary>Variant 4 of <see cref="Gemm"/>: 128-row tiles, <paramref name="tileCols"/> columns (128, 192, 256; 0:
    /// <see cref="Gemm4TileCols"/>), k depth 64; one 1-D grid of ceil(T/128) x ceil(N/cols) blocks (grouped order in the kernel).</summary>
    public void Gemm4(CudaStream s, DType wt, ulong X, ulong W, ulong Y, ulong bias, int T, int N, int K, bool accumulate, int tileCols = 0)
    {
        if (tileCols == 0) tileCols = Gemm4TileCols(T, N);
        if (tileCols is not (128 or 192 or 256)) throw new ArgumentOutOfRangeException(nameof(tileCols), "variant 4 tiles are 128, 192 or 256 columns");
        if (GemmUnsupported(K) is { } why) throw new NotSupportedException(why);
        if (T <= 0 || N <= 0) throw new ArgumentOutOfRangeException(nameof(T), $"empty GEMM {T}x{N}");
        if (((X | W) & 15) != 0) throw new ArgumentException("GEMM operands must be 16-byte aligned");
        long blocks = (long)((T + Gemm4TileRows - 1) / Gemm4TileRows) * ((N + tileCols - 1) / tileCols);
        if (blocks > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(T), "GEMM grid too large");
        _k["gemm4_" + Half(wt) + "_n" + tileCols].Launch(s, ((int)blocks, 1, 1), GemmThreads, Gemm4SharedBytes(tileCols),
            X, W, Y, bias, T, N, K, accumulate ? 1 : 0);
    }

    /// <summary>Variant 5's column tile (128, 192 or 256) for T rows and <paramref name="cols"/> output columns (gated:
    /// F, a block covering half its tile): the fewest waves of one block per multiprocessor weighted by the tile's
    /// columns over its measured efficiency. The narrower tiles move more bytes from L2 per product ((128 + cols) x 128
    /// bytes per 128 x cols x 64 k-step), which bounds these kernels at T=512; efficiencies fitted to the H200's
    /// single-GEMM times at T=512 (bench/logs/Gpu.Prefill.Bench-2026-11-29-H200-wgmma-call1.txt: gate_up 0.351 / 0.312 /
    /// 0.297 ms at 128 / 192 / 256 columns). Picks: qkv 6144 -> 192, o / down 4096 -> 128, gate_up 28672 -> 256.</summary>
    public int GemmWTileCols(int T, int cols, bool gated = false)
        => GemmWCols != 0 ? GemmWCols : PickTileCols(T, cols, gated, GemmWTileRows, Multiprocessors, GemmWTileEfficiency);

    /// <summary>Variant 5 (sm_90a, <see cref="WgmmaAvailable"/>): Y [T, N] f32 = X . W^T (+ bias) (+ Y), or gated
    /// (N = F): H [T, F] (odt) = act(gate) * up, on wgmma with 128 x <paramref name="tileCols"/> tiles (0:
    /// <see cref="GemmWTileCols"/>). W: bf16/f16 [N, K], or fp8/int4 in Calm's formats (Quant/QuantFormats.cs) with
    /// their <paramref name="scales"/> (fp8 [N] f32, applied to the sums; int4 [N, ceil(K/32)] f16, applied to each
    /// weight as it is converted to f16: one rounding of (u - 8) * d). X [T, K] f16 and W 16-byte aligned.
    /// <paramref name="tiled"/>: fp8/int4 values (int4: and the scales) in the tile order (<see cref="QuantTileOrder"/>, as the CUDA backend stores int4).</summary>
    public void GemmW(CudaStream s, DType wt, ulong X, ulong W, ulong Y, ulong bias, int T, int N, int K, bool accumulate, bool gated,
                      int tileCols = 0, Activation act = 0, DType odt = DType.F16, ulong scales = 0, bool tiled = false)
    {
        if (tiled && !QuantTileOrder.Fits(wt, K)) throw new ArgumentException($"{DTypes.Name(wt)} [*, {K}] values cannot be in the tile order", nameof(tiled));
        if (!WgmmaAvailable) throw new NotSupportedException("GEMM variant 5 needs an sm_90 GPU and NVRTC 12.0 or newer (sm_90a code)");
        if (tileCols == 0) tileCols = GemmWTileCols(T, N, gated);
        if (tileCols is not (128 or 192 or 256)) throw new ArgumentOutOfRangeException(nameof(tileCols), "variant 5 tiles are 128, 192 or 256 columns");
        if (GemmWUnsupported(wt, K) is { } why) throw new NotSupportedException(why);
        if (wt is DType.F8E4M3 or DType.Int4 && scales == 0) throw new ArgumentException("fp8/int4 weights need their scales", nameof(scales));
        if (T <= 0 || N <= 0) throw new ArgumentOutOfRangeException(nameof(T), $"empty GEMM {T}x{N}");
        if (((X | W) & 15) != 0) throw new ArgumentException("GEMM operands must be 16-byte aligned");
        int per = gated ? tileCols / 2 : tileCols;
        long blocks = (long)((T + GemmWTileRows - 1) / GemmWTileRows) * ((N + per - 1) / per);
        if (blocks > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(T), "GEMM grid too large");
        var kernel = _k["gemmw_" + (gated ? "gated_" : "") + WFormat(wt) + "_n" + tileCols];
        int smem = GemmWSharedBytes(wt, tileCols);
        if (gated) kernel.Launch(s, ((int)blocks, 1, 1), GemmThreads, smem, X, W, scales, Y, bias, T, N, K, (int)act, CudaKernels.DTypeCode(odt), tiled ? 1 : 0);
        else kernel.Launch(s, ((int)blocks, 1, 1), GemmThreads, smem, X, W, scales, Y, bias, T, N, K, accumulate ? 1 : 0, tiled ? 1 : 0);
    }

    /// <summary>The gate_up GEMM with the activation fused into its epilogue: X [T, K] f16 . W [2F, K]^T (wt; rows
    /// [gate | up]) (+ bias [2F] f32 when nonzero) -> H [T, F] (odt bf16/f16; f16 saturates at ±65504) = act(gate) * up,
    /// the same values as <see cref="Gemm"/> into [T, 2F] f32 then <see cref="GateActRows"/>, without the f32 round trip
    /// (at T=512 on Llama-3-8B: 59 MB written and read back per layer). k depth 64; tileRows 0: <see cref="GemmTileRows"/>
    /// of the [T, 2F] product; variant 0: <see cref="GemmVariant"/>.</summary>
    public void GemmGated(CudaStream s, DType wt, ulong X, ulong W, ulong H, ulong bias, int T, int F, int K, Activation act, DType odt, int tileRows = 0, int variant = 0, int tileCols = 0)
    {
        if (variant == 0) variant = GemmVariant;
        if (variant == 5) { GemmW(s, wt, X, W, H, bias, T, F, K, false, true, tileCols, act, odt); return; }
        if (variant == 4)
        {
            if (tileCols == 0) tileCols = Gemm4TileCols(T, F, gated: true);
            if (tileCols is not (128 or 192 or 256)) throw new ArgumentOutOfRangeException(nameof(tileCols), "variant 4 tiles are 128, 192 or 256 columns");
            if (GemmUnsupported(K) is { } why4) throw new NotSupportedException(why4);
            if (T <= 0 || F <= 0) throw new ArgumentOutOfRangeException(nameof(T), $"empty GEMM {T}x{F}");
            if (((X | W) & 15) != 0) throw new ArgumentException("GEMM operands must be 16-byte aligned");
            long blocks = (long)((T + Gemm4TileRows - 1) / Gemm4TileRows) * ((F + tileCols / 2 - 1) / (tileCols / 2));
            _k["gemm4_gated_" + Half(wt) + "_n" + tileCols].Launch(s, ((int)blocks, 1, 1), GemmThreads, Gemm4SharedBytes(tileCols),
                X, W, H, bias, T, F, K, (int)act, CudaKernels.DTypeCode(odt));
            return;
        }
        if (tileRows == 0) tileRows = GemmTileRows(T, 2 * F);
        if (tileRows is not (64 or 128)) throw new ArgumentOutOfRangeException(nameof(tileRows), "GEMM tiles are 64 or 128 rows");
        if (variant is not (1 or 2 or 3)) throw new ArgumentOutOfRangeException(nameof(variant), "GEMM variants are 1, 2 and 3");
        if (GemmUnsupported(K) is { } why) throw new NotSupportedException(why);
        if (T <= 0 || F <= 0) throw new ArgumentOutOfRangeException(nameof(T), $"empty GEMM {T}x{F}");
        if (((X | W) & 15) != 0) throw new ArgumentException("GEMM operands must be 16-byte aligned");
        int nTiles = (F + GemmTileN / 2 - 1) / (GemmTileN / 2), mTiles = (T + tileRows - 1) / tileRows;
        var grid = variant == 1 ? (nTiles, mTiles, 1) : (mTiles, nTiles, 1);
        string name = "gemm_gated_" + Half(wt) + (tileRows == 64 ? "_m64" : "") + "_k64" + (variant switch { 2 => "_v2", 3 => "_v2s4", _ => "" });
        _k[name].Launch(s, grid, GemmThreads, GemmSharedBytes(tileRows, 64, variant == 3 ? 4 : GemmStages),
            X, W, H, bias, T, F, K, (int)act, CudaKernels.DTypeCode(odt));
    }

    /// <summary>tokens [T] int (device), table [V, D] (tdt) -> x [T, D] f32 = table[token] * scale.</summary>
    public void EmbedRows(CudaStream s, ulong tokens, ulong table, DType tdt, ulong x, int T, int D, float scale)
        => _k["embed_rows"].Launch(s, ((D + 255) / 256, T, 1), 256, 0, tokens, table, CudaKernels.DTypeCode(tdt), x, D, scale);

    /// <summary>x [T, n] f32, w [n] f32 -> out [T, n] (odt bf16/f16; f16 saturates at ±65504) = RMSNorm of each row (gemma: 1 + w).
    /// One block per row: rmsnorm_rows_v4 (<see cref="RmsNormRowsV4Threads"/> threads) where it takes the shape, else rmsnorm_rows (256).</summary>
    public void RmsNormRows(CudaStream s, ulong x, ulong w, ulong outp, int T, int n, float eps, bool addOne, DType odt)
    {
        int v4 = RowKernels ? RmsNormRowsV4Threads(n, x, w, outp) : 0;
        if (v4 > 0) _k["rmsnorm_rows_v4"].Launch(s, T, v4, 0, x, w, outp, n, eps, addOne ? 1 : 0, CudaKernels.DTypeCode(odt));
        else _k["rmsnorm_rows"].Launch(s, T, 256, 0, x, w, outp, n, eps, addOne ? 1 : 0, CudaKernels.DTypeCode(odt));
    }

    /// <summary>Threads per block of rmsnorm_rows_v4 for rows of n (0: it does not take them): n a positive multiple of 4
    /// with at most <see cref="RmsNormRowsVectors"/> float4s per thread of a 1024-thread block, x and w 16-byte aligned,
    /// out 8-byte aligned (so every row is); the fewest warps that hold the row (n = 4096: 256 threads).</summary>
    public static int RmsNormRowsV4Threads(int n, ulong x, ulong w, ulong outp)
    {
        if (n <= 0 || n % 4 != 0 || n / 4 > RmsNormRowsVectors * 1024 || ((x | w) & 15) != 0 || (outp & 7) != 0) return 0;
        int perWarp = 32 * RmsNormRowsVectors;   // float4s a warp holds
        return 32 * ((n / 4 + perWarp - 1) / perWarp);
    }

    /// <summary>gu [T, 2F] f32 = [gate | up] -> h [T, F] (odt; f16 saturates at ±65504) = act(gate) * up.</summary>
    public void GateActRows(CudaStream s, ulong gu, ulong h, int F, int T, Activation act, DType odt)
        => _k["gate_act_rows"].Launch(s, (int)Math.Clamp(((long)F * T + 255) / 256, 1, 65535), 256, 0, gu, h, F, T, (int)act, CudaKernels.DTypeCode(odt));

    /// <summary>qkv [T, (H+2K)*Hd] f32: per row t (position start+t) q/k RMSNorm (when qkNorm), RoPE (cos/sin [maxCtx, rotDim/2]),
    /// q written back, k and v into this layer's caches [K, maxCtx, Hd] fp16 (fp8 e4m3 with row scales kScale/vScale
    /// [K, maxCtx] f32 when both are non-zero). One warp per (row, head) (qkv_rope_rows_hd*, grid (ceil((H+2K) / 4), T)
    /// of 4 warps) where <see cref="QkvRowsWarpTakes"/>, else one 128-thread block per (head, row).</summary>
    public void QkvRopeRows(CudaStream s, ulong qkv, ulong qNorm, ulong kNorm, bool qkNorm, float eps, bool addOne,
                            ulong cos, ulong sin, int rotDim, ulong kCache, ulong vCache, int maxCtx, int H, int K, int Hd, int T, int start,
                            ulong kScale = 0, ulong vScale = 0)
    {
        if (Hd > QkvMaxHeadDim) throw new NotSupportedException($"head_dim {Hd} > {QkvMaxHeadDim}");
        bool fp8 = kScale != 0 && vScale != 0;
        if (RowKernels && QkvRowsWarpTakes(Hd, rotDim, qkNorm, qkv, qNorm, kNorm, cos, sin, kCache, vCache))
        {
            var grid = ((H + 2 * K + QkvRowsWarps - 1) / QkvRowsWarps, T, 1);
            if (fp8)
                _k["qkv_rope_rows_fp8_hd" + Hd].Launch(s, grid, 32 * QkvRowsWarps, 0, qkv, (H + 2 * K) * Hd, qNorm, kNorm, qkNorm ? 1 : 0, eps, addOne ? 1 : 0,
                    cos, sin, rotDim, kCache, vCache, maxCtx, H, K, start, kScale, vScale);
            else
                _k["qkv_rope_rows_hd" + Hd].Launch(s, grid, 32 * QkvRowsWarps, 0, qkv, (H + 2 * K) * Hd, qNorm, kNorm, qkNorm ? 1 : 0, eps, addOne ? 1 : 0,
                    cos, sin, rotDim, kCache, vCache, maxCtx, H, K, start);
            return;
        }
        if (fp8)
        {
            _k["qkv_rope_rows_fp8"].Launch(s, (H + 2 * K, T, 1), 128, 0, qkv, (H + 2 * K) * Hd, qNorm, kNorm, qkNorm ? 1 : 0, eps, addOne ? 1 : 0,
                cos, sin, rotDim, kCache, vCache, maxCtx, H, K, Hd, start, kScale, vScale);
            return;
        }
        _k["qkv_rope_rows"].Launch(s, (H + 2 * K, T, 1), 128, 0, qkv, (H + 2 * K) * Hd, qNorm, kNorm, qkNorm ? 1 : 0, eps, addOne ? 1 : 0,
            cos, sin, rotDim, kCache, vCache, maxCtx, H, K, Hd, start);
    }

    /// <summary>Whether the warp-per-head kernels take this shape: head_dim 32, 64, 96, 128 or 256 (32·EPL, lane l holding dims
    /// l·EPL ..), rotDim even, ≤ head_dim and rotDim/2 a multiple of EPL (the rotate_half partner of a lane's dims is one
    /// lane), and the buffers aligned for EPL-wide vectors (16 bytes; the norm weights only when qkNorm, cos/sin only when rotDim > 0).</summary>
    public static bool QkvRowsWarpTakes(int Hd, int rotDim, bool qkNorm, ulong qkv, ulong qNorm, ulong kNorm, ulong cos, ulong sin, ulong kCache, ulong vCache)
    {
        if (Array.IndexOf(QkvRowsWarpHeadDims, Hd) < 0) return false;
        int epl = Hd / 32;
        if (rotDim < 0 || rotDim > Hd || rotDim % 2 != 0 || (rotDim / 2) % epl != 0) return false;
        ulong a = qkv | kCache | vCache;
        if (qkNorm) a |= qNorm | kNorm;
        if (rotDim > 0) a |= cos | sin;
        return (a & 15) == 0;
    }

    /// <summary>Dynamic shared memory of prefill attention for head_dim <paramref name="hd"/>.</summary>
    public static int AttentionSharedBytes(int hd) => AttentionQueryTile * hd * 4 + AttentionKeyChunk * (hd / 2 + 1) * 4 + AttentionKeyChunk * (hd / 2) * 4;

    /// <summary>Query rows per block of the tensor-core prefill attention (kernels/prefill_attention.cu).</summary>
    public const int AttentionTcQueryTile = 64, AttentionTcThreads = 128;
    /// <summary>Keys per shared-memory chunk of the tensor-core prefill attention (PT_KC): 32 at head_dim 128, else 64.</summary>
    public static int AttentionTcKeyChunk(int hd) => hd >= 128 ? 32 : 64;
    /// <summary>Dynamic shared memory of the tensor-core prefill attention: 2 stages x (K + V) x chunk keys x (hd + 8) halves.</summary>
    public static int AttentionTcSharedBytes(int hd) => 2 * 2 * AttentionTcKeyChunk(hd) * (hd + 8) * 2;
    /// <summary>Whether the tensor-core prefill attention takes this head dim (64 or 128).</summary>
    public static bool AttentionTcTakes(int hd) => hd is 64 or 128;

    /// <summary>Causal attention: queries at q + t*ld + h*Hd (f32, t &lt; T, position start+t) against the caches
    /// [K, maxCtx, Hd] fp16 (positions 0 .. start+T-1 written) -> out [T, H*Hd] (odt). window 0: none.
    /// variant: 1 = fp32 FMA kernel, 2 = tensor cores (head_dim 64/128; others take 1), 0 = <see cref="AttentionVariant"/>.</summary>
    public void AttentionPrefill(CudaStream s, ulong q, int ld, ulong kCache, ulong vCache, ulong outp, int T, int start,
                                 int H, int K, int Hd, int maxCtx, int window, float scale, DType odt, int variant = 0,
                                 ulong kScale = 0, ulong vScale = 0)
    {
        if (AttentionUnsupported(H, K, Hd) is { } why) throw new NotSupportedException(why);
        if (kScale != 0 && vScale != 0)
        {
            // fp8 KV cache (e4m3 rows + f32 row scales): the fp32 FMA kernel (no tensor-core fp8 variant yet)
            _k["attention_prefill_fp8"].Launch(s, ((T + AttentionQueryTile - 1) / AttentionQueryTile, H, 1), AttentionThreads, AttentionSharedBytes(Hd),
                q, ld, kCache, vCache, outp, T, start, H, K, Hd, maxCtx, window, scale, CudaKernels.DTypeCode(odt), kScale, vScale);
            return;
        }
        if (variant == 0) variant = AttentionVariant;
        if (variant == 2 && AttentionTcTakes(Hd))
        {
            _k["attention_prefill_tc" + Hd].Launch(s, ((T + AttentionTcQueryTile - 1) / AttentionTcQueryTile, H, 1), AttentionTcThreads, AttentionTcSharedBytes(Hd),
                q, ld, kCache, vCache, outp, T, start, H, K, maxCtx, window, scale, CudaKernels.DTypeCode(odt));
            return;
        }
        _k["attention_prefill"].Launch(s, ((T + AttentionQueryTile - 1) / AttentionQueryTile, H, 1), AttentionThreads, AttentionSharedBytes(Hd),
            q, ld, kCache, vCache, outp, T, start, H, K, Hd, maxCtx, window, scale, CudaKernels.DTypeCode(odt));
    }

    public void Dispose()
    {
        foreach (var m in _modules) m.Dispose();
        _modules.Clear();
        _k.Clear();
    }
}
