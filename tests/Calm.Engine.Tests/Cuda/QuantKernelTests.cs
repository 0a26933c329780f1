using System.Text;
using Calm.Engine.Cpu;
using Calm.Engine.Cuda;
using Calm.Engine.Model;
using Calm.Engine.Quant;
using Calm.Engine.Weights;

namespace Calm.Engine.Tests.Cuda;

/// <summary>
/// The fp8 and int4 matvec kernels (kernels/matvec_quant.cu) against the CPU reference on fresh random weights
/// quantized by the engine's own <see cref="Quantizer"/>: both sides compute the same dequantized products in fp32, so
/// only the summation order differs.
/// </summary>
[Trait("Category", "GPU")]
[Collection("GPU")]
public unsafe class QuantKernelTests
{
    private static (CudaContext Ctx, CudaQuantKernels K, CudaStream S) Require(bool? forceFp8Convert = null)
    {
        var why = CudaDeviceInfo.Unavailable();
        if (why is not null) Assert.Skip("No usable CUDA device: " + why);
        var ctx = CudaContext.Acquire(0);
        try { return (ctx, new CudaQuantKernels(ctx, CudaDeviceInfo.List()[0].Arch, null, forceFp8Convert), new CudaStream(ctx)); }
        catch { ctx.Dispose(); throw; }
    }

    /// <summary>Random fp32 [rows, cols] weights (a few rows scaled far apart), quantized to <paramref name="dt"/>.</summary>
    private static Tensor RandomQuantized(Random r, NativeWeightStore store, DType dt, int rows, int cols)
    {
        nint p = store.Allocate((long)rows * cols * 4);
        var f = (float*)p;
        for (int i = 0; i < rows; i++)
        {
            float rowScale = (float)Math.Pow(10, r.Next(-3, 3));
            for (int j = 0; j < cols; j++) f[(long)i * cols + j] = (float)(r.NextDouble() * 2 - 1) * rowScale;
        }
        var src = new Tensor("w", DType.F32, new long[] { rows, cols }, p, "test");
        return Quantizer.Quantize(src, dt, store);
    }

    /// <summary>x [cols] f32 on the device followed by NaNs: a kernel that reads x at or past cols poisons y.</summary>
    private static CudaDeviceMemory UpXWithNaNGuard(CudaContext ctx, float[] x)
    {
        var padded = new float[x.Length + 64];
        x.CopyTo(padded, 0);
        for (int i = x.Length; i < padded.Length; i++) padded[i] = float.NaN;
        return Gpu.Up(ctx, padded);
    }

    [Theory]
    [InlineData(DType.F8E4M3, 300, 1024, false, false, 1)]
    [InlineData(DType.F8E4M3, 257, 4096, true, true, 2)]     // one unrolled pass, odd rows
    [InlineData(DType.F8E4M3, 999, 4112, false, true, 2)]    // tail after the unrolled loop
    [InlineData(DType.F8E4M3, 1001, 2064, true, false, 1)]
    [InlineData(DType.F8E4M3, 203, 8208, true, true, 4)]     // 4 rows per warp: 203 = 6*32 + 11, tail
    [InlineData(DType.Int4, 203, 4160, true, true, 4)]       // 4 rows per warp, 128 + 2 groups
    [InlineData(DType.Int4, 203, 4160, true, true, 8)]       // 8 rows per warp: 203 = 3*64 + 11, tail
    [InlineData(DType.Int4, 517, 4113, false, true, 8)]      // 8 rows per warp, partial last group
    [InlineData(DType.F8E4M3, 203, 4112, true, false, 8)]
    [InlineData(DType.F8E4M3, 65, 100, true, true, 2)]       // cols % 16 != 0: byte-wise path
    [InlineData(DType.F8E4M3, 1, 24, false, false, 1)]
    [InlineData(DType.Int4, 300, 1024, false, false, 1)]
    [InlineData(DType.Int4, 257, 4096, true, true, 2)]       // one unrolled pass
    [InlineData(DType.Int4, 999, 8352, false, true, 1)]      // 8192 + 5 groups: tail loop
    [InlineData(DType.Int4, 513, 4113, true, false, 2)]      // partial last group (17 of 32), padded rows
    [InlineData(DType.Int4, 77, 100, true, true, 1)]         // 3 groups + 4
    [InlineData(DType.Int4, 5, 7, false, false, 2)]          // only a partial group
    [InlineData(DType.F8E4M3, 777, 4096, true, false, 2, false)]  // the sm_80 bit fallback, compiled for this GPU
    [InlineData(DType.F8E4M3, 129, 2064, false, true, 1, false)]
    [InlineData(DType.Int4, 203, 4160, true, true, 4, null, true)]     // x staged in shared memory (_xs variants)
    [InlineData(DType.Int4, 517, 4113, false, true, 8, null, true)]    // staged, partial last group, 8 rows per warp
    [InlineData(DType.Int4, 999, 8352, true, false, 2, null, true)]    // staged, tail loop
    [InlineData(DType.Int4, 77, 100, true, true, 1, null, true)]
    [InlineData(DType.Int4, 5, 7, false, false, 4, null, true)]
    [InlineData(DType.Int4, 300, 14336, true, true, 4, null, true)]    // 64.5 KB of shared memory: above the 48 KB default
    public void MatvecMatchesCpuReference(DType dt, int rows, int cols, bool bias, bool accumulate, int rowsPerWarp, bool? forceFp8Convert = null, bool stageX = false)
    {
        var (ctx, k, s) = Require(forceFp8Convert);
        using var _c = ctx; using var _k = k; using var _s = s;
        using var store = new NativeWeightStore();
        var r = Gpu.Rng();
        var w = RandomQuantized(r, store, dt, rows, cols);
        Assert.Equal(CudaQuantKernels.ValueBytes(dt, rows, cols), w.DataBytes);
        Assert.Equal(CudaQuantKernels.ScaleBytes(dt, rows, cols), w.ScaleBytes);
        var x = Gpu.RandF(r, cols);
        var b = Gpu.RandF(r, rows);
        var y0 = Gpu.RandF(r, rows);
        using var V = Gpu.UpNative(ctx, w.Data, w.DataBytes); using var S = Gpu.UpNative(ctx, w.Scales, w.ScaleBytes);
        using var X = UpXWithNaNGuard(ctx, x); using var B = Gpu.Up(ctx, b); using var Y = Gpu.Up(ctx, y0);
        k.Matvec(s, dt, V.Ptr, S.Ptr, X.Ptr, Y.Ptr, bias ? B.Ptr : 0, rows, cols, accumulate, rowsPerWarp, stageX);
        s.Synchronize();

        var want = new float[rows];
        CpuKernels.MatVec(w, x, want);
        for (int i = 0; i < rows; i++)
        {
            if (bias) want[i] += b[i];
            if (accumulate) want[i] += y0[i];
        }
        Gpu.Close(Y.ToArray<float>(rows), want, 1e-5, $"matvec {DTypes.Name(dt)} {rows}x{cols} r{rowsPerWarp}{(stageX ? " staged x" : "")}");
    }

    /// <summary>Every e4m3 code through the 16-byte path: row c holds code c at column j = c % 32, x[j] = j + 1, scale 1,
    /// so y[c] = e4m3(c) * (j + 1) exactly (NaN for 0x7F and 0xFF, as the CPU table says); a swapped byte order or a
    /// wrong decode shows as a mismatch.</summary>
    [Theory]
    [InlineData(1, null)]
    [InlineData(2, null)]
    [InlineData(4, null)]
    [InlineData(8, null)]
    [InlineData(1, false)]   // the sm_80 bit fallback, compiled for this GPU
    [InlineData(2, false)]
    public void EveryFp8CodeDecodesExactly(int rowsPerWarp, bool? forceFp8Convert)
    {
        var (ctx, k, s) = Require(forceFp8Convert);
        if (forceFp8Convert == false) Assert.False(k.UsesHardwareFp8Convert(s));
        using var _c = ctx; using var _k = k; using var _s = s;
        EveryFp8Code(ctx, s, 32, $"r{rowsPerWarp}", (V, S, X, Y, rows, cols) => k.Matvec(s, DType.F8E4M3, V, S, X, Y, 0, rows, cols, false, rowsPerWarp));
    }

