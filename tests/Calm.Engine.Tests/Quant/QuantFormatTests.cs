using System.Runtime.InteropServices;
using Calm.Engine.Cpu;
using Calm.Engine.Model;
using Calm.Engine.Quant;
using Calm.Engine.Weights;

namespace Calm.Engine.Tests.Quant;

/// <summary>
/// The fp8/int4 formats, quantizers and CPU kernels against naive double references written from the format
/// definitions (bit fields decoded with Math.Pow, nearest value found by search), on fresh random data.
/// </summary>
public unsafe class QuantFormatTests
{
    private static readonly int Seed = Environment.TickCount;

    // ---- naive references -----------------------------------------------------------------------------------

    /// <summary>e4m3 byte -> value from the OCP definition.</summary>
    internal static double NaiveE4M3(int b)
    {
        int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
        if (e == 15 && m == 7) return double.NaN;
        double v = e == 0 ? m / 8.0 * Math.Pow(2, -6) : (1 + m / 8.0) * Math.Pow(2, e - 7);
        return s == 1 ? -v : v;
    }

    /// <summary>Nearest finite e4m3 by exhaustive search; ties to the even mantissa; beyond 448 saturates.</summary>
    private static int NaiveEncode(double x)
    {
        if (Math.Abs(x) >= 448) return x < 0 ? 0xFE : 0x7E;
        int best = -1; double bestErr = double.MaxValue;
        for (int b = 0; b < 256; b++)
        {
            double v = NaiveE4M3(b);
            if (double.IsNaN(v) || (x < 0) != (b >= 128)) continue;
            double err = Math.Abs(v - x);
            if (err < bestErr || (err == bestErr && (b & 1) == 0)) { best = b; bestErr = err; }
        }
        return best;
    }

    /// <summary>Signed int4 element c of a packed row, from the layout (low nibble first, value = u - 8).</summary>
    private static int NaiveNibble(byte* row, int c) => ((c % 2 == 0 ? row[c / 2] & 15 : row[c / 2] >> 4)) - 8;

    private static double NaiveDequant(Tensor t, long r, long c)
    {
        if (t.DType == DType.F8E4M3) return NaiveE4M3(((byte*)t.Data)[r * t.Cols + c]) * ((float*)t.Scales)[r];
        long groups = (t.Cols + 31) / 32; // rows padded to whole groups of 32: 16 bytes and one scale per group
        byte* row = (byte*)t.Data + r * groups * 16;
        double d = (double)((Half*)t.Scales)[r * groups + c / 32];
        return NaiveNibble(row, (int)c) * d;
    }

    private static (Tensor T, NativeWeightStore S) RandomTensor(Random rng, int rows, int cols, DType dt, double scale = 0.05)
    {
        var store = new NativeWeightStore();
        nint p = store.Allocate((long)rows * cols * DTypes.SizeOf(dt));
        for (long i = 0; i < (long)rows * cols; i++)
        {
            // Gaussian-ish with a few outliers, like real weights.
            double v = (rng.NextDouble() + rng.NextDouble() + rng.NextDouble() - 1.5) * scale * (rng.Next(100) == 0 ? 8 : 1);
            switch (dt)
            {
                case DType.F32: ((float*)p)[i] = (float)v; break;
                case DType.F16: ((Half*)p)[i] = (Half)v; break;
                default: ((ushort*)p)[i] = (ushort)(BitConverter.SingleToUInt32Bits((float)v) >> 16); break;
            }
        }
        return (new Tensor("w", dt, new long[] { rows, cols }, p, "test"), store);
    }

    // ---- e4m3 -----------------------------------------------------------------------------------------------

    [Fact]
    public void E4M3TableMatchesDefinition()
    {
        for (int b = 0; b < 256; b++)
        {
            double want = NaiveE4M3(b);
            float got = QuantFormats.E4M3ToFloat((byte)b);
            if (double.IsNaN(want)) Assert.True(float.IsNaN(got), $"byte {b:X2}");
            else Assert.Equal(want, (double)got);
        }
        Assert.Equal(448f, QuantFormats.E4M3ToFloat(0x7E));
        Assert.Equal(-448f, QuantFormats.E4M3ToFloat(0xFE));
    }

