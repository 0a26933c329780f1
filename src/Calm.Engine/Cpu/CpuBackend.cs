using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Calm.Engine.Model;
using Calm.Engine.Session;
using Calm.Engine.Weights;

namespace Calm.Engine.Cpu;

/// <summary>
/// CPU reference backend: the correctness oracle for the GPU and the fallback without one. Runs every architecture of
/// <see cref="Architecture"/> with Hugging Face transformers' math in fp32 (weights stay in their stored dtype and
/// are converted on the fly; fp8/int4 projections dequantized per row with their scales), with an fp32 KV cache. Prefill multiplies each weight row with a whole block of tokens
/// (<see cref="PrefillChunk"/> tokens at a time); decode of one token is a matvec. Not thread-safe (see
/// <see cref="IForwardBackend"/>).
/// Shapes: V vocab, D hidden, F intermediate, H heads, K kv heads, Hd head_dim, E experts, L layers, M tokens in a chunk.
/// </summary>
public sealed unsafe partial class CpuBackend : IForwardBackend
{
    /// <summary>Tokens per prefill block: every weight is read once per block (activation memory stays bounded).</summary>
    public const int PrefillChunk = 256;

    private readonly ModelWeights _w;
    private readonly LayerFloats[] _small;      // fp32 copies of norms and biases, per layer
    private readonly float[] _finalNorm;        // [D]
    private float* _kCache;                     // [L][MaxContext][K*Hd] (f32 / f16 cache)
    private float* _vCache;                     // [L][MaxContext][K*Hd]
    private byte* _kq, _vq;                     // fp8 cache: [L][MaxContext][K*Hd] e4m3 bytes
    private float* _ks, _vs;                    // fp8 cache: [L][MaxContext][K] row scales (KvFp8)
    private readonly bool _fp8, _f16;
    [ThreadStatic] private static float[]? t_kdeq, t_vdeq;
    private int _filled;                        // positions [0, _filled) of the cache hold valid keys/values
    private bool _disposed;
    private Scratch? _scratch;

    [ThreadStatic] private static float[]? t_scores;

    private sealed class LayerFloats
    {
        public required float[] AttnNorm, FfnNorm;     // [D]
        public float[]? Bq, Bk, Bv, Bo;                // [H*Hd], [K*Hd], [K*Hd], [D]
        public float[]? QNorm, KNorm;                  // [Hd]
        public float[]? BGate, BUp, BDown;             // [F], [F], [D]
    }

