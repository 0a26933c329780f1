using System.Diagnostics;
using System.Runtime.InteropServices;
using Calm.Engine.Model;
using Calm.Engine.Session;
using Calm.Engine.Weights;

namespace Calm.Engine.Cuda;

/// <summary>Sampling on the device: the generator gets greedy / top-k results without copying V logits.</summary>
public interface IDeviceSampling
{
    /// <summary>Largest k <see cref="ForwardTopK"/> accepts.</summary>
    int MaxDeviceTopK { get; }
    /// <summary>Runs the tokens (as <see cref="IForwardBackend.Forward"/>) and returns the argmax of the last logits.</summary>
    int ForwardGreedy(ReadOnlySpan<int> tokens, int startPos, CancellationToken cancellationToken = default);
    /// <summary>Runs the tokens and writes the k largest last logits (descending; ties: lower id) and their ids.</summary>
    void ForwardTopK(ReadOnlySpan<int> tokens, int startPos, Span<int> ids, Span<float> logits, CancellationToken cancellationToken = default);
}

/// <summary>
/// The GPU forward pass: weights uploaded once (bf16/f16/f32 matrices, or fp8/int4 projections and classifier as two
/// buffers each, values and scales, run by <see cref="CudaQuantKernels"/>; norms and biases as f32), fp16 KV cache
/// [layers, K, maxCtx, Hd] (or fp8: e4m3 bytes in the same layout plus f32 row scales [layers, K, maxCtx] for K and V,
/// <see cref="KvCacheTypes"/>), fp32 activations. One decode step (embedding ... lm_head and argmax) is a CUDA graph
/// captured at construction; the kernels read the token and position from a device StepParams, so every step
/// (prefill tokens too) is one graph launch preceded by an 8-byte copy.
/// </summary>
public sealed unsafe partial class CudaBackend : IForwardBackend, IDeviceSampling, IBenchmarkBackend
{
    private const int ParamRing = 64;              // pinned StepParams slots before the host waits for the GPU

    public string DeviceKind => "Cuda";
    /// <summary>"f16" (default) or "fp8" (<see cref="KvCacheTypes"/>: e4m3 rows with one f32 scale each).</summary>
    public string KvCacheDType { get; }
    private readonly bool _kvFp8;
    public string DeviceName { get; }
    public ModelConfig Config { get; }
    /// <summary>The kernel switches (CALM_* variables, <see cref="Cuda.KernelSwitches"/>) set when this backend was made,
    /// "NAME=value;..."; "" when every kernel runs its default.</summary>
    public string KernelSwitches { get; } = Cuda.KernelSwitches.Describe();
    public int MaxContext { get; }
    public int MaxDeviceTopK => CudaKernels.MaxTopK;
    public CudaDeviceInfo Device { get; }
    /// <summary>Device bytes this backend holds (weights, cache, activations).</summary>
    public long DeviceBytes { get; private set; }
    /// <summary>Host milliseconds spent enqueuing the last Forward (for the host/GPU time fraction).</summary>
    public double LastHostMs { get; private set; }

    private readonly CudaContext _ctx;
    private CudaKernels? _k;
    private CudaQuantKernels? _qk;       // fp8/int4 matvecs; only when some weight matrix is quantized
    private CudaStream? _stream;
    private CudaGraph? _graph;
    private CudaPinnedMemory? _pinned;   // [ParamRing] StepParams | result[2] | topk ids[64] | topk vals[64]
    private readonly List<CudaDeviceMemory> _owned = new();
    private bool _disposed;
    private int _ring;

    // device tensors ([shape] dtype)
    private sealed class DevLayer
    {
        public ulong AttnNorm, FfnNorm;          // [D] f32
        public ulong Wqkv, Bqkv;                 // [Q+2KV, D] wt, [Q+2KV] f32 or 0
        public ulong Wo, Bo;                     // [D, Q] wt, [D] f32 or 0
        public ulong QNorm, KNorm;               // [Hd] f32 or 0
        public ulong Wgu, Bgu, Wdown, Bdown;     // [2F, D] wt, [2F] f32/0, [D, F] wt, [D] f32/0 (dense)
        public ulong Router;                     // [E, D] wt (MoE)
        public ulong ExpertGu, ExpertDown;       // [E] pointers to [2F, D] / [D, F] (MoE)
    }
    private DevLayer[] _layers = Array.Empty<DevLayer>();
    private ulong _emb, _lm, _finalNorm;         // [V, D], [V, D], [D]
    private DType _wt, _embDt, _lmDt;
    private DType _routerDt;                     // the MoE router keeps its source dtype when the experts are quantized
    /// <summary>Quantized matrices: device values pointer (or expert pointer table) -> its scales (or scales pointer table).</summary>
    private readonly Dictionary<ulong, ulong> _scaleOf = new();
    private ulong _kCache, _vCache;              // [L, K, maxCtx, Hd] fp16, or e4m3 bytes (fp8)
    private ulong _kScale, _vScale;              // fp8: [L, K, maxCtx] f32 row scales (0 for f16)
    private ulong _cos, _sin;                    // [maxCtx, rot/2] f32
    /// <summary>Whether the int4 matrices the tensor-core kernels read (cols % 128 == 0) are stored in the tile order
    /// (<see cref="Cuda.QuantTileOrder"/>: one load instruction of the kernels' fragment pattern reads 512 contiguous
    /// bytes instead of 8 rows x 64 bytes, and the int4 scales go with them; fp8 stays row-major, <see cref="QuantTileOrder.Stored"/>). On wherever those
    /// kernels run, except with the persistent decode kernel asked for (it reads rows); CALM_QUANT_TILE=0 keeps every
    /// matrix row-major.</summary>
    public bool TileOrder { get; }
    /// <summary>Whether a quantized [*, cols] matrix of <paramref name="dt"/> is stored in the tile order.</summary>
    private bool Tiled(DType dt, long cols) => TileOrder && QuantTileOrder.Stored(dt, cols);
    /// <summary>Whether the decode kernels run with programmatic dependent launch (see <see cref="CudaKernels.Programmatic"/>).</summary>
    public bool ProgrammaticLaunch => _k?.Programmatic ?? false;
    /// <summary>Whether decode attention runs the cp.async-pipelined split kernel.</summary>
    public bool AttentionPipelined => _k?.AttentionPipelined ?? false;
    /// <summary>Whether fp8 KV split attention runs the tensor-core kernel (CudaKernels.AttentionFp8Wide; on by default, CALM_ATT_FP8_WIDE=0 for the 8-per-lane kernel).</summary>
    public bool AttentionFp8Wide => _k?.AttentionFp8Wide ?? false;
    /// <summary>Whether fp16 KV split attention runs the tensor-core kernel where the shape allows (CudaKernels.AttentionF16Wide;
    /// on by default, CALM_ATT_F16_WIDE=0 for the register-load kernel).</summary>
    public bool AttentionF16Wide => _k?.AttentionF16Wide ?? false;
    /// <summary>RMSNorm fused into the matvec that reads it (qkv, gate_up, lm_head). Measured slower on the H200
    /// (the deep kernel spills with the norm weights, and every block re-reduces x), so only with CALM_FUSE_NORM=1.</summary>
    public bool FuseNorm { get; } = Environment.GetEnvironmentVariable("CALM_FUSE_NORM") == "1";
    private ulong _attWs;   // split-attention workspace (0: the shape takes the single-block kernel)
    private ulong _x, _xn, _qkv, _att, _gu, _h, _eo, _rl, _idx, _wts, _logits, _pv, _pi, _result, _step;
    private ulong _candV, _candI, _topV, _topI;
    private ulong _ssPart;   // folded RMSNorm (CudaKernels.FoldNorm): the producer's per-block sums of x^2 [D] f32
    private readonly int _slots;
    private CudaDeviceMemory? _stepMem, _resultMem, _topVMem, _topIMem;

