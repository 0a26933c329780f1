using Calm.Engine.Model;
using Calm.Engine.Synthetic;

namespace Calm.Engine.Tests.Synthetic;

public class PresetTests
{
    public static TheoryData<string> PresetNames()
    {
        var d = new TheoryData<string>();
        foreach (var n in Presets.Names) d.Add(n);
        return d;
    }

    [Theory]
    [MemberData(nameof(PresetNames))]
    public void ParameterCountMatchesThePublishedModel(string name)
    {
        var p = Presets.Find(name);
        p.Config.Validate(name);
        double billions = p.Config.ParameterCount / 1e9;
        // Published counts are given to 3 significant figures.
        Assert.InRange(billions, p.PublishedBillions * 0.99, p.PublishedBillions * 1.01);
    }

    [Theory]
    [MemberData(nameof(PresetNames))]
    public void LayoutHoldsExactlyTheConfigsParameters(string name)
    {
        var c = Presets.Get(name);
        long layout = SyntheticWeights.Layout(c).Sum(s => s.Shape.Aggregate(1L, (a, b) => a * b));
        Assert.Equal(c.ParameterCount, layout);
    }

    [Fact]
    public void Llama3_8BShapesAreThePublishedOnes()
    {
        var c = Presets.Get("llama-3-8b");
        Assert.Equal((128256, 4096, 14336, 32, 32, 8, 128), (c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumLayers, c.NumHeads, c.NumKvHeads, c.HeadDim));
        Assert.Equal(8_030_261_248L, c.ParameterCount);
    }

    [Fact]
    public void UnknownPresetNamesThePresets()
    {
        var ex = Assert.Throws<CalmException>(() => Presets.Find("Llama-9-400B"));
        Assert.Equal(ErrorIds.PresetUnknown, ex.ErrorId);
        Assert.Contains("Llama-3-8B", ex.Message);
    }
}

public class SyntheticWeightTests
{
    [Fact]
    public void SplitMix64MatchesItsPublishedFirstOutputs()
    {
        // SplitMix64 seeded with 0 (state += golden gamma before mixing): published first outputs.
        ulong state = 0;
        ulong Next() { var r = SyntheticWeights.SplitMix64(state); state += 0x9E3779B97F4A7C15UL; return r; }
        Assert.Equal(0xE220A8397B1DCDAFUL, Next());
        Assert.Equal(0x6E789E6AA1B965F4UL, Next());
        Assert.Equal(0x06C45D188009454FUL, Next());
    }

    [Fact]
    public void Bf16RoundingIsNearestEven()
    {
        var rng = new Random(Environment.TickCount);
        for (int i = 0; i < 100_000; i++)
        {
            float f = (float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-30, 30)));
            ushort b = SyntheticWeights.ToBf16(f);
            float back = BitConverter.Int32BitsToSingle(b << 16);
            // Neighbouring bf16 values must not be closer.
            float up = BitConverter.Int32BitsToSingle((b + 1) << 16), down = BitConverter.Int32BitsToSingle((b - 1) << 16);
            Assert.True(Math.Abs(back - f) <= Math.Abs(up - f) && Math.Abs(back - f) <= Math.Abs(down - f), $"{f} -> {back}");
        }
        Assert.Equal(0x3F80, SyntheticWeights.ToBf16(1.0f));
        Assert.Equal(0x3F80, SyntheticWeights.ToBf16(BitConverter.Int32BitsToSingle(0x3F808000))); // tie -> even
        Assert.Equal(0x3F82, SyntheticWeights.ToBf16(BitConverter.Int32BitsToSingle(0x3F818000))); // tie -> even (up)
    }

    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    [InlineData(DType.F32)]
    public void SameSeedSameWeightsOtherSeedOtherWeights(DType dtype)
    {
        var c = Presets.Get("tiny") with { DType = dtype };
        var (w1, s1) = SyntheticWeights.Build(c, 7, null, default);
        var (w2, s2) = SyntheticWeights.Build(c, 7, null, default);
        var (w3, s3) = SyntheticWeights.Build(c, 8, null, default);
        using (s1) using (s2) using (s3)
        {
            var a = w1.Layers[2].Wq; var b = w2.Layers[2].Wq; var d = w3.Layers[2].Wq;
            Assert.True(a.RowBytes(5).SequenceEqual(b.RowBytes(5)));
            Assert.False(a.RowBytes(5).SequenceEqual(d.RowBytes(5)));
            // Values are the documented function of (seed, name, index).
            ulong key = SyntheticWeights.Key(7, SyntheticWeights.Fnv1a64(a.Name));
            float scale = MathF.Sqrt(3f / c.HiddenSize);
            for (long i = 0; i < 1000; i += 37)
            {
                float expect = SyntheticWeights.Value(key, i, scale, 0f);
                float tol = dtype switch { DType.F32 => 0f, DType.F16 => 1e-3f * scale, _ => 8e-3f * scale };
                Assert.InRange(a.GetFloat(i), expect - tol, expect + tol);
            }
            // Projections have the variance of 1/fan_in; norms sit near 1.
            var row = Enumerable.Range(0, (int)a.ElementCount).Select(i => (double)a.GetFloat(i)).ToArray();
            double var = row.Select(x => x * x).Average();
            Assert.InRange(var, 0.9 / c.HiddenSize, 1.1 / c.HiddenSize);
            Assert.InRange(w1.Layers[0].AttnNorm.GetFloat(3), 0.9f, 1.1f);
        }
    }

    [Fact]
    public void TiedPresetsShareEmbeddingAndClassifier()
    {
        var c = Presets.Get("Llama-3.2-1B") with { NumLayers = 1, VocabSize = 1000 };
        var (w, s) = SyntheticWeights.Build(c, 1, null, default);
        using (s) Assert.Same(w.Embedding, w.LmHead);
    }
}
