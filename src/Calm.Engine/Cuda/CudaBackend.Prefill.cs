using System.Diagnostics;
using Calm.Engine.Model;

namespace Calm.Engine.Cuda;

/// <summary>
/// Batched prefill: a Forward of more than one token runs the layer stack once over chunks of up to
/// <see cref="PrefillChunk"/> rows (tensor-core GEMMs for the projections, prefill attention against the KV cache)
/// instead of one decode graph launch per token. Taken for dense models with bf16/f16 layer matrices on sm_80+, and
/// with fp8/int4 layer matrices where the wgmma GEMM runs (sm_90, NVRTC 12+: <see cref="CudaPrefillKernels.WgmmaAvailable"/>);
/// everything else (MoE, f32 weights, shapes the kernels do not take) keeps the per-token path, and
/// <see cref="PrefillFallbackReason"/> says why.
/// </summary>
public sealed unsafe partial class CudaBackend
{
    /// <summary>Rows per batched chunk (bounds the scratch: about 4·(2F + Q + 2KV + D) + 2·max(D, Q, F) bytes per row).</summary>
    public const int PrefillChunk = 512;

    /// <summary>Use the batched prefill where <see cref="PrefillFallbackReason"/> is null (default; CALM_PREFILL=token
    /// turns it off). Tests switch it to compare both paths.</summary>
    public bool BatchedPrefill { get; set; } = Environment.GetEnvironmentVariable("CALM_PREFILL") != "token";

    /// <summary>Fuse the FFN activation into the gate_up GEMM's epilogue (default; CALM_PREFILL_FUSE=0 keeps the f32
    /// [T, 2F] product and the separate gate_act_rows kernel; needs GEMM k depth 64). Same values either way.</summary>
    public bool FuseGateAct { get; set; } = Environment.GetEnvironmentVariable("CALM_PREFILL_FUSE") != "0";

    /// <summary>Rows per chunk actually used (1 .. <see cref="PrefillChunk"/>; tests lower it to cross chunk boundaries).</summary>
    public int PrefillChunkRows
    {
        get => _chunkRows;
        set => _chunkRows = value is >= 1 and <= PrefillChunk ? value
            : throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Prefill chunk rows must be 1..{PrefillChunk} (got {value}).", "PrefillChunkRows");
    }
    private int _chunkRows = PrefillChunk;

    private string? _prefillWhy;
    private bool _prefillChecked;
    private CudaPrefillKernels? _pk;
    private CudaPinnedMemory? _pTok;
    private CudaDeviceMemory? _pTokMem;
    private ulong _pX, _pH, _pQkv, _pGu;   // [C, D] f32 | [C, max(D, Q, F)] half | [C, Q+2KV] f32 | [C, 2F] f32
    private int _pRows;

    /// <summary>Why a multi-token Forward runs token by token on this model (null: it runs batched).</summary>
    public string? PrefillFallbackReason
    {
        get
        {
            if (_prefillChecked) return _prefillWhy;
            var c = Config;
            bool quant = _wt is DType.F8E4M3 or DType.Int4;
            _prefillWhy = c.IsMoE ? "MoE layers run token by token (the batched path covers dense FFNs only)"
                : _wt is not (DType.BF16 or DType.F16) && !quant ? $"the layer matrices are {DTypes.Name(_wt)}; the tensor-core GEMM takes bf16/f16/fp8/int4"
                : !CudaPrefillKernels.Supported(Device.Arch) ? $"the tensor-core kernels need sm_80+ (this device is sm_{Device.Arch})"
                : quant && !QuantPrefillAvailable ? $"the {DTypes.Name(_wt)} GEMM is the wgmma kernel (sm_90 with NVRTC 12+, GEMM variant 5); this device is sm_{Device.Arch}"
                    + (Device.Arch == 90 ? " and NVRTC cannot build sm_90a code or CALM_GEMM_VARIANT selects another variant" : "")
                : quant && CudaPrefillKernels.GemmWUnsupported(_wt, c.HiddenSize) is { } qa ? "hidden_size: " + qa
                : quant && CudaPrefillKernels.GemmWUnsupported(_wt, c.QDim) is { } qb ? "q dim: " + qb
                : quant && CudaPrefillKernels.GemmWUnsupported(_wt, c.IntermediateSize) is { } qf ? "intermediate_size: " + qf
                : CudaPrefillKernels.GemmUnsupported(c.HiddenSize) is { } a ? "hidden_size: " + a
                : CudaPrefillKernels.GemmUnsupported(c.QDim) is { } b ? "q dim: " + b
                : CudaPrefillKernels.GemmUnsupported(c.IntermediateSize) is { } f ? "intermediate_size: " + f
                : CudaPrefillKernels.AttentionUnsupported(c.NumHeads, c.NumKvHeads, c.HeadDim);
            _prefillChecked = true;
            return _prefillWhy;
        }
    }

