using Calm.Engine.SpeedOfLight;
using Calm.Engine.Synthetic;

namespace Calm.Engine.Tests.SpeedOfLight;

public class SolModelTests
{
    [Fact]
    public void Llama3_8B_Bf16ByHand()
    {
        var c = Presets.Get("Llama-3-8B");
        var p = SolModel.Compute("Llama-3-8B", c, "bf16", "f16", 0, 4189);
        // Per layer: q 4096x4096, k,v 1024x4096 each, o 4096x4096, gate/up/down 3 x 14336x4096, two norms of 4096.
        long layer = 4096L * 4096 * 2 + 1024L * 4096 * 2 + 3L * 14336 * 4096 + 2 * 4096;
        // + one embedding row + final norm + classifier 128256 x 4096, all bf16.
        long weights = (32 * layer + 4096 + 4096 + 128256L * 4096) * 2;
        Assert.Equal(weights, p.WeightBytes);
        Assert.Equal(weights, p.BytesPerToken);
        Assert.Equal(4189e9 / weights, p.SolTokensPerSecond, 6);
        Assert.Equal("Memory", p.BoundBy);
    }

    [Fact]
    public void Llama3_8B_KvBytesPerPosition()
    {
        var c = Presets.Get("Llama-3-8B");
        // 32 layers x 2 (K and V) x 8 kv heads x 128 dims x 2 bytes (fp16) = 131072 bytes per position.
        var p0 = SolModel.Compute("m", c, "bf16", "f16", 0, 1000);
        var p = SolModel.Compute("m", c, "bf16", "f16", 4096, 1000);
        Assert.Equal(131072, p.KvBytesPerToken);
        Assert.Equal(p0.BytesPerToken + 131072L * 4096, p.BytesPerToken);
        var p8 = SolModel.Compute("m", c, "bf16", "fp8", 4096, 1000);
        // fp8: 1 byte per value + one f32 scale per (layer, K|V, kv head) row: 65536 + 32 x 2 x 8 x 4
        Assert.Equal(65536 + 2048, p8.KvBytesPerToken);
    }

    [Fact]
    public void MixtralReadsOnlyActiveExperts()
    {
        var c = Presets.Get("Mixtral-8x7B");
        var p = SolModel.Compute("m", c, "bf16", "f16", 0, 1000);
        long ffnActive = 32L * 2 * 3 * 14336 * 4096;
        long ffnAll = 32L * 8 * 3 * 14336 * 4096;
        Assert.True(p.WeightBytes < c.ParameterCount * 2 - (ffnAll - ffnActive) * 2 + 1_000_000);
        Assert.True(p.WeightBytes > ffnActive * 2);
        // Active params of Mixtral 8x7B are about 12.9B.
        Assert.InRange(p.WeightBytes / 2 / 1e9, 12.7, 13.1);
    }

    [Fact]
    public void FlopsAreTwoPerWeightPlusAttention()
    {
        var c = Presets.Get("Llama-3-8B");
        double f0 = SolModel.FlopsPerToken(c, 0), f1 = SolModel.FlopsPerToken(c, 1000);
        Assert.Equal(4.0 * 32 * 128 * 1000 * 32, f1 - f0, 1);
        long matmul = c.ParameterCount - 128256L * 4096 /* embedding table is a lookup */ - (2L * 4096 * 32 + 4096) /* norms */;
        Assert.Equal(2.0 * matmul, f0, 1);
    }

    [Fact]
    public void ComputeBoundWhenTheRateIsTiny()
    {
        var p = SolModel.Compute("m", Presets.Get("tiny"), "f32", "f32", 10, 1000, tflops: 1e-6);
        Assert.Equal("Compute", p.BoundBy);
        Assert.Equal(p.ComputeBoundMs!.Value, p.SolMsPerToken, 9);
    }

    [Fact]
    public void BadInputsAreCalmErrors()
    {
        var c = Presets.Get("tiny");
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => SolModel.Compute("m", c, "bf17", "f16", 0, 1)).ErrorId);
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => SolModel.Compute("m", c, "bf16", "f16", -1, 1)).ErrorId);
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => SolModel.Compute("m", c, "bf16", "f16", 0, 0)).ErrorId);
    }
}
