using Calm.Engine.Model;

namespace Calm.Engine.Cuda;

/// <summary>One kernel microbenchmark: milliseconds per call for each repetition, and the bytes one call must move.</summary>
public sealed record KernelTiming(string Kernel, double[] Ms, long Bytes)
{
    public double MedianMs => CudaBackend.Median(Ms);
    /// <summary>Bytes / median time, GB/s (10^9).</summary>
    public double MedianGBps => Bytes / (MedianMs * 1e-3) / 1e9;
    public double MinMs => Ms.Min();
    public double MaxMs => Ms.Max();
}

/// <summary>
/// The article's two kernel benchmarks on the GPU, with the engine's own kernels: a matrix-vector product
/// (rows × cols weights of a dtype, fp32 x and y) and decode attention (one query per head against an fp16 KV cache
/// at a context length). Inputs are random (fill kernel), several copies rotate so the working set is at least 4×
/// the L2 (small shapes are not timed from cache). Each repetition times a batch of calls with CUDA events and
/// reports the per-call time (the batch is a captured graph, as a decode step is).
/// </summary>
public static class CudaMicrobench
{
    private const int MinCallsPerRep = 8;

    /// <summary>y [rows] = W [rows, cols] (dtype bf16/f16/f32) · x [cols]. Bytes = weights + x + y.</summary>
    /// <param name="pdl">programmatic dependent launch (consecutive calls overlap; weights prefetched into L2); null: the default.</param>
    public static KernelTiming Matvec(int rows, int cols, DType dtype, int repeat = 20, int device = 0, CancellationToken ct = default, bool? pdl = null, int? deep = null)
    {
        if (rows < 1 || cols < 1) throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Rows and columns must be ≥ 1 (got {rows} × {cols}).", "Rows");
        if (dtype is not (DType.BF16 or DType.F16 or DType.F32))
            throw new CalmException(ErrorIds.TensorDTypeUnsupported, CalmErrorKind.NotSupported, $"The GPU matvec runs bf16, f16 and f32, not {DTypes.Name(dtype)}.", "DType");
        long wBytes = (long)rows * cols * DTypes.SizeOf(dtype);
        long bytes = wBytes + cols * 4L + rows * 4L;
        return Run("matvec_" + DTypes.Name(dtype), wBytes, bytes, repeat, device, ct, (k, s, bufs, i) =>
            k.Matvec(s, dtype, bufs.W[i], bufs.X, bufs.Y, 0, rows, cols, false),
            (k, s, ctx, copies) =>
            {
                var b = new Buffers(ctx);
                for (int i = 0; i < copies; i++)
                {
                    var w = b.Add(wBytes, "matvec weights");
                    k.FillSynthetic(s, w, (long)rows * cols, 0xA11CE + (ulong)i, MathF.Sqrt(3f / cols), 0f, dtype, false);
                    b.W.Add(w);
                }
                b.X = b.Add(cols * 4L, "x"); k.FillSynthetic(s, b.X, cols, 0xB0B, 1f, 0f, DType.F32, false);
                b.Y = b.Add(rows * 4L, "y");
                return b;
            }, 2, pdl, null, deep);
    }

