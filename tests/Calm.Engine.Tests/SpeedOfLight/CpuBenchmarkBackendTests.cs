using Calm.Engine.Cpu;
using Calm.Engine.Model;
using Calm.Engine.Session;
using Calm.Engine.SpeedOfLight;
using Calm.Engine.Tests.Cpu;

namespace Calm.Engine.Tests.SpeedOfLight;

public class CpuBenchmarkBackendTests
{
    private static readonly int Seed = Environment.TickCount;

    [Fact]
    public void FillKvCacheIsDeterministicAndReachesTheDepth()
    {
        var c = TestModels.Config("llama");
        using var m = TestModels.Build(c, new Random(Seed));
        using var be = new CpuBackend(c, m.Weights, 64);
        var a = new float[c.VocabSize]; var b = new float[c.VocabSize]; var d = new float[c.VocabSize];
        be.FillKvCacheForBenchmark(40, 7);
        Assert.Equal(40, be.CachedPositions);
        be.Forward(new[] { 3 }, 40, a, false);
        be.FillKvCacheForBenchmark(40, 7);
        be.Forward(new[] { 3 }, 40, b, false);
        be.FillKvCacheForBenchmark(40, 8);
        be.Forward(new[] { 3 }, 40, d, false);
        Assert.Equal(a, b);                                  // same seed: same cache, same logits
        Assert.NotEqual(a, d);                               // the cache really is read
        Assert.All(a, x => Assert.True(float.IsFinite(x)));
        Assert.Equal(ErrorIds.ContextOverflow, Assert.Throws<CalmException>(() => be.FillKvCacheForBenchmark(65, 1)).ErrorId);
    }

    [Fact]
    public void TimeDecodeStepsTimesEachStep()
    {
        var c = TestModels.Config("qwen3");
        using var m = TestModels.Build(c, new Random(Seed));
        using var be = new CpuBackend(c, m.Weights, 64);
        be.FillKvCacheForBenchmark(20, 1);
        var ms = be.TimeDecodeSteps(20, 5, 2, default);
        Assert.Equal(5, ms.Length);
        Assert.All(ms, x => Assert.True(x > 0));
        Assert.Equal(25, be.CachedPositions);
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => be.TimeDecodeSteps(30, 2, 0, default)).ErrorId);
        be.FillKvCacheForBenchmark(60, 1);
        Assert.Equal(ErrorIds.ContextOverflow, Assert.Throws<CalmException>(() => be.TimeDecodeSteps(60, 5, 0, default)).ErrorId);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => be.TimeDecodeSteps(0, 3, 0, cts.Token));
    }

    [Fact]
    public void TimePrefillFillsTheCache()
    {
        var c = TestModels.Config("mistral");
        using var m = TestModels.Build(c, new Random(Seed));
        using var be = new CpuBackend(c, m.Weights, 64);
        double ms = be.TimePrefill(33, 2, default);
        Assert.True(ms > 0);
        Assert.Equal(33, be.CachedPositions);
        Assert.Equal(ErrorIds.ContextOverflow, Assert.Throws<CalmException>(() => be.TimePrefill(65, 1, default)).ErrorId);
        Assert.True(be.DeviceBytes >= m.Weights.TotalBytes + be.KvCacheBytes);
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("mistral")]
    [InlineData("phi3")]
    [InlineData("mixtral")]
    public void ProfileTimesEveryStageWithItsBytes(string arch)
    {
        var c = TestModels.Config(arch);
        using var m = TestModels.Build(c, new Random(Seed));
        using var be = new CpuBackend(c, m.Weights, 64);
        be.FillKvCacheForBenchmark(50, 3);
        var stages = be.ProfileDecodeStages(50, 3, default);
        Assert.Equal(Stages.All, stages.Select(s => s.Stage));
        Assert.All(stages, s => Assert.True(s.Ms > 0, s.Stage));
        var w = m.Weights;
        long proj = w.Layers.Sum(l => l.Wq.ByteLength + l.Wk.ByteLength + l.Wv.ByteLength + l.Wo.ByteLength
                                      + 4L * ((l.Bq?.ElementCount ?? 0) + (l.Bk?.ElementCount ?? 0) + (l.Bv?.ElementCount ?? 0) + (l.Bo?.ElementCount ?? 0)));
        Assert.Equal(proj, stages[0].Bytes);
        Assert.Equal(w.LmHead.ByteLength, stages[2].Bytes);
        int visible = c.SlidingWindow is int win ? Math.Min(51, win) : 51;
        Assert.Equal(2L * c.NumLayers * visible * c.KvDim * 4, stages[3].Bytes);
        if (c.IsMoE)
        {
            // Router + k of E experts per layer.
            long ffn = w.Layers.Sum(l => l.Router!.ByteLength + c.NumExpertsPerToken * (l.ExpertGate![0].ByteLength + l.ExpertUp![0].ByteLength + l.ExpertDown![0].ByteLength));
            Assert.Equal(ffn, stages[1].Bytes);
        }
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => be.ProfileDecodeStages(51, 1, default)).ErrorId);
    }

    [Fact]
    public void AttentionStageTimeGrowsWithContext()
    {
        // Timed, not apportioned: the attention stage at a deep context reads ~4000x the keys of position 0.
        var c = TestModels.Config("llama");
        using var m = TestModels.Build(c, new Random(Seed));
        using var be = new CpuBackend(c, m.Weights, 4100);
        be.FillKvCacheForBenchmark(4000, 1);
        double shallow = be.ProfileDecodeStages(0, 5, default)[3].Ms;
        be.FillKvCacheForBenchmark(4000, 1);
        double deep = be.ProfileDecodeStages(4000, 5, default)[3].Ms;
        Assert.True(deep > 3 * shallow, $"attention at 4000: {deep} ms, at 0: {shallow} ms");
    }
}
