namespace Calm.Engine.Model;

/// <summary>Element types of stored tensors (safetensors names in comments).</summary>
public enum DType
{
    F32,    // "F32"
    F16,    // "F16"  IEEE half
    BF16,   // "BF16" bfloat16
    F64,    // "F64"  (parsed; not usable as weights)
    I64,    // "I64"
    I32,    // "I32"
    I16,    // "I16"
    I8,     // "I8"
    U8,     // "U8"
    Bool,   // "BOOL"
    F8E4M3, // "F8_E4M3"
    F8E5M2, // "F8_E5M2"
    // Appended (quantized weights; layouts in Quant/QuantFormats.cs). A weight tensor of these dtypes carries its
    // scales in Tensor.Scales. F8E4M3 above is the fp8 weight dtype (per-row fp32 scales).
    Int4,   // 4-bit signed integers, two per byte (low nibble first), groups of 32 with one fp16 scale each
}

public static class DTypes
{
    /// <summary>Bytes per element of the stored values (Int4: 1, two elements share a byte: use
    /// <see cref="Weights.Tensor.ByteLength"/> for sizes). Scales of quantized tensors are not included.</summary>
    public static int SizeOf(DType t) => t switch
    {
        DType.F64 or DType.I64 => 8,
        DType.F32 or DType.I32 => 4,
        DType.F16 or DType.BF16 or DType.I16 => 2,
        _ => 1,
    };

    public static bool TryParseSafetensors(string s, out DType t)
    {
        switch (s)
        {
            case "F32": t = DType.F32; return true;
            case "F16": t = DType.F16; return true;
            case "BF16": t = DType.BF16; return true;
            case "F64": t = DType.F64; return true;
            case "I64": t = DType.I64; return true;
            case "I32": t = DType.I32; return true;
            case "I16": t = DType.I16; return true;
            case "I8": t = DType.I8; return true;
            case "U8": t = DType.U8; return true;
            case "BOOL": t = DType.Bool; return true;
            case "F8_E4M3": t = DType.F8E4M3; return true;
            case "F8_E5M2": t = DType.F8E5M2; return true;
            default: t = default; return false;
        }
    }

    /// <summary>Weight dtypes the engine computes with.</summary>
    public static bool IsWeightType(DType t) => t is DType.F32 or DType.F16 or DType.BF16;

    /// <summary>Quantized weight dtypes (values + scales): fp8 (e4m3, per-row scales) and int4 (group-wise scales).</summary>
    public static bool IsQuantized(DType t) => t is DType.F8E4M3 or DType.Int4;

    /// <summary>
    /// -DType of Import-CalmModel / New-CalmModel: the float names of <see cref="TryParseName"/> plus the quantized
    /// fp8 (e4m3, aliases f8, e4m3, float8) and int4 (aliases q4, i4).
    /// </summary>
    public static bool TryParseWeightDType(string s, out DType t)
    {
        if (TryParseName(s, out t)) return true;
        switch (s.Trim().ToLowerInvariant())
        {
            case "fp8": case "f8": case "e4m3": case "f8e4m3": case "float8": case "float8_e4m3fn": t = DType.F8E4M3; return true;
            case "int4": case "q4": case "i4": t = DType.Int4; return true;
            default: t = default; return false;
        }
    }

    /// <summary>User-facing name: f32, f16, bf16, fp8, int4.</summary>
    public static string Name(DType t) => t switch
    {
        DType.F32 => "f32",
        DType.F16 => "f16",
        DType.BF16 => "bf16",
        DType.F8E4M3 => "fp8",
        DType.Int4 => "int4",
        _ => t.ToString().ToLowerInvariant(),
    };

    public static bool TryParseName(string s, out DType t)
    {
        switch (s.Trim().ToLowerInvariant())
        {
            case "f32": case "fp32": case "float32": case "float": t = DType.F32; return true;
            case "f16": case "fp16": case "float16": case "half": t = DType.F16; return true;
            case "bf16": case "bfloat16": t = DType.BF16; return true;
            default: t = default; return false;
        }
    }
}