    /// <summary>
    /// Uploads <paramref name="weights"/>. Tensors whose <see cref="Tensor.Data"/> is 0 (device-only, see
    /// <see cref="Synthetic.SyntheticWeights.DeviceOnly"/>) are made on the GPU by the fill kernel from
    /// <paramref name="syntheticSeed"/> and the tensor's <see cref="Synthetic.SyntheticWeights.Layout"/> spec (same
    /// name, shape, scale and offset as the host generator), so no host copy exists.
    /// </summary>
    public CudaBackend(ModelConfig config, ModelWeights weights, int maxContext, int device = 0,
                       IProgress<LoadProgress>? progress = null, CancellationToken ct = default, Action<string>? verbose = null,
                       int? syntheticSeed = null, string? decode = null, string? kvCacheDType = null)
    {
        _synthSeed = syntheticSeed;
        KvCacheDType = KvCacheTypes.Parse(kvCacheDType ?? KvCacheTypes.F16);
        _kvFp8 = KvCacheDType == KvCacheTypes.Fp8;
        Config = config;
        MaxContext = maxContext;
        if (maxContext <= 0) throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"ContextLength must be positive (got {maxContext}).", "ContextLength");
        var why = CudaDeviceInfo.Unavailable();
        if (why is not null) throw new CalmException(ErrorIds.DeviceNotAvailable, CalmErrorKind.NotAvailable, why, "Cuda");
        var devices = CudaDeviceInfo.List();
        if (device < 0 || device >= devices.Count)
            throw new CalmException(ErrorIds.DeviceNotAvailable, CalmErrorKind.NotAvailable, $"There is no CUDA device {device} ({devices.Count} found).", "Cuda");
        Device = devices[device];
        DeviceName = Device.Name;
        _slots = config.IsMoE ? config.NumExpertsPerToken : 1;
        if (config.HeadDim > CudaKernels.AttentionMaxHeadDim)
            throw new CalmException(ErrorIds.UnsupportedArchitecture, CalmErrorKind.NotSupported,
                $"The CUDA backend supports head_dim up to {CudaKernels.AttentionMaxHeadDim}; this model has {config.HeadDim}. Use -Device Cpu.");
        _ctx = CudaContext.Acquire(device);
        try
        {
            _wt = weights.Layers[0].Wq.DType;
            CheckPlan(weights);
            var sw = Stopwatch.StartNew();
            _k = new CudaKernels(_ctx, Device.Arch, verbose);
            if (DTypes.IsQuantized(_wt) || DTypes.IsQuantized(weights.LmHead.DType))
            {
                _qk = new CudaQuantKernels(_ctx, Device.Arch, verbose);
                FuseNorm = false;   // the quantized matvec has no fused-norm variant
                // the persistent kernel reads row-major values; so does every kernel without the tensor cores
                var wantDecode = decode ?? Environment.GetEnvironmentVariable("CALM_DECODE") ?? DefaultDecode;
                TileOrder = _qk.TensorCores && wantDecode != "persistent" && Environment.GetEnvironmentVariable("CALM_QUANT_TILE") != "0";
            }
            verbose?.Invoke($"CUDA kernels ready for sm_{Device.Arch} in {sw.ElapsedMilliseconds} ms");
            _stream = new CudaStream(_ctx);
            _pinned = new CudaPinnedMemory(_ctx, ParamRing * 8 + 8 + CudaKernels.MaxTopK * 8);
            sw.Restart();
            Upload(weights, progress, ct);
            verbose?.Invoke($"Uploaded {weights.TotalBytes / 1e9:F2} GB of weights to {DeviceName} in {sw.ElapsedMilliseconds} ms ({weights.TotalBytes / 1e9 / Math.Max(sw.Elapsed.TotalSeconds, 1e-9):F1} GB/s)");
            AllocateState();
            Capture();
            SetUpPersistent(decode, verbose);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    // ---- planning and upload ---------------------------------------------------------------------------------------

    /// <summary>Bytes of one cache row (one kv head at one position) and of the whole cache (K and V, fp8: with the row scales).</summary>
    private int KvElemBytes => _kvFp8 ? 1 : 2;
    private long KvRows => (long)Config.NumLayers * Config.NumKvHeads * MaxContext;
    private long KvBytes => 2L * KvRows * (Config.HeadDim * KvElemBytes + (_kvFp8 ? 4 : 0));

    private void CheckPlan(ModelWeights w)
    {
        // fp8/int4 (QuantFormats) may be the layer projections, the experts and an untied classifier; the embedding
        // (row gather), norms, biases and the MoE router stay bf16/f16/f32 (the router with its own dtype).
        var quantizable = new HashSet<Tensor>(ReferenceEqualityComparer.Instance);
        foreach (var l in w.Layers)
            foreach (var t in LayerMatrices(l)) quantizable.Add(t);
        if (!ReferenceEquals(w.LmHead, w.Embedding)) quantizable.Add(w.LmHead);
        foreach (var t in w.AllTensors())
        {
            if (t.Rank == 2 && t.DType is not (DType.BF16 or DType.F16 or DType.F32) && !(DTypes.IsQuantized(t.DType) && quantizable.Contains(t)))
                throw new CalmException(ErrorIds.TensorDTypeUnsupported, CalmErrorKind.NotSupported,
                    $"The CUDA backend runs bf16, f16 and f32 weight matrices (and fp8/int4 projections and classifiers); {t.Name} is {DTypes.Name(t.DType)}. Convert the model or use -Device Cpu.", t.Name);
            if (DTypes.IsQuantized(t.DType)) CheckQuantizedPlan(t);
        }
        foreach (var l in w.Layers)
            foreach (var t in LayerMatrices(l))
                if (t.DType != _wt)
                    throw new CalmException(ErrorIds.TensorDTypeUnsupported, CalmErrorKind.NotSupported,
                        $"The CUDA backend needs one dtype for all layer matrices; {t.Name} is {DTypes.Name(t.DType)} but {w.Layers[0].Wq.Name} is {DTypes.Name(_wt)}. Use -Device Cpu.", t.Name);
        _routerDt = w.Layers[0].Router?.DType ?? _wt;
        foreach (var l in w.Layers)
            if (l.Router is { } r && r.DType != _routerDt)
                throw new CalmException(ErrorIds.TensorDTypeUnsupported, CalmErrorKind.NotSupported,
                    $"The CUDA backend needs one dtype for all MoE routers; {r.Name} is {DTypes.Name(r.DType)} but {w.Layers[0].Router!.Name} is {DTypes.Name(_routerDt)}. Use -Device Cpu.", r.Name);
        if (_synthSeed is null)
            foreach (var t in w.AllTensors())
                if (t.Data == 0)
                    throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"{t.Name} has no host data and no synthetic seed was given.", t.Name);
        var c = Config;
        long act = 4L * (4L * c.HiddenSize + c.QDim + 2L * c.KvDim + c.QDim + _slots * 3L * c.IntermediateSize + _slots * (long)c.HiddenSize + c.VocabSize + c.NumExperts)
                   + 2L * MaxContext * (c.RotaryDim / 2) * 4 + (1 << 20);
        // the tile order (int4): the upload's scratch and at most 7 padding rows (values and scales) per matrix
        var tiles = w.AllTensors().Where(t => QuantTileOrder.Stored(t.DType, t.Cols) && t.TotalRows > 0).ToList();
        long needed = w.TotalBytes + KvBytes + act + (tiles.Count > 0 ? TileScratchBytes + tiles.Sum(t => (QuantTileOrder.BlockRows - 1)
                      * (t.DataBytes / t.TotalRows + CudaQuantKernels.ScaleBytes(t.DType, 1, t.Cols))) : 0);
        var (free, _) = _ctx.MemoryInfo();
        if (needed > free)
            throw new CalmException(ErrorIds.OutOfMemory, CalmErrorKind.ResourceUnavailable,
                $"The model needs {needed:N0} bytes ({needed / 1e9:F2} GB: weights {w.TotalBytes / 1e9:F2} GB, KV cache {KvBytes / 1e9:F2} GB for {MaxContext} positions) " +
                $"but {DeviceName} has {free:N0} bytes ({free / 1e9:F2} GB) free. Remove other models, lower -ContextLength, or use a smaller model.", DeviceName);
    }

