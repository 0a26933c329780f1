using System.Text.Json;
using Calm.Engine.Model;
using Calm.Engine.Weights;

namespace Calm.Engine.Quant;

/// <summary>
/// What config.json's <c>quantization_config</c> says about a pre-quantized checkpoint that Calm reads: fp8 weights
/// (safetensors F8_E4M3 = torch.float8_e4m3fn, [out, in] like the unquantized weight) with multiplicative scales,
/// w = e4m3(q) * scale, in the formats of the common tools:
/// <code>
///   quant_method          made by                          weight scale tensor     scale shape (granularity)
///   compressed-tensors    llm-compressor (format            X.weight_scale          [1] tensor, [out, 1] channel,
///                         float-quantized / naive-quantized,                        [ceil(out/b0), ceil(in/b1)] block
///                         weights num_bits 8, type float)                           (weights.block_structure [b0, b1])
///   fp8                   AutoFP8 / neuralmagic             X.weight_scale          [] or [1] tensor
///   fp8                   transformers fine-grained fp8     X.weight_scale_inv      [ceil(out/128), ceil(in/128)] block
///                         (DeepSeek-V3, Qwen3 -FP8)                                 (weight_block_size [128, 128])
///   fbgemm_fp8            Meta (Llama-3.1-405B-FP8)         X.weight_scale          [out, 1] channel
/// </code>
/// Scales are F32, BF16 or F16; "weight_scale_inv" multiplies too (the name is historical). Activation scales
/// (input_scale, activation_scale) are not used: Calm keeps activations in fp32. Layers a tool left unquantized
/// (lm_head, the MoE router, norms, embeddings; <c>ignore</c> / <c>modules_to_not_convert</c>) arrive as
/// f32/f16/bf16 tensors and are read as such; the granularity of each tensor is read from its scale's shape, so
/// the lists need not be interpreted.
/// Other quantization methods (gptq, awq, bitsandbytes, int4/int8 compressed-tensors, ...) are refused with
/// <see cref="ErrorIds.QuantizationNotSupported"/> before any tensor is read.
/// </summary>
public sealed record CheckpointQuantization(string Method, int[]? BlockSize, string Source)
{
    /// <summary>The quant_method values read (the others are refused).</summary>
    public static readonly IReadOnlyList<string> Methods = new[] { "compressed-tensors", "fp8", "fbgemm_fp8" };

    /// <summary>Block of a fine-grained fp8 checkpoint when config.json names none (transformers' default).</summary>
    public static readonly int[] DefaultBlock = { 128, 128 };

    /// <summary>The quantization of the checkpoint whose parsed config.json (a JSON object) is <paramref name="root"/>
    /// (<see cref="Model.ConfigReader.ReadWithQuantization"/>); null when it has none.</summary>
    public static CheckpointQuantization? FromConfig(JsonElement root, string source)
    {
        if (!root.TryGetProperty("quantization_config", out var q) || q.ValueKind == JsonValueKind.Null) return null;
        if (q.ValueKind != JsonValueKind.Object) throw Invalid(source, "'quantization_config' must be an object");
        string method = Str(q, "quant_method", source) ??
            throw Invalid(source, "'quantization_config' has no 'quant_method'");
        if (!Methods.Contains(method))
            throw Unsupported(source, $"quantized with '{Short(method)}' (quantization_config.quant_method)");
        int[]? block = null;
        if (method == "fp8")
        {
            if (q.TryGetProperty("weight_block_size", out var b) && b.ValueKind != JsonValueKind.Null) block = Ints(b, "quantization_config.weight_block_size", source);
            string? fmt = Str(q, "fmt", source);
            if (fmt is not null && fmt != "e4m3")
                throw Unsupported(source, $"an fp8 checkpoint in the '{Short(fmt)}' format (quantization_config.fmt; Calm reads e4m3)");
        }
        else if (method == "compressed-tensors")
        {
            string? format = Str(q, "format", source);
            if (format == "dense") return null;   // saved uncompressed: the weights are f32/f16/bf16 and read as such
            if (format is not null && format != "float-quantized" && format != "naive-quantized")
                throw Unsupported(source, $"compressed-tensors in the '{Short(format)}' format (Calm reads float-quantized fp8)");
            if (q.TryGetProperty("config_groups", out var groups) && groups.ValueKind == JsonValueKind.Object)
                foreach (var g in groups.EnumerateObject())
                {
                    if (g.Value.ValueKind != JsonValueKind.Object || !g.Value.TryGetProperty("weights", out var w) || w.ValueKind != JsonValueKind.Object) continue;
                    string where = $"quantization_config.config_groups.{g.Name}.weights";
                    int bits = w.TryGetProperty("num_bits", out var nb) && nb.TryGetInt32(out int n) ? n : 8;
                    string type = Str(w, "type", source) ?? "float";
                    if (bits != 8 || type != "float")
                        throw Unsupported(source, $"{bits}-bit {Short(type)} weights ({where}; Calm reads 8-bit float weights)");
                    if (w.TryGetProperty("block_structure", out var bs) && bs.ValueKind != JsonValueKind.Null)
                        block = Ints(bs, where + ".block_structure", source);
                }
        }
        return new CheckpointQuantization(method, block, source);
    }

