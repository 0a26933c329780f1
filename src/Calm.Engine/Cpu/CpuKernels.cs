using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Calm.Engine.Model;
using Calm.Engine.Weights;
using Tensor = Calm.Engine.Weights.Tensor;

namespace Calm.Engine.Cpu;

/// <summary>
/// SIMD kernels of the CPU reference backend: dot products of a stored weight row (F32, F16, BF16; fp8 and int4 of
/// Quant/QuantFormats.cs with their scales) with an fp32 vector,
/// matrix-vector (decode) and matrix-matrix (prefill) products parallelised over rows. fp32 accumulation everywhere;
/// weights are converted on the fly and never copied. Every op has a naive double-precision reference in the test
/// project (tests/Calm.Engine.Tests/Cpu/NaiveOps.cs).
/// Notation: W [R, C] row-major (R output rows, C = input features), X [N, C] (N tokens), Y [N, R].
/// </summary>
public static unsafe class CpuKernels
{
    /// <summary>bfloat16 bits to float: the bf16 is the upper half of an fp32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float BF16ToFloat(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    // ------------------------------------------------------------------------------------------------------------
    // Dot products: one stored row w[0..n) with x[0..n) (fp32), fp32 accumulation.
    // ------------------------------------------------------------------------------------------------------------

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float DotF32(float* w, float* x, int n)
        => TensorPrimitives.Dot(new ReadOnlySpan<float>(w, n), new ReadOnlySpan<float>(x, n));

    /// <summary>bf16 row · fp32 vector: widen ushort→uint, shift left 16, reinterpret as float, FMA; scalar tail.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float DotBF16(ushort* w, float* x, int n)
    {
        int i = 0;
        float sum = 0f;
        if (Vector256.IsHardwareAccelerated && n >= 16)
        {
            var a0 = Vector256<float>.Zero; var a1 = Vector256<float>.Zero;
            var a2 = Vector256<float>.Zero; var a3 = Vector256<float>.Zero;
            for (; i <= n - 32; i += 32)
            {
                var (l0, h0) = Vector256.Widen(Vector256.Load(w + i));        // 16 bf16 -> 2 x 8 uint
                var (l1, h1) = Vector256.Widen(Vector256.Load(w + i + 16));
                a0 = Fma256(Vector256.ShiftLeft(l0, 16).AsSingle(), Vector256.Load(x + i), a0);
                a1 = Fma256(Vector256.ShiftLeft(h0, 16).AsSingle(), Vector256.Load(x + i + 8), a1);
                a2 = Fma256(Vector256.ShiftLeft(l1, 16).AsSingle(), Vector256.Load(x + i + 16), a2);
                a3 = Fma256(Vector256.ShiftLeft(h1, 16).AsSingle(), Vector256.Load(x + i + 24), a3);
            }
            for (; i <= n - 16; i += 16)
            {
                var (l0, h0) = Vector256.Widen(Vector256.Load(w + i));
                a0 = Fma256(Vector256.ShiftLeft(l0, 16).AsSingle(), Vector256.Load(x + i), a0);
                a1 = Fma256(Vector256.ShiftLeft(h0, 16).AsSingle(), Vector256.Load(x + i + 8), a1);
            }
            sum = Vector256.Sum((a0 + a1) + (a2 + a3));
        }
        else if (Vector128.IsHardwareAccelerated && n >= 8)
        {
            var a0 = Vector128<float>.Zero; var a1 = Vector128<float>.Zero;
            for (; i <= n - 8; i += 8)
            {
                var (l0, h0) = Vector128.Widen(Vector128.Load(w + i));
                a0 += Vector128.ShiftLeft(l0, 16).AsSingle() * Vector128.Load(x + i);
                a1 += Vector128.ShiftLeft(h0, 16).AsSingle() * Vector128.Load(x + i + 4);
            }
            sum = Vector128.Sum(a0 + a1);
        }
        for (; i < n; i++) sum += BF16ToFloat(w[i]) * x[i];
        return sum;
    }

