using System.Runtime.CompilerServices;

namespace Calm.Engine.Generation;

/// <summary>
/// How the next token is chosen. Temperature 0 is greedy (argmax; ties: the lower id). Otherwise, in Hugging Face's
/// order: penalties on the raw logits, ÷ temperature, top-k, top-p, min-p, then one draw from what is left.
/// Null / 0 / 1 where noted means "off".
/// </summary>
public sealed record SamplingOptions
{
    /// <summary>0 = greedy. Must be ≥ 0.</summary>
    public double Temperature { get; init; }
    /// <summary>Keep only the k most likely tokens; 0 = off. Must be ≥ 0.</summary>
    public int TopK { get; init; }
    /// <summary>Keep the smallest set of most likely tokens whose probability sums to ≥ p; 1 = off. In (0, 1].</summary>
    public double TopP { get; init; } = 1.0;
    /// <summary>Drop tokens less likely than MinP × the most likely one; 0 = off. In [0, 1].</summary>
    public double MinP { get; init; }
    /// <summary>HF repetition penalty on every token already in the sequence (prompt and output): a positive logit is
    /// divided by it, a negative one multiplied. Null = off; must be &gt; 0 (1 = no change).</summary>
    public double? RepetitionPenalty { get; init; }
    /// <summary>Subtracted from the logit of every token already in the sequence (prompt and output). Null = off; must be &gt; 0.</summary>
    public double? PresencePenalty { get; init; }
    /// <summary>Seed of the sampler's PRNG; same seed, same tokens. Null: a random seed is chosen (and reported).</summary>
    public ulong? Seed { get; init; }

    public bool IsGreedy => Temperature == 0;
    public bool HasPenalties => RepetitionPenalty is not null || PresencePenalty is not null;

    /// <summary>Calm.InvalidArgument naming the parameter for any value outside its range.</summary>
    public void Validate()
    {
        if (!(Temperature >= 0) || double.IsInfinity(Temperature)) throw Bad("Temperature", $"must be a finite number ≥ 0 (0 = greedy); got {Temperature}");
        if (TopK < 0) throw Bad("TopK", $"must be ≥ 0 (0 = off); got {TopK}");
        if (!(TopP > 0 && TopP <= 1)) throw Bad("TopP", $"must be in (0, 1] (1 = off); got {TopP}");
        if (!(MinP >= 0 && MinP <= 1)) throw Bad("MinP", $"must be in [0, 1] (0 = off); got {MinP}");
        if (RepetitionPenalty is double r && !(r > 0 && double.IsFinite(r))) throw Bad("RepetitionPenalty", $"must be > 0 (1 = no change); got {r}");
        if (PresencePenalty is double p && !(p > 0 && double.IsFinite(p))) throw Bad("PresencePenalty", $"must be > 0 (leave it out for none); got {p}");
    }

    internal static CalmException Bad(string name, string what) =>
        new(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"-{name} {what}.", name);
}

/// <summary>A seeded PRNG with a fixed, documented algorithm (xoshiro256** seeded through SplitMix64), so a seed gives
/// the same tokens on every machine and .NET version.</summary>
public sealed class SeededRandom
{
    ulong _s0, _s1, _s2, _s3;

    public SeededRandom(ulong seed)
    {
        ulong x = seed;
        _s0 = SplitMix(ref x); _s1 = SplitMix(ref x); _s2 = SplitMix(ref x); _s3 = SplitMix(ref x);
    }

    static ulong SplitMix(ref ulong x)
    {
        ulong z = x += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public ulong NextUInt64()
    {
        ulong result = ulong.RotateLeft(_s1 * 5, 7) * 9;
        ulong t = _s1 << 17;
        _s2 ^= _s0; _s3 ^= _s1; _s1 ^= _s2; _s0 ^= _s3;
        _s2 ^= t;
        _s3 = ulong.RotateLeft(_s3, 45);
        return result;
    }

    /// <summary>Uniform in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));
}

/// <summary>One alternative token and its log-probability.</summary>
public readonly record struct TokenLogProb(int Id, double LogProb);

/// <summary>
/// Chooses tokens from logits per <see cref="SamplingOptions"/>. Holds the PRNG and the counts of tokens seen (for
/// the penalties). One per generation; not thread-safe.
/// </summary>
public sealed class Sampler
{
    public SamplingOptions Options { get; }
    public ulong Seed { get; }
    readonly SeededRandom _rng;
    readonly HashSet<int> _seen = new();
    // scratch
    int[] _ids = Array.Empty<int>();
    float[] _vals = Array.Empty<float>();
    double[] _probs = Array.Empty<double>();

