using System.Diagnostics;
using System.Text;
using Calm.Engine.Cuda;
using Calm.Engine.Session;
using Calm.Engine.Tokenization;

namespace Calm.Engine.Generation;

public enum StopReason { Eos, StopString, MaxTokens, ContextFull, Cancelled }

public sealed record GenerateOptions
{
    /// <summary>Most tokens to generate (≥ 1).</summary>
    public int MaxTokens { get; init; } = 256;
    public SamplingOptions Sampling { get; init; } = new();
    /// <summary>Generation ends when the decoded text contains one of these; the stop string is not in the text.</summary>
    public IReadOnlyList<string> Stop { get; init; } = Array.Empty<string>();
    /// <summary>Report each chosen token's log-probability (under the model's raw distribution, before penalties and temperature).</summary>
    public bool LogProbs { get; init; }
    /// <summary>Also report the N most likely alternatives per step (0 = none).</summary>
    public int TopLogProbs { get; init; }
    /// <summary>Ids that end generation; null: the tokenizer's, generation_config.json's and config.json's EOS ids.</summary>
    public IReadOnlyList<int>? EosIds { get; init; }
    /// <summary>Also end on any special added token (chat replies: an end-of-turn marker that is not the EOS).</summary>
    public bool StopOnSpecialTokens { get; init; }
}

/// <summary>One generated token, as it is produced.</summary>
public sealed record GeneratedToken
{
    /// <summary>0-based position among the generated tokens.</summary>
    public required int Index { get; init; }
    public required int TokenId { get; init; }
    /// <summary>The text this token completes (with a stop string about to be checked held back; may be empty).</summary>
    public required string Text { get; init; }
    public double? LogProb { get; init; }
    public IReadOnlyList<TokenLogProb>? TopLogProbs { get; init; }
    /// <summary>Milliseconds since the generation started (after the model was acquired).</summary>
    public required double ElapsedMs { get; init; }
}

public sealed record GenerationResult
{
    public required int[] PromptIds { get; init; }
    /// <summary>Generated ids (without the EOS that ended it).</summary>
    public required int[] Ids { get; init; }
    /// <summary>Decoded text of <see cref="Ids"/> up to any stop string; null when the model has no tokenizer.</summary>
    public string? Text { get; init; }
    public required StopReason StopReason { get; init; }
    public required double TimeToFirstTokenMs { get; init; }
    /// <summary>Prompt tokens ÷ prefill time (the one Forward over the prompt).</summary>
    public required double PrefillTokensPerSecond { get; init; }
    /// <summary>Decode steps ÷ their time (from the first token to the last); null when fewer than 2 tokens.</summary>
    public double? DecodeTokensPerSecond { get; init; }
    public required double TotalMs { get; init; }
    public required ulong Seed { get; init; }
    public required IReadOnlyList<GeneratedToken> Tokens { get; init; }
    public required string Device { get; init; }
}

/// <summary>
/// Prefill + decode on a <see cref="LoadedModel"/>: holds the model for the whole generation, starts at position 0,
/// checks cancellation before every token step (a cancelled generation returns what it has with StopReason
/// Cancelled; the model stays usable).
/// </summary>
public static class Generator
{
    /// <summary>Encodes <paramref name="prompt"/> with the model's tokenizer (adding its BOS as configured) and generates.</summary>
    public static GenerationResult Generate(LoadedModel model, string prompt, GenerateOptions options, Action<GeneratedToken>? onToken = null,
        CancellationToken ct = default, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        if (prompt.Length == 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, "The prompt is empty. Give some text to continue.", "Prompt");
        var tok = ModelText.RequireTokenizer(model);
        return Generate(model, tok.Encode(prompt, addSpecialTokens), options, onToken, ct);
    }