    /// <summary>
    /// f16 row · fp32 vector. .NET 8 exposes no F16C, so halves are widened with integer bit tricks (exact for every
    /// pattern: normals, subnormals, zeros, inf, NaN), 16 per step; scalar tail.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float DotF16(Half* w, float* x, int n)
    {
        int i = 0;
        float sum = 0f;
        if (Vector256.IsHardwareAccelerated && n >= 16)
        {
            var a0 = Vector256<float>.Zero; var a1 = Vector256<float>.Zero;
            for (; i <= n - 16; i += 16)
            {
                var (l, h) = Vector256.Widen(Vector256.Load((ushort*)w + i));
                a0 = Fma256(HalfBitsToSingle(l), Vector256.Load(x + i), a0);
                a1 = Fma256(HalfBitsToSingle(h), Vector256.Load(x + i + 8), a1);
            }
            sum = Vector256.Sum(a0 + a1);
        }
        else
        {
            // No 256-bit SIMD (e.g. ARM): TensorPrimitives converts blocks into a stack buffer, then Dot.
            float* buf = stackalloc float[512];
            for (; i <= n - 512; i += 512)
            {
                TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(w + i, 512), new Span<float>(buf, 512));
                sum += TensorPrimitives.Dot(new ReadOnlySpan<float>(buf, 512), new ReadOnlySpan<float>(x + i, 512));
            }
        }
        for (; i < n; i++) sum += (float)w[i] * x[i];
        return sum;
    }

    /// <summary>
    /// 8 IEEE half bit patterns (zero-extended to uint) to floats, exactly: exponent+mantissa moved into place and
    /// multiplied by 2^112 (rebias 15 -> 127; subnormal halves come out right because the fp32 product is exact),
    /// exponent forced to 255 for inf/NaN, sign or-ed back.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> HalfBitsToSingle(Vector256<uint> h)
    {
        var f = Vector256.ShiftLeft(h & Vector256.Create(0x7fffu), 13).AsSingle() * Vector256.Create(0x77800000u).AsSingle(); // * 2^112
        var infNan = Vector256.GreaterThanOrEqual(f, Vector256.Create(65536f)).AsUInt32() & Vector256.Create(0x7f800000u);
        return (f.AsUInt32() | infNan | Vector256.ShiftLeft(h & Vector256.Create(0x8000u), 16)).AsSingle();
    }

    /// <summary>f16 row to fp32 (same bit tricks as <see cref="DotF16"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void ConvertF16(Half* src, float* dst, int n)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= n - 16; i += 16)
            {
                var (l, h) = Vector256.Widen(Vector256.Load((ushort*)src + i));
                HalfBitsToSingle(l).Store(dst + i);
                HalfBitsToSingle(h).Store(dst + i + 8);
            }
        }
        for (; i < n; i++) dst[i] = (float)src[i];
    }

    /// <summary>Dot of row <paramref name="row"/> of a stored matrix with x (any weight dtype; scales for fp8/int4).</summary>
    public static float DotRow(nint data, DType dtype, long row, int cols, float* x, nint scales = 0) => dtype switch
    {
        DType.BF16 => DotBF16((ushort*)data + row * cols, x, cols),
        DType.F16 => DotF16((Half*)data + row * cols, x, cols),
        DType.F32 => DotF32((float*)data + row * cols, x, cols),
        DType.F8E4M3 => DotFp8((byte*)data + row * cols, scales == 0 ? 1f : ((float*)scales)[row], x, cols),
        DType.Int4 => DotInt4((byte*)data + row * Quant.QuantFormats.Int4RowBytes(cols), (Half*)scales + row * Quant.QuantFormats.Int4Groups(cols), x, cols),
        _ => throw new NotSupportedException($"weight dtype {dtype}"),
    };

    // ------------------------------------------------------------------------------------------------------------
    // Quantized rows (layouts: Quant/QuantFormats.cs). fp8: e4m3 byte -> float by the 256-entry table, times the
    // row's fp32 scale. int4: (nibble - 8) times the group's fp16 scale, low nibble first.
    // ------------------------------------------------------------------------------------------------------------

    /// <summary>
    /// fp8 row · x: scale * sum(e4m3(q[i]) * x[i]). AVX2: 8 bytes sign-extended to 8 ints, sign and the 7 magnitude
    /// bits moved to the fp32 sign and exponent/mantissa positions and multiplied by 2^120 (rebias 7 -> 127; exact for
    /// subnormals too), NaN codes (S.1111.111) forced to NaN, then FMA; scalar table lookups for the tail.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float DotFp8(byte* q, float scale, float* x, int n)
    {
        int i = 0;
        float sum = 0f;
        if (Avx2.IsSupported && n >= 16)
        {
            var a0 = Vector256<float>.Zero; var a1 = Vector256<float>.Zero;
            var a2 = Vector256<float>.Zero; var a3 = Vector256<float>.Zero;
            for (; i <= n - 32; i += 32)
            {
                a0 = Fma256(E4M3x8(q + i), Vector256.Load(x + i), a0);
                a1 = Fma256(E4M3x8(q + i + 8), Vector256.Load(x + i + 8), a1);
                a2 = Fma256(E4M3x8(q + i + 16), Vector256.Load(x + i + 16), a2);
                a3 = Fma256(E4M3x8(q + i + 24), Vector256.Load(x + i + 24), a3);
            }
            for (; i <= n - 8; i += 8) a0 = Fma256(E4M3x8(q + i), Vector256.Load(x + i), a0);
            sum = Vector256.Sum((a0 + a1) + (a2 + a3));
        }
        fixed (float* lut = Quant.QuantFormats.E4M3Table)
            for (; i < n; i++) sum += lut[q[i]] * x[i];
        return scale * sum;
    }

    /// <summary>8 e4m3 bytes at <paramref name="q"/> to 8 floats (see <see cref="DotFp8"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> E4M3x8(byte* q)
    {
        // sign-extended bytes: after << 20 the sign fills bits 27..31 and the 7 magnitude bits sit at 20..26, so one
        // mask keeps sign (31) and magnitude; the fp32 product then carries the sign (0x80 -> -0)
        var v = Avx2.ConvertToVector256Int32((sbyte*)q).AsUInt32();
        var f = (Vector256.ShiftLeft(v, 20) & Vector256.Create(0x87F00000u)).AsSingle() * Vector256.Create(0x7B800000u).AsSingle(); // * 2^120
        var nan = Vector256.Equals(v & Vector256.Create(0x7Fu), Vector256.Create(0x7Fu)) & Vector256.Create(0x7FC00000u);
        return (f.AsUInt32() | nan).AsSingle();
    }

    /// <summary>
    /// int4 row · x: per group d * sum((u - 8) * x); a partial last group (n % 32 != 0) reads x only up to n. AVX2: a
    /// group's 16 bytes split into low and high nibbles, interleaved back into element order as bytes and widened 8
    /// at a time; the fp16 group scales converted 8 at a time with the f16 bit trick.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float DotInt4(byte* p, Half* d, float* x, int n)
    {
        const int G = Quant.QuantFormats.Int4GroupSize;
        float sum = 0f;
        int full = n / G;
        if (full * G != n)
        {
            float a = 0;
            for (int c = full * G; c < n; c++) a += (((c & 1) == 0 ? p[c / 2] & 0xF : p[c / 2] >> 4) - 8) * x[c];
            sum = (float)d[full] * a;
        }
        if (Avx2.IsSupported)
        {
            var acc = Vector256<float>.Zero;
            var nib = Vector128.Create((byte)0x0F);
            var eight8 = Vector128.Create((byte)8);
            // the group scales as floats, 8 at a time (exact bit conversion; (float)Half per group cost as much as the dot)
            float* ds = stackalloc float[8];
            for (int g = 0; g < full; g++)
            {
                if ((g & 7) == 0)
                {
                    if (g + 8 <= full) HalfBitsToSingle(Vector256.WidenLower(Vector128.Load((ushort*)d + g).ToVector256Unsafe())).Store(ds);
                    else for (int k = 0; k < full - g; k++) ds[k] = (float)d[g + k];
                }
                byte* pg = p + g * (G / 2);
                float* xg = x + g * G;
                // 16 bytes = 32 nibbles: low and high nibbles interleaved back into element order as bytes, minus 8
                // (signed -8..7), then 8 at a time widened to int32 and converted
                var b = Vector128.Load(pg);
                var lo = b & nib;
                var hi = Sse2.ShiftRightLogical(b.AsUInt16(), 4).AsByte() & nib;
                var e0 = Sse2.Subtract(Sse2.UnpackLow(lo, hi), eight8).AsSByte();    // elements 0..15
                var e1 = Sse2.Subtract(Sse2.UnpackHigh(lo, hi), eight8).AsSByte();   // elements 16..31
                var s0 = Fma256(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(e0)), Vector256.Load(xg), Vector256<float>.Zero);
                var s1 = Fma256(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(Sse2.ShiftRightLogical128BitLane(e0, 8))), Vector256.Load(xg + 8), Vector256<float>.Zero);
                s0 = Fma256(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(e1)), Vector256.Load(xg + 16), s0);
                s1 = Fma256(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(Sse2.ShiftRightLogical128BitLane(e1, 8))), Vector256.Load(xg + 24), s1);
                acc = Fma256(s0 + s1, Vector256.Create(ds[g & 7]), acc);
            }
            return sum + Vector256.Sum(acc);
        }
        for (int g = 0; g < full; g++)
        {
            byte* pg = p + g * (G / 2);
            float* xg = x + g * G;
            float a = 0, b = 0;
            for (int j = 0; j < G / 2; j++)
            {
                int v = pg[j];
                a += ((v & 0xF) - 8) * xg[2 * j];
                b += ((v >> 4) - 8) * xg[2 * j + 1];
            }
            sum += (float)d[g] * (a + b);
        }
        return sum;
    }

    /// <summary>fp8 row to fp32: dst[i] = e4m3(q[i]) * scale.</summary>
    public static void ConvertFp8(byte* q, float scale, float* dst, int n)
    {
        fixed (float* lut = Quant.QuantFormats.E4M3Table)
            for (int i = 0; i < n; i++) dst[i] = lut[q[i]] * scale;
    }

    /// <summary>int4 row to fp32: dst[c] = (nibble(c) - 8) * d[c / 32] for c in [0, n).</summary>
    public static void ConvertInt4(byte* p, Half* d, float* dst, int n)
    {
        const int G = Quant.QuantFormats.Int4GroupSize;
        for (int c = n / G * G; c < n; c++) dst[c] = (((c & 1) == 0 ? p[c / 2] & 0xF : p[c / 2] >> 4) - 8) * (float)d[c / G];
        for (int g = 0; g < n / G; g++)
        {
            float s = (float)d[g];
            byte* pg = p + g * (G / 2);
            float* o = dst + g * G;
            for (int j = 0; j < G / 2; j++)
            {
                int v = pg[j];
                o[2 * j] = ((v & 0xF) - 8) * s;
                o[2 * j + 1] = ((v >> 4) - 8) * s;
            }
        }
    }

    /// <summary>Four dot products of one fp32 row with four vectors (prefill register blocking: w is loaded once).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Dot4(float* w, float* x0, float* x1, float* x2, float* x3, int n, out float s0, out float s1, out float s2, out float s3)
    {
        int i = 0;
        s0 = s1 = s2 = s3 = 0f;
        if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var a0 = Vector256<float>.Zero; var a1 = Vector256<float>.Zero;
            var a2 = Vector256<float>.Zero; var a3 = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8)
            {
                var wv = Vector256.Load(w + i);
                a0 = Fma256(wv, Vector256.Load(x0 + i), a0);
                a1 = Fma256(wv, Vector256.Load(x1 + i), a1);
                a2 = Fma256(wv, Vector256.Load(x2 + i), a2);
                a3 = Fma256(wv, Vector256.Load(x3 + i), a3);
            }
            s0 = Vector256.Sum(a0); s1 = Vector256.Sum(a1); s2 = Vector256.Sum(a2); s3 = Vector256.Sum(a3);
        }
        else if (Vector128.IsHardwareAccelerated && n >= 4)
        {
            var a0 = Vector128<float>.Zero; var a1 = Vector128<float>.Zero;
            var a2 = Vector128<float>.Zero; var a3 = Vector128<float>.Zero;
            for (; i <= n - 4; i += 4)
            {
                var wv = Vector128.Load(w + i);
                a0 += wv * Vector128.Load(x0 + i);
                a1 += wv * Vector128.Load(x1 + i);
                a2 += wv * Vector128.Load(x2 + i);
                a3 += wv * Vector128.Load(x3 + i);
            }
            s0 = Vector128.Sum(a0); s1 = Vector128.Sum(a1); s2 = Vector128.Sum(a2); s3 = Vector128.Sum(a3);
        }
        for (; i < n; i++)
        {
            float wi = w[i];
            s0 += wi * x0[i]; s1 += wi * x1[i]; s2 += wi * x2[i]; s3 += wi * x3[i];
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Fma256(Vector256<float> a, Vector256<float> b, Vector256<float> c)
        => Fma.IsSupported ? Fma.MultiplyAdd(a, b, c) : a * b + c;

    // ------------------------------------------------------------------------------------------------------------
    // Row conversion: stored row -> fp32 buffer (prefill converts a row once and reuses it for every token).
    // ------------------------------------------------------------------------------------------------------------

    public static void ConvertRow(nint data, DType dtype, long row, int cols, float* dst, nint scales = 0)
    {
        switch (dtype)
        {
            case DType.F8E4M3:
                ConvertFp8((byte*)data + row * cols, scales == 0 ? 1f : ((float*)scales)[row], dst, cols);
                break;
            case DType.Int4:
                ConvertInt4((byte*)data + row * Quant.QuantFormats.Int4RowBytes(cols), (Half*)scales + row * Quant.QuantFormats.Int4Groups(cols), dst, cols);
                break;
            case DType.F32:
                Buffer.MemoryCopy((float*)data + row * cols, dst, cols * 4L, cols * 4L);
                break;
            case DType.F16:
                ConvertF16((Half*)data + row * cols, dst, cols);
                break;
            case DType.BF16:
                ConvertBF16((ushort*)data + row * cols, dst, cols);
                break;
            default: throw new NotSupportedException($"weight dtype {dtype}");
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void ConvertBF16(ushort* src, float* dst, int n)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= n - 16; i += 16)
            {
                var (l, h) = Vector256.Widen(Vector256.Load(src + i));
                Vector256.ShiftLeft(l, 16).AsSingle().Store(dst + i);
                Vector256.ShiftLeft(h, 16).AsSingle().Store(dst + i + 8);
            }
        }
        for (; i < n; i++) dst[i] = BF16ToFloat(src[i]);
    }

    /// <summary>Copies a whole (small) tensor or one row of it to fp32: embeddings, norms, biases.</summary>
    public static void ConvertTensorRow(Tensor t, long row, Span<float> dst)
    {
        int cols = checked((int)t.Cols);
        if (dst.Length < cols) throw new ArgumentException("destination too short", nameof(dst));
        fixed (float* d = dst) ConvertRow(t.Data, t.DType, row, cols, d, t.Scales);
    }

    // ------------------------------------------------------------------------------------------------------------
    // Matrix products. Y[N, R] = X[N, C] · W[R, C]^T, Y row stride ldy (>= R), X row stride C.
    // ------------------------------------------------------------------------------------------------------------

    /// <summary>Elements of weight work below which a product runs on the calling thread (scheduling costs more).</summary>
    private const long SerialThreshold = 1 << 15;

    [ThreadStatic] private static float[]? t_rowBuf;

    /// <summary>y[r] = W[r] · x for r in [0, R). Parallel over row blocks on all cores.</summary>
    public static void MatVec(Tensor w, ReadOnlySpan<float> x, Span<float> y)
    {
        CheckShapes(w, x.Length, 1, y.Length);
        fixed (float* px = x) fixed (float* py = y)
            MatMul(w.Data, w.DType, (int)w.Rows, (int)w.Cols, px, 1, py, (int)w.Rows, w.Scales);
    }

    /// <summary>Y[t, r] = W[r] · X[t] for N tokens (X: N×C, Y: N×R, both dense).</summary>
    public static void MatMul(Tensor w, ReadOnlySpan<float> x, int n, Span<float> y)
    {
        CheckShapes(w, x.Length, n, y.Length);
        fixed (float* px = x) fixed (float* py = y)
            MatMul(w.Data, w.DType, (int)w.Rows, (int)w.Cols, px, n, py, (int)w.Rows, w.Scales);
    }

    private static void CheckShapes(Tensor w, int xLen, int n, int yLen)
    {
        if (w.Rank != 2) throw new ArgumentException($"{w.Name}: expected a matrix, got {Tensor.ShapeText(w.Shape)}");
        if (xLen < n * w.Cols) throw new ArgumentException($"{w.Name}: x has {xLen} floats, need {n} x {w.Cols}");
        if (yLen < n * w.Rows) throw new ArgumentException($"{w.Name}: y has {yLen} floats, need {n} x {w.Rows}");
    }

    /// <summary>
    /// Y[t * ldy + r] = W[r] · X[t * cols] for t in [0, n), r in [0, rows). n = 1 is a matvec reading each row once
    /// with a fused convert+dot; n > 1 converts each weight row once into fp32 and multiplies it with the whole block
    /// of tokens (4 at a time), so every weight byte is read once per call, whatever n is. <paramref name="scales"/>:
    /// the scales of an fp8/int4 weight (<see cref="Tensor.Scales"/>).
    /// </summary>
    public static void MatMul(nint w, DType dtype, int rows, int cols, float* x, int n, float* y, int ldy, nint scales = 0)
    {
        if (rows <= 0 || n <= 0) return;
        long work = (long)rows * cols * Math.Max(1, n / 4);
        int workers = Environment.ProcessorCount;
        if (work < SerialThreshold || workers == 1)
        {
            MatMulRows(w, dtype, 0, rows, cols, x, n, y, ldy, scales);
            return;
        }
        // Blocks: enough for load balance (8 per core), each at least ~16K weight elements.
        int minRows = Math.Max(1, (int)Math.Min(rows, (16384 + cols - 1) / cols));
        int blocks = Math.Max(1, Math.Min(workers * 8, rows / minRows));
        int per = (rows + blocks - 1) / blocks;
        blocks = (rows + per - 1) / per;
        nint px = (nint)x, py = (nint)y;
        Parallel.For(0, blocks, b =>
        {
            int r0 = b * per, r1 = Math.Min(rows, r0 + per);
            MatMulRows(w, dtype, r0, r1, cols, (float*)px, n, (float*)py, ldy, scales);
        });
    }

    /// <summary>One product of a <see cref="MatMulGroup"/>: Y[t * ldy + r] = W[r] · X[t], Y = <see cref="Y"/>.</summary>
    public readonly record struct MatMulJob(nint W, DType DType, int Rows, int Cols, nint Y, int Ldy, nint Scales = 0);

    /// <summary>
    /// Several products over the same X (q/k/v, gate/up) in one parallel region: one scheduling and one barrier
    /// instead of one per matrix, and the row blocks of all of them balance across cores together.
    /// </summary>
    public static void MatMulGroup(ReadOnlySpan<MatMulJob> jobs, float* x, int n)
    {
        if (n <= 0 || jobs.IsEmpty) return;
        long work = 0;
        foreach (var j in jobs) work += (long)j.Rows * j.Cols * Math.Max(1, n / 4);
        int workers = Environment.ProcessorCount;
        if (work < SerialThreshold || workers == 1)
        {
            foreach (var j in jobs) MatMulRows(j.W, j.DType, 0, j.Rows, j.Cols, x, n, (float*)j.Y, j.Ldy, j.Scales);
            return;
        }
        // Blocks of ~equal weight elements across all jobs, 8 per core.
        long target = Math.Max(16384, work / Math.Max(1, n / 4) / (workers * 8));
        var blocks = new List<(int Job, int R0, int R1)>();
        for (int k = 0; k < jobs.Length; k++)
        {
            int per = (int)Math.Clamp(target / Math.Max(1, jobs[k].Cols), 1, Math.Max(1, jobs[k].Rows));
            for (int r = 0; r < jobs[k].Rows; r += per) blocks.Add((k, r, Math.Min(jobs[k].Rows, r + per)));
        }
        var js = jobs.ToArray();
        nint px = (nint)x;
        Parallel.For(0, blocks.Count, b =>
        {
            var (k, r0, r1) = blocks[b];
            var j = js[k];
            MatMulRows(j.W, j.DType, r0, r1, j.Cols, (float*)px, n, (float*)j.Y, j.Ldy, j.Scales);
        });
    }

    /// <summary>Rows [r0, r1) of <see cref="MatMul(nint, DType, int, int, float*, int, float*, int)"/> on this thread.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void MatMulRows(nint w, DType dtype, int r0, int r1, int cols, float* x, int n, float* y, int ldy, nint scales = 0)
    {
        if (dtype == DType.Int4 && scales == 0)
            throw new ArgumentException("an int4 weight needs its scales", nameof(scales));
        if (n == 1)
        {
            switch (dtype)
            {
                case DType.BF16: for (int r = r0; r < r1; r++) y[r] = DotBF16((ushort*)w + (long)r * cols, x, cols); break;
                case DType.F16: for (int r = r0; r < r1; r++) y[r] = DotF16((Half*)w + (long)r * cols, x, cols); break;
                case DType.F32: for (int r = r0; r < r1; r++) y[r] = DotF32((float*)w + (long)r * cols, x, cols); break;
                case DType.F8E4M3: case DType.Int4: for (int r = r0; r < r1; r++) y[r] = DotRow(w, dtype, r, cols, x, scales); break;
                default: throw new NotSupportedException($"weight dtype {dtype}");
            }
            return;
        }
        // Tiles: RB weight rows converted to fp32 (~256 KB) times TB tokens (X tile stays in L2), 4 tokens per Dot4.
        const int TB = 32;
        int rb = Math.Clamp(65536 / Math.Max(cols, 1), 1, 64);
        var buf = t_rowBuf;
        if (dtype != DType.F32 && (buf is null || buf.Length < rb * cols))
            t_rowBuf = buf = GC.AllocateUninitializedArray<float>(Math.Max(rb * cols, 1024), pinned: true);
        fixed (float* tile = buf)
        {
            for (int rs = r0; rs < r1; rs += rb)
            {
                int re = Math.Min(r1, rs + rb);
                float* wt;
                if (dtype == DType.F32) wt = (float*)w + (long)rs * cols;
                else
                {
                    for (int r = rs; r < re; r++) ConvertRow(w, dtype, r, cols, tile + (long)(r - rs) * cols, scales);
                    wt = tile;
                }
                for (int ts = 0; ts < n; ts += TB)
                {
                    int te = Math.Min(n, ts + TB);
                    for (int r = rs; r < re; r++)
                    {
                        float* wr = wt + (long)(r - rs) * cols;
                        int t = ts;
                        for (; t <= te - 4; t += 4)
                        {
                            float* xt = x + (long)t * cols;
                            Dot4(wr, xt, xt + cols, xt + 2L * cols, xt + 3L * cols, cols, out var s0, out var s1, out var s2, out var s3);
                            y[(long)t * ldy + r] = s0; y[(long)(t + 1) * ldy + r] = s1;
                            y[(long)(t + 2) * ldy + r] = s2; y[(long)(t + 3) * ldy + r] = s3;
                        }
                        for (; t < te; t++) y[(long)t * ldy + r] = DotF32(wr, x + (long)t * cols, cols);
                    }
                }
            }
        }
    }
}