    /// <summary>The matrices of a layer that share the layer dtype <see cref="_wt"/> (all but the router).</summary>
    private static IEnumerable<Tensor> LayerMatrices(LayerWeights l)
    {
        foreach (var t in new[] { l.Wq, l.Wk, l.Wv, l.Wo, l.WGate, l.WUp, l.WDown }) if (t is not null) yield return t;
        foreach (var e in new[] { l.ExpertGate, l.ExpertUp, l.ExpertDown })
            foreach (var t in e ?? Array.Empty<Tensor>()) yield return t;
    }

    private CudaDeviceMemory Alloc(long bytes, string what)
    {
        var m = CudaDeviceMemory.Allocate(_ctx, bytes, what);
        _owned.Add(m);
        DeviceBytes += bytes;
        return m;
    }

    private long _uploadTotal, _uploadDone;
    private IProgress<LoadProgress>? _progress;
    private CancellationToken _ct;

    private void Upload(ModelWeights w, IProgress<LoadProgress>? progress, CancellationToken ct)
    {
        _progress = progress; _ct = ct; _uploadTotal = w.TotalBytes; _uploadDone = 0;
        var c = Config;
        _embDt = w.Embedding.DType;
        _emb = UploadMatrix("embed_tokens", w.Embedding);
        _lmDt = w.LmHead.DType;
        _lm = ReferenceEquals(w.LmHead, w.Embedding) ? _emb : UploadMatrix("lm_head", w.LmHead);
        _finalNorm = UploadVector("norm", c.HiddenSize, w.FinalNorm);
        _layers = new DevLayer[c.NumLayers];
        for (int i = 0; i < c.NumLayers; i++)
        {
            var l = w.Layers[i];
            var d = new DevLayer
            {
                AttnNorm = UploadVector($"layers.{i}.input_layernorm", c.HiddenSize, l.AttnNorm),
                FfnNorm = UploadVector($"layers.{i}.post_attention_layernorm", c.HiddenSize, l.FfnNorm),
                Wqkv = UploadMatrix($"layers.{i}.qkv", l.Wq, l.Wk, l.Wv),
                Bqkv = l.Bq is null && l.Bk is null && l.Bv is null ? 0
                    : UploadVector($"layers.{i}.qkv_bias", c.QDim + 2 * c.KvDim, (l.Bq, c.QDim), (l.Bk, c.KvDim), (l.Bv, c.KvDim)),
                Wo = UploadMatrix($"layers.{i}.o_proj", l.Wo),
                Bo = l.Bo is null ? 0 : UploadVector($"layers.{i}.o_proj.bias", c.HiddenSize, l.Bo),
                QNorm = l.QNorm is null ? 0 : UploadVector($"layers.{i}.q_norm", c.HeadDim, l.QNorm),
                KNorm = l.KNorm is null ? 0 : UploadVector($"layers.{i}.k_norm", c.HeadDim, l.KNorm),
            };
            if (c.QkNorm && (d.QNorm == 0 || d.KNorm == 0))
                throw new CalmException(ErrorIds.TensorMissing, CalmErrorKind.InvalidData, $"Layer {i} has no q_norm/k_norm but the config asks for them.", $"layers.{i}");
            if (c.IsMoE)
            {
                if (l.Router is null || l.ExpertGate is null || l.ExpertUp is null || l.ExpertDown is null)
                    throw new CalmException(ErrorIds.TensorMissing, CalmErrorKind.InvalidData, $"Layer {i} lacks its MoE router or experts.", $"layers.{i}");
                d.Router = UploadMatrix($"layers.{i}.router", l.Router);
                var gu = new ulong[c.NumExperts];
                var down = new ulong[c.NumExperts];
                for (int e = 0; e < c.NumExperts; e++)
                {
                    gu[e] = UploadMatrix($"layers.{i}.experts.{e}.w1w3", l.ExpertGate[e], l.ExpertUp[e]);
                    down[e] = UploadMatrix($"layers.{i}.experts.{e}.w2", l.ExpertDown[e]);
                }
                d.ExpertGu = UploadPointers($"layers.{i}.experts.w1w3", gu);
                d.ExpertDown = UploadPointers($"layers.{i}.experts.w2", down);
                if (DTypes.IsQuantized(_wt))
                {
                    _scaleOf[d.ExpertGu] = UploadPointers($"layers.{i}.experts.w1w3.scales", gu.Select(p => _scaleOf[p]).ToArray());
                    _scaleOf[d.ExpertDown] = UploadPointers($"layers.{i}.experts.w2.scales", down.Select(p => _scaleOf[p]).ToArray());
                }
            }
            else
            {
                if (l.WGate is null || l.WUp is null || l.WDown is null)
                    throw new CalmException(ErrorIds.TensorMissing, CalmErrorKind.InvalidData, $"Layer {i} lacks gate/up/down projections.", $"layers.{i}");
                d.Wgu = UploadMatrix($"layers.{i}.gate_up", l.WGate, l.WUp);
                d.Bgu = l.BGate is null && l.BUp is null ? 0
                    : UploadVector($"layers.{i}.gate_up.bias", 2 * c.IntermediateSize, (l.BGate, c.IntermediateSize), (l.BUp, c.IntermediateSize));
                d.Wdown = UploadMatrix($"layers.{i}.down_proj", l.WDown);
                d.Bdown = l.BDown is null ? 0 : UploadVector($"layers.{i}.down_proj.bias", c.HiddenSize, l.BDown);
            }
            _layers[i] = d;
        }
        _stream!.Synchronize();   // fills are asynchronous; surface any fault here
        _tileScratch?.Dispose();
        _tileScratch = null;
        _progress?.Report(new LoadProgress($"Uploading weights to {DeviceName}", "done", 1.0));
    }

