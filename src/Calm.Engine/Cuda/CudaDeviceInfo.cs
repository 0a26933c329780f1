using System.Text;

namespace Calm.Engine.Cuda;

/// <summary>One GPU as Get-CalmDevice shows it.</summary>
public sealed record CudaDeviceInfo
{
    public int Index { get; init; }
    public required string Name { get; init; }
    /// <summary>"9.0"</summary>
    public required string ComputeCapability { get; init; }
    /// <summary>Architecture number NVRTC targets (90 for sm_90).</summary>
    public int Arch { get; init; }
    public double MemoryGB { get; init; }
    public double FreeMemoryGB { get; init; }
    public int Multiprocessors { get; init; }
    /// <summary>Bits.</summary>
    public int MemoryBusWidth { get; init; }
    public int MemoryClockMHz { get; init; }
    /// <summary>2 (DDR) * memory clock * bus width / 8, in GB/s (0 when the driver does not report the attributes).</summary>
    public double PeakBandwidthGBps { get; init; }
    public int L2CacheMB { get; init; }
    /// <summary>"13.0"</summary>
    public required string DriverVersion { get; init; }
    /// <summary>"12.8", or null when NVRTC is missing (then <see cref="NvrtcProblem"/> says why).</summary>
    public string? NvrtcVersion { get; init; }
    public string? NvrtcProblem { get; init; }

    /// <summary>Why CUDA cannot be used here (no driver, no device, no NVRTC), or null when it can.</summary>
    public static string? Unavailable()
    {
        var why = Cu.TryLoad();
        if (why is not null) return why;
        return Nvrtc.TryLoad();
    }

    /// <summary>Every CUDA device; empty when there is no driver or no device (see <see cref="Unavailable"/>).</summary>
    public static unsafe IReadOnlyList<CudaDeviceInfo> List()
    {
        if (Cu.TryLoad() is not null) return Array.Empty<CudaDeviceInfo>();
        int n, drv;
        CudaException.Check(Cu.cuDeviceGetCount(&n), "cuDeviceGetCount");
        CudaException.Check(Cu.cuDriverGetVersion(&drv), "cuDriverGetVersion");
        var nvrtcWhy = Nvrtc.TryLoad();
        string? nvrtc = null;
        if (nvrtcWhy is null) { var (a, b) = Nvrtc.Version; nvrtc = $"{a}.{b}"; }
        var list = new List<CudaDeviceInfo>();
        for (int i = 0; i < n; i++)
        {
            int dev;
            CudaException.Check(Cu.cuDeviceGet(&dev, i), "cuDeviceGet");
            var nameBuf = new byte[256];
            fixed (byte* p = nameBuf) CudaException.Check(Cu.cuDeviceGetName(p, 256, dev), "cuDeviceGetName");
            int d0 = dev;
            int Attr(int a) => GetAttr(a, d0);
            int major = Attr(Cu.ATTR_COMPUTE_CAPABILITY_MAJOR), minor = Attr(Cu.ATTR_COMPUTE_CAPABILITY_MINOR);
            nuint total;
            CudaException.Check(Cu.cuDeviceTotalMem(&total, dev), "cuDeviceTotalMem");
            long free;
            using (var ctx = CudaContext.Acquire(i)) free = ctx.MemoryInfo().Free;
            int clockKHz = Attr(Cu.ATTR_MEMORY_CLOCK_RATE), bus = Attr(Cu.ATTR_GLOBAL_MEMORY_BUS_WIDTH);
            list.Add(new CudaDeviceInfo
            {
                Index = i,
                Name = Encoding.ASCII.GetString(nameBuf).TrimEnd('\0'),
                ComputeCapability = $"{major}.{minor}",
                Arch = major * 10 + minor,
                MemoryGB = Math.Round((long)total / 1e9, 2),
                FreeMemoryGB = Math.Round(free / 1e9, 2),
                Multiprocessors = Attr(Cu.ATTR_MULTIPROCESSOR_COUNT),
                MemoryBusWidth = bus,
                MemoryClockMHz = clockKHz / 1000,
                PeakBandwidthGBps = Math.Round(PeakBandwidth(clockKHz, bus), 1),
                L2CacheMB = Attr(Cu.ATTR_L2_CACHE_SIZE) >> 20,
                DriverVersion = $"{drv / 1000}.{drv % 1000 / 10}",
                NvrtcVersion = nvrtc,
                NvrtcProblem = nvrtcWhy,
            });
        }
        return list;
    }

    private static unsafe int GetAttr(int a, int dev) { int v; return Cu.cuDeviceGetAttribute(&v, a, dev) == 0 ? v : 0; }

    /// <summary>GB/s from the memory clock (kHz) and bus width (bits): 2 transfers per clock.</summary>
    public static double PeakBandwidth(int memoryClockKHz, int busWidthBits) => 2.0 * memoryClockKHz * 1e3 * (busWidthBits / 8.0) / 1e9;
}
