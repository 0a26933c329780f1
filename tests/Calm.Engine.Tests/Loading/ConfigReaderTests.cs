using System.Text;
using System.Text.Json.Nodes;
using Calm.Engine.Model;
using static Calm.Engine.Tests.Loading.ModelFolders;

namespace Calm.Engine.Tests.Loading;

public class ConfigReaderTests
{
    private static ModelConfig Parse(JsonObject c) => ConfigReader.Parse(c.ToJsonString(), "/m/config.json");

    private static CalmException Fails(JsonObject c, string id, string? mention = null)
    {
        var ex = Throws(() => Parse(c));
        Assert.Equal(id, ex.ErrorId);
        Assert.Contains("/m/config.json", ex.Message);
        if (mention is not null) Assert.Contains(mention, ex.Message);
        return ex;
    }

    [Fact]
    public void LlamaWithLlama3RopeScalingAndTiedEmbeddings()
    {
        var c = Config("llama");
        c["rope_theta"] = 500000.0;
        c["rope_scaling"] = new JsonObject
        {
            ["rope_type"] = "llama3", ["factor"] = 32.0, ["low_freq_factor"] = 1.0, ["high_freq_factor"] = 4.0,
            ["original_max_position_embeddings"] = 8192,
        };
        c["tie_word_embeddings"] = true;
        c["eos_token_id"] = new JsonArray(2, 5, 7);
        c.Remove("num_key_value_heads");
        var m = Parse(c);
        Assert.Equal(Architecture.Llama, m.Architecture);
        Assert.Equal((V, D, F, L, H), (m.VocabSize, m.HiddenSize, m.IntermediateSize, m.NumLayers, m.NumHeads));
        Assert.Equal(H, m.NumKvHeads); // default = heads
        Assert.Equal(D / H, m.HeadDim);
        Assert.Equal(500000.0, m.RopeTheta);
        Assert.Equal(RopeScalingType.Llama3, m.RopeScaling!.Type);
        Assert.Equal(32.0, m.RopeScaling.Factor);
        Assert.Equal(4.0, m.RopeScaling.HighFreqFactor);
        Assert.Equal(8192, m.RopeScaling.OriginalMaxPositionEmbeddings);
        Assert.True(m.TieWordEmbeddings);
        Assert.Equal(new[] { 2, 5, 7 }, m.EosTokenIds);
        Assert.Equal(1, m.BosTokenId);
        Assert.Equal(1e-5, m.RmsNormEps);
        Assert.Equal(DType.BF16, m.DType);
        Assert.False(m.QkvBias || m.OutputBias || m.MlpBias || m.QkNorm || m.ScaleEmbeddings || m.NormAddOne);
        Assert.Null(m.SlidingWindow);
        Assert.Equal(Activation.Silu, m.HiddenAct);
    }

    [Fact]
    public void LlamaAttentionAndMlpBias()
    {
        var c = Config("llama");
        c["attention_bias"] = true;
        c["mlp_bias"] = true;
        var m = Parse(c);
        Assert.True(m.QkvBias && m.OutputBias && m.MlpBias);
    }

    [Fact]
    public void TransformersFiveRopeParametersAndDTypeKey()
    {
        var c = Config("llama");
        c.Remove("rope_theta");
        c.Remove("torch_dtype");
        c["dtype"] = "float16";
        c["rope_parameters"] = new JsonObject { ["rope_type"] = "default", ["rope_theta"] = 123456.0 };
        var m = Parse(c);
        Assert.Equal(123456.0, m.RopeTheta);
        Assert.Null(m.RopeScaling);
        Assert.Equal(DType.F16, m.DType);

        c["rope_parameters"] = new JsonObject { ["rope_type"] = "linear", ["rope_theta"] = 1000.0, ["factor"] = 2.0 };
        m = Parse(c);
        Assert.Equal(RopeScalingType.Linear, m.RopeScaling!.Type);
        Assert.Equal(2.0, m.RopeScaling.Factor);
        c["rope_parameters"] = new JsonObject { ["type"] = "dynamic", ["factor"] = 3.0 };
        Assert.Equal(RopeScalingType.Dynamic, Parse(c).RopeScaling!.Type);
    }

    [Fact]
    public void MistralSlidingWindowAndDefaults()
    {
        var c = Config("mistral");
        var m = Parse(c);
        Assert.Equal(128, m.SlidingWindow);
        c["sliding_window"] = null;
        Assert.Null(Parse(c).SlidingWindow);
        c.Remove("sliding_window");
        c.Remove("num_key_value_heads");
        c.Remove("max_position_embeddings");
        c["num_attention_heads"] = 16;
        m = Parse(c);
        Assert.Equal(4096, m.SlidingWindow);        // MistralConfig default
        Assert.Equal(8, m.NumKvHeads);              // MistralConfig default, not = heads
        Assert.Equal(4096 * 32, m.MaxPositionEmbeddings);
    }

