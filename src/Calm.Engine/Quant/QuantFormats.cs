using System.Runtime.CompilerServices;

namespace Calm.Engine.Quant;

/// <summary>
/// The quantized weight formats (what Import-CalmModel -DType fp8|int4 produces). Both are row-major like every other
/// weight: W [R, C], R output rows (features), C input columns; a quantized tensor is two native buffers, the values
/// (<see cref="Weights.Tensor.Data"/>) and the scales (<see cref="Weights.Tensor.Scales"/>), each 64-byte aligned.
///
/// <para><b>fp8</b> (<see cref="Model.DType.F8E4M3"/>): per-output-channel scaled e4m3.</para>
/// <code>
///   values  byte  q[R][C]      row r at Data + r*C           one OCP FP8 E4M3 ("FN") byte per weight
///   scales  fp32  s[R]         at Scales + 4*r               one little-endian IEEE float per output row
///   w[r][c] = e4m3(q[r][c]) * s[r]
///   e4m3 byte = S.EEEE.MMM: sign bit 7, exponent bits 6..3 (bias 7), mantissa bits 2..0;
///     E = 0: subnormal (M/8) * 2^-6;  E = 1..15: (1 + M/8) * 2^(E-7);  S.1111.111 (0x7F, 0xFF) = NaN; no infinities;
///     largest finite 0x7E = 448. This is __nv_fp8_e4m3 / torch.float8_e4m3fn, so cvt.rn.f16x2.e4m3x2 reads it.
///   s[r] = absmax(row r) / 448 (1 when the row is all zeros); q = round-to-nearest-even of the fp32 quotient w / s[r],
///   saturated to ±448 (what cvt.rn.satfinite.e4m3x2.f32 does with an fp32 division).
/// </code>
/// Rows are C bytes: 16-byte aligned whenever C % 16 == 0 (every real model); a GPU kernel loads 16 weights per uint4.
///
/// <para><b>int4</b> (<see cref="Model.DType.Int4"/>): group-wise symmetric 4-bit, group = 32 consecutive elements of a row.</para>
/// <code>
///   values  byte  p[R][C/2]    row r at Data + r*C/2         two weights per byte, LOW nibble first:
///           element 2j of a row = p[j] &amp; 0xF, element 2j+1 = p[j] >> 4 (unsigned nibble u in 0..15)
///   scales  fp16  d[R][C/32]   at Scales + 2*(r*C/32 + g)    one IEEE half per group g = c / 32
///   w[r][c] = (u - 8) * d[r][c/32]                           (signed value -8..7)
///   d = m / -8 where m is the group's element of largest magnitude (sign kept), so m maps exactly to -8 and the
///   other elements to round-half-even(fp32 w / d) + 8 clamped to 0..15 (llama.cpp Q4_0's choice of levels); d = 0 for
///   an all-zero group. 0.5 + 2/32 = 0.5625 bytes per weight (SolModel.BytesPerElement("int4") = 0.5 + 2/32).
/// </code>
/// A group is exactly 16 bytes (one uint4 load) and a row of values is 16-byte aligned. When C is not a multiple of
/// 32 (synthetic presets; no real model) each row is padded to whole groups: the row stride is ceil(C/32)*16 bytes,
/// ceil(C/32) scales per row, and the padding nibbles are 8 (value 0) -- so the rows above read
///   values  p[R][ceil(C/32)*16],  scales d[R][ceil(C/32)]
/// and a kernel may multiply a whole last group as long as it does not read x past C (or x is zero-padded).
/// Symmetric was chosen over asymmetric (scale + min): the scale stream is half the size (matching the SOL byte
/// model), a group costs one fma, and its held-out perplexity on models/tiny-wp is already +0.81% vs bf16 (rule:
/// 5%; fp8 +0.02%, rule 1%), bench/RESULTS.md "Quantization quality (CPU)".
///
/// <para>On the GPU the CUDA backend keeps these bytes but stores the int4 matrices its tensor-core kernels read in
/// another order (<see cref="Cuda.QuantTileOrder"/>: 8-row blocks, reordered on the device at load); the host formats
/// and every file stay row-major.</para>
///
/// <para>What is quantized: every projection matrix (q, k, v, o, gate, up, down and the MoE experts) and the
/// classifier (lm_head; a tied classifier gets its own quantized copy, the embedding table keeps the source dtype for
/// the row gather). Norms, biases, the MoE router and the embedding stay in their source dtype.</para>
/// </summary>
public static class QuantFormats
{
    /// <summary>Elements per int4 group (one fp16 scale each).</summary>
    public const int Int4GroupSize = 32;
    /// <summary>int4 groups (and fp16 scales) per row of <paramref name="cols"/> elements: ceil(cols / 32).</summary>
    public static long Int4Groups(long cols) => (cols + Int4GroupSize - 1) / Int4GroupSize;
    /// <summary>Bytes of one int4 row of values (row stride): 16 per group.</summary>
    public static long Int4RowBytes(long cols) => Int4Groups(cols) * (Int4GroupSize / 2);

