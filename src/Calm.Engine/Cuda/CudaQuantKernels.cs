using Calm.Engine.Model;
using Calm.Engine.Quant;

namespace Calm.Engine.Cuda;

/// <summary>
/// The quantized matvec kernels of kernels/matvec_quant.cu (fp8 e4m3 with per-row fp32 scales, int4 with per-32
/// fp16 group scales; layouts in <see cref="QuantFormats"/>, exactly what Import-CalmModel -DType fp8|int4 produces on
/// the host, uploaded byte for byte) with their launchers, and their microbenchmark. Pointers are raw device
/// addresses (offsets into larger buffers are fine as long as values stay 16-byte aligned).
/// </summary>
public sealed class CudaQuantKernels : IDisposable
{
    public const string SourceFile = "matvec_quant.cu";
    public const int Block = 256;                // 8 warps per block
    /// <summary>fp8 rows at or above which the automatic choice gives each warp four rows instead of two (measured on the
    /// H200, bench/logs/quant-matvec-variants-2026-11-26-H200.txt: r4 best for 14336 and 28672 rows, r2 for 4096).</summary>
    public const int Fp8FourRowsFrom = 8192;

    public CudaContext Context { get; }
    /// <summary>Default of the int4 launchers' stageX: x copied once per block into padded shared memory so the x reads
    /// are conflict-free instead of 32 cache lines per warp load (kernels/matvec_quant.cu, matvec_int4_xs_impl).</summary>
    public bool Int4StageX { get; }
    /// <summary>Default of the fp8 launchers' stageX: x copied once per block into shared memory, permuted so every
    /// 16-byte x read of a warp is 512 contiguous bytes (kernels/matvec_quant.cu, matvec_fp8_xs_impl). CALM_FP8_XS=1.</summary>
    public bool Fp8StageX { get; }
    private int _fp8XsSmemSet = 48 * 1024;
    /// <summary>Shared memory bytes of the staged-x fp8 kernels for <paramref name="cols"/> (cols % 16 == 0): whole 512-float chunks.</summary>
    public static int Fp8StagedXBytes(int cols) => (cols + 511) / 512 * 512 * 4;
    /// <summary>Largest dynamic shared memory the staged int4 kernels ask for; wider rows take the plain kernel.</summary>
    public const int MaxStagedXBytes = 160 * 1024;
    private int _xsSmemSet = 48 * 1024;   // per-function limit raised so far (all _xs kernels together)

    /// <summary>Shared memory bytes of the staged-x int4 kernels for <paramref name="cols"/>: ceil(cols/32) * 36 floats.</summary>
    public static int StagedXBytes(int cols) => (int)(QuantFormats.Int4Groups(cols) * 36 * 4);

    /// <summary>The kernel name prefix and dynamic shared memory of an int4/fp8 launch.</summary>
    private (string Prefix, int Smem) Variant(DType wt, int cols, bool? stageX)
    {
        if (wt == DType.F8E4M3 && (stageX ?? Fp8StageX) && cols % 16 == 0 && Fp8StagedXBytes(cols) <= MaxStagedXBytes)
            return Staged("fp8_xs", Fp8StagedXBytes(cols), ref _fp8XsSmemSet);
        if (wt == DType.Int4 && (stageX ?? Int4StageX) && StagedXBytes(cols) <= MaxStagedXBytes)
            return Staged("int4_xs", StagedXBytes(cols), ref _xsSmemSet);
        return (Suffix(wt), 0);
    }

    /// <summary>A staged-x kernel family: raises its functions' dynamic shared memory limit when this launch needs more.</summary>
    private (string Prefix, int Smem) Staged(string prefix, int smem, ref int limitSet)
    {
        if (smem > limitSet)
        {
            foreach (var (name, k) in _k)
                if (name.Contains(prefix)) k.SetMaxDynamicSharedMemory(smem);
            limitSet = smem;
        }
        return (prefix, smem);
    }
    public int Arch { get; }
    /// <summary>Default of the launchers: the tensor-core kernels (kernels/matvec_quant.cu, matvec_*_tc_impl: mma.sync with
    /// x split into two f16 parts) for every shape they take (<see cref="TensorCoreShape"/>) unless a call asks for a
    /// rows-per-warp or staged-x CUDA-core variant. sm_80+; CALM_QUANT_TC=0 turns them off.</summary>
    public bool TensorCores { get; }
    /// <summary>The tensor-core variant the launchers use when a call does not say (null = automatic,
    /// <see cref="TcVariant"/>); CALM_QUANT_TC_VARIANT=t1|t2|t4|t1w|t1b|t2b|t4b fixes it (for benchmarks).</summary>
    public string? TcVariantOverride { get; }
    /// <summary>The tensor-core kernel variants: t1, t2, t4 = one, two or four tiles of 16 rows per block of 8 warps (4,
    /// 2, 1 k-blocks per pipeline stage); t1w = one tile per block of 16 warps (twice the loads in flight per tile);
    /// t1b, t2b, t4b = t1 with 2 k-blocks per stage, t2 and t4, with registers capped for 4, 3 and 2 blocks per SM.
    /// (t1 capped for 3 blocks per SM was slower on every int4 shape: bench/RESULTS.md, fourteenth session.)</summary>
    public static readonly string[] TcVariants = { "t1", "t2", "t4", "t1w", "t1b", "t2b", "t4b" };
    /// <summary>Programmatic dependent launch of the dense tensor-core kernels (sm_90+ with cuLaunchKernelEx;
    /// CALM_QUANT_PDL=0 off): each issues its first weight loads, waits for the previous kernel before touching x, y or
    /// the norm's sums (pdl_wait) and lets the next kernel launch once all its loads are out. Llama-3-8B on the H200,
    /// same call: int4 463.4 → 480.5 tok/s (over an int4 dequantisation since reverted), fp8 374.1 → 377.8
    /// (bench/RESULTS.md 2026-11-29, sixth session; with the trigger at the kernels' start it had been slower).</summary>
    public bool Programmatic { get; }
    /// <summary>With <see cref="Programmatic"/>: the MoE experts' tensor-core kernels launch programmatically too
    /// (CALM_MOE_PDL=0 off). They wait for the routing before anything else (the expert ids choose their weights, so no
    /// early loads), but their launch and block placement overlap the previous kernel. Not block-capped. Mixtral-8x7B
    /// fp8 on the H200, same call, two rounds: 241.6 / 241.7 → 242.7 / 242.4 tok/s at context 0, 224.4 / 224.6 →
    /// 226.4 / 226.3 at 4096 (bench/RESULTS.md, twelfth session).</summary>
    public bool MoeProgrammatic { get; }
    /// <summary>Whether the tensor-core launches of <paramref name="wt"/> ask for dynamic shared memory they do not use so
    /// that no more of their blocks fit on a multiprocessor than the grid needs (ceil(blocks / SMs)): under programmatic
    /// launch a kernel's blocks start where the previous kernel's leave first, and uncapped the early SMs take several
    /// while others get none. Default int4 only (Llama-3-8B int4 480.5 → 485.8 tok/s, fp8 377.8 → 372.7 on the H200);
    /// programmatic launches only (not the MoE twins).</summary>
    public bool ClampsBlocksPerSm(DType wt) => wt == DType.Int4 ? _clampInt4 : _clampFp8;
    private readonly bool _clampFp8, _clampInt4;
    private readonly int _multiprocessors;
    private readonly int _clampLimit;   // largest dynamic shared memory a cap asks for: the per-block opt-in less the 48 KB static shared memory can take
    private readonly Dictionary<(string, int), int> _clampSmem = new();
    private readonly CudaModule _module;
    private readonly Dictionary<string, CudaKernel> _k = new();

