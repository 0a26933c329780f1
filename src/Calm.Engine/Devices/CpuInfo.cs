using System.Runtime.InteropServices;

namespace Calm.Engine.Devices;

/// <summary>What the host CPU and memory are: model string, logical cores, total and available RAM.</summary>
public static class CpuInfo
{
    /// <summary>The CPU row of Get-CalmDevice (without a bandwidth measurement).</summary>
    public static CalmDevice Describe(BandwidthResult? bandwidth = null)
    {
        var (total, available) = Memory();
        return new CalmDevice
        {
            Kind = "Cpu",
            Index = 0,
            Name = ModelName(),
            Cores = Environment.ProcessorCount,
            MemoryGB = total is long t ? Math.Round(t / 1e9, 2) : null,
            FreeMemoryGB = available is long a ? Math.Round(a / 1e9, 2) : null,
            MeasuredBandwidthGBps = bandwidth is null ? null : Math.Round(bandwidth.MedianGBps, 2),
            BandwidthSpreadPercent = bandwidth is null ? null : Math.Round(bandwidth.SpreadPercent, 1),
        };
    }

    /// <summary>"model name" of /proc/cpuinfo (Linux), else the architecture and core count.</summary>
    public static string ModelName()
    {
        try
        {
            if (File.Exists("/proc/cpuinfo"))
            {
                foreach (var line in File.ReadLines("/proc/cpuinfo"))
                {
                    // x86: "model name\t: AMD EPYC ..."; arm64 has no model name, but may have "Hardware" or "CPU part".
                    int colon = line.IndexOf(':');
                    if (colon <= 0) continue;
                    var key = line[..colon].Trim();
                    if (key is "model name" or "Hardware" or "Model")
                    {
                        var v = line[(colon + 1)..].Trim();
                        if (v.Length > 0) return v;
                    }
                }
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return $"{RuntimeInformation.ProcessArchitecture} CPU";
    }

    /// <summary>Total and available physical memory in bytes (/proc/meminfo; else the GC's view of the machine).</summary>
    public static (long? Total, long? Available) Memory()
    {
        long? total = HostMemory.ReadMeminfo("MemTotal:");
        if (total is not null) return (total, HostMemory.ReadMeminfo("MemAvailable:"));
        var gc = GC.GetGCMemoryInfo();
        return (gc.TotalAvailableMemoryBytes > 0 ? gc.TotalAvailableMemoryBytes : null, null);
    }
}
