using Calm.Engine.Cuda;
using Calm.Engine.Model;
using Calm.Engine.Weights;

namespace Calm.Engine.Tests.Cuda;

/// <summary>Shared by the GPU tests: the device (or a skip with the reason), random data, half conversions, errors.</summary>
internal static class Gpu
{
    /// <summary>Context + kernels + stream, or Assert.Skip saying why there is no GPU here.</summary>
    public static (CudaContext Ctx, CudaKernels K, CudaStream S) Require()
    {
        var why = CudaDeviceInfo.Unavailable();
        if (why is not null) Assert.Skip("No usable CUDA device: " + why);
        var ctx = CudaContext.Acquire(0);
        var arch = CudaDeviceInfo.List()[0].Arch;
        return (ctx, new CudaKernels(ctx, arch), new CudaStream(ctx));
    }

    /// <summary>RoPE tables cos/sin [maxCtx, rot/2]: angle p * 10000^(-2i/rot) (HF rotate_half over the first rot dims).</summary>
    public static (float[] Cos, float[] Sin) RopeTables(int maxCtx, int rot)
    {
        int half = rot / 2;
        var cos = new float[maxCtx * half]; var sin = new float[maxCtx * half];
        for (int p = 0; p < maxCtx; p++)
            for (int i = 0; i < half; i++)
            {
                double a = p * Math.Pow(10000, -2.0 * i / rot);
                cos[p * half + i] = (float)Math.Cos(a); sin[p * half + i] = (float)Math.Sin(a);
            }
        return (cos, sin);
    }

    /// <summary>The CPU reference of head <paramref name="b"/> (of H q, K k and K v heads of <paramref name="Hd"/>) of a qkv
    /// row after the RoPE/KV step: q and k heads RMS-normed with qn / kn (eps 1e-6, in double, rounded to float) when
    /// qkNorm, then rotated in float (pairs i, i + half for i &lt; half, cos/sin [.., half] at pos); v heads as they are.</summary>
    public static float[] RopeHead(float[] qkv, int b, int H, int K, int Hd, int half, float[] cos, float[] sin, int pos,
                                   bool qkNorm = false, float[]? qn = null, float[]? kn = null)
    {
        var v = qkv.AsSpan(b * Hd, Hd).ToArray();
        if (b >= H + K) return v;
        if (qkNorm)
        {
            var w = b < H ? qn! : kn!;
            double ss = 0; foreach (var e in v) ss += (double)e * e;
            double inv = 1 / Math.Sqrt(ss / Hd + 1e-6);
            for (int d = 0; d < Hd; d++) v[d] = (float)(v[d] * inv * w[d]);
        }
        var o = (float[])v.Clone();
        for (int i = 0; i < half; i++)
        {
            float c = cos[pos * half + i], si = sin[pos * half + i];
            o[i] = v[i] * c - v[i + half] * si;
            o[i + half] = v[i + half] * c + v[i] * si;
        }
        return o;
    }

    public static Random Rng() => new(Environment.TickCount ^ Guid.NewGuid().GetHashCode());

