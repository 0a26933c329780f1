namespace Calm.Engine.Devices;

/// <summary>
/// One row of Get-CalmDevice: a CPU or a GPU. Flat scalar properties only (Export-Csv works). GPU-only properties are
/// null for the CPU row; CPU-only ones are null for GPU rows. The CUDA backend adds GPU rows with the same type.
/// </summary>
public sealed class CalmDevice
{
    /// <summary>"Cpu" or "Cuda" (the value -Device takes).</summary>
    public required string Kind { get; init; }
    /// <summary>Device ordinal within its kind (CPU: 0; CUDA: the cuda device index).</summary>
    public int Index { get; init; }
    /// <summary>Model string: /proc/cpuinfo "model name", or the GPU's name.</summary>
    public required string Name { get; init; }
    /// <summary>Logical processors (CPU) the engine may use.</summary>
    public int? Cores { get; init; }
    /// <summary>Total memory in GB (10^9 bytes): host RAM for the CPU row, device memory for a GPU.</summary>
    public double? MemoryGB { get; init; }
    /// <summary>Free memory in GB now (GPU rows; the CPU row reports MemAvailable).</summary>
    public double? FreeMemoryGB { get; init; }

    // Measured (Get-CalmDevice -MeasureBandwidth)
    /// <summary>Median measured read bandwidth in GB/s; null when not measured.</summary>
    public double? MeasuredBandwidthGBps { get; init; }
    /// <summary>(max - min) / median of the repetitions, in percent; null when not measured.</summary>
    public double? BandwidthSpreadPercent { get; init; }

    // GPU details (null on the CPU row)
    public string? ComputeCapability { get; init; }       // e.g. "9.0"
    public int? Multiprocessors { get; init; }
    public int? MemoryBusWidth { get; init; }             // bits
    public int? MemoryClockMHz { get; init; }
    /// <summary>Theoretical peak: 2 (DDR) x bus width / 8 x memory clock, GB/s.</summary>
    public double? PeakBandwidthGBps { get; init; }
    public string? DriverVersion { get; init; }
    public string? NvrtcVersion { get; init; }

    public override string ToString() => $"{Kind}:{Index} {Name}";
}
