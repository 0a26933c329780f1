using Calm.Engine.Model;

namespace Calm.Engine.Cuda;

/// <summary>
/// Launchers of the batched (prefill) kernels: kernels/gemm.cu (tensor-core GEMM, row-wise embed / norm / gating) and
/// kernels/prefill_attention.cu (per-row q/k norm + RoPE + KV write, causal attention of T queries). Shapes in the
/// comments match the .cu files. Needs sm_80+ (mma.sync, cp.async, ldmatrix).
/// </summary>
public sealed class CudaPrefillKernels : IDisposable
{
    public const int GemmTileN = 128, GemmTileK = 32, GemmThreads = 256, GemmStages = 3;
    /// <summary>Dynamic shared memory of the GEMM with <paramref name="tileRows"/> (64 or 128) rows of X per block and
    /// a k depth of <paramref name="depth"/> (32 or 64) per stage: stages x (A + B tiles) x (depth + 8) halves per row.</summary>
    public static int GemmSharedBytes(int tileRows, int depth = GemmTileK) => GemmStages * (tileRows + GemmTileN) * (depth + 8) * 2;
    /// <summary>k depth of a GEMM stage when the call does not say: 32 (CALM_GEMM_K=64 for 64; the prefill bench times both).</summary>
    public int GemmDepth { get; }
    /// <summary>Multiprocessors of the device (picks the GEMM tile height).</summary>
    public int Multiprocessors { get; }
    public const int AttentionQueryTile = 16, AttentionKeyChunk = 32, AttentionThreads = 128, AttentionMaxHeadDim = 256;
    public const int QkvMaxHeadDim = 1024;

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
        GemmDepth = gemmDepth ?? (Environment.GetEnvironmentVariable("CALM_GEMM_K") == "64" ? 64 : 32);
        if (GemmDepth is not (32 or 64)) throw new ArgumentOutOfRangeException(nameof(gemmDepth), "GEMM depth is 32 or 64");
        if (!Supported(arch)) throw new NotSupportedException($"the prefill kernels need sm_80 or newer (this device is sm_{arch})");
        Arch = arch;
        Multiprocessors = Math.Max(1, CudaDeviceInfo.List().FirstOrDefault(d => d.Index == ctx.Device)?.Multiprocessors ?? 1);
        try
        {
            foreach (var file in new[] { "gemm.cu", "prefill_attention.cu" })
                _modules.Add(new CudaModule(ctx, KernelCompiler.Get(file, arch, verbose).Image, file));
            foreach (var name in new[] { "gemm_bf16", "gemm_f16", "gemm_bf16_m64", "gemm_f16_m64", "gemm_bf16_k64", "gemm_f16_k64", "gemm_bf16_m64_k64", "gemm_f16_m64_k64", "embed_rows", "rmsnorm_rows", "gate_act_rows" })
                _k[name] = _modules[0].GetKernel(name);
            foreach (var name in new[] { "qkv_rope_rows", "attention_prefill", "qkv_rope_rows_fp8", "attention_prefill_fp8" })
                _k[name] = _modules[1].GetKernel(name);
            foreach (var h in new[] { "bf16", "f16" })
            {
                _k["gemm_" + h].SetMaxDynamicSharedMemory(GemmSharedBytes(128));
                _k["gemm_" + h + "_m64"].SetMaxDynamicSharedMemory(GemmSharedBytes(64));
                _k["gemm_" + h + "_k64"].SetMaxDynamicSharedMemory(GemmSharedBytes(128, 64));
                _k["gemm_" + h + "_m64_k64"].SetMaxDynamicSharedMemory(GemmSharedBytes(64, 64));
            }
            _k["attention_prefill"].SetMaxDynamicSharedMemory(AttentionSharedBytes(AttentionMaxHeadDim));
            _k["attention_prefill_fp8"].SetMaxDynamicSharedMemory(AttentionSharedBytes(AttentionMaxHeadDim));
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    private static string Half(DType t) => t switch
    {
        DType.BF16 => "bf16", DType.F16 => "f16",
        _ => throw new NotSupportedException($"the tensor-core GEMM takes bf16 or f16 operands, not {t}"),
    };

    /// <summary>Rows of X per block for a T x N product: 128 when that still gives two blocks per multiprocessor, else 64.</summary>
    public int GemmTileRows(int T, int N)
        => (long)((T + 127) / 128) * ((N + GemmTileN - 1) / GemmTileN) >= 2L * Multiprocessors ? 128 : 64;

    /// <summary>Y [T, N] f32 = X [T, K] f16 . W [N, K]^T (wt: bf16 or f16, converted to f16 in shared memory) (+ bias [N]
    /// f32 when nonzero) (+ Y when accumulate). The activations are f16 whatever the weights: bf16 activations cost ~8x
    /// the rounding error (kernels/gemm.cu).
    /// K % 8 == 0; X and W 16-byte aligned. tileRows: 64 or 128 rows of X per block (0: <see cref="GemmTileRows"/>);
    /// depth: 32 or 64 columns of K per stage (0: <see cref="GemmDepth"/>).</summary>
    public void Gemm(CudaStream s, DType wt, ulong X, ulong W, ulong Y, ulong bias, int T, int N, int K, bool accumulate, int tileRows = 0, int depth = 0)
    {
        if (tileRows == 0) tileRows = GemmTileRows(T, N);
        if (depth == 0) depth = GemmDepth;
        if (tileRows is not (64 or 128)) throw new ArgumentOutOfRangeException(nameof(tileRows), "GEMM tiles are 64 or 128 rows");
        if (depth is not (32 or 64)) throw new ArgumentOutOfRangeException(nameof(depth), "GEMM depth is 32 or 64");
        if (GemmUnsupported(K) is { } why) throw new NotSupportedException(why);
        if (T <= 0 || N <= 0) throw new ArgumentOutOfRangeException(nameof(T), $"empty GEMM {T}x{N}");
        if (((X | W) & 15) != 0) throw new ArgumentException("GEMM operands must be 16-byte aligned");
        _k["gemm_" + Half(wt) + (tileRows == 64 ? "_m64" : "") + (depth == 64 ? "_k64" : "")].Launch(s, ((N + GemmTileN - 1) / GemmTileN, (T + tileRows - 1) / tileRows, 1),
            GemmThreads, GemmSharedBytes(tileRows, depth),
            X, W, Y, bias, T, N, K, accumulate ? 1 : 0);
    }

    /// <summary>tokens [T] int (device), table [V, D] (tdt) -> x [T, D] f32 = table[token] * scale.</summary>
    public void EmbedRows(CudaStream s, ulong tokens, ulong table, DType tdt, ulong x, int T, int D, float scale)
        => _k["embed_rows"].Launch(s, ((D + 255) / 256, T, 1), 256, 0, tokens, table, CudaKernels.DTypeCode(tdt), x, D, scale);

    /// <summary>x [T, n] f32, w [n] f32 -> out [T, n] (odt bf16/f16; f16 saturates at ±65504) = RMSNorm of each row (gemma: 1 + w).</summary>
    public void RmsNormRows(CudaStream s, ulong x, ulong w, ulong outp, int T, int n, float eps, bool addOne, DType odt)
        => _k["rmsnorm_rows"].Launch(s, T, 256, 0, x, w, outp, n, eps, addOne ? 1 : 0, CudaKernels.DTypeCode(odt));

    /// <summary>gu [T, 2F] f32 = [gate | up] -> h [T, F] (odt; f16 saturates at ±65504) = act(gate) * up.</summary>
    public void GateActRows(CudaStream s, ulong gu, ulong h, int F, int T, Activation act, DType odt)
        => _k["gate_act_rows"].Launch(s, (int)Math.Clamp(((long)F * T + 255) / 256, 1, 65535), 256, 0, gu, h, F, T, (int)act, CudaKernels.DTypeCode(odt));

    /// <summary>qkv [T, (H+2K)*Hd] f32: per row t (position start+t) q/k RMSNorm (when qkNorm), RoPE (cos/sin [maxCtx, rotDim/2]),
    /// q written back, k and v into this layer's caches [K, maxCtx, Hd] fp16.</summary>
    public void QkvRopeRows(CudaStream s, ulong qkv, ulong qNorm, ulong kNorm, bool qkNorm, float eps, bool addOne,
                            ulong cos, ulong sin, int rotDim, ulong kCache, ulong vCache, int maxCtx, int H, int K, int Hd, int T, int start,
                            ulong kScale = 0, ulong vScale = 0)
    {
        if (Hd > QkvMaxHeadDim) throw new NotSupportedException($"head_dim {Hd} > {QkvMaxHeadDim}");
        if (kScale != 0 && vScale != 0)
        {
            _k["qkv_rope_rows_fp8"].Launch(s, (H + 2 * K, T, 1), 128, 0, qkv, (H + 2 * K) * Hd, qNorm, kNorm, qkNorm ? 1 : 0, eps, addOne ? 1 : 0,
                cos, sin, rotDim, kCache, vCache, maxCtx, H, K, Hd, start, kScale, vScale);
            return;
        }
        _k["qkv_rope_rows"].Launch(s, (H + 2 * K, T, 1), 128, 0, qkv, (H + 2 * K) * Hd, qNorm, kNorm, qkNorm ? 1 : 0, eps, addOne ? 1 : 0,
            cos, sin, rotDim, kCache, vCache, maxCtx, H, K, Hd, start);
    }

    /// <summary>Dynamic shared memory of prefill attention for head_dim <paramref name="hd"/>.</summary>
    public static int AttentionSharedBytes(int hd) => AttentionQueryTile * hd * 4 + AttentionKeyChunk * (hd / 2 + 1) * 4 + AttentionKeyChunk * (hd / 2) * 4;

    /// <summary>Causal attention: queries at q + t*ld + h*Hd (f32, t &lt; T, position start+t) against the caches
    /// [K, maxCtx, Hd] fp16 (positions 0 .. start+T-1 written) -> out [T, H*Hd] (odt). window 0: none.</summary>
    public void AttentionPrefill(CudaStream s, ulong q, int ld, ulong kCache, ulong vCache, ulong outp, int T, int start,
                                 int H, int K, int Hd, int maxCtx, int window, float scale, DType odt, ulong kScale = 0, ulong vScale = 0)
    {
        if (AttentionUnsupported(H, K, Hd) is { } why) throw new NotSupportedException(why);
        if (kScale != 0 && vScale != 0)
        {
            _k["attention_prefill_fp8"].Launch(s, ((T + AttentionQueryTile - 1) / AttentionQueryTile, H, 1), AttentionThreads, AttentionSharedBytes(Hd),
                q, ld, kCache, vCache, outp, T, start, H, K, Hd, maxCtx, window, scale, CudaKernels.DTypeCode(odt), kScale, vScale);
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