    /// <summary>Row-concatenates 2-D tensors of one dtype into a single device matrix.</summary>
    private ulong UploadMatrix(string what, params Tensor[] parts)
    {
        var dt = parts[0].DType;
        long cols = parts[0].Cols, bytes = 0;
        foreach (var p in parts)
        {
            if (p.DType != dt || p.Cols != cols)
                throw new CalmException(ErrorIds.TensorShapeMismatch, CalmErrorKind.InvalidData,
                    $"{p.Name} ({p}) cannot be fused with {parts[0]} for {what}: dtype and columns must match.", p.Name);
            bytes += p.ByteLength;
        }
        if (DTypes.IsQuantized(dt)) return UploadQuantized(what, parts);
        var m = Alloc(bytes, what);
        long off = 0;
        const long Chunk = 64L << 20;
        foreach (var p in parts)
        {
            _named[p.Name] = (m.Ptr + (ulong)off, p.ByteLength, false);
            if (p.Data == 0)
            {
                _ct.ThrowIfCancellationRequested();
                var spec = Spec(p);
                _k!.FillSynthetic(_stream!, m.Ptr + (ulong)off, p.ElementCount, Synthetic.SyntheticWeights.Key(_synthSeed!.Value, spec.TensorId),
                                  spec.Scale, spec.Offset, p.DType, asF32: false);
                _uploadDone += p.ByteLength;
                off += p.ByteLength;
                _progress?.Report(new LoadProgress($"Making synthetic weights on {DeviceName}",
                    $"{p.Name}: {_uploadDone / 1e9:F2} of {_uploadTotal / 1e9:F2} GB", _uploadTotal == 0 ? 1 : (double)_uploadDone / _uploadTotal));
                continue;
            }
            for (long done = 0; done < p.ByteLength; done += Chunk)
            {
                _ct.ThrowIfCancellationRequested();
                long n = Math.Min(Chunk, p.ByteLength - done);
                m.CopyFromHost(p.Data + (nint)done, n, off + done);
                _uploadDone += n;
                _progress?.Report(new LoadProgress($"Uploading weights to {DeviceName}",
                    $"{p.Name}: {_uploadDone / 1e9:F2} of {_uploadTotal / 1e9:F2} GB", _uploadTotal == 0 ? 1 : (double)_uploadDone / _uploadTotal));
            }
            off += p.ByteLength;
        }
        return m.Ptr;
    }

    /// <summary>
    /// A quantized matrix (fp8/int4, <see cref="Quant.QuantFormats"/>) as two device buffers: values [sum rows, row bytes]
    /// (the parts' values concatenated by rows; every part has the same columns, so every row keeps its 16-byte
    /// alignment) and scales (the parts' scales concatenated the same way: fp8 fp32 [sum rows], int4 fp16 [sum rows,
    /// ceil(cols/32)]). An fp8 part without scales (a checkpoint read with scale 1) gets scales of 1. Returns the values
    /// pointer; <see cref="_scaleOf"/> maps it to the scales.
    /// </summary>
    private ulong UploadQuantized(string what, Tensor[] parts)
    {
        var dt = parts[0].DType;
        long cols = parts[0].Cols, vBytes = 0, sBytes = 0;
        foreach (var p in parts)
        {
            vBytes += p.DataBytes;
            sBytes += CudaQuantKernels.ScaleBytes(dt, p.TotalRows, cols);
        }
        bool tiled = Tiled(dt, cols);   // int4: values and scales (QuantTileOrder)
        long rowBytes = parts[0].TotalRows > 0 ? parts[0].DataBytes / parts[0].TotalRows : 0, totalRows = parts.Sum(p => p.TotalRows);
        long sRowBytes = CudaQuantKernels.ScaleBytes(dt, 1, cols);
        var v = Alloc(tiled ? QuantTileOrder.Bytes(totalRows, rowBytes) : vBytes, what);
        var sc = Alloc(Math.Max(tiled ? QuantTileOrder.Bytes(totalRows, sRowBytes) : sBytes, 4), what + " scales");
        long vo = 0, so = 0, row = 0;
        const long Chunk = 64L << 20;
        foreach (var p in parts)
        {
            long pv = p.DataBytes, ps = CudaQuantKernels.ScaleBytes(dt, p.TotalRows, cols);
            // a tied classifier's quantized copy carries the embedding's name: the embedding keeps the plain name
            string key = _named.ContainsKey(p.Name) ? p.Name + QuantizedCopySuffix : p.Name;
            _named[key] = (v.Ptr + (ulong)vo, pv, false);
            _named[key + ScalesSuffix] = (sc.Ptr + (ulong)so, ps, false);
            if (tiled)
            {
                _tiledParts[key] = (v.Ptr, row, p.TotalRows, rowBytes, QuantTileOrder.PieceBytes);
                _tiledParts[key + ScalesSuffix] = (sc.Ptr, row, p.TotalRows, sRowBytes, QuantTileOrder.ScalePieceBytes);
            }
            row += p.TotalRows;
            if (p.IsDeviceOnly)
            {
                MakeQuantizedSynthetic(p, v.Ptr + (ulong)vo, sc.Ptr + (ulong)so);
                vo += pv; so += ps;
                continue;
            }
            for (long done = 0; done < pv; done += Chunk)
            {
                _ct.ThrowIfCancellationRequested();
                long n = Math.Min(Chunk, pv - done);
                v.CopyFromHost(p.Data + (nint)done, n, vo + done);
                _uploadDone += n;
                _progress?.Report(new LoadProgress($"Uploading weights to {DeviceName}",
                    $"{p.Name}: {_uploadDone / 1e9:F2} of {_uploadTotal / 1e9:F2} GB", _uploadTotal == 0 ? 1 : (double)_uploadDone / _uploadTotal));
            }
            if (p.Scales != 0) sc.CopyFromHost(p.Scales, ps, so);
            else
            {
                var ones = new float[p.TotalRows];   // fp8 without scales (CheckPlan refuses int4 without them)
                Array.Fill(ones, 1f);
                sc.CopyFromHost<float>(ones, so);
            }
            _uploadDone += p.ScaleBytes;
            vo += pv; so += ps;
        }
        if (tiled)
        {
            TileInPlace(v.Ptr, totalRows, rowBytes, QuantTileOrder.PieceBytes);
            TileInPlace(sc.Ptr, totalRows, sRowBytes, QuantTileOrder.ScalePieceBytes);
        }
        _scaleOf[v.Ptr] = sc.Ptr;
        return v.Ptr;
    }

    /// <summary>Device scratch of the in-place reorder (<see cref="TileInPlace"/>), freed when the upload ends.</summary>
    private CudaDeviceMemory? _tileScratch;
    private const long TileScratchBytes = 64L << 20;
    /// <summary>Quantized parts (values, int4 scales) stored in the tile order: name -> (the matrix's buffer, first row,
    /// rows, row bytes, piece bytes), so <see cref="ReadDeviceTensor"/> can return them row-major.</summary>
    private readonly Dictionary<string, (ulong Base, long Row0, long Rows, long RowBytes, int Piece)> _tiledParts = new(StringComparer.Ordinal);

