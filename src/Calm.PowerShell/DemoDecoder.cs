using System.Diagnostics;
using Calm.Engine.Session;

namespace Calm.PowerShell;

/// <summary>Result of <see cref="DemoDecoder.Greedy"/>: the tokens chosen and how long each decode step took.</summary>
public sealed class GreedyResult
{
    public required int[] PromptTokens { get; init; }
    public required int[] Tokens { get; init; }
    public required double PrefillMs { get; init; }
    /// <summary>Mean wall time of one single-token decode step.</summary>
    public required double MsPerToken { get; init; }
}

/// <summary>
/// Greedy decoding straight on the engine's forward pass, for build.ps1 Demo until the generation cmdlets land
/// (spans cannot be passed from PowerShell, so the loop lives here). Argmax of the logits; no sampling.
/// </summary>
public static class DemoDecoder
{
    public static GreedyResult Greedy(CalmModel model, int[] prompt, int count)
    {
        var m = model.Resolve();
        if (prompt.Length == 0) throw new ArgumentException("The prompt needs at least one token.", nameof(prompt));
        int vocab = m.Config.VocabSize;
        var logits = new float[vocab];
        var outTokens = new List<int>(count);
        using var _ = m.Acquire(CancellationToken.None);
        long t0 = Stopwatch.GetTimestamp();
        m.Backend.Forward(prompt, 0, logits, allLogits: false);
        double prefill = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
        int pos = prompt.Length;
        long t1 = Stopwatch.GetTimestamp();
        for (int i = 0; i < count && pos < m.Backend.MaxContext; i++)
        {
            int next = ArgMax(logits);
            outTokens.Add(next);
            if (i == count - 1) break;
            m.Backend.Forward(new[] { next }, pos++, logits, allLogits: false);
        }
        int steps = Math.Max(outTokens.Count - 1, 1);
        return new GreedyResult
        {
            PromptTokens = prompt,
            Tokens = outTokens.ToArray(),
            PrefillMs = prefill,
            MsPerToken = Stopwatch.GetElapsedTime(t1).TotalMilliseconds / steps,
        };
    }

    private static int ArgMax(float[] v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }
}
