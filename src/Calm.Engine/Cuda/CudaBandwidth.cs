using Calm.Engine.Devices;
using Calm.Engine.Model;

namespace Calm.Engine.Cuda;

/// <summary>What <see cref="CudaBandwidth.Measure"/> streams: a read of the buffer, or a copy into a second one.</summary>
public enum CudaBandwidthKind { Read, Copy }

/// <summary>
/// Device memory bandwidth, measured (the denominator of every "% of measured bandwidth"): kernels/bench.cu's
/// streaming read (16-byte loads, 4 in flight per thread, each warp's xor written out so nothing is optimised away)
/// or copy, over buffers several times the L2, timed with CUDA events, one figure per repetition.
/// GB = 10^9 bytes; a copy counts bytes read + bytes written.
/// </summary>
public static class CudaBandwidth
{
    /// <summary>Default buffer: 4 GiB, about 80 times an H200's 50 MB L2.</summary>
    public const long DefaultBytes = 4L << 30;

    /// <summary>
    /// Measures <paramref name="kind"/> over <paramref name="bytes"/> (rounded down to 16 bytes; at least 8 times
    /// the L2) after one warm-up pass, <paramref name="repeat"/> times. Returns GB/s per repetition (and median, min,
    /// max, spread). Calm.OutOfMemory when the buffers do not fit; nothing stays allocated.
    /// </summary>
    public static BandwidthResult Measure(CudaBandwidthKind kind, long bytes = DefaultBytes, int repeat = 10, int device = 0, CancellationToken ct = default)
    {
        if (repeat < 1) throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Repeat must be ≥ 1 (got {repeat}).", "Repeat");
        var why = CudaDeviceInfo.Unavailable();
        if (why is not null) throw new CalmException(ErrorIds.DeviceNotAvailable, CalmErrorKind.NotAvailable, why, "Cuda");
        var info = CudaDeviceInfo.List()[device];
        long l2 = Math.Max(info.L2CacheMB, 1) * (1L << 20);
        bytes = Math.Max(bytes, 8 * l2) & ~15L;
        long vectors = bytes / 16;
        using var ctx = CudaContext.Acquire(device);
        using var k = new CudaKernels(ctx, info.Arch);
        using var s = new CudaStream(ctx);
        int blocks = info.Multiprocessors * 8;   // 8 blocks of 256 threads per SM: 2048 threads, full occupancy
        using var src = CudaDeviceMemory.Allocate(ctx, bytes, "bandwidth source buffer");
        using var dst = kind == CudaBandwidthKind.Copy ? CudaDeviceMemory.Allocate(ctx, bytes, "bandwidth destination buffer")
                                                       : CudaDeviceMemory.Allocate(ctx, blocks * 256 / 32 * 4L, "bandwidth xor output");
        // real data, not zeros
        k.FillSynthetic(s, src.Ptr, bytes / 4, 0x5EED5EEDUL, 1f, 0f, DType.F32, asF32: false);
        using var a = new CudaEvent(ctx);
        using var b = new CudaEvent(ctx);
        void Pass()
        {
            if (kind == CudaBandwidthKind.Read) k.BandwidthRead(s, src.Ptr, vectors, dst.Ptr, blocks);
            else k.BandwidthCopy(s, src.Ptr, dst.Ptr, vectors, blocks);
        }
        Pass();
        s.Synchronize();
        double moved = kind == CudaBandwidthKind.Read ? bytes : 2.0 * bytes;
        var gbps = new double[repeat];
        for (int r = 0; r < repeat; r++)
        {
            ct.ThrowIfCancellationRequested();
            a.Record(s);
            Pass();
            b.Record(s);
            b.Synchronize();
            gbps[r] = moved / (b.ElapsedSince(a) * 1e-3) / 1e9;
        }
        var sorted = (double[])gbps.Clone();
        Array.Sort(sorted);
        return new BandwidthResult(CudaBackend.Median(gbps), sorted[0], sorted[^1], gbps, bytes, blocks * 256);
    }
}
