using Calm.Engine.Generation;
using Calm.Engine.Session;

namespace Calm.PowerShell;

internal static class SamplingParameters
{
    /// <summary>
    /// Sampling from the cmdlet's parameters. Unset ones: with no -Temperature the model's generation_config.json decides
    /// (do_sample true: its temperature, top_k, top_p; otherwise greedy); unset top-k/top-p are off.
    /// </summary>
    public static SamplingOptions Build(LoadedModel m, double? temperature, int? topK, double? topP, double? minP,
        double? repetitionPenalty, double? presencePenalty, long? seed)
    {
        var g = m.Generation;
        bool fromConfig = temperature is null && g is { DoSample: true };
        if (seed is < 0) throw new Calm.Engine.CalmException(Calm.Engine.ErrorIds.InvalidArgument, Calm.Engine.CalmErrorKind.InvalidArgument,
            $"-Seed must be ≥ 0; got {seed}.", "Seed");
        var o = new SamplingOptions
        {
            Temperature = temperature ?? (fromConfig ? g!.Temperature ?? 1.0 : 0.0),
            TopK = topK ?? (fromConfig ? g!.TopK ?? 0 : 0),
            TopP = topP ?? (fromConfig ? g!.TopP ?? 1.0 : 1.0),
            MinP = minP ?? 0,
            RepetitionPenalty = repetitionPenalty,
            PresencePenalty = presencePenalty,
            Seed = seed is long s ? (ulong)s : null,
        };
        o.Validate();
        return o;
    }
}
