using System.Collections.Concurrent;
using System.Diagnostics;
using Calm.Engine.Cpu;
using Calm.Engine.Quant;
using Calm.Engine.Devices;
using Calm.Engine.Model;
using Calm.Engine.Session;
using Calm.Engine.Weights;

namespace Calm.Engine.SpeedOfLight;

/// <summary>Per-repetition timings of one microbenchmark and the bytes one repetition must move.</summary>
public sealed record KernelTiming(double[] Ms, long Bytes);

/// <summary>Streams memory on one device: read (sum of every byte) or copy (read + write), GB/s per repetition.</summary>
public interface IBandwidthProbe
{
    /// <summary>"Cpu" or "Cuda".</summary>
    string DeviceKind { get; }
    int DeviceIndex { get; }
    string DeviceName { get; }
    /// <summary>Datasheet-style peak from device attributes (GPU), or null where none is reported (CPU).</summary>
    double? PeakGBps { get; }
    /// <summary>Peak dense bf16 tensor TFLOPS where known from the device's name, else null.</summary>
    double? PeakTflops { get; }
    /// <summary>A buffer several times the last-level cache.</summary>
    long DefaultBufferBytes { get; }
    /// <summary>GB/s of each repetition (after an untimed warm-up). kind: "Read" or "Copy".</summary>
    double[] Measure(string kind, long bytes, int repeat, CancellationToken ct);
}

/// <summary>The article's two microbenchmarks: one matrix-vector product and one attention over a KV cache.</summary>
public interface IKernelBench
{
    string DeviceKind { get; }
    string DeviceName { get; }
    /// <summary>y[rows] = W[rows, cols] · x[cols] with W stored in <paramref name="dtype"/>; Bytes = rows × cols × size.</summary>
    KernelTiming Matvec(int rows, int cols, string dtype, int repeat, CancellationToken ct);
    /// <summary>One decode query of <paramref name="heads"/> heads over <paramref name="context"/> cached keys/values of <paramref name="kvHeads"/> heads.</summary>
    KernelTiming Attention(int context, int heads, int kvHeads, int headDim, int repeat, CancellationToken ct);
}

/// <summary>The probes for a device name ("Cpu", "Cuda", "Cuda:1"), and the session's measured bandwidth per device.</summary>
public static class BenchDevices
{
    private static Func<int, IBandwidthProbe>? s_cudaBandwidth;
    private static Func<int, IKernelBench>? s_cudaKernels;
    private static readonly ConcurrentDictionary<string, BandwidthMeasurement> s_measured = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>The CUDA adapters register here (SpeedOfLight/CudaProbes.cs, a module initializer).</summary>
    public static void RegisterCuda(Func<int, IBandwidthProbe> bandwidth, Func<int, IKernelBench> kernels)
    {
        s_cudaBandwidth = bandwidth; s_cudaKernels = kernels;
    }

    public static bool CudaRegistered => s_cudaBandwidth is not null;

    /// <summary>"Cpu" → ("Cpu", 0); "Cuda" → ("Cuda", 0); "Cuda:1" → ("Cuda", 1); "Auto" → Cuda:0 when a GPU can be used, else Cpu.</summary>
    public static (string Kind, int Index) Parse(string? device)
    {
        var d = (device ?? "Auto").Trim();
        if (d.Equals("Auto", StringComparison.OrdinalIgnoreCase))
            return CudaUsable() ? ("Cuda", 0) : ("Cpu", 0);
        var parts = d.Split(':');
        int index = 0;
        if (parts.Length > 2 || (parts.Length == 2 && !int.TryParse(parts[1], out index)) || index < 0)
            throw BadDevice(d);
        if (parts[0].Equals("Cpu", StringComparison.OrdinalIgnoreCase)) return ("Cpu", 0);
        if (parts[0].Equals("Cuda", StringComparison.OrdinalIgnoreCase) || parts[0].Equals("Gpu", StringComparison.OrdinalIgnoreCase)) return ("Cuda", index);
        throw BadDevice(d);
    }

    private static CalmException BadDevice(string d) => new(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
        $"-Device '{d}' is not a device name. Use Cpu, Cuda, Cuda:<index> or Auto (Get-CalmDevice lists them).", "Device");

    public static string Key(string kind, int index) => kind.Equals("Cpu", StringComparison.OrdinalIgnoreCase) ? "Cpu" : $"Cuda:{index}";

