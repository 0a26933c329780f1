using System.Runtime.InteropServices;

namespace Calm.Engine.Cuda;

/// <summary>
/// The primary context of one device, retained while any user holds it (one per device per process, shared by
/// every model on that device). Threads that use it call <see cref="MakeCurrent"/> first (PowerShell runspaces
/// move between threads).
/// </summary>
public sealed unsafe class CudaContext : IDisposable
{
    private static readonly object s_lock = new();
    private static readonly Dictionary<int, (nint Handle, int Refs)> s_contexts = new();

    public int Device { get; }
    internal nint Handle { get; }
    private bool _released;

    private CudaContext(int device, nint handle) { Device = device; Handle = handle; }

    /// <summary>The primary context of <paramref name="device"/>; each call must be matched by a Dispose
    /// (the context is released when the last holder disposes).</summary>
    public static CudaContext Acquire(int device = 0)
    {
        Cu.EnsureLoaded();
        lock (s_lock)
        {
            nint ctx;
            if (s_contexts.TryGetValue(device, out var e)) { ctx = e.Handle; s_contexts[device] = (ctx, e.Refs + 1); }
            else
            {
                int dev;
                CudaException.Check(Cu.cuDeviceGet(&dev, device), "cuDeviceGet");
                CudaException.Check(Cu.cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain");
                s_contexts[device] = (ctx, 1);
            }
            var c = new CudaContext(device, ctx);
            c.MakeCurrent();
            return c;
        }
    }

    public void MakeCurrent() => CudaException.Check(Cu.cuCtxSetCurrent(Handle), "cuCtxSetCurrent");

    public void Synchronize() { MakeCurrent(); CudaException.Check(Cu.cuCtxSynchronize(), "cuCtxSynchronize"); }

    /// <summary>(free, total) bytes of device memory.</summary>
    public (long Free, long Total) MemoryInfo()
    {
        MakeCurrent();
        nuint f, t;
        CudaException.Check(Cu.cuMemGetInfo(&f, &t), "cuMemGetInfo");
        return ((long)f, (long)t);
    }

    public void Dispose()
    {
        if (_released) return;
        _released = true;
        lock (s_lock)
        {
            var e = s_contexts[Device];
            if (e.Refs > 1) { s_contexts[Device] = (e.Handle, e.Refs - 1); return; }
            s_contexts.Remove(Device);
            int dev;
            if (Cu.cuDeviceGet(&dev, Device) == 0) Cu.cuDevicePrimaryCtxRelease(dev);
        }
    }
}

/// <summary>Device memory owned by a SafeHandle: freed on Dispose (or by the finalizer as a last resort).</summary>
public sealed unsafe class CudaDeviceMemory : SafeHandle
{
    public CudaContext Context { get; }
    public long Bytes { get; }
    public ulong Ptr => (ulong)handle;

    private CudaDeviceMemory(CudaContext ctx, ulong ptr, long bytes) : base(0, true)
    {
        Context = ctx; Bytes = bytes; SetHandle((nint)ptr);
    }

    public override bool IsInvalid => handle == 0;

    /// <summary>Allocates <paramref name="bytes"/>; out of memory raises Calm.OutOfMemory with needed vs free bytes.</summary>
    public static CudaDeviceMemory Allocate(CudaContext ctx, long bytes, string what = "buffer")
    {
        ctx.MakeCurrent();
        ulong p;
        int r = Cu.cuMemAlloc(&p, (nuint)Math.Max(bytes, 1));
        if (r == Cu.CUDA_ERROR_OUT_OF_MEMORY)
        {
            var (free, total) = ctx.MemoryInfo();
            throw new CalmException(ErrorIds.OutOfMemory, CalmErrorKind.ResourceUnavailable,
                $"Not enough GPU memory for {what}: needed {bytes:N0} bytes ({bytes / 1e9:F2} GB), free {free:N0} bytes ({free / 1e9:F2} GB) of {total / 1e9:F2} GB. " +
                "Remove other models (Remove-CalmModel), use a smaller -ContextLength, or a smaller model.", what);
        }
        CudaException.Check(r, "cuMemAlloc");
        return new CudaDeviceMemory(ctx, p, bytes);
    }