    /// <summary>Reorders the row-major values (<paramref name="piece"/> <see cref="QuantTileOrder.PieceBytes"/>) or int4
    /// scales (<see cref="QuantTileOrder.ScalePieceBytes"/>) at <paramref name="values"/> (allocated for
    /// <see cref="QuantTileOrder.Bytes"/>) into the tile order. The order only moves bytes inside blocks of 8 rows, so it
    /// goes block range by block range through a scratch copy of at most <see cref="TileScratchBytes"/> (stream-ordered:
    /// the scratch is reused safely).</summary>
    private void TileInPlace(ulong values, long rows, long rowBytes, int piece)
    {
        long blockBytes = QuantTileOrder.BlockRows * rowBytes;
        long blocks = (rows + QuantTileOrder.BlockRows - 1) / QuantTileOrder.BlockRows;
        long per = Math.Max(1, Math.Min(blocks, TileScratchBytes / blockBytes));   // blocks per pass
        if (_tileScratch is null || _tileScratch.Bytes < per * blockBytes)
        {
            _stream!.Synchronize();   // the old scratch may still be read
            _tileScratch?.Dispose();
            _tileScratch = null;
            _tileScratch = CudaDeviceMemory.Allocate(_ctx, per * blockBytes, "tile order scratch");
        }
        for (long b0 = 0; b0 < blocks; b0 += per)
        {
            _ct.ThrowIfCancellationRequested();
            long r0 = b0 * QuantTileOrder.BlockRows, n = Math.Min(per * QuantTileOrder.BlockRows, rows - r0);
            ulong at = values + (ulong)(r0 * rowBytes);
            _stream!.CopyDeviceAsync(_tileScratch.Ptr, at, n * rowBytes);
            _qk!.Tile(_stream, _tileScratch.Ptr, at, n, (int)rowBytes, piece);
        }
    }

    /// <summary>Suffix of the <see cref="ReadDeviceTensor"/> name of a quantized matrix's scales.</summary>
    public const string ScalesSuffix = ":scales";
    /// <summary>Suffix of the <see cref="ReadDeviceTensor"/> name of a tied classifier's quantized copy (the embedding
    /// keeps its own name).</summary>
    public const string QuantizedCopySuffix = ":quantized";

    private ulong UploadVector(string what, int n, Tensor t) => UploadVector(what, n, (t, n));

    /// <summary>Concatenated f32 vector of (tensor or zeros, length) parts.</summary>
    private ulong UploadVector(string what, int n, params (Tensor? T, int Len)[] parts)
    {
        var v = new float[n];
        var m = Alloc((long)n * 4, what);
        int off = 0;
        var fills = new List<(Tensor T, int Off)>();
        foreach (var (t, len) in parts)
        {
            if (t is not null)
            {
                if (t.ElementCount != len)
                    throw new CalmException(ErrorIds.TensorShapeMismatch, CalmErrorKind.InvalidData, $"{t.Name} has {t.ElementCount} elements; expected {len}.", t.Name);
                _named[t.Name] = (m.Ptr + (ulong)off * 4, len * 4L, true);
                if (t.Data == 0) fills.Add((t, off));
                else Array.Copy(t.ToFloatArray(), 0, v, off, len);
                _uploadDone += t.ByteLength;
            }
            off += len;
        }
        m.CopyFromHost<float>(v);   // host parts and zeros; device-only parts are filled over their ranges next
        foreach (var (t, o) in fills)
        {
            var spec = Spec(t);
            _k!.FillSynthetic(_stream!, m.Ptr + (ulong)o * 4, t.ElementCount, Synthetic.SyntheticWeights.Key(_synthSeed!.Value, spec.TensorId),
                              spec.Scale, spec.Offset, t.DType, asF32: true);
        }
        return m.Ptr;
    }

    private readonly int? _synthSeed;
    private Dictionary<string, Synthetic.SyntheticWeights.FillSpec>? _specs;
    /// <summary>HF tensor name -> where its values live on the device (bytes; AsF32: a norm/bias kept as f32).</summary>
    private readonly Dictionary<string, (ulong Ptr, long Bytes, bool AsF32)> _named = new(StringComparer.Ordinal);

    private Synthetic.SyntheticWeights.FillSpec Spec(Tensor t)
    {
        _specs ??= Synthetic.SyntheticWeights.Layout(Config).ToDictionary(x => x.Name, StringComparer.Ordinal);
        if (!_specs.TryGetValue(t.Name, out var spec))
            throw new CalmException(ErrorIds.TensorMissing, CalmErrorKind.InvalidData, $"{t.Name} is device-only but the synthetic layout of this config has no such tensor.", t.Name);
        long n = spec.Shape.Aggregate(1L, (a, b) => a * b);
        if (n != t.ElementCount)
            throw new CalmException(ErrorIds.TensorShapeMismatch, CalmErrorKind.InvalidData, $"{t.Name} has {t.ElementCount} elements; the synthetic layout says {n}.", t.Name);
        return spec;
    }

    /// <summary>The device copy of one weight tensor by its HF name (tests, diagnostics): the tensor's own bytes for
    /// matrices; f32 values for norms and biases (the backend keeps those as f32). Null when there is no such tensor.</summary>
    public byte[]? ReadDeviceTensor(string name, out bool asF32)
    {
        asF32 = false;
        if (!_named.TryGetValue(name, out var e)) return null;
        asF32 = e.AsF32;
        _ctx.MakeCurrent();
        _stream!.Synchronize();
        if (_tiledParts.TryGetValue(name, out var tp))   // back to row-major: the whole 8-row blocks the rows fall in
        {
            long first = tp.Row0 / QuantTileOrder.BlockRows * QuantTileOrder.BlockRows;
            long end = QuantTileOrder.Bytes(tp.Row0 + tp.Rows, tp.RowBytes);
            var blk = new byte[end - first * tp.RowBytes];
            fixed (byte* p = blk) CudaException.Check(Cu.cuMemcpyDtoH(p, tp.Base + (ulong)(first * tp.RowBytes), (nuint)blk.Length), "cuMemcpyDtoH(tensor)");
            return QuantTileOrder.Untile(blk, tp.Row0, tp.Rows, tp.RowBytes, tp.Piece);
        }
        var r = new byte[e.Bytes];
        fixed (byte* p = r) CudaException.Check(Cu.cuMemcpyDtoH(p, e.Ptr, (nuint)e.Bytes), "cuMemcpyDtoH(tensor)");
        return r;
    }

    private ulong UploadPointers(string what, ulong[] ptrs)
    {
        var m = Alloc(ptrs.Length * 8L, what);
        m.CopyFromHost<ulong>(ptrs);
        return m.Ptr;
    }

