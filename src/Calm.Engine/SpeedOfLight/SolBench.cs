using Calm.Engine.Model;
using Calm.Engine.Session;

namespace Calm.Engine.SpeedOfLight;

/// <summary>
/// One Measure-CalmSpeedOfLight row: the speed-of-light fields of <see cref="SolPoint"/> for the measured model and
/// what was measured. Phase "Decode": Tokens decode steps at Context, Repeat times. Phase "Prefill": PromptTokens from
/// position 0 (the SOL fields are then the memory floor of reading the weights once; FLOPs are per prompt).
/// </summary>
public sealed record SolMeasurement
{
    public required string Model { get; init; }
    public required string Device { get; init; }
    /// <summary>"Decode" or "Prefill".</summary>
    public required string Phase { get; init; }
    public required string DType { get; init; }
    public required string KvDType { get; init; }
    /// <summary>Decode: position of the first timed token (tokens already in the cache). Prefill: 0.</summary>
    public required int Context { get; init; }
    /// <summary>Decode: timed steps per repetition. Prefill: 0.</summary>
    public required int Tokens { get; init; }
    /// <summary>Prefill: prompt length. Decode: 0.</summary>
    public required int PromptTokens { get; init; }
    public required int Repeat { get; init; }
    public required long Parameters { get; init; }
    /// <summary>Bytes of all weights as stored (llama-bench's model_size).</summary>
    public required long ModelBytes { get; init; }
    public required long WeightBytes { get; init; }
    public required long KvBytesPerToken { get; init; }
    /// <summary>Bytes one step must read: weights + KV cache at the mean timed position (prefill: weights once + the prompt's KV).</summary>
    public required long BytesPerToken { get; init; }
    public required double FlopsPerToken { get; init; }
    public required double BandwidthGBps { get; init; }
    /// <summary>"Measured" (Measure-CalmBandwidth this session), "Given" (-BandwidthGBps) or "Datasheet".</summary>
    public required string BandwidthSource { get; init; }
    public double? PeakBandwidthGBps { get; init; }
    /// <summary>Decode: bytes ÷ bandwidth as tokens/s. Prefill: prompt tokens ÷ (weight bytes ÷ bandwidth).</summary>
    public required double SolTokensPerSecond { get; init; }
    public required double SolMsPerToken { get; init; }
    /// <summary>Mean over repetitions of each repetition's tokens/s (llama-bench's avg_ts).</summary>
    public required double TokensPerSecond { get; init; }
    /// <summary>Standard deviation of the repetitions' tokens/s (llama-bench's stddev_ts).</summary>
    public required double StdDev { get; init; }
    public required double MsPerToken { get; init; }
    /// <summary>Prefill: median time of the whole prompt (the time to first token). Null for decode.</summary>
    public double? TimeToFirstTokenMs { get; init; }
    /// <summary>BytesPerToken × TokensPerSecond (decode), or bytes ÷ prefill time.</summary>
    public required double AchievedGBps { get; init; }
    /// <summary>TokensPerSecond ÷ SolTokensPerSecond (against the measured bandwidth), percent.</summary>
    public required double PercentOfSol { get; init; }
    /// <summary>AchievedGBps ÷ the device's attribute peak, percent (null where there is none, e.g. the CPU).</summary>
    public double? PercentOfPeak { get; init; }
    /// <summary>The kernel switches (CALM_* variables) the model was made with, "NAME=value;..."; "" for the defaults and
    /// on the CPU.</summary>
    public string KernelSwitches { get; init; } = "";
}