    public Sampler(SamplingOptions options)
    {
        options.Validate();
        Options = options;
        Seed = options.Seed ?? (ulong)Random.Shared.NextInt64(0, long.MaxValue);
        _rng = new SeededRandom(Seed);
    }

    /// <summary>Marks tokens as present in the sequence (the prompt, then each chosen token).</summary>
    public void Observe(ReadOnlySpan<int> ids) { foreach (int id in ids) _seen.Add(id); }
    public void Observe(int id) => _seen.Add(id);

    /// <summary>True when the choice can be made from the device's top-k candidates alone (no penalties, greedy or
    /// top-k ≤ maxK), so the full logits need not be copied to the host.</summary>
    public bool CanUseCandidates(int maxK) => !Options.HasPenalties && (Options.IsGreedy || (Options.TopK > 0 && Options.TopK <= maxK));

    /// <summary>Chooses from the full logits [V]; they are modified in place (penalties).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public int Sample(Span<float> logits)
    {
        ApplyPenalties(logits);
        if (Options.IsGreedy) return ArgMax(logits);
        int v = logits.Length;
        int n = Options.TopK > 0 ? Math.Min(Options.TopK, v) : v;
        Ensure(n);
        double? topPTotal = null;
        if (n < v) TopK(logits, n, _ids, _vals);
        else
        {
            // Tokens more than 40·T below the top have relative weight < e^-40 (4e-18): left out before sorting.
            float max = float.NegativeInfinity;
            foreach (float x in logits) if (x > max) max = x;
            if (Options.TopP >= 1 && Options.MinP <= 0) return SampleUnsorted(logits, max);
            float floor = (float)(max - 40 * Options.Temperature);
            // min-p alone keeps exactly the tokens with p ≥ MinP·p_max, i.e. logit ≥ max + T·ln(MinP): filter before sorting.
            if (Options.TopP >= 1 && Options.MinP > 0) floor = Math.Max(floor, (float)(max + Options.Temperature * Math.Log(Options.MinP)));
            if (Options.TopP < 1)
            {
                // The nucleus is the largest tokens up to TopP of the whole mass. If the tokens with p ≥ 1e-3·p_max
                // already hold that much, the nucleus lies among them: sort only those (a 128k vocabulary is
                // otherwise sorted whole every token), measuring TopP against the mass of all tokens above the floor.
                double inv = 1.0 / Options.Temperature, all = 0, near = 0;
                float nearFloor = (float)(max + Options.Temperature * Math.Log(1e-3));
                for (int i = 0; i < v; i++)
                {
                    float x = logits[i];
                    if (x < floor) continue;
                    double e = Math.Exp((x - max) * inv);
                    all += e;
                    if (x >= nearFloor) near += e;
                }
                if (near >= Options.TopP * all) { floor = Math.Max(floor, nearFloor); topPTotal = all; }
            }
            n = 0;
            for (int i = 0; i < v; i++) if (logits[i] >= floor) { _ids[n] = i; _vals[n] = logits[i]; n++; }
            SortDescending(_ids.AsSpan(0, n), _vals.AsSpan(0, n));
        }
        return SampleCandidates(_ids.AsSpan(0, n), _vals.AsSpan(0, n), topPTotal);
    }

    /// <summary>
    /// Plain temperature sampling over the whole vocabulary needs no order: one pass for the normaliser, one inverse-CDF
    /// pass in id order (the same distribution as the sorted path; a 128k vocabulary costs no sort per token).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    int SampleUnsorted(ReadOnlySpan<float> logits, float max)
    {
        double inv = 1.0 / Options.Temperature, sum = 0;
        for (int i = 0; i < logits.Length; i++) sum += Math.Exp((logits[i] - max) * inv);
        double u = _rng.NextDouble() * sum;
        int last = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            double p = Math.Exp((logits[i] - max) * inv);
            if (p > 0) last = i;
            u -= p;
            if (u < 0) return i;
        }
        return last;
    }

    /// <summary>Chooses from candidates sorted by logit descending (ties: lower id first), e.g. a device top-k.
    /// Penalties must be off (see <see cref="CanUseCandidates"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public int SampleCandidates(ReadOnlySpan<int> ids, ReadOnlySpan<float> logits) => SampleCandidates(ids, logits, null);

