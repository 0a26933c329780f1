using Calm.Engine.Model;
using Calm.Engine.Session;

namespace Calm.Engine.Cuda;

/// <summary>
/// <see cref="IBenchmarkBackend"/> on the GPU: every figure is device time between CUDA events. Decode steps are the
/// same captured graph generation uses; per-stage times replay graphs captured from the same step with only one
/// stage's kernels in them (the stage's real kernels, launch gaps included, on the real buffers).
/// </summary>
public sealed unsafe partial class CudaBackend
{
    private Dictionary<string, CudaGraph>? _stageGraphs;

    private void DisposeBench()
    {
        if (_stageGraphs is null) return;
        foreach (var g in _stageGraphs.Values) g.Dispose();
        _stageGraphs = null;
    }

    private CalmException Overflow(long last) => new(ErrorIds.ContextOverflow, CalmErrorKind.LimitExceeded,
        $"The benchmark needs position {last} but the KV cache holds {MaxContext} positions. Import with a larger -ContextLength.", "ContextLength");

    /// <summary>Fills the whole fp16 KV cache (so positions [0, positions) too) with values in (-1, 1) from the
    /// synthetic hash of <paramref name="seed"/>: attention at a deep position then reads real, non-zero data.</summary>
    public void FillKvCacheForBenchmark(int positions, int seed)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (positions < 0 || positions > MaxContext) throw Overflow(positions);
        _ctx.MakeCurrent();
        ulong key = Synthetic.SyntheticWeights.Key(seed, Synthetic.SyntheticWeights.Fnv1a64("kv-cache"));
        if (_kvFp8)
        {
            // e4m3 values over the whole range with row scales 1/448: the cache reads values in (-1, 1) as the f16 fill
            _k!.FillKvFp8(_stream!, _kCache, 2 * KvRows * Config.HeadDim, key);
            _k.FillSynthetic(_stream!, _kScale, 2 * KvRows, key, 0f, 1f / 448f, DType.F32, asF32: false);
        }
        else
        {
            long halves = 2 * KvRows * Config.HeadDim;
            _k!.FillSynthetic(_stream!, _kCache, halves, key, 1f, 0f, DType.F16, asF32: false);
        }
        _stream!.Synchronize();
    }

    /// <summary>Pinned StepParams for n steps (token, position) with no ring reuse, so nothing waits between steps.</summary>
    private CudaPinnedMemory StepTable(int n, int startPos, int seed)
    {
        var mem = new CudaPinnedMemory(_ctx, Math.Max(n, 1) * 8L);
        var r = new Random(seed);
        var p = (StepParamsHost*)mem.Ptr;
        for (int i = 0; i < n; i++) { p[i].Token = r.Next(Config.VocabSize); p[i].Pos = startPos + i; }
        return mem;
    }

    public double[] TimeDecodeSteps(int startPos, int steps, int warmup, CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (steps < 1 || warmup < 0) throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Steps must be ≥ 1 and warm-up ≥ 0 (got {steps}, {warmup}).", "Tokens");
        if (startPos < 0 || (long)startPos + steps > MaxContext) throw Overflow((long)startPos + steps - 1);
        _ctx.MakeCurrent();
        var s = _stream!;
        using var table = StepTable(steps, startPos, startPos * 31 + steps);
        using var warm = StepTable(Math.Max(warmup, 1), startPos, 7);
        for (int i = 0; i < warmup; i++) ((StepParamsHost*)warm.Ptr)[i].Pos = startPos;   // warm-up stays at startPos
        var ev = new CudaEvent[steps + 1];
        try
        {
            for (int i = 0; i <= steps; i++) ev[i] = new CudaEvent(_ctx);
            for (int i = 0; i < warmup; i++)
            {
                ct.ThrowIfCancellationRequested();
                s.CopyToDeviceAsync(_stepMem!, warm.Ptr + i * 8, 8);
                LaunchStep(s);
            }
            ev[0].Record(s);
            for (int i = 0; i < steps; i++)
            {
                if ((i & 63) == 0 && ct.IsCancellationRequested) { s.Synchronize(); ct.ThrowIfCancellationRequested(); }
                s.CopyToDeviceAsync(_stepMem!, table.Ptr + i * 8, 8);
                LaunchStep(s);
                ev[i + 1].Record(s);
            }
            ev[steps].Synchronize();
            var ms = new double[steps];
            for (int i = 0; i < steps; i++) ms[i] = ev[i + 1].ElapsedSince(ev[i]);
            return ms;
        }
        finally
        {
            foreach (var e in ev) e?.Dispose();
            _ring = 0;
        }
    }

    public double TimePrefill(int tokens, int repeat, CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (tokens < 1 || repeat < 1) throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Prefill needs ≥ 1 token and ≥ 1 repeat (got {tokens}, {repeat}).", "PromptTokens");
        if (tokens > MaxContext) throw Overflow(tokens - 1);
        _ctx.MakeCurrent();
        if (UsesBatchedPrefill(tokens))   // the batched path (CudaBackend.Prefill.cs): median of the repeats
        {
            var bm = new double[repeat];
            for (int r = 0; r < repeat; r++) { ct.ThrowIfCancellationRequested(); bm[r] = TimeBatchedPrefill(tokens, ct); }
            _ring = 0;
            return Median(bm);
        }
        var s = _stream!;
        using var table = StepTable(tokens, 0, tokens);
        using var a = new CudaEvent(_ctx);
        using var b = new CudaEvent(_ctx);
        var ms = new double[repeat];
        for (int r = 0; r < repeat; r++)
        {
            ct.ThrowIfCancellationRequested();
            a.Record(s);
            for (int i = 0; i < tokens; i++)
            {
                s.CopyToDeviceAsync(_stepMem!, table.Ptr + i * 8, 8);
                LaunchStep(s);
            }
            b.Record(s);
            b.Synchronize();
            ms[r] = b.ElapsedSince(a);
        }
        _ring = 0;
        return Median(ms);
    }

    public IReadOnlyList<StageTime> ProfileDecodeStages(int position, int repeat, CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (repeat < 1) throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"Repeat must be ≥ 1 (got {repeat}).", "Repeat");
        if (position < 0 || position >= MaxContext) throw Overflow(position);
        _ctx.MakeCurrent();
        var s = _stream!;
        if (_stageGraphs is null && !PersistentEnabled)
        {
            var graphs = new Dictionary<string, CudaGraph>();
            try
            {
                foreach (var stage in Stages.All)
                {
                    s.BeginCapture();
                    try { EnqueueStep(s, stage); }
                    catch
                    {
                        try { s.EndCapture().Dispose(); } catch (CalmException) { }
                        throw;
                    }
                    graphs[stage] = s.EndCapture();
                }
            }
            catch
            {
                foreach (var g in graphs.Values) g.Dispose();
                throw;
            }
            _stageGraphs = graphs;
        }
        using var table = StepTable(1, position, position);
        if (PersistentEnabled)
        {
            // the persistent kernel times its own stages (barrier to barrier, block 0's view): median of repeat steps
            var bytesP = StageBytes(position);
            var per = Stages.All.ToDictionary(x => x, _ => new double[repeat]);
            s.CopyToDeviceAsync(_stepMem!, table.Ptr, 8);
            LaunchStep(s);   // warm
            for (int r = 0; r < repeat; r++)
            {
                ct.ThrowIfCancellationRequested();
                LaunchStep(s);
                s.Synchronize();
                foreach (var (stage, ms) in PersistentStageMs()) per[stage][r] = ms;
            }
            _ring = 0;
            return Stages.All.Select(x => new StageTime(x, Median(per[x]), bytesP[x])).ToList();
        }
        s.CopyToDeviceAsync(_stepMem!, table.Ptr, 8);
        LaunchStep(s);    // one full step first: the buffers hold this position's real activations
        using var a = new CudaEvent(_ctx);
        using var b = new CudaEvent(_ctx);
        var bytes = StageBytes(position);
        var result = new List<StageTime>();
        foreach (var stage in Stages.All)
        {
            var ms = new double[repeat];
            _stageGraphs[stage].Launch(s);   // warm
            for (int r = 0; r < repeat; r++)
            {
                ct.ThrowIfCancellationRequested();
                a.Record(s);
                _stageGraphs[stage].Launch(s);
                b.Record(s);
                b.Synchronize();
                ms[r] = b.ElapsedSince(a);
            }
            result.Add(new StageTime(stage, Median(ms), bytes[stage]));
        }
        s.Synchronize();
        _ring = 0;
        return result;
    }

    /// <summary>Bytes each stage must read from device memory at <paramref name="position"/> (weights once, KV up to
    /// the position, activations ignored except where they are the whole stage).</summary>
    internal Dictionary<string, long> StageBytes(int position)
    {
        var c = Config;
        // bytes per weight (int4: values + one fp16 scale per 32; fp8: the 4-byte row scales are < 0.1%, left out)
        static double Bpw(DType t) => t == DType.Int4 ? 0.5 + 2.0 / Quant.QuantFormats.Int4GroupSize : DTypes.SizeOf(t);
        double ws = Bpw(_wt);
        long D = c.HiddenSize, Fi = c.IntermediateSize;
        long proj = (long)(c.NumLayers * ((c.QDim + 2L * c.KvDim) * D + D * (long)c.QDim) * ws);
        long ffn = c.IsMoE
            ? (long)(c.NumLayers * ((long)c.NumExperts * D * Bpw(_routerDt) + c.NumExpertsPerToken * 3L * Fi * D * ws))
            : (long)(c.NumLayers * 3L * Fi * D * ws);
        long cls = (long)((long)c.VocabSize * D * Bpw(_lmDt));
        int window = c.SlidingWindow ?? 0;
        long seen = window > 0 ? Math.Min(position + 1, window) : position + 1;
        long att = c.NumLayers * 2L * c.NumKvHeads * (c.HeadDim * KvElemBytes + (_kvFp8 ? 4 : 0)) * seen;   // fp8: + row scales
        long other = D * DTypes.SizeOf(_embDt) + (2L * c.NumLayers + 1) * D * 4 + c.VocabSize * 4L;
        return new Dictionary<string, long>
        {
            [Stages.AttentionProjections] = proj, [Stages.Ffn] = ffn, [Stages.Classifier] = cls, [Stages.Attention] = att, [Stages.Other] = other,
        };
    }

    internal static double Median(double[] v)
    {
        var a = (double[])v.Clone();
        Array.Sort(a);
        return a.Length % 2 == 1 ? a[a.Length / 2] : 0.5 * (a[a.Length / 2 - 1] + a[a.Length / 2]);
    }
}
