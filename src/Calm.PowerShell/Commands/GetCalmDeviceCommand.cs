using System.Management.Automation;
using Calm.Engine.Devices;

namespace Calm.PowerShell.Commands;

/// <summary>
/// Get-CalmDevice: the devices Calm can run on. The CPU row has the CPU model, cores and memory; with
/// -MeasureBandwidth also the measured memory read bandwidth (median of several passes, and their spread).
/// </summary>
[Cmdlet(VerbsCommon.Get, "CalmDevice")]
[OutputType(typeof(CalmDevice))]
public sealed class GetCalmDeviceCommand : CalmCmdlet
{
    /// <summary>Measure host memory read bandwidth (about a second): a multi-threaded read of a buffer far larger than the caches.</summary>
    [Parameter]
    public SwitchParameter MeasureBandwidth { get; set; }

    protected override void End()
    {
        BandwidthResult? bw = null;
        if (MeasureBandwidth)
        {
            bw = RunWithProgress("Measuring memory read bandwidth", (reporter, ct) =>
            {
                var bytes = MemoryBandwidth.DefaultBufferBytes();
                reporter.Report(new Calm.Engine.LoadProgress("Measuring memory read bandwidth",
                    $"{Environment.ProcessorCount} threads reading {bytes / (1 << 20)} MiB, 7 passes", -1));
                var r = MemoryBandwidth.Measure(new BandwidthOptions { BufferBytes = bytes }, ct);
                reporter.Verbose($"CPU read bandwidth: median {r.MedianGBps:F2} GB/s (min {r.MinGBps:F2}, max {r.MaxGBps:F2}) over {r.SamplesGBps.Length} passes of {r.BufferBytes / (1 << 20)} MiB with {r.Threads} threads.");
                return r;
            });
        }
        WriteObject(CpuInfo.Describe(bw));
    }
}
