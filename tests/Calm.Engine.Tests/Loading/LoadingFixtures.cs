using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Calm.Engine.Model;
using Calm.Engine.Weights;

namespace Calm.Engine.Tests.Loading;

/// <summary>A temporary directory removed on dispose.</summary>
public sealed class TempDir : IDisposable
{
    public string Path { get; }
    public TempDir() : this(System.IO.Path.Combine(System.IO.Path.GetTempPath(), "calm-load-" + Guid.NewGuid().ToString("N")[..12])) { }
    public TempDir(string path) { Path = path; Directory.CreateDirectory(Path); }
    public string File(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose() { try { Directory.Delete(Path, true); } catch { } }
}

/// <summary>
/// Builds small model folders as transformers would save them, written independently of the loader: tensor names
/// and shapes per architecture spelled out here. Dims: V 64, D 32, F 48, 2 layers, H 4, K 2, Hd 8 (16 for qwen3/gemma).
/// </summary>
public static class ModelFolders
{
    public const int V = 64, D = 32, F = 48, L = 2, H = 4, K = 2, E = 4;
    public static int HeadDim(string arch) => arch is "qwen3" or "gemma" ? 16 : D / H;

    public static JsonObject Config(string arch)
    {
        var c = new JsonObject
        {
            ["architectures"] = new JsonArray("X"),
            ["model_type"] = arch,
            ["vocab_size"] = V,
            ["hidden_size"] = D,
            ["intermediate_size"] = F,
            ["num_hidden_layers"] = L,
            ["num_attention_heads"] = H,
            ["num_key_value_heads"] = K,
            ["max_position_embeddings"] = 256,
            ["rms_norm_eps"] = 1e-5,
            ["rope_theta"] = 10000.0,
            ["hidden_act"] = "silu",
            ["tie_word_embeddings"] = false,
            ["torch_dtype"] = "bfloat16",
            ["bos_token_id"] = 1,
            ["eos_token_id"] = 2,
        };
        switch (arch)
        {
            case "qwen3": c["head_dim"] = 16; break;
            case "gemma": c["head_dim"] = 16; c["hidden_act"] = "gelu_pytorch_tanh"; c["tie_word_embeddings"] = true; break;
            case "mixtral": c["num_local_experts"] = E; c["num_experts_per_tok"] = 2; c["sliding_window"] = null; break;
            case "mistral": c["sliding_window"] = 128; break;
        }
        return c;
    }

    /// <summary>(name, shape) of every tensor transformers saves for the architecture and config.</summary>
    public static List<(string Name, long[] Shape)> TensorSpecs(string arch, JsonObject config, bool stackedExperts = false)
    {
        int hd = config["head_dim"] is JsonNode n ? n.GetValue<int>() : D / H;
        long q = H * hd, kv = K * hd;
        bool tied = config["tie_word_embeddings"]?.GetValue<bool>() ?? false;
        bool attnBias = config["attention_bias"]?.GetValue<bool>() ?? false;
        bool mlpBias = config["mlp_bias"]?.GetValue<bool>() ?? false;
        var t = new List<(string, long[])> { ("model.embed_tokens.weight", new long[] { V, D }) };
        for (int i = 0; i < L; i++)
        {
            string p = $"model.layers.{i}.";
            t.Add((p + "input_layernorm.weight", new long[] { D }));
            t.Add((p + "post_attention_layernorm.weight", new long[] { D }));
            if (arch == "phi3") t.Add((p + "self_attn.qkv_proj.weight", new long[] { q + 2 * kv, D }));
            else
            {
                t.Add((p + "self_attn.q_proj.weight", new long[] { q, D }));
                t.Add((p + "self_attn.k_proj.weight", new long[] { kv, D }));
                t.Add((p + "self_attn.v_proj.weight", new long[] { kv, D }));
            }
            t.Add((p + "self_attn.o_proj.weight", new long[] { D, q }));
            if (arch == "qwen2" || attnBias)
            {
                t.Add((p + "self_attn.q_proj.bias", new long[] { q }));
                t.Add((p + "self_attn.k_proj.bias", new long[] { kv }));
                t.Add((p + "self_attn.v_proj.bias", new long[] { kv }));
            }
            if (attnBias) t.Add((p + "self_attn.o_proj.bias", new long[] { D }));
            if (arch == "qwen3")
            {
                t.Add((p + "self_attn.q_norm.weight", new long[] { hd }));
                t.Add((p + "self_attn.k_norm.weight", new long[] { hd }));
            }
            if (arch == "mixtral" && stackedExperts)
            {
                t.Add((p + "mlp.gate.weight", new long[] { E, D }));
                t.Add((p + "mlp.experts.gate_up_proj", new long[] { E, 2 * F, D }));
                t.Add((p + "mlp.experts.down_proj", new long[] { E, D, F }));
            }
            else if (arch == "mixtral")
            {
                t.Add((p + "block_sparse_moe.gate.weight", new long[] { E, D }));
                for (int e = 0; e < E; e++)
                {
                    t.Add(($"{p}block_sparse_moe.experts.{e}.w1.weight", new long[] { F, D }));
                    t.Add(($"{p}block_sparse_moe.experts.{e}.w2.weight", new long[] { D, F }));
                    t.Add(($"{p}block_sparse_moe.experts.{e}.w3.weight", new long[] { F, D }));
                }
            }
            else if (arch == "phi3")
            {
                t.Add((p + "mlp.gate_up_proj.weight", new long[] { 2 * F, D }));
                t.Add((p + "mlp.down_proj.weight", new long[] { D, F }));
            }
            else
            {
                t.Add((p + "mlp.gate_proj.weight", new long[] { F, D }));
                t.Add((p + "mlp.up_proj.weight", new long[] { F, D }));
                t.Add((p + "mlp.down_proj.weight", new long[] { D, F }));
                if (mlpBias)
                {
                    t.Add((p + "mlp.gate_proj.bias", new long[] { F }));
                    t.Add((p + "mlp.up_proj.bias", new long[] { F }));
                    t.Add((p + "mlp.down_proj.bias", new long[] { D }));
                }
            }
        }
        t.Add(("model.norm.weight", new long[] { D }));
        if (!tied) t.Add(("lm_head.weight", new long[] { V, D }));
        return t;
    }

