using System.Collections.ObjectModel;
using System.Management.Automation;
using Calm.Engine;
using Calm.Engine.Session;

namespace Calm.PowerShell.Commands;

/// <summary>
/// Import-CalmModel: maps and validates a Hugging Face model folder (config.json + *.safetensors), puts it on a device
/// and adds it to the session; it becomes the default model.
/// </summary>
[Cmdlet(VerbsData.Import, "CalmModel", DefaultParameterSetName = PathSet)]
[OutputType(typeof(CalmModel))]
public sealed class ImportCalmModelCommand : CalmCmdlet
{
    private const string PathSet = "Path";
    private const string LiteralPathSet = "LiteralPath";

    /// <summary>Model folder(s); wildcards allowed.</summary>
    [Parameter(Mandatory = true, Position = 0, ParameterSetName = PathSet, ValueFromPipeline = true, ValueFromPipelineByPropertyName = true)]
    [ValidateNotNullOrEmpty]
    [SupportsWildcards]
    public string[] Path { get; set; } = Array.Empty<string>();

    /// <summary>Model folder(s), taken literally (no wildcards).</summary>
    [Parameter(Mandatory = true, ParameterSetName = LiteralPathSet, ValueFromPipelineByPropertyName = true)]
    [Alias("PSPath", "LP")]
    [ValidateNotNullOrEmpty]
    public string[] LiteralPath { get; set; } = Array.Empty<string>();

    /// <summary>Session name; default: the folder name, made unique.</summary>
    [Parameter]
    [ValidateNotNullOrEmpty]
    public string? Name { get; set; }

    [Parameter]
    [ArgumentCompleter(typeof(DeviceCompleter))]
    public DeviceChoice Device { get; set; } = DeviceChoice.Auto;

    /// <summary>Positions the KV cache holds; default min(max_position_embeddings, 8192).</summary>
    [Parameter]
    public int? ContextLength { get; set; }

    /// <summary>Quantize the weights at import: fp8 (e4m3, per-row scales) or int4 (groups of 32); default: as stored.</summary>
    [Parameter]
    [ArgumentCompleter(typeof(WeightDTypeCompleter))]
    [ValidateNotNullOrEmpty]
    public string? DType { get; set; }

    /// <summary>KV cache type: f16 (the CUDA default) or fp8 (e4m3 with one f32 scale per row of K and V: half the
    /// bytes). Default: the backend's own (CUDA f16, CPU f32).</summary>
    [Parameter]
    [ArgumentCompleter(typeof(KvCacheDTypeCompleter))]
    [ValidateNotNullOrEmpty]
    public string? KvCacheDType { get; set; }

    protected override void Process()
    {
        var folders = ParameterSetName == LiteralPathSet ? LiteralPath.Select(ResolveLiteral).ToList() : Path.SelectMany(ResolveWildcard).ToList();
        if (Name is not null && folders.Count > 1)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                $"-Name '{Name}' cannot name {folders.Count} models; import them one at a time or leave out -Name.", "Name");
        if (ContextLength is int c && c <= 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"-ContextLength must be positive (got {c}).", "ContextLength");
        _weightDType = ParseDType();
        _kv = KvCacheDType is null ? null : Calm.Engine.Model.KvCacheTypes.Parse(KvCacheDType);
        foreach (var folder in folders) ImportOne(folder);
    }

    private Calm.Engine.Model.DType? _weightDType;
    private string? _kv;

    private Calm.Engine.Model.DType? ParseDType()
    {
        if (DType is null) return null;
        if (!Calm.Engine.Model.DTypes.TryParseWeightDType(DType, out var t))
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                $"-DType '{DType}' is not a weight dtype. Use fp8 or int4 to quantize at import (or bf16, f16, f32: the checkpoint's own dtype).", "DType");
        return t;
    }

    private void ImportOne(string folder)
    {
        var session = CalmSession.Shared;
        var baseName = System.IO.Path.GetFileName(System.IO.Path.TrimEndingDirectorySeparator(folder));
        var name = Name ?? session.UniqueName(string.IsNullOrEmpty(baseName) ? "model" : baseName);
        if (Name is not null && session.Find(Name) is not null)
            throw new CalmException(ErrorIds.ModelNameInUse, CalmErrorKind.InvalidArgument,
                $"A model named '{Name}' is already loaded. Choose another -Name or Remove-CalmModel it first.", Name);

        WriteVerbose($"Importing '{folder}' as '{name}' on {Device}.");
        var model = RunWithProgress($"Import-CalmModel {name}", (reporter, ct) => ModelFactory.Import(folder, new ImportOptions
        {
            Name = name,
            Device = Device,
            ContextLength = ContextLength,
            WeightDType = _weightDType,
            KvCacheDType = _kv,
            Verbose = reporter.Verbose,
            Warning = reporter.Warning,
        }, reporter, ct));
        Adopt(model);
    }

    private void Adopt(LoadedModel model)
    {
        try { CalmSession.Shared.Add(model); }
        catch { model.Dispose(); throw; }
        WriteVerbose($"Loaded '{model.Name}': {model.Config.ModelType}, {model.WeightBytes / 1e9:F2} GB of {Calm.Engine.Model.DTypes.Name(model.DType)} weights on {model.Backend.DeviceName}.");
        WriteObject(CalmModel.From(model));
    }

    private IEnumerable<string> ResolveWildcard(string path)
    {
        Collection<string> resolved;
        ProviderInfo provider;
        try { resolved = GetResolvedProviderPathFromPSPath(path, out provider); }
        catch (ItemNotFoundException) { throw NotFound(path); }
        catch (System.Management.Automation.DriveNotFoundException) { throw NotFound(path); }
        if (provider.Name != "FileSystem")
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                $"'{path}' is on the {provider.Name} provider; a model folder must be on the file system.", path);
        if (resolved.Count == 0) throw NotFound(path);
        return resolved;
    }

    private string ResolveLiteral(string path)
    {
        string full;
        try { full = SessionState.Path.GetUnresolvedProviderPathFromPSPath(path); }
        catch (System.Management.Automation.DriveNotFoundException) { throw NotFound(path); }
        if (!Directory.Exists(full) && !File.Exists(full)) throw NotFound(path);
        return full;
    }

    private static CalmException NotFound(string path) => new(ErrorIds.PathNotFound, CalmErrorKind.ObjectNotFound,
        $"Cannot find the model folder '{path}'. Give the folder that holds config.json and the *.safetensors files.", path);
}
