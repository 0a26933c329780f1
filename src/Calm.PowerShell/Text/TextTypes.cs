using System.Globalization;
using Calm.Engine;
using Calm.Engine.Generation;
using Calm.Engine.Session;
using Calm.Engine.Tokenization;

namespace Calm.PowerShell;

/// <summary>ConvertTo-CalmToken: one token of the text.</summary>
public sealed class CalmToken
{
    public int Index { get; init; }
    public int Id { get; init; }
    /// <summary>The token's decoded text (bytes of a partial character as &lt;0xNN&gt;).</summary>
    public string Text { get; init; } = "";
}

/// <summary>Invoke-CalmGenerate -Stream: one generated token, written as it is produced.</summary>
public sealed class CalmGeneratedToken
{
    public int Index { get; init; }
    public int TokenId { get; init; }
    /// <summary>Text this token completes (concatenated, the stream equals the result's Text).</summary>
    public string Text { get; init; } = "";
    /// <summary>Natural-log probability under the model's distribution (-LogProbs / -TopLogProbs).</summary>
    public double? LogProb { get; init; }
    /// <summary>Milliseconds since the generation started.</summary>
    public double ElapsedMs { get; init; }
    /// <summary>-TopLogProbs: the most likely alternatives as "'text' logprob; ...".</summary>
    public string? TopLogProbs { get; init; }

    internal static CalmGeneratedToken From(GeneratedToken t, CalmTokenizer? tok) => new()
    {
        Index = t.Index,
        TokenId = t.TokenId,
        Text = t.Text,
        LogProb = t.LogProb,
        ElapsedMs = Math.Round(t.ElapsedMs, 3),
        TopLogProbs = t.TopLogProbs is null ? null : string.Join("; ", t.TopLogProbs.Select(a =>
            $"'{(tok is null ? a.Id.ToString(CultureInfo.InvariantCulture) : tok.TokenText(a.Id))}' {a.LogProb.ToString("F4", CultureInfo.InvariantCulture)}")),
    };
}

/// <summary>Invoke-CalmGenerate: one prompt's result.</summary>
public sealed class CalmGeneration
{
    public string Prompt { get; init; } = "";
    public string? Text { get; init; }
    public int PromptTokens { get; init; }
    public int GeneratedTokens { get; init; }
    /// <summary>Eos, StopString, MaxTokens, ContextFull or Cancelled.</summary>
    public string StopReason { get; init; } = "";
    public double TimeToFirstTokenMs { get; init; }
    public double PrefillTokensPerSecond { get; init; }
    /// <summary>Decode steps after the first token per second; empty with fewer than two tokens.</summary>
    public double? DecodeTokensPerSecond { get; init; }
    /// <summary>Sum of the chosen tokens' log-probabilities (-LogProbs).</summary>
    public double? LogProb { get; init; }
    public string Model { get; init; } = "";
    public string Device { get; init; } = "";
    public ulong Seed { get; init; }

    private CalmGeneratedToken[] _tokens = Array.Empty<CalmGeneratedToken>();
    private int[] _ids = Array.Empty<int>();

    /// <summary>The generated tokens (with log-probabilities when asked for).</summary>
    public CalmGeneratedToken[] GetTokens() => (CalmGeneratedToken[])_tokens.Clone();
    /// <summary>The generated token ids.</summary>
    public int[] GetTokenIds() => (int[])_ids.Clone();

    internal static CalmGeneration From(string prompt, GenerationResult r, LoadedModel m, bool logProbs) => new()
    {
        Prompt = prompt,
        Text = r.Text,
        PromptTokens = r.PromptIds.Length,
        GeneratedTokens = r.Ids.Length,
        StopReason = r.StopReason.ToString(),
        TimeToFirstTokenMs = Math.Round(r.TimeToFirstTokenMs, 3),
        PrefillTokensPerSecond = Math.Round(r.PrefillTokensPerSecond, 1),
        DecodeTokensPerSecond = r.DecodeTokensPerSecond is double d ? Math.Round(d, 1) : null,
        LogProb = logProbs ? r.Tokens.Sum(t => t.LogProb ?? 0) : null,
        Model = m.Name,
        Device = r.Device,
        Seed = r.Seed,
        _tokens = r.Tokens.Select(t => CalmGeneratedToken.From(t, m.Text?.Tokenizer)).ToArray(),
        _ids = r.Ids,
    };
}

/// <summary>Invoke-CalmChat: one message of the conversation (the history it writes ends with the reply).</summary>
public sealed class CalmChatMessage
{
    /// <summary>system, user or assistant.</summary>
    public string Role { get; init; } = "";
    public string Content { get; init; } = "";
    /// <summary>For the reply just generated: why it ended; empty for earlier messages.</summary>
    public string? StopReason { get; init; }
    public int? GeneratedTokens { get; init; }
    public double? DecodeTokensPerSecond { get; init; }
}

/// <summary>Measure-CalmPerplexity: the figure for one text.</summary>
public sealed class CalmPerplexity
{
    /// <summary>The file measured, or "text".</summary>
    public string Source { get; init; } = "";
    /// <summary>Tokens scored (all but the first).</summary>
    public int Tokens { get; init; }
    /// <summary>Total negative log-likelihood (nats).</summary>
    public double NegativeLogLikelihood { get; init; }
    public double Perplexity { get; init; }
    /// <summary>Mean negative log-likelihood in bits per token.</summary>
    public double BitsPerToken { get; init; }
    public int Window { get; init; }
    public int Stride { get; init; }
    public string Model { get; init; } = "";
    public string Device { get; init; } = "";
    public double ElapsedMs { get; init; }
}

/// <summary>Measure-CalmPerplexity -PerToken: one scored token.</summary>
public sealed class CalmScoredToken
{
    /// <summary>Position in the token sequence (0 is the first token, never scored).</summary>
    public int Index { get; init; }
    public int Id { get; init; }
    public string Text { get; init; } = "";
    /// <summary>Natural-log probability the model gave this token.</summary>
    public double LogProb { get; init; }
    /// <summary>1 = the model's most likely token.</summary>
    public int Rank { get; init; }
}
