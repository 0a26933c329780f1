namespace Calm.Engine.Session;

/// <summary>Stages of one decode step, for -Breakdown. Matrix-vector work is split three ways; the rest is "Other".</summary>
public static class Stages
{
    /// <summary>q/k/v/o projections (+ biases, q/k norms are Other).</summary>
    public const string AttentionProjections = "AttentionProjections";
    /// <summary>FFN matvecs: gate/up/down, or router + active experts.</summary>
    public const string Ffn = "Ffn";
    /// <summary>The lm_head matvec over the vocabulary.</summary>
    public const string Classifier = "Classifier";
    /// <summary>Attention over the KV cache (QK, softmax, AV) incl. writing this token's K/V.</summary>
    public const string Attention = "Attention";
    /// <summary>Embedding, norms, RoPE, activations, residuals, sampling.</summary>
    public const string Other = "Other";
    public static readonly string[] All = { AttentionProjections, Ffn, Classifier, Attention, Other };
}

/// <summary>Measured time of one stage of a decode step and the bytes it must read.</summary>
public sealed record StageTime(string Stage, double Ms, long Bytes);

/// <summary>
/// What benchmarks need from a backend beyond <see cref="IForwardBackend"/>. Timing uses device timers (CUDA events
/// on the GPU, Stopwatch on the CPU). Callers hold the model's gate.
/// </summary>
public interface IBenchmarkBackend
{
    /// <summary>
    /// Marks positions [0, positions) of the KV cache as filled with deterministic random data, so decode can be
    /// timed at a deep context without prefilling it (the memory traffic is the same). Calm.ContextOverflow if too long.
    /// </summary>
    void FillKvCacheForBenchmark(int positions, int seed);

    /// <summary>
    /// Times <paramref name="steps"/> decode steps at positions startPos, startPos+1, … after <paramref name="warmup"/>
    /// untimed steps; returns each step's milliseconds (decode step = forward + greedy token choice on the device).
    /// </summary>
    double[] TimeDecodeSteps(int startPos, int steps, int warmup, CancellationToken ct);

    /// <summary>Times prefill of <paramref name="tokens"/> random tokens from position 0 (ms, median of repeat).</summary>
    double TimePrefill(int tokens, int repeat, CancellationToken ct);

    /// <summary>
    /// Per-stage time of one decode step at <paramref name="position"/> (stages of <see cref="Stages"/>), each timed
    /// on its own (not divided by byte shares), median over <paramref name="repeat"/> runs.
    /// </summary>
    IReadOnlyList<StageTime> ProfileDecodeStages(int position, int repeat, CancellationToken ct);

    /// <summary>Bytes of device memory this backend holds (weights + KV cache + scratch).</summary>
    long DeviceBytes { get; }
}