/// <summary>One -Breakdown row: one stage of a decode step timed on its own.</summary>
public sealed record SolStageMeasurement
{
    public required string Model { get; init; }
    public required string Device { get; init; }
    public required string DType { get; init; }
    public required int Context { get; init; }
    /// <summary>AttentionProjections, Ffn, Classifier, Attention or Other.</summary>
    public required string Stage { get; init; }
    public required double Ms { get; init; }
    public required long Bytes { get; init; }
    public required double GBps { get; init; }
    /// <summary>Bytes ÷ bandwidth: the fastest this stage can be.</summary>
    public required double LimitMs { get; init; }
    /// <summary>LimitMs ÷ Ms, percent.</summary>
    public required double PercentOfLimit { get; init; }
    /// <summary>This stage's share of the summed stage times, percent.</summary>
    public required double PercentOfStep { get; init; }
    public required double BandwidthGBps { get; init; }
    /// <summary>The kernel switches (CALM_* variables) the model was made with; "" for the defaults and on the CPU.</summary>
    public string KernelSwitches { get; init; } = "";
}

public sealed record SolBenchOptions
{
    public int[] Contexts { get; init; } = { 0 };
    public int Tokens { get; init; } = 16;
    public int Warmup { get; init; } = 2;
    public int Repeat { get; init; } = 3;
    public int Seed { get; init; } = 1;
    public double BandwidthGBps { get; init; }
    public string BandwidthSource { get; init; } = "Measured";
    public double? PeakBandwidthGBps { get; init; }
    public double? TflopsPerSecond { get; init; }
}

/// <summary>The measurements behind Measure-CalmSpeedOfLight, one point at a time (callers hold the model's gate).</summary>
public static class SolBench
{
    private static IBenchmarkBackend Bench(LoadedModel m) => m.Backend as IBenchmarkBackend
        ?? throw new CalmException(ErrorIds.DeviceNotAvailable, CalmErrorKind.NotSupported,
            $"The {m.DeviceKind} backend of '{m.Name}' has no benchmark support in this build. Load the model on the CPU (-Device Cpu).", m.Name);

