using System.Runtime.InteropServices;
using Calm.Engine.Cpu;
using Calm.Engine.Model;
using Calm.Engine.Weights;

namespace Calm.Engine.Quant;

/// <summary>
/// Quantizes f32/f16/bf16 weights to the formats of <see cref="QuantFormats"/> into native memory (at import).
/// Row-parallel; each row is widened to fp32 once, then scaled from its (fp8) or its groups' (int4) absmax.
/// </summary>
public static unsafe class Quantizer
{
    /// <summary>Quantizes a 2-D (or stacked 3-D) weight into <paramref name="store"/>.</summary>
    public static Tensor Quantize(Tensor src, DType target, NativeWeightStore store, CancellationToken ct = default)
    {
        if (!DTypes.IsQuantized(target))
            throw new ArgumentException($"{DTypes.Name(target)} is not a quantized dtype", nameof(target));
        // fp8 sources (a pre-quantized checkpoint's row-scaled tensors) are dequantized row by row, e.g. for -DType int4.
        if (!DTypes.IsWeightType(src.DType) && !(src.DType == DType.F8E4M3 && src.Scales != 0))
            throw new CalmException(ErrorIds.QuantizationNotSupported, CalmErrorKind.NotSupported,
                $"Tensor {src.Name} in {src.Source} has dtype {DTypes.Name(src.DType)}; only f32, f16, bf16 and row-scaled fp8 tensors can be quantized to {DTypes.Name(target)}.", src.Name);
        if (src.IsDeviceOnly)
            throw new CalmException(ErrorIds.QuantizationNotSupported, CalmErrorKind.NotSupported,
                $"Tensor {src.Name} lives only on the GPU; it cannot be quantized on the host.", src.Name);
        long cols = src.Cols, rows = src.TotalRows;
        if (cols > int.MaxValue) throw new ArgumentException($"{src.Name}: rows too long");
        int c = (int)cols;
        // int4 rows are padded to whole groups of 32 (zeros: nibble 8); cpad elements are quantized per row.
        long groups = QuantFormats.Int4Groups(cols), rowBytes = QuantFormats.Int4RowBytes(cols);
        int cpad = target == DType.Int4 ? checked((int)(groups * QuantFormats.Int4GroupSize)) : c;
        long dataBytes = target == DType.Int4 ? rows * rowBytes : rows * cols;
        long scaleBytes = target == DType.Int4 ? rows * groups * 2 : rows * 4;
        nint data = store.Allocate(dataBytes), scales = store.Allocate(scaleBytes);
        nint s = src.Data;
        var dt = src.DType;
        // Blocks of rows so cancellation is seen and each worker reuses one fp32 row buffer.
        int blockRows = (int)Math.Clamp(1_000_000 / Math.Max(cols, 1), 1, Math.Max(rows, 1));
        long blocks = (rows + blockRows - 1) / blockRows;
        Parallel.For(0L, blocks, new ParallelOptions { CancellationToken = ct }, () => new float[cpad], (b, _, buf) =>
        {
            long r0 = b * blockRows, r1 = Math.Min(rows, r0 + blockRows);
            fixed (float* f = buf)
                for (long r = r0; r < r1; r++)
                {
                    CpuKernels.ConvertRow(s, dt, r, c, f, src.Scales);
                    if (target == DType.F8E4M3) QuantizeRowFp8(f, c, (byte*)data + r * cols, (float*)scales + r);
                    else QuantizeRowInt4(f, cpad, (byte*)data + r * rowBytes, (Half*)scales + r * groups); // f[c..cpad) stays 0
                }
            return buf;
        }, _ => { });
        return new Tensor(src.Name, target, (long[])src.Shape.Clone(), data, src.Source, scales);
    }