    /// <param name="kvCacheDType">null: an f32 KV cache; "f16": values rounded to f16 on write; "fp8": e4m3 bytes
    /// with one f32 scale per (layer, position, kv head) row of K and of V (<see cref="KvFp8"/>), dequantized on read.</param>
    public CpuBackend(ModelConfig config, ModelWeights weights, int maxContext, string? kvCacheDType = null)
    {
        KvCacheDType = kvCacheDType is null ? "f32" : KvCacheTypes.Parse(kvCacheDType);
        _fp8 = KvCacheDType == KvCacheTypes.Fp8;
        _f16 = KvCacheDType == KvCacheTypes.F16;
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(weights);
        if (maxContext <= 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"ContextLength must be positive (got {maxContext}).", "ContextLength");
        Config = config; MaxContext = maxContext; _w = weights;
        if (weights.Layers.Length != config.NumLayers)
            throw new CalmException(ErrorIds.ConfigInvalid, CalmErrorKind.InvalidData,
                $"The weights have {weights.Layers.Length} layers but the config says {config.NumLayers}.", "num_hidden_layers");
        foreach (var t in weights.AllTensors())
            if (!DTypes.IsWeightType(t.DType) && !(DTypes.IsQuantized(t.DType) && t.Scales != 0 && t.Rank == 2))
                throw new CalmException(ErrorIds.TensorDTypeUnsupported, CalmErrorKind.NotSupported,
                    $"Tensor {t.Name} in {t.Source} has dtype {DTypes.Name(t.DType)}; the CPU backend computes with f32, f16 and bf16 weights " +
                    "and with fp8/int4 projection weights quantized at import (-DType fp8|int4).", t.Name);
        if (DTypes.IsQuantized(weights.Embedding.DType))
            throw new CalmException(ErrorIds.TensorDTypeUnsupported, CalmErrorKind.NotSupported,
                $"The embedding {weights.Embedding.Name} is {DTypes.Name(weights.Embedding.DType)}; embeddings stay in f32, f16 or bf16.", weights.Embedding.Name);
        if (config.IsMoE && weights.Layers.Any(l => l.Router is null || l.ExpertGate is null || l.ExpertUp is null || l.ExpertDown is null))
            throw new CalmException(ErrorIds.TensorMissing, CalmErrorKind.InvalidData, "A mixture-of-experts layer lacks its router or experts.", "block_sparse_moe");
        if (!config.IsMoE && weights.Layers.Any(l => l.WGate is null || l.WUp is null || l.WDown is null))
            throw new CalmException(ErrorIds.TensorMissing, CalmErrorKind.InvalidData, "A dense layer lacks gate_proj, up_proj or down_proj.", "mlp");

        _small = weights.Layers.Select(l => new LayerFloats
        {
            AttnNorm = l.AttnNorm.ToFloatArray(), FfnNorm = l.FfnNorm.ToFloatArray(),
            Bq = l.Bq?.ToFloatArray(), Bk = l.Bk?.ToFloatArray(), Bv = l.Bv?.ToFloatArray(), Bo = l.Bo?.ToFloatArray(),
            QNorm = l.QNorm?.ToFloatArray(), KNorm = l.KNorm?.ToFloatArray(),
            BGate = l.BGate?.ToFloatArray(), BUp = l.BUp?.ToFloatArray(), BDown = l.BDown?.ToFloatArray(),
        }).ToArray();
        _finalNorm = weights.FinalNorm.ToFloatArray();

        long perCache = KvCacheBytes / 2;
        try
        {
            if (_fp8)
            {
                long rows = (long)config.NumLayers * maxContext * config.NumKvHeads;
                _kq = (byte*)NativeMemory.AlignedAlloc((nuint)(rows * config.HeadDim), 64);
                _vq = (byte*)NativeMemory.AlignedAlloc((nuint)(rows * config.HeadDim), 64);
                _ks = (float*)NativeMemory.AlignedAlloc((nuint)(rows * 4), 64);
                _vs = (float*)NativeMemory.AlignedAlloc((nuint)(rows * 4), 64);
            }
            else
            {
                _kCache = (float*)NativeMemory.AlignedAlloc((nuint)perCache, 64);
                _vCache = (float*)NativeMemory.AlignedAlloc((nuint)perCache, 64);
            }
        }
        catch (OutOfMemoryException)
        {
            FreeCache();
            throw new CalmException(ErrorIds.OutOfMemory, CalmErrorKind.ResourceUnavailable,
                $"Not enough host memory for the KV cache: {2 * perCache / 1e9:F2} GB for {maxContext} positions. Import with a smaller -ContextLength.",
                "ContextLength");
        }
    }

    public string DeviceKind => "Cpu";
    /// <summary>"f32" (default), "f16" or "fp8" (<see cref="KvCacheTypes"/>).</summary>
    public string KvCacheDType { get; }
    public string DeviceName => $"CPU ({Environment.ProcessorCount} cores)";
    public ModelConfig Config { get; }
    public int MaxContext { get; }
    /// <summary>KV cache bytes (keys and values, all layers, MaxContext positions).</summary>
    public long KvCacheBytes => _fp8
        ? 2L * Config.NumLayers * MaxContext * Config.NumKvHeads * (Config.HeadDim + sizeof(float))
        : 2L * Config.NumLayers * MaxContext * Config.KvDim * sizeof(float);
    /// <summary>Positions currently held in the KV cache.</summary>
    public int CachedPositions => _filled;

