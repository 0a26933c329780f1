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
        WriteGpus();
    }

    /// <summary>One row per CUDA device; when CUDA is not usable, -Verbose says why (no rows, no error).</summary>
    private void WriteGpus()
    {
        var why = Calm.Engine.Cuda.CudaDeviceInfo.Unavailable();
        IReadOnlyList<Calm.Engine.Cuda.CudaDeviceInfo> gpus = Array.Empty<Calm.Engine.Cuda.CudaDeviceInfo>();
        try { gpus = Calm.Engine.Cuda.CudaDeviceInfo.List(); }
        catch (Calm.Engine.CalmException ex) { why ??= ex.Message; }
        if (gpus.Count == 0)
        {
            WriteVerbose($"No CUDA device: {why ?? "the driver reports no device."}");
            return;
        }
        foreach (var g in gpus)
        {
            if (g.NvrtcProblem is not null) WriteVerbose($"GPU {g.Index}: {g.NvrtcProblem}");
            WriteObject(new CalmDevice
            {
                Kind = "Cuda",
                Index = g.Index,
                Name = g.Name,
                MemoryGB = g.MemoryGB,
                FreeMemoryGB = g.FreeMemoryGB,
                ComputeCapability = g.ComputeCapability,
                Multiprocessors = g.Multiprocessors,
                MemoryBusWidth = g.MemoryBusWidth,
                MemoryClockMHz = g.MemoryClockMHz,
                PeakBandwidthGBps = g.PeakBandwidthGBps,
                DriverVersion = g.DriverVersion,
                NvrtcVersion = g.NvrtcVersion,
            });
        }
    }
}