    /// <summary>Whether fp8/int4 layer matrices can take the batched path: their GEMM is variant 5 (wgmma, sm_90a), so
    /// sm_90, an NVRTC that builds sm_90a, and CALM_GEMM_VARIANT unset or 5.</summary>
    private bool QuantPrefillAvailable
        => Device.Arch == 90 && KernelCompiler.ArchSpecificTarget(90)
           && Environment.GetEnvironmentVariable("CALM_GEMM_VARIANT") is null or "" or "5";

    /// <summary>Whether Forward of <paramref name="tokens"/> tokens takes the batched path.</summary>
    public bool UsesBatchedPrefill(int tokens) => tokens > 1 && BatchedPrefill && PrefillFallbackReason is null && EnsurePrefillState();

    /// <summary>Allocates the chunk scratch on first use. Out of GPU memory: whatever was allocated is freed, and
    /// this backend prefills token by token from then on (<see cref="PrefillFallbackReason"/> says so).</summary>
    private bool EnsurePrefillState()
    {
        if (_pk is not null) return true;
        var c = Config;
        int C = Math.Min(PrefillChunk, MaxContext);
        long widest = Math.Max(c.HiddenSize, Math.Max(c.QDim, c.IntermediateSize));
        int owned0 = _owned.Count;
        long bytes0 = DeviceBytes;
        CudaPrefillKernels? pk = null;
        try
        {
            pk = new CudaPrefillKernels(_ctx, Device.Arch);
            if (DTypes.IsQuantized(_wt) && !pk.WgmmaAvailable)
            {
                // the fp8/int4 GEMMs are variant 5 only: prefill token by token, and say why
                _prefillWhy = $"the {DTypes.Name(_wt)} GEMM is the wgmma kernel, which does not run here: {pk.WgmmaUnavailableReason}";
                _prefillChecked = true;
                pk.Dispose();
                return false;
            }
            _pTokMem = Alloc(C * 4L, "prefill tokens");
            _pX = Alloc((long)C * c.HiddenSize * 4, "prefill residual").Ptr;
            _pH = Alloc((long)C * widest * 2, "prefill gemm input").Ptr;
            _pQkv = Alloc((long)C * (c.QDim + 2L * c.KvDim) * 4, "prefill qkv").Ptr;
            _pGu = Alloc((long)C * 2L * c.IntermediateSize * 4, "prefill gate_up").Ptr;
            _pTok = new CudaPinnedMemory(_ctx, C * 4L);
        }
        catch (CalmException e) when (e.ErrorId == ErrorIds.OutOfMemory)
        {
            pk?.Dispose();
            for (int i = _owned.Count - 1; i >= owned0; i--) { _owned[i].Dispose(); _owned.RemoveAt(i); }
            DeviceBytes = bytes0;
            _pTokMem = null;
            _prefillWhy = "not enough GPU memory for the batched prefill's scratch (" + e.Message + ")";
            _prefillChecked = true;
            return false;
        }
        _pRows = C;
        _pk = pk;
        return true;
    }

    private void DisposePrefill()
    {
        _pk?.Dispose(); _pk = null;
        _pTok?.Dispose(); _pTok = null;
    }