    /// <summary>256 rows: row c holds code c at column c % cols (others 0), scale 1, x[j] = j + 1; runs
    /// <paramref name="launch"/> (values, scales, x, y, rows, cols) and checks y[c] = e4m3(c) * (c % cols + 1) exactly.</summary>
    private static void EveryFp8Code(CudaContext ctx, CudaStream s, int cols, string what, Action<ulong, ulong, ulong, ulong, int, int> launch)
    {
        const int rows = 256;
        var q = new byte[rows * cols];
        for (int c = 0; c < rows; c++) q[c * cols + (c % cols)] = (byte)c;
        var scales = Enumerable.Repeat(1f, rows).ToArray();
        using var V = Gpu.Up(ctx, q); using var S = Gpu.Up(ctx, scales);
        using var X = Gpu.Up(ctx, Enumerable.Range(1, cols).Select(i => (float)i).ToArray()); using var Y = Gpu.Zeros(ctx, rows * 4L);
        launch(V.Ptr, S.Ptr, X.Ptr, Y.Ptr, rows, cols);
        s.Synchronize();
        var y = Y.ToArray<float>(rows);
        for (int c = 0; c < rows; c++)
        {
            float want = QuantFormats.E4M3Table[c] * (c % cols + 1);
            if (float.IsNaN(want)) Assert.True(float.IsNaN(y[c]), $"{what} code 0x{c:X2}: want NaN, got {y[c]}");
            else Assert.True(want == y[c] || (want == 0 && y[c] == 0), $"{what} code 0x{c:X2}: want {want}, got {y[c]}");
        }
    }

    /// <summary>Every nibble value at every position of a group: row n*32+p holds nibble n at element p (others 8 =
    /// zero), x[p] = p + 1, so y = (n - 8) * (p + 1) * d exactly.</summary>
    [Fact]
    public void EveryInt4NibbleAtEveryPosition()
    {
        var (ctx, k, s) = Require();
        using var _c = ctx; using var _k = k; using var _s = s;
        const int cols = 32, rows = 16 * 32;
        var p = new byte[rows * 16];
        Array.Fill(p, (byte)0x88);
        var d = new ushort[rows];
        for (int n = 0; n < 16; n++)
            for (int e = 0; e < 32; e++)
            {
                int row = n * 32 + e, at = row * 16 + e / 2;
                p[at] = (byte)(e % 2 == 0 ? (p[at] & 0xF0) | n : (p[at] & 0x0F) | (n << 4));
                d[row] = BitConverter.HalfToUInt16Bits((Half)0.25f);
            }
        var x = Enumerable.Range(1, cols).Select(i => (float)i).ToArray();
        using var V = Gpu.Up(ctx, p); using var S = Gpu.Up(ctx, d); using var X = Gpu.Up(ctx, x); using var Y = Gpu.Zeros(ctx, rows * 4L);
        foreach (int rpw in new[] { 1, 2, 4, 8, -4, -8 })   // negative: the staged-x variant with |rpw| rows per warp
        {
            Y.Zero();
            k.Matvec(s, DType.Int4, V.Ptr, S.Ptr, X.Ptr, Y.Ptr, 0, rows, cols, false, Math.Abs(rpw), rpw < 0);
            s.Synchronize();
            var y = Y.ToArray<float>(rows);
            for (int n = 0; n < 16; n++)
                for (int e = 0; e < 32; e++)
                    Assert.True((n - 8) * (e + 1) * 0.25f == y[n * 32 + e], $"r{rpw} nibble {n} at {e}: got {y[n * 32 + e]}");
        }
    }

    /// <summary>No NaN/inf from valid weights: saturated fp8 rows (±448 codes), all-zero rows (fp8 scale 1, int4 d = 0)
    /// and large activations; matches the reference.</summary>
    [Theory]
    [InlineData(DType.F8E4M3)]
    [InlineData(DType.Int4)]
    public void ExtremeWeightsStayFinite(DType dt)
    {
        var (ctx, k, s) = Require();
        using var _c = ctx; using var _k = k; using var _s = s;
        using var store = new NativeWeightStore();
        const int rows = 96, cols = 4096 + 64;
        nint p = store.Allocate((long)rows * cols * 4);
        var f = (float*)p;
        var r = Gpu.Rng();
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
                f[(long)i * cols + j] = (i % 3) switch
                {
                    0 => 0f,                                               // all-zero row
                    1 => (j % 2 == 0 ? 1f : -1f) * 60000f,                 // every weight at the row's absmax
                    _ => (float)(r.NextDouble() * 2 - 1) * 1e-3f,
                };
        var w = Quantizer.Quantize(new Tensor("w", DType.F32, new long[] { rows, cols }, p, "test"), dt, store);
        var x = Gpu.RandF(r, cols, 100f);
        using var V = Gpu.UpNative(ctx, w.Data, w.DataBytes); using var S = Gpu.UpNative(ctx, w.Scales, w.ScaleBytes);
        using var X = UpXWithNaNGuard(ctx, x); using var Y = Gpu.Zeros(ctx, rows * 4L);
        k.Matvec(s, dt, V.Ptr, S.Ptr, X.Ptr, Y.Ptr, 0, rows, cols, false);
        s.Synchronize();
        var want = new float[rows];
        CpuKernels.MatVec(w, x, want);
        var got = Y.ToArray<float>(rows);
        for (int i = 0; i < rows; i += 3) Assert.Equal(0f, got[i]);
        Gpu.Close(got, want, 1e-5, $"extreme {DTypes.Name(dt)}");
    }

    /// <summary>MoE: two slots pick experts 2 and 0 of three; each slot's y equals that expert's CPU matvec.</summary>
    [Theory]
    [InlineData(DType.F8E4M3, 0)]
    [InlineData(DType.Int4, 0)]
    [InlineData(DType.Int4, 2)]
    [InlineData(DType.F8E4M3, 4)]
    [InlineData(DType.Int4, 8)]
    [InlineData(DType.Int4, 4, true)]
    [InlineData(DType.F8E4M3, 2, true)]
    [InlineData(DType.F8E4M3, 0, false, "t1", 1152)]   // tensor cores (cols % 128 == 0)
    [InlineData(DType.F8E4M3, 0, false, "t4", 1152)]
    [InlineData(DType.Int4, 0, false, "t2", 1152)]
    [InlineData(DType.Int4, 0, false, "auto", 1152)]
    [InlineData(DType.Int4, 0, false, "auto", 1152, true)]
    public void MoeMatvecPicksTheExperts(DType dt, int rowsPerWarp, bool stageX = false, string? tc = null, int cols = 1056, bool tiled = false)
    {
        var (ctx, k, s) = tc is null ? Require() : RequireTc();
        using var _c = ctx; using var _k = k; using var _s = s;
        using var store = new NativeWeightStore();
        const int rows = 333, E = 3, slots = 2;
        var r = Gpu.Rng();
        var experts = Enumerable.Range(0, E).Select(_ => RandomQuantized(r, store, dt, rows, cols)).ToArray();
        var vals = experts.Select(e => Gpu.UpValues(ctx, e, tiled)).ToArray();
        var scs = experts.Select(e => Gpu.UpScales(ctx, e, tiled)).ToArray();
        try
        {
            var x = Gpu.RandF(r, slots * cols);
            using var VT = Gpu.Up(ctx, vals.Select(m => m.Ptr).ToArray());
            using var ST = Gpu.Up(ctx, scs.Select(m => m.Ptr).ToArray());
            var idx = new[] { 2, 0 };
            using var I = Gpu.Up(ctx, idx); using var X = Gpu.Up(ctx, x); using var Y = Gpu.Zeros(ctx, slots * rows * 4L);
            if (tc is null) k.MoeMatvec(s, dt, VT.Ptr, ST.Ptr, I.Ptr, X.Ptr, cols, Y.Ptr, rows, cols, slots, rowsPerWarp, stageX, tensorCores: false);
            else k.MoeMatvec(s, dt, VT.Ptr, ST.Ptr, I.Ptr, X.Ptr, cols, Y.Ptr, rows, cols, slots, tensorCores: true, tcVariant: tc == "auto" ? null : tc, tiled: tiled);
            s.Synchronize();
            var got = Y.ToArray<float>(slots * rows);
            for (int sl = 0; sl < slots; sl++)
            {
                var want = new float[rows];
                CpuKernels.MatVec(experts[idx[sl]], x.AsSpan(sl * cols, cols), want);
                Gpu.Close(got.AsSpan(sl * rows, rows), want, 1e-5, $"moe {DTypes.Name(dt)} {tc ?? $"r{rowsPerWarp}"}{(tiled ? " tiled" : "")} slot {sl}");
            }
        }
        finally
        {
            foreach (var m in vals.Concat(scs)) m.Dispose();
        }
    }

