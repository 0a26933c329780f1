namespace Calm.Engine.Model;

/// <summary>Model families Calm runs, by Hugging Face <c>model_type</c>.</summary>
public enum Architecture
{
    Llama,   // "llama": Llama 2, 3, 3.1 (rope_scaling llama3), 3.2 (tied embeddings)
    Mistral, // "mistral": sliding-window attention
    Qwen2,   // "qwen2": q/k/v bias
    Qwen3,   // "qwen3": q_norm/k_norm per head, independent head_dim
    Gemma,   // "gemma": embedding * sqrt(hidden), RMSNorm (1+w), gelu_pytorch_tanh
    Phi3,    // "phi3": fused qkv_proj and gate_up_proj
    Mixtral, // "mixtral": sparse MoE, top-k routing
}

public enum Activation
{
    Silu,       // x * sigmoid(x)
    GeluTanh,   // gelu_pytorch_tanh: 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3)))
    Gelu,       // exact erf gelu
}

public enum RopeScalingType { None, Linear, Llama3, Dynamic, LongRope }

/// <summary>rope_scaling block of config.json (only the fields Calm uses).</summary>
public sealed record RopeScaling
{
    public RopeScalingType Type { get; init; }
    public double Factor { get; init; } = 1.0;
    public double LowFreqFactor { get; init; } = 1.0;          // llama3
    public double HighFreqFactor { get; init; } = 4.0;         // llama3
    public int OriginalMaxPositionEmbeddings { get; init; }    // llama3, longrope
    public double[]? ShortFactor { get; init; }                // longrope (phi3), one per rotary pair
    public double[]? LongFactor { get; init; }                 // longrope (phi3)
}

/// <summary>
/// Everything about a model's shape and arithmetic the engine needs; read from config.json or a preset.
/// Shapes below use: V vocab, D hidden, F intermediate (FFN), H heads, K kv heads, Hd head_dim, E experts.
/// </summary>
public sealed record ModelConfig
{
    public required Architecture Architecture { get; init; }
    /// <summary>config.json model_type, verbatim.</summary>
    public required string ModelType { get; init; }
    public required int VocabSize { get; init; }          // V
    public required int HiddenSize { get; init; }         // D
    public required int IntermediateSize { get; init; }   // F (per expert for MoE)
    public required int NumLayers { get; init; }
    public required int NumHeads { get; init; }           // H
    public required int NumKvHeads { get; init; }         // K (H % K == 0)
    public required int HeadDim { get; init; }            // Hd (not always D/H: gemma, qwen3)
    public required int MaxPositionEmbeddings { get; init; }
    public double RmsNormEps { get; init; } = 1e-6;
    public double RopeTheta { get; init; } = 10000.0;
    public RopeScaling? RopeScaling { get; init; }
    /// <summary>Fraction of head_dim that is rotated (phi3 partial_rotary_factor); 1 = all.</summary>
    public double PartialRotaryFactor { get; init; } = 1.0;
    public bool TieWordEmbeddings { get; init; }
    /// <summary>q/k/v projections carry a bias (qwen2; llama attention_bias).</summary>
    public bool QkvBias { get; init; }
    /// <summary>o_proj carries a bias (llama attention_bias).</summary>
    public bool OutputBias { get; init; }
    /// <summary>gate/up/down carry biases (llama mlp_bias).</summary>
    public bool MlpBias { get; init; }
    /// <summary>Per-head RMSNorm on q and k before RoPE (qwen3).</summary>
    public bool QkNorm { get; init; }
    /// <summary>Attention sees only the last W positions (mistral); null = full causal.</summary>
    public int? SlidingWindow { get; init; }
    public Activation HiddenAct { get; init; } = Activation.Silu;
    /// <summary>Multiply embeddings by sqrt(D) (gemma).</summary>
    public bool ScaleEmbeddings { get; init; }
    /// <summary>RMSNorm multiplies by (1 + w) instead of w (gemma).</summary>
    public bool NormAddOne { get; init; }
    /// <summary>Experts per layer (mixtral); 0 = dense FFN.</summary>
    public int NumExperts { get; init; }
    /// <summary>Experts chosen per token (mixtral top-k).</summary>
    public int NumExpertsPerToken { get; init; }
    /// <summary>Stored dtype of the weights (torch_dtype, or what the tensors say).</summary>
    public DType DType { get; init; } = DType.BF16;
    public int? BosTokenId { get; init; }
    public int[] EosTokenIds { get; init; } = Array.Empty<int>();

