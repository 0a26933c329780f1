using Calm.Engine.Model;

namespace Calm.Engine.Cuda;

/// <summary>
/// The kernels of kernels/*.cu loaded into one context, with one C# launcher per kernel (llm.c style: the launcher
/// owns the grid/block choice; shapes in comments match the .cu files). Pointers are raw device addresses so
/// callers can pass offsets into larger buffers.
/// </summary>
public sealed class CudaKernels : IDisposable
{
    public const int MatvecBlock = 256;          // 8 warps = 8 rows per block
    public const int MaxTopK = 64;               // GPU top-k limit (shared memory of the merge stage)
    public const int TopKChunk = 4096;           // logits per block in top-k stage 1
    public const int ArgmaxBlocks = 128;
    public const int AttentionMaxHeadDim = 512;
    public const int QkvMaxHeadDim = 1024;
    /// <summary>The persistent decode kernel's file: not loaded with the others; CudaBackend compiles the one variant
    /// (weight format, attention group size) a model needs.</summary>
    public const string PersistentSourceFile = "decode_persistent.cu";

    public CudaContext Context { get; }
    public int Arch { get; }
    /// <summary>Multiprocessors of the device (sizes the split-attention grid).</summary>
    public int Multiprocessors { get; }
    /// <summary>Split attention: blocks per multiprocessor the grid aims at (the g1/g2/g4 kernels fit 2 of 256 threads);
    /// the constructor's attentionBlocksPerSm, else CALM_ATT_BLOCKS, else 2.</summary>
    public int AttentionBlocksPerSm { get; }
    public const int SplitAttentionMaxHeadDim = 256;
    /// <summary>Programmatic dependent launch for the decode kernels (sm_90+, a driver with cuLaunchKernelEx): each
    /// kernel may start while the previous one finishes; the matvecs prefetch their weights into L2 meanwhile.
    /// On by default (without the L2 prefetch: bench/RESULTS.md); off with CALM_PDL=0 or the constructor's pdl: false.</summary>
    public bool Programmatic { get; }
    /// <summary>With <see cref="Programmatic"/>: bytes of each weight row a matvec prefetches into L2 before it waits
    /// for the previous kernel (CALM_PDL_PREFETCH, default 0).</summary>
    public int PrefetchBytes { get; }
    /// <summary>Split attention through a cp.async shared-memory pipeline (sm_80+). Measured no faster than the
    /// register-load kernel on the H200, so only with CALM_ATT_ASYNC=1 or the constructor's attentionPipelined: true.</summary>
    public bool AttentionPipelined { get; }
    /// <summary>Split attention over an fp8 KV cache with the dot products on the tensor cores (kernels/attention_split_fp8.cuh:
    /// 16-byte loads of 16 e4m3 per lane, 16 positions per warp step; sm_80+, head_dim 64, 128 or 256, head_dim 256 only
    /// with up to 4 query heads per kv head; other shapes keep the 8-per-lane kernel). On by default (Llama-3.1-8B bf16 at
    /// context 32768 with an fp8 KV cache: 195.2 vs 171.7 tok/s on the H200, bench/RESULTS.md); off with
    /// CALM_ATT_FP8_WIDE=0 or the constructor's attentionFp8Wide: false. Takes precedence over
    /// <see cref="AttentionPipelined"/> for the shapes it serves.</summary>
    public bool AttentionFp8Wide { get; }
    /// <summary>Split attention over the fp16 KV cache with the dot products on the tensor cores: the fp8 tensor-core
    /// kernel with 2-byte rows (kernels/attention_split_fp8.cuh, attention_split_g*_f16w_hd*; sm_80+, head_dim 64 or
    /// 128; other shapes keep the register-load kernel). On by default (H200, Llama-3.1-8B bf16, same call: 245.8 / 227.6
    /// / 180.6 tok/s at context 0 / 4096 / 32768 with the register kernel, 247.4 / 232.0 / 192.4 with this one;
    /// bench/RESULTS.md, 2026-11-30); off with CALM_ATT_F16_WIDE=0 or the constructor's attentionF16Wide: false.</summary>
    public bool AttentionF16Wide { get; }
    /// <summary>Whether <see cref="AttentionF16Wide"/> is on for a device of this compute capability: <paramref name="value"/>
    /// when given, else unless CALM_ATT_F16_WIDE=0; never below sm_80.</summary>
    public static bool AttentionF16WideOn(bool? value, int arch)
        => (value ?? Environment.GetEnvironmentVariable("CALM_ATT_F16_WIDE") != "0") && arch >= 80;
    /// <summary>Split attention (register-load fp16/fp8 kernels and the tensor-core fp8 kernel): each warp asks L2 for
    /// its rows this many steps ahead of its loads (prefetch.global.L2), so more of the cache is in flight than the
    /// registers hold; 0 = no prefetch. Measured slower at every distance on the H200 (context 32768: fp16 KV 52.9 µs at
    /// 0, 58.4-69.2 µs at 1-4; bench/RESULTS.md), so 0 unless CALM_ATT_PREFETCH or the constructor's attentionPrefetch
    /// (0..8) says otherwise.</summary>
    public int AttentionPrefetch { get; }
    /// <summary>Split attention: the blocks a short context leaves without a chunk prefetch the next kernel's weights
    /// (the o projection, <see cref="Attention"/>'s nextWeights) into L2 instead of exiting, so the o matvec reads them
    /// from L2. Measured slower on the H200 (Llama-3-8B bf16 236.1 vs 240.6 tok/s at context 0, fp8 348.7 vs 359.6:
    /// bench/RESULTS.md), so only with CALM_ATT_NEXT=1 or the constructor's attentionPrefetchNext: true.</summary>
    public bool AttentionPrefetchNext { get; }
    /// <summary>With <see cref="Programmatic"/>: the bf16/f16/f32 matvecs (plain, qkv + RoPE, gate_up + activation) issue
    /// each warp's first weight loads before they wait for the previous kernel, so the weights stream while it
    /// finishes (the weights never depend on an earlier kernel). On unless CALM_MV_EARLY=0 or the constructor's
    /// matvecEarly: false. H200, three pairs in two calls: Llama-3-8B bf16 240.3 -> 242.2, 240.3 -> 242.3, 240.2 -> 242.2
    /// tok/s, Llama-3.2-1B 1104.9 -> 1115.6, 1105.3 -> 1115.6, 1104.6 -> 1116.3 (bench/RESULTS.md, 2026-11-29 seventh
    /// session; an earlier session had measured +0.3% / -0.6%, within that day's spread).</summary>
    public bool MatvecEarly { get; }
    /// <summary>The shared-memory carveout (percent) every kernel of the decode step was given (<see
    /// cref="CudaKernel.PreferredCarveout"/>); null: the driver's choice per launch (default). CALM_CARVEOUT=0..100 /
    /// l1 / shared, or the constructor's carveout. Measured much slower on the H200 (Llama-3-8B int4 502.0 tok/s with the
    /// driver's choice, 376.5 with 100, 330.7 with 0; fp8 398.7 / 278.8 / 290.9; bench/RESULTS.md, tenth session): kept
    /// for comparison only.</summary>
    public int? Carveout { get; }
    /// <summary>MoE layers: the FFN norm, the router and the routing in one kernel (<see cref="MoeGate"/>) instead of
    /// RmsNorm + Matvec + MoeRoute. On unless CALM_MOE_GATE=0 or the constructor's moeGate: false. Mixtral-8x7B fp8 on
    /// the H200, same call, two rounds (bench/RESULTS.md, twelfth session): off 243.4 / 243.6 tok/s at context 0, 226.6
    /// / 226.8 at 4096; on 244.1 / 244.2, 227.7 / 227.9 (its first form, without the L2 prefetch of the router and the
    /// norm weights before the wait, had measured neutral).</summary>
    public bool MoeGateFused { get; }
    private int Early => MatvecEarly && Programmatic ? 1 : 0;
    /// <summary>Matvec loads in flight per lane: 0 = the plain kernel (4, as ptxas schedules it), 8 or 16 = the deep
    /// kernels, used for bf16/f16 rows of at least 256*depth columns. Default 16 (CALM_MV_DEEP=0/8 to change):
    /// measured fastest on the H200 for every Llama-3-8B shape (bench/RESULTS.md). With 16, rows of 2048 .. 4095 columns
    /// take 8 (Llama-3.2-1B bf16 on the H200, two same-build pairs: 1190 / 1190 -> 1217 / 1217 tok/s at context 0,
    /// 1078 / 1079 -> 1111 / 1111 at 4096; the plain kernel before).</summary>
    public int MatvecDeep { get; }
    /// <remarks>Rows too short for the depth take the next one down (16 -> 8 for 2048 .. 4095 columns: every lane's
    /// loads still land inside the row).</remarks>
    private string DeepSuffix(DType wt, int cols)
    {
        if (MatvecDeep == 0 || wt == DType.F32 || cols % 8 != 0) return "";
        int depth = cols >= 256 * MatvecDeep ? MatvecDeep : MatvecDeep == 16 && cols >= 256 * 8 ? 8 : 0;
        return depth > 0 ? "_deep" + depth : "";
    }
    private const int SplitStages = 3, SplitThreads = 256;
    private readonly List<CudaModule> _modules = new();
    private readonly Dictionary<string, CudaKernel> _k = new();
    private readonly HashSet<int> _splitSmemSet = new();

