using Calm.Engine.Model;

namespace Calm.Engine.Synthetic;

/// <summary>A named real model shape (exact tensor shapes of the published model) for synthetic weights and what-if tables.</summary>
public sealed record Preset(string Name, string Family, string Description, ModelConfig Config)
{
    /// <summary>Published parameter count in billions, for a sanity check against <see cref="ModelConfig.ParameterCount"/>.</summary>
    public required double PublishedBillions { get; init; }
}

/// <summary>The preset table. Shapes are the published config.json values of each model.</summary>
public static class Presets
{
    private static ModelConfig Llama(int vocab, int d, int f, int layers, int heads, int kv, int maxPos, double theta,
        bool tied = false, RopeScaling? rope = null, int? headDim = null, double eps = 1e-5) => new()
    {
        Architecture = Architecture.Llama, ModelType = "llama", VocabSize = vocab, HiddenSize = d, IntermediateSize = f,
        NumLayers = layers, NumHeads = heads, NumKvHeads = kv, HeadDim = headDim ?? d / heads, MaxPositionEmbeddings = maxPos,
        RopeTheta = theta, RopeScaling = rope, TieWordEmbeddings = tied, RmsNormEps = eps, BosTokenId = 1, EosTokenIds = new[] { 2 },
    };

    private static RopeScaling Llama3Rope(double factor) => new()
    {
        Type = RopeScalingType.Llama3, Factor = factor, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 8192,
    };

    private static readonly Preset[] s_all =
    {
        new("tiny", "llama", "Tiny Llama-architecture shape for CPU demos and tests (no real counterpart)",
            Llama(4096, 256, 688, 4, 8, 4, 2048, 10000)) { PublishedBillions = 0.0050 },
        new("Llama-2-7B", "llama", "Meta Llama 2 7B", Llama(32000, 4096, 11008, 32, 32, 32, 4096, 10000)) { PublishedBillions = 6.74 },
        new("Llama-3-8B", "llama", "Meta Llama 3 8B", Llama(128256, 4096, 14336, 32, 32, 8, 8192, 500000)) { PublishedBillions = 8.03 },
        new("Llama-3.1-8B", "llama", "Meta Llama 3.1 8B (llama3 rope scaling, 128k context)",
            Llama(128256, 4096, 14336, 32, 32, 8, 131072, 500000, rope: Llama3Rope(8))) { PublishedBillions = 8.03 },
        new("Llama-3.2-1B", "llama", "Meta Llama 3.2 1B (tied embeddings)",
            Llama(128256, 2048, 8192, 16, 32, 8, 131072, 500000, tied: true, rope: Llama3Rope(32), headDim: 64)) { PublishedBillions = 1.24 },
        new("Llama-3.2-3B", "llama", "Meta Llama 3.2 3B (tied embeddings)",
            Llama(128256, 3072, 8192, 28, 24, 8, 131072, 500000, tied: true, rope: Llama3Rope(32), headDim: 128)) { PublishedBillions = 3.21 },
        new("Llama-3.1-70B", "llama", "Meta Llama 3.1 70B",
            Llama(128256, 8192, 28672, 80, 64, 8, 131072, 500000, rope: Llama3Rope(8))) { PublishedBillions = 70.6 },
        new("Mistral-7B", "mistral", "Mistral 7B v0.1 (sliding window 4096)",
            Llama(32000, 4096, 14336, 32, 32, 8, 32768, 10000) with { Architecture = Architecture.Mistral, ModelType = "mistral", SlidingWindow = 4096 })
            { PublishedBillions = 7.24 },
        new("Mixtral-8x7B", "mixtral", "Mistral Mixtral 8x7B (8 experts, top-2)",
            Llama(32000, 4096, 14336, 32, 32, 8, 32768, 1000000) with { Architecture = Architecture.Mixtral, ModelType = "mixtral", NumExperts = 8, NumExpertsPerToken = 2 })
            { PublishedBillions = 46.7 },
        new("Qwen2.5-7B", "qwen2", "Alibaba Qwen2.5 7B (q/k/v bias)",
            Llama(152064, 3584, 18944, 28, 28, 4, 32768, 1000000, eps: 1e-6) with { Architecture = Architecture.Qwen2, ModelType = "qwen2", QkvBias = true })
            { PublishedBillions = 7.62 },
        new("Qwen2.5-32B", "qwen2", "Alibaba Qwen2.5 32B (q/k/v bias)",
            Llama(152064, 5120, 27648, 64, 40, 8, 32768, 1000000, eps: 1e-6) with { Architecture = Architecture.Qwen2, ModelType = "qwen2", QkvBias = true })
            { PublishedBillions = 32.8 },
        new("Qwen3-8B", "qwen3", "Alibaba Qwen3 8B (q/k norm)",
            Llama(151936, 4096, 12288, 36, 32, 8, 40960, 1000000, headDim: 128, eps: 1e-6) with { Architecture = Architecture.Qwen3, ModelType = "qwen3", QkNorm = true })
            { PublishedBillions = 8.19 },
        new("Gemma-7B", "gemma", "Google Gemma 7B (head_dim 256, GeGLU, tied)",
            Llama(256000, 3072, 24576, 28, 16, 16, 8192, 10000, tied: true, headDim: 256, eps: 1e-6) with
            {
                Architecture = Architecture.Gemma, ModelType = "gemma", HiddenAct = Activation.GeluTanh, ScaleEmbeddings = true, NormAddOne = true,
            })
            { PublishedBillions = 8.54 },
        new("Phi-3-mini", "phi3", "Microsoft Phi-3-mini 4k (3.8B)",
            Llama(32064, 3072, 8192, 32, 32, 32, 4096, 10000) with { Architecture = Architecture.Phi3, ModelType = "phi3" })
            { PublishedBillions = 3.82 },
        new("Phi-3-medium", "phi3", "Microsoft Phi-3-medium 4k (14B)",
            Llama(32064, 5120, 17920, 40, 40, 10, 4096, 10000) with { Architecture = Architecture.Phi3, ModelType = "phi3" })
            { PublishedBillions = 13.96 },
    };

    public static IReadOnlyList<Preset> All => s_all;

    public static IEnumerable<string> Names => s_all.Select(p => p.Name);

    public static bool TryFind(string name, out Preset preset)
    {
        preset = s_all.FirstOrDefault(p => string.Equals(p.Name, name?.Trim(), StringComparison.OrdinalIgnoreCase))!;
        return preset is not null;
    }

    public static Preset Find(string name)
    {
        if (TryFind(name, out var p)) return p;
        throw new CalmException(ErrorIds.PresetUnknown, CalmErrorKind.InvalidArgument,
            $"There is no preset named '{name}'. Presets: {string.Join(", ", Names)}. Get-CalmPreset lists them with their shapes.", name);
    }

    public static ModelConfig Get(string name) => Find(name).Config;

    public static string Canonical(string name) => Find(name).Name;
}