    public static void Validate(LoadedModel m, SolBenchOptions o)
    {
        if (o.Tokens <= 0 || o.Repeat <= 0 || o.Warmup < 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                $"-Tokens and -Repeat must be positive and -Warmup >= 0 (got {o.Tokens}, {o.Repeat}, {o.Warmup}).", "Tokens");
        if (!(o.BandwidthGBps > 0))
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"The bandwidth must be positive (got {o.BandwidthGBps}).", "BandwidthGBps");
        foreach (int ctx in o.Contexts)
        {
            if (ctx < 0)
                throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"-Context must be >= 0 (got {ctx}).", "Context");
            long need = (long)ctx + Math.Max(o.Tokens, o.Warmup);
            if (need > m.Backend.MaxContext)
                throw new CalmException(ErrorIds.ContextOverflow, CalmErrorKind.LimitExceeded,
                    $"Context {ctx} + {Math.Max(o.Tokens, o.Warmup)} tokens needs {need} positions; '{m.Name}' holds {m.Backend.MaxContext}. " +
                    $"Load it with -ContextLength {need} or more (the model allows {m.Config.MaxPositionEmbeddings}), or measure at a smaller -Context.", "Context");
        }
    }

    private static (double Mean, double Std) MeanStd(IReadOnlyList<double> xs)
    {
        double mean = xs.Average();
        double var = xs.Count > 1 ? xs.Sum(x => (x - mean) * (x - mean)) / (xs.Count - 1) : 0;
        return (mean, Math.Sqrt(var));
    }

    /// <summary>Decode at one context: fill the cache to it, then Repeat × (warm-up + Tokens timed steps).</summary>
    public static SolMeasurement MeasureDecode(LoadedModel m, SolBenchOptions o, int context, CancellationToken ct)
    {
        var b = Bench(m);
        var c = m.Config;
        string dt = DTypes.Name(m.DType), kv = m.Backend.KvCacheDType;
        var perRepTs = new List<double>();
        var allMs = new List<double>();
        for (int r = 0; r < o.Repeat; r++)
        {
            b.FillKvCacheForBenchmark(context, o.Seed + r);
            var ms = b.TimeDecodeSteps(context, o.Tokens, o.Warmup, ct);
            allMs.AddRange(ms);
            perRepTs.Add(ms.Length / (ms.Sum() / 1e3));
        }
        var (ts, sd) = MeanStd(perRepTs);
        // Timed positions context .. context+Tokens-1: on average the step reads context + (Tokens-1)/2 cached positions.
        double midPos = context + (o.Tokens - 1) / 2.0;
        var solMid = SolModel.Compute(m.Name, c, dt, kv, (int)Math.Round(midPos), o.BandwidthGBps, o.TflopsPerSecond);
        double bytes = solMid.WeightBytes + solMid.KvBytesPerToken * Window(c, midPos);
        double solMs = Math.Max(bytes / (o.BandwidthGBps * 1e9) * 1e3, solMid.ComputeBoundMs ?? 0);
        double achieved = bytes * ts / 1e9;
        return new SolMeasurement
        {
            Model = m.Name, Device = m.Backend.DeviceName, Phase = "Decode", DType = dt, KvDType = kv, Context = context,
            Tokens = o.Tokens, PromptTokens = 0, Repeat = o.Repeat, Parameters = c.ParameterCount, ModelBytes = m.WeightBytes,
            WeightBytes = solMid.WeightBytes, KvBytesPerToken = solMid.KvBytesPerToken, BytesPerToken = (long)Math.Round(bytes),
            FlopsPerToken = SolModel.FlopsPerToken(c, (int)Math.Round(midPos)),
            BandwidthGBps = o.BandwidthGBps, BandwidthSource = o.BandwidthSource, PeakBandwidthGBps = o.PeakBandwidthGBps,
            SolTokensPerSecond = 1e3 / solMs, SolMsPerToken = solMs,
            TokensPerSecond = ts, StdDev = sd, MsPerToken = allMs.Average(),
            AchievedGBps = achieved, PercentOfSol = ts / (1e3 / solMs) * 100,
            PercentOfPeak = o.PeakBandwidthGBps is double p && p > 0 ? achieved / p * 100 : null,
            KernelSwitches = Switches(m),
        };
    }

    /// <summary>The kernel switches the model's backend was made with ("" on the CPU).</summary>
    private static string Switches(LoadedModel m) => (m.Backend as Cuda.CudaBackend)?.KernelSwitches ?? "";

    private static double Window(ModelConfig c, double pos) => c.SlidingWindow is int w ? Math.Min(pos, w) : pos;

    /// <summary>Prefill of <paramref name="promptTokens"/> from position 0, median of Repeat; TTFT = that time.</summary>
    public static SolMeasurement MeasurePrefill(LoadedModel m, SolBenchOptions o, int promptTokens, CancellationToken ct)
    {
        var b = Bench(m);
        var c = m.Config;
        if (promptTokens <= 0 || promptTokens > m.Backend.MaxContext)
            throw new CalmException(ErrorIds.ContextOverflow, CalmErrorKind.LimitExceeded,
                $"A prompt of {promptTokens} tokens must be in 1..{m.Backend.MaxContext} (the KV cache of '{m.Name}').", "PromptTokens");
        string dt = DTypes.Name(m.DType), kv = m.Backend.KvCacheDType;
        var reps = new List<double>();
        b.TimePrefill(promptTokens, 1, ct); // warm-up
        for (int r = 0; r < o.Repeat; r++) reps.Add(b.TimePrefill(promptTokens, 1, ct));
        var perRepTs = reps.Select(ms => promptTokens / (ms / 1e3)).ToList();
        var (_, sd) = MeanStd(perRepTs);
        double ttft = reps.OrderBy(x => x).ElementAt(reps.Count / 2);
        // The rate is the prompt over the median time to first token, so TokensPerSecond and TTFT always agree.
        double ts = promptTokens / (ttft / 1e3);
        var sol0 = SolModel.Compute(m.Name, c, dt, kv, 0, o.BandwidthGBps, o.TflopsPerSecond);
        // The floor: read every weight once and write the prompt's keys/values; FLOPs of every token.
        double bytes = sol0.WeightBytes + (double)sol0.KvBytesPerToken * promptTokens;
        double flops = Enumerable.Range(0, promptTokens).Sum(p => SolModel.FlopsPerToken(c, p));
        double memMs = bytes / (o.BandwidthGBps * 1e9) * 1e3;
        double computeMs = o.TflopsPerSecond is double t && t > 0 ? flops / (t * 1e12) * 1e3 : 0;
        double solMs = Math.Max(memMs, computeMs);
        double achieved = bytes / (ttft / 1e3) / 1e9;
        return new SolMeasurement
        {
            Model = m.Name, Device = m.Backend.DeviceName, Phase = "Prefill", DType = dt, KvDType = kv, Context = 0,
            Tokens = 0, PromptTokens = promptTokens, Repeat = o.Repeat, Parameters = c.ParameterCount, ModelBytes = m.WeightBytes,
            WeightBytes = sol0.WeightBytes, KvBytesPerToken = sol0.KvBytesPerToken, BytesPerToken = (long)Math.Round(bytes / promptTokens),
            FlopsPerToken = flops / promptTokens,
            BandwidthGBps = o.BandwidthGBps, BandwidthSource = o.BandwidthSource, PeakBandwidthGBps = o.PeakBandwidthGBps,
            SolTokensPerSecond = promptTokens / (solMs / 1e3), SolMsPerToken = solMs / promptTokens,
            TokensPerSecond = ts, StdDev = sd, MsPerToken = ttft / promptTokens, TimeToFirstTokenMs = ttft,
            AchievedGBps = achieved, PercentOfSol = ts / (promptTokens / (solMs / 1e3)) * 100,
            PercentOfPeak = o.PeakBandwidthGBps is double p && p > 0 ? achieved / p * 100 : null,
            KernelSwitches = Switches(m),
        };
    }

    /// <summary>Per-stage times of one decode step at <paramref name="context"/> (cache filled to it first).</summary>
    public static IReadOnlyList<SolStageMeasurement> MeasureStages(LoadedModel m, SolBenchOptions o, int context, CancellationToken ct)
    {
        var b = Bench(m);
        b.FillKvCacheForBenchmark(context, o.Seed);
        var stages = b.ProfileDecodeStages(context, o.Repeat, ct);
        double total = stages.Sum(s => s.Ms);
        return stages.Select(s =>
        {
            double limit = s.Bytes / (o.BandwidthGBps * 1e9) * 1e3;
            return new SolStageMeasurement
            {
                Model = m.Name, Device = m.Backend.DeviceName, DType = DTypes.Name(m.DType), Context = context, Stage = s.Stage,
                Ms = s.Ms, Bytes = s.Bytes, GBps = s.Ms > 0 ? s.Bytes / (s.Ms / 1e3) / 1e9 : 0, LimitMs = limit,
                PercentOfLimit = s.Ms > 0 ? limit / s.Ms * 100 : 0, PercentOfStep = total > 0 ? s.Ms / total * 100 : 0,
                BandwidthGBps = o.BandwidthGBps, KernelSwitches = Switches(m),
            };
        }).ToArray();
    }

    /// <summary>llama-bench's column names for a measurement (n_prompt, n_gen, n_depth, avg_ts, stddev_ts, model_size, model_n_params, ...).</summary>
    public static IReadOnlyList<KeyValuePair<string, object?>> LlamaBenchColumns(SolMeasurement s) => new KeyValuePair<string, object?>[]
    {
        new("model_type", $"{s.Model} {s.DType}"),
        new("model_size", s.ModelBytes),
        new("model_n_params", s.Parameters),
        new("backends", s.Device),
        new("type_k", s.KvDType),
        new("type_v", s.KvDType),
        new("n_prompt", s.PromptTokens),
        new("n_gen", s.Tokens),
        new("n_depth", s.Context),
        new("avg_ns", (long)Math.Round(s.Phase == "Prefill" ? (s.TimeToFirstTokenMs ?? 0) * 1e6 : s.MsPerToken * s.Tokens * 1e6)),
        new("avg_ts", s.TokensPerSecond),
        new("stddev_ts", s.StdDev),
    };
}
