#pragma warning disable xUnit1051 // the backend's own cancellation is under test; test cancellation is not needed
using Calm.Engine.Cpu;
using Calm.Engine.Model;

namespace Calm.Engine.Tests.Cpu;

/// <summary>End-to-end: the CPU backend on small random models of every architecture against the double-precision reference.</summary>
public class CpuBackendTests
{
    private static readonly int Seed = Environment.TickCount;
    private static Random NewRng(string name, int salt = 0) => new(Seed + name.GetHashCode(StringComparison.Ordinal) % 100000 + salt);

    public static TheoryData<string> Architectures => new(TestModels.Names);

    private static int[] RandomTokens(Random rng, int n, int vocab) => Enumerable.Range(0, n).Select(_ => rng.Next(vocab)).ToArray();

    [Theory, MemberData(nameof(Architectures))]
    public void PrefillLogitsMatchDoublePrecisionReferenceAtEveryPosition(string name)
    {
        var rng = NewRng(name);
        var c = TestModels.Config(name);
        using var m = TestModels.Build(c, rng);
        // 20 tokens: past the sliding window (5), and past phi3's original_max_position_embeddings (16) -> long factors.
        var tokens = RandomTokens(rng, 20, c.VocabSize);
        using var be = new CpuBackend(c, m.Weights, 64);
        var logits = new float[tokens.Length * c.VocabSize];
        be.Forward(tokens, 0, logits, allLogits: true);
        var want = ReferenceForward.Run(c, m.Weights, tokens);
        for (int t = 0; t < tokens.Length; t++)
        {
            var got = logits.AsSpan(t * c.VocabSize, c.VocabSize);
            double err = NaiveOps.RelL2(got, want[t]);
            Assert.True(err <= 1e-4, $"seed {Seed} {name} position {t}: rel L2 {err:E2}");
            // the logits are far from uniform (the test model is not degenerate)
            Assert.True(want[t].Max() - want[t].Min() > 1.0, $"{name}: logits nearly uniform at {t}");
        }
        // last-token mode gives the last row
        var last = new float[c.VocabSize];
        be.Forward(tokens, 0, last, allLogits: false);
        Assert.True(NaiveOps.RelL2(last, logits.AsSpan((tokens.Length - 1) * c.VocabSize)) <= 1e-6);
    }

    [Theory, MemberData(nameof(Architectures))]
    public void TokenByTokenDecodeEqualsOneShotPrefill(string name)
    {
        var rng = NewRng(name, 1);
        var c = TestModels.Config(name);
        using var m = TestModels.Build(c, rng);
        var tokens = RandomTokens(rng, 14, c.VocabSize); // within phi3's original context: same rope factors either way
        int v = c.VocabSize;
        using var be = new CpuBackend(c, m.Weights, 32);
        var all = new float[tokens.Length * v];
        be.Forward(tokens, 0, all, allLogits: true);
        var step = new float[v];
        for (int t = 0; t < tokens.Length; t++)
        {
            be.Forward(tokens.AsSpan(t, 1), t, step, allLogits: false);
            double err = NaiveOps.RelL2(step, all.AsSpan(t * v, v));
            Assert.True(err <= 1e-5, $"seed {Seed} {name} position {t}: decode vs prefill rel L2 {err:E2}");
        }
        Assert.Equal(tokens.Length, be.CachedPositions);
        // Continuing a prefill: 9 tokens then 5 more equals one shot.
        be.Forward(tokens.AsSpan(0, 9), 0, step, allLogits: false);
        var tail = new float[5 * v];
        be.Forward(tokens.AsSpan(9, 5), 9, tail, allLogits: true);
        Assert.True(NaiveOps.RelL2(tail, all.AsSpan(9 * v, 5 * v)) <= 1e-5, $"seed {Seed} {name}: continued prefill");
    }

    [Fact]
    public void PrefillLongerThanOneChunkMatchesReference()
    {
        var rng = NewRng("chunk");
        var c = TestModels.Config("mistral") with { NumLayers = 1 };
        using var m = TestModels.Build(c, rng);
        int n = CpuBackend.PrefillChunk + 37;
        var tokens = RandomTokens(rng, n, c.VocabSize);
        using var be = new CpuBackend(c, m.Weights, n + 3);
        var logits = new float[n * c.VocabSize];
        be.Forward(tokens, 0, logits, allLogits: true);
        var want = ReferenceForward.Run(c, m.Weights, tokens);
        foreach (int t in new[] { 0, 100, CpuBackend.PrefillChunk - 1, CpuBackend.PrefillChunk, n - 1 })
        {
            double err = NaiveOps.RelL2(logits.AsSpan(t * c.VocabSize, c.VocabSize), want[t]);
            Assert.True(err <= 1e-4, $"seed {Seed} position {t}: rel L2 {err:E2}");
        }
    }