    /// <summary>Random values of a dtype as bytes (bf16/f16/f32), seeded.</summary>
    public static byte[] RandomBytes(DType dtype, long[] shape, Random rng)
    {
        long n = 1; foreach (var d in shape) n *= d;
        var b = new byte[n * DTypes.SizeOf(dtype)];
        for (long i = 0; i < n; i++)
        {
            float x = (float)(rng.NextDouble() * 2 - 1);
            switch (dtype)
            {
                case DType.F32: BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan((int)i * 4), x); break;
                case DType.F16: BinaryPrimitives.WriteHalfLittleEndian(b.AsSpan((int)i * 2), (Half)x); break;
                case DType.BF16: BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan((int)i * 2), (ushort)(BitConverter.SingleToInt32Bits(x) >> 16)); break;
                default: rng.NextBytes(b.AsSpan((int)i * DTypes.SizeOf(dtype), DTypes.SizeOf(dtype))); break;
            }
        }
        return b;
    }

    public static List<SafetensorsTensor> MakeTensors(IEnumerable<(string Name, long[] Shape)> specs, DType dtype, int seed)
    {
        var rng = new Random(seed);
        return specs.Select(s => new SafetensorsTensor(s.Name, dtype, s.Shape, RandomBytes(dtype, s.Shape, rng))).ToList();
    }

    public static void WriteConfig(string dir, JsonObject config) =>
        System.IO.File.WriteAllText(System.IO.Path.Combine(dir, "config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));

    /// <summary>Writes config.json + model.safetensors; returns the tensors written.</summary>
    public static List<SafetensorsTensor> Write(string dir, string arch, DType dtype = DType.BF16, int seed = 1,
        JsonObject? config = null, bool stackedExperts = false, Func<List<SafetensorsTensor>, List<SafetensorsTensor>>? edit = null)
    {
        config ??= Config(arch);
        WriteConfig(dir, config);
        var tensors = MakeTensors(TensorSpecs(arch, config, stackedExperts), dtype, seed);
        if (edit is not null) tensors = edit(tensors);
        SafetensorsWriter.Write(System.IO.Path.Combine(dir, "model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        return tensors;
    }

    /// <summary>A safetensors file from raw header text and data bytes (header length field may be overridden).</summary>
    public static byte[] RawFile(string headerJson, byte[] data, ulong? headerLength = null) =>
        RawFile(Encoding.UTF8.GetBytes(headerJson), data, headerLength);

    public static byte[] RawFile(byte[] header, byte[] data, ulong? headerLength = null)
    {
        var b = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(b, headerLength ?? (ulong)header.Length);
        header.CopyTo(b, 8);
        data.CopyTo(b, 8 + header.Length);
        return b;
    }

    public static CalmException Throws(Action a) => Assert.Throws<CalmException>(a);
}
