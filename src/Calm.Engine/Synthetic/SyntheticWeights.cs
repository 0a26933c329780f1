using System.Runtime.CompilerServices;
using System.Text;
using Calm.Engine.Devices;
using Calm.Engine.Model;
using Calm.Engine.Weights;

namespace Calm.Engine.Synthetic;

/// <summary>
/// Deterministic random weights of a model's exact shapes, with no files. Every element is a pure function of
/// (seed, tensor name, index), so the CUDA backend can fill the same values on the GPU with no host copy:
/// <code>
///   tensorId = FNV-1a-64(UTF-8 name)
///   key      = SplitMix64(((ulong)seed &lt;&lt; 32) ^ tensorId)
///   u        = SplitMix64(key + i) &gt;&gt; 40                  (24 random bits)
///   x        = ((u + 0.5) / 2^24) * 2 - 1                   (uniform in (-1, 1))
///   value    = offset + scale * x  (fp32), rounded to the dtype (round-to-nearest-even)
/// </code>
/// Scales keep activations O(1): projections sqrt(3 / fan_in) (variance 1/fan_in), embeddings 1, norms 1 ± 0.1.
/// </summary>
public static class SyntheticWeights
{
    /// <summary>How one tensor is filled.</summary>
    public readonly record struct FillSpec(string Name, long[] Shape, float Scale, float Offset)
    {
        public ulong TensorId => Fnv1a64(Name);
    }

