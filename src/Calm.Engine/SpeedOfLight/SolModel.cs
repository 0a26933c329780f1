using Calm.Engine.Model;

namespace Calm.Engine.SpeedOfLight;

/// <summary>One row of the speed-of-light table: the fastest decode physics allows at one context position.</summary>
public sealed record SolPoint
{
    public required string Model { get; init; }
    public required string DType { get; init; }
    public required string KvDType { get; init; }
    /// <summary>Position p of the token being decoded (tokens already in the KV cache).</summary>
    public required int Context { get; init; }
    /// <summary>Weight bytes one decoded token reads (embedding row, active experts + router, classifier).</summary>
    public required long WeightBytes { get; init; }
    /// <summary>KV-cache bytes per cached position: layers × 2 × kv_heads × head_dim × kv dtype size (fp8: + one f32 scale per row).</summary>
    public required long KvBytesPerToken { get; init; }
    /// <summary>Total bytes read to decode one token at this context: WeightBytes + KvBytesPerToken × Context.</summary>
    public required long BytesPerToken { get; init; }
    /// <summary>Floating-point operations per decoded token (2 per multiply-add, plus attention).</summary>
    public required double FlopsPerToken { get; init; }
    /// <summary>FLOP per byte of this token.</summary>
    public required double ArithmeticIntensity { get; init; }
    public required double BandwidthGBps { get; init; }
    public double? TflopsPerSecond { get; init; }
    /// <summary>Device ratio FLOP/byte (TFLOPS / bandwidth) -- intensity below it means memory-bound.</summary>
    public double? DeviceFlopsPerByte { get; init; }
    public required double SolTokensPerSecond { get; init; }
    public required double SolMsPerToken { get; init; }
    /// <summary>Time the arithmetic alone would take at the device's rate (null when no rate is given).</summary>
    public double? ComputeBoundMs { get; init; }
    /// <summary>"Memory" or "Compute": which limit is larger.</summary>
    public required string BoundBy { get; init; }
    /// <summary>Where BandwidthGBps came from: "Given" (-BandwidthGBps), "Measured" (this session) or "Datasheet" (device attributes).</summary>
    public string BandwidthSource { get; init; } = "Given";
    /// <summary>Total parameters of the shape (all experts).</summary>
    public long? Parameters { get; init; }
}

