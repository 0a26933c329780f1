using System.Management.Automation;
using Calm.Engine;
using Calm.Engine.SpeedOfLight;

namespace Calm.PowerShell.Commands;

/// <summary>
/// Measure-CalmBandwidth: the physical limit. Streams a buffer far larger than the caches: on the CPU every core reads
/// its slice; on a GPU a read kernel and a copy kernel. One row per device and kind with the median GB/s, min, max,
/// spread and the datasheet-style peak beside it. The read figure becomes this session's default denominator for
/// Get-CalmSpeedOfLight and Measure-CalmSpeedOfLight on that device.
/// </summary>
[Cmdlet(VerbsDiagnostic.Measure, "CalmBandwidth")]
[OutputType(typeof(BandwidthMeasurement))]
public sealed class MeasureCalmBandwidthCommand : CalmCmdlet
{
    /// <summary>Cpu, Cuda, Cuda:n or Auto (the GPU when there is one, else the CPU).</summary>
    [Parameter(Position = 0, ValueFromPipelineByPropertyName = true)]
    [ArgumentCompleter(typeof(DeviceCompleter))]
    public string[] Device { get; set; } = { "Auto" };

    /// <summary>Read and/or Copy (default: Read on the CPU; Read and Copy on a GPU).</summary>
    [Parameter]
    [ValidateSet("Read", "Copy", IgnoreCase = true)]
    public string[]? Kind { get; set; }

    /// <summary>Bytes streamed per repetition (default: several times the last-level cache).</summary>
    [Parameter]
    [ValidateRange(1L << 20, long.MaxValue)]
    public long? BufferBytes { get; set; }

    [Parameter]
    [ValidateRange(1, 1000)]
    public int Repeat { get; set; } = 7;

    protected override void Process()
    {
        foreach (var d in Device)
        {
            var (kind, index) = BenchDevices.Parse(d);
            var kinds = Kind ?? (kind == "Cpu" ? new[] { "Read" } : new[] { "Read", "Copy" });
            var probe = BenchDevices.Bandwidth(BenchDevices.Key(kind, index));
            foreach (var k in kinds)
            {
                var r = RunWithProgress($"Measure-CalmBandwidth {probe.DeviceName}", (reporter, ct) =>
                {
                    long bytes = BufferBytes ?? probe.DefaultBufferBytes;
                    reporter.Report(new LoadProgress($"Measuring {k.ToLowerInvariant()} bandwidth of {probe.DeviceName}",
                        $"{Repeat} passes over {bytes / (1 << 20)} MiB", -1));
                    return BenchDevices.MeasureBandwidth(probe, k, bytes, Repeat, ct);
                });
                WriteVerbose($"{r.Device} {r.Kind}: median {r.MedianGBps:F1} GB/s (min {r.MinGBps:F1}, max {r.MaxGBps:F1}, spread {r.SpreadPercent:F1}%).");
                WriteObject(r);
            }
        }
    }
}