    [Fact]
    public void E4M3EncodeRoundTripsEveryFiniteValue()
    {
        for (int b = 0; b < 256; b++)
        {
            if ((b & 0x7F) == 0x7F) continue;
            byte got = QuantFormats.FloatToE4M3((float)NaiveE4M3(b));
            if (b == 0x80) Assert.True(got is 0x80 or 0x00); // -0
            else Assert.Equal(b, got);
        }
    }

    [Fact]
    public void E4M3EncodeIsNearestEvenWithSaturation()
    {
        var rng = new Random(Seed);
        for (int i = 0; i < 20000; i++)
        {
            // Log-uniform magnitudes across subnormals, normals and past the max, plus exact midpoints.
            double x = Math.Pow(2, rng.NextDouble() * 20 - 12) * (rng.Next(2) == 0 ? -1 : 1);
            if (i % 4 == 0)
            {
                int b = rng.Next(0, 0x7E);
                x = (NaiveE4M3(b) + NaiveE4M3(b + 1)) / 2 * (rng.Next(2) == 0 ? -1 : 1); // midpoint: ties to even
            }
            float xf = (float)x;
            Assert.True(NaiveEncode(xf) == QuantFormats.FloatToE4M3(xf), $"x = {xf:R} (seed {Seed}): want {NaiveEncode(xf):X2}, got {QuantFormats.FloatToE4M3(xf):X2}");
        }
        Assert.Equal(0x7E, QuantFormats.FloatToE4M3(float.PositiveInfinity));
        Assert.Equal(0xFE, QuantFormats.FloatToE4M3(-1e9f));
        Assert.Equal(0x7E, QuantFormats.FloatToE4M3(463.9f));
        Assert.Equal(0x7F, QuantFormats.FloatToE4M3(float.NaN));
    }

    // ---- quantizers -----------------------------------------------------------------------------------------

    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    [InlineData(DType.F32)]
    public void Fp8RowsScaleFromAbsmaxAndRoundToNearest(DType src)
    {
        var rng = new Random(Seed);
        var (w, s) = RandomTensor(rng, 37, 80, src);
        using var _ = s;
        using var qs = new NativeWeightStore();
        var q = Quantizer.Quantize(w, DType.F8E4M3, qs);
        Assert.Equal(37L * 80 + 37 * 4, q.ByteLength);
        Assert.Equal(37L * 4, q.ScaleBytes);
        for (int r = 0; r < 37; r++)
        {
            double amax = 0;
            for (int c = 0; c < 80; c++) amax = Math.Max(amax, Math.Abs(w.GetFloat(r * 80 + c)));
            float scale = ((float*)q.Scales)[r];
            Assert.Equal(amax / 448, scale, amax / 448 * 1e-6);
            for (int c = 0; c < 80; c++)
            {
                double x = w.GetFloat(r * 80 + c);
                int want = NaiveEncode((float)x / scale); // the quotient is an fp32 division (the format's definition)
                Assert.Equal(want, ((byte*)q.Data)[r * 80 + c]);
            }
        }
    }

    [Fact]
    public void Int4GroupsAreSymmetricWithTheLargestAtMinusEight()
    {
        var rng = new Random(Seed);
        var (w, s) = RandomTensor(rng, 19, 128, DType.BF16);
        using var _ = s;
        using var qs = new NativeWeightStore();
        var q = Quantizer.Quantize(w, DType.Int4, qs);
        Assert.Equal(19L * 64 + 19 * 4 * 2, q.ByteLength);
        for (int r = 0; r < 19; r++)
            for (int g = 0; g < 4; g++)
            {
                double m = 0;
                for (int i = 0; i < 32; i++) { double x = w.GetFloat(r * 128 + g * 32 + i); if (Math.Abs(x) > Math.Abs(m)) m = x; }
                double d = (double)((Half*)q.Scales)[r * 4 + g];
                Assert.Equal((double)(Half)(m / -8), d);
                for (int i = 0; i < 32; i++)
                {
                    int c = g * 32 + i;
                    double x = w.GetFloat(r * 128 + c);
                    int want = (int)Math.Clamp(Math.Round((float)x / (float)d, MidpointRounding.ToEven), -8, 7); // fp32 quotient
                    Assert.Equal(want, NaiveNibble((byte*)q.Data + r * 64, c));
                }
            }
    }