    [Fact]
    public void SlidingWindowHidesExactlyThePositionsOutsideTheWindow()
    {
        // One layer, window W = 5: logits at position p depend on tokens in (p - W, p] only.
        var rng = NewRng("window");
        var c = TestModels.Config("mistral") with { NumLayers = 1 };
        using var m = TestModels.Build(c, rng);
        const int W = 5;
        Assert.Equal(W, c.SlidingWindow);
        var a = RandomTokens(rng, 8, c.VocabSize);
        var b = (int[])a.Clone();
        b[0] = (a[0] + 1) % c.VocabSize;
        int v = c.VocabSize;
        using var be = new CpuBackend(c, m.Weights, 16);
        var la = new float[8 * v]; var lb = new float[8 * v];
        be.Forward(a, 0, la, true);
        be.Forward(b, 0, lb, true);
        Assert.NotEqual(la.AsSpan((W - 1) * v, v).ToArray(), lb.AsSpan((W - 1) * v, v).ToArray()); // position 4 still sees 0
        Assert.Equal(la.AsSpan(W * v, v).ToArray(), lb.AsSpan(W * v, v).ToArray());                 // position 5 no longer does
    }

    [Fact]
    public void ContextOverflowIsReportedWithTheLimit()
    {
        var rng = NewRng("overflow");
        var c = TestModels.Config("llama");
        using var m = TestModels.Build(c, rng);
        using var be = new CpuBackend(c, m.Weights, 8);
        var logits = new float[c.VocabSize];
        var ex = Assert.Throws<CalmException>(() => be.Forward(new int[9], 0, logits, false));
        Assert.Equal(ErrorIds.ContextOverflow, ex.ErrorId);
        Assert.Contains("8", ex.Message);
        be.Forward(new int[6], 0, logits, false);
        ex = Assert.Throws<CalmException>(() => be.Forward(new int[3], 6, logits, false));
        Assert.Equal(ErrorIds.ContextOverflow, ex.ErrorId);
        be.Forward(new int[2], 6, logits, false); // exactly full is fine
        Assert.Equal(8, be.CachedPositions);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(97)]
    [InlineData(int.MaxValue)]
    public void BadTokenIdsAreRejected(int bad)
    {
        var rng = NewRng("tokens");
        var c = TestModels.Config("llama"); // vocab 97
        using var m = TestModels.Build(c, rng);
        using var be = new CpuBackend(c, m.Weights, 8);
        var ex = Assert.Throws<CalmException>(() => be.Forward(new[] { 1, bad, 2 }, 0, new float[c.VocabSize], false));
        Assert.Equal(ErrorIds.TokenOutOfRange, ex.ErrorId);
        Assert.Contains(bad.ToString(), ex.Message);
        Assert.Equal(0, be.CachedPositions); // nothing was run
    }

    [Fact]
    public void OtherBadCallsAreClearErrors()
    {
        var rng = NewRng("misc");
        var c = TestModels.Config("qwen2");
        using var m = TestModels.Build(c, rng);
        var be = new CpuBackend(c, m.Weights, 8);
        var logits = new float[c.VocabSize];
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => be.Forward(ReadOnlySpan<int>.Empty, 0, logits, false)).ErrorId);
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => be.Forward(new[] { 1 }, 3, logits, false)).ErrorId); // gap in cache
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => be.Forward(new[] { 1, 2 }, 0, logits, true)).ErrorId); // buffer too small
        using (var cts = new CancellationTokenSource())
        {
            cts.Cancel();
            Assert.ThrowsAny<OperationCanceledException>(() => be.Forward(new[] { 1, 2 }, 0, logits, false, cts.Token));
        }
        be.Dispose();
        be.Dispose(); // twice is fine
        Assert.Equal(ErrorIds.ModelDisposed, Assert.Throws<CalmException>(() => be.Forward(new[] { 1 }, 0, logits, false)).ErrorId);
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => new CpuBackend(c, m.Weights, 0)).ErrorId);
    }
}
