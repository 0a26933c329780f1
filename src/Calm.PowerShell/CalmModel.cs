using Calm.Engine;
using Calm.Engine.Model;
using Calm.Engine.Session;

namespace Calm.PowerShell;

/// <summary>
/// What Import-CalmModel, New-CalmModel and Get-CalmModel write: a flat snapshot of a loaded model (Export-Csv works).
/// The engine model it stands for is kept in an internal member, so -Model binds it from the pipeline.
/// </summary>
public sealed class CalmModel
{
    public string Name { get; }
    /// <summary>Family, as config.json's model_type (llama, mistral, qwen2, qwen3, gemma, phi3, mixtral).</summary>
    public string? Architecture { get; }
    public long? Parameters { get; }
    public int? Layers { get; }
    public int? HiddenSize { get; }
    public int? Heads { get; }
    public int? KvHeads { get; }
    public int? HeadDim { get; }
    public int? Vocab { get; }
    /// <summary>Positions the KV cache holds.</summary>
    public int? ContextLength { get; }
    /// <summary>Stored weight dtype: bf16, f16 or f32.</summary>
    public string? DType { get; }
    /// <summary>Cpu or Cuda.</summary>
    public string? Device { get; }
    /// <summary>KV cache type: f16 or fp8 (-KvCacheDType), f32 for the CPU's default cache.</summary>
    public string? KvCacheDType { get; }
    /// <summary>How a GPU decode step runs: graph (the step's kernels captured as one CUDA graph) or persistent (one
    /// cooperative kernel per token, CALM_DECODE=persistent); empty on the CPU.</summary>
    public string? Decode { get; }
    /// <summary>The kernel switches (CALM_* variables) set when the model was made, "NAME=value;..."; empty when every
    /// kernel runs its default, and on the CPU.</summary>
    public string? KernelSwitches { get; }
    public long? WeightBytes { get; }
    /// <summary>The model folder; empty for synthetic models.</summary>
    public string? Path { get; }
    /// <summary>Preset of a synthetic model (New-CalmModel); empty for imported folders.</summary>
    public string? Preset { get; }
    public int? Seed { get; }

    /// <summary>The engine's model; null for a reference by name that has not been resolved (see <see cref="ModelTransformationAttribute"/>).</summary>
    internal LoadedModel? Loaded { get; }

    private CalmModel(LoadedModel m)
    {
        Loaded = m;
        var c = m.Config;
        Name = m.Name;
        Architecture = c.ModelType;
        Parameters = c.ParameterCount;
        Layers = c.NumLayers;
        HiddenSize = c.HiddenSize;
        Heads = c.NumHeads;
        KvHeads = c.NumKvHeads;
        HeadDim = c.HeadDim;
        Vocab = c.VocabSize;
        ContextLength = m.Backend.MaxContext;
        DType = DTypes.Name(m.DType);
        Device = m.DeviceKind;
        KvCacheDType = m.Backend.KvCacheDType;
        Decode = m.Backend is Calm.Engine.Cuda.CudaBackend cb ? cb.DecodeMode : null;
        KernelSwitches = (m.Backend as Calm.Engine.Cuda.CudaBackend)?.KernelSwitches;
        WeightBytes = m.WeightBytes;
        Path = m.Path;
        Preset = m.Preset;
        Seed = m.Seed;
    }

    /// <summary>A by-name reference that names no loaded model; resolving it reports Calm.ModelNotFound.</summary>
    private CalmModel(string name) { Name = name; }

    internal static CalmModel From(LoadedModel m) => new(m);
    internal static CalmModel Unresolved(string name) => new(name);

    /// <summary>The engine model this stands for; Calm.ModelNotFound when it was removed or never existed.</summary>
    internal LoadedModel Resolve()
    {
        if (Loaded is { IsDisposed: false } m && CalmSession.Shared.Models.Contains(m)) return m;
        throw new CalmException(ErrorIds.ModelNotFound, CalmErrorKind.ObjectNotFound,
            Loaded is null
                ? $"No loaded model is named '{Name}'. Get-CalmModel lists the loaded models."
                : $"Model '{Name}' has been removed. Load it again with Import-CalmModel or New-CalmModel.",
            Name);
    }

    public override string ToString() => Name;
}