    /// <summary>The batched forward of <paramref name="tokens"/> at startPos.. (validated by Run). Logits as Run: every
    /// row's when allLogits, else the last row's (also left in _logits with its argmax in _result, as a decode step does).</summary>
    private void RunBatched(ReadOnlySpan<int> tokens, int startPos, Span<float> logits, bool allLogits, CancellationToken ct)
    {
        var c = Config; var k = _k!; var pk = _pk!; var s = _stream!;
        var hostSw = Stopwatch.StartNew();
        double waited = 0;
        int D = c.HiddenSize, Q = c.QDim, KV = c.KvDim, Fi = c.IntermediateSize, T = tokens.Length;
        int H = c.NumHeads, K = c.NumKvHeads, Hd = c.HeadDim;
        float eps = (float)c.RmsNormEps;
        float embScale = c.ScaleEmbeddings ? MathF.Sqrt(D) : 1f;
        float scale = 1f / MathF.Sqrt(Hd);
        var dt = _wt;               // weights
        const DType act = DType.F16; // GEMM inputs (kernels/gemm.cu: f16 activations, bf16 weights converted in shared memory)
        int rows = Math.Min(_pRows, _chunkRows);
        bool quant = DTypes.IsQuantized(dt);
        // one GEMM of the layer: bf16/f16 through the default variant, fp8/int4 through the wgmma kernel with the scales
        void G(ulong X, ulong W, ulong Y, ulong bias, int n, int N, int K, bool accumulate)
        {
            if (quant) pk.GemmW(s, dt, X, W, Y, bias, n, N, K, accumulate, false, scales: _scaleOf[W], tiled: Tiled(dt, K));
            else pk.Gemm(s, dt, X, W, Y, bias, n, N, K, accumulate);
        }
        for (int c0 = 0; c0 < T; c0 += rows)
        {
            int n = Math.Min(rows, T - c0), pos0 = startPos + c0;
            var w0 = Stopwatch.GetTimestamp();
            s.Synchronize();   // the previous chunk has read the token buffer
            waited += Stopwatch.GetElapsedTime(w0).TotalMilliseconds;
            if (ct.IsCancellationRequested) ct.ThrowIfCancellationRequested();
            tokens.Slice(c0, n).CopyTo(new Span<int>((void*)_pTok!.Ptr, n));
            s.CopyToDeviceAsync(_pTokMem!, _pTok.Ptr, n * 4L);
            pk.EmbedRows(s, _pTokMem!.Ptr, _emb, _embDt, _pX, n, D, embScale);
            Mark("token copy + embed");
            for (int l = 0; l < c.NumLayers; l++)
            {
                var L = _layers[l];
                pk.RmsNormRows(s, _pX, L.AttnNorm, _pH, n, D, eps, c.NormAddOne, act);
                Mark("norm");
                G(_pH, L.Wqkv, _pQkv, L.Bqkv, n, Q + 2 * KV, D, false);
                Mark("gemm qkv");
                pk.QkvRopeRows(s, _pQkv, L.QNorm, L.KNorm, c.QkNorm, eps, c.NormAddOne, _cos, _sin, c.RotaryDim,
                               KLayer(l), VLayer(l), MaxContext, H, K, Hd, n, pos0, KScaleLayer(l), VScaleLayer(l));
                Mark("rope + kv write");
                pk.AttentionPrefill(s, _pQkv, Q + 2 * KV, KLayer(l), VLayer(l), _pH, n, pos0, H, K, Hd, MaxContext,
                                    c.SlidingWindow ?? 0, scale, act, kScale: KScaleLayer(l), vScale: VScaleLayer(l));
                Mark("attention");
                G(_pH, L.Wo, _pX, L.Bo, n, D, Q, true);
                Mark("gemm o");
                pk.RmsNormRows(s, _pX, L.FfnNorm, _pH, n, D, eps, c.NormAddOne, act);
                Mark("norm");
                ulong hAct = _pH;   // the down projection's input [n, F] half
                if (FuseGateAct && (pk.GemmDepth == 64 || quant))
                {
                    // act(gate) * up straight out of the GEMM, into the gate_up scratch ([C, 2F] f32 holds [C, F] half)
                    hAct = _pGu;
                    if (quant) pk.GemmW(s, dt, _pH, L.Wgu, hAct, L.Bgu, n, Fi, D, false, true, 0, c.HiddenAct, act, _scaleOf[L.Wgu], tiled: Tiled(dt, D));
                    else pk.GemmGated(s, dt, _pH, L.Wgu, hAct, L.Bgu, n, Fi, D, c.HiddenAct, act);
                    Mark("gemm gate_up + act");
                }
                else
                {
                    G(_pH, L.Wgu, _pGu, L.Bgu, n, 2 * Fi, D, false);
                    Mark("gemm gate_up");
                    pk.GateActRows(s, _pGu, _pH, Fi, n, c.HiddenAct, act);
                    Mark("gate act");
                }
                G(hAct, L.Wdown, _pX, L.Bdown, n, D, Fi, true);
                Mark("gemm down");
            }
            // classifier: every row of the chunk (allLogits), or only the prompt's last row
            int first = allLogits && logits.Length != 0 ? 0 : (c0 + n == T ? n - 1 : n);
            for (int i = first; i < n; i++)
            {
                k.RmsNorm(s, _pX + (ulong)((long)i * D * 4), _finalNorm, _xn, D, eps, c.NormAddOne);
                Mv(s, _lmDt, _lm, _xn, _logits, 0, c.VocabSize, D, false);
                int row = c0 + i;
                if (logits.Length != 0 && (allLogits || row == T - 1))
                {
                    var w1 = Stopwatch.GetTimestamp();
                    s.Synchronize();
                    waited += Stopwatch.GetElapsedTime(w1).TotalMilliseconds;
                    var dst = allLogits ? logits.Slice(row * c.VocabSize, c.VocabSize) : logits[..c.VocabSize];
                    fixed (float* p = dst)
                        CudaException.Check(Cu.cuMemcpyDtoH(p, _logits, (nuint)(c.VocabSize * 4)), "cuMemcpyDtoH(logits)");
                }
            }
            Mark("classifier");
        }
        k.Argmax(s, _logits, c.VocabSize, _pv, _pi, _result);
        Mark("classifier");
        LastHostMs = hostSw.Elapsed.TotalMilliseconds - waited;
    }