    /// <param name="forceFp8Convert">null: the source's own choice (hardware e4m3 conversion on sm_89+ with NVRTC ≥ 11.8);
    /// true/false: compile with -DCALM_FP8_CVT=1/0, uncached (tests run the bit fallback on a GPU that has the
    /// instruction, so both paths are checked on one machine).</param>
    /// <param name="int4StageX">int4 kernels stage x in shared memory (the _xs variants) when no call says otherwise;
    /// null: the CALM_INT4_XS environment variable ("1" = on). Off by default until measured.</param>
    /// <param name="tensorCores">null: on for sm_80+ unless CALM_QUANT_TC=0; false: the CUDA-core kernels only.</param>
    /// <param name="pdl">programmatic dependent launch (sm_90+); null: on unless CALM_QUANT_PDL=0.</param>
    /// <param name="clampBlocksPerSm">the tensor-core launches' block cap (<see cref="ClampsBlocksPerSm"/>) for both
    /// formats; null: CALM_QUANT_CLAMP (unset: int4 only, "1": both, "0": neither). Only with programmatic launch.</param>
    /// <param name="carveout">the shared-memory carveout every kernel prefers (<see cref="CudaKernels.Carveout"/>); null:
    /// CALM_CARVEOUT, unset = the driver's choice.</param>
    public CudaQuantKernels(CudaContext ctx, int arch, Action<string>? verbose = null, bool? forceFp8Convert = null, bool? int4StageX = null, bool? tensorCores = null,
                            bool? pdl = null, bool? clampBlocksPerSm = null, int? carveout = null)
    {
        Context = ctx; Arch = arch;
        TensorCores = arch >= 80 && (tensorCores ?? Environment.GetEnvironmentVariable("CALM_QUANT_TC") != "0");
        TcVariantOverride = Environment.GetEnvironmentVariable("CALM_QUANT_TC_VARIANT") is { } tv && TcVariants.Contains(tv) ? tv : null;
        Int4StageX = int4StageX ?? Environment.GetEnvironmentVariable("CALM_INT4_XS") == "1";
        Fp8StageX = Environment.GetEnvironmentVariable("CALM_FP8_XS") == "1";
        Programmatic = arch >= 90 && Cu.HasLaunchKernelEx && (pdl ?? Environment.GetEnvironmentVariable("CALM_QUANT_PDL") != "0");
        MoeProgrammatic = Programmatic && Environment.GetEnvironmentVariable("CALM_MOE_PDL") != "0";
        var clamp = Environment.GetEnvironmentVariable("CALM_QUANT_CLAMP");
        _clampFp8 = Programmatic && (clampBlocksPerSm ?? clamp == "1");
        _clampInt4 = Programmatic && (clampBlocksPerSm ?? clamp != "0");
        _multiprocessors = Math.Max(1, CudaDeviceInfo.List()[ctx.Device].Multiprocessors);
        unsafe
        {
            int optin;
            _clampLimit = Cu.cuDeviceGetAttribute(&optin, Cu.ATTR_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, ctx.Device) == 0 ? optin - 48 * 1024 : 0;
        }
        byte[] image;
        if (forceFp8Convert is bool force)
        {
            var (opt, _, cubin) = KernelCompiler.TargetFor(arch);
            var opts = KernelCompiler.Options(opt).Append($"-DCALM_FP8_CVT={(force ? 1 : 0)}").ToArray();
            image = KernelCompiler.CompileSource(SourceFile, KernelCompiler.Sources[SourceFile], opts, cubin, out _);
        }
        else image = KernelCompiler.Get(SourceFile, arch, verbose).Image;
        _module = new CudaModule(ctx, image, SourceFile);
        try
        {
            foreach (var f in new[] { "fp8", "int4" })
                foreach (var r in new[] { "_r1", "_r2", "_r4", "_r8" })
                {
                    _k["matvec_" + f + r] = _module.GetKernel("matvec_" + f + r);
                    _k["moe_matvec_" + f + r] = _module.GetKernel("moe_matvec_" + f + r);
                    _k["matvec_" + f + "_xs" + r] = _module.GetKernel("matvec_" + f + "_xs" + r);
                    _k["moe_matvec_" + f + "_xs" + r] = _module.GetKernel("moe_matvec_" + f + "_xs" + r);
                }
            foreach (var f in new[] { "fp8", "int4" })
                foreach (var v in TcVariants)
                {
                    foreach (var kind in new[] { "tc", "tc_glu" })
                    {
                        _k[$"matvec_{f}_{kind}_{v}"] = _module.GetKernel($"matvec_{f}_{kind}_{v}");
                        _k[$"moe_matvec_{f}_{kind}_{v}"] = _module.GetKernel($"moe_matvec_{f}_{kind}_{v}");
                    }
                    _k[$"matvec_{f}_tc_qkv_{v}"] = _module.GetKernel($"matvec_{f}_tc_qkv_{v}");
                    foreach (var kind in new[] { "tc_fc", "tc_fp", "tc_glu_fc", "tc_qkv_fc" })   // folded-norm roles
                        _k[$"matvec_{f}_{kind}_{v}"] = _module.GetKernel($"matvec_{f}_{kind}_{v}");
                }
            // the tensor-core kernels only: the CUDA-core ones (fallbacks) made Llama-3-8B fp8 slower with it (3.300 vs
            // 3.178 ms/token on the H200, bench/RESULTS.md 2026-11-29); the MoE twins with MoeProgrammatic (they wait for
            // the routing at their start: kernels/matvec_quant.cu)
            if (Programmatic)
                foreach (var (name, k) in _k)
                    if ((name.StartsWith("matvec_", StringComparison.Ordinal) || MoeProgrammatic && name.StartsWith("moe_matvec_", StringComparison.Ordinal))
                        && name.Contains("_tc")) k.Programmatic = true;
            _k["matvec_quant_info"] = _module.GetKernel("matvec_quant_info");
            _k["quant_tile"] = _module.GetKernel("quant_tile");
            _k["quant_tile_scales"] = _module.GetKernel("quant_tile_scales");
            if ((carveout ?? CudaKernel.CarveoutFromEnvironment()) is int cv)   // CudaKernels.Carveout
                foreach (var k in _k.Values) k.PreferredCarveout = cv;
        }
        catch
        {
            _module.Dispose();
            throw;
        }
    }