    private void AllocateState()
    {
        var c = Config;
        var kv = Alloc(KvBytes, "KV cache");
        kv.Zero();
        // [K values | V values | (fp8) K scales | V scales]
        long values = KvRows * Config.HeadDim * KvElemBytes;
        _kCache = kv.Ptr;
        _vCache = kv.Ptr + (ulong)values;
        if (_kvFp8)
        {
            _kScale = kv.Ptr + (ulong)(2 * values);
            _vScale = _kScale + (ulong)(KvRows * 4);
        }
        var (cos, sin) = RopeTable.Build(c, MaxContext);
        var mc = Alloc(Math.Max(cos.Length, 1) * 4L, "rope cos"); mc.CopyFromHost<float>(cos); _cos = mc.Ptr;
        var ms = Alloc(Math.Max(sin.Length, 1) * 4L, "rope sin"); ms.CopyFromHost<float>(sin); _sin = ms.Ptr;
        ulong F(long n, string what) { var m = Alloc(Math.Max(n, 1) * 4, what); m.Zero(); return m.Ptr; }
        _x = F(c.HiddenSize, "x");
        _xn = F(c.HiddenSize, "xn");
        _ssPart = F(Math.Max(Math.Max(CudaKernels.MatvecBlocks(c.HiddenSize), CudaKernels.EmbedBlocks(c.HiddenSize)), _qk?.FoldPartials(_wt, c.HiddenSize) ?? 0), "norm partial sums");   // as many as any producer writes
        _qkv = F(c.QDim + 2L * c.KvDim, "qkv");
        _att = F(c.QDim, "attention out");
        long attWs = _k!.AttentionWorkspaceBytes(c.NumHeads, c.NumKvHeads, c.HeadDim);
        _attWs = attWs > 0 ? F((attWs + 3) / 4, "split-attention workspace") : 0;
        _gu = F(_slots * 2L * c.IntermediateSize, "gate_up");
        _h = F(_slots * (long)c.IntermediateSize, "ffn hidden");
        _eo = F(_slots * (long)c.HiddenSize, "expert out");
        _rl = F(Math.Max(c.NumExperts, 1), "router logits");
        _idx = F(_slots, "expert ids");
        _wts = F(_slots, "expert weights");
        _logits = F(c.VocabSize, "logits");
        _pv = F(CudaKernels.ArgmaxBlocks, "argmax partial values");
        _pi = F(CudaKernels.ArgmaxBlocks, "argmax partial ids");
        _result = F(2, "argmax result");
        _resultMem = _owned[^1];
        _step = F(2, "step params");
        _stepMem = _owned[^1];
        long cand = (long)CudaKernels.TopKBlocks(c.VocabSize) * CudaKernels.MaxTopK;
        _candV = F(cand, "top-k candidates"); _candI = F(cand, "top-k candidate ids");
        _topV = F(CudaKernels.MaxTopK, "top-k values"); _topVMem = _owned[^1];
        _topI = F(CudaKernels.MaxTopK, "top-k ids"); _topIMem = _owned[^1];
    }

    // ---- the decode step ----------------------------------------------------------------------------------------------

    private ulong KLayer(int l) => _kCache + (ulong)((long)l * Config.NumKvHeads * MaxContext * Config.HeadDim * KvElemBytes);
    private ulong VLayer(int l) => _vCache + (ulong)((long)l * Config.NumKvHeads * MaxContext * Config.HeadDim * KvElemBytes);
    /// <summary>fp8: this layer's row scales [K, maxCtx] f32; 0 for an f16 cache (the kernels then take the f16 path).</summary>
    private ulong KScaleLayer(int l) => _kvFp8 ? _kScale + (ulong)((long)l * Config.NumKvHeads * MaxContext * 4) : 0;
    private ulong VScaleLayer(int l) => _kvFp8 ? _vScale + (ulong)((long)l * Config.NumKvHeads * MaxContext * 4) : 0;

