using Calm.Engine.Model;
using Calm.Engine.Weights;

namespace Calm.Engine.Tests.Cpu;

/// <summary>A small random model held in native memory (disposes its store).</summary>
internal sealed class TestModel : IDisposable
{
    public required ModelConfig Config { get; init; }
    public required ModelWeights Weights { get; init; }
    public required NativeWeightStore Store { get; init; }
    public void Dispose() => Store.Dispose();
}

/// <summary>
/// Builds tiny models of every architecture with random weights (scaled ~1/sqrt(fan_in) so activations stay sane),
/// laid out like the loader lays them out: phi3 as slices of fused qkv / gate_up tensors, mixtral experts as
/// slices of stacked [E, F, D] tensors. Odd sizes on purpose (SIMD tails).
/// </summary>
internal static unsafe class TestModels
{
    public static readonly string[] Names = { "llama", "llama-linear-f16", "mistral", "qwen2", "qwen3", "gemma", "gemma-gelu", "phi3", "mixtral" };

    public static ModelConfig Config(string name) => name switch
    {
        // Llama 3.2 style: tied embeddings, llama3 rope scaling (all three frequency bands are hit: wavelengths 6..2e4
        // vs 16 and 64), and every llama bias (attention_bias, mlp_bias).
        "llama" => Base(Architecture.Llama, "llama", v: 97, d: 72, f: 100, layers: 2, h: 4, k: 2, hd: 18) with
        {
            TieWordEmbeddings = true, QkvBias = true, OutputBias = true, MlpBias = true, RopeTheta = 10000, RmsNormEps = 1e-5,
            RopeScaling = new RopeScaling { Type = RopeScalingType.Llama3, Factor = 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 64 },
            DType = DType.BF16,
        },
        "llama-linear-f16" => Base(Architecture.Llama, "llama", v: 80, d: 64, f: 88, layers: 2, h: 8, k: 8, hd: 8) with
        {
            RopeScaling = new RopeScaling { Type = RopeScalingType.Linear, Factor = 2.5 }, DType = DType.F16,
        },
        "mistral" => Base(Architecture.Mistral, "mistral", v: 90, d: 64, f: 130, layers: 3, h: 4, k: 1, hd: 16) with
        {
            SlidingWindow = 5, RopeTheta = 1e6, DType = DType.BF16,
        },
        "qwen2" => Base(Architecture.Qwen2, "qwen2", v: 101, d: 56, f: 72, layers: 2, h: 4, k: 2, hd: 14) with
        {
            QkvBias = true, RopeTheta = 1e6, DType = DType.F32,
        },
        // head_dim independent of hidden/heads (q has 96 rows for a 64-wide model).
        "qwen3" => Base(Architecture.Qwen3, "qwen3", v: 88, d: 64, f: 80, layers: 2, h: 4, k: 2, hd: 24) with
        {
            QkNorm = true, RopeTheta = 1e6, DType = DType.BF16,
        },
        "gemma" => Base(Architecture.Gemma, "gemma", v: 96, d: 48, f: 112, layers: 2, h: 2, k: 1, hd: 32) with
        {
            TieWordEmbeddings = true, ScaleEmbeddings = true, NormAddOne = true, HiddenAct = Activation.GeluTanh, DType = DType.BF16,
        },
        "gemma-gelu" => Config("gemma") with { HiddenAct = Activation.Gelu, DType = DType.F16 },
        // Phi-4-mini style partial rotary (0.75 of 16 = 12 dims) with longrope; fused qkv_proj / gate_up_proj.
        "phi3" => Base(Architecture.Phi3, "phi3", v: 84, d: 64, f: 96, layers: 2, h: 4, k: 2, hd: 16) with
        {
            PartialRotaryFactor = 0.75, MaxPositionEmbeddings = 64,
            RopeScaling = new RopeScaling
            {
                Type = RopeScalingType.LongRope, OriginalMaxPositionEmbeddings = 16,
                ShortFactor = new[] { 1.0, 1.1, 1.3, 1.8, 2.5, 3.0 }, LongFactor = new[] { 1.0, 1.5, 2.5, 4.0, 6.0, 9.0 },
            },
            DType = DType.BF16,
        },
        "mixtral" => Base(Architecture.Mixtral, "mixtral", v: 92, d: 64, f: 40, layers: 2, h: 4, k: 2, hd: 16) with
        {
            NumExperts = 5, NumExpertsPerToken = 2, RopeTheta = 1e6, DType = DType.BF16,
        },
        _ => throw new ArgumentException(name),
    };