    private static string? Str(JsonElement o, string name, string source)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.String) throw Invalid(source, $"'{name}' in quantization_config must be a string");
        return v.GetString();
    }

    private static int[] Ints(JsonElement v, string name, string source)
    {
        if (v.ValueKind != JsonValueKind.Array || v.GetArrayLength() != 2)
            throw Invalid(source, $"'{name}' must be a list of two block sizes");
        var r = v.EnumerateArray().Select(e => e.TryGetInt32(out int i) && i > 0 ? i : 0).ToArray();
        if (r.Any(i => i == 0)) throw Invalid(source, $"'{name}' must hold two positive integers");
        return r;
    }

    private static string Short(string s) => s.Length > 40 ? s[..40] + "..." : s;

    private static CalmException Invalid(string source, string what) => new(ErrorIds.ConfigInvalid, CalmErrorKind.InvalidData,
        $"{source}: {what}. Restore the config.json saved with the model.", source);

    private static CalmException Unsupported(string source, string what) => new(ErrorIds.QuantizationNotSupported, CalmErrorKind.NotSupported,
        $"{source}: this checkpoint is {what}. Calm reads pre-quantized fp8 checkpoints ({string.Join(", ", Methods)}) " +
        "and unquantized f32/f16/bf16 ones; use the unquantized model and Import-CalmModel -DType fp8 or int4 to quantize it at import.", source);
}

/// <summary>
/// Turns the fp8 tensors of a pre-quantized checkpoint (<see cref="CheckpointQuantization"/>) into Calm's fp8 format
/// (<see cref="QuantFormats"/>: one fp32 scale per row). Tensor and channel scales are expanded to one per row and the
/// values stay where they are (memory-mapped; exact). Block scales vary along a row, so those rows are dequantized and
/// requantized with one scale per row (values re-rounded); <see cref="RequantizedRelativeRms"/> measures the change.
/// </summary>
public sealed unsafe class CheckpointFp8Reader(CheckpointQuantization? quant, NativeWeightStore store, CancellationToken ct)
{
    /// <summary>Rows x columns of a scale block: the checkpoint's, else <see cref="CheckpointQuantization.DefaultBlock"/>.</summary>
    public int[] Block { get; } = quant?.BlockSize ?? CheckpointQuantization.DefaultBlock;

    private double _errSq, _refSq;
    private readonly object _lock = new();

    /// <summary>Tensors whose block scales were converted to row scales (their values re-rounded).</summary>
    public List<string> Requantized { get; } = new();

    /// <summary>sqrt(sum (requantized - checkpoint)^2 / sum checkpoint^2) over every requantized tensor (0 when none).</summary>
    public double RequantizedRelativeRms => _refSq > 0 ? Math.Sqrt(_errSq / _refSq) : 0;

    /// <summary>Names a scale of weight <paramref name="name"/> may have, in the order they are looked for.</summary>
    public static string[] ScaleNames(string name) => name.EndsWith(".weight", StringComparison.Ordinal)
        ? new[] { name + "_scale", name + "_scale_inv" }
        : new[] { name + "_scale", name + "_scale_inv", name + ".weight_scale", name + ".weight_scale_inv" };

    /// <summary>
    /// <paramref name="w"/> (F8E4M3, 2-D [R, C] or stacked 3-D [E, R, C]) with one fp32 scale per row from
    /// <paramref name="scale"/>: 1 element (the tensor), TotalRows elements ([R, 1], [R], [E, R, 1]: each row),
    /// E elements of a 3-D tensor ([E], [E, 1, 1]: each matrix), or blocks ([(E,) ceil(R/b0), ceil(C/b1)]).
    /// </summary>
    public Tensor ToPerRow(Tensor w, Tensor scale)
    {
        long rows = w.TotalRows, cols = w.Cols, n = scale.ElementCount;
        if (!DTypes.IsWeightType(scale.DType))
            throw new CalmException(ErrorIds.TensorDTypeUnsupported, CalmErrorKind.NotSupported,
                $"{scale.Source}: scale '{scale.Name}' of the fp8 weight '{w.Name}' is {DTypes.Name(scale.DType)}; scales are f32, bf16 or f16. Download the model folder again.",
                $"{scale.Source}:{scale.Name}");
        long perMatrix = w.Rank == 3 ? w.Shape[0] : 1, matrixRows = rows / perMatrix;
        float* s = (float*)store.Allocate(rows * sizeof(float));
        if (n == 1 || n == rows || (w.Rank == 3 && n == perMatrix && scale.Shape[0] == perMatrix))
        {
            // tensor / row / matrix granularity: the values are kept
            for (long r = 0; r < rows; r++)
                s[r] = Checked(w, scale, n == 1 ? 0 : n == rows ? r : r / matrixRows);
            return new Tensor(w.Name, DType.F8E4M3, (long[])w.Shape.Clone(), w.Data, w.Source, (nint)s);
        }
        var block = BlockOf(w, scale, matrixRows, cols);
        return Requantize(w, scale, block, matrixRows, s);
    }