    /// <summary>The device key of a loaded model's backend ("Cpu" or "Cuda:n").</summary>
    public static string KeyOf(IForwardBackend backend)
        => backend is Cuda.CudaBackend cb ? Key("Cuda", cb.Device.Index) : Key(backend.DeviceKind, 0);

    private static bool CudaUsable()
    {
        try { return Cuda.CudaDeviceInfo.Unavailable() is null && Cuda.CudaDeviceInfo.List().Count > 0; }
        catch (CalmException) { return false; }
    }

    /// <summary>Datasheet-style peak bandwidth of a GPU from its attributes (null for the CPU or when CUDA is not usable).</summary>
    public static double? AttributePeakGBps(string kind, int index)
    {
        if (!kind.Equals("Cuda", StringComparison.OrdinalIgnoreCase)) return null;
        try
        {
            if (Cuda.CudaDeviceInfo.Unavailable() is not null) return null;
            var list = Cuda.CudaDeviceInfo.List();
            return index < list.Count && list[index].PeakBandwidthGBps > 0 ? list[index].PeakBandwidthGBps : null;
        }
        catch (CalmException) { return null; }
    }

    /// <summary>Dense bf16 tensor-core TFLOPS of well-known GPUs by name (SXM figures), else null.</summary>
    public static double? KnownTflops(string? name)
    {
        if (string.IsNullOrEmpty(name)) return null;
        var table = new (string Key, double Tflops)[]
        {
            ("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("GH200", 989.4), ("B200", 2250), ("A100", 312.0),
            ("L40S", 362.1), ("L40", 181.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.2), ("RTX 3090", 71.0), ("L4", 121.0),
        };
        foreach (var (k, t) in table)
            if (name.Contains(k, StringComparison.OrdinalIgnoreCase)) return t;
        return null;
    }

    public static IBandwidthProbe Bandwidth(string? device)
    {
        var (kind, index) = Parse(device);
        if (kind == "Cpu") return new CpuBandwidthProbe();
        return s_cudaBandwidth?.Invoke(index) ?? throw NoCuda("bandwidth");
    }

    public static IKernelBench Kernels(string? device)
    {
        var (kind, index) = Parse(device);
        if (kind == "Cpu") return new CpuKernelBench();
        return s_cudaKernels?.Invoke(index) ?? throw NoCuda("kernel");
    }

    private static CalmException NoCuda(string what)
    {
        string why = CudaUsable() ? "this build has no CUDA microbenchmarks wired in" : (Cuda.CudaDeviceInfo.Unavailable() ?? "no CUDA device was found");
        return new CalmException(ErrorIds.DeviceNotAvailable, CalmErrorKind.ResourceUnavailable,
            $"The CUDA {what} measurement cannot run: {why}. Use -Device Cpu, or run on a machine with an NVIDIA GPU.", "Device");
    }

    /// <summary>Records a measured read bandwidth as the session's default denominator for its device.</summary>
    public static void Remember(BandwidthMeasurement m)
    {
        if (m.Kind.Equals("Read", StringComparison.OrdinalIgnoreCase)) s_measured[Key(m.DeviceKind, m.DeviceIndex)] = m;
    }

    /// <summary>The last read bandwidth measured this session on the device, or null.</summary>
    public static BandwidthMeasurement? Measured(string kind, int index)
        => s_measured.TryGetValue(Key(kind, index), out var m) ? m : null;

    public static void Forget() => s_measured.Clear();

    /// <summary>Runs the probe and returns the summary (median, min, max, spread); remembers a read measurement.</summary>
    public static BandwidthMeasurement MeasureBandwidth(IBandwidthProbe probe, string kind, long? bytes, int repeat, CancellationToken ct)
    {
        if (repeat is <= 0 or > 1000)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"-Repeat must be in 1..1000 (got {repeat}).", "Repeat");
        var k = kind.Equals("Copy", StringComparison.OrdinalIgnoreCase) ? "Copy" : kind.Equals("Read", StringComparison.OrdinalIgnoreCase) ? "Read"
            : throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"-Kind '{kind}' is not a bandwidth kind. Use Read or Copy.", "Kind");
        long b = bytes ?? probe.DefaultBufferBytes;
        var samples = probe.Measure(k, b, repeat, ct);
        var sorted = samples.OrderBy(x => x).ToArray();
        double median = CpuBackend.Median(sorted);
        var m = new BandwidthMeasurement
        {
            Device = probe.DeviceName, DeviceKind = probe.DeviceKind, DeviceIndex = probe.DeviceIndex, Kind = k,
            MedianGBps = median, MinGBps = sorted[0], MaxGBps = sorted[^1],
            SpreadPercent = median > 0 ? (sorted[^1] - sorted[0]) / median * 100 : 0,
            Repetitions = samples.Length, BufferBytes = b, PeakGBps = probe.PeakGBps,
            PercentOfPeak = probe.PeakGBps is double p && p > 0 ? median / p * 100 : null,
            Samples = string.Join(";", samples.Select(x => x.ToString("F2", System.Globalization.CultureInfo.InvariantCulture))),
        };
        Remember(m);
        return m;
    }
}

