using System.Management.Automation;
using Calm.Engine;
using Calm.Engine.Model;
using Calm.Engine.Session;
using Calm.Engine.SpeedOfLight;

namespace Calm.PowerShell.Commands;

/// <summary>
/// Measure-CalmSpeedOfLight: real decode on a loaded model (or a synthetic one made from -Preset for the run) at each
/// -Context (the KV cache is filled with random keys/values to reach it), -Tokens timed steps after warm-up, -Repeat
/// times. One row per point (Phase = Decode) with the speed-of-light fields and what was achieved; -PromptTokens adds
/// prefill rows (Phase = Prefill, TTFT); -Breakdown adds one row per stage of a decode step, each stage timed on its
/// own. Rows are written as each point finishes: Ctrl+C keeps what was measured.
/// </summary>
[Cmdlet(VerbsDiagnostic.Measure, "CalmSpeedOfLight", DefaultParameterSetName = ModelSet)]
[OutputType(typeof(SolMeasurement), typeof(SolStageMeasurement))]
public sealed class MeasureCalmSpeedOfLightCommand : CalmCmdlet
{
    private const string ModelSet = "Model", PresetSet = "Preset";

    /// <summary>A loaded model (default: the session's last loaded).</summary>
    [Parameter(Position = 0, ValueFromPipeline = true, ParameterSetName = ModelSet)]
    [ModelTransformation]
    [ArgumentCompleter(typeof(ModelNameCompleter))]
    public CalmModel? Model { get; set; }

    /// <summary>Make a synthetic model of this preset for the run (freed afterwards).</summary>
    [Parameter(Mandatory = true, ParameterSetName = PresetSet)]
    [ArgumentCompleter(typeof(PresetCompleter))]
    public string Preset { get; set; } = "";

    /// <summary>Weight dtype of the synthetic model: bf16, f16 or f32.</summary>
    [Parameter(ParameterSetName = PresetSet)]
    [ArgumentCompleter(typeof(DTypeCompleter))]
    public string DType { get; set; } = "bf16";

    [Parameter(ParameterSetName = PresetSet)]
    [ArgumentCompleter(typeof(DeviceCompleter))]
    public DeviceChoice Device { get; set; } = DeviceChoice.Auto;

    [Parameter(ParameterSetName = PresetSet)]
    public int Seed { get; set; }

    /// <summary>KV cache type of the model made for the measurement: f16 (the CUDA default) or fp8 (e4m3 with one f32
    /// scale per row). Default: the backend's own.</summary>
    [Parameter(ParameterSetName = PresetSet)]
    [ArgumentCompleter(typeof(KvCacheDTypeCompleter))]
    [ValidateNotNullOrEmpty]
    public string? KvCacheDType { get; set; }

    /// <summary>Positions already in the KV cache when the timed tokens start (llama-bench's n_depth).</summary>
    [Parameter]
    [Alias("n_depth", "Depth")]
    public int[] Context { get; set; } = { 0 };

    /// <summary>Timed decode steps per point and repetition (llama-bench's n_gen).</summary>
    [Parameter]
    [Alias("n_gen")]
    [ValidateRange(1, 1 << 20)]
    public int Tokens { get; set; } = 16;

    [Parameter]
    [ValidateRange(0, 1 << 20)]
    public int Warmup { get; set; } = 2;

    [Parameter]
    [Alias("Repetitions", "r")]
    [ValidateRange(1, 1000)]
    public int Repeat { get; set; } = 3;

    /// <summary>Prompt lengths to time prefill at (llama-bench's n_prompt); none by default.</summary>
    [Parameter]
    [Alias("n_prompt")]
    public int[] PromptTokens { get; set; } = Array.Empty<int>();

    /// <summary>Also emit per-stage rows (AttentionProjections, Ffn, Classifier, Attention, Other) at each context.</summary>
    [Parameter] public SwitchParameter Breakdown { get; set; }

    /// <summary>Emit rows with llama-bench's column names (n_prompt, n_gen, n_depth, avg_ts, stddev_ts, model_size, model_n_params).</summary>
    [Parameter] public SwitchParameter LlamaBench { get; set; }

    /// <summary>The denominator; default: this session's measured bandwidth of the device (measured now on the CPU if not yet).</summary>
    [Parameter] public double? BandwidthGBps { get; set; }
    [Parameter] public double? TflopsPerSecond { get; set; }

    private readonly List<LoadedModel> _models = new();

    protected override void Process()
    {
        if (ParameterSetName == ModelSet) _models.Add(ResolveModel(Model));
    }

