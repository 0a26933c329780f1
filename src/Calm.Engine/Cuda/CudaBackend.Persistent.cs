using System.Runtime.InteropServices;
using Calm.Engine.Model;
using Calm.Engine.Session;

namespace Calm.Engine.Cuda;

/// <summary>
/// The persistent decode path (kernels/decode_persistent.cu): one cooperative kernel per token runs every stage with
/// grid-wide barriers, each warp issuing its next stage's first weight loads before it waits, so the memory stream does
/// not stop between stages. Dense models with rotary on the whole head and no q/k norm, in bf16/f16/fp8/int4; anything
/// else (or CALM_DECODE=graph) decodes with the captured per-kernel graph.
/// </summary>
public sealed unsafe partial class CudaBackend
{
    /// <summary>"persistent" (one cooperative kernel per step) or "graph" (the captured per-kernel step).</summary>
    public string DecodeMode => _pdk is not null && _pOn ? "persistent" : "graph";
    /// <summary>Whether decode steps run the persistent kernel (settable when it was set up: benchmarks compare both
    /// paths on one model; the graph is always captured).</summary>
    public bool PersistentEnabled
    {
        get => _pdk is not null && _pOn;
        set
        {
            if (value && _pdk is null)
                throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                    $"The persistent decode kernel is not set up for this model ({PersistentUnavailableReason ?? "graph decode was asked for"}).", "PersistentEnabled");
            _pOn = value;
        }
    }
    private bool _pOn = true;
    /// <summary>Why the persistent kernel is not used (null when it is, or when the graph was asked for).</summary>
    public string? PersistentUnavailableReason { get; private set; }

    private CudaModule? _pmod;
    private CudaKernel? _pdk;
    private int _pGrid, _pSmem;
    private ulong _pArgs, _pSync, _pStamps;
    private CudaDeviceMemory? _pStampsMem;

    // field order and sizes match struct PLayer / PArgs in kernels/decode_persistent.cu
    [StructLayout(LayoutKind.Sequential)]
    private struct PLayerHost
    {
        public ulong AttnNorm, FfnNorm, Wqkv, Sqkv, Bqkv, Wo, So, Bo, Wgu, Sgu, Bgu, Wdown, Sdown, Bdown;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct PArgsHost
    {
        public ulong Layers, Emb, Lm, LmScales, FinalNorm, X, Q, Att, H, Logits, KCache, VCache, Cos, Sin, AttWs, Sync,
                     AmaxV, AmaxI, Result, Stamps, Sp;
        public int L, D, Heads, K, Hd, F, V, MaxCtx, Window, S, EmbDt, AddOne, Act;
        public float Eps, AttScale, EmbScale;
    }

    private const int PersistentThreads = 256;   // PF_THREADS

    /// <summary>The persistent kernel's format code, rows per warp outside the pairs, and weights per 16-byte vector.</summary>
    private static (int Code, int Rs, int E)? PersistentFormat(DType t) => t switch
    {
        DType.BF16 => (2, 1, 8),
        DType.F16 => (1, 1, 8),
        DType.F8E4M3 => (10, 2, 16),
        DType.Int4 => (11, 4, 32),   // PF_NV (16) / rows: a 4096-column row is 16, 8 or 4 vectors per lane
        _ => null,
    };

    /// <summary>Null when the persistent kernel runs this model, else why not.</summary>
    private string? PersistentUnsupported()
    {
        var c = Config;
        if (_kvFp8) return "an fp8 KV cache (its fused KV write and attention are fp16)";
        if (c.IsMoE) return "mixture-of-experts layers";
        if (c.QkNorm) return "q/k norms";
        if (c.RotaryDim != c.HeadDim) return "partial rotary embeddings";
        if (!CudaKernels.SplitAttentionSupported(c.NumHeads, c.NumKvHeads, c.HeadDim) || _attWs == 0) return $"head_dim {c.HeadDim} with {c.NumHeads}/{c.NumKvHeads} heads (no split attention)";
        if (PersistentFormat(_wt) is not { } f) return $"{DTypes.Name(_wt)} weights";
        if (TileOrder && _wt == DType.Int4) return "int4 matrices in the tensor-core tile order (set when the persistent kernel was not asked for at load)";
        if (_lmDt != _wt) return $"a {DTypes.Name(_lmDt)} classifier with {DTypes.Name(_wt)} layers";
        if (_embDt is not (DType.BF16 or DType.F16 or DType.F32)) return $"a {DTypes.Name(_embDt)} embedding";
        // whole 16-byte vectors per row, 16-byte x loads; int4: whole 16-byte pieces of 8 group scales (cols % 256)
        int align = _wt == DType.Int4 ? 256 : Math.Min(f.E, 16);
        if (c.HiddenSize % align != 0 || c.QDim % align != 0 || c.IntermediateSize % align != 0)
            return $"dimensions that are not multiples of {align} ({c.HiddenSize}, {c.QDim}, {c.IntermediateSize})";
        if (!Cu.HasLaunchKernelEx) return "a driver without cuLaunchKernelEx (cooperative launch)";
        if (Device.Arch < 70) return $"compute capability {Device.Arch / 10}.{Device.Arch % 10}";
        return null;
    }

    /// <summary>Sets up the persistent kernel when asked for (the decode argument, else CALM_DECODE, else
    /// <see cref="DefaultDecode"/>) and possible; else leaves the graph path. Called after the weights and state are on the device.</summary>
    private void SetUpPersistent(string? decode, Action<string>? verbose)
    {
        var want = decode ?? Environment.GetEnvironmentVariable("CALM_DECODE") ?? DefaultDecode;
        if (want is not ("persistent" or "graph"))
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Decode mode must be 'persistent' or 'graph' (got '{want}').", "CALM_DECODE");
        if (want == "graph") return;
        var why = PersistentUnsupported();
        if (why is not null)
        {
            PersistentUnavailableReason = why;
            verbose?.Invoke($"Decode: per-kernel graph (the persistent kernel does not take {why})");
            return;
        }
        var c = Config;
        var f = PersistentFormat(_wt)!.Value;
        var (maxg, groups) = CudaKernels.SplitGroups(c.NumHeads, c.NumKvHeads);
        var img = KernelCompiler.Get(CudaKernels.PersistentSourceFile, Device.Arch, verbose, defines: new[] { $"PF_WF={f.Code}", $"PF_G={maxg}", $"PF_RS={f.Rs}" });
        _pmod = new CudaModule(_ctx, img.Image, CudaKernels.PersistentSourceFile);
        var k = _pmod.GetKernel("decode_persistent");
        int chunk = 32 * f.E;
        int widest = Math.Max(c.HiddenSize, Math.Max(c.QDim, c.IntermediateSize));
        // stage input (permuted x, whole chunks) + the weight ring: 8 warps x PF_NSLOT (2) x 8 KB (+ int4 scales 1 KB a slot)
        _pSmem = (widest + chunk - 1) / chunk * chunk * 4 + 8 * 2 * 8192 + (_wt == DType.Int4 ? 8 * 2 * 1024 : 0);
        k.SetMaxDynamicSharedMemory(_pSmem);   // static + dynamic may pass 48 KB
        int perSm = Math.Min(1, k.MaxActiveBlocksPerMultiprocessor(PersistentThreads, _pSmem));   // 255 registers: one per SM
        if (perSm < 1)
        {
            PersistentUnavailableReason = $"{_pSmem:N0} bytes of shared memory per block (no block fits a multiprocessor)";
            verbose?.Invoke($"Decode: per-kernel graph (the persistent kernel needs {PersistentUnavailableReason})");
            _pmod.Dispose(); _pmod = null;
            return;
        }
        _pGrid = perSm * Device.Multiprocessors;
        ulong F(long n, string what) { var m = Alloc(Math.Max(n, 1) * 4, what); m.Zero(); return m.Ptr; }
        _pSync = F(4, "persistent barrier");
        ulong amaxV = F(_pGrid, "persistent argmax values"), amaxI = F(_pGrid, "persistent argmax ids");
        _pStampsMem = Alloc((3L + 5L * c.NumLayers) * 8, "persistent stage stamps");
        _pStampsMem.Zero();
        _pStamps = _pStampsMem.Ptr;
        var layers = new PLayerHost[c.NumLayers];
        ulong Sc(ulong w) => _scaleOf.TryGetValue(w, out var s) ? s : 0;
        for (int i = 0; i < c.NumLayers; i++)
        {
            var L = _layers[i];
            layers[i] = new PLayerHost
            {
                AttnNorm = L.AttnNorm, FfnNorm = L.FfnNorm,
                Wqkv = L.Wqkv, Sqkv = Sc(L.Wqkv), Bqkv = L.Bqkv,
                Wo = L.Wo, So = Sc(L.Wo), Bo = L.Bo,
                Wgu = L.Wgu, Sgu = Sc(L.Wgu), Bgu = L.Bgu,
                Wdown = L.Wdown, Sdown = Sc(L.Wdown), Bdown = L.Bdown,
            };
        }
        var lm = Alloc((long)c.NumLayers * sizeof(PLayerHost), "persistent layer table");
        lm.CopyFromHost<PLayerHost>(layers);
        var args = new PArgsHost
        {
            Layers = lm.Ptr, Emb = _emb, Lm = _lm, LmScales = Sc(_lm), FinalNorm = _finalNorm,
            X = _x, Q = _qkv, Att = _att, H = _h, Logits = _logits, KCache = _kCache, VCache = _vCache, Cos = _cos, Sin = _sin,
            AttWs = _attWs, Sync = _pSync, AmaxV = amaxV, AmaxI = amaxI, Result = _result, Stamps = _pStamps, Sp = _step,
            L = c.NumLayers, D = c.HiddenSize, Heads = c.NumHeads, K = c.NumKvHeads, Hd = c.HeadDim, F = c.IntermediateSize,
            V = c.VocabSize, MaxCtx = MaxContext, Window = c.SlidingWindow ?? 0,
            // chunks per kv head: one work item per block (the workspace is sized for AttentionSplits, never fewer)
            S = Math.Max(1, Math.Min(_k!.AttentionSplits(c.NumHeads, c.NumKvHeads), _pGrid / (c.NumKvHeads * groups))),
            EmbDt = CudaKernels.DTypeCode(_embDt), AddOne = c.NormAddOne ? 1 : 0, Act = (int)c.HiddenAct,
            Eps = (float)c.RmsNormEps, AttScale = 1f / MathF.Sqrt(c.HeadDim), EmbScale = c.ScaleEmbeddings ? MathF.Sqrt(c.HiddenSize) : 1f,
        };
        var am = Alloc(sizeof(PArgsHost), "persistent arguments");
        am.CopyFromHost<PArgsHost>(new[] { args });
        _pArgs = am.Ptr;
        _pdk = k;
        verbose?.Invoke($"Decode: persistent kernel ({DTypes.Name(_wt)}, {_pGrid} blocks = {perSm} per SM x {Device.Multiprocessors}, {_pSmem:N0} bytes of shared memory each)");
    }

    /// <summary>Default decode mode when neither the constructor nor CALM_DECODE says.</summary>
    public const string DefaultDecode = "graph";

    /// <summary>Enqueues one decode step (the step params already copied): the persistent kernel or the graph.</summary>
    private void LaunchStep(CudaStream s)
    {
        if (_pdk is not null && _pOn) _pdk.LaunchCooperative(s, _pGrid, PersistentThreads, _pSmem, _pArgs);
        else _graph!.Launch(s);
    }

    /// <summary>Per-stage milliseconds of the last persistent step (barrier to barrier as block 0 saw them, summed over
    /// the layers): AttentionProjections (qkv with RoPE and the KV write, o), Attention, Ffn, Classifier (with argmax),
    /// Other (the embedding). Stream must be idle.</summary>
    private Dictionary<string, double> PersistentStageMs()
    {
        int L = Config.NumLayers;
        var t = new long[3 + 5 * L];
        _pStampsMem!.CopyToHost<long>(t);
        double Ms(int a, int b) => (t[b] - t[a]) / 1e6;
        var r = new Dictionary<string, double>
        {
            [Stages.Other] = Ms(0, 1), [Stages.AttentionProjections] = 0, [Stages.Attention] = 0, [Stages.Ffn] = 0,
            [Stages.Classifier] = Ms(1 + 5 * L, 2 + 5 * L),
        };
        for (int l = 0; l < L; l++)
        {
            int b = 1 + 5 * l;   // stamp before stage A of layer l
            r[Stages.AttentionProjections] += Ms(b, b + 1) + Ms(b + 2, b + 3);
            r[Stages.Attention] += Ms(b + 1, b + 2);
            r[Stages.Ffn] += Ms(b + 3, b + 4) + Ms(b + 4, b + 5);
        }
        return r;
    }

    private void DisposePersistent()
    {
        _pdk = null;
        _pmod?.Dispose();
        _pmod = null;
    }
}