    // ---- tensor-core kernels (matvec_*_tc_impl) -----------------------------------------------------------------------

    private static (CudaContext Ctx, CudaQuantKernels K, CudaStream S) RequireTc(bool? forceFp8Convert = null)
    {
        var r = Require(forceFp8Convert);
        if (r.K.Arch < 80)
        {
            r.S.Dispose(); r.K.Dispose(); r.Ctx.Dispose();
            Assert.Skip($"The tensor-core matvec needs sm_80 or later (this GPU is sm_{r.K.Arch}).");
        }
        return r;
    }

    /// <summary>The tensor-core kernels against the CPU reference at the same 1e-5 bound as the CUDA-core ones: x is
    /// carried as two f16 parts, so only the summation order differs.</summary>
    [Theory]
    [InlineData(DType.F8E4M3, 257, 4096, true, true, "t1")]      // odd rows: the last tile rereads the last row
    [InlineData(DType.F8E4M3, 999, 4160, false, true, "t2")]     // 65 k-blocks: warps with one more than others
    [InlineData(DType.F8E4M3, 203, 8192, true, false, "t4")]
    [InlineData(DType.F8E4M3, 17, 64, false, false, "t1")]       // one k-block: seven warps without work
    [InlineData(DType.F8E4M3, 1, 1024, true, true, "t4")]        // one row in a 64-row block
    [InlineData(DType.F8E4M3, 999, 14336, true, false, "t1")]     // 224 k-blocks: 7 stages per warp
    [InlineData(DType.F8E4M3, 4097, 4096, true, true, "t1w")]    // 16-warp blocks
    [InlineData(DType.F8E4M3, 33, 1088, false, false, "t1w")]    // 17 k-blocks over 16 warps
    [InlineData(DType.Int4, 4097, 4096, true, true, "t1w")]
    [InlineData(DType.Int4, 33, 2176, false, false, "t1w")]
    [InlineData(DType.Int4, 301, 14336, false, true, "t1")]
    [InlineData(DType.F8E4M3, 4096, 14336, false, false, null)]  // the automatic tile count on a real shape
    [InlineData(DType.F8E4M3, 777, 4096, true, false, "t1", false)]   // the sm_80 bit fallback of the e4m3 conversion
    [InlineData(DType.Int4, 257, 4096, true, true, "t1")]
    [InlineData(DType.Int4, 999, 4224, false, true, "t2")]       // 33 k-blocks of 128 columns
    [InlineData(DType.Int4, 203, 8192, true, false, "t4")]
    [InlineData(DType.Int4, 33, 128, false, false, "t1")]        // one k-block
    [InlineData(DType.Int4, 5, 2048, true, true, "t4")]
    [InlineData(DType.Int4, 4096, 14336, false, true, null)]
    [InlineData(DType.Int4, 999, 4224, true, true, "t1b")]       // register-capped candidates
    [InlineData(DType.Int4, 1001, 4096, false, true, "t2b")]
    [InlineData(DType.Int4, 203, 14336, true, false, "t4b")]
    [InlineData(DType.F8E4M3, 999, 4160, true, true, "t1b")]
    [InlineData(DType.F8E4M3, 203, 4096, false, false, "t4b")]
    // the values in the tile order (QuantTileOrder, what CudaBackend stores): partial last 8-row blocks, every tile count
    [InlineData(DType.Int4, 257, 4096, true, true, "t1", null, true)]
    [InlineData(DType.Int4, 999, 4224, false, true, "t2", null, true)]
    [InlineData(DType.Int4, 5, 2048, true, true, "t4", null, true)]
    [InlineData(DType.Int4, 33, 128, false, false, "t1", null, true)]
    [InlineData(DType.Int4, 33, 2176, false, false, "t1w", null, true)]
    [InlineData(DType.Int4, 999, 4224, true, true, "t1b", null, true)]
    [InlineData(DType.Int4, 1001, 4096, false, true, "t2b", null, true)]
    [InlineData(DType.Int4, 203, 14336, true, false, "t4b", null, true)]
    public void TensorCoreMatvecMatchesCpuReference(DType dt, int rows, int cols, bool bias, bool accumulate, string? variant, bool? forceFp8Convert = null, bool tiled = false)
    {
        var (ctx, k, s) = RequireTc(forceFp8Convert);
        using var _c = ctx; using var _k = k; using var _s = s;
        Assert.True(CudaQuantKernels.TensorCoreShape(dt, cols));
        using var store = new NativeWeightStore();
        var r = Gpu.Rng();
        var w = RandomQuantized(r, store, dt, rows, cols);
        var x = Gpu.RandF(r, cols);
        var b = Gpu.RandF(r, rows);
        var y0 = Gpu.RandF(r, rows);
        using var V = Gpu.UpValues(ctx, w, tiled); using var S = Gpu.UpScales(ctx, w, tiled);
        using var X = UpXWithNaNGuard(ctx, x); using var B = Gpu.Up(ctx, b); using var Y = Gpu.Up(ctx, y0);
        k.Matvec(s, dt, V.Ptr, S.Ptr, X.Ptr, Y.Ptr, bias ? B.Ptr : 0, rows, cols, accumulate, tensorCores: true, tcVariant: variant, tiled: tiled);
        s.Synchronize();
        var want = new float[rows];
        CpuKernels.MatVec(w, x, want);
        for (int i = 0; i < rows; i++)
        {
            if (bias) want[i] += b[i];
            if (accumulate) want[i] += y0[i];
        }
        Gpu.Close(Y.ToArray<float>(rows), want, 1e-5, $"tensor-core matvec {DTypes.Name(dt)} {rows}x{cols} {variant ?? "auto"}{(tiled ? " tiled" : "")}");
    }

    /// <summary>The launchers pick the tensor-core kernel by default where the shape allows, and a rows-per-warp
    /// request keeps the CUDA-core kernel (so the tests above still test those).</summary>
    [Fact]
    public void TensorCoresAreTheDefaultWhereTheShapeFits()
    {
        var (ctx, k, s) = RequireTc();
        using var _c = ctx; using var _k = k; using var _s = s;
        if (Environment.GetEnvironmentVariable("CALM_QUANT_TC") == "0") Assert.False(k.TensorCores);
        else Assert.True(k.TensorCores);
        Assert.True(CudaQuantKernels.TensorCoreShape(DType.F8E4M3, 4096));
        Assert.False(CudaQuantKernels.TensorCoreShape(DType.F8E4M3, 4112));
        Assert.True(CudaQuantKernels.TensorCoreShape(DType.Int4, 14336));
        Assert.False(CudaQuantKernels.TensorCoreShape(DType.Int4, 4160));
        Assert.Equal("t1", CudaQuantKernels.TcVariant(DType.F8E4M3, 128256));   // fp8: one tile per block for every shape
        Assert.Equal("t1", CudaQuantKernels.TcVariant(DType.F8E4M3, 28672));
        Assert.Equal("t1", CudaQuantKernels.TcVariant(DType.F8E4M3, 14336));
        Assert.Equal("t4", CudaQuantKernels.TcVariant(DType.F8E4M3, 28672, "t4"));
        Assert.Equal("t2", CudaQuantKernels.TcVariant(DType.F8E4M3, 14336 * 2, moe: true));   // fp8 MoE experts: two tiles per block
        Assert.Equal("t1", CudaQuantKernels.TcVariant(DType.F8E4M3, 14336 * 2, "t1", moe: true));
        Assert.Equal("t2b", CudaQuantKernels.TcVariant(DType.Int4, 28672, cappedInt4: true, moe: true));   // int4 MoE: the dense rule
        Assert.Equal("t2b", CudaQuantKernels.TcVariant(DType.Int4, 28672, cappedInt4: true));
        Assert.Equal("t2b", CudaQuantKernels.TcVariant(DType.Int4, 128256, cappedInt4: true));
        Assert.Equal("t1b", CudaQuantKernels.TcVariant(DType.Int4, 6144, cappedInt4: true));
        Assert.Equal("t1", CudaQuantKernels.TcVariant(DType.Int4, 4096, cappedInt4: true));   // o and down: the uncapped t1
        Assert.Equal("t2", CudaQuantKernels.TcVariant(DType.Int4, 28672, cappedInt4: false));
        Assert.Equal("t4", CudaQuantKernels.TcVariant(DType.Int4, 57344, cappedInt4: false));
        Assert.Equal("t1", CudaQuantKernels.TcVariant(DType.Int4, 6144, cappedInt4: false));
        Assert.Equal("t4", CudaQuantKernels.TcVariant(DType.Int4, 4096, "t4"));
    }