    public int QDim => NumHeads * HeadDim;        // rows of q_proj
    public int KvDim => NumKvHeads * HeadDim;     // rows of k_proj and v_proj
    public int RotaryDim => (int)(HeadDim * PartialRotaryFactor) & ~1;
    public bool IsMoE => NumExperts > 0;

    /// <summary>Parameters of one layer's attention block: q/k/v/o (+ biases, q/k norms).</summary>
    public long AttentionParametersPerLayer
    {
        get
        {
            long d = HiddenSize;
            long n = d * QDim + 2L * d * KvDim + (long)QDim * d;
            if (QkvBias) n += QDim + 2L * KvDim;
            if (OutputBias) n += d;
            if (QkNorm) n += 2L * HeadDim;
            return n;
        }
    }

    /// <summary>Parameters of one layer's FFN reading <paramref name="experts"/> experts (all of a dense FFN), router excluded.</summary>
    public long FfnParametersPerLayer(int experts)
    {
        long d = HiddenSize, f = IntermediateSize;
        if (IsMoE) return experts * 3L * d * f;
        long n = 3L * d * f;
        if (MlpBias) n += 2 * f + d;
        return n;
    }

    private long RouterParametersPerLayer => IsMoE ? (long)NumExperts * HiddenSize : 0;

    /// <summary>Total parameter count (every tensor, tied embeddings once).</summary>
    public long ParameterCount
    {
        get
        {
            long d = HiddenSize, v = VocabSize;
            long layer = AttentionParametersPerLayer + FfnParametersPerLayer(NumExperts) + RouterParametersPerLayer + 2 * d;
            long total = layer * NumLayers + v * d + d;
            if (!TieWordEmbeddings) total += v * d;
            return total;
        }
    }

    /// <summary>Parameters a single decoded token reads (MoE: only the active experts + router; embedding: one row).</summary>
    public long ActiveParameterCountPerToken
    {
        get
        {
            long d = HiddenSize, v = VocabSize;
            long layer = AttentionParametersPerLayer + FfnParametersPerLayer(NumExpertsPerToken) + RouterParametersPerLayer + 2 * d;
            return layer * NumLayers + d /* embedding row */ + v * d /* classifier */ + d /* final norm */;
        }
    }

    /// <summary>Checks the numbers make sense; throws <see cref="CalmException"/> (Calm.ConfigInvalid) naming the field.</summary>
    public void Validate(string source)
    {
        void Fail(string what) => throw new CalmException(ErrorIds.ConfigInvalid, CalmErrorKind.InvalidData,
            $"{source}: {what}. Fix config.json or use a model folder saved by Hugging Face transformers.", source);
        if (VocabSize <= 0) Fail($"vocab_size must be positive (got {VocabSize})");
        if (HiddenSize <= 0) Fail($"hidden_size must be positive (got {HiddenSize})");
        if (IntermediateSize <= 0) Fail($"intermediate_size must be positive (got {IntermediateSize})");
        if (NumLayers <= 0) Fail($"num_hidden_layers must be positive (got {NumLayers})");
        if (NumHeads <= 0) Fail($"num_attention_heads must be positive (got {NumHeads})");
        if (NumKvHeads <= 0) Fail($"num_key_value_heads must be positive (got {NumKvHeads})");
        if (NumHeads % NumKvHeads != 0) Fail($"num_attention_heads ({NumHeads}) must be a multiple of num_key_value_heads ({NumKvHeads})");
        if (HeadDim <= 0 || HeadDim % 2 != 0) Fail($"head_dim must be a positive even number (got {HeadDim})");
        if (HeadDim > 1024) Fail($"head_dim {HeadDim} is larger than 1024");
        if (MaxPositionEmbeddings <= 0) Fail($"max_position_embeddings must be positive (got {MaxPositionEmbeddings})");
        if (!(RmsNormEps > 0) || RmsNormEps > 1) Fail($"rms_norm_eps must be in (0, 1] (got {RmsNormEps})");
        if (!(RopeTheta > 0) || double.IsInfinity(RopeTheta)) Fail($"rope_theta must be positive (got {RopeTheta})");
        if (PartialRotaryFactor <= 0 || PartialRotaryFactor > 1) Fail($"partial_rotary_factor must be in (0, 1] (got {PartialRotaryFactor})");
        if (SlidingWindow is int w && w <= 0) Fail($"sliding_window must be positive (got {w})");
        if (IsMoE && (NumExpertsPerToken <= 0 || NumExpertsPerToken > NumExperts))
            Fail($"num_experts_per_tok must be in 1..{NumExperts} (got {NumExpertsPerToken})");
        if ((long)VocabSize * HiddenSize > int.MaxValue * 16L) Fail("vocab_size x hidden_size is implausibly large");
    }
}