    /// <summary>The kernels by name (tests).</summary>
    internal IReadOnlyDictionary<string, CudaKernel> Kernels => _k;

    private static string Suffix(DType t) => t switch
    {
        DType.F8E4M3 => "fp8",
        DType.Int4 => "int4",
        _ => throw new CalmException(ErrorIds.TensorDTypeUnsupported, CalmErrorKind.NotSupported,
            $"The quantized CUDA matvec runs fp8 and int4 weights; this tensor is {DTypes.Name(t)}."),
    };

    /// <summary>Rows per warp: 1, 2, 4 or 8 as asked (8: one load per row in flight, an int4 candidate), 0 = automatic from the H200 measurements
    /// (bench/logs/quant-matvec-variants-2026-11-26-H200.txt): fp8 4 from <see cref="Fp8FourRowsFrom"/> rows, else 2;
    /// int4 always 4 (each x chunk read from L1 serves four rows; int4 reads 8 bytes of x per weight byte).
    /// Tune with <see cref="Bench"/>'s rowsPerWarp.</summary>
    public static int RowsPerWarp(DType t, int rows, int requested) => requested switch
    {
        0 => t == DType.Int4 ? 4 : rows >= Fp8FourRowsFrom ? 4 : 2,
        1 or 2 or 4 or 8 => requested,
        _ => throw new ArgumentOutOfRangeException(nameof(requested), "rows per warp is 0 (automatic), 1, 2, 4 or 8"),
    };

    /// <summary>Device bytes of the values of a [rows, cols] weight: fp8 rows*cols, int4 rows*ceil(cols/32)*16.</summary>
    public static long ValueBytes(DType t, long rows, long cols) => t switch
    {
        DType.F8E4M3 => rows * cols,
        DType.Int4 => rows * QuantFormats.Int4RowBytes(cols),
        _ => throw new ArgumentException($"{t} is not quantized", nameof(t)),
    };

    /// <summary>Device bytes of the scales: fp8 4*rows (fp32), int4 2*rows*ceil(cols/32) (fp16).</summary>
    public static long ScaleBytes(DType t, long rows, long cols) => t switch
    {
        DType.F8E4M3 => rows * 4,
        DType.Int4 => rows * QuantFormats.Int4Groups(cols) * 2,
        _ => throw new ArgumentException($"{t} is not quantized", nameof(t)),
    };

    /// <summary>Whether the tensor-core kernels take a [rows, <paramref name="cols"/>] matrix of <paramref name="t"/>:
    /// fp8 needs cols % 64 == 0 (64-column k-blocks), int4 cols % 128 == 0 (four whole groups per k-block).</summary>
    public static bool TensorCoreShape(DType t, int cols) => t switch
    {
        DType.F8E4M3 => cols % 64 == 0,
        DType.Int4 => cols % 128 == 0,
        _ => false,
    };