    public static GenerationResult Generate(LoadedModel model, int[] promptIds, GenerateOptions options, Action<GeneratedToken>? onToken = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(promptIds);
        if (promptIds.Length == 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, "The prompt has no tokens. Give at least one token.", "Prompt");
        if (options.MaxTokens < 1)
            throw SamplingOptions.Bad("MaxTokens", $"must be ≥ 1; got {options.MaxTokens}");
        if (options.TopLogProbs < 0 || options.TopLogProbs > 100)
            throw SamplingOptions.Bad("TopLogProbs", $"must be in [0, 100]; got {options.TopLogProbs}");
        foreach (var s in options.Stop)
            if (string.IsNullOrEmpty(s)) throw SamplingOptions.Bad("Stop", "strings must not be empty");
        var sampler = new Sampler(options.Sampling);
        var tokenizer = model.Text?.Tokenizer;
        if (options.Stop.Count > 0 && tokenizer is null) ModelText.RequireTokenizer(model);
        int vocab = model.Config.VocabSize;
        foreach (int id in promptIds)
            if ((uint)id >= (uint)vocab)
                throw new CalmException(ErrorIds.TokenOutOfRange, CalmErrorKind.InvalidArgument,
                    $"Prompt token id {id} is outside the model's vocabulary (0..{vocab - 1}).", "Prompt");

        using var hold = model.Acquire(ct);
        var backend = model.Backend;
        int ctx = backend.MaxContext;
        if (promptIds.Length > ctx)
            throw new CalmException(ErrorIds.ContextOverflow, CalmErrorKind.LimitExceeded,
                $"The prompt is {promptIds.Length} tokens but model '{model.Name}' holds {ctx} positions. Shorten the prompt, or import the model with a larger -ContextLength (at most its max_position_embeddings, {model.Config.MaxPositionEmbeddings}).",
                "Prompt");

        var eos = new HashSet<int>(options.EosIds ?? DefaultEos(model));
        bool needLogits = options.LogProbs || options.TopLogProbs > 0;
        var device = backend as IDeviceSampling;
        bool useDevice = device is not null && !needLogits && sampler.CanUseCandidates(device.MaxDeviceTopK);
        int k = useDevice && !sampler.Options.IsGreedy ? sampler.Options.TopK : 0;
        var logits = useDevice ? Array.Empty<float>() : new float[vocab];
        var candIds = new int[k];
        var candLogits = new float[k];

        sampler.Observe(promptIds);
        var stream = tokenizer?.CreateStreamDecoder(skipSpecialTokens: true);
        var text = new StringBuilder();
        int emitted = 0;            // chars of text already handed out
        int stopSearchFrom = 0;
        int maxStop = options.Stop.Count == 0 ? 0 : options.Stop.Max(s => s.Length);
        var ids = new List<int>();
        var tokens = new List<GeneratedToken>();
        var reason = StopReason.MaxTokens;
        int endId = -1;
        double ttft = 0, prefillMs = 0;
        long firstTokenAt = 0, lastTokenAt = 0;
        long t0 = Stopwatch.GetTimestamp();

        int Step(ReadOnlySpan<int> input, int pos)
        {
            if (useDevice)
            {
                if (k == 0) return device!.ForwardGreedy(input, pos, ct);
                device!.ForwardTopK(input, pos, candIds, candLogits, ct);
                return sampler.SampleCandidates(candIds, candLogits);
            }
            backend.Forward(input, pos, logits, allLogits: false, ct);
            if (!needLogits) return sampler.Sample(logits);
            return -1; // caller samples after reading log-probs
        }

        try
        {
            int pos = 0;
            int[] input = promptIds;
            for (int i = 0; ; i++)
            {
                ct.ThrowIfCancellationRequested();
                if (pos + input.Length > ctx) { reason = StopReason.ContextFull; break; }
                int next = Step(input, pos);
                double? lp = null; TokenLogProb[]? top = null;
                if (next < 0)
                {
                    double lse = Sampler.LogSumExp(logits);
                    if (options.TopLogProbs > 0)
                    {
                        int n = Math.Min(options.TopLogProbs, vocab);
                        var ti = new int[n]; var tv = new float[n];
                        Sampler.TopK(logits, n, ti, tv);
                        top = new TokenLogProb[n];
                        for (int j = 0; j < n; j++) top[j] = new TokenLogProb(ti[j], tv[j] - lse);
                    }
                    var raw = (float[])logits.Clone();
                    next = sampler.Sample(logits);
                    lp = raw[next] - lse;
                }
                long now = Stopwatch.GetTimestamp();
                if (i == 0)
                {
                    firstTokenAt = now;
                    ttft = Stopwatch.GetElapsedTime(t0, now).TotalMilliseconds;
                    prefillMs = ttft;
                }
                lastTokenAt = now;
                pos += input.Length;
                if (eos.Contains(next) || (options.StopOnSpecialTokens && tokenizer is not null && tokenizer.IsSpecial(next)))
                {
                    reason = StopReason.Eos;
                    endId = next;
                    break;
                }
                sampler.Observe(next);
                ids.Add(next);
                string chunk = "";
                bool stopped = false;
                if (stream is not null)
                {
                    text.Append(stream.Add(next));
                    if (maxStop > 0)
                    {
                        int cut = FindStop(text, options.Stop, stopSearchFrom);
                        if (cut >= 0) { text.Length = cut; stopped = true; }
                        else stopSearchFrom = Math.Max(0, text.Length - maxStop + 1);
                    }
                    // The last token (by MaxTokens or a full context) hands out everything, unfinished bytes too.
                    bool last = !stopped && (ids.Count >= options.MaxTokens || pos + 1 > ctx);
                    if (last) text.Append(stream.Flush());
                    int safe = stopped || last || maxStop == 0 ? text.Length : text.Length - HeldBack(text, options.Stop);
                    safe = Math.Max(safe, emitted);
                    chunk = text.ToString(emitted, safe - emitted);
                    emitted = safe;
                }
                var gt = new GeneratedToken
                {
                    Index = i, TokenId = next, Text = chunk, LogProb = lp, TopLogProbs = top,
                    ElapsedMs = Stopwatch.GetElapsedTime(t0, now).TotalMilliseconds,
                };
                tokens.Add(gt);
                onToken?.Invoke(gt);
                if (stopped) { reason = StopReason.StopString; break; }
                if (ids.Count >= options.MaxTokens) { reason = StopReason.MaxTokens; break; }
                input = new[] { next };
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            reason = StopReason.Cancelled;
        }
        catch (CalmException e) when (e.ErrorId == ErrorIds.Cancelled && ct.IsCancellationRequested)
        {
            reason = StopReason.Cancelled;
        }

        if (stream is not null && reason is StopReason.Eos or StopReason.Cancelled)
        {
            text.Append(stream.Flush());
            if (reason == StopReason.Eos && text.Length > emitted && onToken is not null)
            {
                // Text held back for a possible stop string (or an unfinished character) comes out with the EOS.
                onToken(new GeneratedToken
                {
                    Index = tokens.Count, TokenId = endId, Text = text.ToString(emitted, text.Length - emitted),
                    ElapsedMs = Stopwatch.GetElapsedTime(t0).TotalMilliseconds,
                });
            }
        }
        double total = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
        int steps = tokens.Count + (reason == StopReason.Eos ? 1 : 0) - 1;  // tokens sampled after the first
        double decodeMs = firstTokenAt == 0 ? 0 : Stopwatch.GetElapsedTime(firstTokenAt, lastTokenAt).TotalMilliseconds;
        return new GenerationResult
        {
            PromptIds = promptIds,
            Ids = ids.ToArray(),
            Text = stream is null ? null : text.ToString(),
            StopReason = reason,
            TimeToFirstTokenMs = ttft,
            PrefillTokensPerSecond = prefillMs > 0 ? promptIds.Length / (prefillMs / 1000) : 0,
            DecodeTokensPerSecond = steps >= 1 && decodeMs > 0 ? steps / (decodeMs / 1000) : null,
            TotalMs = total,
            Seed = sampler.Seed,
            Tokens = tokens,
            Device = backend.DeviceName,
        };
    }

    /// <summary>EOS ids: the tokenizer's (generation_config, config, tokenizer_config), else the model's.</summary>
    public static IReadOnlyList<int> DefaultEos(LoadedModel model)
    {
        var set = new List<int>();
        if (model.Text?.Tokenizer is { } t) set.AddRange(t.EosIds);
        if (model.Generation is { } g) foreach (int e in g.EosTokenIds) if (!set.Contains(e)) set.Add(e);
        foreach (int e in model.Config.EosTokenIds) if (!set.Contains(e)) set.Add(e);
        return set;
    }

    static int FindStop(StringBuilder text, IReadOnlyList<string> stops, int from)
    {
        string s = text.ToString(from, text.Length - from);
        int best = -1;
        foreach (var stop in stops)
        {
            int i = s.IndexOf(stop, StringComparison.Ordinal);
            if (i >= 0 && (best < 0 || i < best)) best = i;
        }
        return best < 0 ? -1 : from + best;
    }

    /// <summary>Length of the longest end of the text that begins some stop string (held back from the stream).</summary>
    static int HeldBack(StringBuilder text, IReadOnlyList<string> stops)
    {
        int best = 0;
        foreach (var stop in stops)
            for (int len = Math.Min(stop.Length - 1, text.Length); len > best; len--)
            {
                bool match = true;
                for (int j = 0; j < len && match; j++) match = text[text.Length - len + j] == stop[j];
                if (match) { best = len; break; }
            }
        return best;
    }
}