    public static ulong Fnv1a64(string s)
    {
        ulong h = 0xcbf29ce484222325UL;
        foreach (byte b in Encoding.UTF8.GetBytes(s)) { h ^= b; h *= 0x100000001b3UL; }
        return h;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong SplitMix64(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public static ulong Key(int seed, ulong tensorId) => SplitMix64(((ulong)(uint)seed << 32) ^ tensorId);

    /// <summary>The fp32 value of element <paramref name="i"/> before rounding to the dtype.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Value(ulong key, long i, float scale, float offset)
    {
        ulong u = SplitMix64(key + (ulong)i) >> 40;
        float x = (float)(((u + 0.5) / 16777216.0) * 2.0 - 1.0);
        return offset + scale * x;
    }

    /// <summary>fp32 → bf16 with round-to-nearest-even (NaN kept NaN).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort ToBf16(float f)
    {
        uint b = BitConverter.SingleToUInt32Bits(f);
        if ((b & 0x7FFFFFFF) > 0x7F800000) return (ushort)((b >> 16) | 0x40);
        b += 0x7FFF + ((b >> 16) & 1);
        return (ushort)(b >> 16);
    }

    /// <summary>The tensors of <paramref name="c"/> in a fixed order, with HF names and fill parameters.</summary>
    public static IReadOnlyList<FillSpec> Layout(ModelConfig c)
    {
        var list = new List<FillSpec>();
        long d = c.HiddenSize, f = c.IntermediateSize;
        float Proj(long fanIn) => MathF.Sqrt(3f / fanIn);
        float normOffset = c.NormAddOne ? 0f : 1f;
        list.Add(new("model.embed_tokens.weight", new[] { (long)c.VocabSize, d }, 1f, 0f));
        for (int l = 0; l < c.NumLayers; l++)
        {
            string p = $"model.layers.{l}.";
            list.Add(new(p + "input_layernorm.weight", new[] { d }, 0.1f, normOffset));
            list.Add(new(p + "self_attn.q_proj.weight", new[] { (long)c.QDim, d }, Proj(d), 0f));
            list.Add(new(p + "self_attn.k_proj.weight", new[] { (long)c.KvDim, d }, Proj(d), 0f));
            list.Add(new(p + "self_attn.v_proj.weight", new[] { (long)c.KvDim, d }, Proj(d), 0f));
            if (c.QkvBias)
            {
                list.Add(new(p + "self_attn.q_proj.bias", new[] { (long)c.QDim }, 0.02f, 0f));
                list.Add(new(p + "self_attn.k_proj.bias", new[] { (long)c.KvDim }, 0.02f, 0f));
                list.Add(new(p + "self_attn.v_proj.bias", new[] { (long)c.KvDim }, 0.02f, 0f));
            }
            if (c.QkNorm)
            {
                list.Add(new(p + "self_attn.q_norm.weight", new[] { (long)c.HeadDim }, 0.1f, 1f));
                list.Add(new(p + "self_attn.k_norm.weight", new[] { (long)c.HeadDim }, 0.1f, 1f));
            }
            list.Add(new(p + "self_attn.o_proj.weight", new[] { d, (long)c.QDim }, Proj(c.QDim), 0f));
            if (c.OutputBias) list.Add(new(p + "self_attn.o_proj.bias", new[] { d }, 0.02f, 0f));
            list.Add(new(p + "post_attention_layernorm.weight", new[] { d }, 0.1f, normOffset));
            if (c.IsMoE)
            {
                list.Add(new(p + "block_sparse_moe.gate.weight", new[] { (long)c.NumExperts, d }, 3f * Proj(d), 0f));
                for (int e = 0; e < c.NumExperts; e++)
                {
                    string q = p + $"block_sparse_moe.experts.{e}.";
                    list.Add(new(q + "w1.weight", new[] { f, d }, Proj(d), 0f));
                    list.Add(new(q + "w3.weight", new[] { f, d }, Proj(d), 0f));
                    list.Add(new(q + "w2.weight", new[] { d, f }, Proj(f), 0f));
                }
            }
            else
            {
                list.Add(new(p + "mlp.gate_proj.weight", new[] { f, d }, Proj(d), 0f));
                list.Add(new(p + "mlp.up_proj.weight", new[] { f, d }, Proj(d), 0f));
                list.Add(new(p + "mlp.down_proj.weight", new[] { d, f }, Proj(f), 0f));
                if (c.MlpBias)
                {
                    list.Add(new(p + "mlp.gate_proj.bias", new[] { f }, 0.02f, 0f));
                    list.Add(new(p + "mlp.up_proj.bias", new[] { f }, 0.02f, 0f));
                    list.Add(new(p + "mlp.down_proj.bias", new[] { d }, 0.02f, 0f));
                }
            }
        }
        list.Add(new("model.norm.weight", new[] { d }, 0.1f, normOffset));
        if (!c.TieWordEmbeddings) list.Add(new("lm_head.weight", new[] { (long)c.VocabSize, d }, 2f * Proj(d), 0f));
        return list;
    }

    /// <summary>Bytes the weights of <paramref name="c"/> take at its dtype.</summary>
    public static long Bytes(ModelConfig c) => Layout(c).Sum(s => s.Shape.Aggregate(1L, (a, b) => a * b)) * DTypes.SizeOf(c.DType);

    /// <summary>Fills host memory for every tensor. Refuses (Calm.PresetTooLarge) before allocating when it cannot fit.</summary>
    public static (ModelWeights Weights, WeightStore Store) Build(ModelConfig config, int seed, IProgress<LoadProgress>? progress, CancellationToken ct)
    {
        if (!DTypes.IsWeightType(config.DType))
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                $"Synthetic weights can be f32, f16 or bf16, not {DTypes.Name(config.DType)}.", "DType");
        long need = Bytes(config);
        long avail = HostMemory.AvailableBytes();
        if (need > avail * 0.9)
            throw new CalmException(ErrorIds.PresetTooLarge, CalmErrorKind.ResourceUnavailable,
                $"A synthetic {config.ModelType} model of this shape needs {need / 1e9:F2} GB of host memory at {DTypes.Name(config.DType)}, " +
                $"but only {avail / 1e9:F2} GB is available. Choose a smaller preset or dtype, or use -Device Cuda.", "Preset");

        var store = new NativeWeightStore();
        try
        {
            var specs = Layout(config);
            var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            long done = 0;
            foreach (var s in specs)
            {
                ct.ThrowIfCancellationRequested();
                long n = s.Shape.Aggregate(1L, (a, b) => a * b);
                long bytes = n * DTypes.SizeOf(config.DType);
                nint ptr = store.Allocate(bytes);
                Fill(ptr, n, config.DType, Key(seed, s.TensorId), s.Scale, s.Offset, ct);
                tensors[s.Name] = new Tensor(s.Name, config.DType, s.Shape, ptr, "synthetic");
                done += bytes;
                progress?.Report(new LoadProgress("Making synthetic weights", s.Name, (double)done / need));
            }
            return (Assemble(config, tensors), store);
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The weights of <paramref name="config"/> with no host memory: every tensor has <see cref="Tensor.Data"/> = 0
    /// (<see cref="Tensor.IsDeviceOnly"/>), the real name, shape and dtype, and Source "device". A backend that accepts
    /// them (CudaBackend with a synthetic seed) makes the values itself from <see cref="Layout"/>; sizes
    /// (<see cref="ModelWeights.TotalBytes"/>) are exact. The CPU backend cannot run them.
    /// </summary>
    public static ModelWeights DeviceOnly(ModelConfig config)
    {
        if (!DTypes.IsWeightType(config.DType))
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                $"Synthetic weights can be f32, f16 or bf16, not {DTypes.Name(config.DType)}.", "DType");
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var s in Layout(config)) tensors[s.Name] = new Tensor(s.Name, config.DType, s.Shape, 0, "device");
        return Assemble(config, tensors);
    }

    /// <summary>The dtype quantized synthetic weights are made at before they are quantized (New-CalmModel -DType
    /// fp8|int4: the same bf16 values as -DType bf16 with that seed), on the host and on the GPU alike.</summary>
    public const DType QuantizedSourceDType = DType.BF16;

    /// <summary>
    /// Device-only weights of <paramref name="config"/> (its DType the source dtype, <see cref="QuantizedSourceDType"/>)
    /// quantized to <paramref name="weightDType"/> (fp8 or int4) on the device, as <see cref="Quant.Quantizer.QuantizeModel"/>
    /// would quantize <see cref="Build"/>'s weights: every layer projection, the experts and the classifier (a tied
    /// classifier as its own quantized tensor with the embedding's name) are <paramref name="weightDType"/> with
    /// device-only scales (<see cref="Tensor.HasScales"/>), so <see cref="ModelWeights.TotalBytes"/> is exactly the host
    /// quantized model's; the embedding, norms, biases and router keep the source dtype. A non-quantized
    /// <paramref name="weightDType"/> (or config's own) gives <see cref="DeviceOnly(ModelConfig)"/>.
    /// </summary>
    public static ModelWeights DeviceOnly(ModelConfig config, DType weightDType)
    {
        var w = DeviceOnly(config);
        if (!DTypes.IsQuantized(weightDType)) return w;
        var map = new Dictionary<Tensor, Tensor>(ReferenceEqualityComparer.Instance);
        Tensor Q(Tensor t)
        {
            if (map.TryGetValue(t, out var have)) return have;
            var r = new Tensor(t.Name, weightDType, (long[])t.Shape.Clone(), 0, "device", 0, deviceScales: true);
            map[t] = r;
            return r;
        }
        // the classifier gets its own quantized tensor even when tied (the embedding keeps the source dtype)
        return w.MapMatrices(Q, t => new Tensor(t.Name, weightDType, (long[])t.Shape.Clone(), 0, "device", 0, deviceScales: true));
    }

    private static unsafe void Fill(nint ptr, long n, DType dtype, ulong key, float scale, float offset, CancellationToken ct)
    {
        const long Chunk = 1 << 20;
        long chunks = (n + Chunk - 1) / Chunk;
        var po = new ParallelOptions { CancellationToken = ct };
        Parallel.For(0, chunks, po, c =>
        {
            long start = c * Chunk, end = Math.Min(n, start + Chunk);
            switch (dtype)
            {
                case DType.F32:
                    { float* p = (float*)ptr; for (long i = start; i < end; i++) p[i] = Value(key, i, scale, offset); break; }
                case DType.F16:
                    { Half* p = (Half*)ptr; for (long i = start; i < end; i++) p[i] = (Half)Value(key, i, scale, offset); break; }
                case DType.BF16:
                    { ushort* p = (ushort*)ptr; for (long i = start; i < end; i++) p[i] = ToBf16(Value(key, i, scale, offset)); break; }
            }
        });
    }

    /// <summary>Arranges named tensors (HF names, as <see cref="Layout"/> makes them) into <see cref="ModelWeights"/>.</summary>
    public static ModelWeights Assemble(ModelConfig c, IReadOnlyDictionary<string, Tensor> t)
    {
        Tensor? Opt(string n) => t.TryGetValue(n, out var x) ? x : null;
        var layers = new LayerWeights[c.NumLayers];
        for (int l = 0; l < c.NumLayers; l++)
        {
            string p = $"model.layers.{l}.";
            layers[l] = new LayerWeights
            {
                AttnNorm = t[p + "input_layernorm.weight"],
                Wq = t[p + "self_attn.q_proj.weight"], Wk = t[p + "self_attn.k_proj.weight"], Wv = t[p + "self_attn.v_proj.weight"],
                Wo = t[p + "self_attn.o_proj.weight"],
                Bq = Opt(p + "self_attn.q_proj.bias"), Bk = Opt(p + "self_attn.k_proj.bias"), Bv = Opt(p + "self_attn.v_proj.bias"),
                Bo = Opt(p + "self_attn.o_proj.bias"),
                QNorm = Opt(p + "self_attn.q_norm.weight"), KNorm = Opt(p + "self_attn.k_norm.weight"),
                FfnNorm = t[p + "post_attention_layernorm.weight"],
                WGate = Opt(p + "mlp.gate_proj.weight"), WUp = Opt(p + "mlp.up_proj.weight"), WDown = Opt(p + "mlp.down_proj.weight"),
                BGate = Opt(p + "mlp.gate_proj.bias"), BUp = Opt(p + "mlp.up_proj.bias"), BDown = Opt(p + "mlp.down_proj.bias"),
                Router = Opt(p + "block_sparse_moe.gate.weight"),
                ExpertGate = c.IsMoE ? Enumerable.Range(0, c.NumExperts).Select(e => t[p + $"block_sparse_moe.experts.{e}.w1.weight"]).ToArray() : null,
                ExpertUp = c.IsMoE ? Enumerable.Range(0, c.NumExperts).Select(e => t[p + $"block_sparse_moe.experts.{e}.w3.weight"]).ToArray() : null,
                ExpertDown = c.IsMoE ? Enumerable.Range(0, c.NumExperts).Select(e => t[p + $"block_sparse_moe.experts.{e}.w2.weight"]).ToArray() : null,
            };
        }
        var emb = t["model.embed_tokens.weight"];
        return new ModelWeights
        {
            Embedding = emb,
            Layers = layers,
            FinalNorm = t["model.norm.weight"],
            LmHead = c.TieWordEmbeddings ? emb : t["lm_head.weight"],
        };
    }
}
