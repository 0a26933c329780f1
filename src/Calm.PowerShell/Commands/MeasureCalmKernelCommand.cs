using System.Management.Automation;
using Calm.Engine;
using Calm.Engine.SpeedOfLight;

namespace Calm.PowerShell.Commands;

/// <summary>One Measure-CalmKernel row.</summary>
public sealed class KernelMeasurement
{
    /// <summary>"Matvec" or "Attention".</summary>
    public required string Kernel { get; init; }
    /// <summary>"4096x4096" (rows x cols) or "ctx=4096 heads=32/8 hd=128".</summary>
    public required string Shape { get; init; }
    /// <summary>Weight dtype (matvec) or KV dtype (attention).</summary>
    public required string DType { get; init; }
    public required string Device { get; init; }
    public required int Repeat { get; init; }
    /// <summary>Median milliseconds of one call.</summary>
    public required double Ms { get; init; }
    public required double MinMs { get; init; }
    /// <summary>Bytes one call must read.</summary>
    public required long Bytes { get; init; }
    /// <summary>Bytes ÷ median time.</summary>
    public required double GBps { get; init; }
    public required double BandwidthGBps { get; init; }
    public required string BandwidthSource { get; init; }
    public required double PercentOfBandwidth { get; init; }
}

/// <summary>
/// Measure-CalmKernel: the article's two microbenchmarks. A matrix-vector product of -Rows x -Cols weights in -DType,
/// or one decode query's attention over -Context cached positions with -Heads/-KvHeads/-HeadDim; GB/s against the
/// device's measured bandwidth.
/// </summary>
[Cmdlet(VerbsDiagnostic.Measure, "CalmKernel", DefaultParameterSetName = MatvecSet)]
[OutputType(typeof(KernelMeasurement))]
public sealed class MeasureCalmKernelCommand : CalmCmdlet
{
    private const string MatvecSet = "Matvec", AttentionSet = "Attention";

    [Parameter(Mandatory = true, ParameterSetName = MatvecSet)] public int Rows { get; set; }
    [Parameter(Mandatory = true, ParameterSetName = MatvecSet)] public int Cols { get; set; }
    [Parameter(ParameterSetName = MatvecSet)]
    [ArgumentCompleter(typeof(WeightDTypeCompleter))]
    public string DType { get; set; } = "bf16";

    [Parameter(Mandatory = true, ParameterSetName = AttentionSet)] public SwitchParameter Attention { get; set; }
    [Parameter(Mandatory = true, ParameterSetName = AttentionSet)] public int Context { get; set; }
    [Parameter(ParameterSetName = AttentionSet)] public int Heads { get; set; } = 32;
    [Parameter(ParameterSetName = AttentionSet)] public int KvHeads { get; set; } = 8;
    [Parameter(ParameterSetName = AttentionSet)] public int HeadDim { get; set; } = 128;

    [Parameter]
    [ArgumentCompleter(typeof(DeviceCompleter))]
    public string Device { get; set; } = "Auto";

    [Parameter]
    [ValidateRange(1, 100000)]
    public int Repeat { get; set; } = 20;

    [Parameter] public double? BandwidthGBps { get; set; }

    protected override void End()
    {
        var (kind, index) = BenchDevices.Parse(Device);
        var bench = BenchDevices.Kernels(BenchDevices.Key(kind, index));
        var result = RunWithProgress($"Measure-CalmKernel on {bench.DeviceName}", (reporter, ct) =>
        {
            var den = SolCommon.Resolve(kind, index, BandwidthGBps, null, measureCpu: true, ct, reporter.Verbose);
            reporter.Report(new LoadProgress("Measure-CalmKernel", ParameterSetName == MatvecSet ? $"matvec {Rows}x{Cols} {DType}" : $"attention over {Context} positions", -1));
            var t = ParameterSetName == MatvecSet
                ? bench.Matvec(Rows, Cols, DType, Repeat, ct)
                : bench.Attention(Context, Heads, KvHeads, HeadDim, Repeat, ct);
            return (t, den);
        });
        var (timing, d) = result;
        var sorted = timing.Ms.OrderBy(x => x).ToArray();
        double median = sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
        double gbps = timing.Bytes / (median / 1e3) / 1e9;
        WriteObject(new KernelMeasurement
        {
            Kernel = ParameterSetName == MatvecSet ? "Matvec" : "Attention",
            Shape = ParameterSetName == MatvecSet ? $"{Rows}x{Cols}" : $"ctx={Context} heads={Heads}/{KvHeads} hd={HeadDim}",
            DType = ParameterSetName != MatvecSet ? (kind == "Cpu" ? "f32" : "bf16")
                : Calm.Engine.Model.DTypes.TryParseWeightDType(DType, out var wt) ? Calm.Engine.Model.DTypes.Name(wt) : DType.ToLowerInvariant(),
            Device = bench.DeviceName, Repeat = Repeat, Ms = median, MinMs = sorted[0], Bytes = timing.Bytes, GBps = gbps,
            BandwidthGBps = d.GBps, BandwidthSource = d.Source, PercentOfBandwidth = gbps / d.GBps * 100,
        });
    }
}
