using Calm.Engine.Model;
using Calm.Engine.Quant;
using Calm.Engine.Synthetic;
using Calm.Engine.Weights;

namespace Calm.Engine.Tests.Synthetic;

/// <summary>
/// The plan of a quantized synthetic model made on the GPU (<see cref="SyntheticWeights.DeviceOnly(ModelConfig, DType)"/>),
/// checked without a GPU: the same tensors, dtypes, shapes and byte counts as the host-quantized model
/// (<see cref="Quantizer.QuantizeModel"/> of <see cref="SyntheticWeights.Build"/>), and no host memory.
/// </summary>
public class DeviceOnlyQuantTests
{
    private static ModelConfig Source(string name) => name switch
    {
        "tiny" => Presets.Get("tiny") with { DType = SyntheticWeights.QuantizedSourceDType },
        "tiny-tied-bias" => Presets.Get("tiny") with { DType = SyntheticWeights.QuantizedSourceDType, TieWordEmbeddings = true, QkvBias = true, NumLayers = 2 },
        "tiny-odd" => Presets.Get("tiny") with { DType = SyntheticWeights.QuantizedSourceDType, IntermediateSize = 700, NumLayers = 2 },
        "tiny-moe" => Presets.Get("tiny") with
        {
            DType = SyntheticWeights.QuantizedSourceDType, Architecture = Architecture.Mixtral, ModelType = "mixtral",
            NumExperts = 4, NumExpertsPerToken = 2, IntermediateSize = 336, NumLayers = 2,
        },
        _ => throw new ArgumentException(name),
    };

    [Theory]
    [InlineData("tiny", DType.F8E4M3)]
    [InlineData("tiny", DType.Int4)]
    [InlineData("tiny-tied-bias", DType.F8E4M3)]
    [InlineData("tiny-tied-bias", DType.Int4)]
    [InlineData("tiny-odd", DType.Int4)]
    [InlineData("tiny-moe", DType.F8E4M3)]
    [InlineData("tiny-moe", DType.Int4)]
    public void DeviceOnlyQuantizedPlanMatchesHostQuantizedModel(string name, DType dt)
    {
        var config = Source(name);
        var (bw, bstore) = SyntheticWeights.Build(config, 3, null, default);
        ModelWeights qw; NativeWeightStore qs;
        try { (qw, qs) = Quantizer.QuantizeModel(bw, dt); }
        finally { bstore.Dispose(); }
        using var _ = qs;
        var dw = SyntheticWeights.DeviceOnly(config, dt);

        Assert.Equal(qw.TotalBytes, dw.TotalBytes);                                 // WeightBytes unchanged
        var host = qw.AllTensors().ToList();
        var dev = dw.AllTensors().ToList();
        Assert.Equal(host.Count, dev.Count);
        for (int i = 0; i < host.Count; i++)
        {
            var (h, d) = (host[i], dev[i]);
            Assert.Equal(h.Name, d.Name);
            Assert.Equal(h.DType, d.DType);
            Assert.Equal(h.Shape, d.Shape);
            Assert.Equal(h.DataBytes, d.DataBytes);
            Assert.Equal(h.ScaleBytes, d.ScaleBytes);
            Assert.Equal(h.GroupSize, d.GroupSize);
            Assert.True(d.IsDeviceOnly, $"{d.Name} has host values");
            Assert.Equal(0, d.Scales);
            Assert.Equal(DTypes.IsQuantized(d.DType), d.HasScales);
            Assert.Equal("device", d.Source);
        }
        // what is quantized: projections, experts and the classifier; embedding, norms, biases and router stay bf16
        foreach (var l in dw.Layers)
        {
            Assert.All(new[] { l.Wq, l.Wk, l.Wv, l.Wo }, t => Assert.Equal(dt, t.DType));
            Assert.All(new[] { l.AttnNorm, l.FfnNorm }, t => Assert.Equal(DType.BF16, t.DType));
            if (config.IsMoE)
            {
                Assert.Equal(DType.BF16, l.Router!.DType);
                Assert.All(l.ExpertGate!.Concat(l.ExpertUp!).Concat(l.ExpertDown!), t => Assert.Equal(dt, t.DType));
            }
            else Assert.All(new[] { l.WGate!, l.WUp!, l.WDown! }, t => Assert.Equal(dt, t.DType));
            if (config.QkvBias) Assert.Equal(DType.BF16, l.Bq!.DType);
        }
        Assert.Equal(DType.BF16, dw.Embedding.DType);
        Assert.Equal(dt, dw.LmHead.DType);
        Assert.False(ReferenceEquals(dw.LmHead, dw.Embedding));
        if (config.TieWordEmbeddings) Assert.Equal(dw.Embedding.Name, dw.LmHead.Name);   // the tied classifier's quantized copy
    }

    [Fact]
    public void DeviceOnlyWithUnquantizedDTypeIsThePlainDeviceOnlyModel()
    {
        var config = Source("tiny");
        var a = SyntheticWeights.DeviceOnly(config, DType.BF16);
        Assert.Equal(SyntheticWeights.DeviceOnly(config).TotalBytes, a.TotalBytes);
        Assert.All(a.AllTensors(), t => { Assert.Equal(DType.BF16, t.DType); Assert.False(t.HasScales); });
    }

    [Fact]
    public void DeviceScalesSurviveSlicesAndCountOnlyForQuantizedTensors()
    {
        var t = new Tensor("w", DType.Int4, new long[] { 4, 3, 40 }, 0, "device", 0, deviceScales: true);
        Assert.True(t.HasScales);
        Assert.Equal(4 * 3 * (16 * 2 + 2 * 2), t.ByteLength);                      // 2 groups of 16 bytes + 2 fp16 scales per row
        var e = t.Index0(1, "w.1");
        Assert.True(e.HasScales);
        Assert.True(e.IsDeviceOnly);
        Assert.Equal(3 * 36, e.ByteLength);
        Assert.True(e.SliceRows(1, 2, "w.1.r").HasScales);
        var f = new Tensor("f", DType.F8E4M3, new long[] { 5, 7 }, 0, "device", 0, deviceScales: true);
        Assert.Equal(5 * 7 + 5 * 4, f.ByteLength);
        Assert.Equal(7, f.GroupSize);
        var b = new Tensor("b", DType.BF16, new long[] { 5, 7 }, 0, "device", 0, deviceScales: true);
        Assert.False(b.HasScales);
        Assert.Equal(5 * 7 * 2, b.ByteLength);
    }

    [Fact]
    public void QuantizedSyntheticOnCpuStillQuantizesOnTheHost()
    {
        using var m = ModelFactory.CreateSynthetic("tiny", 5, DType.Int4, new ImportOptions { Device = DeviceChoice.Cpu, ContextLength = 16 });
        Assert.Equal("Cpu", m.DeviceKind);
        Assert.All(m.Weights.AllTensors(), t => Assert.False(t.IsDeviceOnly));
        Assert.True(m.Weights.Layers[0].Wq.Scales != 0);
        Assert.Equal(SyntheticWeights.DeviceOnly(Source("tiny"), DType.Int4).TotalBytes, m.WeightBytes);
    }
}
