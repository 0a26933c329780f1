using Calm.Engine.Model;

namespace Calm.Engine.Weights;

/// <summary>What <see cref="ModelFolderLoader.Load"/> returns: everything but the device.</summary>
public sealed record LoadedFolder(ModelConfig Config, ModelWeights Weights, WeightStore Store, GenerationConfig? Generation);

/// <summary>
/// Reads a Hugging Face model folder: config.json, model.safetensors or shards with model.safetensors.index.json,
/// generation_config.json. Files are memory-mapped; everything is validated before use.
/// </summary>
public static class ModelFolderLoader
{
    // PLACEHOLDER: implemented in the loader work (see tests/Calm.Engine.Tests/Loading).
    public static LoadedFolder Load(string path, IProgress<LoadProgress>? progress, CancellationToken ct, Action<string>? verbose = null)
        => throw new NotImplementedException("ModelFolderLoader.Load");
}
