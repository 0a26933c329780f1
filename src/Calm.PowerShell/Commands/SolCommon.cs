using Calm.Engine;
using Calm.Engine.SpeedOfLight;

namespace Calm.PowerShell.Commands;

/// <summary>The bandwidth denominator the speed-of-light cmdlets share: given, measured this session, or the datasheet peak.</summary>
internal static class SolCommon
{
    internal sealed record Denominator(double GBps, string Source, double? PeakGBps, double? Tflops, string DeviceName);

    /// <summary>
    /// -BandwidthGBps when given; else the read bandwidth Measure-CalmBandwidth last measured on the device this session;
    /// else the GPU's attribute peak; else, for the CPU when <paramref name="measureCpu"/>, a quick measurement now
    /// (remembered); else Calm.BandwidthUnknown.
    /// </summary>
    internal static Denominator Resolve(string kind, int index, double? given, double? tflops, bool measureCpu, CancellationToken ct, Action<string>? verbose = null)
    {
        double? peak = BenchDevices.AttributePeakGBps(kind, index);
        string name = kind == "Cpu" ? "Cpu" : $"Cuda:{index}";
        if (given is double g)
        {
            if (!(g > 0))
                throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"-BandwidthGBps must be positive (got {g}).", "BandwidthGBps");
            return new(g, "Given", peak, tflops, name);
        }
        if (BenchDevices.Measured(kind, index) is { } m)
            return new(m.MedianGBps, "Measured", peak ?? m.PeakGBps, tflops ?? DeviceTflops(kind, m.Device), m.Device);
        if (peak is double p)
            return new(p, "Datasheet", p, tflops ?? DeviceTflops(kind, null, index), name);
        if (kind == "Cpu" && measureCpu)
        {
            verbose?.Invoke("No CPU bandwidth measured in this session yet: measuring it now (Measure-CalmBandwidth -Device Cpu).");
            var probe = new CpuBandwidthProbe();
            var r = BenchDevices.MeasureBandwidth(probe, "Read", Math.Min(probe.DefaultBufferBytes, 256L << 20), 5, ct);
            return new(r.MedianGBps, "Measured", null, tflops, r.Device);
        }
        if (kind != "Cpu" && Calm.Engine.Cuda.CudaDeviceInfo.Unavailable() is string why)
            throw new CalmException(ErrorIds.DeviceNotAvailable, CalmErrorKind.NotAvailable,
                $"{name} is not available: {why} Pass -BandwidthGBps to compute the speed of light for another device.", "Device");
        throw new CalmException(ErrorIds.BandwidthUnknown, CalmErrorKind.NotAvailable,
            $"No memory bandwidth is known for {name}: it was not measured in this session and the device reports no peak. " +
            $"Run Measure-CalmBandwidth -Device {name} first, or pass -BandwidthGBps.", "BandwidthGBps");
    }

    private static double? DeviceTflops(string kind, string? name, int index = 0)
    {
        if (kind == "Cpu") return null;
        if (name is null)
        {
            try { var list = Calm.Engine.Cuda.CudaDeviceInfo.List(); if (index < list.Count) name = list[index].Name; }
            catch (CalmException) { }
        }
        return BenchDevices.KnownTflops(name);
    }
}