    public CudaKernels(CudaContext ctx, int arch, Action<string>? verbose = null, int? attentionBlocksPerSm = null, bool? pdl = null, bool? attentionPipelined = null, int? matvecDeep = null,
                       bool? attentionFp8Wide = null, int? attentionPrefetch = null, bool? matvecEarly = null, bool? foldNorm = null, bool? attentionPrefetchNext = null,
                       int? carveout = null, bool? attentionF16Wide = null, bool? moeGate = null)
    {
        MoeGateFused = moeGate ?? Environment.GetEnvironmentVariable("CALM_MOE_GATE") != "0";
        Carveout = carveout ?? CudaKernel.CarveoutFromEnvironment();
        MatvecEarly = matvecEarly ?? Environment.GetEnvironmentVariable("CALM_MV_EARLY") != "0";
        FoldNorm = foldNorm ?? Environment.GetEnvironmentVariable("CALM_FOLD_NORM") != "0";
        AttentionPrefetchNext = attentionPrefetchNext ?? Environment.GetEnvironmentVariable("CALM_ATT_NEXT") == "1";
        AttentionPrefetch = Math.Clamp(attentionPrefetch ?? (int.TryParse(Environment.GetEnvironmentVariable("CALM_ATT_PREFETCH"), out var apf) ? apf : 0), 0, 8);
        AttentionPipelined = (attentionPipelined ?? Environment.GetEnvironmentVariable("CALM_ATT_ASYNC") == "1") && arch >= 80;
        AttentionFp8Wide = (attentionFp8Wide ?? Environment.GetEnvironmentVariable("CALM_ATT_FP8_WIDE") != "0") && arch >= 80;
        AttentionF16Wide = AttentionF16WideOn(attentionF16Wide, arch);
        MatvecDeep = matvecDeep ?? (Environment.GetEnvironmentVariable("CALM_MV_DEEP") switch { "0" => 0, "8" => 8, _ => 16 });
        if (MatvecDeep is not (0 or 8 or 16)) throw new ArgumentOutOfRangeException(nameof(matvecDeep), "matvec depth must be 0, 8 or 16");
        Context = ctx; Arch = arch;
        Programmatic = (pdl ?? Environment.GetEnvironmentVariable("CALM_PDL") != "0") && arch >= 90 && Cu.HasLaunchKernelEx;
        PrefetchBytes = int.TryParse(Environment.GetEnvironmentVariable("CALM_PDL_PREFETCH"), out var pf) ? Math.Max(pf, 0) : 0;
        AttentionBlocksPerSm = Math.Clamp(attentionBlocksPerSm ?? (int.TryParse(Environment.GetEnvironmentVariable("CALM_ATT_BLOCKS"), out var ab) ? ab : 2), 1, 64);
        Multiprocessors = Math.Max(1, CudaDeviceInfo.List().FirstOrDefault(d => d.Index == ctx.Device)?.Multiprocessors ?? 1);
        try
        {
            foreach (var file in KernelCompiler.Sources.Keys)
            {
                if (file == PersistentSourceFile) continue;   // one variant compiled on demand (CudaBackend.Persistent.cs)
                var img = KernelCompiler.Get(file, arch, verbose);
                var m = new CudaModule(ctx, img.Image, file);
                _modules.Add(m);
            }
            foreach (var name in new[] { "matvec_bf16", "matvec_f16", "matvec_f32", "matvec_bf16_deep8", "matvec_f16_deep8", "matvec_bf16_deep16", "matvec_f16_deep16", "matvec_norm_bf16", "matvec_norm_f16", "matvec_norm_f32", "matvec_norm_bf16_deep8", "matvec_norm_f16_deep8", "matvec_norm_bf16_deep16", "matvec_norm_f16_deep16", "moe_matvec_bf16", "moe_matvec_f16", "moe_matvec_f32",
                                         "matvec_qkv_rope_bf16", "matvec_qkv_rope_f16", "matvec_glu_bf16", "matvec_glu_f16",
                                         "rmsnorm", "qkv_rope_cache", "qkv_rope_cache_fp8", "attention_decode", "attention_decode_fp8", "attention_split_g1", "attention_split_g2", "attention_split_g4", "attention_split_g8", "attention_split_g1_async", "attention_split_g2_async", "attention_split_g4_async", "attention_split_g8_async",
                                         "attention_split_g1_fp8", "attention_split_g2_fp8", "attention_split_g4_fp8", "attention_split_g8_fp8", "attention_split_g1_fp8_async", "attention_split_g2_fp8_async", "attention_split_g4_fp8_async", "attention_split_g8_fp8_async",
                                         "attention_split_g4_fp8w_hd64", "attention_split_g4_fp8w_hd128", "attention_split_g4_fp8w_hd256", "attention_split_g8_fp8w_hd64", "attention_split_g8_fp8w_hd128",
                                         "attention_split_g4_f16w_hd64", "attention_split_g4_f16w_hd128", "attention_split_g8_f16w_hd64", "attention_split_g8_f16w_hd128", "embed_bf16", "embed_f16", "embed_f32", "bw_read", "bw_copy", "gate_act", "add_inplace", "moe_route", "moe_combine", "moe_gate_bf16", "moe_gate_f16", "moe_gate_f32",
                                         "convert_to_f32", "argmax_partial", "argmax_final", "topk_partial", "topk_final", "fill_synthetic", "fill_kv_fp8" })
                _k[name] = Find(name);
            // kernels that call pdl_wait before touching earlier kernels' data (kernels/common.cuh)
            if (Programmatic)
                foreach (var (name, kern) in _k)
                    if (name is not ("bw_read" or "bw_copy" or "fill_synthetic" or "fill_kv_fp8" or "convert_to_f32"))
                        kern.Programmatic = true;
            if (Carveout is int cv)
                foreach (var kern in _k.Values) kern.PreferredCarveout = cv;
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The step's kernels by name (tests).</summary>
    internal IReadOnlyDictionary<string, CudaKernel> Kernels => _k;

    private CudaKernel Find(string name)
    {
        foreach (var m in _modules)
        {
            try { return m.GetKernel(name); }
            catch (CudaException) { }
        }
        throw new InvalidOperationException($"kernel {name} is in none of the compiled modules");
    }

    public static int DTypeCode(DType t) => t switch
    {
        DType.F32 => 0, DType.F16 => 1, DType.BF16 => 2,
        _ => throw new NotSupportedException($"dtype {t} has no CUDA kernel"),
    };

    /// <summary>Kernel name suffix of a weight dtype (bf16/f16, and f32 for float32 checkpoints).</summary>
    private static string Half(DType t) => t switch
    {
        DType.BF16 => "bf16", DType.F16 => "f16", DType.F32 => "f32",
        _ => throw new CalmException(ErrorIds.TensorDTypeUnsupported, CalmErrorKind.NotSupported,
            $"The CUDA backend runs bf16, f16 and f32 weights; this tensor is {DTypes.Name(t)}. Use -Device Cpu."),
    };

    private static int Blocks(long n, int block, int max = 65535) => (int)Math.Clamp((n + block - 1) / block, 1, max);

    /// <summary>Blocks of a <see cref="Matvec"/> over <paramref name="rows"/> rows: the partial sums a folded-norm producer writes.</summary>
    public static int MatvecBlocks(int rows) => Blocks(rows, MatvecBlock / 32, int.MaxValue);
    /// <summary>Blocks of an <see cref="Embed"/> of <paramref name="d"/> elements: the partial sums it writes as a folded-norm producer.</summary>
    public static int EmbedBlocks(int d) => Blocks(d, 256, 1024);

    /// <summary>W [rows, cols] (wt), x [cols] f32 -> y [rows] f32 (+ bias [rows] f32 when nonzero) (+ y when accumulate).
    /// <paramref name="fold"/>: the RMSNorm folded into this matvec (<see cref="NormFold"/>; consumer: x is xg, producer: y
    /// is the residual).</summary>
    public void Matvec(CudaStream s, DType wt, ulong W, ulong x, ulong y, ulong bias, int rows, int cols, bool accumulate, NormFold fold = default)
        => _k["matvec_" + Half(wt) + DeepSuffix(wt, cols)].Launch(s, MatvecBlocks(rows), MatvecBlock, 0, W, x, y, bias, rows, cols, accumulate ? 1 : 0,
            Programmatic ? PrefetchBytes : 0, Early, fold.Gain, fold.Xg, fold.SsOut, fold.SsIn, fold.NIn, fold.Eps, fold.AddOne ? 1 : 0);

    /// <summary>RMSNorm folded into the kernels around it (kernels/common.cuh) for dense models (bf16/f16 here; fp8/int4 in
    /// the tensor-core kernels of CudaQuantKernels, NormFold roles _fc / _fp): the kernel that
    /// writes the residual (embed, the o and down matvecs) also writes x * g and per-block sums of x^2; the next matvec
    /// reads x * g and scales its rows by 1/rms from those sums, so no rmsnorm kernel runs between them. On unless
    /// CALM_FOLD_NORM=0 or the constructor's foldNorm: false.</summary>
    public bool FoldNorm { get; }

    /// <summary>Paired-row matvecs that finish the step after them (RoPE + KV write after qkv, the gated activation after
    /// gate_up) for bf16/f16 weights: two kernels fewer per layer. On unless CALM_FUSE_PAIRS=0.</summary>
    public bool FusePairs { get; } = Environment.GetEnvironmentVariable("CALM_FUSE_PAIRS") != "0";

    /// <summary>qkv [Q | KV | KV] = Wqkv [Q+2KV, D] (wt bf16/f16) x (+ bias); q and k rotated (rotate_half over the whole
    /// head, tables cos/sin [maxCtx, Hd/2]); q left in qkv, k and v written to the layer's fp16 caches [K, maxCtx, Hd]
    /// at the step's position. One warp per rotary pair.</summary>
    public void MatvecQkvRope(CudaStream s, DType wt, ulong W, ulong x, ulong qkv, ulong bias, int H, int K, int Hd, int D,
                              ulong cos, ulong sin, ulong kCache, ulong vCache, int maxCtx, ulong step, NormFold fold = default)
        => _k["matvec_qkv_rope_" + Half(wt)].Launch(s, Blocks((long)(H + 2 * K) * (Hd / 2), MatvecBlock / 32, int.MaxValue), MatvecBlock, 0,
            W, x, qkv, bias, H, K, Hd, D, cos, sin, kCache, vCache, maxCtx, step, Early, fold.SsIn, fold.NIn, fold.Eps);

    /// <summary>h [F] = act(Wgu[i] x + b[i]) * (Wgu[F+i] x + b[F+i]); Wgu [2F, D] (wt bf16/f16), bias [2F] or 0. One warp per i.
    /// <paramref name="fold"/>: a folded-norm consumer (x is xg).</summary>
    public void MatvecGlu(CudaStream s, DType wt, ulong W, ulong x, ulong h, ulong bias, int F, int D, Activation act, NormFold fold = default)
        => _k["matvec_glu_" + Half(wt)].Launch(s, Blocks(F, MatvecBlock / 32, int.MaxValue), MatvecBlock, 0, W, x, h, bias, F, D, (int)act, Early,
            fold.SsIn, fold.NIn, fold.Eps);

    /// <summary>RMSNorm fused into the matvec: y [rows] = W [rows, cols] (x [cols] / rms(x) * (g or 1 + g)) (+ bias) (+ y when
    /// accumulate); g = nw [cols] f32. x must not alias y.</summary>
    public void MatvecNorm(CudaStream s, DType wt, ulong W, ulong x, ulong y, ulong bias, int rows, int cols, bool accumulate, ulong nw, float eps, bool addOne)
        => _k["matvec_norm_" + Half(wt) + DeepSuffix(wt, cols)].Launch(s, Blocks(rows, MatvecBlock / 32, int.MaxValue), MatvecBlock, 0, W, x, y, bias, rows, cols,
            accumulate ? 1 : 0, Programmatic ? PrefetchBytes : 0, nw, eps, addOne ? 1 : 0);

    /// <summary>MoE: for each of <paramref name="slots"/> slots s, y[s] [rows] = experts[idx[s]] [rows, cols] . x[s*xStride ..].
    /// experts: device table of E pointers; idx [slots] int on the device.</summary>
    public void MoeMatvec(CudaStream s, DType wt, ulong experts, ulong idx, ulong x, int xStride, ulong y, int rows, int cols, int slots)
        => _k["moe_matvec_" + Half(wt)].Launch(s, (Blocks(rows, MatvecBlock / 32, int.MaxValue), slots, 1), MatvecBlock, 0, experts, idx, x, xStride, y, rows, cols);

    /// <summary>x [n] f32, w [n] f32 -> out [n] f32 (RMSNorm; gemma: 1 + w).</summary>
    public void RmsNorm(CudaStream s, ulong x, ulong w, ulong outp, int n, float eps, bool addOne)
        => _k["rmsnorm"].Launch(s, 1, 1024, 0, x, w, outp, n, eps, addOne ? 1 : 0);

    /// <summary>qkv [H*Hd | K*Hd | K*Hd] f32: q/k RMSNorm (qNorm/kNorm [Hd] when qkNorm), RoPE with tables
    /// cos/sin [maxCtx, rotDim/2], k and v written at the step's position into this layer's caches [K, maxCtx, Hd] fp16;
    /// with row scales <paramref name="kScale"/>/<paramref name="vScale"/> [K, maxCtx] f32 (both non-zero) the caches
    /// are fp8 e4m3 (kernels/fp8.cuh: scale amax/448 per row).</summary>
    public void QkvRopeCache(CudaStream s, ulong qkv, ulong qNorm, ulong kNorm, bool qkNorm, float eps, bool addOne,
                             ulong cos, ulong sin, int rotDim, ulong kCache, ulong vCache, int maxCtx, int H, int K, int Hd, ulong step,
                             ulong kScale = 0, ulong vScale = 0)
    {
        if (Hd > QkvMaxHeadDim) throw new NotSupportedException($"head_dim {Hd} > {QkvMaxHeadDim}");
        if (kScale != 0 && vScale != 0)
            _k["qkv_rope_cache_fp8"].Launch(s, H + 2 * K, 128, 0, qkv, qNorm, kNorm, qkNorm ? 1 : 0, eps, addOne ? 1 : 0,
                cos, sin, rotDim, kCache, vCache, maxCtx, H, K, Hd, step, kScale, vScale);
        else
            _k["qkv_rope_cache"].Launch(s, H + 2 * K, 128, 0, qkv, qNorm, kNorm, qkNorm ? 1 : 0, eps, addOne ? 1 : 0,
                cos, sin, rotDim, kCache, vCache, maxCtx, H, K, Hd, step);
    }

    /// <summary>Whether the split (flash-decoding) attention kernel takes this shape: head_dim 8·2^i ≤ 256 (Hd/8 lanes
    /// per cache row must divide a warp) and H a multiple of K.</summary>
    public static bool SplitAttentionSupported(int H, int K, int Hd)
        => K > 0 && H % K == 0 && Hd % 8 == 0 && Hd <= SplitAttentionMaxHeadDim && 32 % (Hd / 8) == 0;

    /// <summary>As <see cref="SplitAttentionSupported(int,int,int)"/> for a KV cache of <paramref name="fp8"/> rows
    /// (the pipelined kernel stages whole 16-byte vectors of a row: fp8 also needs head_dim a multiple of 16).</summary>
    public static bool SplitAttentionSupported(int H, int K, int Hd, bool fp8)
        => SplitAttentionSupported(H, K, Hd) && (!fp8 || Hd % 16 == 0);

    /// <summary>Whether the tensor-core fp8 split kernel (<see cref="AttentionFp8Wide"/>) takes this shape: a split-able
    /// fp8 shape with head_dim 64, 128 or 256 (256: at most 4 query heads per kv head).</summary>
    public static bool SplitAttentionFp8WideSupported(int H, int K, int Hd)
        => SplitAttentionSupported(H, K, Hd, true) && (Hd is 64 or 128 || (Hd == 256 && H / K <= 4));

    /// <summary>Whether the tensor-core fp16 split kernel (<see cref="AttentionF16Wide"/>) takes this shape: a split-able
    /// shape with head_dim 64 or 128.</summary>
    public static bool SplitAttentionF16WideSupported(int H, int K, int Hd)
        => SplitAttentionSupported(H, K, Hd) && Hd is 64 or 128;

    /// <summary>Query heads per block (MAXG of the kernel variant) and head groups per kv head (grid z).</summary>
    internal static (int MaxG, int Z) SplitGroups(int H, int K)
    {
        int G = H / K;
        int maxg = G <= 1 ? 1 : G <= 2 ? 2 : G <= 4 ? 4 : 8;
        return (maxg, (G + maxg - 1) / maxg);
    }

    /// <summary>Chunks the sequence is cut into per kv head (grid y): enough blocks for <see cref="AttentionBlocksPerSm"/>
    /// per multiprocessor; fewer are active at short contexts (chunks are ≥ 32 positions).</summary>
    public int AttentionSplits(int H, int K)
    {
        var (_, z) = SplitGroups(H, K);
        long want = (long)AttentionBlocksPerSm * Multiprocessors;
        return (int)Math.Clamp((want + (long)K * z - 1) / ((long)K * z), 1, 256);
    }

    /// <summary>Bytes of the split-attention workspace for this shape (0 when the shape takes the single-block kernel):
    /// pm [H, S] | pl [H, S] | pacc [H, S, Hd] f32 | counters [K*Z] int. Allocate once, zeroed; share across layers.</summary>
    public long AttentionWorkspaceBytes(int H, int K, int Hd)
    {
        if (!SplitAttentionSupported(H, K, Hd)) return 0;
        int S = AttentionSplits(H, K);
        var (_, z) = SplitGroups(H, K);
        return 4L * ((long)H * S * (Hd + 2) + (long)K * z);
    }

    /// <summary>q [H*Hd] f32 against caches [K, maxCtx, Hd] fp16 up to the step's position -> out [H*Hd] f32.
    /// With a <paramref name="workspace"/> of <see cref="AttentionWorkspaceBytes"/> (zeroed at allocation) and a
    /// supported shape: split over the sequence, one block per (kv head, chunk) serving all its query heads; else one
    /// block per query head.</summary>
    /// With row scales <paramref name="kScale"/>/<paramref name="vScale"/> [K, maxCtx] f32 (both non-zero) the caches
    /// are fp8 e4m3 [K, maxCtx, Hd] (kernels/fp8.cuh).
    /// <paramref name="nextWeights"/> / <paramref name="nextBytes"/>: the next kernel's weights, prefetched into L2 by the
    /// split kernel's idle blocks (<see cref="AttentionPrefetchNext"/>).
    public void Attention(CudaStream s, ulong q, ulong kCache, ulong vCache, ulong outp, int H, int K, int Hd, int maxCtx, int window, float scale, ulong step,
                          ulong workspace = 0, ulong kScale = 0, ulong vScale = 0, ulong nextWeights = 0, long nextBytes = 0)
    {
        if (!AttentionPrefetchNext) { nextWeights = 0; nextBytes = 0; }
        if (Hd > AttentionMaxHeadDim) throw new NotSupportedException($"head_dim {Hd} > {AttentionMaxHeadDim}");
        bool fp8 = kScale != 0 && vScale != 0;
        if (fp8)
        {
            if (workspace != 0 && SplitAttentionSupported(H, K, Hd, true))
            {
                var (mg, zz) = SplitGroups(H, K);
                int S8 = AttentionSplits(H, K);
                if (AttentionFp8Wide && SplitAttentionFp8WideSupported(H, K, Hd))
                {
                    // the g4 kernel serves G <= 4 (z = 1, as SplitGroups gives for maxg 1, 2, 4), g8 the rest
                    _k["attention_split_g" + (mg <= 4 ? 4 : 8) + "_fp8w_hd" + Hd].Launch(s, (K, S8, zz), SplitThreads, 0, q, kCache, vCache, outp, workspace,
                        H, K, Hd, maxCtx, window, scale, S8, step, kScale, vScale, AttentionPrefetch, nextWeights, nextBytes);
                    return;
                }
                if (AttentionPipelined)
                {
                    int u = mg == 8 ? 2 : 4;
                    int smem = SplitStages * 2 * SplitThreads * u * 16;   // the fp16 size: fp8 stages use half of it
                    var kern = _k["attention_split_g" + mg + "_fp8_async"];
                    if (_splitSmemSet.Add(100 + mg)) kern.SetMaxDynamicSharedMemory(smem);
                    kern.Launch(s, (K, S8, zz), SplitThreads, smem, q, kCache, vCache, outp, workspace, H, K, Hd, maxCtx, window, scale, S8, step, kScale, vScale);
                    return;
                }
                _k["attention_split_g" + mg + "_fp8"].Launch(s, (K, S8, zz), SplitThreads, 0, q, kCache, vCache, outp, workspace, H, K, Hd, maxCtx, window, scale, S8, step, kScale, vScale, AttentionPrefetch, nextWeights, nextBytes);
                return;
            }
            _k["attention_decode_fp8"].Launch(s, H, 256, 0, q, kCache, vCache, outp, H, K, Hd, maxCtx, window, scale, step, kScale, vScale);
            return;
        }
        if (workspace != 0 && SplitAttentionSupported(H, K, Hd))
        {
            var (maxg, z) = SplitGroups(H, K);
            int S = AttentionSplits(H, K);
            if (AttentionF16Wide && SplitAttentionF16WideSupported(H, K, Hd))
            {
                _k["attention_split_g" + (maxg <= 4 ? 4 : 8) + "_f16w_hd" + Hd].Launch(s, (K, S, z), SplitThreads, 0, q, kCache, vCache, outp, workspace,
                    H, K, Hd, maxCtx, window, scale, S, step, AttentionPrefetch, nextWeights, nextBytes);
                return;
            }
            if (AttentionPipelined)
            {
                // dynamic shared memory: SplitStages x (K, V) x 256*U 16-byte vectors (U = 4 rows per stream, 2 for g8)
                int u = maxg == 8 ? 2 : 4;
                int smem = SplitStages * 2 * SplitThreads * u * 16;
                var kern = _k["attention_split_g" + maxg + "_async"];
                if (_splitSmemSet.Add(maxg)) kern.SetMaxDynamicSharedMemory(smem);   // static + dynamic may pass 48 KB
                kern.Launch(s, (K, S, z), SplitThreads, smem, q, kCache, vCache, outp, workspace, H, K, Hd, maxCtx, window, scale, S, step);
                return;
            }
            _k["attention_split_g" + maxg].Launch(s, (K, S, z), SplitThreads, 0, q, kCache, vCache, outp, workspace, H, K, Hd, maxCtx, window, scale, S, step, AttentionPrefetch, nextWeights, nextBytes);
            return;
        }
        _k["attention_decode"].Launch(s, H, 256, 0, q, kCache, vCache, outp, H, K, Hd, maxCtx, window, scale, step);
    }

    /// <summary>table [V, D] (wt) row of the step's token * scale -> out [D] f32.</summary>
    public void Embed(CudaStream s, DType wt, ulong table, ulong outp, int D, float scale, ulong step, NormFold fold = default)
        => _k["embed_" + Half(wt)].Launch(s, EmbedBlocks(D), 256, 0, table, outp, D, scale, step, fold.Gain, fold.Xg, fold.SsOut, fold.AddOne ? 1 : 0);

    /// <summary>gu [slots, 2F] = [gate|up] -> h [slots, F] = act(gate) * up.</summary>
    public void GateAct(CudaStream s, ulong gu, ulong h, int F, int slots, Activation act)
        => _k["gate_act"].Launch(s, Blocks((long)F * slots, 256, 4096), 256, 0, gu, h, F, slots, (int)act);

    /// <summary>y [n] += x [n].</summary>
    public void Add(CudaStream s, ulong y, ulong x, int n) => _k["add_inplace"].Launch(s, Blocks(n, 256, 4096), 256, 0, y, x, n);

    /// <summary>logits [E] -> idx [k] int, weight [k] f32 (softmax over E, top k, renormalised).</summary>
    public void MoeRoute(CudaStream s, ulong logits, int E, int k, ulong idx, ulong weight)
    {
        CheckExperts(E);
        _k["moe_route"].Launch(s, 1, 32, 0, logits, E, k, idx, weight);
    }

    /// <summary>The gate of a MoE layer in one kernel (kernels/elementwise.cu, moe_gate_*): xn [D] = RMSNorm(x) * g (the
    /// <see cref="RmsNorm"/> arithmetic), logits [E] = router [E, D] (<paramref name="routerDt"/>) . xn, then
    /// <see cref="MoeRoute"/>'s idx [k] and weight [k]. Replaces RmsNorm + Matvec + MoeRoute (<see cref="MoeGateFused"/>).</summary>
    public void MoeGate(CudaStream s, DType routerDt, ulong router, ulong x, ulong g, float eps, bool addOne, ulong xn, ulong logits, int E, int D, int k, ulong idx, ulong weight)
    {
        CheckExperts(E);
        _k["moe_gate_" + Half(routerDt)].Launch(s, 1, MoeGateThreads, 0, x, g, eps, addOne ? 1 : 0, router, E, D, k, xn, logits, idx, weight);
    }

    /// <summary>Experts the routing kernels take (their shared scratch: 1024 floats, kernels/elementwise.cu).</summary>
    public const int MaxExperts = 1024;
    private static void CheckExperts(int E)
    {
        if (E > MaxExperts) throw new NotSupportedException($"{E} experts > {MaxExperts}");
    }

    /// <summary>Threads of the moe_gate block (MOE_GATE_THREADS in kernels/elementwise.cu).</summary>
    public const int MoeGateThreads = 1024;

    /// <summary>x [D] += sum_s weight[s] * eo [s, D].</summary>
    public void MoeCombine(CudaStream s, ulong x, ulong eo, ulong weight, int k, int D)
        => _k["moe_combine"].Launch(s, Blocks(D, 256, 4096), 256, 0, x, eo, weight, k, D);

    /// <summary>src [n] (bf16/f16) -> dst [n] f32.</summary>
    public void ConvertToF32(CudaStream s, DType t, ulong src, ulong dst, long n)
        => _k["convert_to_f32"].Launch(s, Blocks(n, 256, 8192), 256, 0, src, dst, n, DTypeCode(t));

    /// <summary>x [n] f32 -> result [2 ints]: index of the largest (lowest index on ties), its value's bits.
    /// partV/partI: scratch of <see cref="ArgmaxBlocks"/> floats / ints.</summary>
    public void Argmax(CudaStream s, ulong x, int n, ulong partV, ulong partI, ulong result)
    {
        _k["argmax_partial"].Launch(s, ArgmaxBlocks, 256, 0, x, n, partV, partI);
        _k["argmax_final"].Launch(s, 1, 32, 0, partV, partI, ArgmaxBlocks, result);
    }

    /// <summary>Blocks of top-k stage 1 for n logits (the scratch is TopKBlocks(n) * k floats and ints).</summary>
    public static int TopKBlocks(int n) => (n + TopKChunk - 1) / TopKChunk;

    /// <summary>x [n] f32 -> outV [k] f32, outI [k] int in descending order (ties: lower index). k ≤ <see cref="MaxTopK"/>.</summary>
    public void TopK(CudaStream s, ulong x, int n, int k, ulong candV, ulong candI, ulong outV, ulong outI)
    {
        if (k < 1 || k > MaxTopK) throw new ArgumentOutOfRangeException(nameof(k), $"GPU top-k needs 1 ≤ k ≤ {MaxTopK}");
        int blocks = TopKBlocks(n);
        _k["topk_partial"].Launch(s, blocks, 256, TopKChunk * 8, x, n, TopKChunk, k, candV, candI);
        int m = blocks * k;
        int shared = m * 8;
        if (shared > 48 * 1024)
            _k["topk_final"].SetMaxDynamicSharedMemory(shared);
        _k["topk_final"].Launch(s, 1, 1024, shared, candV, candI, m, k, outV, outI);
    }

    /// <summary>out [count] of <paramref name="dtype"/> (or f32 after rounding to dtype when asF32) with the
    /// synthetic generator's values for key = <see cref="SyntheticHash.Key"/>(seed, name).</summary>
    public void FillSynthetic(CudaStream s, ulong outp, long count, ulong key, float scale, float offset, DType dtype, bool asF32)
        => _k["fill_synthetic"].Launch(s, Blocks(count, 256, 8192), 256, 0, outp, count, key, scale, offset, DTypeCode(dtype), asF32 ? 1 : 0);

    /// <summary>out [count] e4m3 bytes = e4m3(448 x) of the synthetic values x in (-1, 1) of <paramref name="key"/> (benchmark KV fill).</summary>
    public void FillKvFp8(CudaStream s, ulong outp, long count, ulong key)
        => _k["fill_kv_fp8"].Launch(s, Blocks(count, 256, 8192), 256, 0, outp, count, key);

    /// <summary>
    /// A device-only synthetic weight [rows, cols] made already quantized (kernels/quantize.cu): the generator's values
    /// for <paramref name="key"/> rounded to <paramref name="source"/>, quantized to <paramref name="target"/> (fp8: values
    /// [rows, cols] bytes + fp32 scales [rows]; int4: values [rows, ceil(cols/32)*16] + fp16 scales [rows, ceil(cols/32)]),
    /// byte for byte what <see cref="Quant.Quantizer"/> makes of the host generator's tensor.
    /// </summary>
    public void QuantizeSynthetic(CudaStream s, DType target, ulong values, ulong scales, long rows, int cols, ulong key, float scale, float offset, DType source)
    {
        if (rows <= 0 || cols <= 0) return;
        string name = target switch
        {
            DType.F8E4M3 => "quantize_synthetic_fp8",
            DType.Int4 => "quantize_synthetic_int4",
            _ => throw new ArgumentException($"{target} is not quantized", nameof(target)),
        };
        if (!_k.TryGetValue(name, out var kern)) _k[name] = kern = Find(name);
        long cap = 16L * Multiprocessors;
        int grid = target == DType.F8E4M3
            ? (int)Math.Clamp(rows, 1, cap)                                                          // a block per row
            : (int)Math.Clamp((rows * Quant.QuantFormats.Int4Groups(cols) + 7) / 8, 1, cap);        // a warp per group
        kern.Launch(s, grid, 256, 0, values, scales, rows, cols, key, scale, offset, DTypeCode(source));
    }

    /// <summary>Streaming read of n 16-byte vectors at <paramref name="src"/>; each warp's xor of what it read goes to
    /// out [blocks * 256 / 32] u32 (so the loads stay).</summary>
    public void BandwidthRead(CudaStream s, ulong src, long vectors, ulong outp, int blocks)
        => _k["bw_read"].Launch(s, blocks, 256, 0, src, vectors, outp);

    /// <summary>dst [n] = src [n] in 16-byte vectors.</summary>
    public void BandwidthCopy(CudaStream s, ulong src, ulong dst, long vectors, int blocks)
        => _k["bw_copy"].Launch(s, blocks, 256, 0, src, dst, vectors);

    public void Dispose()
    {
        foreach (var m in _modules) m.Dispose();
        _modules.Clear();
        _k.Clear();
    }
}

/// <summary>The RMSNorm folded into the kernels around it (<see cref="CudaKernels.FoldNorm"/>; kernels/common.cuh). A
/// producer (the kernel writing the residual x) gets <see cref="Gain"/> g [n] f32, <see cref="Xg"/> [n] f32 (it writes
/// x * (g or 1 + g) there) and <see cref="SsOut"/> (one partial sum of x^2 per block); a consumer (the next matvec, whose
/// input is that xg) gets <see cref="SsIn"/>, the producer's block count <see cref="NIn"/> and <see cref="Eps"/>.
/// default: no folding.</summary>
public readonly record struct NormFold(ulong Gain, ulong Xg, ulong SsOut, ulong SsIn, int NIn, float Eps, bool AddOne)
{
    public static NormFold Producer(ulong gain, ulong xg, ulong ssOut, bool addOne) => new(gain, xg, ssOut, 0, 0, 0f, addOne);
    public static NormFold Consumer(ulong ssIn, int nIn, float eps) => new(0, 0, 0, ssIn, nIn, eps, false);
}
