using System.Diagnostics;
using Calm.Engine.Model;
using Calm.Engine.Session;
using Calm.Engine.Weights;

namespace Calm.Engine.Cpu;

/// <summary>One decode-speed measurement (see <see cref="CpuBenchmark.MeasureDecode"/>).</summary>
public sealed record DecodeBenchmarkResult
{
    public required string Device { get; init; }
    /// <summary>Decode steps timed (after warm-up).</summary>
    public required int Tokens { get; init; }
    public required double Seconds { get; init; }
    public double TokensPerSecond => Tokens / Seconds;
    public double MillisecondsPerToken => Seconds * 1000 / Tokens;
    /// <summary>Weight bytes one decode step reads: every tensor once, one embedding row, only the active experts.</summary>
    public required long WeightBytesPerToken { get; init; }
    /// <summary>KV-cache bytes read per step, averaged over the timed positions (fp32 cache).</summary>
    public required long KvBytesPerToken { get; init; }
    public double WeightGBPerSecond => WeightBytesPerToken * TokensPerSecond / 1e9;
    public double TotalGBPerSecond => (WeightBytesPerToken + KvBytesPerToken) * TokensPerSecond / 1e9;
    /// <summary>Read bandwidth measured elsewhere (Get-CalmDevice), when the caller passed it.</summary>
    public double? MeasuredBandwidthGBps { get; init; }
    /// <summary>Weight+KV GB/s as a percentage of the measured bandwidth, when known.</summary>
    public double? PercentOfBandwidth => MeasuredBandwidthGBps is double b && b > 0 ? 100 * TotalGBPerSecond / b : null;

    public override string ToString()
        => $"{Device}: {TokensPerSecond:F2} tok/s ({MillisecondsPerToken:F1} ms/token), {WeightGBPerSecond:F2} GB/s of weights" +
           (PercentOfBandwidth is double p ? $", {p:F0}% of {MeasuredBandwidthGBps:F1} GB/s measured" : "");
}

/// <summary>Decode-speed benchmark for any backend (a benchmark, not a test). Timing only: no bandwidth measurement here.</summary>
public static class CpuBenchmark
{
    /// <summary>
    /// Times <paramref name="tokens"/> single-token decode steps after <paramref name="warmup"/> untimed ones, starting a
    /// new sequence at position 0 (the KV cache is overwritten). Tokens are arbitrary valid ids.
    /// </summary>
    public static DecodeBenchmarkResult MeasureDecode(IForwardBackend backend, ModelWeights weights, int tokens = 16, int warmup = 2,
        double? measuredBandwidthGBps = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(weights);
        if (tokens <= 0 || warmup < 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Benchmark needs tokens > 0 and warmup >= 0 (got {tokens}, {warmup}).", "tokens");
        if (warmup + tokens > backend.MaxContext)
            throw new CalmException(ErrorIds.ContextOverflow, CalmErrorKind.LimitExceeded,
                $"Benchmark of {warmup} + {tokens} tokens does not fit the context of {backend.MaxContext} positions; time fewer tokens.", "tokens");
        var c = backend.Config;
        var logits = new float[c.VocabSize];
        int tok = c.BosTokenId is int b && b >= 0 && b < c.VocabSize ? b : 1 % c.VocabSize;
        int pos = 0;
        for (; pos < warmup; pos++) { backend.Forward(new[] { tok }, pos, logits, false, ct); tok = Next(tok, c.VocabSize); }
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < tokens; i++, pos++) { backend.Forward(new[] { tok }, pos, logits, false, ct); tok = Next(tok, c.VocabSize); }
        sw.Stop();
        // Positions warmup..warmup+tokens-1 read on average (warmup + (tokens+1)/2) cached keys and values per layer.
        double avgPositions = warmup + (tokens + 1) / 2.0;
        long kv = (long)(2.0 * c.NumLayers * avgPositions * c.KvDim * sizeof(float));
        return new DecodeBenchmarkResult
        {
            Device = backend.DeviceName, Tokens = tokens, Seconds = sw.Elapsed.TotalSeconds,
            WeightBytesPerToken = WeightBytesPerDecodeToken(c, weights), KvBytesPerToken = kv,
            MeasuredBandwidthGBps = measuredBandwidthGBps,
        };
    }

    private static int Next(int tok, int vocab) => (int)((tok * 7919L + 13) % vocab);

    /// <summary>
    /// Bytes of weights one decoded token reads: every tensor once except the embedding (one row; the whole matrix
    /// when it is also the classifier) and the experts (k of E per layer, averaged as k/E of their bytes).
    /// </summary>
    public static long WeightBytesPerDecodeToken(ModelConfig c, ModelWeights w)
    {
        var experts = new HashSet<Tensor>(ReferenceEqualityComparer.Instance);
        foreach (var l in w.Layers)
            foreach (var arr in new[] { l.ExpertGate, l.ExpertUp, l.ExpertDown })
                if (arr is not null) foreach (var t in arr) experts.Add(t);
        double total = 0;
        foreach (var t in w.AllTensors())
        {
            if (ReferenceEquals(t, w.Embedding) && !ReferenceEquals(t, w.LmHead)) total += t.Cols * DTypes.SizeOf(t.DType);
            else if (experts.Contains(t)) total += t.ByteLength * (double)c.NumExpertsPerToken / c.NumExperts;
            else total += t.ByteLength;
        }
        return (long)total;
    }
}