    /// <summary>Every e4m3 code through the tensor cores: row c holds code c at column c % 64, x[j] = j + 1, scale 1,
    /// so y[c] = e4m3(c) * (j + 1) exactly (NaN for 0x7F and 0xFF: the warp's fp32 redo keeps the NaN).</summary>
    [Theory]
    [InlineData(null)]
    [InlineData(false)]
    public void EveryFp8CodeDecodesExactlyOnTensorCores(bool? forceFp8Convert)
    {
        var (ctx, k, s) = RequireTc(forceFp8Convert);
        using var _c = ctx; using var _k = k; using var _s = s;
        foreach (var tiles in CudaQuantKernels.TcVariants)
            EveryFp8Code(ctx, s, 64, tiles, (V, S, X, Y, rows, cols) => k.Matvec(s, DType.F8E4M3, V, S, X, Y, 0, rows, cols, false, tensorCores: true, tcVariant: tiles));
    }

    /// <summary>Every nibble value at every position of a 128-column k-block (four groups with different scales) on
    /// the tensor cores: row n*128 + p holds nibble n at element p (others 8), group g's scale 2^-(g+1),
    /// x[p] = p + 1, so y = (n - 8) * (p + 1) * 2^-(p/32+1) exactly.</summary>
    [Fact]
    public void EveryInt4NibbleAtEveryPositionOnTensorCores()
    {
        var (ctx, k, s) = RequireTc();
        using var _c = ctx; using var _k = k; using var _s = s;
        const int cols = 128, rows = 16 * cols, G = cols / 32;
        var p = new byte[rows * G * 16];
        Array.Fill(p, (byte)0x88);
        var d = new ushort[rows * G];
        for (int n = 0; n < 16; n++)
            for (int e = 0; e < cols; e++)
            {
                int row = n * cols + e, at = row * G * 16 + e / 2;
                p[at] = (byte)(e % 2 == 0 ? (p[at] & 0xF0) | n : (p[at] & 0x0F) | (n << 4));
                for (int gi = 0; gi < G; gi++) d[row * G + gi] = BitConverter.HalfToUInt16Bits((Half)MathF.Pow(2, -(gi + 1)));
            }
        var x = Enumerable.Range(1, cols).Select(i => (float)i).ToArray();
        using var V = Gpu.Up(ctx, p); using var S = Gpu.Up(ctx, d); using var X = Gpu.Up(ctx, x); using var Y = Gpu.Zeros(ctx, rows * 4L);
        foreach (var tiles in CudaQuantKernels.TcVariants)
        {
            Y.Zero();
            k.Matvec(s, DType.Int4, V.Ptr, S.Ptr, X.Ptr, Y.Ptr, 0, rows, cols, false, tensorCores: true, tcVariant: tiles);
            s.Synchronize();
            var y = Y.ToArray<float>(rows);
            for (int n = 0; n < 16; n++)
                for (int e = 0; e < cols; e++)
                    Assert.True((n - 8) * (e + 1) * MathF.Pow(2, -(e / 32 + 1)) == y[n * cols + e], $"{tiles} nibble {n} at {e}: got {y[n * cols + e]}");
        }
    }

    /// <summary>Activations beyond f16 (1e5, -3e6, 1e9 at three columns) make the affected warps redo their k-blocks in
    /// fp32: the result still matches the reference at 1e-5 and stays finite;
    /// an inf in x gives inf/NaN as on the CPU.</summary>
    [Theory]
    [InlineData(DType.F8E4M3, false)]
    [InlineData(DType.Int4, false)]
    [InlineData(DType.Int4, true)]   // the fp32 redo reads the tile order too
    public void LargeActivationsFallBackToFp32(DType dt, bool tiled)
    {
        var (ctx, k, s) = RequireTc();
        using var _c = ctx; using var _k = k; using var _s = s;
        using var store = new NativeWeightStore();
        const int rows = 100, cols = 4096;
        var r = Gpu.Rng();
        var w = RandomQuantized(r, store, dt, rows, cols);
        var x = Gpu.RandF(r, cols);
        x[5] = 1e5f; x[1000] = -3e6f; x[4095] = 1e9f;
        using var V = Gpu.UpValues(ctx, w, tiled); using var S = Gpu.UpScales(ctx, w, tiled);
        using var X = UpXWithNaNGuard(ctx, x); using var Y = Gpu.Zeros(ctx, rows * 4L);
        var want = new float[rows];
        CpuKernels.MatVec(w, x, want);
        foreach (var tiles in new[] { "t1", "t4" })
        {
            k.Matvec(s, dt, V.Ptr, S.Ptr, X.Ptr, Y.Ptr, 0, rows, cols, false, tensorCores: true, tcVariant: tiles, tiled: tiled);
            s.Synchronize();
            Gpu.Close(Y.ToArray<float>(rows), want, 1e-5, $"large x {DTypes.Name(dt)} {tiles}{(tiled ? " tiled" : "")}");
        }
        // the reference's own arithmetic for inf: every row that meets the inf is non-finite on both sides
        x[77] = float.PositiveInfinity;
        using var X2 = UpXWithNaNGuard(ctx, x);
        CpuKernels.MatVec(w, x, want);
        k.Matvec(s, dt, V.Ptr, S.Ptr, X2.Ptr, Y.Ptr, 0, rows, cols, false, tensorCores: true, tiled: tiled);
        s.Synchronize();
        var got = Y.ToArray<float>(rows);
        for (int i = 0; i < rows; i++) Assert.Equal(float.IsFinite(want[i]), float.IsFinite(got[i]));
    }

