using System.Globalization;
using System.Text;
using Calm.Engine.Generation;

namespace Calm.Engine.Tests.Generation;

/// <summary>The tiny real model against the figures transformers computed in float64 at training time.</summary>
public class TinyWpGoldenTests(TinyWpFixture fx) : IClassFixture<TinyWpFixture>
{
    [Fact]
    public void ImportAttachesTokenizerAndTemplate()
    {
        Assert.NotNull(fx.Model.Text);
        Assert.NotNull(fx.Model.Text!.Tokenizer);
        Assert.NotNull(fx.Model.Text.Template);
        Assert.Same(fx.Model.Text.Tokenizer, fx.Model.Tokenizer);
        Assert.Contains(1, Generator.DefaultEos(fx.Model));
    }

    [Fact]
    public void PromptIdsEqualTrainingJson()
    {
        var g = TinyWp.Training().GetProperty("greedy");
        var want = g.GetProperty("prompt_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        Assert.Equal(want, fx.Model.Text!.Tokenizer!.Encode(g.GetProperty("prompt").GetString()!));
    }

    [Fact]
    public void GreedyContinuationEqualsTransformersFloat64()
    {
        var g = TinyWp.Training().GetProperty("greedy");
        var want = g.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var r = Generator.Generate(fx.Model, g.GetProperty("prompt").GetString()!, new GenerateOptions { MaxTokens = want.Length });
        Assert.Equal(StopReason.MaxTokens, r.StopReason);
        Assert.Equal(want, r.Ids);
        Assert.Equal(g.GetProperty("text").GetString(), r.Text);
    }

    /// <summary>Bound: 0.5% of the float64 figure (the CPU engine computes in fp32 from the same bf16 weights).</summary>
    [Fact]
    public void HeldOutPerplexityWithinHalfPercentOfTraining()
    {
        var t = TinyWp.Training();
        var p = t.GetProperty("perplexity");
        string path = TinyWp.WarAndPeacePath();
        string text = File.ReadAllText(path, Encoding.UTF8);
        int cut = text.IndexOf(t.GetProperty("holdout_mark").GetString()!, StringComparison.Ordinal);
        string held = text[cut..];
        Assert.Equal(t.GetProperty("holdout_chars").GetInt32(), new StringInfoCount(held).CodePoints);
        var tok = fx.Model.Text!.Tokenizer!;
        var ids = new[] { tok.BosId!.Value }.Concat(tok.Encode(held, addSpecialTokens: false)).ToArray();
        var r = Perplexity.Measure(fx.Model, ids, p.GetProperty("window").GetInt32(), p.GetProperty("stride").GetInt32());
        Assert.Equal(p.GetProperty("tokens").GetInt32(), r.Tokens);
        double want = p.GetProperty("ppl").GetDouble();
        Assert.True(Math.Abs(r.Perplexity - want) / want < 0.005,
            $"perplexity {r.Perplexity.ToString("F4", CultureInfo.InvariantCulture)} vs transformers float64 {want:F4} (bound 0.5%)");
    }

    readonly struct StringInfoCount(string s)
    {
        public int CodePoints { get; } = s.EnumerateRunes().Count();
    }
}