    public void CopyFromHost(nint src, long bytes, long dstOffset = 0)
    {
        Bounds(dstOffset, bytes);
        Context.MakeCurrent();
        CudaException.Check(Cu.cuMemcpyHtoD(Ptr + (ulong)dstOffset, (void*)src, (nuint)bytes), "cuMemcpyHtoD");
        // From pageable memory the call may return before the DMA lands, on the legacy stream, which our non-blocking
        // streams do not wait for: finish it here so a kernel launched next sees the data.
        CudaException.Check(Cu.cuStreamSynchronize(0), "cuStreamSynchronize(legacy)");
    }

    public void CopyFromHost<T>(ReadOnlySpan<T> src, long dstOffset = 0) where T : unmanaged
    {
        fixed (T* p = src) CopyFromHost((nint)p, (long)src.Length * sizeof(T), dstOffset);
    }

    public void CopyToHost<T>(Span<T> dst, long srcOffset = 0) where T : unmanaged
    {
        long bytes = (long)dst.Length * sizeof(T);
        Bounds(srcOffset, bytes);
        Context.MakeCurrent();
        fixed (T* p = dst) CudaException.Check(Cu.cuMemcpyDtoH(p, Ptr + (ulong)srcOffset, (nuint)bytes), "cuMemcpyDtoH");
    }

    public T[] ToArray<T>(int count) where T : unmanaged { var a = new T[count]; CopyToHost<T>(a); return a; }

    public void Zero()
    {
        Context.MakeCurrent();
        CudaException.Check(Cu.cuMemsetD8(Ptr, 0, (nuint)Bytes), "cuMemsetD8");
        // cuMemsetD8 is asynchronous on the legacy stream; non-blocking streams would not wait for it.
        CudaException.Check(Cu.cuStreamSynchronize(0), "cuStreamSynchronize(legacy)");
    }

    private void Bounds(long offset, long bytes)
    {
        if (offset < 0 || bytes < 0 || offset + bytes > Bytes)
            throw new ArgumentOutOfRangeException(nameof(bytes), $"copy of {bytes} bytes at {offset} outside a {Bytes}-byte device buffer");
    }

    protected override bool ReleaseHandle()
    {
        Context.MakeCurrent();
        return Cu.cuMemFree((ulong)handle) == 0;
    }
}

/// <summary>Page-locked host memory (fast async copies; graph-safe host source/destination).</summary>
public sealed unsafe class CudaPinnedMemory : IDisposable
{
    public nint Ptr { get; private set; }
    public long Bytes { get; }
    private readonly CudaContext _ctx;

    public CudaPinnedMemory(CudaContext ctx, long bytes)
    {
        _ctx = ctx; Bytes = bytes;
        ctx.MakeCurrent();
        void* p;
        CudaException.Check(Cu.cuMemHostAlloc(&p, (nuint)bytes, Cu.CU_MEMHOSTALLOC_PORTABLE), "cuMemHostAlloc");
        Ptr = (nint)p;
    }

    public Span<T> AsSpan<T>() where T : unmanaged => new((void*)Ptr, (int)(Bytes / sizeof(T)));

    public void Dispose()
    {
        if (Ptr == 0) return;
        _ctx.MakeCurrent();
        Cu.cuMemFreeHost((void*)Ptr);
        Ptr = 0;
    }
}

/// <summary>A loaded module (cubin or PTX) and its kernels.</summary>
public sealed unsafe class CudaModule : IDisposable
{
    private nint _handle;
    private readonly CudaContext _ctx;
    public string Name { get; }

    public CudaModule(CudaContext ctx, byte[] image, string name)
    {
        _ctx = ctx; Name = name;
        ctx.MakeCurrent();
        nint m;
        fixed (byte* p = image) CudaException.Check(Cu.cuModuleLoadData(&m, p), $"cuModuleLoadData({name})");
        _handle = m;
    }

    public CudaKernel GetKernel(string name)
    {
        _ctx.MakeCurrent();
        nint f;
        var bytes = System.Text.Encoding.ASCII.GetBytes(name + "\0");
        fixed (byte* p = bytes) CudaException.Check(Cu.cuModuleGetFunction(&f, _handle, p), $"cuModuleGetFunction({name})");
        return new CudaKernel(f, name);
    }

