using Calm.Engine.Generation;

namespace Calm.Engine.Tests.Generation;

public class GeneratorTests(TinyWpFixture fx) : IClassFixture<TinyWpFixture>
{
    const string Prompt = "\"Well, Prince,\" said Anna Pavlovna,";

    [Fact]
    public void StreamingTextEqualsResultText()
    {
        foreach (var stop in new[] { Array.Empty<string>(), new[] { "time to be a good-natured" } })
        {
            var parts = new List<GeneratedToken>();
            var o = new GenerateOptions { MaxTokens = 40, Sampling = new SamplingOptions { Temperature = 0.8, Seed = 42 }, Stop = stop };
            var r = Generator.Generate(fx.Model, Prompt, o, parts.Add);
            Assert.Equal(r.Text, string.Concat(parts.Select(p => p.Text)));
            Assert.DoesNotContain('\uFFFD', r.Text);
            var again = Generator.Generate(fx.Model, Prompt, o);
            Assert.Equal(r.Ids, again.Ids);
            Assert.Equal(r.Text, again.Text);
        }
    }

    [Fact]
    public void SeedReproducesAndDiffers()
    {
        GenerationResult Run(ulong seed) => Generator.Generate(fx.Model, Prompt,
            new GenerateOptions { MaxTokens = 24, Sampling = new SamplingOptions { Temperature = 1.0, TopP = 0.95, Seed = seed } });
        var a = Run(1); var b = Run(1); var c = Run(2);
        Assert.Equal(a.Ids, b.Ids);
        Assert.Equal(1UL, a.Seed);
        Assert.NotEqual(a.Ids, c.Ids);
    }

    [Fact]
    public void StopStringEndsAndIsNotInText()
    {
        // Greedy continuation (training.json): ' "I am very glad to have a good\nman to have a good time ...'
        var r = Generator.Generate(fx.Model, Prompt, new GenerateOptions { MaxTokens = 48, Stop = new[] { "good\n" } });
        Assert.Equal(StopReason.StopString, r.StopReason);
        Assert.Equal(" \"I am very glad to have a ", r.Text);
        Assert.True(r.Ids.Length < 48);
    }

    [Fact]
    public void EosEndsWithoutTheEosToken()
    {
        var greedy = Generator.Generate(fx.Model, Prompt, new GenerateOptions { MaxTokens = 5 });
        // Make the 4th greedy token an "EOS": generation ends before it.
        var r = Generator.Generate(fx.Model, Prompt, new GenerateOptions { MaxTokens = 48, EosIds = new[] { greedy.Ids[3] } });
        Assert.Equal(StopReason.Eos, r.StopReason);
        Assert.Equal(greedy.Ids[..3], r.Ids);
    }

    [Fact]
    public void ContextFullAndOverflow()
    {
        using var small = TinyWp.Load(context: 12);
        var r = Generator.Generate(small, Prompt, new GenerateOptions { MaxTokens = 48 });   // 9 prompt tokens
        Assert.Equal(StopReason.ContextFull, r.StopReason);
        Assert.Equal(12 - 9 + 1, r.Ids.Length);   // the last one is sampled from position 11's logits
        var e = Assert.Throws<CalmException>(() => Generator.Generate(small, Prompt + " and he said something much longer than that", new GenerateOptions()));
        Assert.Equal(ErrorIds.ContextOverflow, e.ErrorId);
        Assert.Contains("12 positions", e.Message);
    }