    protected override void End()
    {
        if (ParameterSetName == PresetSet)
        {
            if (!DTypes.TryParseWeightDType(DType, out var dtype) || !(DTypes.IsWeightType(dtype) || DTypes.IsQuantized(dtype)))
                throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"-DType '{DType}' is not a weight type Calm computes with. Use bf16, f16, f32, fp8 or int4.", "DType");
            string? kv = KvCacheDType is null ? null : KvCacheTypes.Parse(KvCacheDType);
            if (Context.Length == 0) Context = new[] { 0 };
            int need = Math.Max(Context.Max() + Math.Max(Tokens, Warmup), PromptTokens.Length > 0 ? PromptTokens.Max() : 1);
            var name = CalmSession.Shared.UniqueName($"{Calm.Engine.Synthetic.Presets.Canonical(Preset)}-bench");
            var model = RunWithProgress($"Creating {Preset} ({DType}) for the measurement", (reporter, ct) =>
                ModelFactory.CreateSynthetic(Preset, Seed, dtype, new ImportOptions
                {
                    Name = name, Device = Device, ContextLength = need, KvCacheDType = kv, Verbose = reporter.Verbose, Warning = reporter.Warning,
                }, reporter, ct));
            try { Measure(model); }
            finally { model.Dispose(); }
            return;
        }
        foreach (var m in _models) Measure(m);
    }

    private void Measure(LoadedModel m)
    {
        var key = BenchDevices.KeyOf(m.Backend);
        var (kind, index) = BenchDevices.Parse(key);
        var contexts = Context.Length == 0 ? new[] { 0 } : Context;
        var baseOptions = new SolBenchOptions { Contexts = contexts, Tokens = Tokens, Warmup = Warmup, Repeat = Repeat, Seed = 1, BandwidthGBps = 1 };
        SolBench.Validate(m, baseOptions);
        foreach (var p in PromptTokens)
            if (p <= 0 || p > m.Backend.MaxContext)
                throw new CalmException(ErrorIds.ContextOverflow, CalmErrorKind.LimitExceeded,
                    $"-PromptTokens {p} must be in 1..{m.Backend.MaxContext} (the KV cache of '{m.Name}').", "PromptTokens");

        using var gate = m.Acquire(CancellationToken);
        var den = RunWithProgress("Memory bandwidth", (reporter, ct) =>
            SolCommon.Resolve(kind, index, BandwidthGBps, TflopsPerSecond, measureCpu: true, ct, reporter.Verbose));
        WriteVerbose($"Denominator: {den.GBps:F1} GB/s ({den.Source}) on {den.DeviceName}.");
        var o = baseOptions with
        {
            BandwidthGBps = den.GBps, BandwidthSource = den.Source, PeakBandwidthGBps = den.PeakGBps, TflopsPerSecond = den.Tflops,
        };

        int total = PromptTokens.Length + contexts.Length * (Breakdown ? 2 : 1), done = 0;
        string activity = $"Measure-CalmSpeedOfLight {m.Name} on {m.Backend.DeviceName}";
        foreach (var p in PromptTokens)
        {
            var row = RunWithProgress(activity, (reporter, ct) =>
            {
                reporter.Report(new LoadProgress(activity, $"prefill of {p} tokens, {Repeat} repetitions", (double)done / total));
                return SolBench.MeasurePrefill(m, o, p, ct);
            });
            done++;
            Emit(row);
        }
        foreach (var ctx in contexts)
        {
            var row = RunWithProgress(activity, (reporter, ct) =>
            {
                reporter.Report(new LoadProgress(activity, $"decode at context {ctx}: {Repeat} x {Tokens} tokens", (double)done / total));
                return SolBench.MeasureDecode(m, o, ctx, ct);
            });
            done++;
            Emit(row);
            if (Breakdown)
            {
                var stages = RunWithProgress(activity, (reporter, ct) =>
                {
                    reporter.Report(new LoadProgress(activity, $"per-stage profile at context {ctx}", (double)done / total));
                    return SolBench.MeasureStages(m, o, ctx, ct);
                });
                done++;
                if (!LlamaBench) foreach (var s in stages) WriteObject(s);
            }
        }
    }

    private void Emit(SolMeasurement row)
    {
        if (!LlamaBench) { WriteObject(row); return; }
        var o = new PSObject();
        o.TypeNames.Insert(0, "Calm.LlamaBenchRow");
        foreach (var (k, v) in SolBench.LlamaBenchColumns(row)) o.Properties.Add(new PSNoteProperty(k, v));
        WriteObject(o);
    }
}
