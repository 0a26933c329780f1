using System.Management.Automation;
using Calm.Engine;
using Calm.Engine.Model;
using Calm.Engine.SpeedOfLight;
using Calm.Engine.Synthetic;

namespace Calm.PowerShell.Commands;

/// <summary>
/// Get-CalmSpeedOfLight: pure arithmetic. For a loaded model, a preset or explicit dimensions: the bytes one decoded
/// token must read (every weight once + the KV cache so far), its FLOPs, and the fastest token rate the bandwidth
/// allows, one row per -Context. The bandwidth is -BandwidthGBps, or the device's (measured this session, else its
/// datasheet peak; BandwidthSource says which).
/// </summary>
[Cmdlet(VerbsCommon.Get, "CalmSpeedOfLight", DefaultParameterSetName = PresetSet)]
[OutputType(typeof(SolPoint))]
public sealed class GetCalmSpeedOfLightCommand : CalmCmdlet
{
    private const string ModelSet = "Model", PresetSet = "Preset", DimsSet = "Dims";

    [Parameter(Mandatory = true, ValueFromPipeline = true, ParameterSetName = ModelSet)]
    [ModelTransformation]
    [ArgumentCompleter(typeof(ModelNameCompleter))]
    public CalmModel? Model { get; set; }

    /// <summary>Preset names (Get-CalmPreset); its rows pipe in by Name.</summary>
    [Parameter(Mandatory = true, Position = 0, ValueFromPipelineByPropertyName = true, ParameterSetName = PresetSet)]
    [Alias("Name")]
    [ArgumentCompleter(typeof(PresetCompleter))]
    public string[] Preset { get; set; } = Array.Empty<string>();

    /// <summary>
    /// The pipeline object in the preset set: a loaded model (Get-CalmModel, New-CalmModel) also has a Preset property,
    /// so it binds here by name; it is then measured as the model it is.
    /// </summary>
    [Parameter(ValueFromPipeline = true, ParameterSetName = PresetSet, DontShow = true)]
    public PSObject? InputObject { get; set; }

    [Parameter(Mandatory = true, ParameterSetName = DimsSet)] public int Layers { get; set; }
    [Parameter(Mandatory = true, ParameterSetName = DimsSet)] public int Hidden { get; set; }
    [Parameter(Mandatory = true, ParameterSetName = DimsSet)] public int Intermediate { get; set; }
    [Parameter(Mandatory = true, ParameterSetName = DimsSet)] public int Heads { get; set; }
    [Parameter(ParameterSetName = DimsSet)] public int? KvHeads { get; set; }
    [Parameter(ParameterSetName = DimsSet)] public int? HeadDim { get; set; }
    [Parameter(Mandatory = true, ParameterSetName = DimsSet)] public int Vocab { get; set; }
    [Parameter(ParameterSetName = DimsSet)] public SwitchParameter TiedEmbeddings { get; set; }
    [Parameter(ParameterSetName = DimsSet)] public int Experts { get; set; }
    [Parameter(ParameterSetName = DimsSet)] public int ExpertsPerToken { get; set; }
    /// <summary>Label of an explicit shape in the Model column.</summary>
    [Parameter(ParameterSetName = DimsSet)] public string ModelName { get; set; } = "custom";

    /// <summary>Weight dtype: bf16, f16, f32, fp8, int4 (default: the model's, or bf16).</summary>
    [Parameter]
    [ArgumentCompleter(typeof(SolDTypeCompleter))]
    public string? DType { get; set; }

    /// <summary>KV cache dtype (default: the weights' dtype; a model loaded on the CPU keeps an f32 cache).</summary>
    [Parameter]
    [ArgumentCompleter(typeof(SolDTypeCompleter))]
    public string? KvCacheDType { get; set; }

    /// <summary>Positions already in the KV cache, one row each.</summary>
    [Parameter]
    public int[] Context { get; set; } = { 0 };

    [Parameter] public double? BandwidthGBps { get; set; }
    [Parameter] public double? TflopsPerSecond { get; set; }