/// <summary>One Measure-CalmBandwidth row. GB = 10^9 bytes.</summary>
public sealed record BandwidthMeasurement
{
    public required string Device { get; init; }
    public required string DeviceKind { get; init; }
    public int DeviceIndex { get; init; }
    /// <summary>"Read" or "Copy" (copy counts read + write bytes).</summary>
    public required string Kind { get; init; }
    public required double MedianGBps { get; init; }
    public required double MinGBps { get; init; }
    public required double MaxGBps { get; init; }
    /// <summary>(max - min) / median, percent.</summary>
    public required double SpreadPercent { get; init; }
    public required int Repetitions { get; init; }
    public required long BufferBytes { get; init; }
    /// <summary>Datasheet-style peak from device attributes (GPUs); null for the CPU.</summary>
    public double? PeakGBps { get; init; }
    public double? PercentOfPeak { get; init; }
    /// <summary>Every repetition's GB/s, ';'-separated (one flat string so Export-Csv keeps it).</summary>
    public string Samples { get; init; } = "";
    public DateTime MeasuredAt { get; init; } = DateTime.Now;
}

/// <summary>The host's memory: a multi-threaded read loop (<see cref="MemoryBandwidth"/>); copy is not measured on the CPU.</summary>
public sealed class CpuBandwidthProbe : IBandwidthProbe
{
    public string DeviceKind => "Cpu";
    public int DeviceIndex => 0;
    public string DeviceName => $"{CpuInfo.ModelName()} ({Environment.ProcessorCount} cores)";
    public double? PeakGBps => null;
    public double? PeakTflops => null;
    public long DefaultBufferBytes => MemoryBandwidth.DefaultBufferBytes();

    public double[] Measure(string kind, long bytes, int repeat, CancellationToken ct)
    {
        if (!kind.Equals("Read", StringComparison.OrdinalIgnoreCase))
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.NotSupported,
                $"On the CPU only -Kind Read is measured (a copy loop would report the store path, not what decode reads). Use -Kind Read.", "Kind");
        return MemoryBandwidth.Measure(new BandwidthOptions { BufferBytes = bytes, Repetitions = repeat }, ct).SamplesGBps;
    }
}

/// <summary>The two microbenchmarks on the CPU, through the same kernels the CPU backend runs (CpuKernels, CpuOps).</summary>
public sealed unsafe class CpuKernelBench : IKernelBench
{
    public string DeviceKind => "Cpu";
    public string DeviceName => $"{CpuInfo.ModelName()} ({Environment.ProcessorCount} cores)";