    /// <summary>Enqueues one full decode step on <paramref name="s"/> (captured once into the graph).</summary>
    private void EnqueueStep(CudaStream s, string? only = null)
    {
        var c = Config; var k = _k!;
        bool W(string stage) => only is null || only == stage;
        int D = c.HiddenSize, Q = c.QDim, KV = c.KvDim, Fi = c.IntermediateSize;
        float eps = (float)c.RmsNormEps;
        float embScale = c.ScaleEmbeddings ? MathF.Sqrt(D) : 1f;
        // RMSNorm folded into the kernels around it (CudaKernels.FoldNorm): dense layers and classifier. The kernel that
        // writes the residual _x (embed, o, down) also writes _xn = x * g and per-block sums of x^2 in _ssPart; the next
        // matvec reads _xn and scales by 1/rms, so no rmsnorm kernel runs. bf16/f16 weights: every matvec; fp8/int4: the
        // tensor-core kernels carry it, so every layer matrix (and a quantized classifier) must take them.
        bool lmFolds = DTypes.IsQuantized(_lmDt) ? _qk is not null && _qk.FoldSupported(_lmDt, D) : _lmDt is DType.BF16 or DType.F16 or DType.F32;
        bool fold = k.FoldNorm && !FuseNorm && !c.IsMoE && lmFolds
                    && (_wt is DType.BF16 or DType.F16
                        || _qk is not null && DTypes.IsQuantized(_wt) && _qk.FoldSupported(_wt, D) && _qk.FoldSupported(_wt, Q) && _qk.FoldSupported(_wt, Fi));
        NormFold Prod(ulong gain) => fold ? NormFold.Producer(gain, _xn, _ssPart, c.NormAddOne) : default;
        int sums = CudaKernels.EmbedBlocks(D);   // partial sums the last producer wrote: embed's, then o's / down's
        int layerSums = DTypes.IsQuantized(_wt) ? _qk!.FoldPartials(_wt, D) : CudaKernels.MatvecBlocks(D);   // o and down write D rows
        NormFold Cons() => fold ? NormFold.Consumer(_ssPart, sums, eps) : default;
        if (W(Stages.Other)) k.Embed(s, _embDt, _emb, _x, D, embScale, _step, Prod(c.NumLayers > 0 ? _layers[0].AttnNorm : _finalNorm));
        // paired-row matvecs (CudaKernels.FusePairs): RoPE + KV write into the qkv matvec, the activation into gate_up
        bool pairs = k.FusePairs && !FuseNorm && _wt is DType.BF16 or DType.F16;
        bool pairQkv = pairs && !_kvFp8 && !c.QkNorm && c.RotaryDim == c.HeadDim && c.HeadDim % 2 == 0;   // writes an fp16 cache
        // the same fusion for fp8/int4 weights: the tensor-core kernels' QKV mode (CALM_FUSE_PAIRS=0 turns both off)
        bool quantQkv = k.FusePairs && !FuseNorm && _qk is not null && DTypes.IsQuantized(_wt) && !_kvFp8 && !c.QkNorm
                        && c.RotaryDim == c.HeadDim && _qk.QkvRopeSupported(_wt, D, c.HeadDim);
        // quantized gate_up with the activation fused (tensor-core kernels, CudaQuantKernels.MatvecGlu / MoeMatvecGlu):
        // dense models (Llama-3-8B fp8 362.7 vs 359.8 tok/s, int4 422.7 vs 418.0 on the H200, bench/RESULTS.md
        // 2026-11-29 fourth session) and MoE experts (Mixtral-8x7B fp8 240.6 -> 242.8 tok/s, twelfth session; the second
        // session's fused expert kernel had been slower). CALM_QUANT_GLU=0: never, =dense: dense models only.
        var gluEnv = Environment.GetEnvironmentVariable("CALM_QUANT_GLU");
        bool quantGlu = !FuseNorm && _qk is not null && DTypes.IsQuantized(_wt) && _qk.GluSupported(_wt, D)
                        && gluEnv != "0" && !(c.IsMoE && gluEnv == "dense");
        for (int l = 0; l < c.NumLayers; l++)
        {
            var L = _layers[l];
            if (FuseNorm)
            {
                if (W(Stages.AttentionProjections)) k.MatvecNorm(s, _wt, L.Wqkv, _x, _qkv, L.Bqkv, Q + 2 * KV, D, false, L.AttnNorm, eps, c.NormAddOne);
            }
            else
            {
                var qkvIn = Cons();
                if (!fold && W(Stages.Other)) k.RmsNorm(s, _x, L.AttnNorm, _xn, D, eps, c.NormAddOne);
                if (pairQkv) { if (W(Stages.AttentionProjections)) k.MatvecQkvRope(s, _wt, L.Wqkv, _xn, _qkv, L.Bqkv, c.NumHeads, c.NumKvHeads, c.HeadDim, D, _cos, _sin, KLayer(l), VLayer(l), MaxContext, _step, qkvIn); }
                else if (quantQkv) { if (W(Stages.AttentionProjections)) _qk!.MatvecQkvRope(s, _wt, L.Wqkv, _scaleOf[L.Wqkv], _xn, _qkv, L.Bqkv, c.NumHeads, c.NumKvHeads, c.HeadDim, D, _cos, _sin, KLayer(l), VLayer(l), MaxContext, _step, fold: qkvIn, tiled: Tiled(_wt, D)); }
                else if (W(Stages.AttentionProjections)) Mv(s, _wt, L.Wqkv, _xn, _qkv, L.Bqkv, Q + 2 * KV, D, false, qkvIn);
            }
            if (!pairQkv && !quantQkv && W(Stages.Attention)) k.QkvRopeCache(s, _qkv, L.QNorm, L.KNorm, c.QkNorm, eps, c.NormAddOne, _cos, _sin, c.RotaryDim,
                           KLayer(l), VLayer(l), MaxContext, c.NumHeads, c.NumKvHeads, c.HeadDim, _step, KScaleLayer(l), VScaleLayer(l));
            // with CALM_ATT_NEXT=1 the split kernel's idle blocks prefetch the o projection's weights into L2
            if (W(Stages.Attention)) k.Attention(s, _qkv, KLayer(l), VLayer(l), _att, c.NumHeads, c.NumKvHeads, c.HeadDim, MaxContext,
                        c.SlidingWindow ?? 0, 1f / MathF.Sqrt(c.HeadDim), _step, _attWs, KScaleLayer(l), VScaleLayer(l),
                        L.Wo, ValueBytes(_wt, D, Q));
            if (W(Stages.AttentionProjections)) Mv(s, _wt, L.Wo, _att, _x, L.Bo, D, Q, true, Prod(L.FfnNorm));
            sums = layerSums;
            bool moeGate = c.IsMoE && k.MoeGateFused;   // the norm, router and routing in one kernel (CudaKernels.MoeGate)
            if (!fold && (!FuseNorm || c.IsMoE) && !moeGate) { if (W(Stages.Other)) k.RmsNorm(s, _x, L.FfnNorm, _xn, D, eps, c.NormAddOne); }
            if (!c.IsMoE)
            {
                if (FuseNorm) { if (W(Stages.Ffn)) k.MatvecNorm(s, _wt, L.Wgu, _x, _gu, L.Bgu, 2 * Fi, D, false, L.FfnNorm, eps, c.NormAddOne); }
                else if (pairs) { if (W(Stages.Ffn)) k.MatvecGlu(s, _wt, L.Wgu, _xn, _h, L.Bgu, Fi, D, c.HiddenAct, Cons()); }
                else if (quantGlu) { if (W(Stages.Ffn)) _qk!.MatvecGlu(s, _wt, L.Wgu, _scaleOf[L.Wgu], _xn, _h, L.Bgu, Fi, D, c.HiddenAct, fold: Cons(), tiled: Tiled(_wt, D)); }
                else if (W(Stages.Ffn)) Mv(s, _wt, L.Wgu, _xn, _gu, L.Bgu, 2 * Fi, D, false, Cons());
                if (FuseNorm || !(pairs || quantGlu)) { if (W(Stages.Other)) k.GateAct(s, _gu, _h, Fi, 1, c.HiddenAct); }
                // the next norm: the following layer's attention norm, after the last layer the final norm
                if (W(Stages.Ffn)) Mv(s, _wt, L.Wdown, _h, _x, L.Bdown, D, Fi, true, Prod(l + 1 < c.NumLayers ? _layers[l + 1].AttnNorm : _finalNorm));
            }
            else
            {
                int E = c.NumExperts, top = c.NumExpertsPerToken;
                if (moeGate) { if (W(Stages.Ffn)) k.MoeGate(s, _routerDt, L.Router, _x, L.FfnNorm, eps, c.NormAddOne, _xn, _rl, E, D, top, _idx, _wts); }
                else
                {
                    if (W(Stages.Ffn)) k.Matvec(s, _routerDt, L.Router, _xn, _rl, 0, E, D, false);
                    if (W(Stages.Ffn)) k.MoeRoute(s, _rl, E, top, _idx, _wts);
                }
                if (quantGlu) { if (W(Stages.Ffn)) _qk!.MoeMatvecGlu(s, _wt, L.ExpertGu, _scaleOf[L.ExpertGu], _idx, _xn, 0, _h, Fi, D, top, c.HiddenAct, tiled: Tiled(_wt, D)); }
                else
                {
                    if (W(Stages.Ffn)) MoeMv(s, L.ExpertGu, _xn, 0, _gu, 2 * Fi, D, top);
                    if (W(Stages.Other)) k.GateAct(s, _gu, _h, Fi, top, c.HiddenAct);
                }
                if (W(Stages.Ffn)) MoeMv(s, L.ExpertDown, _h, Fi, _eo, D, Fi, top);
                if (W(Stages.Other)) k.MoeCombine(s, _x, _eo, _wts, top, D);
            }
        }
        if (FuseNorm) { if (W(Stages.Classifier)) k.MatvecNorm(s, _lmDt, _lm, _x, _logits, 0, c.VocabSize, D, false, _finalNorm, eps, c.NormAddOne); }
        else
        {
            if (!fold && W(Stages.Other)) k.RmsNorm(s, _x, _finalNorm, _xn, D, eps, c.NormAddOne);
            if (W(Stages.Classifier)) Mv(s, _lmDt, _lm, _xn, _logits, 0, c.VocabSize, D, false, Cons());
        }
        if (W(Stages.Other)) k.Argmax(s, _logits, c.VocabSize, _pv, _pi, _result);
    }

    /// <summary>y [rows] = W [rows, cols] (dtype wt; fp8/int4 with the scales <see cref="_scaleOf"/> holds for W) · x [cols]
    /// (+ bias) (+ y when accumulate): the one per-matrix dispatch of the decode step.</summary>
    private void Mv(CudaStream s, DType wt, ulong W, ulong x, ulong y, ulong bias, int rows, int cols, bool accumulate, NormFold fold = default)
    {
        if (DTypes.IsQuantized(wt)) _qk!.Matvec(s, wt, W, _scaleOf[W], x, y, bias, rows, cols, accumulate, fold: fold, tiled: Tiled(wt, cols));
        else _k!.Matvec(s, wt, W, x, y, bias, rows, cols, accumulate, fold);
    }

    /// <summary>MoE experts (table of E pointers, layer dtype) for the routed slots in <see cref="_idx"/>.</summary>
    private void MoeMv(CudaStream s, ulong table, ulong x, int xStride, ulong y, int rows, int cols, int slots)
    {
        if (DTypes.IsQuantized(_wt)) _qk!.MoeMatvec(s, _wt, table, _scaleOf[table], _idx, x, xStride, y, rows, cols, slots, tiled: Tiled(_wt, cols));
        else _k!.MoeMatvec(s, _wt, table, _idx, x, xStride, y, rows, cols, slots);
    }