    /// <summary>gate_up fused with the activation: h[p] = act(gate_p . x + b_p) * (up_p . x + b_F+p) from the CPU
    /// reference's matvec over the whole [2F, cols] matrix, at 1e-5.</summary>
    [Theory]
    [InlineData(DType.F8E4M3, 77, 4096, true, Activation.Silu, "t1")]    // F % 8 != 0: the last tile rereads the last pair
    [InlineData(DType.F8E4M3, 1000, 2048, false, Activation.GeluTanh, "t2")]
    [InlineData(DType.F8E4M3, 300, 1024, true, Activation.Gelu, "t4")]
    [InlineData(DType.F8E4M3, 333, 4096, false, Activation.Silu, null)]
    [InlineData(DType.Int4, 77, 4096, true, Activation.Silu, "t1")]
    [InlineData(DType.Int4, 1000, 2048, false, Activation.GeluTanh, "t2")]
    [InlineData(DType.Int4, 300, 1024, true, Activation.Silu, "t4")]
    [InlineData(DType.F8E4M3, 301, 4096, true, Activation.Silu, "t1w")]
    [InlineData(DType.Int4, 301, 4096, true, Activation.GeluTanh, "t1w")]
    [InlineData(DType.Int4, 14336, 4096, false, Activation.Silu, null)]  // the Llama-3-8B shape, automatic variant
    [InlineData(DType.Int4, 77, 4096, true, Activation.Silu, "t1", true)]   // tile order; F % 8 != 0: the up rows straddle blocks
    [InlineData(DType.Int4, 1000, 2048, false, Activation.GeluTanh, "t2b", true)]
    [InlineData(DType.Int4, 300, 1024, true, Activation.Silu, "t4", true)]
    [InlineData(DType.Int4, 14336, 4096, false, Activation.Silu, null, true)]
    public void GluMatvecMatchesCpuReference(DType dt, int F, int cols, bool bias, Activation act, string? variant, bool tiled = false)
    {
        var (ctx, k, s) = RequireTc();
        using var _c = ctx; using var _k = k; using var _s = s;
        Assert.True(k.GluSupported(dt, cols));
        using var store = new NativeWeightStore();
        var r = Gpu.Rng();
        var w = RandomQuantized(r, store, dt, 2 * F, cols);
        var x = Gpu.RandF(r, cols);
        var b = Gpu.RandF(r, 2 * F);
        using var V = Gpu.UpValues(ctx, w, tiled); using var S = Gpu.UpScales(ctx, w, tiled);
        using var X = UpXWithNaNGuard(ctx, x); using var B = Gpu.Up(ctx, b); using var H = Gpu.Zeros(ctx, F * 4L);
        k.MatvecGlu(s, dt, V.Ptr, S.Ptr, X.Ptr, H.Ptr, bias ? B.Ptr : 0, F, cols, act, variant, tiled: tiled);
        s.Synchronize();
        var gu = new float[2 * F];
        CpuKernels.MatVec(w, x, gu);
        var want = new float[F];
        for (int p = 0; p < F; p++)
        {
            float g = gu[p] + (bias ? b[p] : 0), u = gu[F + p] + (bias ? b[F + p] : 0);
            float a = act switch
            {
                Activation.Silu => Gpu.Silu(g),
                Activation.GeluTanh => Gpu.GeluTanh(g),
                _ => (float)(0.5 * g * (1 + Erf(g / Math.Sqrt(2)))),
            };
            want[p] = a * u;
        }
        Gpu.Close(H.ToArray<float>(F), want, 1e-5, $"glu {DTypes.Name(dt)} F={F} {act} {variant ?? "auto"}{(tiled ? " tiled" : "")}");
    }

    /// <summary>The qkv projection fused with RoPE and the fp16 KV write (QKV mode of the tensor-core kernels) against the
    /// CPU: the matvec of the whole [(H + 2K) Hd, cols] matrix (+ bias), q and k heads rotated (rotate_half, cos/sin
    /// random tables at the step's position), q compared in the qkv buffer at 1e-5, k and v in the fp16 caches at
    /// the f16 rounding; GQA and MHA, head_dim 16 / 64 / 128, every variant.</summary>
    [Theory]
    [InlineData(DType.F8E4M3, 8, 2, 128, 1024, true, "t1", 5)]
    [InlineData(DType.F8E4M3, 4, 4, 64, 256, false, "t2", 0)]
    [InlineData(DType.F8E4M3, 32, 8, 128, 4096, false, null, 37)]   // the Llama-3-8B shape, automatic variant
    [InlineData(DType.F8E4M3, 6, 3, 16, 128, true, "t4", 9)]
    [InlineData(DType.Int4, 8, 2, 128, 1024, true, "t1", 5)]
    [InlineData(DType.Int4, 4, 4, 64, 256, false, "t1w", 3)]
    [InlineData(DType.Int4, 32, 8, 128, 4096, true, null, 63)]
    [InlineData(DType.Int4, 6, 3, 16, 128, false, "t2", 1)]
    [InlineData(DType.Int4, 4, 4, 64, 256, false, "t1w", 3, true)]
    [InlineData(DType.Int4, 6, 3, 16, 128, false, "t2", 1, true)]
    [InlineData(DType.Int4, 32, 8, 128, 4096, true, null, 63, true)]
    public void QkvRopeMatvecMatchesCpuReference(DType dt, int H, int K, int Hd, int cols, bool bias, string? variant, int pos, bool tiled = false)
    {
        var (ctx, k, s) = RequireTc();
        using var _c = ctx; using var _k = k; using var _s = s;
        Assert.True(k.QkvRopeSupported(dt, cols, Hd));
        using var store = new NativeWeightStore();
        var r = Gpu.Rng();
        int rows = (H + 2 * K) * Hd, half = Hd / 2, maxCtx = 64;
        var w = RandomQuantized(r, store, dt, rows, cols);
        var x = Gpu.RandF(r, cols);
        var b = Gpu.RandF(r, rows);
        var cos = Gpu.RandF(r, maxCtx * half); var sin = Gpu.RandF(r, maxCtx * half);
        using var V = Gpu.UpValues(ctx, w, tiled); using var S = Gpu.UpScales(ctx, w, tiled);
        using var X = UpXWithNaNGuard(ctx, x); using var B = Gpu.Up(ctx, b);
        using var C = Gpu.Up(ctx, cos); using var Sn = Gpu.Up(ctx, sin);
        using var Y = Gpu.Zeros(ctx, rows * 4L);
        using var Kc = Gpu.Zeros(ctx, (long)K * maxCtx * Hd * 2); using var Vc = Gpu.Zeros(ctx, (long)K * maxCtx * Hd * 2);
        using var St = Gpu.Up(ctx, new[] { 0, pos });
        k.MatvecQkvRope(s, dt, V.Ptr, S.Ptr, X.Ptr, Y.Ptr, bias ? B.Ptr : 0, H, K, Hd, cols, C.Ptr, Sn.Ptr, Kc.Ptr, Vc.Ptr, maxCtx, St.Ptr, variant, tiled: tiled);
        s.Synchronize();
        var y = new float[rows];
        CpuKernels.MatVec(w, x, y);
        if (bias) for (int i = 0; i < rows; i++) y[i] += b[i];
        var want = Enumerable.Range(0, H + 2 * K).SelectMany(u => Gpu.RopeHead(y, u, H, K, Hd, half, cos, sin, pos)).ToArray();
        string what = $"qkv+rope {DTypes.Name(dt)} H={H} K={K} Hd={Hd} cols={cols} {variant ?? "auto"}{(tiled ? " tiled" : "")}";
        Gpu.Close(Y.ToArray<float>(H * Hd), want.AsSpan(0, H * Hd).ToArray(), 1e-5, what + " q");
        var kc = Kc.ToArray<ushort>(K * maxCtx * Hd); var vc = Vc.ToArray<ushort>(K * maxCtx * Hd);
        var gotK = new float[K * Hd]; var gotV = new float[K * Hd];
        for (int kh = 0; kh < K; kh++)
            for (int d = 0; d < Hd; d++)
            {
                gotK[kh * Hd + d] = Gpu.FromBits(kc[(kh * maxCtx + pos) * Hd + d], DType.F16);
                gotV[kh * Hd + d] = Gpu.FromBits(vc[(kh * maxCtx + pos) * Hd + d], DType.F16);
            }
        // f16 rounding of the cache: 2^-11 relative per element at most
        Gpu.Close(gotK, want.AsSpan(H * Hd, K * Hd).ToArray(), 1e-3, what + " k cache");
        Gpu.Close(gotV, want.AsSpan((H + K) * Hd, K * Hd).ToArray(), 1e-3, what + " v cache");
        // nothing written at other positions
        for (int i = 0; i < kc.Length; i++)
            if ((i / Hd) % maxCtx != pos) { Assert.Equal(0, kc[i]); Assert.Equal(0, vc[i]); }
    }