    /// <summary>The tensor-core variant for <paramref name="rows"/> output rows (a GLU launch: 2F; MoE: rows x slots) of
    /// <paramref name="t"/>: <paramref name="requested"/> when given, else the rule of the fastest whole-step runs on
    /// the H200 (bench/RESULTS.md, 2026-11-29). fp8: one tile per block for every shape (ninth session, same call:
    /// Llama-3-8B fp8 370.2 tok/s with the rule below, 394.2 with t1 everywhere; the plain 28672 x 4096 kernel 30.3
    /// µs as t1 vs 33.7 as t2). int4 (ninth session, two same-call pairs: Llama-3-8B int4 471.5 / 471.6 → 504.2 / 505.1
    /// tok/s against four tiles from 33792 rows, two from 16896, else one, all register-capped): t1 up to 4096 rows (o,
    /// down), the register-capped t1b (more warps per SM for the heavier dequantisation) below 16896 (qkv) and t2b from
    /// there (gate_up, the classifier). With <paramref name="cappedInt4"/> false (CALM_QUANT_TC_CAPPED=0) the older
    /// uncapped rule: t4 from 33792 rows, t2 from 16896, else t1. fp8 MoE experts (<paramref name="moe"/>, the
    /// moe_matvec kernels): two tiles per block (fourteenth session, with the loads' L2 prefetch-size hint: Mixtral-8x7B
    /// fp8 248.8 tok/s with t1 everywhere, 253.8 with t2 everywhere; bench/RESULTS.md).</summary>
    public static string TcVariant(DType t, long rows, string? requested = null, bool? cappedInt4 = null, bool moe = false)
    {
        if (requested is not null)
            return TcVariants.Contains(requested) ? requested
                : throw new ArgumentOutOfRangeException(nameof(requested), $"tensor-core variant is one of {string.Join(", ", TcVariants)}");
        if (t != DType.Int4) return moe ? "t2" : "t1";
        if (cappedInt4 is null && Int4Rule is { } rule) return rows <= 4096 ? rule[0] : rows >= 16896 ? rule[2] : rule[1];
        if (cappedInt4 ?? CappedInt4) return rows <= 4096 ? "t1" : rows >= 16896 ? "t2b" : "t1b";
        return rows >= 33792 ? "t4" : rows >= 16896 ? "t2" : "t1";
    }
    private static readonly bool CappedInt4 = Environment.GetEnvironmentVariable("CALM_QUANT_TC_CAPPED") != "0";
    /// <summary>CALM_QUANT_TC_INT4="small,mid,large" (for benchmarks): the int4 variants for up to 4096 rows, below 16896
    /// and from 16896 in place of the rule's t1, t1b, t2b; null when unset or not three known variants. Like
    /// CALM_QUANT_TC_CAPPED, it gives way to a caller that names the rule (TcVariant's cappedInt4).</summary>
    private static readonly string[]? Int4Rule = Environment.GetEnvironmentVariable("CALM_QUANT_TC_INT4")?.Split(',', StringSplitOptions.TrimEntries) is { Length: 3 } r
        && r.All(TcVariants.Contains) ? r : null;
    private static int TilesOf(string variant) => variant[1] - '0';

    /// <summary>The tensor-core kernel <paramref name="prefix"/>_{fp8|int4}_<paramref name="kind"/>_{variant} for
    /// <paramref name="variantRows"/> (see <see cref="TcVariant"/>), with its tiles per block and threads per block.</summary>
    private (CudaKernel Kernel, int Tiles, int Threads) Tc(string prefix, string kind, DType wt, long variantRows, string? requested)
    {
        var v = TcVariant(wt, variantRows, requested ?? TcVariantOverride, moe: prefix == "moe_matvec");
        return (_k[$"{prefix}_{Suffix(wt)}_{kind}_{v}"], TilesOf(v), v.EndsWith('w') ? 2 * Block : Block);
    }

    private void RequireGluShape(DType wt, int cols)
    {
        if (!TensorCoreShape(wt, cols) || Arch < 80)
            throw new ArgumentException($"the fused gate_up kernel needs sm_80 and cols % {(wt == DType.Int4 ? 128 : 64)} == 0 (got {cols})", nameof(cols));
    }

    /// <summary>Whether a launch takes the tensor-core kernel: the default is on, the shape fits, and the call did not
    /// ask for a CUDA-core variant (rows per warp or staged x).</summary>
    private bool UseTc(DType wt, int cols, int rowsPerWarp, bool? stageX, bool? tensorCores)
        => (tensorCores ?? (TensorCores && rowsPerWarp == 0 && stageX != true)) && Arch >= 80 && TensorCoreShape(wt, cols);

    /// <summary>Values in the tile order (<see cref="QuantTileOrder"/>) take the tensor-core kernels only.</summary>
    private static void RequireRowMajor(bool tiled)
    {
        if (tiled) throw new ArgumentException("values in the tile order (QuantTileOrder) run on the tensor-core kernels only; this call takes a CUDA-core kernel", nameof(tiled));
    }

    /// <summary>The tensor-core kernels read the tile order for int4 only (fp8: row-major, kernels/matvec_quant.cu).</summary>
    private static void RequireTileFormat(DType wt, bool tiled)
    {
        if (tiled && wt != DType.Int4) throw new ArgumentException($"the {DTypes.Name(wt)} tensor-core kernels read row-major values; only int4 takes the tile order (QuantTileOrder.Stored)", nameof(tiled));
    }

    private static int Blocks(int rows, int r) => (int)Math.Max(1, (rows + (long)r * (Block / 32) - 1) / ((long)r * (Block / 32)));

    /// <summary>Launches a tensor-core kernel with the call's own arguments followed by its fold role's (consumer: ssIn,
    /// nIn, eps; producer: g, xg, ssOut, addOne; kernels/matvec_quant.cu MQ_FC_PARAMS / MQ_FP_PARAMS).</summary>
    private void LaunchTc(CudaKernel kern, CudaStream s, (int X, int Y) grid, int threads, NormFold fold, params KernelArg[] args)
    {
        if (fold.SsIn != 0 && fold.Xg != 0) throw new ArgumentException("a matvec is a folded-norm consumer or producer, not both", nameof(fold));
        KernelArg[] all = fold.SsIn != 0 ? [.. args, fold.SsIn, fold.NIn, fold.Eps]
            : fold.Xg != 0 ? [.. args, fold.Gain, fold.Xg, fold.SsOut, fold.AddOne ? 1 : 0]
            : args;
        kern.Launch(s, (grid.X, grid.Y, 1), threads, ClampSmem(kern, threads, (long)grid.X * grid.Y), all);
    }