    [Fact]
    public void Qwen2AlwaysHasQkvBiasAndHonoursSlidingOnlyWhenTrue()
    {
        var c = Config("qwen2");
        c["sliding_window"] = 64;
        c["use_sliding_window"] = false;
        var m = Parse(c);
        Assert.True(m.QkvBias);
        Assert.False(m.OutputBias);
        Assert.Null(m.SlidingWindow);
        c["use_sliding_window"] = true;
        c["max_window_layers"] = 0;
        Assert.Equal(64, Parse(c).SlidingWindow);
        c["max_window_layers"] = L; // no layer slides
        Assert.Null(Parse(c).SlidingWindow);
    }

    [Fact]
    public void Qwen3QkNormIndependentHeadDimAndAttentionBias()
    {
        var c = Config("qwen3");
        var m = Parse(c);
        Assert.True(m.QkNorm);
        Assert.Equal(16, m.HeadDim);
        Assert.Equal(H * 16, m.QDim);
        Assert.False(m.QkvBias);
        c["attention_bias"] = true;
        m = Parse(c);
        Assert.True(m.QkvBias && m.OutputBias);
        c.Remove("head_dim");
        Assert.Equal(128, Parse(c).HeadDim); // Qwen3Config default head_dim
    }

    [Fact]
    public void GemmaScalesEmbeddingsAddsOneAndUsesTanhGelu()
    {
        var c = Config("gemma");
        c.Remove("tie_word_embeddings");
        var m = Parse(c);
        Assert.True(m.ScaleEmbeddings && m.NormAddOne && m.TieWordEmbeddings);
        Assert.Equal(16, m.HeadDim);
        Assert.Equal(Activation.GeluTanh, m.HiddenAct);
        c["hidden_act"] = "gelu"; // Gemma's own configs; transformers runs the tanh approximation
        Assert.Equal(Activation.GeluTanh, Parse(c).HiddenAct);
        c["hidden_activation"] = "gelu_pytorch_tanh";
        Assert.Equal(Activation.GeluTanh, Parse(c).HiddenAct);
        var l = Config("llama");
        l["hidden_act"] = "gelu";
        Assert.Equal(Activation.Gelu, Parse(l).HiddenAct);
    }

    [Fact]
    public void Phi3PartialRotaryAndLongRope()
    {
        var c = Config("phi3");
        c["partial_rotary_factor"] = 0.5;
        c["original_max_position_embeddings"] = 128;
        int pairs = D / H / 2 / 2; // head_dim 8 * 0.5 / 2
        var sf = new JsonArray(); var lf = new JsonArray();
        for (int i = 0; i < pairs; i++) { sf.Add(1.0 + i); lf.Add(2.0 + i); }
        c["rope_scaling"] = new JsonObject { ["type"] = "su", ["short_factor"] = sf, ["long_factor"] = lf };
        var m = Parse(c);
        Assert.Equal(0.5, m.PartialRotaryFactor);
        Assert.Equal(4, m.RotaryDim);
        Assert.Equal(RopeScalingType.LongRope, m.RopeScaling!.Type);
        Assert.Equal(new[] { 1.0, 2.0 }, m.RopeScaling.ShortFactor);
        Assert.Equal(new[] { 2.0, 3.0 }, m.RopeScaling.LongFactor);
        Assert.Equal(128, m.RopeScaling.OriginalMaxPositionEmbeddings);
        c["rope_scaling"]!["long_factor"] = new JsonArray(1.0);
        Fails(c, ErrorIds.ConfigInvalid, "long_factor");
    }

    [Fact]
    public void MixtralExperts()
    {
        var m = Parse(Config("mixtral"));
        Assert.Equal(E, m.NumExperts);
        Assert.Equal(2, m.NumExpertsPerToken);
        Assert.True(m.IsMoE);
        Assert.Null(m.SlidingWindow);
        var c = Config("mixtral");
        c["num_experts_per_tok"] = E + 1;
        Fails(c, ErrorIds.ConfigInvalid, "num_experts_per_tok");
    }

