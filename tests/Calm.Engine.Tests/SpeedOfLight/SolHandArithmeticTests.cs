using Calm.Engine.SpeedOfLight;
using Calm.Engine.Synthetic;

namespace Calm.Engine.Tests.SpeedOfLight;

/// <summary>The byte model against hand arithmetic for more real shapes (Llama-3-8B is in SolModelTests).</summary>
public class SolHandArithmeticTests
{
    [Fact]
    public void Llama2_7B_UntiedMhaBf16()
    {
        var c = Presets.Get("Llama-2-7B");
        // Per layer: q,k,v,o 4 x 4096x4096 (32 kv heads = MHA), gate/up/down 3 x 11008x4096, 2 norms.
        long layer = 4L * 4096 * 4096 + 3L * 11008 * 4096 + 2 * 4096;
        long weights = (32 * layer + 4096 /* final norm */ + 4096 /* one embedding row */ + 32000L * 4096 /* lm_head */) * 2;
        var p = SolModel.Compute("Llama-2-7B", c, "bf16", "bf16", 2048, 3350);
        Assert.Equal(weights, p.WeightBytes);
        // 32 layers x 2 x 32 heads x 128 x 2 bytes = 524288 bytes per cached position.
        Assert.Equal(524288, p.KvBytesPerToken);
        Assert.Equal(weights + 524288L * 2048, p.BytesPerToken);
        Assert.Equal(3350e9 / (weights + 524288.0 * 2048), p.SolTokensPerSecond, 6);
        Assert.Equal(1e3 / p.SolTokensPerSecond, p.SolMsPerToken, 9);
    }

    [Fact]
    public void Qwen25_7B_WithQkvBiasAndFourKvHeads()
    {
        var c = Presets.Get("Qwen2.5-7B");
        // q 3584x3584, k,v 512x3584 (4 kv heads x 128), o 3584x3584, biases 3584 + 2 x 512, FFN 3 x 18944x3584, 2 norms.
        long layer = 2L * 3584 * 3584 + 2L * 512 * 3584 + (3584 + 2 * 512) + 3L * 18944 * 3584 + 2 * 3584;
        long weights = (28 * layer + 3584 + 3584 + 152064L * 3584) * 2;
        var p = SolModel.Compute("q", c, "bf16", "bf16", 0, 1000);
        Assert.Equal(weights, p.WeightBytes);
        Assert.Equal(28L * 2 * 4 * 128 * 2, p.KvBytesPerToken); // 57344
    }

    [Fact]
    public void Llama32_1B_TiedClassifierIsTheEmbeddingTable()
    {
        var c = Presets.Get("Llama-3.2-1B");
        long layer = 2048L * 2048 * 2 + 2L * 512 * 2048 + 3L * 8192 * 2048 + 2 * 2048;
        long weights = (16 * layer + 2048 + 2048 + 128256L * 2048) * 2;
        var p = SolModel.Compute("m", c, "bf16", "bf16", 0, 1000);
        Assert.Equal(weights, p.WeightBytes);
        // The table is stored once: parameters count it once, the token reads it once (as the classifier).
        Assert.Equal(c.ParameterCount * 2 + 2048 * 2 /* the looked-up row */, p.WeightBytes);
    }

    [Fact]
    public void MistralSlidingWindowCapsTheKvRead()
    {
        var c = Presets.Get("Mistral-7B");
        var p4 = SolModel.Compute("m", c, "bf16", "bf16", 4096, 1000);
        var p16 = SolModel.Compute("m", c, "bf16", "bf16", 16384, 1000);
        Assert.Equal(32L * 2 * 8 * 128 * 2, p4.KvBytesPerToken);
        Assert.Equal(p4.BytesPerToken, p16.BytesPerToken);
        Assert.Equal(p4.WeightBytes + p4.KvBytesPerToken * 4096, p16.BytesPerToken);
    }

    [Fact]
    public void Int4AndFp8ScaleTheMatrices()
    {
        var c = Presets.Get("Llama-3-8B");
        var bf = SolModel.Compute("m", c, "bf16", "bf16", 0, 1000);
        var f8 = SolModel.Compute("m", c, "fp8", "fp8", 0, 1000);
        var e = SolModel.ElementsPerToken(c);
        long matrices = e.AttentionProjections + e.Ffn + e.Classifier;
        // fp8: matrices at 1 byte, norms and the embedding row stay 2 bytes.
        Assert.Equal(matrices * 1 + (e.Norms + e.Embedding) * 2, f8.WeightBytes);
        var q4 = SolModel.Compute("m", c, "int4", "bf16", 0, 1000);
        Assert.Equal((long)Math.Round(matrices * (0.5 + 2.0 / 32) + (e.Norms + e.Embedding) * 2), q4.WeightBytes);
        Assert.True(bf.SolTokensPerSecond < f8.SolTokensPerSecond && f8.SolTokensPerSecond < q4.SolTokensPerSecond);
    }

    [Fact]
    public void DeviceRatioAndIntensity()
    {
        var c = Presets.Get("Llama-3-8B");
        var p = SolModel.Compute("m", c, "bf16", "bf16", 1024, 4800, tflops: 989.4);
        Assert.Equal(989.4e12 / 4800e9, p.DeviceFlopsPerByte!.Value, 6);
        Assert.Equal(p.FlopsPerToken / p.BytesPerToken, p.ArithmeticIntensity, 9);
        // Decode of one token is about 1 FLOP/byte against a ratio of ~200: memory-bound.
        Assert.InRange(p.ArithmeticIntensity, 0.5, 2.0);
        Assert.Equal("Memory", p.BoundBy);
    }
}