    /// <summary>Blocks of a tensor-core launch that fit on one multiprocessor at once: the kernel's own limit, or
    /// ceil(<paramref name="blocks"/> / SMs) where <see cref="ClampsBlocksPerSm"/> caps it. kind: tc, tc_glu, tc_qkv
    /// (and their _fc / _fp roles).</summary>
    public int ResidentBlocksPerSm(DType wt, string kind, string variant, long blocks)
    {
        var (kern, _, threads) = Tc("matvec", kind, wt, 0, variant);
        return kern.MaxActiveBlocksPerMultiprocessor(threads, ClampSmem(kern, threads, blocks));
    }

    /// <summary>The dynamic shared memory that caps <paramref name="kern"/> at ceil(blocks / SMs) blocks per
    /// multiprocessor (<see cref="ClampsBlocksPerSm"/>; 0 when off or when the kernel's own resources already do).</summary>
    private int ClampSmem(CudaKernel kern, int threads, long blocks)
    {
        if (!kern.Programmatic || kern.Name.StartsWith("moe_", StringComparison.Ordinal) || !(kern.Name.Contains("_int4_") ? _clampInt4 : _clampFp8) || _clampLimit <= 0) return 0;
        int want = (int)Math.Min(int.MaxValue, (blocks + _multiprocessors - 1) / _multiprocessors);
        if (_clampSmem.TryGetValue((kern.Name, want), out var smem)) return smem;
        smem = 0;
        if (kern.MaxActiveBlocksPerMultiprocessor(threads, 0) > want)
        {
            kern.SetMaxDynamicSharedMemory(_clampLimit);
            int lo = 1, hi = _clampLimit;   // smallest size with at most `want` blocks per SM
            while (lo < hi)
            {
                int mid = lo + (hi - lo) / 2;
                if (kern.MaxActiveBlocksPerMultiprocessor(threads, mid) <= want) hi = mid; else lo = mid + 1;
            }
            smem = kern.MaxActiveBlocksPerMultiprocessor(threads, lo) <= want ? lo : 0;
        }
        _clampSmem[(kern.Name, want)] = smem;
        return smem;
    }

    /// <summary>
    /// W [rows, cols] (fp8: values [rows, cols] e4m3 + scales [rows] f32; int4: values [rows, ceil(cols/32)*16] packed +
    /// scales [rows, ceil(cols/32)] f16), x [cols] f32 -> y [rows] f32 (+ bias [rows] f32 when nonzero) (+ y when
    /// accumulate). fp8 rows take the 16-byte path when cols % 16 == 0 (values 16-byte aligned); int4 always does.
    /// <paramref name="tiled"/>: the values (int4: and the scales) are in the tile order (<see cref="QuantTileOrder"/>; tensor-core kernels only).
    /// </summary>
    public void Matvec(CudaStream s, DType wt, ulong values, ulong scales, ulong x, ulong y, ulong bias, int rows, int cols, bool accumulate, int rowsPerWarp = 0, bool? stageX = null,
                       bool? tensorCores = null, string? tcVariant = null, NormFold fold = default, bool tiled = false)
    {
        RequireTileFormat(wt, tiled);
        if (UseTc(wt, cols, rowsPerWarp, stageX, tensorCores))
        {
            var (kern, tt, threads) = Tc("matvec", fold.SsIn != 0 ? "tc_fc" : fold.Xg != 0 ? "tc_fp" : "tc", wt, rows, tcVariant);
            LaunchTc(kern, s, ((rows + 16 * tt - 1) / (16 * tt), 1), threads, fold, values, scales, x, y, bias, rows, cols, accumulate ? 1 : 0, tiled ? 1 : 0);
            return;
        }
        RequireRowMajor(tiled);
        if (fold != default) throw new ArgumentException("the folded RMSNorm runs in the tensor-core kernels only (FoldSupported)", nameof(fold));
        int r = RowsPerWarp(wt, rows, rowsPerWarp);
        var (v, smem) = Variant(wt, cols, stageX);
        _k[$"matvec_{v}_r{r}"].Launch(s, Blocks(rows, r), Block, smem, values, scales, x, y, bias, rows, cols, accumulate ? 1 : 0);
    }

    /// <summary>MoE: for each of <paramref name="slots"/> slots s, y[s] [rows] = expert idx[s] [rows, cols] . x[s*xStride ..].
    /// valueTable / scaleTable: device tables of E pointers (values and scales of each expert); idx [slots] int on the device.</summary>
    public void MoeMatvec(CudaStream s, DType wt, ulong valueTable, ulong scaleTable, ulong idx, ulong x, int xStride, ulong y, int rows, int cols, int slots, int rowsPerWarp = 0, bool? stageX = null,
                          bool? tensorCores = null, string? tcVariant = null, bool tiled = false)
    {
        RequireTileFormat(wt, tiled);
        if (UseTc(wt, cols, rowsPerWarp, stageX, tensorCores))
        {
            var (kern, tt, threads) = Tc("moe_matvec", "tc", wt, (long)rows * slots, tcVariant);
            LaunchTc(kern, s, ((rows + 16 * tt - 1) / (16 * tt), slots), threads, default, valueTable, scaleTable, idx, x, xStride, y, rows, cols, tiled ? 1 : 0);
            return;
        }
        RequireRowMajor(tiled);
        int r = RowsPerWarp(wt, rows, rowsPerWarp);
        var (v, smem) = Variant(wt, cols, stageX);
        _k[$"moe_matvec_{v}_r{r}"].Launch(s, (Blocks(rows, r), slots, 1), Block, smem, valueTable, scaleTable, idx, x, xStride, y, rows, cols);
    }