    /// <summary>Largest finite e4m3 value.</summary>
    public const float E4M3Max = 448f;

    /// <summary>All 256 e4m3 bytes as floats (NaN for 0x7F and 0xFF).</summary>
    public static readonly float[] E4M3Table = BuildTable();

    private static float[] BuildTable()
    {
        var t = new float[256];
        for (int b = 0; b < 256; b++)
        {
            int e = (b >> 3) & 0xF, m = b & 7;
            double v = (b & 0x7F) == 0x7F ? double.NaN : e == 0 ? m / 8.0 * Math.Pow(2, -6) : (1 + m / 8.0) * Math.Pow(2, e - 7);
            t[b] = (float)((b & 0x80) != 0 ? -v : v);
        }
        return t;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float E4M3ToFloat(byte b) => E4M3Table[b];

    /// <summary>
    /// Float to e4m3, round to nearest even, saturating to ±448 (also for ±inf); NaN to 0x7F. Exact: works on the
    /// float's bits (the spacing of e4m3 in [2^k, 2^k+1) is 2^(k-3), subnormals 2^-9).
    /// </summary>
    public static byte FloatToE4M3(float x)
    {
        if (float.IsNaN(x)) return 0x7F;
        uint bits = BitConverter.SingleToUInt32Bits(x);
        byte sign = (byte)((bits >> 24) & 0x80);
        float a = MathF.Abs(x);
        if (a >= 464f) return (byte)(sign | 0x7E);        // 464 = halfway between 448 and (virtual) 480: saturate
        if (a < MathF.ScaleB(1f, -6))
        {
            // Subnormal range: multiples of 2^-9; round half to even on the integer count.
            float n = MathF.Round(a * 512f, MidpointRounding.ToEven); // 0..8 (8 = smallest normal 2^-6)
            return (byte)(sign | (int)n);                  // n = 8 gives 0b0000_1000 = E=1, M=0: correct
        }
        // Normal: keep 3 mantissa bits of the float with round-half-even on the dropped 20 bits.
        uint ab = bits & 0x7FFFFFFF;
        uint lsb = (ab >> 20) & 1;
        ab += 0x7FFFF + lsb;
        ab &= 0xFFF00000;
        int exp = (int)(ab >> 23) - 127 + 7;               // e4m3 exponent field
        int man = (int)((ab >> 20) & 7);
        if (exp > 15 || (exp == 15 && man == 7)) return (byte)(sign | 0x7E); // rounded past 448: saturate
        return (byte)(sign | (exp << 3) | man);
    }

    /// <summary>Signed value (-8..7) of element <paramref name="half"/> (0 = low nibble) of a packed int4 byte.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Int4Value(byte packed, int half) => ((half == 0 ? packed : packed >> 4) & 0xF) - 8;
}
