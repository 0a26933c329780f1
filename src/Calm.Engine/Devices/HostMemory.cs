namespace Calm.Engine.Devices;

/// <summary>The host's physical memory, from /proc/meminfo on Linux (else the GC's view of the machine).</summary>
public static class HostMemory
{
    /// <summary>Memory the process can still take (MemAvailable).</summary>
    public static long AvailableBytes() => ReadMeminfo("MemAvailable:") ?? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;

    /// <summary>Physical memory (MemTotal).</summary>
    public static long TotalBytes() => ReadMeminfo("MemTotal:") ?? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;

    /// <summary>A "Key:  N kB" line of /proc/meminfo in bytes; null off Linux or when unreadable.</summary>
    public static long? ReadMeminfo(string key)
    {
        try
        {
            if (!File.Exists("/proc/meminfo")) return null;
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith(key, StringComparison.Ordinal))
                {
                    var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    return parts.Length >= 2 && long.TryParse(parts[1], out var kb) ? kb * 1024 : null;
                }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }
}