    /// <summary>One fp8 row: s = absmax / 448 (1 for an all-zero row), q[i] = e4m3_rne(x[i] / s).</summary>
    public static void QuantizeRowFp8(float* x, int n, byte* q, float* scale)
    {
        float amax = System.Numerics.Tensors.TensorPrimitives.MaxMagnitude(new ReadOnlySpan<float>(x, n));
        amax = MathF.Abs(amax);
        float s = amax > 0 && float.IsFinite(amax) ? amax / QuantFormats.E4M3Max : 1f;
        *scale = s;
        for (int i = 0; i < n; i++) q[i] = QuantFormats.FloatToE4M3(x[i] / s);
    }

    /// <summary>One int4 row (n % 32 == 0, padded with zeros): per group d = m / -8 (m: the element of largest magnitude), nibble = rne(x/d) + 8 in 0..15.</summary>
    public static void QuantizeRowInt4(float* x, int n, byte* packed, Half* scales)
    {
        const int G = QuantFormats.Int4GroupSize;
        for (int g = 0; g < n / G; g++)
        {
            float* xg = x + g * G;
            float m = 0f;
            for (int i = 0; i < G; i++) if (MathF.Abs(xg[i]) > MathF.Abs(m)) m = xg[i];
            Half dh = (Half)Math.Clamp(m / -8f, -65504f, 65504f);
            scales[g] = dh;
            float d = (float)dh;
            byte* pg = packed + g * (G / 2);
            for (int j = 0; j < G / 2; j++)
            {
                int lo = Nibble(xg[2 * j], d), hi = Nibble(xg[2 * j + 1], d);
                pg[j] = (byte)(lo | (hi << 4));
            }
        }
    }

    private static int Nibble(float x, float d)
    {
        if (d == 0f) return 8;
        float v = MathF.Round(x / d, MidpointRounding.ToEven);
        return (int)Math.Clamp(v, -8f, 7f) + 8;
    }

    /// <summary>
    /// A copy of <paramref name="src"/> with every projection and the classifier quantized to <paramref name="target"/>
    /// and all other tensors (embedding, norms, biases, router) copied unchanged, all in one new native store, so the
    /// source store (memory maps) can be disposed right after. Progress by bytes.
    /// </summary>
    public static (ModelWeights Weights, NativeWeightStore Store) QuantizeModel(ModelWeights src, DType target,
        IProgress<LoadProgress>? progress = null, CancellationToken ct = default)
    {
        var store = new NativeWeightStore();
        try
        {
            var map = new Dictionary<Tensor, Tensor>(ReferenceEqualityComparer.Instance);
            long total = src.AllTensors().Sum(t => t.ByteLength) + (ReferenceEquals(src.LmHead, src.Embedding) ? src.LmHead.ByteLength : 0);
            long done = 0;
            string activity = $"Quantizing weights to {DTypes.Name(target)}";
            DateTime lastReport = DateTime.MinValue;
            void Report(string what)
            {
                var now = DateTime.UtcNow;
                if ((now - lastReport).TotalMilliseconds < 200 && done < total) return;
                lastReport = now;
                progress?.Report(new LoadProgress(activity, what, total == 0 ? 1 : (double)done / total));
            }
            Tensor Copy(Tensor t)
            {
                if (map.TryGetValue(t, out var have)) return have;
                ct.ThrowIfCancellationRequested();
                long bytes = t.ByteLength;
                nint p = store.Allocate(bytes);
                Buffer.MemoryCopy((void*)t.Data, (void*)p, bytes, bytes);
                var r = new Tensor(t.Name, t.DType, (long[])t.Shape.Clone(), p, t.Source);
                map[t] = r; done += bytes; Report(t.Name);
                return r;
            }
            Tensor Q(Tensor t)
            {
                if (map.TryGetValue(t, out var have)) return have;
                Report(t.Name);
                var r = Quantize(t, target, store, ct);
                map[t] = r; done += t.ByteLength; Report(t.Name);
                return r;
            }
            // The tied classifier gets its own quantized copy (the decode step reads it every token).
            var w = src.MapMatrices(Q, t =>
            {
                var r = Quantize(t, target, store, ct);
                done += t.ByteLength; Report(t.Name);
                return r;
            }, Copy);
            done = total; Report("done");
            return (w, store);
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }
}
