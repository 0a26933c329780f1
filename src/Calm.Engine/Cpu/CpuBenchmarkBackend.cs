using System.Diagnostics;
using Calm.Engine.Model;
using Calm.Engine.Session;
using Calm.Engine.Synthetic;
using Calm.Engine.Weights;

namespace Calm.Engine.Cpu;

/// <summary>
/// The CPU side of <see cref="IBenchmarkBackend"/>: Stopwatch timing of real decode steps and prefill, a KV cache
/// filled with random data to reach deep contexts, and a per-stage profile in which each stage's kernels run on
/// their own (all layers, the same code the forward pass runs) and are timed; no stage time is derived from bytes.
/// Shapes as in <see cref="CpuBackend"/>: D hidden, F intermediate, H heads, K kv heads, Hd head_dim, L layers.
/// </summary>
public sealed unsafe partial class CpuBackend : IBenchmarkBackend
{
    /// <summary>Minimum untimed warm-up (ms) before timing decode steps or stages on the CPU.</summary>
    public const double WarmupMs = 100;

    /// <summary>Weights + KV cache + activation scratch, bytes of host memory.</summary>
    public long DeviceBytes
    {
        get
        {
            long scratch = 0;
            if (_scratch is { } s)
                foreach (var a in new[] { s.X, s.Xb, s.Q, s.K, s.V, s.Att, s.Tmp, s.G, s.U, s.Cos, s.Sin, s.Router, s.Xe, s.Ye })
                    if (a is not null) scratch += (long)a.Length * sizeof(float);
            return _w.TotalBytes + KvCacheBytes + scratch;
        }
    }

    private void ThrowIfDisposed()
    {
        if (_disposed)
            throw new CalmException(ErrorIds.ModelDisposed, CalmErrorKind.InvalidOperation, "The model was removed; its CPU backend is disposed. Import it again.");
    }

    private void CheckPositions(long last, string what)
    {
        if (last > MaxContext)
            throw new CalmException(ErrorIds.ContextOverflow, CalmErrorKind.LimitExceeded,
                $"{what} needs {last} positions but the model was loaded with a KV cache of {MaxContext}. " +
                $"Load it again with a larger -ContextLength (the model allows up to {Config.MaxPositionEmbeddings}) or measure at a smaller -Context.",
                "Context");
    }