    public static float[] RandF(Random r, int n, float scale = 1f)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)(r.NextDouble() * 2 - 1) * scale;
        return a;
    }

    public static ushort ToBits(float v, DType t) => t == DType.BF16 ? Bf16(v) : BitConverter.HalfToUInt16Bits((Half)v);
    public static float FromBits(ushort b, DType t) => t == DType.BF16 ? BitConverter.Int32BitsToSingle(b << 16) : (float)BitConverter.UInt16BitsToHalf(b);

    public static ushort Bf16(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if ((u & 0x7fffffff) > 0x7f800000) return (ushort)((u >> 16) | 0x40);
        u += 0x7fffu + ((u >> 16) & 1u);
        return (ushort)(u >> 16);
    }

    /// <summary>Random weights rounded to <paramref name="t"/>: (bits for the GPU, exact float values for the reference).</summary>
    public static (ushort[] Bits, float[] Values) RandHalf(Random r, int n, DType t, float scale = 1f)
    {
        var bits = new ushort[n]; var vals = new float[n];
        for (int i = 0; i < n; i++) { bits[i] = ToBits((float)(r.NextDouble() * 2 - 1) * scale, t); vals[i] = FromBits(bits[i], t); }
        return (bits, vals);
    }

    public static CudaDeviceMemory Up<T>(CudaContext ctx, T[] a) where T : unmanaged
    {
        var m = CudaDeviceMemory.Allocate(ctx, Math.Max(a.Length, 1) * (long)System.Runtime.CompilerServices.Unsafe.SizeOf<T>());
        m.CopyFromHost<T>(a);
        return m;
    }

    public static CudaDeviceMemory UpNative(CudaContext ctx, nint p, long bytes)
    {
        var m = CudaDeviceMemory.Allocate(ctx, Math.Max(bytes, 1));
        m.CopyFromHost(p, bytes);
        return m;
    }

    /// <summary>The values of a quantized <paramref name="w"/> on the device, row-major or (tiled) in the tile order the
    /// CUDA backend stores them in, reordered on the host by <see cref="QuantTileOrder.Tile"/> (the device's reorder is
    /// held to that in QuantKernelTests.TileReordersMatchTheHostOrder).</summary>
    public static unsafe CudaDeviceMemory UpValues(CudaContext ctx, Tensor w, bool tiled)
        => tiled ? Up(ctx, QuantTileOrder.Tile(new ReadOnlySpan<byte>((void*)w.Data, checked((int)w.DataBytes)), w.TotalRows, w.DataBytes / w.TotalRows))
                 : UpNative(ctx, w.Data, w.DataBytes);

    /// <summary>Its scales: row-major, or (tiled, int4) in the scales' tile order that goes with the values'
    /// (<see cref="QuantTileOrder.ScalePieceBytes"/>). fp8's per-row scales are never reordered.</summary>
    public static unsafe CudaDeviceMemory UpScales(CudaContext ctx, Tensor w, bool tiled)
        => tiled && w.DType == DType.Int4
            ? Up(ctx, QuantTileOrder.Tile(new ReadOnlySpan<byte>((void*)w.Scales, checked((int)w.ScaleBytes)), w.TotalRows, w.ScaleBytes / w.TotalRows, QuantTileOrder.ScalePieceBytes))
            : UpNative(ctx, w.Scales, w.ScaleBytes);

    public static CudaDeviceMemory Zeros(CudaContext ctx, long bytes) { var m = CudaDeviceMemory.Allocate(ctx, bytes); m.Zero(); return m; }

    public static double RelL2(ReadOnlySpan<float> got, ReadOnlySpan<float> want)
    {
        double num = 0, den = 0;
        for (int i = 0; i < want.Length; i++) { double d = got[i] - want[i]; num += d * d; den += (double)want[i] * want[i]; }
        return Math.Sqrt(num / Math.Max(den, 1e-30));
    }

    /// <summary>Asserts the relative L2 error is within the bound (and the output is finite and not all zero).</summary>
    public static void Close(ReadOnlySpan<float> got, ReadOnlySpan<float> want, double bound, string what)
    {
        Assert.Equal(want.Length, got.Length);
        foreach (var v in got) Assert.True(float.IsFinite(v), $"{what}: non-finite output");
        double e = RelL2(got, want);
        if (Environment.GetEnvironmentVariable("CALM_TEST_ERRLOG") is { Length: > 0 } log)   // diagnostics: every comparison's error
            File.AppendAllText(log, $"{what}\t{e:E3}\n");
        Assert.True(e <= bound, $"{what}: relative L2 error {e:E3} > {bound:E1}");
    }

    public static float Silu(float x) => x / (1 + MathF.Exp(-x));
    public static float GeluTanh(float x) => 0.5f * x * (1 + MathF.Tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}