    private (long B0, long B1) BlockOf(Tensor w, Tensor scale, long matrixRows, long cols)
    {
        long b0 = Block[0], b1 = Block[1];
        long g0 = (matrixRows + b0 - 1) / b0, g1 = (cols + b1 - 1) / b1;
        long[] want = w.Rank == 3 ? new[] { w.Shape[0], g0, g1 } : new[] { g0, g1 };
        if (!scale.Shape.AsSpan().SequenceEqual(want))
            throw new CalmException(ErrorIds.TensorShapeMismatch, CalmErrorKind.InvalidData,
                $"{scale.Source}: scale '{scale.Name}' has shape {Tensor.ShapeText(scale.Shape)}; the fp8 weight '{w.Name}' {Tensor.ShapeText(w.Shape)} " +
                $"needs one scale ([1]), one per row ([{w.TotalRows}, 1]) or one per {b0}x{b1} block ({Tensor.ShapeText(want)}). " +
                "The scales and the weights do not match; download the model folder again.", $"{scale.Source}:{scale.Name}");
        return (b0, b1);
    }

    private Tensor Requantize(Tensor w, Tensor scale, (long B0, long B1) block, long matrixRows, float* rowScale)
    {
        long rows = w.TotalRows, cols = w.Cols;
        long g0 = (matrixRows + block.B0 - 1) / block.B0, g1 = (cols + block.B1 - 1) / block.B1;
        byte* src = (byte*)w.Data, dst = (byte*)store.Allocate(rows * cols);
        int c = checked((int)cols);
        // every block scale checked once, before the rows use them
        for (long i = 0; i < scale.ElementCount; i++) Checked(w, scale, i);
        Parallel.For(0L, rows, new ParallelOptions { CancellationToken = ct }, () => (new float[c], 0.0, 0.0), (r, _, st) =>
        {
            var (buf, e2, r2) = st;
            long m = r / matrixRows, rr = r % matrixRows, sBase = (m * g0 + rr / block.B0) * g1;
            fixed (float* f = buf)
            {
                for (long b = 0; b < g1; b++)
                {
                    float sb = scale.GetFloat(sBase + b);
                    for (long j = b * block.B1; j < Math.Min(cols, (b + 1) * block.B1); j++) f[j] = QuantFormats.E4M3ToFloat(src[r * cols + j]) * sb;
                }
                Quantizer.QuantizeRowFp8(f, c, dst + r * cols, rowScale + r);
                float rs = rowScale[r];
                for (int j = 0; j < c; j++)
                {
                    double d = (double)QuantFormats.E4M3ToFloat(dst[r * cols + j]) * rs - f[j];
                    if (double.IsFinite(d)) { e2 += d * d; r2 += (double)f[j] * f[j]; }
                }
            }
            return (buf, e2, r2);
        }, st => { lock (_lock) { _errSq += st.Item2; _refSq += st.Item3; } });
        Requantized.Add(w.Name);   // ToPerRow runs on the loader's thread
        return new Tensor(w.Name, DType.F8E4M3, (long[])w.Shape.Clone(), (nint)dst, w.Source, (nint)rowScale);
    }

    /// <summary>Element <paramref name="i"/> of a scale tensor, which must be finite and not negative (0: an all-zero block).</summary>
    private static float Checked(Tensor w, Tensor scale, long i)
    {
        float v = scale.GetFloat(i);
        if (!(v >= 0) || !float.IsFinite(v))
            throw new CalmException(ErrorIds.QuantScaleInvalid, CalmErrorKind.InvalidData,
                $"{scale.Source}: scale '{scale.Name}' of the fp8 weight '{w.Name}' holds {v} at element {i}; a scale must be finite and not negative. " +
                "The file is damaged; download the model folder again.", $"{scale.Source}:{scale.Name}");
        return v;
    }
}