    [Fact]
    public void Int4RowsArePaddedToWholeGroups()
    {
        // 48 columns: one full group and one of 16 (padded with nibble 8 = 0); row stride 32 bytes, 2 scales per row.
        var (w, s) = RandomTensor(new Random(Seed), 4, 48, DType.BF16);
        using var _ = s;
        using var qs = new NativeWeightStore();
        var q = Quantizer.Quantize(w, DType.Int4, qs);
        Assert.Equal(4L * 32 + 4 * 2 * 2, q.ByteLength);
        for (int r = 0; r < 4; r++)
        {
            for (int j = 24; j < 32; j++) Assert.Equal(0x88, ((byte*)q.Data)[r * 32 + j]);
            double m = 0;
            for (int i = 32; i < 48; i++) { double x = w.GetFloat(r * 48 + i); if (Math.Abs(x) > Math.Abs(m)) m = x; }
            Assert.Equal((double)(Half)(m / -8), (double)((Half*)q.Scales)[r * 2 + 1]);
            for (int c = 0; c < 48; c++) Assert.Equal(NaiveDequant(q, r, c), (double)q.GetFloat(r * 48 + c), 1e-9);
        }
    }

    // ---- kernels ----------------------------------------------------------------------------------------------

    [Theory]
    [InlineData(DType.F8E4M3, 1, 160)]
    [InlineData(DType.F8E4M3, 5, 96)]
    [InlineData(DType.F8E4M3, 37, 64)]
    [InlineData(DType.F8E4M3, 1, 100)]
    [InlineData(DType.F8E4M3, 3, 13)]
    [InlineData(DType.F8E4M3, 2, 48)]
    [InlineData(DType.Int4, 1, 160)]
    [InlineData(DType.Int4, 5, 96)]
    [InlineData(DType.Int4, 37, 64)]
    [InlineData(DType.Int4, 1, 688)]
    [InlineData(DType.Int4, 6, 688)]
    [InlineData(DType.Int4, 1, 4096)]
    [InlineData(DType.F8E4M3, 1, 4096)]
    public void MatMulMatchesNaiveDequantizedProduct(DType dt, int n, int cols)
    {
        var rng = new Random(Seed + n);
        int rows = 301; // odd: uneven row blocks across threads
        var (w, s) = RandomTensor(rng, rows, cols, DType.BF16);
        using var _ = s;
        using var qs = new NativeWeightStore();
        var q = Quantizer.Quantize(w, dt, qs);
        var x = new float[n * cols];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        var y = new float[n * rows];
        if (n == 1) CpuKernels.MatVec(q, x, y); else CpuKernels.MatMul(q, x, n, y);
        for (int t = 0; t < n; t++)
            for (int r = 0; r < rows; r++)
            {
                double want = 0, mag = 0;
                for (int c = 0; c < cols; c++) { double p = NaiveDequant(q, r, c) * x[t * cols + c]; want += p; mag += Math.Abs(p); }
                double got = y[t * rows + r];
                Assert.True(Math.Abs(got - want) <= 1e-5 * mag + 1e-30, $"{dt} n={n} t={t} r={r}: {got} vs {want} (seed {Seed})");
            }
        // The one-row dot entry point agrees too.
        fixed (float* px = x)
            for (int r = 0; r < rows; r += 50)
            {
                double want = 0;
                for (int c = 0; c < cols; c++) want += NaiveDequant(q, r, c) * x[c];
                Assert.Equal(want, CpuKernels.DotRow(q.Data, q.DType, r, cols, px, q.Scales), 1e-4);
            }
    }