    /// <summary>Decode attention at position context-1 for heads query heads over kvHeads × context × headDim fp16 K
    /// and V. Bytes = K + V read + q + out. <paramref name="split"/>: the split (flash-decoding) kernel with
    /// <paramref name="blocksPerSm"/> blocks per multiprocessor, else the single-block-per-head kernel.
    /// <paramref name="prefetch"/>: CudaKernels.AttentionPrefetch (null: CALM_ATT_PREFETCH or the default).</summary>
    public static KernelTiming Attention(int context, int heads, int kvHeads, int headDim, int repeat = 20, int device = 0, CancellationToken ct = default,
                                         bool split = true, int blocksPerSm = 2, bool? pipelined = null, int? prefetch = null)
    {
        if (context < 1 || heads < 1 || kvHeads < 1 || heads % kvHeads != 0 || headDim < 1 || headDim > CudaKernels.AttentionMaxHeadDim)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                $"Attention needs context ≥ 1, heads a multiple of kvHeads, 1 ≤ headDim ≤ {CudaKernels.AttentionMaxHeadDim} (got {context}, {heads}, {kvHeads}, {headDim}).", "Context");
        long cache = (long)kvHeads * context * headDim * 2;      // one of K or V, fp16
        long bytes = 2 * cache + 2L * heads * headDim * 4;
        float scale = 1f / MathF.Sqrt(headDim);
        // the tensor-core fp16 kernel (CudaKernels.AttentionF16Wide) takes precedence for its shapes
        int arch = CudaDeviceInfo.Unavailable() is null ? CudaDeviceInfo.List().FirstOrDefault(d => d.Index == device)?.Arch ?? 0 : 0;   // Run reports a missing device
        bool wide = CudaKernels.AttentionF16WideOn(null, arch) && CudaKernels.SplitAttentionF16WideSupported(heads, kvHeads, headDim);
        return Run(split ? (wide ? "attention_split_f16w" : pipelined == false ? "attention_split" : "attention_split_async") : "attention_decode", 2 * cache, bytes, repeat, device, ct, (k, s, b, i) =>
            k.Attention(s, b.X, b.W[i], b.W[i] + (ulong)cache, b.Y, heads, kvHeads, headDim, context, 0, scale, b.Step, b.Ws),
            (k, s, ctx, copies) =>
            {
                var b = new Buffers(ctx);
                for (int i = 0; i < copies; i++)
                {
                    var kv = b.Add(2 * cache, "KV cache");
                    k.FillSynthetic(s, kv, 2 * cache / 2, 0xCAC4E + (ulong)i, 1f, 0f, DType.F16, false);
                    b.W.Add(kv);
                }
                AddAttentionInputs(b, k, s, heads, headDim, context, split ? k.AttentionWorkspaceBytes(heads, kvHeads, headDim) : 0);
                return b;
            }, blocksPerSm, null, pipelined, null, null, prefetch);
    }

    /// <summary>The attention microbenchmarks' inputs beside the caches: q [heads, headDim] f32 (synthetic), out, the step
    /// parameters at position context-1, and a zeroed split workspace of <paramref name="workspaceBytes"/> (none at 0).</summary>
    private static void AddAttentionInputs(Buffers b, CudaKernels k, CudaStream s, int heads, int headDim, int context, long workspaceBytes)
    {
        b.X = b.Add((long)heads * headDim * 4, "q"); k.FillSynthetic(s, b.X, (long)heads * headDim, 0x9, 1f, 0f, DType.F32, false);
        b.Y = b.Add((long)heads * headDim * 4, "out");
        var step = b.AddMem(8, "step params");
        step.CopyFromHost<int>(new[] { 0, context - 1 });
        b.Step = step.Ptr;
        if (workspaceBytes > 0) { var wm = b.AddMem(workspaceBytes, "attention workspace"); wm.Zero(); b.Ws = wm.Ptr; }
    }

    /// <summary>Decode attention at position context-1 over an fp8 KV cache: kvHeads × context × headDim e4m3 bytes for
    /// each of K and V plus one f32 scale per row (the benchmark fill of CudaBackend: values in (-1, 1) at scale
    /// 1/448). Bytes = K + V + their scales + q + out. The split kernel with 2 blocks per multiprocessor;
    /// <paramref name="wide"/>: the tensor-core kernel (CudaKernels.AttentionFp8Wide) or the 8-per-lane one, null: as
    /// CALM_ATT_FP8_WIDE says. Shapes the wide kernel does not take run the 8-per-lane kernel either way.
    /// <paramref name="prefetch"/>: CudaKernels.AttentionPrefetch (null: CALM_ATT_PREFETCH or the default).</summary>
    public static KernelTiming AttentionFp8(int context, int heads, int kvHeads, int headDim, int repeat = 20, int device = 0, CancellationToken ct = default,
                                            bool? wide = null, int? prefetch = null)
    {
        if (context < 1 || heads < 1 || kvHeads < 1 || heads % kvHeads != 0 || !CudaKernels.SplitAttentionSupported(heads, kvHeads, headDim, true))
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                $"fp8 split attention needs context ≥ 1, heads a multiple of kvHeads and head_dim 16, 32, 64, 128 or 256 (got {context}, {heads}, {kvHeads}, {headDim}).", "Context");
        long rows = (long)kvHeads * context;
        long cache = rows * headDim;                               // one of K or V, bytes
        long perCopy = 2 * cache + 2 * rows * 4;                   // K | V | K scales | V scales
        long bytes = perCopy + 2L * heads * headDim * 4;
        float scale = 1f / MathF.Sqrt(headDim);
        string name = wide == true && CudaKernels.SplitAttentionFp8WideSupported(heads, kvHeads, headDim) ? "attention_split_fp8w"
                    : wide == false ? "attention_split_fp8" : "attention_split_fp8 (CALM_ATT_FP8_WIDE)";
        return Run(name, perCopy, bytes, repeat, device, ct, (k, s, b, i) =>
            k.Attention(s, b.X, b.W[i], b.W[i] + (ulong)cache, b.Y, heads, kvHeads, headDim, context, 0, scale, b.Step, b.Ws,
                        b.W[i] + (ulong)(2 * cache), b.W[i] + (ulong)(2 * cache + rows * 4)),
            (k, s, ctx, copies) =>
            {
                var b = new Buffers(ctx);
                for (int i = 0; i < copies; i++)
                {
                    var kv = b.Add(perCopy, "fp8 KV cache");
                    k.FillKvFp8(s, kv, 2 * cache, 0xCAC4E + (ulong)i);
                    k.FillSynthetic(s, kv + (ulong)(2 * cache), 2 * rows, 0x5CA1E + (ulong)i, 0f, 1f / 448f, DType.F32, false);
                    b.W.Add(kv);
                }
                AddAttentionInputs(b, k, s, heads, headDim, context, Math.Max(k.AttentionWorkspaceBytes(heads, kvHeads, headDim), 4));
                return b;
            }, 2, null, false, null, wide, prefetch);
    }

    private sealed class Buffers(CudaContext ctx) : IDisposable
    {
        public readonly List<ulong> W = new();
        public ulong X, Y, Step, Ws;
        private readonly List<CudaDeviceMemory> _mem = new();
        public ulong Add(long bytes, string what) => AddMem(bytes, what).Ptr;
        public CudaDeviceMemory AddMem(long bytes, string what) { var m = CudaDeviceMemory.Allocate(ctx, bytes, what); _mem.Add(m); return m; }
        public void Dispose() { foreach (var m in _mem) m.Dispose(); _mem.Clear(); }
    }

    private static KernelTiming Run(string name, long rotatingBytes, long bytes, int repeat, int device, CancellationToken ct,
                                    Action<CudaKernels, CudaStream, Buffers, int> call, Func<CudaKernels, CudaStream, CudaContext, int, Buffers> make, int attentionBlocksPerSm = 2, bool? pdl = null, bool? pipelined = null, int? deep = null,
                                    bool? fp8Wide = null, int? attentionPrefetch = null)
    {
        if (repeat < 1) throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Repeat must be ≥ 1 (got {repeat}).", "Repeat");
        var why = CudaDeviceInfo.Unavailable();
        if (why is not null) throw new CalmException(ErrorIds.DeviceNotAvailable, CalmErrorKind.NotAvailable, why, "Cuda");
        var info = CudaDeviceInfo.List()[device];
        long l2 = Math.Max(info.L2CacheMB, 1) * (1L << 20);
        int copies = (int)Math.Clamp((4 * l2 + rotatingBytes - 1) / Math.Max(rotatingBytes, 1), 1, 64);
        using var ctx = CudaContext.Acquire(device);
        using var k = new CudaKernels(ctx, info.Arch, null, attentionBlocksPerSm, pdl, pipelined, deep, fp8Wide, attentionPrefetch);
        using var s = new CudaStream(ctx);
        using var bufs = make(k, s, ctx, copies);
        int calls = Math.Max(MinCallsPerRep, copies);
        using var a = new CudaEvent(ctx);
        using var b = new CudaEvent(ctx);
        for (int i = 0; i < copies; i++) call(k, s, bufs, i);   // warm-up
        s.Synchronize();
        // the batch is one captured graph, as in decode: launch gaps are the graph's, not the host's
        s.BeginCapture();
        try { for (int i = 0; i < calls; i++) call(k, s, bufs, i % copies); }
        catch { try { s.EndCapture().Dispose(); } catch (CalmException) { } throw; }
        using var graph = s.EndCapture();
        graph.Launch(s);
        s.Synchronize();
        var ms = new double[repeat];
        for (int r = 0; r < repeat; r++)
        {
            ct.ThrowIfCancellationRequested();
            a.Record(s);
            graph.Launch(s);
            b.Record(s);
            b.Synchronize();
            ms[r] = b.ElapsedSince(a) / calls;
        }
        return new KernelTiming(name, ms, bytes);
    }
}