    private static ModelConfig Base(Architecture a, string type, int v, int d, int f, int layers, int h, int k, int hd) => new()
    {
        Architecture = a, ModelType = type, VocabSize = v, HiddenSize = d, IntermediateSize = f, NumLayers = layers,
        NumHeads = h, NumKvHeads = k, HeadDim = hd, MaxPositionEmbeddings = 4096, RmsNormEps = 1e-6,
    };

    public static TestModel Build(ModelConfig c, Random rng)
    {
        var store = new NativeWeightStore();
        try
        {
            var dt = c.DType;
            int d = c.HiddenSize, f = c.IntermediateSize, v = c.VocabSize;
            Tensor Mat(string name, long rows, long cols, double scale) => Make(store, name, dt, new[] { rows, cols }, rng, scale, 0);
            Tensor Vec(string name, long n, double scale, double center) => Make(store, name, dt, new[] { n }, rng, scale, center);
            double normCenter = c.NormAddOne ? 0.0 : 1.0; // gemma stores w with the 1 taken out
            var layers = new LayerWeights[c.NumLayers];
            for (int l = 0; l < c.NumLayers; l++)
            {
                string p = $"model.layers.{l}.";
                Tensor wq, wk, wv, wgate = null!, wup = null!;
                if (c.Architecture == Architecture.Phi3)
                {
                    var qkv = Mat(p + "self_attn.qkv_proj.weight", c.QDim + 2L * c.KvDim, d, 1.5 / Math.Sqrt(d));
                    wq = qkv.SliceRows(0, c.QDim, p + "q"); wk = qkv.SliceRows(c.QDim, c.KvDim, p + "k"); wv = qkv.SliceRows(c.QDim + c.KvDim, c.KvDim, p + "v");
                    var gu = Mat(p + "mlp.gate_up_proj.weight", 2L * f, d, 1.5 / Math.Sqrt(d));
                    wgate = gu.SliceRows(0, f, p + "gate"); wup = gu.SliceRows(f, f, p + "up");
                }
                else
                {
                    wq = Mat(p + "self_attn.q_proj.weight", c.QDim, d, 1.5 / Math.Sqrt(d));
                    wk = Mat(p + "self_attn.k_proj.weight", c.KvDim, d, 1.5 / Math.Sqrt(d));
                    wv = Mat(p + "self_attn.v_proj.weight", c.KvDim, d, 1.0 / Math.Sqrt(d));
                    if (!c.IsMoE)
                    {
                        wgate = Mat(p + "mlp.gate_proj.weight", f, d, 1.5 / Math.Sqrt(d));
                        wup = Mat(p + "mlp.up_proj.weight", f, d, 1.0 / Math.Sqrt(d));
                    }
                }
                Tensor[]? eg = null, eu = null, ed = null;
                if (c.IsMoE)
                {
                    int e = c.NumExperts;
                    var g3 = Make(store, p + "experts.gate", dt, new long[] { e, f, d }, rng, 1.5 / Math.Sqrt(d), 0);
                    eg = Enumerable.Range(0, e).Select(i => g3.Index0(i, $"{p}experts.{i}.w1")).ToArray();
                    eu = Enumerable.Range(0, e).Select(i => Mat($"{p}experts.{i}.w3", f, d, 1.0 / Math.Sqrt(d))).ToArray();
                    ed = Enumerable.Range(0, e).Select(i => Mat($"{p}experts.{i}.w2", d, f, 1.0 / Math.Sqrt(f))).ToArray();
                }
                layers[l] = new LayerWeights
                {
                    AttnNorm = Vec(p + "input_layernorm.weight", d, 0.2, normCenter),
                    FfnNorm = Vec(p + "post_attention_layernorm.weight", d, 0.2, normCenter),
                    Wq = wq, Wk = wk, Wv = wv,
                    Wo = Mat(p + "self_attn.o_proj.weight", d, c.QDim, 1.0 / Math.Sqrt(c.QDim)),
                    Bq = c.QkvBias ? Vec(p + "bq", c.QDim, 0.3, 0) : null,
                    Bk = c.QkvBias ? Vec(p + "bk", c.KvDim, 0.3, 0) : null,
                    Bv = c.QkvBias ? Vec(p + "bv", c.KvDim, 0.3, 0) : null,
                    Bo = c.OutputBias ? Vec(p + "bo", d, 0.3, 0) : null,
                    QNorm = c.QkNorm ? Vec(p + "q_norm", c.HeadDim, 0.3, 1) : null,
                    KNorm = c.QkNorm ? Vec(p + "k_norm", c.HeadDim, 0.3, 1) : null,
                    WGate = c.IsMoE ? null : wgate,
                    WUp = c.IsMoE ? null : wup,
                    WDown = c.IsMoE ? null : Mat(p + "mlp.down_proj.weight", d, f, 1.0 / Math.Sqrt(f)),
                    BGate = c.MlpBias ? Vec(p + "bgate", f, 0.3, 0) : null,
                    BUp = c.MlpBias ? Vec(p + "bup", f, 0.3, 0) : null,
                    BDown = c.MlpBias ? Vec(p + "bdown", d, 0.3, 0) : null,
                    Router = c.IsMoE ? Mat(p + "gate", c.NumExperts, d, 3.0 / Math.Sqrt(d)) : null,
                    ExpertGate = eg, ExpertUp = eu, ExpertDown = ed,
                };
            }
            // Gemma scales embeddings by sqrt(D): keep them small so the residual stream stays O(1).
            var emb = Mat("model.embed_tokens.weight", v, d, c.ScaleEmbeddings ? 1.0 / Math.Sqrt(d) : 1.0);
            var weights = new ModelWeights
            {
                Embedding = emb,
                Layers = layers,
                FinalNorm = Vec("model.norm.weight", d, 0.2, normCenter),
                LmHead = c.TieWordEmbeddings ? emb : Mat("lm_head.weight", v, d, 3.0 / Math.Sqrt(d)),
            };
            return new TestModel { Config = c, Weights = weights, Store = store };
        }
        catch { store.Dispose(); throw; }
    }

    /// <summary>A tensor of uniform values center ± scale*sqrt(3) (std = scale), stored in <paramref name="dt"/>.</summary>
    public static Tensor Make(NativeWeightStore store, string name, DType dt, long[] shape, Random rng, double scale, double center)
    {
        long n = 1; foreach (var s in shape) n *= s;
        nint p = store.Allocate(n * DTypes.SizeOf(dt));
        for (long i = 0; i < n; i++)
        {
            double val = center + (rng.NextDouble() * 2 - 1) * scale * Math.Sqrt(3);
            switch (dt)
            {
                case DType.F32: ((float*)p)[i] = (float)val; break;
                case DType.F16: ((Half*)p)[i] = (Half)val; break;
                case DType.BF16: ((ushort*)p)[i] = (ushort)(BitConverter.SingleToUInt32Bits((float)val) >> 16); break;
                default: throw new ArgumentException(dt.ToString());
            }
        }
        return new Tensor(name, dt, shape, p, "test");
    }
}
