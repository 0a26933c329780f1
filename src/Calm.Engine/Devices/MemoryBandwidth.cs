using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Calm.Engine.Devices;

/// <summary>Result of <see cref="MemoryBandwidth.Measure"/>. GB = 10^9 bytes.</summary>
public sealed record BandwidthResult(
    double MedianGBps, double MinGBps, double MaxGBps,
    double[] SamplesGBps, long BufferBytes, int Threads)
{
    /// <summary>(max - min) / median, percent: how much the repetitions disagree.</summary>
    public double SpreadPercent => MedianGBps > 0 ? (MaxGBps - MinGBps) / MedianGBps * 100.0 : 0;
}

public sealed record BandwidthOptions
{
    /// <summary>Bytes read per repetition; default: max(512 MiB, 8 x L3), capped at a quarter of available memory.</summary>
    public long? BufferBytes { get; init; }
    public int Repetitions { get; init; } = 7;
    /// <summary>Reader threads; default: every logical core.</summary>
    public int? Threads { get; init; }
}

/// <summary>
/// Host memory read bandwidth: every thread streams its own slice of a buffer far larger than the caches (vector loads,
/// four independent accumulators), all threads start together behind a barrier, the wall time of the slowest decides.
/// One untimed warm-up pass, then <see cref="BandwidthOptions.Repetitions"/> timed passes; median and spread reported.
/// This is the CPU's "speed of light": a decode step cannot read the weights faster than this.
/// </summary>
public static unsafe class MemoryBandwidth
{
    public static BandwidthResult Measure(BandwidthOptions? options = null, CancellationToken ct = default)
    {
        options ??= new BandwidthOptions();
        int threads = options.Threads ?? Environment.ProcessorCount;
        if (threads <= 0 || threads > 4096)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Threads must be in 1..4096 (got {threads}).", "Threads");
        if (options.Repetitions is <= 0 or > 1000)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Repetitions must be in 1..1000 (got {options.Repetitions}).", "Repetitions");
        long bytes = options.BufferBytes ?? DefaultBufferBytes();
        if (bytes < 1 << 20)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"The bandwidth buffer must be at least 1 MiB (got {bytes} bytes).", "BufferBytes");
        // Each thread gets a slice that is a whole number of 128-byte blocks (4 x 32-byte vectors).
        long perThread = bytes / threads / 128 * 128;
        if (perThread == 0) { threads = 1; perThread = bytes / 128 * 128; }
        bytes = perThread * threads;

        byte* buffer;
        try { buffer = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 4096); }
        catch (OutOfMemoryException)
        {
            throw new CalmException(ErrorIds.OutOfMemory, CalmErrorKind.ResourceUnavailable,
                $"Not enough host memory for a {bytes / 1e9:F2} GB bandwidth buffer. Close other programs and try again.");
        }
        try
        {
            var samples = new double[options.Repetitions];
            int stop = 0;
            ulong sink = 0;
            using var start = new Barrier(threads + 1);
            using var done = new Barrier(threads + 1);
            var workers = new Thread[threads];
            // Each reader stamps its own start and end: a pass lasts from the first start to the last end, whatever
            // the coordinating thread's scheduling (on a machine with few cores it may run late).
            var began = new long[threads];
            var ended = new long[threads];
            for (int t = 0; t < threads; t++)
            {
                byte* slice = buffer + t * perThread;
                int index = t;
                workers[t] = new Thread(() =>
                {
                    // First touch from the reading thread: the pages are really mapped (and NUMA-local).
                    new Span<byte>(slice, checked((int)Math.Min(perThread, int.MaxValue))).Fill(0x5A);
                    for (long o = int.MaxValue; o < perThread; o += int.MaxValue)
                        new Span<byte>(slice + o, (int)Math.Min(perThread - o, int.MaxValue)).Fill(0x5A);
                    ulong local = 0;
                    while (true)
                    {
                        start.SignalAndWait();
                        if (Volatile.Read(ref stop) != 0) break;
                        began[index] = Stopwatch.GetTimestamp();
                        local += ReadAll(slice, perThread);
                        ended[index] = Stopwatch.GetTimestamp();
                        done.SignalAndWait();
                    }
                    Interlocked.Add(ref sink, local);
                }) { IsBackground = true, Name = $"calm-bandwidth-{t}" };
                workers[t].Start();
            }
            try
            {
                // rep -1 is the untimed warm-up.
                for (int rep = -1; rep < options.Repetitions; rep++)
                {
                    if (ct.IsCancellationRequested) break;
                    start.SignalAndWait();
                    done.SignalAndWait();
                    double s = (double)(ended.Max() - began.Min()) / Stopwatch.Frequency;
                    if (rep >= 0) samples[rep] = bytes / Math.Max(s, 1e-9) / 1e9;
                }
            }
            finally
            {
                Volatile.Write(ref stop, 1);
                start.SignalAndWait();
                foreach (var w in workers) w.Join();
            }
            if (ct.IsCancellationRequested)
                throw new CalmException(ErrorIds.Cancelled, CalmErrorKind.OperationStopped, "The bandwidth measurement was stopped.");
            GC.KeepAlive(sink);
            var sorted = samples.OrderBy(x => x).ToArray();
            double median = sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
            return new BandwidthResult(median, sorted[0], sorted[^1], samples, bytes, threads);
        }
        finally { NativeMemory.AlignedFree(buffer); }
    }

    /// <summary>max(512 MiB, 8 x the last-level cache), capped at a quarter of available memory (and at least 64 MiB).</summary>
    public static long DefaultBufferBytes()
    {
        long want = Math.Max(512L << 20, 8 * LastLevelCacheBytes());
        var (_, avail) = CpuInfo.Memory();
        if (avail is long a) want = Math.Min(want, a / 4);
        return Math.Max(want, 64L << 20);
    }

    /// <summary>Largest cache size in /sys/devices/system/cpu/cpu0/cache (per-socket L3 on x86); 32 MiB when unknown.</summary>
    public static long LastLevelCacheBytes()
    {
        long best = 0;
        try
        {
            var dir = "/sys/devices/system/cpu/cpu0/cache";
            if (Directory.Exists(dir))
                foreach (var idx in Directory.EnumerateDirectories(dir, "index*"))
                {
                    var f = System.IO.Path.Combine(idx, "size");
                    if (!File.Exists(f)) continue;
                    var s = File.ReadAllText(f).Trim();          // "32768K"
                    long mult = s.EndsWith('K') ? 1024 : s.EndsWith('M') ? 1 << 20 : 1;
                    if (long.TryParse(s.TrimEnd('K', 'M'), out var n)) best = Math.Max(best, n * mult);
                }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return best > 0 ? best : 32L << 20;
    }

    /// <summary>Reads n bytes (a multiple of 128) with 4 independent vector accumulators; returns a value so the loads stay.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static ulong ReadAll(byte* p, long n)
    {
        var a0 = Vector256<ulong>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        byte* end = p + n;
        for (; p < end; p += 128)
        {
            a0 += Vector256.Load((ulong*)p);
            a1 += Vector256.Load((ulong*)(p + 32));
            a2 += Vector256.Load((ulong*)(p + 64));
            a3 += Vector256.Load((ulong*)(p + 96));
        }
        return Vector256.Sum(a0 + a1 + a2 + a3);
    }
}