    [Fact]
    public void CancelStopsWithinOneStepAndModelStaysUsable()
    {
        using var cts = new CancellationTokenSource();
        int seen = 0;
        var r = Generator.Generate(fx.Model, Prompt, new GenerateOptions { MaxTokens = 48 }, t => { if (++seen == 3) cts.Cancel(); }, cts.Token);
        Assert.Equal(StopReason.Cancelled, r.StopReason);
        Assert.Equal(3, r.Ids.Length);
        var g = TinyWp.Training().GetProperty("greedy").GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).Take(8).ToArray();
        Assert.Equal(g, Generator.Generate(fx.Model, Prompt, new GenerateOptions { MaxTokens = 8 }).Ids);
    }

    [Fact]
    public void BadInput()
    {
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => Generator.Generate(fx.Model, "", new GenerateOptions())).ErrorId);
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => Generator.Generate(fx.Model, Array.Empty<int>(), new GenerateOptions())).ErrorId);
        Assert.Equal("MaxTokens", Assert.Throws<CalmException>(() => Generator.Generate(fx.Model, Prompt, new GenerateOptions { MaxTokens = 0 })).Target);
        Assert.Equal("Temperature", Assert.Throws<CalmException>(() => Generator.Generate(fx.Model, Prompt, new GenerateOptions { Sampling = new() { Temperature = -1 } })).Target);
        Assert.Equal(ErrorIds.TokenOutOfRange, Assert.Throws<CalmException>(() => Generator.Generate(fx.Model, new[] { 0, 99999 }, new GenerateOptions())).ErrorId);
    }

    [Fact]
    public void LogProbsAreOfTheRawDistribution()
    {
        var r = Generator.Generate(fx.Model, Prompt, new GenerateOptions { MaxTokens = 4, LogProbs = true, TopLogProbs = 3 });
        Assert.All(r.Tokens, t =>
        {
            Assert.NotNull(t.LogProb);
            Assert.Equal(3, t.TopLogProbs!.Count);
            // greedy: the chosen token is the top alternative, with the same log-probability
            Assert.Equal(t.TokenId, t.TopLogProbs[0].Id);
            Assert.Equal(t.LogProb!.Value, t.TopLogProbs[0].LogProb, 9);
            Assert.True(t.TopLogProbs[0].LogProb >= t.TopLogProbs[1].LogProb && t.TopLogProbs[1].LogProb >= t.TopLogProbs[2].LogProb);
            Assert.True(t.LogProb < 0);
        });
        // Cross-check one log-probability against a plain forward pass.
        var logits = new float[fx.Model.Config.VocabSize];
        using (fx.Model.Acquire(default)) fx.Model.Backend.Forward(r.PromptIds, 0, logits, false);
        double lse = Math.Log(logits.Sum(x => Math.Exp(x)));
        Assert.Equal(logits[r.Ids[0]] - lse, r.Tokens[0].LogProb!.Value, 5);
    }

    [Fact]
    public void TimingsAreSeparate()
    {
        var r = Generator.Generate(fx.Model, Prompt, new GenerateOptions { MaxTokens = 10 });
        Assert.True(r.TimeToFirstTokenMs > 0);
        Assert.True(r.PrefillTokensPerSecond > 0);
        Assert.NotNull(r.DecodeTokensPerSecond);
        Assert.True(r.TotalMs >= r.TimeToFirstTokenMs);
    }

    [Fact]
    public void PerplexityPerTokenSumsToTotal()
    {
        var tok = fx.Model.Text!.Tokenizer!;
        var ids = tok.Encode("Prince Andrew looked at the sky above him, the lofty sky, and thought of nothing at all.");
        var r = Perplexity.Measure(fx.Model, ids, window: 8, stride: 3, perToken: true);
        Assert.Equal(ids.Length - 1, r.Tokens);
        Assert.Equal(Enumerable.Range(1, ids.Length - 1), r.PerToken!.Select(t => t.Index));
        Assert.Equal(r.NegativeLogLikelihood, -r.PerToken!.Sum(t => t.LogProb), 9);
        Assert.All(r.PerToken!, t => Assert.InRange(t.Rank, 1, fx.Model.Config.VocabSize));
        // One window covering everything: each target sees all earlier tokens; token 1 scores the same both ways.
        var whole = Perplexity.Measure(fx.Model, ids, window: ids.Length, perToken: true);
        Assert.Equal(whole.PerToken![0].LogProb, r.PerToken![0].LogProb, 4);
        Assert.NotEqual(whole.NegativeLogLikelihood, r.NegativeLogLikelihood);
    }
}

public class SyntheticGenerationTests
{
    [Fact]
    public void SyntheticModelGeneratesIdsButNeedsATokenizerForText()
    {
        using var m = ModelFactory.CreateSynthetic("tiny", 1, Model.DType.F32, new ImportOptions { Device = DeviceChoice.Cpu });
        var r = Generator.Generate(m, new[] { 1, 2, 3 }, new GenerateOptions { MaxTokens = 5, EosIds = Array.Empty<int>() });
        Assert.Equal(5, r.Ids.Length);
        Assert.Null(r.Text);
        var e = Assert.Throws<CalmException>(() => Generator.Generate(m, "hello", new GenerateOptions()));
        Assert.Equal(ErrorIds.TokenizerMissing, e.ErrorId);
    }
}