    public void Forward(ReadOnlySpan<int> tokens, int startPos, Span<float> logits, bool allLogits, CancellationToken cancellationToken = default)
    {
        if (_disposed)
            throw new CalmException(ErrorIds.ModelDisposed, CalmErrorKind.InvalidOperation, "The model was removed; its CPU backend is disposed. Import it again.");
        var c = Config;
        int n = tokens.Length, v = c.VocabSize;
        if (n == 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, "Forward needs at least one token.", "tokens");
        if (startPos < 0 || startPos > _filled)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                $"Start position {startPos} is outside the {_filled} positions in the KV cache; continue at a position <= {_filled} (0 starts a new sequence).", "startPos");
        if ((long)startPos + n > MaxContext)
            throw new CalmException(ErrorIds.ContextOverflow, CalmErrorKind.LimitExceeded,
                $"Positions {startPos}..{(long)startPos + n - 1} do not fit the context of {MaxContext} positions this model was loaded with. " +
                $"Use a shorter prompt or fewer new tokens, or import the model again with a larger -ContextLength (the model allows up to {c.MaxPositionEmbeddings}).",
                "ContextLength");
        for (int i = 0; i < n; i++)
            if ((uint)tokens[i] >= (uint)v)
                throw new CalmException(ErrorIds.TokenOutOfRange, CalmErrorKind.InvalidArgument,
                    $"Token id {tokens[i]} at index {i} is outside the vocabulary of {v} tokens (valid ids: 0..{v - 1}). Check the tokenizer matches the model.",
                    "tokens");
        long need = allLogits ? (long)n * v : v;
        if (logits.Length < need)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                $"The logits buffer holds {logits.Length} floats; {need} are needed ({(allLogits ? $"{n} tokens x " : "")}{v} vocab).", "logits");

        // RoPE frequencies for this call (longrope and dynamic depend on the sequence length seen by the call).
        double[] invFreq = CpuOps.RopeInvFreq(c, startPos + n, out double ropeScale);

        // Positions >= startPos are overwritten; until this call finishes, only [0, startPos) is known good.
        _filled = startPos;
        for (int c0 = 0; c0 < n; c0 += PrefillChunk)
        {
            int m = Math.Min(PrefillChunk, n - c0);
            bool last = c0 + m == n;
            Span<float> chunkLogits = allLogits ? logits.Slice(c0 * v, m * v) : (last ? logits[..v] : Span<float>.Empty);
            RunChunk(tokens.Slice(c0, m), startPos + c0, invFreq, ropeScale, chunkLogits, allLogits, cancellationToken);
            _filled = startPos + c0 + m;
        }
    }

    /// <summary>Activations for a block of M tokens (pinned, reused across calls, grown on demand).</summary>
    private sealed class Scratch
    {
        public readonly int M;
        public readonly float[] X, Xb, Q, K, V, Att, Tmp, G, U, Cos, Sin;  // [M][D], [M][D], [M][H*Hd], [M][K*Hd] x2, [M][H*Hd], [M][D], [M][F] x2, [M][rot/2] x2
        public readonly float[]? Router, Xe, Ye;                          // [M][E], [M][D], [M][D]
        public Scratch(ModelConfig c, int m)
        {
            M = m;
            float[] A(long len) => GC.AllocateUninitializedArray<float>(checked((int)Math.Max(len, 1)), pinned: true);
            int d = c.HiddenSize;
            X = A((long)m * d); Xb = A((long)m * d); Tmp = A((long)m * d);
            Q = A((long)m * c.QDim); Att = A((long)m * c.QDim);
            K = A((long)m * c.KvDim); V = A((long)m * c.KvDim);
            G = A((long)m * c.IntermediateSize); U = A((long)m * c.IntermediateSize);
            Cos = A((long)m * (c.RotaryDim / 2)); Sin = A((long)m * (c.RotaryDim / 2));
            if (c.IsMoE) { Router = A((long)m * c.NumExperts); Xe = A((long)m * d); Ye = A((long)m * d); }
        }
    }

    private void RunChunk(ReadOnlySpan<int> tokens, int pos0, double[] invFreq, double ropeScale, Span<float> logits, bool allLogits, CancellationToken ct)
    {
        var c = Config;
        int m = tokens.Length, d = c.HiddenSize, hd = c.HeadDim, qd = c.QDim, kvd = c.KvDim, half = c.RotaryDim / 2;
        if (_scratch is null || _scratch.M < m) { _scratch = null; _scratch = new Scratch(c, m); }
        var s = _scratch;
        float eps = (float)c.RmsNormEps;

        // Embedding rows (+ gemma's sqrt(D) scale), cos/sin per position.
        float embScale = c.ScaleEmbeddings ? MathF.Sqrt(d) : 1f;
        for (int t = 0; t < m; t++)
        {
            var xr = s.X.AsSpan(t * d, d);
            CpuKernels.ConvertTensorRow(_w.Embedding, tokens[t], xr);
            if (embScale != 1f) for (int i = 0; i < d; i++) xr[i] *= embScale;
            CpuOps.RopeCosSin(invFreq, pos0 + t, ropeScale, s.Cos.AsSpan(t * half, half), s.Sin.AsSpan(t * half, half));
        }

        for (int l = 0; l < c.NumLayers; l++)
        {
            ct.ThrowIfCancellationRequested();
            var lw = _w.Layers[l];
            var lf = _small[l];

            // ---- attention block
            for (int t = 0; t < m; t++) CpuOps.RmsNorm(s.X.AsSpan(t * d, d), lf.AttnNorm, s.Xb.AsSpan(t * d, d), eps, c.NormAddOne);
            MatMulGroup(s.Xb, m, (lw.Wq, s.Q), (lw.Wk, s.K), (lw.Wv, s.V));
            for (int t = 0; t < m; t++)
            {
                AddBias(s.Q.AsSpan(t * qd, qd), lf.Bq); AddBias(s.K.AsSpan(t * kvd, kvd), lf.Bk); AddBias(s.V.AsSpan(t * kvd, kvd), lf.Bv);
                var cos = s.Cos.AsSpan(t * half, half); var sin = s.Sin.AsSpan(t * half, half);
                for (int h = 0; h < c.NumHeads; h++)
                {
                    var qh = s.Q.AsSpan(t * qd + h * hd, hd);
                    if (lf.QNorm is not null) CpuOps.RmsNorm(qh, lf.QNorm, qh, eps, c.NormAddOne);
                    CpuOps.ApplyRope(qh, cos, sin);
                }
                for (int h = 0; h < c.NumKvHeads; h++)
                {
                    var kh = s.K.AsSpan(t * kvd + h * hd, hd);
                    if (lf.KNorm is not null) CpuOps.RmsNorm(kh, lf.KNorm, kh, eps, c.NormAddOne);
                    CpuOps.ApplyRope(kh, cos, sin);
                }
            }
            // Write this block's keys/values into the cache, then attend (queries see keys up to their own position).
            long layerOff = (long)l * MaxContext * kvd;
            WriteCache(s, m, pos0, l);
            Attention(s, m, pos0, layerOff);
            MatMul(lw.Wo, s.Att, m, s.Tmp);
            for (int t = 0; t < m; t++)
            {
                var tr = s.Tmp.AsSpan(t * d, d);
                AddBias(tr, lf.Bo);
                Add(s.X.AsSpan(t * d, d), tr);
            }

            // ---- FFN block
            for (int t = 0; t < m; t++) CpuOps.RmsNorm(s.X.AsSpan(t * d, d), lf.FfnNorm, s.Xb.AsSpan(t * d, d), eps, c.NormAddOne);
            if (c.IsMoE) MoeFfn(lw, s, m);
            else
            {
                int f = c.IntermediateSize;
                MatMulGroup(s.Xb, m, (lw.WGate!, s.G), (lw.WUp!, s.U));
                for (int t = 0; t < m; t++)
                {
                    var g = s.G.AsSpan(t * f, f); var u = s.U.AsSpan(t * f, f);
                    AddBias(g, lf.BGate); AddBias(u, lf.BUp);
                    CpuOps.GatedActivation(g, u, c.HiddenAct);
                }
                MatMul(lw.WDown!, s.G, m, s.Tmp);
                for (int t = 0; t < m; t++) AddBias(s.Tmp.AsSpan(t * d, d), lf.BDown);
            }
            for (int t = 0; t < m; t++) Add(s.X.AsSpan(t * d, d), s.Tmp.AsSpan(t * d, d));
        }
        ct.ThrowIfCancellationRequested();

        // ---- final norm and classifier: every token of the block, or only the last one.
        if (logits.IsEmpty) return;
        int v = c.VocabSize;
        int first = allLogits ? 0 : m - 1, count = m - first;
        for (int t = first; t < m; t++) CpuOps.RmsNorm(s.X.AsSpan(t * d, d), _finalNorm, s.Xb.AsSpan(t * d, d), eps, c.NormAddOne);
        fixed (float* px = &s.Xb[first * d]) fixed (float* pl = logits)
            CpuKernels.MatMul(_w.LmHead.Data, _w.LmHead.DType, v, d, px, count, pl, v, _w.LmHead.Scales);
    }

    /// <summary>Keys and values of the m rows at positions pos0.. into layer l of the cache (f16: rounded to f16 values;
    /// fp8: each kv head's row quantized with its own scale).</summary>
    private void WriteCache(Scratch s, int m, int pos0, int l)
    {
        var c = Config;
        int kvd = c.KvDim, hd = c.HeadDim, K = c.NumKvHeads;
        long layerOff = (long)l * MaxContext * kvd;
        if (_fp8)
        {
            for (int t = 0; t < m; t++)
            {
                long row0 = ((long)l * MaxContext + pos0 + t) * K;   // first (layer, position, head) row
                for (int h = 0; h < K; h++)
                {
                    long r = row0 + h;
                    _ks[r] = KvFp8.QuantizeRow(s.K.AsSpan(t * kvd + h * hd, hd), new Span<byte>(_kq + r * hd, hd));
                    _vs[r] = KvFp8.QuantizeRow(s.V.AsSpan(t * kvd + h * hd, hd), new Span<byte>(_vq + r * hd, hd));
                }
            }
            return;
        }
        var kd = new Span<float>(_kCache + layerOff + (long)pos0 * kvd, m * kvd);
        var vd = new Span<float>(_vCache + layerOff + (long)pos0 * kvd, m * kvd);
        s.K.AsSpan(0, m * kvd).CopyTo(kd);
        s.V.AsSpan(0, m * kvd).CopyTo(vd);
        if (_f16)
            for (int i = 0; i < kd.Length; i++) { kd[i] = (float)(Half)kd[i]; vd[i] = (float)(Half)vd[i]; }
    }

    /// <summary>Att[t, h] = softmax(q·K^T / sqrt(Hd)) V over visible positions; head h reads kv head h / (H/K).</summary>
    private void Attention(Scratch s, int m, int pos0, long layerOff)
    {
        var c = Config;
        int hd = c.HeadDim, qd = c.QDim, kvd = c.KvDim, heads = c.NumHeads, group = c.NumHeads / c.NumKvHeads;
        float scale = 1f / MathF.Sqrt(hd);
        int? window = c.SlidingWindow;
        nint kc = (nint)(_kCache + layerOff), vc = (nint)(_vCache + layerOff);
        var q = s.Q; var att = s.Att;
        int maxCtx = MaxContext;
        int kvHeads = c.NumKvHeads;
        long rowBase = layerOff / hd;   // fp8: the (layer, position 0, head 0) row
        void One(int item)
        {
            int t = item / heads, h = item % heads, pos = pos0 + t, kvh = h / group;
            var scores = t_scores;
            if (scores is null || scores.Length < pos + 1) t_scores = scores = new float[Math.Max(pos + 1, 256)];
            if (_fp8)
            {
                // dequantize this kv head's rows [first visible, pos] into contiguous [pos + 1, Hd] buffers
                int need = (pos + 1) * hd;
                var kd = t_kdeq; var vd = t_vdeq;
                if (kd is null || kd.Length < need) t_kdeq = kd = new float[Math.Max(need, 4096)];
                if (vd is null || vd.Length < need) t_vdeq = vd = new float[Math.Max(need, 4096)];
                for (int j = CpuOps.FirstVisibleKey(pos, window); j <= pos; j++)
                {
                    long r = rowBase + (long)j * kvHeads + kvh;
                    KvFp8.DequantizeRow(new ReadOnlySpan<byte>(_kq + r * hd, hd), _ks[r], kd.AsSpan(j * hd, hd));
                    KvFp8.DequantizeRow(new ReadOnlySpan<byte>(_vq + r * hd, hd), _vs[r], vd.AsSpan(j * hd, hd));
                }
                CpuOps.AttendHead(q.AsSpan(t * qd + h * hd, hd), kd.AsSpan(0, need), vd.AsSpan(0, need), hd, pos, window, scale, scores, att.AsSpan(t * qd + h * hd, hd));
                return;
            }
            // Keys/values of kv head kvh: position j at [j * kvd + kvh * hd .. + hd]; spans cover positions [0, pos].
            long len = (long)pos * kvd + hd;
            var keys = new ReadOnlySpan<float>((float*)kc + kvh * hd, checked((int)len));
            var vals = new ReadOnlySpan<float>((float*)vc + kvh * hd, checked((int)len));
            CpuOps.AttendHead(q.AsSpan(t * qd + h * hd, hd), keys, vals, kvd, pos, window, scale, scores, att.AsSpan(t * qd + h * hd, hd));
        }
        int items = m * heads;
        long work = (long)items * (pos0 + m) * hd;
        if (work < 1 << 16 || Environment.ProcessorCount == 1) for (int i = 0; i < items; i++) One(i);
        else Parallel.For(0, items, One);
    }

    /// <summary>Mixtral sparse MoE: route each token, then run each chosen expert once over all its tokens. Result in Tmp.</summary>
    private void MoeFfn(LayerWeights lw, Scratch s, int m)
    {
        var c = Config;
        int d = c.HiddenSize, f = c.IntermediateSize, e = c.NumExperts, k = c.NumExpertsPerToken;
        MatMul(lw.Router!, s.Xb, m, s.Router!);
        var chosen = new int[m * k];
        var weights = new float[m * k];
        for (int t = 0; t < m; t++)
            CpuOps.MoeRoute(s.Router.AsSpan(t * e, e), k, chosen.AsSpan(t * k, k), weights.AsSpan(t * k, k));
        s.Tmp.AsSpan(0, m * d).Clear();
        var rows = new int[m];
        var rowW = new float[m];
        for (int ex = 0; ex < e; ex++)
        {
            int ne = 0;
            for (int t = 0; t < m; t++)
                for (int j = 0; j < k; j++)
                    if (chosen[t * k + j] == ex) { rows[ne] = t; rowW[ne] = weights[t * k + j]; ne++; }
            if (ne == 0) continue;
            for (int i = 0; i < ne; i++) s.Xb.AsSpan(rows[i] * d, d).CopyTo(s.Xe.AsSpan(i * d, d));
            MatMulGroup(s.Xe!, ne, (lw.ExpertGate![ex], s.G), (lw.ExpertUp![ex], s.U));
            for (int i = 0; i < ne; i++) CpuOps.GatedActivation(s.G.AsSpan(i * f, f), s.U.AsSpan(i * f, f), c.HiddenAct);
            MatMul(lw.ExpertDown![ex], s.G, ne, s.Ye!);
            for (int i = 0; i < ne; i++)
            {
                var acc = s.Tmp.AsSpan(rows[i] * d, d);
                System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(s.Ye.AsSpan(i * d, d), rowW[i], acc, acc);
            }
        }
    }

    private static void MatMul(Tensor w, float[] x, int n, float[] y)
    {
        fixed (float* px = x) fixed (float* py = y)
            CpuKernels.MatMul(w.Data, w.DType, (int)w.Rows, (int)w.Cols, px, n, py, (int)w.Rows, w.Scales);
    }

    /// <summary>Products of several weights with the same X in one parallel region (Y arrays are pinned).</summary>
    private static void MatMulGroup(float[] x, int n, params (Tensor W, float[] Y)[] outs)
    {
        Span<CpuKernels.MatMulJob> jobs = stackalloc CpuKernels.MatMulJob[outs.Length];
        for (int i = 0; i < outs.Length; i++)
        {
            var (w, y) = outs[i];
            if (y.Length < (long)n * w.Rows || x.Length < (long)n * w.Cols) throw new InvalidOperationException($"scratch too small for {w.Name}");
            jobs[i] = new CpuKernels.MatMulJob(w.Data, w.DType, (int)w.Rows, (int)w.Cols, (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(y)), (int)w.Rows, w.Scales);
        }
        fixed (float* px = x) CpuKernels.MatMulGroup(jobs, px, n);
    }

    private static void AddBias(Span<float> x, float[]? b)
    {
        if (b is not null) System.Numerics.Tensors.TensorPrimitives.Add(x, b, x);
    }

    private static void Add(Span<float> x, ReadOnlySpan<float> y) => System.Numerics.Tensors.TensorPrimitives.Add(x, y, x);

    private void FreeCache()
    {
        if (_kCache != null) { NativeMemory.AlignedFree(_kCache); _kCache = null; }
        if (_vCache != null) { NativeMemory.AlignedFree(_vCache); _vCache = null; }
        if (_kq != null) { NativeMemory.AlignedFree(_kq); _kq = null; }
        if (_vq != null) { NativeMemory.AlignedFree(_vq); _vq = null; }
        if (_ks != null) { NativeMemory.AlignedFree(_ks); _ks = null; }
        if (_vs != null) { NativeMemory.AlignedFree(_vs); _vs = null; }
    }

    ~CpuBackend() => FreeCache();

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        FreeCache();
        GC.SuppressFinalize(this);
        _scratch = null;
        _filled = 0;
    }
}