    internal static DType ParseDType(string dtype)
    {
        if (DTypes.TryParseWeightDType(dtype, out var t)) return t;
        throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
            $"-DType '{dtype}' is not a weight type the CPU computes with. Use bf16, f16, f32, fp8 or int4.", "DType");
    }

    private static void Positive(string name, long v)
    {
        if (v <= 0) throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"-{name} must be positive (got {v}).", name);
    }

    private static T* Alloc<T>(long count) where T : unmanaged
    {
        try { return (T*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(count * sizeof(T)), 64); }
        catch (OutOfMemoryException)
        {
            throw new CalmException(ErrorIds.OutOfMemory, CalmErrorKind.ResourceUnavailable,
                $"Not enough host memory for a {count * sizeof(T) / 1e9:F2} GB benchmark buffer. Use smaller dimensions.");
        }
    }

    public KernelTiming Matvec(int rows, int cols, string dtype, int repeat, CancellationToken ct)
    {
        Positive("Rows", rows); Positive("Cols", cols); Positive("Repeat", repeat);
        var t = ParseDType(dtype);
        using var store = new NativeWeightStore();
        float* x = Alloc<float>(cols), y = Alloc<float>(rows);
        try
        {
            // Random weights in (-1, 1) in the chosen dtype; fp8 and int4 quantized from bf16 ones as Import-CalmModel
            // -DType does (Quant.QuantFormats layouts: bytes count the values and the scales). x likewise random.
            var rng = new Random(rows ^ (cols << 8));
            for (int i = 0; i < cols; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
            var src = DTypes.IsQuantized(t) ? DType.BF16 : t;
            nint data = store.Allocate((long)rows * cols * DTypes.SizeOf(src));
            Parallel.For(0, rows, r =>
            {
                ulong key = Synthetic.SyntheticWeights.Key(r, 0x5EED);
                for (long j = 0; j < cols; j++)
                {
                    float v = Synthetic.SyntheticWeights.Value(key, j, 1f, 0f);
                    long i = (long)r * cols + j;
                    switch (src)
                    {
                        case DType.F32: ((float*)data)[i] = v; break;
                        case DType.F16: ((Half*)data)[i] = (Half)v; break;
                        default: ((ushort*)data)[i] = Synthetic.SyntheticWeights.ToBf16(v); break;
                    }
                }
            });
            var w = new Tensor("bench", src, new long[] { rows, cols }, data, "benchmark");
            if (src != t) w = Quantizer.Quantize(w, t, store, ct);
            CpuKernels.MatMul(w.Data, t, rows, cols, x, 1, y, rows, w.Scales); // warm-up
            var ms = new double[repeat];
            for (int r = 0; r < repeat; r++)
            {
                ct.ThrowIfCancellationRequested();
                long t0 = Stopwatch.GetTimestamp();
                CpuKernels.MatMul(w.Data, t, rows, cols, x, 1, y, rows, w.Scales);
                ms[r] = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
            }
            return new KernelTiming(ms, w.ByteLength);
        }
        finally
        {
            System.Runtime.InteropServices.NativeMemory.AlignedFree(x);
            System.Runtime.InteropServices.NativeMemory.AlignedFree(y);
        }
    }

    public KernelTiming Attention(int context, int heads, int kvHeads, int headDim, int repeat, CancellationToken ct)
    {
        Positive("Context", context); Positive("Heads", heads); Positive("KvHeads", kvHeads); Positive("HeadDim", headDim); Positive("Repeat", repeat);
        if (heads % kvHeads != 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"-Heads ({heads}) must be a multiple of -KvHeads ({kvHeads}).", "KvHeads");
        int kvd = kvHeads * headDim, group = heads / kvHeads;
        long n = (long)context * kvd;
        float* k = Alloc<float>(n), v = Alloc<float>(n);
        var q = new float[heads * headDim];
        var o = new float[heads * headDim];
        try
        {
            Parallel.For(0, 2, which =>
            {
                float* p = which == 0 ? k : v;
                ulong key = Synthetic.SyntheticWeights.Key(which, 0xCAC4E);
                for (long i = 0; i < n; i++) p[i] = Synthetic.SyntheticWeights.Value(key, i, 1f, 0f);
            });
            var rng = new Random(context);
            for (int i = 0; i < q.Length; i++) q[i] = (float)(rng.NextDouble() * 2 - 1);
            float scale = 1f / MathF.Sqrt(headDim);
            nint kp = (nint)k, vp = (nint)v;
            // The decode query is at position context - 1: it sees all `context` cached positions (CPU cache layout: [pos][K*Hd]).
            void Run()
            {
                Parallel.For(0, heads, () => new float[context], (h, _, scores) =>
                {
                    int kvh = h / group;
                    long len = (long)(context - 1) * kvd + headDim;
                    var keys = new ReadOnlySpan<float>((float*)kp + kvh * headDim, checked((int)len));
                    var vals = new ReadOnlySpan<float>((float*)vp + kvh * headDim, checked((int)len));
                    CpuOps.AttendHead(q.AsSpan(h * headDim, headDim), keys, vals, kvd, context - 1, null, scale, scores, o.AsSpan(h * headDim, headDim));
                    return scores;
                }, _ => { });
            }
            Run();
            var ms = new double[repeat];
            for (int r = 0; r < repeat; r++)
            {
                ct.ThrowIfCancellationRequested();
                long t0 = Stopwatch.GetTimestamp();
                Run();
                ms[r] = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
            }
            return new KernelTiming(ms, 2 * n * sizeof(float));
        }
        finally
        {
            System.Runtime.InteropServices.NativeMemory.AlignedFree(k);
            System.Runtime.InteropServices.NativeMemory.AlignedFree(v);
        }
    }
}
