using System.Management.Automation;
using Calm.Engine;
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

    /// <summary>One row per CUDA device; when CUDA is not usable, -Verbose says why (no rows, no error). With
    /// -MeasureBandwidth, each GPU's streaming read is measured too (CudaBandwidth, 4 GiB, 10 passes).</summary>
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
            BandwidthResult? gbw = null;
            if (MeasureBandwidth && g.NvrtcVersion is not null)
            {
                var index = g.Index;
                gbw = RunWithProgress($"Measuring {g.Name} read bandwidth", (reporter, ct) =>
                {
                    var r = Calm.Engine.Cuda.CudaBandwidth.Measure(Calm.Engine.Cuda.CudaBandwidthKind.Read, Calm.Engine.Cuda.CudaBandwidth.DefaultBytes, 10, index, ct);
                    reporter.Verbose($"{g.Name} read bandwidth: median {r.MedianGBps:F1} GB/s (min {r.MinGBps:F1}, max {r.MaxGBps:F1}) over {r.SamplesGBps.Length} passes of {r.BufferBytes >> 20} MiB.");
                    return r;
                });
            }
            if (g.NvrtcProblem is not null) WriteVerbose($"GPU {g.Index}: kernels cannot be compiled: {g.NvrtcProblem}");
            WriteObject(new CalmDevice
            {
                Kind = "Cuda",
                Index = g.Index,
                Name = g.Name,
                MemoryGB = g.MemoryGB,
                FreeMemoryGB = g.FreeMemoryGB,
                ComputeCapability = g.ComputeCapability,
                Multiprocessors = g.Multiprocessors,
                MemoryBusWidth = g.MemoryBusWidth > 0 ? g.MemoryBusWidth : null,
                MemoryClockMHz = g.MemoryClockMHz > 0 ? g.MemoryClockMHz : null,
                PeakBandwidthGBps = g.PeakBandwidthGBps > 0 ? g.PeakBandwidthGBps : null,
                DriverVersion = g.DriverVersion,
                NvrtcVersion = g.NvrtcVersion,
                MeasuredBandwidthGBps = gbw is null ? null : Math.Round(gbw.MedianGBps, 1),
                BandwidthSpreadPercent = gbw is null ? null : Math.Round(gbw.SpreadPercent, 1),
            });
        }
    }
}