    public void FillKvCacheForBenchmark(int positions, int seed)
    {
        ThrowIfDisposed();
        if (positions < 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Positions must be >= 0 (got {positions}).", "Context");
        CheckPositions(positions, $"Filling the KV cache to position {positions}");
        int kvd = Config.KvDim, layers = Config.NumLayers;
        long per = (long)positions * kvd;
        // Keys and values uniform in (-1, 1): a pure function of (seed, layer, k|v, index), like the synthetic weights.
        // fp8: the same values quantized row by row (KvFp8), as a forward would have written them.
        void Fill(int item)
        {
            int l = item >> 1; bool isV = (item & 1) == 1;
            ulong key = SyntheticWeights.Key(seed, SyntheticWeights.Fnv1a64($"kv.{l}.{(isV ? 'v' : 'k')}"));
            if (_fp8)
            {
                int hd = Config.HeadDim, heads = Config.NumKvHeads;
                byte* q = (isV ? _vq : _kq) + (long)l * MaxContext * kvd;
                float* sc = (isV ? _vs : _ks) + (long)l * MaxContext * heads;
                var row = new float[hd];
                for (long r = 0; r < (long)positions * heads; r++)
                {
                    for (int i = 0; i < hd; i++) row[i] = SyntheticWeights.Value(key, r * hd + i, 1f, 0f);
                    sc[r] = KvFp8.QuantizeRow(row, new Span<byte>(q + r * hd, hd));
                }
                return;
            }
            float* dst = (isV ? _vCache : _kCache) + (long)l * MaxContext * kvd;
            for (long i = 0; i < per; i++) dst[i] = SyntheticWeights.Value(key, i, 1f, 0f);
        }
        if (per * layers < 1 << 16) for (int i = 0; i < 2 * layers; i++) Fill(i);
        else Parallel.For(0, 2 * layers, Fill);
        _filled = positions;
    }

    private static int Argmax(ReadOnlySpan<float> x) => System.Numerics.Tensors.TensorPrimitives.IndexOfMax(x);

    public double[] TimeDecodeSteps(int startPos, int steps, int warmup, CancellationToken ct)
    {
        ThrowIfDisposed();
        if (steps <= 0 || warmup < 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Decode timing needs steps > 0 and warmup >= 0 (got {steps}, {warmup}).", "Tokens");
        if (startPos < 0 || startPos > _filled)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                $"Decode from position {startPos} needs the KV cache filled to it; it holds {_filled} positions (FillKvCacheForBenchmark first).", "Context");
        CheckPositions((long)startPos + Math.Max(steps, warmup), $"Decoding {Math.Max(steps, warmup)} tokens from position {startPos}");
        var logits = new float[Config.VocabSize];
        int tok = (int)((uint)(startPos * 2654435761u) % (uint)Config.VocabSize);
        // Warm-up steps decode from startPos too; the timed run then overwrites the same positions.
        // While the JIT is still promoting the forward pass to optimised code (tiered compilation), early steps are
        // slow: after the requested warm-up, keep warming (same positions) until WarmupMs have passed.
        long w0 = Stopwatch.GetTimestamp();
        for (int i = 0; i < warmup || (warmup > 0 && i < 256 && Stopwatch.GetElapsedTime(w0).TotalMilliseconds < WarmupMs); i++)
        {
            ct.ThrowIfCancellationRequested();
            Forward(new[] { tok }, startPos + i % Math.Max(steps, warmup), logits, false, ct);
            tok = Argmax(logits);
        }
        var ms = new double[steps];
        var one = new int[1];
        for (int i = 0; i < steps; i++)
        {
            ct.ThrowIfCancellationRequested();
            one[0] = tok;
            long t0 = Stopwatch.GetTimestamp();
            Forward(one, startPos + i, logits, false, ct);
            tok = Argmax(logits);
            ms[i] = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
        }
        return ms;
    }

    public double TimePrefill(int tokens, int repeat, CancellationToken ct)
    {
        ThrowIfDisposed();
        if (tokens <= 0 || repeat <= 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Prefill timing needs tokens > 0 and repeat > 0 (got {tokens}, {repeat}).", "PromptTokens");
        CheckPositions(tokens, $"A prefill of {tokens} tokens");
        var rng = new Random(tokens);
        var ids = new int[tokens];
        for (int i = 0; i < tokens; i++) ids[i] = rng.Next(Config.VocabSize);
        var logits = new float[Config.VocabSize];
        var times = new double[repeat];
        for (int r = 0; r < repeat; r++)
        {
            ct.ThrowIfCancellationRequested();
            long t0 = Stopwatch.GetTimestamp();
            Forward(ids, 0, logits, false, ct);
            Argmax(logits);
            times[r] = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
        }
        return Median(times);
    }

    internal static double Median(double[] xs)
    {
        var s = xs.OrderBy(x => x).ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    /// <summary>Bytes each stage must read for one decode step at <paramref name="position"/> (weights as stored, fp32 cache and small vectors).</summary>
    public IReadOnlyDictionary<string, long> StageBytes(int position)
    {
        var c = Config;
        long f4 = sizeof(float);
        long proj = 0, ffn = 0, other = 0;
        long Len(float[]? a) => a is null ? 0 : a.Length * f4;
        for (int l = 0; l < c.NumLayers; l++)
        {
            var lw = _w.Layers[l]; var lf = _small[l];
            proj += lw.Wq.ByteLength + lw.Wk.ByteLength + lw.Wv.ByteLength + lw.Wo.ByteLength + Len(lf.Bq) + Len(lf.Bk) + Len(lf.Bv) + Len(lf.Bo);
            if (c.IsMoE)
            {
                ffn += lw.Router!.ByteLength;
                for (int e = 0; e < c.NumExpertsPerToken; e++)
                    ffn += lw.ExpertGate![e].ByteLength + lw.ExpertUp![e].ByteLength + lw.ExpertDown![e].ByteLength;
            }
            else ffn += lw.WGate!.ByteLength + lw.WUp!.ByteLength + lw.WDown!.ByteLength + Len(lf.BGate) + Len(lf.BUp) + Len(lf.BDown);
            other += Len(lf.AttnNorm) + Len(lf.FfnNorm) + Len(lf.QNorm) + Len(lf.KNorm);
        }
        other += Len(_finalNorm) + _w.Embedding.Cols * DTypes.SizeOf(_w.Embedding.DType) + (long)c.VocabSize * f4; // + argmax over logits
        int first = CpuOps.FirstVisibleKey(position, c.SlidingWindow);
        long attention = 2L * c.NumLayers * (position - first + 1) * c.KvDim * f4;
        return new Dictionary<string, long>
        {
            [Stages.AttentionProjections] = proj, [Stages.Ffn] = ffn, [Stages.Classifier] = _w.LmHead.ByteLength,
            [Stages.Attention] = attention, [Stages.Other] = other,
        };
    }

    public IReadOnlyList<StageTime> ProfileDecodeStages(int position, int repeat, CancellationToken ct)
    {
        ThrowIfDisposed();
        var c = Config;
        if (repeat <= 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Repeat must be positive (got {repeat}).", "Repeat");
        if (position < 0 || position > _filled)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                $"Profiling at position {position} needs the KV cache filled to it; it holds {_filled} positions (FillKvCacheForBenchmark first).", "Context");
        CheckPositions((long)position + 1, $"Profiling a decode step at position {position}");
        if (_scratch is null) _scratch = new Scratch(c, 1);
        var s = _scratch;
        int d = c.HiddenSize, f = c.IntermediateSize, kvd = c.KvDim, hd = c.HeadDim, half = c.RotaryDim / 2;
        float eps = (float)c.RmsNormEps;
        // Activations: deterministic values of a realistic size (no NaN/denormals to skew the timing).
        var rng = new Random(position + 17);
        foreach (var a in new[] { s.X, s.Xb, s.Q, s.K, s.V, s.Att, s.Tmp, s.G, s.U })
            for (int i = 0; i < Math.Min(a.Length, 1 << 20); i++) a[i] = (float)(rng.NextDouble() * 2 - 1);
        var logits = new float[c.VocabSize];
        double[] invFreq = CpuOps.RopeInvFreq(c, position + 1, out double ropeScale);
        int tok = position % c.VocabSize;
        var chosen = new int[Math.Max(1, c.NumExpertsPerToken)];
        var weights = new float[chosen.Length];

        void Projections()
        {
            for (int l = 0; l < c.NumLayers; l++)
            {
                var lw = _w.Layers[l]; var lf = _small[l];
                MatMulGroup(s.Xb, 1, (lw.Wq, s.Q), (lw.Wk, s.K), (lw.Wv, s.V));
                AddBias(s.Q.AsSpan(0, c.QDim), lf.Bq); AddBias(s.K.AsSpan(0, kvd), lf.Bk); AddBias(s.V.AsSpan(0, kvd), lf.Bv);
                MatMul(lw.Wo, s.Att, 1, s.Tmp);
                AddBias(s.Tmp.AsSpan(0, d), lf.Bo);
            }
        }
        void Ffn()
        {
            for (int l = 0; l < c.NumLayers; l++)
            {
                var lw = _w.Layers[l]; var lf = _small[l];
                if (c.IsMoE)
                {
                    MatMul(lw.Router!, s.Xb, 1, s.Router!);
                    CpuOps.MoeRoute(s.Router.AsSpan(0, c.NumExperts), c.NumExpertsPerToken, chosen, weights);
                    foreach (int ex in chosen)
                    {
                        MatMulGroup(s.Xb, 1, (lw.ExpertGate![ex], s.G), (lw.ExpertUp![ex], s.U));
                        MatMul(lw.ExpertDown![ex], s.G, 1, s.Ye!);
                    }
                }
                else
                {
                    MatMulGroup(s.Xb, 1, (lw.WGate!, s.G), (lw.WUp!, s.U));
                    AddBias(s.G.AsSpan(0, f), lf.BGate); AddBias(s.U.AsSpan(0, f), lf.BUp);
                    MatMul(lw.WDown!, s.G, 1, s.Tmp);
                    AddBias(s.Tmp.AsSpan(0, d), lf.BDown);
                }
            }
        }
        void Classifier()
        {
            fixed (float* px = s.Xb) fixed (float* pl = logits)
                CpuKernels.MatMul(_w.LmHead.Data, _w.LmHead.DType, c.VocabSize, d, px, 1, pl, c.VocabSize, _w.LmHead.Scales);
        }
        void Attend()
        {
            for (int l = 0; l < c.NumLayers; l++)
            {
                long layerOff = (long)l * MaxContext * kvd;
                // This token's key/value are written at `position`, then every head attends over [first, position].
                WriteCache(s, 1, position, l);
                Attention(s, 1, position, layerOff);
            }
        }
        void Other()
        {
            var xr = s.X.AsSpan(0, d);
            CpuKernels.ConvertTensorRow(_w.Embedding, tok, xr);
            if (c.ScaleEmbeddings) System.Numerics.Tensors.TensorPrimitives.Multiply(xr, MathF.Sqrt(d), xr);
            var cos = s.Cos.AsSpan(0, half); var sin = s.Sin.AsSpan(0, half);
            CpuOps.RopeCosSin(invFreq, position, ropeScale, cos, sin);
            int gated = c.IsMoE ? c.NumExpertsPerToken : 1;
            for (int l = 0; l < c.NumLayers; l++)
            {
                var lf = _small[l];
                CpuOps.RmsNorm(xr, lf.AttnNorm, s.Xb.AsSpan(0, d), eps, c.NormAddOne);
                for (int h = 0; h < c.NumHeads; h++)
                {
                    var qh = s.Q.AsSpan(h * hd, hd);
                    if (lf.QNorm is not null) CpuOps.RmsNorm(qh, lf.QNorm, qh, eps, c.NormAddOne);
                    CpuOps.ApplyRope(qh, cos, sin);
                }
                for (int h = 0; h < c.NumKvHeads; h++)
                {
                    var kh = s.K.AsSpan(h * hd, hd);
                    if (lf.KNorm is not null) CpuOps.RmsNorm(kh, lf.KNorm, kh, eps, c.NormAddOne);
                    CpuOps.ApplyRope(kh, cos, sin);
                }
                Add(xr, s.Tmp.AsSpan(0, d));
                CpuOps.RmsNorm(xr, lf.FfnNorm, s.Xb.AsSpan(0, d), eps, c.NormAddOne);
                for (int e = 0; e < gated; e++)
                {
                    // Refill g from u so repeated activations stay in range (exp of huge values would be inf).
                    s.U.AsSpan(0, f).CopyTo(s.G.AsSpan(0, f));
                    CpuOps.GatedActivation(s.G.AsSpan(0, f), s.U.AsSpan(0, f), c.HiddenAct);
                }
                Add(xr, s.Tmp.AsSpan(0, d));
                // Keep the residual bounded across layers and repeats.
                System.Numerics.Tensors.TensorPrimitives.Multiply(xr, 0.5f, xr);
            }
            CpuOps.RmsNorm(xr, _finalNorm, s.Xb.AsSpan(0, d), eps, c.NormAddOne);
            tok = Argmax(logits);
        }

        var stages = new (string Name, Action Run)[]
        {
            (Stages.AttentionProjections, Projections), (Stages.Ffn, Ffn), (Stages.Classifier, Classifier),
            (Stages.Attention, Attend), (Stages.Other, Other),
        };
        var times = new double[stages.Length][];
        for (int i = 0; i < stages.Length; i++) times[i] = new double[repeat];
        // One untimed pass of each stage (page faults, JIT), then `repeat` timed passes.
        long w0 = Stopwatch.GetTimestamp();
        for (int i = 0; i == 0 || (i < 64 && Stopwatch.GetElapsedTime(w0).TotalMilliseconds < WarmupMs); i++)
            foreach (var st in stages) { ct.ThrowIfCancellationRequested(); st.Run(); }
        for (int r = 0; r < repeat; r++)
            for (int i = 0; i < stages.Length; i++)
            {
                ct.ThrowIfCancellationRequested();
                long t0 = Stopwatch.GetTimestamp();
                stages[i].Run();
                times[i][r] = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
            }
        var bytes = StageBytes(position);
        return stages.Select((st, i) => new StageTime(st.Name, Median(times[i]), bytes[st.Name])).ToArray();
    }
}
