namespace Calm.Engine.Weights;

/// <summary>
/// Owns the memory behind a model's tensors: memory-mapped safetensors files, or native buffers for synthetic
/// models. Disposing it unmaps/frees everything; tensors that point into it must not be used afterwards.
/// </summary>
public abstract class WeightStore : IDisposable
{
    /// <summary>Bytes of weight data this store holds (mapped or allocated).</summary>
    public abstract long Bytes { get; }
    public abstract void Dispose();
}

/// <summary>Native, 64-byte aligned buffers (synthetic models, converted tensors).</summary>
public sealed unsafe class NativeWeightStore : WeightStore
{
    private readonly List<(nint Ptr, long Bytes)> _blocks = new();
    private long _bytes;
    private bool _disposed;

    public override long Bytes => _bytes;

    public nint Allocate(long bytes)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        void* p;
        try { p = System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)Math.Max(bytes, 1), 64); }
        catch (OutOfMemoryException)
        {
            throw new CalmException(ErrorIds.OutOfMemory, CalmErrorKind.ResourceUnavailable,
                $"Not enough host memory for {bytes / 1e9:F2} GB of weights. Free memory or choose a smaller model or dtype.");
        }
        lock (_blocks) { _blocks.Add(((nint)p, bytes)); _bytes += bytes; }
        return (nint)p;
    }

    public override void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        lock (_blocks)
        {
            foreach (var (p, _) in _blocks) System.Runtime.InteropServices.NativeMemory.AlignedFree((void*)p);
            _blocks.Clear();
            _bytes = 0;
        }
        NativeHeap.Trim();
    }
}

/// <summary>
/// Returns freed heap memory to the OS. glibc keeps freed blocks below its (dynamic, up to 32 MB) mmap threshold in
/// its arenas, so after Remove-CalmModel the process would still hold gigabytes of weights it no longer uses.
/// </summary>
internal static partial class NativeHeap
{
    private static bool s_unavailable = !OperatingSystem.IsLinux();

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);

    public static void Trim()
    {
        if (s_unavailable) return;
        try { MallocTrim(0); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { s_unavailable = true; } // musl: no malloc_trim
    }
}

/// <summary>Several stores owned together (e.g. one mapping per shard).</summary>
public sealed class CompositeWeightStore : WeightStore
{
    private readonly List<WeightStore> _stores = new();
    public void Add(WeightStore s) { lock (_stores) _stores.Add(s); }
    public override long Bytes { get { lock (_stores) return _stores.Sum(s => s.Bytes); } }
    public override void Dispose()
    {
        lock (_stores)
        {
            foreach (var s in _stores) s.Dispose();
            _stores.Clear();
        }
    }
}