    /// <summary>RMSNorm folded into the tensor-core kernels (NormFold): an accumulating o-like matvec writes x, x * g and
    /// its per-block sums of x², then a plain matvec, gate_up + activation and qkv + RoPE read x * g and normalise it
    /// themselves; each against rmsnorm (in double) then the CPU matvec of the same quantized weights, at the bounds
    /// of the unfolded tests. The residual x0 is large (scale 30) so an unnormalised x in the f16 parts would show.</summary>
    [Theory]
    [InlineData(DType.F8E4M3, false, "t1")]
    [InlineData(DType.F8E4M3, true, "t1w")]
    [InlineData(DType.Int4, true, null)]
    [InlineData(DType.Int4, false, "t4")]
    [InlineData(DType.Int4, false, "t2")]
    [InlineData(DType.Int4, true, "t1", true)]
    public void FoldedNormMatchesRmsNormThenMatvecOnTensorCores(DType dt, bool addOne, string? variant, bool tiled = false)
    {
        var (ctx, k, s) = RequireTc();
        using var _c = ctx; using var _k = k; using var _s = s;
        int D = 1024, Q = 512, F = 200, C = 300, H = 4, K = 2, Hd = 64, qkvRows = (H + 2 * K) * Hd, maxCtx = 16, pos = 3;
        const float eps = 1e-5f;
        Assert.True(k.FoldSupported(dt, D) && k.FoldSupported(dt, Q));
        using var store = new NativeWeightStore();
        var r = Gpu.Rng();
        var wo = RandomQuantized(r, store, dt, D, Q);
        var wc = RandomQuantized(r, store, dt, C, D);
        var wg = RandomQuantized(r, store, dt, 2 * F, D);
        var wq = RandomQuantized(r, store, dt, qkvRows, D);
        var x0 = Gpu.RandF(r, D, 30f); var att = Gpu.RandF(r, Q); var bo = Gpu.RandF(r, D); var bc = Gpu.RandF(r, C); var g = Gpu.RandF(r, D);
        var (cos, sin) = Gpu.RopeTables(maxCtx, Hd);
        CudaDeviceMemory Up(Tensor t) => Gpu.UpValues(ctx, t, tiled);
        CudaDeviceMemory UpS(Tensor t) => Gpu.UpScales(ctx, t, tiled);
        using var Vo = Up(wo); using var So = UpS(wo); using var Vc = Up(wc); using var Sc = UpS(wc);
        using var Vg = Up(wg); using var Sg = UpS(wg); using var Vq = Up(wq); using var Sq = UpS(wq);
        using var X = Gpu.Up(ctx, x0); using var A = Gpu.Up(ctx, att); using var Bo = Gpu.Up(ctx, bo); using var Bc = Gpu.Up(ctx, bc); using var G = Gpu.Up(ctx, g);
        using var Cs = Gpu.Up(ctx, cos); using var Sn = Gpu.Up(ctx, sin);
        using var Xg = Gpu.Zeros(ctx, D * 4L); using var Ss = Gpu.Zeros(ctx, D * 4L);
        using var Y = Gpu.Zeros(ctx, C * 4L); using var Hh = Gpu.Zeros(ctx, F * 4L); using var Qo = Gpu.Zeros(ctx, qkvRows * 4L);
        using var KC = Gpu.Zeros(ctx, (long)K * maxCtx * Hd * 2); using var VC = Gpu.Zeros(ctx, (long)K * maxCtx * Hd * 2);
        using var step = Gpu.Up(ctx, new[] { 0, pos });

        k.Matvec(s, dt, Vo.Ptr, So.Ptr, A.Ptr, X.Ptr, Bo.Ptr, D, Q, true, tcVariant: variant, fold: NormFold.Producer(G.Ptr, Xg.Ptr, Ss.Ptr, addOne), tiled: tiled);
        var cons = NormFold.Consumer(Ss.Ptr, k.FoldPartials(dt, D, variant), eps);
        k.Matvec(s, dt, Vc.Ptr, Sc.Ptr, Xg.Ptr, Y.Ptr, Bc.Ptr, C, D, false, tcVariant: variant, fold: cons, tiled: tiled);
        k.MatvecGlu(s, dt, Vg.Ptr, Sg.Ptr, Xg.Ptr, Hh.Ptr, 0, F, D, Activation.Silu, variant, cons, tiled);
        k.MatvecQkvRope(s, dt, Vq.Ptr, Sq.Ptr, Xg.Ptr, Qo.Ptr, 0, H, K, Hd, D, Cs.Ptr, Sn.Ptr, KC.Ptr, VC.Ptr, maxCtx, step.Ptr, variant, cons, tiled);
        s.Synchronize();

        string what = $"{DTypes.Name(dt)} {variant ?? "auto"}{(tiled ? " tiled" : "")}";
        var x2 = new float[D];
        CpuKernels.MatVec(wo, att, x2);
        for (int i = 0; i < D; i++) x2[i] += bo[i] + x0[i];
        Gpu.Close(X.ToArray<float>(D), x2, 1e-5, what + ": producer's residual");
        float Gain(int j) => addOne ? 1 + g[j] : g[j];
        Gpu.Close(Xg.ToArray<float>(D), x2.Select((v, j) => v * Gain(j)).ToArray(), 1e-5, what + ": producer's x * g");
        double ss = 0; foreach (var v in x2) ss += (double)v * v;
        double inv = 1 / Math.Sqrt(ss / D + eps);
        var n2 = Enumerable.Range(0, D).Select(j => (float)(x2[j] * inv * Gain(j))).ToArray();
        var yc = new float[C];
        CpuKernels.MatVec(wc, n2, yc);
        for (int i = 0; i < C; i++) yc[i] += bc[i];
        Gpu.Close(Y.ToArray<float>(C), yc, 1e-5, what + ": consumer matvec");
        var gu = new float[2 * F];
        CpuKernels.MatVec(wg, n2, gu);
        Gpu.Close(Hh.ToArray<float>(F), Enumerable.Range(0, F).Select(p => Gpu.Silu(gu[p]) * gu[F + p]).ToArray(), 1e-5, what + ": consumer gate_up + activation");
        var qkv = new float[qkvRows];
        CpuKernels.MatVec(wq, n2, qkv);
        Gpu.Close(Qo.ToArray<float>(H * Hd), Enumerable.Range(0, H).SelectMany(b => Gpu.RopeHead(qkv, b, H, K, Hd, Hd / 2, cos, sin, pos)).ToArray(), 1e-5,
                  what + ": consumer qkv + RoPE");
    }

    /// <summary>erf to ~1e-7 (Abramowitz-Stegun 7.1.26 is too coarse for a 1e-5 bound; this is a series/continued
    /// fraction in double).</summary>
    private static double Erf(double z)
    {
        double a = Math.Abs(z);
        double r;
        if (a < 3)
        {
            double sum = 0, term = a;   // Maclaurin: 2/sqrt(pi) * sum (-1)^n z^(2n+1) / (n! (2n+1))
            for (int n = 0; n < 60; n++)
            {
                sum += term / (2 * n + 1);
                term *= -a * a / (n + 1);
            }
            r = 2 / Math.Sqrt(Math.PI) * sum;
        }
        else
        {
            double f = 0;   // erfc continued fraction
            for (int n = 60; n >= 1; n--) f = n / 2.0 / (a + f);
            r = 1 - Math.Exp(-a * a) / Math.Sqrt(Math.PI) / (a + f);
        }
        return z < 0 ? -r : r;
    }

    /// <summary>MoE gate_up with the activation fused: two slots pick experts 1 and 2 of three.</summary>
    [Theory]
    [InlineData(DType.F8E4M3, false)]
    [InlineData(DType.Int4, false)]
    [InlineData(DType.Int4, true)]   // the tile order
    public void MoeGluMatvecOnTensorCores(DType dt, bool tiled)
    {
        var (ctx, k, s) = RequireTc();
        using var _c = ctx; using var _k = k; using var _s = s;
        using var store = new NativeWeightStore();
        const int F = 200, cols = 1024, E = 3, slots = 2;
        var r = Gpu.Rng();
        var experts = Enumerable.Range(0, E).Select(_ => RandomQuantized(r, store, dt, 2 * F, cols)).ToArray();
        var vals = experts.Select(e => Gpu.UpValues(ctx, e, tiled)).ToArray();
        var scs = experts.Select(e => Gpu.UpScales(ctx, e, tiled)).ToArray();
        try
        {
            var x = Gpu.RandF(r, cols);
            using var VT = Gpu.Up(ctx, vals.Select(m => m.Ptr).ToArray());
            using var ST = Gpu.Up(ctx, scs.Select(m => m.Ptr).ToArray());
            var idx = new[] { 1, 2 };
            using var I = Gpu.Up(ctx, idx); using var X = Gpu.Up(ctx, x); using var H = Gpu.Zeros(ctx, slots * F * 4L);
            k.MoeMatvecGlu(s, dt, VT.Ptr, ST.Ptr, I.Ptr, X.Ptr, 0, H.Ptr, F, cols, slots, Activation.Silu, tiled: tiled);
            s.Synchronize();
            var got = H.ToArray<float>(slots * F);
            for (int sl = 0; sl < slots; sl++)
            {
                var gu = new float[2 * F];
                CpuKernels.MatVec(experts[idx[sl]], x, gu);
                var want = Enumerable.Range(0, F).Select(p => Gpu.Silu(gu[p]) * gu[F + p]).ToArray();
                Gpu.Close(got.AsSpan(sl * F, F), want, 1e-5, $"moe glu {DTypes.Name(dt)}{(tiled ? " tiled" : "")} slot {sl}");
            }
        }
        finally
        {
            foreach (var m in vals.Concat(scs)) m.Dispose();
        }
    }