    public void Dispose()
    {
        if (_handle == 0) return;
        _ctx.MakeCurrent();
        Cu.cuModuleUnload(_handle);
        _handle = 0;
    }
}

/// <summary>One kernel argument (a device pointer, int, long or float), packed in 8 bytes.</summary>
public readonly struct KernelArg
{
    internal readonly ulong Bits;
    internal readonly int Size;
    private KernelArg(ulong bits, int size) { Bits = bits; Size = size; }
    public static implicit operator KernelArg(int v) => new((uint)v, 4);
    public static implicit operator KernelArg(float v) => new((uint)BitConverter.SingleToInt32Bits(v), 4);
    public static implicit operator KernelArg(long v) => new((ulong)v, 8);
    public static implicit operator KernelArg(ulong v) => new(v, 8);
    public static implicit operator KernelArg(CudaDeviceMemory? m) => new(m?.Ptr ?? 0, 8);
    /// <summary>A device pointer <paramref name="offsetBytes"/> into a buffer.</summary>
    public static KernelArg At(CudaDeviceMemory m, long offsetBytes) => new(m.Ptr + (ulong)offsetBytes, 8);
}

/// <summary>A kernel with a typed launch helper (arguments in the kernel's parameter order).</summary>
public sealed unsafe class CudaKernel
{
    internal nint Handle { get; }
    public string Name { get; }
    internal CudaKernel(nint handle, string name) { Handle = handle; Name = name; }

    /// <summary>Raises the dynamic shared memory limit (needed above 48 KB).</summary>
    public void SetMaxDynamicSharedMemory(int bytes)
        => CudaException.Check(Cu.cuFuncSetAttribute(Handle, Cu.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes), $"cuFuncSetAttribute({Name})");

    /// <summary>The shared-memory carveout this kernel prefers, in percent of the SM's largest shared memory (0: as
    /// much L1 as possible, 100: as much shared memory as possible; a hint the driver may round or override when the
    /// kernel needs more). Without one the driver picks per launch; consecutive kernels that end up with different
    /// carveouts may not share a multiprocessor (a reconfiguration can make the SM drain between them).</summary>
    public int PreferredCarveout
    {
        get { int v; CudaException.Check(Cu.cuFuncGetAttribute(&v, Cu.CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, Handle), $"cuFuncGetAttribute({Name})"); return v; }
        set => CudaException.Check(Cu.cuFuncSetAttribute(Handle, Cu.CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, value), $"cuFuncSetAttribute({Name}, carveout {value})");
    }

    /// <summary>The carveout every decode kernel is given when CALM_CARVEOUT is set (README's switch table): an integer
    /// 0..100, or "l1" (0) / "shared" (100); null when unset or not one of those (the driver's own choice).</summary>
    public static int? CarveoutFromEnvironment(Func<string, string?>? lookup = null)
        => ((lookup ?? Environment.GetEnvironmentVariable)("CALM_CARVEOUT")?.Trim().ToLowerInvariant()) switch
        {
            null or "" => null,
            "l1" => 0,
            "shared" => 100,
            var v when int.TryParse(v, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n) && n <= 100 => n,
            _ => null,
        };

    /// <summary>Launched with programmatic dependent launch (Hopper+): the kernel may start while the previous kernel
    /// on the stream is still running; it must execute griddepcontrol.wait (pdl_wait in common.cuh) before it reads
    /// or writes anything the previous kernels touch. Set only for kernels that do.</summary>
    public bool Programmatic { get; set; }

    public void Launch(CudaStream stream, (int X, int Y, int Z) grid, int block, int sharedBytes, params KernelArg[] args)
    {
        if (grid.X <= 0 || grid.Y <= 0 || grid.Z <= 0 || block <= 0)
            throw new ArgumentOutOfRangeException(nameof(grid), $"{Name}: empty launch ({grid}, {block})");
        ulong* vals = stackalloc ulong[args.Length];
        void** ptrs = stackalloc void*[args.Length];
        for (int i = 0; i < args.Length; i++) { vals[i] = args[i].Bits; ptrs[i] = &vals[i]; }
        if (Programmatic && Cu.cuLaunchKernelEx != null)
        {
            Cu.LaunchAttribute attr = default;
            attr.Id = Cu.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attr.Value = 1;
            Cu.LaunchConfig cfg = default;
            cfg.GridX = (uint)grid.X; cfg.GridY = (uint)grid.Y; cfg.GridZ = (uint)grid.Z;
            cfg.BlockX = (uint)block; cfg.BlockY = 1; cfg.BlockZ = 1;
            cfg.SharedBytes = (uint)sharedBytes; cfg.Stream = stream.Handle;
            cfg.Attrs = &attr; cfg.NumAttrs = 1;
            CudaException.Check(Cu.cuLaunchKernelEx(&cfg, Handle, ptrs, null), $"cuLaunchKernelEx({Name})");
            return;
        }
        CudaException.Check(Cu.cuLaunchKernel(Handle, (uint)grid.X, (uint)grid.Y, (uint)grid.Z, (uint)block, 1, 1,
            (uint)sharedBytes, stream.Handle, ptrs, null), $"cuLaunchKernel({Name})");
    }