    /// <summary>Cpu, Cuda, Cuda:n (default: the model's device, else Auto).</summary>
    [Parameter]
    [ArgumentCompleter(typeof(DeviceCompleter))]
    public string? Device { get; set; }

    protected override void Process()
    {
        var set = ParameterSetName;
        if (set == PresetSet && InputObject?.BaseObject is CalmModel piped) { Model = piped; set = ModelSet; }
        switch (set)
        {
            case ModelSet:
            {
                var m = ResolveModel(Model);
                var (kind, index) = Device is null ? KindOf(m) : BenchDevices.Parse(Device);
                Emit(m.Name, m.Config, DType ?? DTypes.Name(m.DType), KvCacheDType ?? (DType is null ? m.Backend.KvCacheDType : DType), kind, index);
                break;
            }
            case PresetSet:
                foreach (var p in Preset)
                {
                    var preset = Presets.Find(p);
                    var (kind, index) = BenchDevices.Parse(Device);
                    Emit(preset.Name, preset.Config, DType ?? "bf16", KvCacheDType ?? DType ?? "bf16", kind, index);
                }
                break;
            default:
            {
                int kv = KvHeads ?? Heads;
                if (Layers <= 0 || Hidden <= 0 || Intermediate <= 0 || Heads <= 0 || kv <= 0 || Vocab <= 0 || Heads % kv != 0)
                    throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                        $"Dimensions must be positive and -Heads ({Heads}) a multiple of -KvHeads ({kv}).", "Heads");
                var c = new ModelConfig
                {
                    Architecture = Experts > 0 ? Architecture.Mixtral : Architecture.Llama, ModelType = Experts > 0 ? "mixtral" : "llama",
                    VocabSize = Vocab, HiddenSize = Hidden, IntermediateSize = Intermediate, NumLayers = Layers, NumHeads = Heads,
                    NumKvHeads = kv, HeadDim = HeadDim ?? Hidden / Heads, MaxPositionEmbeddings = int.MaxValue, TieWordEmbeddings = TiedEmbeddings,
                    NumExperts = Experts, NumExpertsPerToken = Experts > 0 ? Math.Max(ExpertsPerToken, 1) : 0,
                };
                var (kind, index) = BenchDevices.Parse(Device);
                Emit(ModelName, c, DType ?? "bf16", KvCacheDType ?? DType ?? "bf16", kind, index);
                break;
            }
        }
    }

    private static (string, int) KindOf(Calm.Engine.Session.LoadedModel m)
    {
        var key = BenchDevices.KeyOf(m.Backend);
        return key == "Cpu" ? ("Cpu", 0) : ("Cuda", int.Parse(key[5..], System.Globalization.CultureInfo.InvariantCulture));
    }

    private void Emit(string name, ModelConfig c, string dtype, string kv, string kind, int index)
    {
        SolModel.BytesPerElement(dtype); SolModel.BytesPerElement(kv); // unknown dtype: Calm.InvalidArgument before anything else
        // The CPU has no datasheet figure: without -BandwidthGBps or an earlier measurement, measure it now (~1 s, remembered).
        var den = SolCommon.Resolve(kind, index, BandwidthGBps, TflopsPerSecond, measureCpu: true, CancellationToken, WriteVerbose);
        foreach (int ctx in Context)
        {
            var p = SolModel.Compute(name, c, dtype, kv, ctx, den.GBps, den.Tflops) with { BandwidthSource = den.Source, Parameters = c.ParameterCount };
            WriteObject(p);
        }
    }
}

/// <summary>-DType of the speed-of-light cmdlets: the dtypes the byte model knows.</summary>
public sealed class SolDTypeCompleter : System.Management.Automation.IArgumentCompleter
{
    public IEnumerable<System.Management.Automation.CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete,
        System.Management.Automation.Language.CommandAst commandAst, System.Collections.IDictionary fakeBoundParameters)
        => Completion.Matching(wordToComplete, new[]
        {
            ("bf16", "bfloat16, 2 bytes"), ("f16", "IEEE half, 2 bytes"), ("f32", "float, 4 bytes"),
            ("fp8", "8-bit float, 1 byte"), ("int4", "4-bit + one fp16 scale per 32, 0.5625 bytes"),
        });
}