    /// <summary>Bytes of a [rows, cols] matrix's values (fp8/int4: without the scales).</summary>
    private static long ValueBytes(DType wt, long rows, long cols) => wt == DType.Int4 ? rows * cols / 2 : rows * cols * DTypes.SizeOf(wt);

    /// <summary>Whether some weight matrix is fp8/int4 (decode: <see cref="CudaQuantKernels"/>; batched prefill: the
    /// wgmma GEMMs where they run, else the per-token graph).</summary>
    public bool HasQuantizedWeights => _qk is not null;

    private void Capture()
    {
        _stream!.BeginCapture();
        try { EnqueueStep(_stream); }
        catch
        {
            try { _stream.EndCapture().Dispose(); } catch (CalmException) { }
            throw;
        }
        _graph = _stream.EndCapture();
    }

    // ---- forward --------------------------------------------------------------------------------------------------------

    /// <summary>Runs the steps; the stream is idle on return (all work finished).</summary>
    private void Run(ReadOnlySpan<int> tokens, int startPos, Span<float> logits, bool allLogits, CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var c = Config;
        if (tokens.Length == 0) throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, "Forward needs at least one token.", "tokens");
        if (startPos < 0 || (long)startPos + tokens.Length > MaxContext)
            throw new CalmException(ErrorIds.ContextOverflow, CalmErrorKind.LimitExceeded,
                $"Positions {startPos}..{startPos + tokens.Length - 1} do not fit the context of {MaxContext} positions. Start a new sequence or import with a larger -ContextLength.", "ContextLength");
        foreach (var t in tokens)
            if ((uint)t >= (uint)c.VocabSize)
                throw new CalmException(ErrorIds.TokenOutOfRange, CalmErrorKind.InvalidArgument, $"Token id {t} is outside the vocabulary (0..{c.VocabSize - 1}).", "tokens");
        long need = allLogits ? (long)tokens.Length * c.VocabSize : c.VocabSize;
        if (logits.Length != 0 && logits.Length < need)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"The logits buffer holds {logits.Length} floats; {need} are needed.", "logits");
        _ctx.MakeCurrent();
        if (UsesBatchedPrefill(tokens.Length)) { RunBatched(tokens, startPos, logits, allLogits, ct); return; }   // CudaBackend.Prefill.cs
        var s = _stream!;
        var hostSw = Stopwatch.StartNew();
        double waited = 0;
        var ring = (StepParamsHost*)_pinned!.Ptr;
        for (int i = 0; i < tokens.Length; i++)
        {
            if (ct.IsCancellationRequested) { s.Synchronize(); ct.ThrowIfCancellationRequested(); }
            if (_ring == ParamRing)
            {
                var w0 = Stopwatch.GetTimestamp();
                s.Synchronize();           // every slot's copy has run; reuse the ring
                waited += Stopwatch.GetElapsedTime(w0).TotalMilliseconds;
                _ring = 0;
            }
            var slot = ring + _ring++;
            slot->Token = tokens[i];
            slot->Pos = startPos + i;
            s.CopyToDeviceAsync(_stepMem!, (nint)slot, 8);
            LaunchStep(s);
            bool last = i == tokens.Length - 1;
            if (logits.Length != 0 && (allLogits || last))
            {
                var w0 = Stopwatch.GetTimestamp();
                s.Synchronize();
                waited += Stopwatch.GetElapsedTime(w0).TotalMilliseconds;
                var dst = allLogits ? logits.Slice(i * c.VocabSize, c.VocabSize) : logits[..c.VocabSize];
                fixed (float* p = dst)
                    CudaException.Check(Cu.cuMemcpyDtoH(p, _logits, (nuint)(c.VocabSize * 4)), "cuMemcpyDtoH(logits)");
                _ring = 0;
            }
        }
        LastHostMs = hostSw.Elapsed.TotalMilliseconds - waited;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct StepParamsHost { public int Token; public int Pos; }


    public void Forward(ReadOnlySpan<int> tokens, int startPos, Span<float> logits, bool allLogits, CancellationToken cancellationToken = default)
    {
        Run(tokens, startPos, logits, allLogits, cancellationToken);
        _stream!.Synchronize();
        _ring = 0;
    }

    public int ForwardGreedy(ReadOnlySpan<int> tokens, int startPos, CancellationToken cancellationToken = default)
    {
        Run(tokens, startPos, Span<float>.Empty, false, cancellationToken);
        var res = _pinned!.Ptr + ParamRing * 8;
        _stream!.CopyToHostAsync(res, _resultMem!, 8);
        _stream.Synchronize();
        _ring = 0;
        return *(int*)res;
    }

    public void ForwardTopK(ReadOnlySpan<int> tokens, int startPos, Span<int> ids, Span<float> logits, CancellationToken cancellationToken = default)
    {
        int k = ids.Length;
        if (k < 1 || k > MaxDeviceTopK || logits.Length < k)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"GPU top-k needs 1..{MaxDeviceTopK} ids and as many logits (got {k}, {logits.Length}).", "TopK");
        Run(tokens, startPos, Span<float>.Empty, false, cancellationToken);
        TopKOfLogits(ids, logits);
    }

    /// <summary>Top-k of the current logits buffer (after a forward).</summary>
    internal void TopKOfLogits(Span<int> ids, Span<float> vals)
    {
        int k = ids.Length;
        var s = _stream!;
        _k!.TopK(s, _logits, Config.VocabSize, k, _candV, _candI, _topV, _topI);
        var host = _pinned!.Ptr + ParamRing * 8 + 8;
        s.CopyToHostAsync(host, _topIMem!, k * 4L);
        s.CopyToHostAsync(host + k * 4, _topVMem!, k * 4L);
        s.Synchronize();
        _ring = 0;
        new ReadOnlySpan<int>((void*)host, k).CopyTo(ids);
        new ReadOnlySpan<float>((void*)(host + k * 4), k).CopyTo(vals);
    }


    /// <summary>GPU milliseconds of <paramref name="steps"/> graph launches at position <paramref name="pos"/> (benchmarks).</summary>
    public double TimeGraphLaunches(int steps, int pos, int token = 0)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _ctx.MakeCurrent();
        using var a = new CudaEvent(_ctx);
        using var b = new CudaEvent(_ctx);
        var slot = (StepParamsHost*)_pinned!.Ptr;
        slot->Token = token; slot->Pos = Math.Clamp(pos, 0, MaxContext - 1);
        _stream!.CopyToDeviceAsync(_stepMem!, (nint)slot, 8);
        a.Record(_stream);
        for (int i = 0; i < steps; i++) LaunchStep(_stream);
        b.Record(_stream);
        b.Synchronize();
        _ring = 0;
        return b.ElapsedSince(a);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        try { _ctx.MakeCurrent(); _stream?.Synchronize(); } catch (CalmException) { }
        _graph?.Dispose();
        DisposePersistent();
        DisposeBench();
        DisposePrefill();
        _stream?.Dispose();
        _k?.Dispose();
        _qk?.Dispose();
        _pinned?.Dispose();
        _tileScratch?.Dispose();   // an upload cancelled or failed while reordering
        _tileScratch = null;
        foreach (var m in _owned) m.Dispose();
        _owned.Clear();
        DeviceBytes = 0;
        _ctx.Dispose();
    }
}
