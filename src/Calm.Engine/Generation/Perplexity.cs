using Calm.Engine.Session;

namespace Calm.Engine.Generation;

/// <summary>One scored token: log p(token | what came before in its window) and its rank among all tokens (1 = the most likely).</summary>
public readonly record struct ScoredToken(int Index, int Id, double LogProb, int Rank);

public sealed record PerplexityResult
{
    /// <summary>Tokens scored (every token but the first).</summary>
    public required int Tokens { get; init; }
    /// <summary>Total negative log-likelihood in nats.</summary>
    public required double NegativeLogLikelihood { get; init; }
    /// <summary>exp(NegativeLogLikelihood / Tokens).</summary>
    public required double Perplexity { get; init; }
    public required int Window { get; init; }
    public required int Stride { get; init; }
    public required int Windows { get; init; }
    public required double ElapsedMs { get; init; }
    /// <summary>Per scored token, when asked for; else null.</summary>
    public IReadOnlyList<ScoredToken>? PerToken { get; init; }
}

/// <summary>
/// Sliding-window perplexity, the definition of tools/train_tiny.py and Hugging Face's perplexity guide: windows of W
/// tokens starting at 0, S, 2S, … (the last one ends at the sequence's end); each window runs from position 0 of the
/// cache and scores only the targets not scored by an earlier window, each given all the earlier tokens of its
/// window. The first token is never scored. Log-probabilities are log-softmax of the fp32 logits, summed in double.
/// </summary>
public static class Perplexity
{
    /// <summary>Default window: the model's context, at most 512 (the common reference setting, e.g. llama.cpp's and
    /// train_tiny.py's); default stride: half the window.</summary>
    public const int DefaultMaxWindow = 512;

    public static int DefaultWindow(LoadedModel model) => Math.Min(model.Backend.MaxContext, DefaultMaxWindow);

    public static PerplexityResult Measure(LoadedModel model, int[] ids, int? window = null, int? stride = null, bool perToken = false,
        IProgress<LoadProgress>? progress = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(ids);
        int w = window ?? DefaultWindow(model);
        if (w < 2) throw SamplingOptions.Bad("Window", $"must be ≥ 2; got {w}");
        if (w > model.Backend.MaxContext)
            throw new CalmException(ErrorIds.ContextOverflow, CalmErrorKind.LimitExceeded,
                $"-Window {w} is larger than model '{model.Name}''s context of {model.Backend.MaxContext} positions. Use a smaller -Window, or import the model with a larger -ContextLength.", "Window");
        int s = stride ?? Math.Max(1, w / 2);
        if (s < 1 || s > w) throw SamplingOptions.Bad("Stride", $"must be in [1, Window={w}]; got {s}");
        if (ids.Length < 2)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                $"Perplexity needs at least 2 tokens (the first is only context); the text has {ids.Length}. Give more text.", "Text");
        int vocab = model.Config.VocabSize;
        foreach (int id in ids)
            if ((uint)id >= (uint)vocab)
                throw new CalmException(ErrorIds.TokenOutOfRange, CalmErrorKind.InvalidArgument, $"Token id {id} is outside the model's vocabulary (0..{vocab - 1}).", "Text");

        // Logits of a chunk of positions at a time: at most ~16M floats (64 MB) whatever the vocabulary.
        int chunk = Math.Max(1, Math.Min(w, (16 << 20) / vocab));
        var logits = new float[(long)chunk * vocab];
        var scored = perToken ? new List<ScoredToken>(ids.Length) : null;
        double nll = 0; int count = 0, prevEnd = 0, windows = 0;
        int totalWindows = ids.Length <= w ? 1 : (ids.Length - w + s - 1) / s + 1;
        var sw = System.Diagnostics.Stopwatch.StartNew();

        using var hold = model.Acquire(ct);
        for (int begin = 0; begin < ids.Length; begin += s)
        {
            ct.ThrowIfCancellationRequested();
            int end = Math.Min(begin + w, ids.Length);
            // Position j in the window predicts ids[begin + j + 1]; targets from max(prevEnd, begin + 1) are new.
            int firstTarget = Math.Max(prevEnd, begin + 1);
            for (int c0 = 0; c0 < end - begin; c0 += chunk)
            {
                int n = Math.Min(chunk, end - begin - c0);
                // Positions whose target is new: begin+c0+j+1 ≥ firstTarget and < end.
                model.Backend.Forward(ids.AsSpan(begin + c0, n), c0, logits.AsSpan(0, n * vocab), allLogits: true, ct);
                for (int j = 0; j < n; j++)
                {
                    int target = begin + c0 + j + 1;
                    if (target < firstTarget || target >= end) continue;
                    var row = logits.AsSpan(j * vocab, vocab);
                    int id = ids[target];
                    double lp = row[id] - Sampler.LogSumExp(row);
                    nll -= lp;
                    count++;
                    if (scored is not null)
                    {
                        float x = row[id]; int rank = 1;
                        foreach (float y in row) if (y > x) rank++;
                        scored.Add(new ScoredToken(target, id, lp, rank));
                    }
                }
            }
            prevEnd = end;
            windows++;
            progress?.Report(new LoadProgress("Perplexity", $"window {windows} of {totalWindows}: {count} tokens, ppl {Math.Exp(nll / Math.Max(1, count)):F3}", (double)end / ids.Length));
            if (end == ids.Length) break;
        }
        return new PerplexityResult
        {
            Tokens = count,
            NegativeLogLikelihood = nll,
            Perplexity = Math.Exp(nll / count),
            Window = w, Stride = s, Windows = windows,
            ElapsedMs = sw.Elapsed.TotalMilliseconds,
            PerToken = scored,
        };
    }
}
