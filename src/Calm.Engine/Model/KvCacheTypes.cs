namespace Calm.Engine.Model;

/// <summary>
/// KV cache element types (-KvCacheDType): <c>f16</c> (the CUDA default; the CPU reference rounds its f32 cache to
/// f16 values) and <c>fp8</c>: OCP e4m3 with one f32 scale per (layer, kv head, position) row for K and one for V,
/// scale = amax(row) / 448 (0 for an all-zero row), value = e4m3(x / scale) (round to nearest even, saturating),
/// read back as e4m3 · scale (<see cref="KvFp8"/>; the CUDA kernels: kernels/fp8.cuh).
/// </summary>
public static class KvCacheTypes
{
    public const string F16 = "f16";
    public const string Fp8 = "fp8";

    /// <summary>The values -KvCacheDType takes, with a description (argument completers, help).</summary>
    public static readonly (string Name, string Description)[] Choices =
    {
        (F16, "16-bit float KV cache (the CUDA default)"),
        (Fp8, "fp8 e4m3 KV cache with one f32 scale per row of K and V: half the bytes of f16"),
    };

    /// <summary>The canonical name of <paramref name="name"/> (f16, fp8), or null when it is not a KV cache type.</summary>
    public static string? Normalize(string? name) => name?.Trim().ToLowerInvariant() switch
    {
        "f16" or "fp16" or "float16" or "half" => F16,
        "fp8" or "f8" or "e4m3" or "f8e4m3" or "fp8e4m3" => Fp8,
        _ => null,
    };

    /// <summary>The canonical name, or a <see cref="CalmException"/> (Calm.InvalidArgument) naming the parameter.</summary>
    public static string Parse(string name, string parameter = "KvCacheDType")
        => Normalize(name) ?? throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
            $"-{parameter} '{name}' is not a KV cache type. Use f16 or fp8.", parameter);
}

/// <summary>The fp8 KV cache row format on the host (the CPU reference; the CUDA kernels do the same, bit for bit).</summary>
public static class KvFp8
{
    /// <summary>Quantizes one row: q[i] = e4m3(x[i] / scale), returns scale = amax / 448 (0 and all-zero bytes for an
    /// all-zero row).</summary>
    public static float QuantizeRow(ReadOnlySpan<float> x, Span<byte> q)
    {
        float amax = 0f;
        foreach (var v in x) amax = MathF.Max(amax, MathF.Abs(v));
        float scale = amax / Quant.QuantFormats.E4M3Max;
        if (!(scale > 0f)) { q[..x.Length].Clear(); return 0f; }
        for (int i = 0; i < x.Length; i++) q[i] = Quant.QuantFormats.FloatToE4M3(x[i] / scale);
        return scale;
    }

    /// <summary>y[i] = e4m3(q[i]) · scale.</summary>
    public static void DequantizeRow(ReadOnlySpan<byte> q, float scale, Span<float> y)
    {
        var table = Quant.QuantFormats.E4M3Table;
        for (int i = 0; i < y.Length; i++) y[i] = table[q[i]] * scale;
    }
}