/// <summary>
/// The byte and FLOP model of one decoded token (zeux/calm's argument): decoding must read every weight once plus the
/// KV cache up to the current position, so bytes ÷ bandwidth is the floor on time per token.
/// </summary>
public static class SolModel
{
    /// <summary>Bytes per element for a weight or KV dtype name (bf16, f16, f32, fp8, int4/q4 = 0.5 + group scales).</summary>
    public static double BytesPerElement(string dtype, int groupSize = 32) => dtype.Trim().ToLowerInvariant() switch
    {
        "f32" or "fp32" or "float32" => 4,
        "f16" or "fp16" or "float16" or "bf16" or "bfloat16" => 2,
        "fp8" or "f8" or "f8e4m3" or "e4m3" or "int8" or "i8" => 1,
        "int4" or "q4" or "i4" => 0.5 + 2.0 / groupSize, // 4-bit values + one fp16 scale per group
        _ => throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
            $"Unknown dtype '{dtype}'. Use bf16, f16, f32, fp8 or int4.", "DType"),
    };

    /// <summary>Weight elements a decoded token reads, split by stage.</summary>
    public sealed record WeightElements(long Embedding, long AttentionProjections, long Ffn, long Router, long Norms, long Classifier)
    {
        public long Total => Embedding + AttentionProjections + Ffn + Router + Norms + Classifier;
    }

    public static WeightElements ElementsPerToken(ModelConfig c)
    {
        long d = c.HiddenSize;
        long router = c.IsMoE ? (long)c.NumExperts * d : 0;
        long norms = 2 * d * c.NumLayers + d;
        // One embedding row; the classifier is the whole [V, D] matrix (the embedding table itself when tied).
        return new WeightElements(d, c.AttentionParametersPerLayer * c.NumLayers, c.FfnParametersPerLayer(c.NumExpertsPerToken) * c.NumLayers,
            router * c.NumLayers, norms, (long)c.VocabSize * d);
    }

    public static long KvBytesPerPosition(ModelConfig c, double kvBytesPerElement)
        => (long)Math.Round(c.NumLayers * 2.0 * c.NumKvHeads * c.HeadDim * kvBytesPerElement);

    /// <summary>KV-cache bytes per cached position for a KV dtype name: the values, plus for fp8 (Calm's fp8 KV cache,
    /// <see cref="KvCacheTypes"/>) one f32 scale per layer, kv head and K/V row.</summary>
    public static long KvBytesPerPosition(ModelConfig c, string kvDType)
        => KvBytesPerPosition(c, BytesPerElement(kvDType))
           + (KvCacheTypes.Normalize(kvDType) == KvCacheTypes.Fp8 ? c.NumLayers * 2L * c.NumKvHeads * sizeof(float) : 0);

    /// <summary>FLOPs to decode one token at context p: 2 per weight multiply-add + attention (QK and AV: 4·H·Hd·p per layer).</summary>
    public static double FlopsPerToken(ModelConfig c, int context)
    {
        var e = ElementsPerToken(c);
        double matmul = 2.0 * (e.AttentionProjections + e.Ffn + e.Router + e.Classifier);
        int span = c.SlidingWindow is int w ? Math.Min(context, w) : context;
        double attention = 4.0 * c.NumHeads * c.HeadDim * (double)span * c.NumLayers;
        return matmul + attention;
    }

    /// <summary>The speed-of-light row for <paramref name="c"/> at one context.</summary>
    public static SolPoint Compute(string modelName, ModelConfig c, string dtype, string kvDType, int context,
        double bandwidthGBps, double? tflops = null)
    {
        if (context < 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Context must be >= 0 (got {context}).", "Context");
        if (!(bandwidthGBps > 0))
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Bandwidth must be positive (got {bandwidthGBps} GB/s).", "BandwidthGBps");
        double wb = BytesPerElement(dtype);
        // Norm weights and biases stay in 16-bit for quantised dtypes; count them at 2 bytes there.
        var e = ElementsPerToken(c);
        double weightBytes = (e.AttentionProjections + e.Ffn + e.Router + e.Classifier) * wb
                             + (e.Norms + e.Embedding) * Math.Max(wb, 2.0);
        long kvPer = KvBytesPerPosition(c, kvDType);
        int span = c.SlidingWindow is int w ? Math.Min(context, w) : context;
        double bytes = weightBytes + (double)kvPer * span;
        double flops = FlopsPerToken(c, context);
        double seconds = bytes / (bandwidthGBps * 1e9);
        double? computeMs = tflops is double t && t > 0 ? flops / (t * 1e12) * 1e3 : null;
        double msMem = seconds * 1e3;
        double ms = Math.Max(msMem, computeMs ?? 0);
        return new SolPoint
        {
            Model = modelName,
            DType = dtype.ToLowerInvariant(),
            KvDType = kvDType.ToLowerInvariant(),
            Context = context,
            WeightBytes = (long)Math.Round(weightBytes),
            KvBytesPerToken = kvPer,
            BytesPerToken = (long)Math.Round(bytes),
            FlopsPerToken = flops,
            ArithmeticIntensity = flops / bytes,
            BandwidthGBps = bandwidthGBps,
            TflopsPerSecond = tflops,
            DeviceFlopsPerByte = tflops is double tt ? tt * 1e12 / (bandwidthGBps * 1e9) : null,
            SolMsPerToken = ms,
            SolTokensPerSecond = 1e3 / ms,
            ComputeBoundMs = computeMs,
            BoundBy = computeMs is double cm && cm > msMem ? "Compute" : "Memory",
        };
    }
}