    [Fact]
    public void Fp8DotDecodesEveryByteIncludingSubnormalsAndNaN()
    {
        // The 254 finite codes spread over the SIMD blocks and a 3-element scalar tail; a one-hot x picks each out.
        var codes = Enumerable.Range(0, 256).Where(b => (b & 0x7F) != 0x7F).Select(b => (byte)b).ToList();
        codes.AddRange(new byte[] { 0x01, 0x7E, 0x88 });
        var q = codes.ToArray();
        int n = q.Length; // 257: 8 blocks of 32 and a scalar tail of 1
        var x = new float[n];
        fixed (byte* pq = q) fixed (float* px = x)
        {
            for (int i = 0; i < n; i++)
            {
                Array.Clear(x); x[i] = 1f;
                Assert.Equal(NaiveE4M3(q[i]) * 0.5, (double)CpuKernels.DotFp8(pq, 0.5f, px, n));
            }
            // A sum over all of them, against the double reference.
            for (int i = 0; i < n; i++) x[i] = 1f / (1 + i % 7);
            double want = 0;
            for (int i = 0; i < n; i++) want += NaiveE4M3(q[i]) * x[i];
            Assert.Equal(want, (double)CpuKernels.DotFp8(pq, 1f, px, n), Math.Abs(want) * 1e-5 + 1e-3);
            // NaN codes read as NaN in the SIMD part (index 5) and the tail (last).
            foreach (int at in new[] { 5, n - 1 })
            {
                byte keep = q[at];
                q[at] = 0xFF;
                Assert.True(float.IsNaN(CpuKernels.DotFp8(pq, 1f, px, n)), $"NaN code at {at}");
                q[at] = 0x7F;
                Assert.True(float.IsNaN(CpuKernels.DotFp8(pq, 1f, px, n)), $"NaN code at {at}");
                q[at] = keep;
            }
        }
    }

    [Fact]
    public void SlicedQuantizedRowsPointIntoValuesAndScales()
    {
        var (w, s) = RandomTensor(new Random(Seed), 12, 64, DType.F32);
        using var _ = s;
        using var qs = new NativeWeightStore();
        foreach (var dt in new[] { DType.F8E4M3, DType.Int4 })
        {
            var q = Quantizer.Quantize(w, dt, qs);
            var part = q.SliceRows(5, 4, "part");
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < 64; c++)
                    Assert.Equal(NaiveDequant(q, r + 5, c), (double)part.GetFloat(r * 64 + c), 1e-7);
        }
    }

    [Fact]
    public void DequantizedValuesStayCloseToTheSource()
    {
        // fp8: relative error of a normal e4m3 value <= 2^-4; int4: <= one step d of its group.
        var rng = new Random(Seed);
        var (w, s) = RandomTensor(rng, 64, 256, DType.BF16);
        using var _ = s;
        using var qs = new NativeWeightStore();
        var f8 = Quantizer.Quantize(w, DType.F8E4M3, qs);
        var i4 = Quantizer.Quantize(w, DType.Int4, qs);
        for (int r = 0; r < 64; r++)
            for (int c = 0; c < 256; c++)
            {
                double x = w.GetFloat(r * 256 + c);
                double s8 = ((float*)f8.Scales)[r];
                double e8 = Math.Abs(NaiveDequant(f8, r, c) - x);
                Assert.True(e8 <= Math.Max(Math.Abs(x) / 16, s8 * Math.Pow(2, -10)) * 1.0001, $"fp8 [{r},{c}] {x} err {e8}");
                double d = Math.Abs((double)((Half*)i4.Scales)[r * 8 + c / 32]);
                double e4 = Math.Abs(NaiveDequant(i4, r, c) - x);
                Assert.True(e4 <= d * 1.001 + 1e-12, $"int4 [{r},{c}] {x} err {e4} step {d}");
            }
    }
}