    [Theory]
    [InlineData("vocab_size")]
    [InlineData("hidden_size")]
    [InlineData("intermediate_size")]
    [InlineData("num_hidden_layers")]
    [InlineData("num_attention_heads")]
    [InlineData("model_type")]
    public void MissingRequiredFieldIsConfigInvalidNamingIt(string field)
    {
        var c = Config("llama");
        c.Remove(field);
        Fails(c, ErrorIds.ConfigInvalid, field);
    }

    [Fact]
    public void ZeroHeadsIsConfigInvalid()
    {
        var c = Config("llama");
        c["num_attention_heads"] = 0;
        Fails(c, ErrorIds.ConfigInvalid, "num_attention_heads");
        c = Config("llama");
        c["num_key_value_heads"] = 0;
        Fails(c, ErrorIds.ConfigInvalid, "num_key_value_heads");
    }

    [Fact]
    public void HeadDimNotDividingHiddenIsConfigInvalid()
    {
        var c = Config("llama");
        c["num_attention_heads"] = 5; // 32 / 5
        Fails(c, ErrorIds.ConfigInvalid, "hidden_size");
    }

    [Theory]
    [InlineData("hidden_size", "\"big\"")]
    [InlineData("num_hidden_layers", "2.5")]
    [InlineData("rms_norm_eps", "-1")]
    [InlineData("rope_theta", "true")]
    [InlineData("tie_word_embeddings", "\"yes\"")]
    [InlineData("eos_token_id", "\"</s>\"")]
    [InlineData("eos_token_id", "[1, -2]")]
    [InlineData("eos_token_id", "999")]
    [InlineData("num_hidden_layers", "-3")]
    [InlineData("vocab_size", "1e30")]
    public void NonsenseValuesAreConfigInvalid(string field, string json)
    {
        var c = Config("llama");
        c[field] = JsonNode.Parse(json);
        Fails(c, ErrorIds.ConfigInvalid, field.Split('_')[0]);
    }

    [Fact]
    public void UnsupportedModelTypeListsSupportedOnes()
    {
        var c = Config("llama");
        c["model_type"] = "gpt2";
        var ex = Fails(c, ErrorIds.UnsupportedArchitecture, "gpt2");
        foreach (var t in new[] { "llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "mixtral" }) Assert.Contains(t, ex.Message);
    }

    [Fact]
    public void UnsupportedRopeTypeIsRefused()
    {
        var c = Config("llama");
        c["rope_scaling"] = new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0 };
        Fails(c, ErrorIds.UnsupportedArchitecture, "yarn");
        c["rope_scaling"] = new JsonObject { ["rope_type"] = "llama3", ["factor"] = 8.0 };
        Fails(c, ErrorIds.ConfigInvalid, "low_freq_factor");
    }

    [Theory]
    [InlineData("not json")]
    [InlineData("[1,2]")]
    [InlineData("")]
    [InlineData("{\"model_type\": \"llama\",")]
    public void NonJsonIsConfigInvalid(string text)
    {
        var ex = Throws(() => ConfigReader.Parse(text, "/m/config.json"));
        Assert.Equal(ErrorIds.ConfigInvalid, ex.ErrorId);
    }

    [Fact]
    public void NonUtf8IsConfigInvalid()
    {
        var bytes = Encoding.UTF8.GetBytes(Config("llama").ToJsonString());
        bytes[5] = 0xFF;
        var ex = Throws(() => ConfigReader.Parse(bytes, "/m/config.json"));
        Assert.Equal(ErrorIds.ConfigInvalid, ex.ErrorId);
    }

    [Fact]
    public void GenerationConfigEosIntOrList()
    {
        var g = ConfigReader.ParseGeneration(Encoding.UTF8.GetBytes("{\"bos_token_id\": 1, \"eos_token_id\": [128001, 128009], \"temperature\": 0.6, \"top_p\": 0.9, \"do_sample\": true}"), "g");
        Assert.Equal(new[] { 128001, 128009 }, g.EosTokenIds);
        Assert.Equal(1, g.BosTokenId);
        Assert.Equal(0.6, g.Temperature);
        Assert.Equal(0.9, g.TopP);
        Assert.True(g.DoSample);
        g = ConfigReader.ParseGeneration(Encoding.UTF8.GetBytes("{\"eos_token_id\": 2, \"transformers_version\": \"5.17.0\"}"), "g");
        Assert.Equal(new[] { 2 }, g.EosTokenIds);
        Assert.Null(g.BosTokenId);
        var ex = Throws(() => ConfigReader.ParseGeneration(Encoding.UTF8.GetBytes("{\"eos_token_id\": {}}"), "g"));
        Assert.Equal(ErrorIds.ConfigInvalid, ex.ErrorId);
    }
}