    /// <summary>Whether <see cref="MatvecGlu"/> / <see cref="MoeMatvecGlu"/> can take a gate_up matrix [2F, <paramref name="cols"/>]
    /// of <paramref name="wt"/>: the tensor-core kernels are on and the shape fits.</summary>
    public bool GluSupported(DType wt, int cols) => TensorCores && TensorCoreShape(wt, cols);

    /// <summary>Whether a [rows, <paramref name="cols"/>] matrix of <paramref name="wt"/> can be a folded-RMSNorm
    /// producer or consumer (<see cref="NormFold"/>: the tensor-core kernels carry it, the CUDA-core ones do not).</summary>
    public bool FoldSupported(DType wt, int cols) => TensorCores && TensorCoreShape(wt, cols);

    /// <summary>Partial sums of x² a folded-norm producer (<see cref="Matvec"/> with a <see cref="NormFold.Producer"/>)
    /// of <paramref name="rows"/> rows writes: one per block of its tensor-core variant.</summary>
    public int FoldPartials(DType wt, int rows, string? tcVariant = null)
    {
        int tt = TilesOf(TcVariant(wt, rows, tcVariant ?? TcVariantOverride));
        return (rows + 16 * tt - 1) / (16 * tt);
    }

    /// <summary>gate_up fused with the activation on the tensor cores: W [2F, cols] (gate rows over up rows, values and
    /// scales as <see cref="Matvec"/>), x [cols] -> h [F] = act(W_gate x (+ b)) * (W_up x (+ b)); bias [2F] or 0.</summary>
    public void MatvecGlu(CudaStream s, DType wt, ulong values, ulong scales, ulong x, ulong h, ulong bias, int F, int cols, Activation act, string? tcVariant = null,
                          NormFold fold = default, bool tiled = false)
    {
        RequireGluShape(wt, cols);
        if (fold.Xg != 0) throw new ArgumentException("the fused gate_up kernel is a folded-norm consumer only", nameof(fold));
        RequireTileFormat(wt, tiled);
        var (kern, tt, threads) = Tc("matvec", fold.SsIn != 0 ? "tc_glu_fc" : "tc_glu", wt, 2L * F, tcVariant);
        LaunchTc(kern, s, ((F + 8 * tt - 1) / (8 * tt), 1), threads, fold, values, scales, x, h, bias, F, cols, (int)act, tiled ? 1 : 0);
    }

    /// <summary>Whether <see cref="MatvecQkvRope"/> takes this shape: the tensor-core kernels' columns, head_dim a
    /// multiple of 16 (a tile's 8 rotary pairs inside one head).</summary>
    public bool QkvRopeSupported(DType wt, int cols, int headDim) => GluSupported(wt, cols) && Arch >= 80 && headDim % 16 == 0;

    /// <summary>The qkv projection fused with RoPE and the fp16 KV write (the tensor-core kernels' QKV mode): W [(H + 2K)
    /// Hd, cols] (values and scales as <see cref="Matvec"/>), x [cols] -> per rotary pair (rows u Hd + j, u Hd + j + Hd/2
    /// of head u) the two sums (+ bias [rows] when nonzero); q and k pairs rotated with cos/sin [maxCtx, Hd/2] at the
    /// step's position (step: StepParams); q written to qkv (its first H Hd floats), k and v to this layer's fp16 caches
    /// [K, maxCtx, Hd]: what <see cref="Matvec"/> then CudaKernels.QkvRopeCache (no q/k norm, full rotary) give.</summary>
    public void MatvecQkvRope(CudaStream s, DType wt, ulong values, ulong scales, ulong x, ulong qkv, ulong bias, int H, int K, int Hd, int cols,
                              ulong cos, ulong sin, ulong kCache, ulong vCache, int maxCtx, ulong step, string? tcVariant = null, NormFold fold = default,
                              bool tiled = false)
    {
        RequireGluShape(wt, cols);
        if (Hd % 16 != 0) throw new ArgumentException($"the fused qkv kernel needs head_dim % 16 == 0 (got {Hd})", nameof(Hd));
        int pairs = (H + 2 * K) * (Hd / 2);
        if (fold.Xg != 0) throw new ArgumentException("the fused qkv kernel is a folded-norm consumer only", nameof(fold));
        RequireTileFormat(wt, tiled);
        var (kern, tt, threads) = Tc("matvec", fold.SsIn != 0 ? "tc_qkv_fc" : "tc_qkv", wt, 2L * pairs, tcVariant);
        LaunchTc(kern, s, ((pairs + 8 * tt - 1) / (8 * tt), 1), threads, fold, values, scales, x, qkv, bias, cols, cos, sin, kCache, vCache, maxCtx, H, K, Hd, step, tiled ? 1 : 0);
    }

    /// <summary>MoE twin of <see cref="MatvecGlu"/>: per slot s, expert idx[s] [2F, cols] . x[s*xStride ..] -> h[s*F ..].</summary>
    public void MoeMatvecGlu(CudaStream s, DType wt, ulong valueTable, ulong scaleTable, ulong idx, ulong x, int xStride, ulong h, int F, int cols, int slots, Activation act, string? tcVariant = null,
                             bool tiled = false)
    {
        RequireGluShape(wt, cols);
        RequireTileFormat(wt, tiled);
        var (kern, tt, threads) = Tc("moe_matvec", "tc_glu", wt, 2L * F * slots, tcVariant);
        LaunchTc(kern, s, ((F + 8 * tt - 1) / (8 * tt), slots), threads, default, valueTable, scaleTable, idx, x, xStride, h, F, cols, (int)act, tiled ? 1 : 0);
    }