    public void Launch(CudaStream stream, int grid, int block, int sharedBytes, params KernelArg[] args)
        => Launch(stream, (grid, 1, 1), block, sharedBytes, args);

    /// <summary>Blocks of <paramref name="block"/> threads with <paramref name="sharedBytes"/> of dynamic shared memory
    /// that fit on one multiprocessor at once (0 when the driver cannot say).</summary>
    public int MaxActiveBlocksPerMultiprocessor(int block, int sharedBytes)
    {
        if (Cu.cuOccupancyMaxActiveBlocksPerMultiprocessor == null) return 0;
        int n;
        CudaException.Check(Cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(&n, Handle, block, (nuint)sharedBytes), $"cuOccupancyMaxActiveBlocksPerMultiprocessor({Name})");
        return n;
    }

    /// <summary>A cooperative launch: the driver guarantees every block is resident at once (grid-wide barriers are
    /// safe) or fails with CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE instead of hanging. Needs cuLaunchKernelEx (CUDA 12+).</summary>
    public void LaunchCooperative(CudaStream stream, int grid, int block, int sharedBytes, params KernelArg[] args)
    {
        if (Cu.cuLaunchKernelEx == null) throw new NotSupportedException("cooperative launch needs cuLaunchKernelEx (CUDA 12 driver)");
        ulong* vals = stackalloc ulong[args.Length];
        void** ptrs = stackalloc void*[args.Length];
        for (int i = 0; i < args.Length; i++) { vals[i] = args[i].Bits; ptrs[i] = &vals[i]; }
        Cu.LaunchAttribute attr = default;
        attr.Id = Cu.CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
        attr.Value = 1;
        Cu.LaunchConfig cfg = default;
        cfg.GridX = (uint)grid; cfg.GridY = 1; cfg.GridZ = 1;
        cfg.BlockX = (uint)block; cfg.BlockY = 1; cfg.BlockZ = 1;
        cfg.SharedBytes = (uint)sharedBytes; cfg.Stream = stream.Handle;
        cfg.Attrs = &attr; cfg.NumAttrs = 1;
        CudaException.Check(Cu.cuLaunchKernelEx(&cfg, Handle, ptrs, null), $"cuLaunchKernelEx({Name}, cooperative)");
    }
}

/// <summary>A non-blocking stream.</summary>
public sealed unsafe class CudaStream : IDisposable
{
    internal nint Handle { get; private set; }
    private readonly CudaContext _ctx;
    public CudaStream(CudaContext ctx)
    {
        _ctx = ctx;
        ctx.MakeCurrent();
        nint s;
        CudaException.Check(Cu.cuStreamCreate(&s, Cu.CU_STREAM_NON_BLOCKING), "cuStreamCreate");
        Handle = s;
    }
    public void Synchronize() => CudaException.Check(Cu.cuStreamSynchronize(Handle), "cuStreamSynchronize");

    public void CopyToDeviceAsync(CudaDeviceMemory dst, nint src, long bytes, long dstOffset = 0)
        => CudaException.Check(Cu.cuMemcpyHtoDAsync(dst.Ptr + (ulong)dstOffset, (void*)src, (nuint)bytes, Handle), "cuMemcpyHtoDAsync");

    /// <summary>Device to device, in stream order (raw addresses: offsets into larger buffers).</summary>
    public void CopyDeviceAsync(ulong dst, ulong src, long bytes)
        => CudaException.Check(Cu.cuMemcpyDtoDAsync(dst, src, (nuint)bytes, Handle), "cuMemcpyDtoDAsync");