    // ProfileBatchedPrefill: an event after each launch, named by the stage it ends (null: not profiling)
    private List<(string Stage, CudaEvent Event)>? _prefillProfile;
    private void Mark(string stage)
    {
        if (_prefillProfile is null) return;
        var e = new CudaEvent(_ctx);
        e.Record(_stream!);
        _prefillProfile.Add((stage, e));
    }

    /// <summary>GPU milliseconds of each stage of one batched prefill of <paramref name="tokens"/> tokens from
    /// position 0, summed over layers and chunks (an event between every two launches; the total is a little above
    /// the unprofiled time), or null when this model falls back to per-token. Stages: token copy + embed, norm, gemm
    /// qkv, rope + kv write, attention, gemm o, gemm gate_up, gate act, gemm down, classifier.</summary>
    public IReadOnlyDictionary<string, double>? ProfileBatchedPrefill(int tokens, CancellationToken ct)
    {
        if (!UsesBatchedPrefill(tokens)) return null;
        var toks = new int[tokens];
        for (int i = 0; i < tokens; i++) toks[i] = (int)((i * 2654435761L) % Config.VocabSize);
        var s = _stream!;
        s.Synchronize();
        _prefillProfile = new();
        try
        {
            Mark("start");
            RunBatched(toks, 0, Span<float>.Empty, false, ct);
            _prefillProfile[^1].Event.Synchronize();
            var ms = new Dictionary<string, double>();
            for (int i = 1; i < _prefillProfile.Count; i++)
            {
                var (stage, e) = _prefillProfile[i];
                ms[stage] = ms.GetValueOrDefault(stage) + e.ElapsedSince(_prefillProfile[i - 1].Event);
            }
            return ms;
        }
        finally
        {
            foreach (var (_, e) in _prefillProfile) e.Dispose();
            _prefillProfile = null;
        }
    }

    /// <summary>GPU milliseconds of one batched prefill of <paramref name="tokens"/> tokens from position 0 (no logits
    /// copied; the last row's classifier and argmax included), or -1 when this model falls back to per-token.</summary>
    private double TimeBatchedPrefill(int tokens, CancellationToken ct)
    {
        if (!UsesBatchedPrefill(tokens)) return -1;
        var toks = new int[tokens];
        for (int i = 0; i < tokens; i++) toks[i] = (int)((i * 2654435761L) % Config.VocabSize);
        using var a = new CudaEvent(_ctx);
        using var b = new CudaEvent(_ctx);
        var s = _stream!;
        s.Synchronize();
        a.Record(s);
        RunBatched(toks, 0, Span<float>.Empty, false, ct);
        b.Record(s);
        b.Synchronize();
        return b.ElapsedSince(a);
    }
}