    /// <summary>Whether this image converts e4m3 with the hardware instruction (cvt.rn.f16x2.e4m3x2: sm_89+ and
    /// NVRTC ≥ 11.8) rather than the bit fallback; runs a one-thread kernel and waits for it.</summary>
    public bool UsesHardwareFp8Convert(CudaStream s)
    {
        using var m = CudaDeviceMemory.Allocate(Context, 4, "quant info");
        m.Zero();
        _k["matvec_quant_info"].Launch(s, 1, 1, 0, m.Ptr);
        s.Synchronize();
        return m.ToArray<int>(1)[0] == 1;
    }

    /// <summary>src [rows, rowBytes] row-major -> dst in the tile order (<see cref="QuantTileOrder"/>: whole blocks of 8
    /// rows, <see cref="QuantTileOrder.Bytes"/>, the padding rows zero) with <paramref name="piece"/>-byte pieces:
    /// <see cref="QuantTileOrder.PieceBytes"/> for values, <see cref="QuantTileOrder.ScalePieceBytes"/> for int4 scales.
    /// src and dst must not overlap. Stream-ordered. One thread per 16 (values) or 8 (scales) bytes of dst, grid-stride,
    /// so the buffers must be aligned to that.</summary>
    public void Tile(CudaStream s, ulong src, ulong dst, long rows, int rowBytes, int piece)
    {
        var (kernel, unit) = piece switch
        {
            QuantTileOrder.PieceBytes => ("quant_tile", 16),
            QuantTileOrder.ScalePieceBytes => ("quant_tile_scales", 8),
            _ => throw new ArgumentException($"the tile order's pieces are {QuantTileOrder.PieceBytes} bytes (values) or {QuantTileOrder.ScalePieceBytes} (int4 scales), not {piece}", nameof(piece)),
        };
        if (rowBytes <= 0 || rowBytes % piece != 0) throw new ArgumentException($"the tile order with {piece}-byte pieces takes rows of a multiple of {piece} bytes (got {rowBytes})", nameof(rowBytes));
        if (((src | dst) & (ulong)(unit - 1)) != 0) throw new ArgumentException($"the tile order's buffers must be {unit}-byte aligned");
        if (rows <= 0) return;
        long units = QuantTileOrder.Bytes(rows, rowBytes) / unit;
        int blocks = (int)Math.Clamp((units + Block - 1) / Block, 1, 65536);
        _k[kernel].Launch(s, blocks, Block, 0, src, dst, rows, rowBytes);
    }