    public void CopyToHostAsync(nint dst, CudaDeviceMemory src, long bytes, long srcOffset = 0)
        => CudaException.Check(Cu.cuMemcpyDtoHAsync((void*)dst, src.Ptr + (ulong)srcOffset, (nuint)bytes, Handle), "cuMemcpyDtoHAsync");

    /// <summary>Starts recording this stream's work into a graph (thread-local capture mode).</summary>
    public void BeginCapture() => CudaException.Check(Cu.cuStreamBeginCapture(Handle, Cu.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), "cuStreamBeginCapture");

    /// <summary>Ends the capture and instantiates it.</summary>
    public CudaGraph EndCapture()
    {
        nint g;
        CudaException.Check(Cu.cuStreamEndCapture(Handle, &g), "cuStreamEndCapture");
        return new CudaGraph(_ctx, g);
    }

    public void Dispose()
    {
        if (Handle == 0) return;
        _ctx.MakeCurrent();
        Cu.cuStreamDestroy(Handle);
        Handle = 0;
    }
}

/// <summary>An event for timing and ordering.</summary>
public sealed unsafe class CudaEvent : IDisposable
{
    internal nint Handle { get; private set; }
    private readonly CudaContext _ctx;
    public CudaEvent(CudaContext ctx)
    {
        _ctx = ctx;
        ctx.MakeCurrent();
        nint e;
        CudaException.Check(Cu.cuEventCreate(&e, Cu.CU_EVENT_DEFAULT), "cuEventCreate");
        Handle = e;
    }
    public void Record(CudaStream s) => CudaException.Check(Cu.cuEventRecord(Handle, s.Handle), "cuEventRecord");
    public void Synchronize() => CudaException.Check(Cu.cuEventSynchronize(Handle), "cuEventSynchronize");
    /// <summary>Milliseconds from <paramref name="start"/> to this event (both recorded and complete).</summary>
    public float ElapsedSince(CudaEvent start)
    {
        float ms;
        CudaException.Check(Cu.cuEventElapsedTime(&ms, start.Handle, Handle), "cuEventElapsedTime");
        return ms;
    }
    public void Dispose()
    {
        if (Handle == 0) return;
        _ctx.MakeCurrent();
        Cu.cuEventDestroy(Handle);
        Handle = 0;
    }
}

/// <summary>A captured graph and its executable instance: launch, or update in place from a re-capture whose topology
/// is the same and only kernel parameters changed.</summary>
public sealed unsafe class CudaGraph : IDisposable
{
    private nint _graph, _exec;
    private readonly CudaContext _ctx;

    internal CudaGraph(CudaContext ctx, nint graph)
    {
        _ctx = ctx; _graph = graph;
        nint e;
        int r = Cu.cuGraphInstantiateWithFlags(&e, graph, 0);
        if (r != 0) { Cu.cuGraphDestroy(graph); CudaException.Check(r, "cuGraphInstantiateWithFlags"); }
        _exec = e;
    }

    public void Launch(CudaStream s) => CudaException.Check(Cu.cuGraphLaunch(_exec, s.Handle), "cuGraphLaunch");

    /// <summary>Updates the executable graph with <paramref name="recaptured"/>'s parameters (which is then owned and
    /// disposed here). Returns false when the topology differs (the caller re-instantiates instead).</summary>
    public bool TryUpdate(CudaGraph recaptured)
    {
        // CUgraphExecUpdateResultInfo: { CUgraphExecUpdateResult result; CUgraphNode errorNode; CUgraphNode errorFromNode; }
        byte* info = stackalloc byte[24];
        int r = Cu.cuGraphExecUpdate(_exec, recaptured._graph, info);
        if (r == 0)
        {
            // keep the new graph description (the exec now mirrors it)
            Cu.cuGraphDestroy(_graph);
            _graph = recaptured._graph;
            recaptured._graph = 0;
            recaptured.Dispose();
            return true;
        }
        recaptured.Dispose();
        if (r == 910 /* CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE */) return false;
        CudaException.Check(r, "cuGraphExecUpdate");
        return false;
    }

    public void Dispose()
    {
        if (_exec == 0 && _graph == 0) return;
        _ctx.MakeCurrent();
        if (_exec != 0) Cu.cuGraphExecDestroy(_exec);
        if (_graph != 0) Cu.cuGraphDestroy(_graph);
        _exec = 0; _graph = 0;
    }
}