    /// <summary>The block cap under programmatic launch (CudaQuantKernels.ClampsBlocksPerSm, forced on for both formats):
    /// a launch of b blocks fits min(the kernel's own limit, ceil(b / SMs)) of them per multiprocessor, and the capped
    /// launches (plain and fused GLU) still match the CPU at 1e-5.</summary>
    [Theory]
    [InlineData(DType.F8E4M3)]
    [InlineData(DType.Int4)]
    public void BlockCapLimitsResidentBlocksAndKeepsResults(DType dt)
    {
        var why = CudaDeviceInfo.Unavailable();
        if (why is not null) Assert.Skip("No usable CUDA device: " + why);
        var info = CudaDeviceInfo.List()[0];
        if (info.Arch < 90 || !Cu.HasLaunchKernelEx) Assert.Skip($"The block cap comes with programmatic launch: sm_90 and a CUDA 12 driver (this GPU is sm_{info.Arch}).");
        using var ctx = CudaContext.Acquire(0);
        using var k = new CudaQuantKernels(ctx, info.Arch, pdl: true, clampBlocksPerSm: true);
        using var uncapped = new CudaQuantKernels(ctx, info.Arch, pdl: true, clampBlocksPerSm: false);
        using var s = new CudaStream(ctx);
        Assert.True(k.Programmatic && k.ClampsBlocksPerSm(dt));
        int sms = info.Multiprocessors;
        foreach (var variant in new[] { "t1", "t1b", "t4" })
            foreach (long blocks in new long[] { sms / 2, sms + 1, 2L * sms - 3, 3L * sms, 50L * sms })
            {
                int own = uncapped.ResidentBlocksPerSm(dt, "tc", variant, blocks);
                Assert.True(own >= 1, $"{variant}: the driver reports {own} resident blocks");
                int want = (int)Math.Min(own, (blocks + sms - 1) / sms);
                Assert.Equal(want, k.ResidentBlocksPerSm(dt, "tc", variant, blocks));
            }
        using var store = new NativeWeightStore();
        var r = Gpu.Rng();
        const int rows = 1000, cols = 4096;
        var w = RandomQuantized(r, store, dt, rows, cols);
        var x = Gpu.RandF(r, cols);
        using var V = Gpu.UpNative(ctx, w.Data, w.DataBytes); using var S = Gpu.UpNative(ctx, w.Scales, w.ScaleBytes);
        using var X = UpXWithNaNGuard(ctx, x); using var Y = Gpu.Zeros(ctx, rows * 4L); using var H = Gpu.Zeros(ctx, rows / 2 * 4L);
        var want0 = new float[rows];
        CpuKernels.MatVec(w, x, want0);
        foreach (var variant in new[] { "t1", "t1b", "t4" })
        {
            k.Matvec(s, dt, V.Ptr, S.Ptr, X.Ptr, Y.Ptr, 0, rows, cols, false, tensorCores: true, tcVariant: variant);
            k.MatvecGlu(s, dt, V.Ptr, S.Ptr, X.Ptr, H.Ptr, 0, rows / 2, cols, Activation.Silu, variant);
            s.Synchronize();
            Gpu.Close(Y.ToArray<float>(rows), want0, 1e-5, $"capped matvec {DTypes.Name(dt)} {variant}");
            var h = H.ToArray<float>(rows / 2);
            var hw = new float[rows / 2];
            for (int i = 0; i < rows / 2; i++) hw[i] = Gpu.Silu(want0[i]) * want0[rows / 2 + i];
            Gpu.Close(h, hw, 1e-5, $"capped GLU {DTypes.Name(dt)} {variant}");
        }
    }

    /// <summary>The device's reorders into the tile order (what CudaBackend runs at upload: quant_tile for values,
    /// quant_tile_scales for int4 scales) give exactly <see cref="QuantTileOrder.Tile"/>'s bytes with the same piece,
    /// the padding rows of a partial last block zero (the destination is filled with 0xAB first, so a padding row left
    /// unwritten shows); rows that are not whole pieces are refused.</summary>
    [Theory]
    [InlineData(1, 64, QuantTileOrder.PieceBytes)]
    [InlineData(13, 192, QuantTileOrder.PieceBytes)]
    [InlineData(333, 4096, QuantTileOrder.PieceBytes)]
    [InlineData(4099, 7168, QuantTileOrder.PieceBytes)]        // an int4 row of 14336 columns
    [InlineData(1, 8, QuantTileOrder.ScalePieceBytes)]
    [InlineData(13, 264, QuantTileOrder.ScalePieceBytes)]      // 4224 columns: 132 groups, not a multiple of 16 bytes
    [InlineData(333, 256, QuantTileOrder.ScalePieceBytes)]     // 4096 columns
    [InlineData(4099, 896, QuantTileOrder.ScalePieceBytes)]    // 14336 columns
    public void TileReordersMatchTheHostOrder(int rows, int rowBytes, int piece)
    {
        var (ctx, k, s) = Require();
        using var _c = ctx; using var _k = k; using var _s = s;
        var r = Gpu.Rng();
        var m = new byte[(long)rows * rowBytes];
        r.NextBytes(m);
        long n = QuantTileOrder.Bytes(rows, rowBytes);
        using var Src = Gpu.Up(ctx, m);
        using var Dst = CudaDeviceMemory.Allocate(ctx, n);
        Dst.CopyFromHost<byte>(Enumerable.Repeat((byte)0xAB, (int)n).ToArray());
        k.Tile(s, Src.Ptr, Dst.Ptr, rows, rowBytes, piece);
        s.Synchronize();
        var got = Dst.ToArray<byte>((int)n);
        Assert.True(QuantTileOrder.Tile(m, rows, rowBytes, piece).AsSpan().SequenceEqual(got),
            $"{rows} rows of {rowBytes} bytes, {piece}-byte pieces: the device's tile order differs from the host's");
        Assert.Throws<ArgumentException>(() => k.Tile(s, Src.Ptr, Dst.Ptr, rows, piece + 4, piece));
    }

    /// <summary>Values in the tile order are for the int4 tensor-core kernels only: a call that takes a CUDA-core kernel
    /// (rows per warp, staged x, the tensor cores off) or an fp8 kernel with tiled values is refused, not run on the
    /// wrong bytes.</summary>
    [Fact]
    public void TiledValuesAreRefusedByTheCudaCoreKernels()
    {
        var (ctx, k, s) = Require();
        using var _c = ctx; using var _k = k; using var _s = s;
        using var Z = Gpu.Zeros(ctx, 1 << 16);
        Assert.Throws<ArgumentException>(() => k.Matvec(s, DType.F8E4M3, Z.Ptr, Z.Ptr, Z.Ptr, Z.Ptr, 0, 16, 1024, false, rowsPerWarp: 2, tiled: true));
        Assert.Throws<ArgumentException>(() => k.Matvec(s, DType.Int4, Z.Ptr, Z.Ptr, Z.Ptr, Z.Ptr, 0, 16, 1024, false, tensorCores: false, tiled: true));
        Assert.Throws<ArgumentException>(() => k.MoeMatvec(s, DType.Int4, Z.Ptr, Z.Ptr, Z.Ptr, Z.Ptr, 0, Z.Ptr, 16, 1024, 1, stageX: true, tiled: true));
        Assert.Throws<CalmException>(() => CudaQuantKernels.Bench(64, 1024, DType.Int4, repeat: 1, rowsPerWarp: 2, tiled: true));
        // and for int4 only: the fp8 tensor-core kernels read row-major values (kernels/matvec_quant.cu says why)
        Assert.Throws<ArgumentException>(() => k.Matvec(s, DType.F8E4M3, Z.Ptr, Z.Ptr, Z.Ptr, Z.Ptr, 0, 16, 1024, false, tensorCores: true, tiled: true));
        Assert.Throws<ArgumentException>(() => k.MatvecGlu(s, DType.F8E4M3, Z.Ptr, Z.Ptr, Z.Ptr, Z.Ptr, 0, 8, 1024, Activation.Silu, tiled: true));
        Assert.Throws<CalmException>(() => CudaQuantKernels.Bench(64, 1024, DType.F8E4M3, repeat: 1, tiled: true));
    }