    public void Dispose()
    {
        _k.Clear();
        _module.Dispose();
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Microbenchmark (Measure-CalmKernel -Device Cuda -DType fp8|int4)
    // ---------------------------------------------------------------------------------------------------------------

    private const int MinCallsPerRep = 8;

    /// <summary>
    /// y [rows] = W [rows, cols] (fp8 or int4) · x [cols], timed like <see cref="CudaMicrobench.Matvec"/>: random valid
    /// weights in enough copies to rotate over ≥ 4× the L2, each repetition a captured graph of ≥ 8 calls timed with
    /// CUDA events, per-call milliseconds. Bytes = values + scales + x + y. <paramref name="pdl"/>: programmatic launch
    /// of the tensor-core kernels (consecutive calls overlap as in a decode step); null: the default (on for sm_90+
    /// since 2026-11-29's sixth session; the earlier variant tables in bench/logs ran without). <paramref name="tiled"/>:
    /// the tensor-core kernels read the values and scales in the tile order (<see cref="QuantTileOrder"/>, as the CUDA
    /// backend stores them: int4 only); null: as the backend would store them (int4 where a tensor-core kernel runs); the name
    /// ends "/tiled" when they do.
    /// </summary>
    public static KernelTiming Bench(int rows, int cols, DType dtype, int repeat = 20, int device = 0, CancellationToken ct = default, int rowsPerWarp = 0, bool stageX = false,
                                     bool? tensorCores = null, string? tcVariant = null, bool? pdl = null, bool? tiled = null)
    {
        if (rows < 1 || cols < 1) throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Rows and columns must be ≥ 1 (got {rows} × {cols}).", "Rows");
        if (!DTypes.IsQuantized(dtype))
            throw new CalmException(ErrorIds.TensorDTypeUnsupported, CalmErrorKind.NotSupported, $"The quantized GPU matvec runs fp8 and int4, not {DTypes.Name(dtype)}.", "DType");
        if (repeat < 1) throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Repeat must be ≥ 1 (got {repeat}).", "Repeat");
        var why = CudaDeviceInfo.Unavailable();
        if (why is not null) throw new CalmException(ErrorIds.DeviceNotAvailable, CalmErrorKind.NotAvailable, why, "Cuda");
        var info = CudaDeviceInfo.List()[device];
        int r = RowsPerWarp(dtype, rows, rowsPerWarp);
        long vBytes = ValueBytes(dtype, rows, cols), sBytes = ScaleBytes(dtype, rows, cols);
        long rowBytes = vBytes / rows, vAlloc = QuantTileOrder.Stored(dtype, cols) ? QuantTileOrder.Bytes(rows, rowBytes) : vBytes;
        long sRowBytes = sBytes / rows, sAlloc = QuantTileOrder.Stored(dtype, cols) ? QuantTileOrder.Bytes(rows, sRowBytes) : sBytes;
        long wBytes = vBytes + sBytes;
        long bytes = wBytes + cols * 4L + rows * 4L;
        long l2 = Math.Max(info.L2CacheMB, 1) * (1L << 20);
        int copies = (int)Math.Clamp((4 * l2 + wBytes - 1) / Math.Max(wBytes, 1), 1, 64);

        using var ctx = CudaContext.Acquire(device);
        using var k = new CudaQuantKernels(ctx, info.Arch, pdl: pdl);
        using var s = new CudaStream(ctx);
        var mem = new List<CudaDeviceMemory>();
        try
        {
            var rng = new Random(rows * 31 + cols);
            var (vals, scales) = RandomWeights(rng, dtype, rows, cols);
            var xs = new float[cols];
            for (int i = 0; i < cols; i++) xs[i] = (float)(rng.NextDouble() * 2 - 1);
            CudaDeviceMemory Add(long n, string what) { var m = CudaDeviceMemory.Allocate(ctx, n, what); mem.Add(m); return m; }
            bool tc = k.UseTc(dtype, cols, rowsPerWarp, stageX, tensorCores);
            bool tile = tiled ?? (tc && QuantTileOrder.Stored(dtype, cols));
            if (tile && !(tc && QuantTileOrder.Stored(dtype, cols)))
                throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, "The tile order is read by the int4 tensor-core kernels only (rows of a multiple of 128 columns).", "Tiled");
            CudaDeviceMemory? rowMajor = tile ? Add(vBytes, "quantized weights (row-major)") : null;
            rowMajor?.CopyFromHost<byte>(vals);
            CudaDeviceMemory? rowMajorScales = tile ? Add(sBytes, "weight scales (row-major)") : null;
            rowMajorScales?.CopyFromHost<byte>(scales);
            var W = new List<(ulong V, ulong S)>();
            for (int i = 0; i < copies; i++)
            {
                var v = Add(vAlloc, "quantized weights");
                if (rowMajor is not null) k.Tile(s, rowMajor.Ptr, v.Ptr, rows, (int)rowBytes, QuantTileOrder.PieceBytes); else v.CopyFromHost<byte>(vals);
                var sc = Add(sAlloc, "weight scales");
                if (rowMajorScales is not null) k.Tile(s, rowMajorScales.Ptr, sc.Ptr, rows, (int)sRowBytes, QuantTileOrder.ScalePieceBytes); else sc.CopyFromHost<byte>(scales);
                W.Add((v.Ptr, sc.Ptr));
            }
            var X = Add(cols * 4L, "x"); X.CopyFromHost<float>(xs);
            var Y = Add(rows * 4L, "y");
            var tv = TcVariant(dtype, rows, tcVariant ?? k.TcVariantOverride);
            void Call(int i) => k.Matvec(s, dtype, W[i].V, W[i].S, X.Ptr, Y.Ptr, 0, rows, cols, false, tc ? 0 : r, stageX, tc, tv, tiled: tile);

            int calls = Math.Max(MinCallsPerRep, copies);
            for (int i = 0; i < copies; i++) Call(i);   // warm-up
            s.Synchronize();
            bool hw = dtype == DType.F8E4M3 && k.UsesHardwareFp8Convert(s);
            s.BeginCapture();
            try { for (int i = 0; i < calls; i++) Call(i % copies); }
            catch { try { s.EndCapture().Dispose(); } catch (CalmException) { } throw; }
            using var graph = s.EndCapture();
            graph.Launch(s);
            s.Synchronize();
            using var a = new CudaEvent(ctx);
            using var b = new CudaEvent(ctx);
            var ms = new double[repeat];
            for (int rep = 0; rep < repeat; rep++)
            {
                ct.ThrowIfCancellationRequested();
                a.Record(s);
                graph.Launch(s);
                b.Record(s);
                b.Synchronize();
                ms[rep] = b.ElapsedSince(a) / calls;
            }
            bool staged = stageX && (dtype == DType.Int4 ? StagedXBytes(cols) <= MaxStagedXBytes : cols % 16 == 0 && Fp8StagedXBytes(cols) <= MaxStagedXBytes);
            string name = (tc ? $"matvec_{Suffix(dtype)}_tc_{tv}" : $"matvec_{Suffix(dtype)}{(staged ? "_xs" : "")}_r{r}") + (dtype == DType.F8E4M3 ? (hw ? "/cvt" : "/bits") : "") + (tile ? "/tiled" : "");
            return new KernelTiming(name, ms, bytes);
        }
        finally
        {
            foreach (var m in mem) m.Dispose();
        }
    }

    /// <summary>Random weights in the stored format (host bytes of values and scales): fp8 any non-NaN code with
    /// scales around 1/448; int4 any nibble (padding nibbles 8) with fp16 scales in [0.005, 0.02).</summary>
    internal static (byte[] Values, byte[] Scales) RandomWeights(Random rng, DType dtype, int rows, int cols)
    {
        var v = new byte[ValueBytes(dtype, rows, cols)];
        var sc = new byte[ScaleBytes(dtype, rows, cols)];
        rng.NextBytes(v);
        if (dtype == DType.F8E4M3)
        {
            for (long i = 0; i < v.LongLength; i++) if ((v[i] & 0x7F) == 0x7F) v[i] ^= 1;   // 0x7F/0xFF (NaN) -> 0x7E/0xFE
            for (int i = 0; i < rows; i++) BitConverter.TryWriteBytes(sc.AsSpan(4 * i), (float)(0.5 + rng.NextDouble()) / QuantFormats.E4M3Max);
        }
        else
        {
            long groups = QuantFormats.Int4Groups(cols), rowBytes = QuantFormats.Int4RowBytes(cols);
            if (cols % QuantFormats.Int4GroupSize != 0)
                for (int r = 0; r < rows; r++)
                    for (long c = cols; c < groups * QuantFormats.Int4GroupSize; c++)
                    {
                        long at = r * rowBytes + c / 2;
                        v[at] = (byte)((c & 1) == 0 ? (v[at] & 0xF0) | 8 : (v[at] & 0x0F) | 0x80);
                    }
            for (long i = 0; i < rows * groups; i++)
                BitConverter.TryWriteBytes(sc.AsSpan((int)(2 * i)), BitConverter.HalfToUInt16Bits((Half)(0.005 + 0.015 * rng.NextDouble())));
        }
        return (v, sc);
    }
}
