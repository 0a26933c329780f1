// The GPU side of Measure-CalmBandwidth and Measure-CalmKernel: adapters from IBandwidthProbe / IKernelBench onto
// Calm.Engine.Cuda.CudaBandwidth and Calm.Engine.Cuda.CudaMicrobench (written in the CUDA work, wip/cuda2).
using System.Runtime.CompilerServices;
using Calm.Engine.Cuda;

namespace Calm.Engine.SpeedOfLight;

internal static class CudaProbeRegistration
{
    [ModuleInitializer]
    internal static void Register() => BenchDevices.RegisterCuda(i => new CudaBandwidthProbe(i), i => new CudaKernelBench(i));
}

internal sealed class CudaBandwidthProbe(int index) : IBandwidthProbe
{
    private readonly CudaDeviceInfo _info = Info(index);

    internal static CudaDeviceInfo Info(int index)
    {
        if (CudaDeviceInfo.Unavailable() is string why)
            throw new CalmException(ErrorIds.DeviceNotAvailable, CalmErrorKind.ResourceUnavailable, $"CUDA cannot be used here: {why}. Use -Device Cpu.", "Device");
        var list = CudaDeviceInfo.List();
        if (index >= list.Count)
            throw new CalmException(ErrorIds.DeviceNotAvailable, CalmErrorKind.ResourceUnavailable,
                $"There is no CUDA device {index} (this machine has {list.Count}). Get-CalmDevice lists them.", "Device");
        return list[index];
    }

    public string DeviceKind => "Cuda";
    public int DeviceIndex => index;
    public string DeviceName => _info.Name;
    public double? PeakGBps => _info.PeakBandwidthGBps > 0 ? _info.PeakBandwidthGBps : null;
    public double? PeakTflops => BenchDevices.KnownTflops(_info.Name);
    /// <summary>The same buffer as CudaBandwidth's default (4 GiB, far beyond any L2), so every figure uses one denominator.</summary>
    public long DefaultBufferBytes => CudaBandwidth.DefaultBytes;

    public double[] Measure(string kind, long bytes, int repeat, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        var k = kind.Equals("copy", StringComparison.OrdinalIgnoreCase) ? CudaBandwidthKind.Copy : CudaBandwidthKind.Read;
        return CudaBandwidth.Measure(k, bytes, repeat, index, ct).SamplesGBps;
    }
}

internal sealed class CudaKernelBench(int index) : IKernelBench
{
    private readonly CudaDeviceInfo _info = CudaBandwidthProbe.Info(index);
    public string DeviceKind => "Cuda";
    public string DeviceName => _info.Name;

    public KernelTiming Matvec(int rows, int cols, string dtype, int repeat, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        if (!Calm.Engine.Model.DTypes.TryParseWeightDType(dtype, out var dt))
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Unknown dtype '{dtype}'. Use bf16, f16, f32, fp8 or int4.", "DType");
        // fp8 (e4m3, per-row scales) and int4 (groups of 32, fp16 scales): kernels/matvec_quant.cu; bytes include scales
        var r = Calm.Engine.Model.DTypes.IsQuantized(dt)
            ? CudaQuantKernels.Bench(rows, cols, dt, repeat, index, ct)
            : CudaMicrobench.Matvec(rows, cols, dt, repeat, index, ct);
        return new SpeedOfLight.KernelTiming(r.Ms, r.Bytes);
    }

    public KernelTiming Attention(int context, int heads, int kvHeads, int headDim, int repeat, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        var r = CudaMicrobench.Attention(context, heads, kvHeads, headDim, repeat, index, ct);
        return new SpeedOfLight.KernelTiming(r.Ms, r.Bytes);
    }
}