    /// <summary>On sm_89+ with NVRTC ≥ 11.8 the image uses the hardware e4m3 conversion.</summary>
    [Fact]
    public void HardwareFp8ConversionWhereAvailable()
    {
        var (ctx, k, s) = Require();
        using var _c = ctx; using var _k = k; using var _s = s;
        var (maj, min) = Nvrtc.Version;
        bool expect = k.Arch >= 89 && (maj > 11 || (maj == 11 && min >= 8)) && KernelCompiler.TargetFor(k.Arch).Target.EndsWith(k.Arch.ToString());
        Assert.Equal(expect, k.UsesHardwareFp8Convert(s));
    }

    /// <summary>The benchmark runs and counts values + scales + x + y.</summary>
    [Theory]
    [InlineData(DType.F8E4M3)]
    [InlineData(DType.Int4)]
    public void BenchCountsScales(DType dt)
    {
        if (CudaDeviceInfo.Unavailable() is { } why) Assert.Skip("No usable CUDA device: " + why);
        var t = CudaQuantKernels.Bench(1024, 4096, dt, repeat: 3);
        long want = CudaQuantKernels.ValueBytes(dt, 1024, 4096) + CudaQuantKernels.ScaleBytes(dt, 1024, 4096) + 4096 * 4 + 1024 * 4;
        Assert.Equal(want, t.Bytes);
        // the int4 tensor-core kernels read the tile order by default, as in the engine; tiled: false is the row-major form
        bool tc = dt == DType.Int4 && CudaDeviceInfo.List()[0].Arch >= 80 && Environment.GetEnvironmentVariable("CALM_QUANT_TC") != "0";
        Assert.Equal(tc, t.Kernel.EndsWith("/tiled", StringComparison.Ordinal));
        if (tc) Assert.DoesNotContain("/tiled", CudaQuantKernels.Bench(1024, 4096, dt, repeat: 1, tiled: false).Kernel);
        Assert.Equal(3, t.Ms.Length);
        Assert.All(t.Ms, ms => Assert.True(ms > 0 && double.IsFinite(ms)));
    }
}

/// <summary>
/// Not a correctness test: times the Llama-3-8B matvec shapes for every rows-per-warp variant and writes the table to
/// $OUT/quant-matvec-variants.txt (when OUT is set) and the test's diagnostics, so the automatic choice
/// (<see cref="CudaQuantKernels.RowsPerWarp"/>) can be tuned from one GpuTest run. Asserts only that each timing is sane.
/// </summary>
[Trait("Category", "GPU")]
[Collection("GPU")]
public class QuantKernelVariantReport
{
    [Fact]
    public void TimeRowsPerWarpVariants()
    {
        if (CudaDeviceInfo.Unavailable() is { } why) Assert.Skip("No usable CUDA device: " + why);
        var sb = new StringBuilder();
        var info = CudaDeviceInfo.List()[0];
        sb.AppendLine($"# quantized matvec variants on {info.Name} (sm_{info.Arch}), NVRTC {Nvrtc.Version.Major}.{Nvrtc.Version.Minor}; GB/s = (values + scales + x + y) / median");
        bool tcOnly = Environment.GetEnvironmentVariable("CALM_VARIANTS_TC_ONLY") == "1";   // skip the CUDA-core table (shorter device calls)
        foreach (var dt in tcOnly ? [] : new[] { DType.F8E4M3, DType.Int4 })
            foreach (var (rows, cols) in new[] { (4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336), (28672, 4096) })
                foreach (int rpw in dt == DType.Int4 ? new[] { 1, 2, 4, 8, -2, -4, -8 } : new[] { 1, 2, 4, -2, -4 })   // negative: staged x
                {
                    var t = CudaQuantKernels.Bench(rows, cols, dt, repeat: 15, rowsPerWarp: Math.Abs(rpw), stageX: rpw < 0);
                    Assert.True(t.MedianMs > 0 && double.IsFinite(t.MedianMs));
                    sb.AppendLine($"{t.Kernel,-22} {rows,6}x{cols,-6} median {t.MedianMs * 1e3,9:F2} us  min {t.MinMs * 1e3,9:F2} us  {t.MedianGBps,8:F0} GB/s");
                }
        // the tensor-core kernels at each tile count, on the same shapes and the classifier's
        // CALM_VARIANTS_ONLY="t1,t2b": those variants only (a shorter device call; the whole table took 131 s on the H200)
        var only = Environment.GetEnvironmentVariable("CALM_VARIANTS_ONLY")?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        // the values in the tile order (as the engine stores them); CALM_VARIANTS_BOTH_ORDERS=1 adds the row-major form beside each
        bool bothOrders = Environment.GetEnvironmentVariable("CALM_VARIANTS_BOTH_ORDERS") == "1";
        foreach (var dt in new[] { DType.F8E4M3, DType.Int4 })
            foreach (var (rows, cols) in new[] { (4096, 4096), (1024, 4096), (6144, 4096), (14336, 4096), (4096, 14336), (28672, 4096), (128256, 4096) })
                foreach (var tiles in CudaQuantKernels.TcVariants.Where(v => only is null || only.Contains(v)))
                foreach (var tiled in bothOrders ? new[] { true, false } : new[] { true })
                {
                    var t = CudaQuantKernels.Bench(rows, cols, dt, repeat: 15, tensorCores: true, tcVariant: tiles, tiled: tiled);
                    Assert.True(t.MedianMs > 0 && double.IsFinite(t.MedianMs));
                    sb.AppendLine($"{t.Kernel,-28} {rows,6}x{cols,-6} median {t.MedianMs * 1e3,9:F2} us  min {t.MinMs * 1e3,9:F2} us  {t.MedianGBps,8:F0} GB/s");
                }
        var text = sb.ToString();
        TestContext.Current.SendDiagnosticMessage(text);
        var outDir = Environment.GetEnvironmentVariable("OUT");
        if (!string.IsNullOrEmpty(outDir) && Directory.Exists(outDir))
            File.WriteAllText(Path.Combine(outDir, "quant-matvec-variants.txt"), text);
    }
}

/// <summary>No GPU needed: which e4m3 conversion the quantized matvec compiles to, per target, with this NVRTC.</summary>
public class QuantKernelCompileTests
{
    [Theory]
    [InlineData(80, false, null)]
    [InlineData(90, true, null)]
    [InlineData(90, false, "-DCALM_FP8_CVT=0")]   // the forced fallback (what the GPU tests run on sm_90 too)
    public void Fp8ConversionPathFollowsArchAndNvrtc(int arch, bool hardwareWhereSupported, string? define)
    {
        if (Nvrtc.TryLoad() is { } why)
        {
            Assert.False(Environment.GetEnvironmentVariable("CALM_REQUIRE_NVRTC") == "1", "NVRTC is required here: " + why);
            Assert.Skip("NVRTC not found: " + why);
        }
        var src = KernelCompiler.Sources[CudaQuantKernels.SourceFile];
        var ptx = Encoding.UTF8.GetString(KernelCompiler.CompileSource(CudaQuantKernels.SourceFile, src,
            KernelCompiler.Options($"--gpu-architecture=compute_{arch}").Concat(define is null ? [] : [define]).ToArray(), false, out _));
        var (maj, min) = Nvrtc.Version;
        bool nvrtcHas = maj > 11 || (maj == 11 && min >= 8);
        bool hw = ptx.Contains("cvt.rn.f16x2.e4m3x2");
        Assert.Equal(hardwareWhereSupported && nvrtcHas, hw);
        Assert.Equal(!hw, ptx.Contains("mul.rn.f16x2"));   // the bit fallback's exact * 256
        Assert.Contains(".entry matvec_int4_r2", ptx);
    }
}
