using System.Management.Automation;
using Calm.Engine;
using Calm.Engine.Model;
using Calm.Engine.Session;
using Calm.Engine.Synthetic;

namespace Calm.PowerShell.Commands;

/// <summary>
/// New-CalmModel: a model of a named real shape (exact tensor shapes) with deterministic random weights and no files;
/// added to the session, it becomes the default model.
/// </summary>
[Cmdlet(VerbsCommon.New, "CalmModel")]
[OutputType(typeof(CalmModel))]
public sealed class NewCalmModelCommand : CalmCmdlet
{
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true, ValueFromPipelineByPropertyName = true)]
    [ValidateNotNullOrEmpty]
    [ArgumentCompleter(typeof(PresetCompleter))]
    public string Preset { get; set; } = "";

    /// <summary>Seed of the random weights; the same seed gives the same weights.</summary>
    [Parameter]
    public int Seed { get; set; }

    /// <summary>Stored weight dtype: bf16 (default), f16, f32, or fp8 / int4 (bf16 random weights quantized; CPU only in this build).</summary>
    [Parameter]
    [ArgumentCompleter(typeof(WeightDTypeCompleter))]
    public string DType { get; set; } = "bf16";

    /// <summary>KV cache type: f16 (the CUDA default) or fp8 (e4m3 with one f32 scale per row of K and V: half the
    /// bytes). Default: the backend's own (CUDA f16, CPU f32).</summary>
    [Parameter]
    [ArgumentCompleter(typeof(KvCacheDTypeCompleter))]
    [ValidateNotNullOrEmpty]
    public string? KvCacheDType { get; set; }

    /// <summary>Session name; default: the preset name, made unique.</summary>
    [Parameter]
    [ValidateNotNullOrEmpty]
    public string? Name { get; set; }

    [Parameter]
    [ArgumentCompleter(typeof(DeviceCompleter))]
    public DeviceChoice Device { get; set; } = DeviceChoice.Auto;

    /// <summary>Positions the KV cache holds.</summary>
    [Parameter]
    public int? ContextLength { get; set; }

    protected override void Process()
    {
        if (!DTypes.TryParseWeightDType(DType, out var dtype))
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                $"-DType '{DType}' is not a weight type Calm computes with. Use bf16, f16, f32, fp8 or int4.", "DType");
        string? kv = KvCacheDType is null ? null : KvCacheTypes.Parse(KvCacheDType);
        if (ContextLength is int c && c <= 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"-ContextLength must be positive (got {c}).", "ContextLength");

        var session = CalmSession.Shared;
        if (Name is not null && session.Find(Name) is not null)
            throw new CalmException(ErrorIds.ModelNameInUse, CalmErrorKind.InvalidArgument,
                $"A model named '{Name}' is already loaded. Choose another -Name or Remove-CalmModel it first.", Name);
        var name = Name ?? session.UniqueName(Presets.Canonical(Preset));

        WriteVerbose($"Creating '{name}' from preset {Preset}, seed {Seed}, {DTypes.Name(dtype)}, on {Device}.");
        var model = RunWithProgress($"New-CalmModel {name}", (reporter, ct) => ModelFactory.CreateSynthetic(Preset, Seed, dtype, new ImportOptions
        {
            Name = name,
            Device = Device,
            ContextLength = ContextLength,
            KvCacheDType = kv,
            Verbose = reporter.Verbose,
            Warning = reporter.Warning,
        }, reporter, ct));
        try { session.Add(model); }
        catch { model.Dispose(); throw; }
        WriteObject(CalmModel.From(model));
    }
}