    /// <param name="topPTotal">The mass (relative to the top token) top-p is measured against when the candidates
    /// are a prefix of a larger sorted set; null: the candidates' own mass.</param>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    int SampleCandidates(ReadOnlySpan<int> ids, ReadOnlySpan<float> logits, double? topPTotal)
    {
        if (ids.Length == 0) throw new ArgumentException("No candidates.", nameof(ids));
        if (Options.IsGreedy) return ids[0];
        int n = Options.TopK > 0 ? Math.Min(Options.TopK, ids.Length) : ids.Length;
        if (_probs.Length < n) _probs = new double[n];
        var p = _probs.AsSpan(0, n);
        double inv = 1.0 / Options.Temperature, max = logits[0], sum = 0;
        for (int i = 0; i < n; i++) { p[i] = Math.Exp((logits[i] - max) * inv); sum += p[i]; }
        // top-p: keep the smallest prefix whose probability reaches TopP (at least one token).
        int keep = n;
        if (Options.TopP < 1)
        {
            double cum = 0, target = Options.TopP * (topPTotal ?? sum);
            for (int i = 0; i < n; i++) { cum += p[i]; if (cum >= target) { keep = i + 1; break; } }
        }
        // min-p: drop tokens below MinP × the top probability (p[0] is the top, relative weight 1).
        if (Options.MinP > 0)
        {
            int k = 1;
            while (k < keep && p[k] >= Options.MinP * p[0]) k++;
            keep = k;
        }
        double total = 0;
        for (int i = 0; i < keep; i++) total += p[i];
        double u = _rng.NextDouble() * total;
        for (int i = 0; i < keep; i++)
        {
            u -= p[i];
            if (u < 0) return ids[i];
        }
        return ids[keep - 1];
    }

    void ApplyPenalties(Span<float> logits)
    {
        if (!Options.HasPenalties) return;
        float rep = (float)(Options.RepetitionPenalty ?? 1.0), pres = (float)(Options.PresencePenalty ?? 0.0);
        foreach (int id in _seen)
        {
            if ((uint)id >= (uint)logits.Length) continue;
            float l = logits[id];
            if (Options.RepetitionPenalty is not null) l = l > 0 ? l / rep : l * rep;
            l -= pres;
            logits[id] = l;
        }
    }

    void Ensure(int n)
    {
        if (_ids.Length < n) { _ids = new int[n]; _vals = new float[n]; }
    }

    /// <summary>Argmax; ties: the lower id.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }

    /// <summary>The k largest values with their ids, sorted descending (ties: lower id first).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void TopK(ReadOnlySpan<float> v, int k, Span<int> ids, Span<float> vals)
    {
        // Insertion into a sorted buffer of k: O(V·k) worst case but O(V) in practice (most values fail the first compare).
        int count = 0;
        for (int i = 0; i < v.Length; i++)
        {
            float x = v[i];
            if (count == k && !(x > vals[k - 1])) continue;
            int j = count < k ? count++ : k - 1;
            while (j > 0 && x > vals[j - 1]) { vals[j] = vals[j - 1]; ids[j] = ids[j - 1]; j--; }
            vals[j] = x; ids[j] = i;
        }
    }

    long[] _keys = Array.Empty<long>();

    /// <summary>
    /// Sorts by value descending, ties by id ascending, as one primitive sort of 64-bit keys: the value's bits mapped to
    /// an order-preserving unsigned integer (inverted for descending) above the id. A tuple sort with the generic
    /// comparer took milliseconds per token over a full vocabulary.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal void SortDescending(Span<int> ids, Span<float> vals)
    {
        int n = ids.Length;
        if (_keys.Length < n) _keys = new long[n];
        var keys = _keys.AsSpan(0, n);
        for (int i = 0; i < n; i++)
        {
            uint b = vals[i] == 0 ? 0u : BitConverter.SingleToUInt32Bits(vals[i]);   // -0 ties with +0
            uint ordered = (b & 0x80000000u) != 0 ? ~b : b | 0x80000000u;   // ascending as unsigned
            keys[i] = (long)(((ulong)~ordered << 32) | (uint)ids[i]) ^ long.MinValue;   // descending value, then id
        }
        keys.Sort();
        for (int i = 0; i < n; i++)
        {
            ulong k = (ulong)(keys[i] ^ long.MinValue);
            uint ordered = ~(uint)(k >> 32);
            uint b = (ordered & 0x80000000u) != 0 ? ordered & 0x7FFFFFFFu : ~ordered;
            vals[i] = BitConverter.UInt32BitsToSingle(b);
            ids[i] = (int)(uint)k;
        }
    }

    /// <summary>log-softmax of one logit in double: logit − log Σ exp(logits).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static double LogSumExp(ReadOnlySpan<float> logits)
    {
        float max = float.NegativeInfinity;
        foreach (float x in logits) if (x > max) max = x;
        double s = 0;
        foreach (float x in logits) s += Math.Exp((double)x - max);
        return max + Math.Log(s);
    }
}
