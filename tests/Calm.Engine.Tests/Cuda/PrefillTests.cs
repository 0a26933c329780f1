using Calm.Engine.Cpu;
using Calm.Engine.Cuda;
using Calm.Engine.Generation;
using Calm.Engine.Model;
using Calm.Engine.Quant;
using Calm.Engine.Tests.Fixtures;
using Calm.Engine.Tests.Generation;
using Calm.Engine.Weights;

namespace Calm.Engine.Tests.Cuda;

/// <summary>The batched prefill: tensor-core GEMM and prefill attention against CPU references on fresh random data,
/// the per-row RoPE/KV write against the decode kernel, and whole models: batched prefill logits equal the per-token
/// path's on every transformers fixture that takes the batched path, and decode continues after it.</summary>
[Trait("Category", "GPU")]
[Collection("GPU")]
public class PrefillTests
{
    private static (CudaContext Ctx, CudaPrefillKernels P, CudaStream S) Require()
    {
        var why = CudaDeviceInfo.Unavailable();
        if (why is not null) Assert.Skip("No usable CUDA device: " + why);
        int arch = CudaDeviceInfo.List()[0].Arch;
        if (!CudaPrefillKernels.Supported(arch)) Assert.Skip($"The tensor-core prefill kernels need sm_80+; this GPU is sm_{arch}.");
        var ctx = CudaContext.Acquire(0);
        return (ctx, new CudaPrefillKernels(ctx, arch), new CudaStream(ctx));
    }

    [Theory]
    [InlineData(DType.BF16, 1, 128, 64, false, false, 128, 32)]
    [InlineData(DType.BF16, 37, 200, 264, true, false, 64, 32)]      // T, N partial tiles; K tail inside a k tile
    [InlineData(DType.BF16, 37, 200, 264, true, false, 64, 64)]
    [InlineData(DType.F16, 130, 300, 512, true, true, 128, 32)]
    [InlineData(DType.F16, 130, 300, 512, true, true, 64, 64)]
    [InlineData(DType.BF16, 257, 129, 1000, false, true, 128, 64)]   // three row tiles, N = one tile + 1, K tail
    [InlineData(DType.BF16, 257, 129, 1000, false, true, 64, 32)]    // five row tiles
    [InlineData(DType.F16, 5, 1000, 8, false, false, 0, 0)]          // K = 8: one partial k tile; tile picked by the launcher
    [InlineData(DType.BF16, 3, 64, 4104, true, true, 128, 64)]       // long K: many stages through the 3-deep ring
    public void GemmMatchesReference(DType dt, int T, int N, int K, bool bias, bool accumulate, int tileRows, int depth)
        => CheckGemm(dt, T, N, K, bias, accumulate, tileRows, depth, 1);

    // variants 2 (grid x over row tiles, bf16 converted in registers, float2 epilogue) and 3 (the same, 4 stages):
    // k depth 64; ragged T (rows not a multiple of the tile), ragged and odd N (the scalar epilogue), K tails, long K
    [Theory]
    [InlineData(DType.BF16, 1, 128, 64, false, false, 128, 2)]
    [InlineData(DType.BF16, 37, 200, 264, true, false, 64, 2)]
    [InlineData(DType.BF16, 37, 200, 264, true, true, 128, 3)]
    [InlineData(DType.F16, 130, 300, 512, true, true, 128, 2)]
    [InlineData(DType.F16, 130, 300, 512, true, true, 64, 3)]
    [InlineData(DType.BF16, 257, 129, 1000, false, true, 128, 2)]   // odd N: last column through the scalar path
    [InlineData(DType.BF16, 257, 129, 1000, true, false, 64, 3)]
    [InlineData(DType.BF16, 300, 384, 4104, true, true, 128, 3)]    // long K through the 4-deep ring, 3 row tiles (last ragged)
    [InlineData(DType.BF16, 300, 384, 4104, false, false, 128, 2)]
    [InlineData(DType.F16, 5, 1000, 8, false, false, 0, 2)]         // K = 8; tile picked by the launcher
    [InlineData(DType.BF16, 515, 256, 136, false, true, 0, 3)]      // 515 rows: 5 row tiles of 128, the last 3 rows
    public void GemmVariantMatchesReference(DType dt, int T, int N, int K, bool bias, bool accumulate, int tileRows, int variant)
        => CheckGemm(dt, T, N, K, bias, accumulate, tileRows, 64, variant);

    // variant 4 (128-row x 128/192/256-column tiles, swizzled shared memory, grouped block order): every shape case of
    // the two theories above, at each column tile (0: picked by the launcher), plus grids with more than one group of 8
    // row tiles (T > 1024: the grouped order's last, partial group) and N past several column tiles
    public static TheoryData<DType, int, int, int, bool, bool, int> Variant4Cases()
    {
        var shapes = new (DType, int, int, int, bool, bool)[]
        {
            (DType.BF16, 1, 128, 64, false, false), (DType.BF16, 37, 200, 264, true, false), (DType.BF16, 37, 200, 264, true, true),
            (DType.F16, 130, 300, 512, true, true), (DType.BF16, 257, 129, 1000, false, true), (DType.BF16, 257, 129, 1000, true, false),
            (DType.F16, 5, 1000, 8, false, false), (DType.BF16, 3, 64, 4104, true, true), (DType.BF16, 300, 384, 4104, true, true),
            (DType.BF16, 300, 384, 4104, false, false), (DType.BF16, 515, 256, 136, false, true),
            (DType.BF16, 1100, 520, 72, true, true),   // 9 row tiles: one full group of 8 and a group of 1; 3 column tiles of 192/256
            (DType.F16, 1300, 770, 64, false, false),  // 11 row tiles (a partial group of 3), ragged even N
        };
        var d = new TheoryData<DType, int, int, int, bool, bool, int>();
        foreach (var (dt, T, N, K, b, a) in shapes)
            foreach (var cols in new[] { 0, 128, 192, 256 })
                d.Add(dt, T, N, K, b, a, cols);
        return d;
    }

    [Theory]
    [MemberData(nameof(Variant4Cases))]
    public void GemmVariant4MatchesReference(DType dt, int T, int N, int K, bool bias, bool accumulate, int tileCols)
        => CheckGemm(dt, T, N, K, bias, accumulate, 0, 64, 4, tileCols);

    // variant 5 (wgmma on sm_90a: two warpgroups of 64 rows, B converted bf16 -> f16 in shared memory, 4-stage ring,
    // the descriptors' 128-byte swizzle over variant 4's layout): every variant-4 case at every column tile
    [Theory]
    [MemberData(nameof(Variant4Cases))]
    public void GemmVariant5MatchesReference(DType dt, int T, int N, int K, bool bias, bool accumulate, int tileCols)
        => CheckGemm(dt, T, N, K, bias, accumulate, 0, 64, 5, tileCols);

    // variant 5 with fp8 / int4 weights in Calm's formats (raw bytes copied beside the A tile, converted into a 3-slot
    // ring of f16 B tiles): against f64 sums of the weights the kernel multiplies -- fp8: e4m3 exactly (the row scale
    // applied to the sum), int4: (u - 8) * d rounded once to f16 -- with the half GEMM's bound; rows scaled 10^-3..10^2
    // apart (gated: 10^-3..10^-1), ragged T / N, K tails (int4: partial last group; fp8 K % 16 == 0), every column tile, plain and gated
    public static TheoryData<DType, int, int, int, bool, bool, int, bool> QuantCases()
    {
        var shapes = new (DType, int, int, int, bool, bool, bool)[]
        {
            (DType.F8E4M3, 37, 200, 272, true, false, false), (DType.F8E4M3, 257, 129, 1008, false, true, false),
            (DType.F8E4M3, 300, 384, 4112, true, true, false), (DType.F8E4M3, 1100, 520, 80, true, true, false),
            (DType.Int4, 37, 200, 264, true, false, false), (DType.Int4, 257, 129, 1000, false, true, false),
            (DType.Int4, 300, 384, 4104, true, true, false), (DType.Int4, 5, 1000, 8, false, false, false),
            (DType.F8E4M3, 130, 100, 512, true, false, true), (DType.F8E4M3, 515, 333, 144, false, false, true),
            (DType.Int4, 130, 100, 520, true, false, true), (DType.Int4, 515, 333, 136, false, false, true),
        };
        var d = new TheoryData<DType, int, int, int, bool, bool, int, bool>();
        foreach (var (dt, T, N, K, b, a, gated) in shapes)
            foreach (var cols in new[] { 0, 128, 192, 256 })
                d.Add(dt, T, N, K, b, a, cols, gated);
        return d;
    }

    [Theory]
    [MemberData(nameof(QuantCases))]
    public unsafe void GemmVariant5QuantizedMatchesReference(DType dt, int T, int N, int K, bool bias, bool accumulate, int tileCols, bool gated)
    {
        var (ctx, p, s) = Require();
        using var _c = ctx; using var _p = p; using var _s = s;
        SkipUnlessWgmma(p, 5);
        var r = Gpu.Rng();
        int rows = gated ? 2 * N : N;   // gated: N = F, W [2F, K] = [gate | up]
        using var store = new NativeWeightStore();
        nint src = store.Allocate((long)rows * K * 4);
        var f = (float*)src;
        for (int i = 0; i < rows; i++)
        {
            // gated: act(gate) * up must stay inside f16 (the kernel saturates at 65504, the reference would not)
            float rowScale = (float)Math.Pow(10, r.Next(-3, gated ? 0 : 3));
            for (int j = 0; j < K; j++) f[(long)i * K + j] = (float)(r.NextDouble() * 2 - 1) * rowScale;
        }
        var w = Quantizer.Quantize(new Tensor("w", DType.F32, new long[] { rows, K }, src, "test"), dt, store);
        // the weights the kernel multiplies, and the per-row factor applied to the sums (fp8 only)
        var wv = new double[(long)rows * K];
        var rowFactor = new double[rows];
        for (int i = 0; i < rows; i++)
        {
            byte* row = (byte*)w.Data + i * w.RowDataBytes;
            rowFactor[i] = dt == DType.F8E4M3 ? ((float*)w.Scales)[i] : 1.0;
            for (int j = 0; j < K; j++)
                wv[(long)i * K + j] = dt == DType.F8E4M3 ? QuantFormats.E4M3ToFloat(row[j])
                    : (double)(float)(Half)(QuantFormats.Int4Value(row[j / 2], j & 1)
                                            * (float)((Half*)w.Scales)[i * QuantFormats.Int4Groups(K) + j / 32]);
        }
        var (xb, xv) = Gpu.RandHalf(r, T * K, DType.F16, 1f);
        var b = Gpu.RandF(r, rows);
        using var X = Gpu.Up(ctx, xb); using var B = Gpu.Up(ctx, b);
        using var Wd = Gpu.UpValues(ctx, w, false); using var Sd = Gpu.UpScales(ctx, w, false);
        double Dot(int t, int n)
        {
            double a = 0;
            for (int k = 0; k < K; k++) a += (double)xv[t * K + k] * wv[(long)n * K + k];
            return a * rowFactor[n];
        }
        string what = $"gemm v5 {DTypes.Name(dt)} {(gated ? "gated " : "")}{T}x{N}x{K} tile {tileCols}";
        double bound = 2e-6 * Math.Max(1, Math.Sqrt(K / 16.0));
        if (!gated)
        {
            var y0 = Gpu.RandF(r, T * N);
            using var Y = Gpu.Up(ctx, y0);
            p.GemmW(s, dt, X.Ptr, Wd.Ptr, Y.Ptr, bias ? B.Ptr : 0, T, N, K, accumulate, false, tileCols, scales: Sd.Ptr);
            s.Synchronize();
            var want = new float[T * N];
            for (int t = 0; t < T; t++)
                for (int n = 0; n < N; n++)
                    want[t * N + n] = (float)(Dot(t, n) + (bias ? b[n] : 0) + (accumulate ? y0[t * N + n] : 0));
            Gpu.Close(Y.ToArray<float>(T * N), want, bound, what);
            return;
        }
        // gated: against the f64 reference (act, rounded to f16) and bit for bit against the plain product + gate_act_rows
        using var H1 = Gpu.Zeros(ctx, (long)T * N * 2); using var H2 = Gpu.Zeros(ctx, (long)T * N * 2);
        using var Yf = Gpu.Zeros(ctx, (long)T * 2 * N * 4);
        p.GemmW(s, dt, X.Ptr, Wd.Ptr, H1.Ptr, bias ? B.Ptr : 0, T, N, K, false, true, tileCols, Activation.Silu, DType.F16, Sd.Ptr);
        p.GemmW(s, dt, X.Ptr, Wd.Ptr, Yf.Ptr, bias ? B.Ptr : 0, T, 2 * N, K, false, false, 0, scales: Sd.Ptr);
        p.GateActRows(s, Yf.Ptr, H2.Ptr, N, T, Activation.Silu, DType.F16);
        s.Synchronize();
        var got = H1.ToArray<ushort>(T * N);
        var wantH = new float[T * N];
        for (int t = 0; t < T; t++)
            for (int n = 0; n < N; n++)
            {
                double g = Dot(t, n) + (bias ? b[n] : 0), u = Dot(t, N + n) + (bias ? b[N + n] : 0);
                wantH[t * N + n] = Gpu.FromBits(Gpu.ToBits(Gpu.Silu((float)g) * (float)u, DType.F16), DType.F16);
            }
        Gpu.Close(got.Select(u => Gpu.FromBits(u, DType.F16)).ToArray(), wantH, 1e-3, what);
        Assert.Equal(H2.ToArray<ushort>(T * N), got);
    }

    /// <summary>The fp8/int4 GEMM on values (int4: and scales) in the tile order (QuantTileOrder, as CudaBackend stores every int4 matrix the
    /// tensor-core matvecs read) gives the same bits as on the row-major values: the order changes only where the
    /// 16-byte pieces are read from. Plain and gated, rows that end inside an 8-row block, several tile widths.</summary>
    [Theory]
    [InlineData(DType.F8E4M3, 130, 100, 512, false, 0)]
    [InlineData(DType.F8E4M3, 37, 77, 1024, true, 128)]    // gated: 2 x 77 rows, the up rows start inside a block
    [InlineData(DType.F8E4M3, 300, 333, 4096, false, 256)]
    [InlineData(DType.Int4, 130, 100, 512, false, 192)]
    [InlineData(DType.Int4, 37, 77, 1024, true, 0)]
    [InlineData(DType.Int4, 515, 1000, 2048, true, 256)]
    public unsafe void GemmVariant5ReadsTheTileOrder(DType dt, int T, int N, int K, bool gated, int tileCols)
    {
        var (ctx, p, s) = Require();
        using var _c = ctx; using var _p = p; using var _s = s;
        SkipUnlessWgmma(p, 5);
        Assert.True(QuantTileOrder.Fits(dt, K));
        var r = Gpu.Rng();
        int rows = gated ? 2 * N : N;
        using var store = new NativeWeightStore();
        nint src = store.Allocate((long)rows * K * 4);
        var f = (float*)src;
        for (long i = 0; i < (long)rows * K; i++) f[i] = (float)(r.NextDouble() * 2 - 1) * (gated ? 0.1f : 1f);
        var w = Quantizer.Quantize(new Tensor("w", DType.F32, new long[] { rows, K }, src, "test"), dt, store);
        var (xb, _) = Gpu.RandHalf(r, T * K, DType.F16, 1f);
        var b = Gpu.RandF(r, rows);
        using var X = Gpu.Up(ctx, xb); using var B = Gpu.Up(ctx, b);
        using var Wr = Gpu.UpValues(ctx, w, false); using var Wt = Gpu.UpValues(ctx, w, true);
        // int4 scales go with their values into the tile order (8-byte pieces); fp8's per-row scales stay as they are
        using var Sd = Gpu.UpScales(ctx, w, false); using var St = Gpu.UpScales(ctx, w, true);
        long outBytes = gated ? (long)T * N * 2 : (long)T * N * 4;
        using var Y1 = Gpu.Zeros(ctx, outBytes); using var Y2 = Gpu.Zeros(ctx, outBytes);
        foreach (var (W, S, Y, tiled) in new[] { (Wr, Sd, Y1, false), (Wt, St, Y2, true) })
        {
            if (gated) p.GemmW(s, dt, X.Ptr, W.Ptr, Y.Ptr, B.Ptr, T, N, K, false, true, tileCols, Activation.Silu, DType.F16, S.Ptr, tiled);
            else p.GemmW(s, dt, X.Ptr, W.Ptr, Y.Ptr, B.Ptr, T, N, K, false, false, tileCols, scales: S.Ptr, tiled: tiled);
        }
        s.Synchronize();
        var a = Y1.ToArray<byte>((int)outBytes);
        Assert.Contains(a, v => v != 0);
        Assert.True(a.AsSpan().SequenceEqual(Y2.ToArray<byte>((int)outBytes)),
                    $"gemm v5 {DTypes.Name(dt)} {(gated ? "gated " : "")}{T}x{N}x{K} tile {tileCols}: the tile order gives different results from row-major");
        Assert.Throws<ArgumentException>(() => p.GemmW(s, dt, X.Ptr, Wt.Ptr, Y2.Ptr, 0, T, N, K - 32, false, false, scales: Sd.Ptr, tiled: true));
    }

    private static void SkipUnlessWgmma(CudaPrefillKernels p, int variant)
    {
        if (variant == 5 && !p.WgmmaAvailable)
            Assert.Skip($"GEMM variant 5 (wgmma) does not run here (sm_{p.Arch}, NVRTC {Nvrtc.Version.Major}.{Nvrtc.Version.Minor}): {p.WgmmaUnavailableReason}");
    }

    private static void CheckGemm(DType dt, int T, int N, int K, bool bias, bool accumulate, int tileRows, int depth, int variant, int tileCols = 0)
    {
        var (ctx, p, s) = Require();
        using var _c = ctx; using var _p = p; using var _s = s;
        SkipUnlessWgmma(p, variant);
        var r = Gpu.Rng();
        var (xb, xv) = Gpu.RandHalf(r, T * K, DType.F16, 1f);   // activations are f16 whatever the weights
        var (wb, wv) = Gpu.RandHalf(r, N * K, dt, 0.1f);
        var b = Gpu.RandF(r, N);
        var y0 = Gpu.RandF(r, T * N);
        using var X = Gpu.Up(ctx, xb); using var W = Gpu.Up(ctx, wb); using var B = Gpu.Up(ctx, b); using var Y = Gpu.Up(ctx, y0);
        p.Gemm(s, dt, X.Ptr, W.Ptr, Y.Ptr, bias ? B.Ptr : 0, T, N, K, accumulate, tileRows, depth, variant, tileCols);
        s.Synchronize();
        var want = new float[T * N];
        for (int t = 0; t < T; t++)
            for (int n = 0; n < N; n++)
            {
                double a = 0;
                for (int k = 0; k < K; k++) a += (double)xv[t * K + k] * wv[n * K + k];
                if (bias) a += b[n];
                if (accumulate) a += y0[t * N + n];
                want[t * N + n] = (float)a;
            }
        // the tensor cores' fp32 accumulation truncates (not IEEE round-to-nearest): ~2^-24 per k16 step relative to the
        // running sum, growing with sqrt(K / 16) on these random sums; a wrong tile, fragment or mask gives errors near 1
        double bound = 2e-6 * Math.Max(1, Math.Sqrt(K / 16.0));
        Gpu.Close(Y.ToArray<float>(T * N), want, bound, $"gemm v{variant} {dt} {T}x{N}x{K} tile {tileRows} depth {depth}");
    }

    // gate_up with the activation fused into the epilogue: against the CPU (f64 sums, act, rounded to the output format)
    // and bit for bit against the unfused GEMM + gate_act_rows on the GPU; ragged T and F (F not a multiple of the
    // 64-column half tile), K tails, every variant and tile height
    [Theory]
    [InlineData(DType.BF16, 37, 100, 264, true, 128, 1, DType.F16, 0)]
    [InlineData(DType.BF16, 37, 100, 264, false, 64, 2, DType.BF16, 1)]
    [InlineData(DType.F16, 130, 64, 512, true, 128, 3, DType.F16, 0)]
    [InlineData(DType.BF16, 257, 200, 1000, true, 64, 1, DType.F16, 1)]
    [InlineData(DType.BF16, 300, 192, 4104, false, 128, 2, DType.F16, 0)]
    [InlineData(DType.BF16, 515, 72, 136, true, 0, 3, DType.BF16, 0)]
    [InlineData(DType.F16, 3, 130, 8, true, 0, 1, DType.F16, 1)]
    public void GemmGatedMatchesReferenceAndUnfused(DType dt, int T, int F, int K, bool bias, int tileRows, int variant, DType odt, int actCode)
        => CheckGated(dt, T, F, K, bias, tileRows, variant, odt, actCode, 0);

    // gated cases of variants 4 and 5: F not a multiple of 64/96/128, odd F (the scalar H stores), K tails, long K, more
    // than 8 row tiles; every column tile (0: picked by the launcher), both output formats and activations
    public static TheoryData<DType, int, int, int, bool, int, DType, int> GatedTiledCases() => new()
    {
        { DType.BF16, 37, 100, 264, true, 0, DType.F16, 0 },
        { DType.BF16, 37, 100, 264, false, 128, DType.BF16, 1 },
        { DType.F16, 130, 64, 512, true, 192, DType.F16, 0 },
        { DType.BF16, 257, 200, 1000, true, 256, DType.F16, 1 },
        { DType.BF16, 300, 192, 4104, false, 128, DType.F16, 0 },
        { DType.BF16, 300, 192, 4104, true, 256, DType.BF16, 0 },
        { DType.BF16, 515, 72, 136, true, 0, DType.BF16, 0 },
        { DType.F16, 3, 130, 8, true, 192, DType.F16, 1 },
        { DType.BF16, 1100, 333, 72, true, 192, DType.F16, 0 },   // odd F; 9 row tiles
        { DType.BF16, 1100, 333, 72, false, 256, DType.BF16, 1 },
    };

    // variant 4 gated: each warp's gate and up rows side by side in the B tile (16*NT columns of F per block)
    [Theory]
    [MemberData(nameof(GatedTiledCases))]
    public void GemmGatedVariant4MatchesReferenceAndUnfused(DType dt, int T, int F, int K, bool bias, int tileCols, DType odt, int actCode)
        => CheckGated(dt, T, F, K, bias, 0, 4, odt, actCode, tileCols);

    // variant 5 gated: gate rows in the first half of the B tile, up rows in the second (BN/2 columns of F per block)
    [Theory]
    [MemberData(nameof(GatedTiledCases))]
    public void GemmGatedVariant5MatchesReferenceAndUnfused(DType dt, int T, int F, int K, bool bias, int tileCols, DType odt, int actCode)
        => CheckGated(dt, T, F, K, bias, 0, 5, odt, actCode, tileCols);

    private static void CheckGated(DType dt, int T, int F, int K, bool bias, int tileRows, int variant, DType odt, int actCode, int tileCols)
    {
        var (ctx, p, s) = Require();
        using var _c = ctx; using var _p = p; using var _s = s;
        SkipUnlessWgmma(p, variant);
        var act = (Activation)actCode;
        var r = Gpu.Rng();
        var (xb, xv) = Gpu.RandHalf(r, T * K, DType.F16, 1f);
        var (wb, wv) = Gpu.RandHalf(r, 2 * F * K, dt, 0.1f);
        var b = Gpu.RandF(r, 2 * F);
        using var X = Gpu.Up(ctx, xb); using var W = Gpu.Up(ctx, wb); using var B = Gpu.Up(ctx, b);
        using var H1 = Gpu.Zeros(ctx, (long)T * F * 2); using var H2 = Gpu.Zeros(ctx, (long)T * F * 2);
        using var Y = Gpu.Zeros(ctx, (long)T * 2 * F * 4);
        p.GemmGated(s, dt, X.Ptr, W.Ptr, H1.Ptr, bias ? B.Ptr : 0, T, F, K, act, odt, tileRows, variant, tileCols);
        // the unfused product with variant 4's column tile picked for [T, 2F] (another tile: the same sums, bit for bit)
        p.Gemm(s, dt, X.Ptr, W.Ptr, Y.Ptr, bias ? B.Ptr : 0, T, 2 * F, K, false, tileRows == 0 ? p.GemmTileRows(T, 2 * F) : tileRows, 64, variant);
        p.GateActRows(s, Y.Ptr, H2.Ptr, F, T, act, odt);
        s.Synchronize();
        var got = H1.ToArray<ushort>(T * F);
        var want = new float[T * F];
        for (int t = 0; t < T; t++)
            for (int f = 0; f < F; f++)
            {
                double a = 0, u = 0;
                for (int k = 0; k < K; k++) { a += (double)xv[t * K + k] * wv[f * K + k]; u += (double)xv[t * K + k] * wv[(F + f) * K + k]; }
                if (bias) { a += b[f]; u += b[F + f]; }
                float g = act == Activation.Silu ? Gpu.Silu((float)a) : Gpu.GeluTanh((float)a);
                want[t * F + f] = Gpu.FromBits(Gpu.ToBits(g * (float)u, odt), odt);
            }
        Gpu.Close(got.Select(u => Gpu.FromBits(u, odt)).ToArray(), want, 1e-3, $"gated gemm v{variant} {dt} {T}x{F}x{K} tile {tileRows}/{tileCols} -> {odt} act {act}");
        Assert.Equal(H2.ToArray<ushort>(T * F), got);   // the same f32 sums and the same act * up as the unfused path
    }

    [Fact]
    public void GemmRejectsShapesItCannotTake()
    {
        Assert.NotNull(CudaPrefillKernels.GemmUnsupported(100));
        Assert.NotNull(CudaPrefillKernels.GemmUnsupported(0));
        Assert.Null(CudaPrefillKernels.GemmUnsupported(4096));
        Assert.NotNull(CudaPrefillKernels.AttentionUnsupported(8, 3, 64));
        Assert.NotNull(CudaPrefillKernels.AttentionUnsupported(8, 2, 512));
        Assert.Null(CudaPrefillKernels.AttentionUnsupported(32, 8, 128));
        var (ctx, p, s) = Require();
        using var _c = ctx; using var _p = p; using var _s = s;
        using var M = Gpu.Zeros(ctx, 4096);
        Assert.Throws<NotSupportedException>(() => p.Gemm(s, DType.BF16, M.Ptr, M.Ptr, M.Ptr, 0, 2, 2, 12, false));
    }

    // q rows [T, ld], caches written for positions 0..start+T-1; GQA, window, head dims 64/96/128/256
    [Theory]
    [InlineData(8, 2, 64, 37, 0, 0, DType.BF16)]
    [InlineData(4, 4, 128, 20, 45, 0, DType.F16)]
    [InlineData(6, 3, 96, 50, 13, 7, DType.BF16)]      // sliding window shorter than the chunk
    [InlineData(4, 1, 256, 33, 100, 40, DType.F16)]
    public void AttentionPrefillMatchesCpu(int H, int K, int Hd, int T, int start, int window, DType odt)
        => CheckAttention(H, K, Hd, T, start, window, odt, 1);

    // the tensor-core kernel (head_dim 64 and 128): query tiles of 64 rows (ragged last tile, rows of a warp past T),
    // key chunks of 32 (head_dim 128) or 64 (several per tile; start > 0 so chunks do not align with the tile), GQA, windows shorter
    // and longer than a chunk, both output formats; same bound as the fp32 kernel
    [Theory]
    [InlineData(8, 2, 64, 37, 0, 0, DType.BF16)]
    [InlineData(4, 4, 128, 20, 45, 0, DType.F16)]
    [InlineData(8, 2, 128, 200, 0, 0, DType.BF16)]
    [InlineData(8, 2, 128, 130, 77, 0, DType.F16)]
    [InlineData(4, 1, 64, 150, 13, 7, DType.BF16)]      // window shorter than a chunk
    [InlineData(4, 2, 128, 190, 100, 90, DType.F16)]    // window longer than a chunk, chunks skipped before it
    [InlineData(32, 8, 128, 64, 0, 0, DType.BF16)]      // Llama-3-8B heads, one full tile
    [InlineData(2, 1, 64, 1, 300, 0, DType.F16)]        // one query row after a long cache
    public void AttentionPrefillTensorCoresMatchCpu(int H, int K, int Hd, int T, int start, int window, DType odt)
        => CheckAttention(H, K, Hd, T, start, window, odt, 2);

    private static void CheckAttention(int H, int K, int Hd, int T, int start, int window, DType odt, int variant)
    {
        var (ctx, p, s) = Require();
        using var _c = ctx; using var _p = p; using var _s = s;
        var r = Gpu.Rng();
        int maxCtx = start + T + 3, ld = (H + 2 * K) * Hd;
        var q = Gpu.RandF(r, T * ld, 2);
        var (kb, kv) = Gpu.RandHalf(r, K * maxCtx * Hd, DType.F16, 1.5f);
        var (vb, vv) = Gpu.RandHalf(r, K * maxCtx * Hd, DType.F16, 1f);
        using var Q = Gpu.Up(ctx, q); using var KC = Gpu.Up(ctx, kb); using var VC = Gpu.Up(ctx, vb);
        using var O = Gpu.Zeros(ctx, (long)T * H * Hd * 2);
        float scale = 1f / MathF.Sqrt(Hd);
        p.AttentionPrefill(s, Q.Ptr, ld, KC.Ptr, VC.Ptr, O.Ptr, T, start, H, K, Hd, maxCtx, window, scale, odt, variant);
        s.Synchronize();
        var got = O.ToArray<ushort>(T * H * Hd).Select(u => Gpu.FromBits(u, odt)).ToArray();
        var want = new float[T * H * Hd];
        var scores = new float[maxCtx];
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++)
            {
                int kh = h / (H / K);
                var keys = kv.AsSpan(kh * maxCtx * Hd, maxCtx * Hd);
                var vals = vv.AsSpan(kh * maxCtx * Hd, maxCtx * Hd);
                var o = want.AsSpan((t * H + h) * Hd, Hd);
                CpuOps.AttendHead(q.AsSpan(t * ld + h * Hd, Hd), keys, vals, Hd, start + t, window > 0 ? window : null, scale, scores, o);
                for (int d = 0; d < Hd; d++) o[d] = Gpu.FromBits(Gpu.ToBits(o[d], odt), odt);   // the kernel's output format
            }
        Gpu.Close(got, want, 1e-3, $"prefill attention v{variant} H{H} K{K} Hd{Hd} T{T} start{start} window{window}");
    }

    // RMSNorm of each row into f16/bf16: rmsnorm_rows_v4 (rowKernels where it takes n: n % 4 == 0, n <= 16384) and the
    // one-block-per-row rmsnorm_rows against a float64 reference rounded to the output format
    [Theory]
    [InlineData(512, 4096, false, DType.F16, true)]    // Llama-3-8B, 512-token chunk
    [InlineData(512, 4096, false, DType.F16, false)]
    [InlineData(37, 4096, true, DType.BF16, true)]     // gemma (1 + w)
    [InlineData(5, 64, false, DType.BF16, true)]       // the fixtures' hidden size: one warp
    [InlineData(9, 1000, true, DType.F16, true)]       // 250 float4s: the last warp partly empty
    [InlineData(3, 4100, false, DType.BF16, true)]     // 1025 float4s: 288 threads
    [InlineData(2, 16384, false, DType.F16, true)]     // 1024 threads
    [InlineData(2, 16388, false, DType.F16, true)]     // past the v4 kernel: rmsnorm_rows
    [InlineData(4, 37, true, DType.F16, true)]         // odd n: rmsnorm_rows
    [InlineData(3, 37, false, DType.BF16, false)]
    public void RmsNormRowsMatchesCpu(int T, int n, bool addOne, DType odt, bool rowKernels)
    {
        var (ctx, p, s) = Require();
        using var _c = ctx; using var _p = p; using var _s = s;
        p.RowKernels = rowKernels;
        var r = Gpu.Rng();
        var x = Gpu.RandF(r, T * n, 3f);
        var w = Gpu.RandF(r, n);
        using var X = Gpu.Up(ctx, x); using var W = Gpu.Up(ctx, w);
        using var O = Gpu.Zeros(ctx, (long)T * n * 2);
        p.RmsNormRows(s, X.Ptr, W.Ptr, O.Ptr, T, n, 1e-5f, addOne, odt);
        s.Synchronize();
        var want = new float[T * n];
        for (int t = 0; t < T; t++)
        {
            double ss = 0;
            for (int i = 0; i < n; i++) ss += (double)x[t * n + i] * x[t * n + i];
            double inv = 1 / Math.Sqrt(ss / n + 1e-5);
            for (int i = 0; i < n; i++) want[t * n + i] = Gpu.FromBits(Gpu.ToBits((float)(x[t * n + i] * inv * (w[i] + (addOne ? 1 : 0))), odt), odt);
        }
        int threads = rowKernels ? CudaPrefillKernels.RmsNormRowsV4Threads(n, X.Ptr, W.Ptr, O.Ptr) : 0;
        // the same rounding but for the f32 sum of squares: a rare output one unit off, a wrong index or scale far off
        Gpu.Close(O.ToArray<ushort>(T * n).Select(u => Gpu.FromBits(u, odt)).ToArray(), want, 1e-3,
                  $"rmsnorm rows T{T} n{n} addOne {addOne} {odt} ({(threads > 0 ? $"rmsnorm_rows_v4, {threads} threads" : "rmsnorm_rows")})");
    }

    // the per-row kernels do for T rows what the decode kernel does for one token at a time: the warp-per-head
    // qkv_rope_rows_hd* (rowKernels, where QkvRowsWarpTakes) and the block-per-head qkv_rope_rows, fp16 and fp8 caches
    [Theory]
    [InlineData(8, 2, 64, 64, false, 9, 3, false, true)]
    [InlineData(8, 2, 64, 64, false, 9, 3, false, false)]
    [InlineData(4, 4, 128, 64, true, 17, 0, false, true)]    // partial rotary, qk-norm
    [InlineData(4, 4, 128, 64, true, 17, 0, false, false)]
    [InlineData(32, 8, 128, 128, false, 40, 5, false, true)] // Llama-3-8B heads
    [InlineData(32, 8, 128, 128, false, 40, 5, true, true)]  // ... fp8 cache
    [InlineData(32, 8, 128, 128, false, 40, 5, true, false)]
    [InlineData(4, 4, 128, 96, true, 13, 7, true, true)]     // rotate_half partner 12 lanes away, qk-norm, fp8
    [InlineData(4, 4, 128, 96, true, 13, 7, false, true)]
    [InlineData(8, 2, 256, 256, true, 11, 2, false, true)]   // head_dim 256: two float4s per lane
    [InlineData(8, 2, 256, 128, false, 11, 2, true, true)]
    [InlineData(6, 3, 96, 96, false, 10, 1, false, true)]    // head_dim 96: three dims per lane
    [InlineData(6, 3, 96, 48, true, 10, 1, true, true)]
    [InlineData(4, 2, 32, 32, true, 7, 4, false, true)]      // head_dim 32 (the gemma / qwen3 fixtures)
    [InlineData(4, 2, 32, 16, false, 7, 4, true, true)]
    [InlineData(5, 1, 128, 40, false, 6, 0, true, true)]     // 7 heads: the second block's last warp idle; 5 lanes per half
    [InlineData(4, 2, 128, 36, false, 6, 0, false, true)]    // half 18: not taken, qkv_rope_rows
    [InlineData(4, 2, 16, 16, false, 6, 0, true, true)]      // head_dim 16: not taken
    public void QkvRopeRowsEqualsPerTokenKernel(int H, int K, int Hd, int rot, bool qkNorm, int T, int start, bool fp8, bool rowKernels)
    {
        var (ctx, p, s) = Require();
        using var _c = ctx; using var _p = p; using var _s = s;
        p.RowKernels = rowKernels;
        using var k = new CudaKernels(ctx, CudaDeviceInfo.List()[0].Arch);
        var r = Gpu.Rng();
        int maxCtx = 64, half = rot / 2, ld = (H + 2 * K) * Hd;
        var qkv = Gpu.RandF(r, T * ld, 2);
        for (int d = 0; d < Hd; d++) qkv[(H + K) * Hd + d] = 0f;   // row 0's first v head all zero (fp8: scale 0)
        var qn = Gpu.RandF(r, Hd); var kn = Gpu.RandF(r, Hd);
        var cos = Gpu.RandF(r, maxCtx * Math.Max(half, 1)); var sin = Gpu.RandF(r, maxCtx * Math.Max(half, 1));
        using var QN = Gpu.Up(ctx, qn); using var KN = Gpu.Up(ctx, kn); using var C = Gpu.Up(ctx, cos); using var S = Gpu.Up(ctx, sin);
        using var Q1 = Gpu.Up(ctx, qkv); using var Q2 = Gpu.Up(ctx, qkv);
        long rows = (long)K * maxCtx, cb = rows * Hd * (fp8 ? 1 : 2);
        using var K1 = Gpu.Zeros(ctx, cb); using var V1 = Gpu.Zeros(ctx, cb); using var K2 = Gpu.Zeros(ctx, cb); using var V2 = Gpu.Zeros(ctx, cb);
        using var KS1 = Gpu.Zeros(ctx, rows * 4); using var VS1 = Gpu.Zeros(ctx, rows * 4);
        using var KS2 = Gpu.Zeros(ctx, rows * 4); using var VS2 = Gpu.Zeros(ctx, rows * 4);
        bool warp = rowKernels && CudaPrefillKernels.QkvRowsWarpTakes(Hd, rot, qkNorm, Q1.Ptr, QN.Ptr, KN.Ptr, C.Ptr, S.Ptr, K1.Ptr, V1.Ptr);
        string what = $"H{H} K{K} Hd{Hd} rot{rot} qkNorm {qkNorm} {(fp8 ? "fp8" : "fp16")} ({(warp ? "qkv_rope_rows_hd" + Hd : "qkv_rope_rows")})";
        p.QkvRopeRows(s, Q1.Ptr, QN.Ptr, KN.Ptr, qkNorm, 1e-6f, false, C.Ptr, S.Ptr, rot, K1.Ptr, V1.Ptr, maxCtx, H, K, Hd, T, start,
                      fp8 ? KS1.Ptr : 0, fp8 ? VS1.Ptr : 0);
        var steps = new int[2 * T];
        for (int t = 0; t < T; t++) steps[2 * t + 1] = start + t;
        using var St = Gpu.Up(ctx, steps);
        for (int t = 0; t < T; t++)
            k.QkvRopeCache(s, Q2.Ptr + (ulong)(t * ld * 4), QN.Ptr, KN.Ptr, qkNorm, 1e-6f, false, C.Ptr, S.Ptr, rot, K2.Ptr, V2.Ptr, maxCtx, H, K, Hd,
                           St.Ptr + (ulong)(t * 8), fp8 ? KS2.Ptr : 0, fp8 ? VS2.Ptr : 0);
        s.Synchronize();
        Gpu.Close(Q1.ToArray<float>(T * ld), Q2.ToArray<float>(T * ld), 1e-6, "rotated q rows " + what);
        if (!fp8)
        {
            var k1 = K1.ToArray<ushort>((int)(cb / 2)); var k2 = K2.ToArray<ushort>((int)(cb / 2));
            var v1 = V1.ToArray<ushort>((int)(cb / 2)); var v2 = V2.ToArray<ushort>((int)(cb / 2));
            Gpu.Close(k1.Select(u => Gpu.FromBits(u, DType.F16)).ToArray(), k2.Select(u => Gpu.FromBits(u, DType.F16)).ToArray(), 1e-3, "k cache " + what);
            Assert.Equal(v2, v1);   // v is a plain copy: bit for bit
            Assert.Contains(k1, u => u != 0);
            return;
        }
        // fp8 (as KvFp8GpuTests): v bytes and scales exactly (the row's max and the division are order-free); k from f32
        // math that may differ in the last bits (contraction, the norm's sum), so a byte may round the other way
        var kb1 = K1.ToArray<byte>((int)cb); var kb2 = K2.ToArray<byte>((int)cb);
        Assert.Equal(V2.ToArray<byte>((int)cb), V1.ToArray<byte>((int)cb));
        Assert.Equal(VS2.ToArray<float>((int)rows), VS1.ToArray<float>((int)rows));
        Assert.Equal(0f, VS1.ToArray<float>((int)rows)[start]);   // the all-zero v head of row 0
        int diff = 0;
        for (int i = 0; i < kb1.Length; i++) if (kb1[i] != kb2[i]) diff++;
        Assert.True(diff <= K * T * Hd / 100 + 1, $"{what}: {diff} k bytes differ from the decode write");
        Assert.Contains(kb1, b => b != 0);
        var ks1 = KS1.ToArray<float>((int)rows); var ks2 = KS2.ToArray<float>((int)rows);
        for (int i = 0; i < ks1.Length; i++) Assert.True(Math.Abs(ks1[i] - ks2[i]) <= 1e-6 * Math.Abs(ks2[i]), $"{what}: k scale {ks1[i]} vs {ks2[i]}");
    }

    // whole models: the batched path against the per-token path on the same backend, at every position; chunks of 5
    // rows (so chunk boundaries and start > 0 are crossed) against one chunk; then decode continues from the prefill
    [Theory]
    [MemberData(nameof(TransformersFixtureTests.Names), MemberType = typeof(TransformersFixtureTests))]
    public void FixtureBatchedPrefillEqualsPerTokenPrefill(string name)
    {
        if (CudaDeviceInfo.Unavailable() is { } why) Assert.Skip("No usable CUDA device: " + why);
        var reference = TransformersFixtureTests.LoadReference(name);
        var folder = ModelFolderLoader.Load(Path.Combine(TransformersFixtureTests.FixturesDir, name), null, default);
        using var _store = folder.Store;
        using var b = new CudaBackend(folder.Config, folder.Weights, 64);
        int v = folder.Config.VocabSize, n = reference.InputIds.Length;
        if (b.PrefillFallbackReason is { } fb)
        {
            Assert.False(b.UsesBatchedPrefill(n));
            Assert.Skip($"{name} prefills token by token: {fb}");
        }
        Assert.True(b.UsesBatchedPrefill(n));
        var batched = new float[n * v];
        b.Forward(reference.InputIds, 0, batched, allLogits: true);
        b.PrefillChunkRows = 5;
        var chunked = new float[n * v];
        b.Forward(reference.InputIds, 0, chunked, allLogits: true);
        b.PrefillChunkRows = CudaBackend.PrefillChunk;
        b.BatchedPrefill = false;
        var perToken = new float[n * v];
        b.Forward(reference.InputIds, 0, perToken, allLogits: true);
        b.BatchedPrefill = true;
        double worst = 0;
        for (int p = 0; p < n; p++)
        {
            var want = perToken.AsSpan(p * v, v);
            double e1 = Gpu.RelL2(batched.AsSpan(p * v, v), want), e2 = Gpu.RelL2(chunked.AsSpan(p * v, v), want);
            worst = Math.Max(worst, Math.Max(e1, e2));
            Assert.True(e1 <= 2e-3, $"{name} position {p}: batched vs per-token relative L2 {e1:E2}");
            Assert.True(e2 <= 2e-3, $"{name} position {p}: 5-row chunks vs per-token relative L2 {e2:E2}");
            Assert.True(Gpu.RelL2(batched.AsSpan(p * v, v), reference.Logits[p]) <= ProofTests.FixtureTolerance, $"{name} position {p}: batched vs transformers");
        }
        // prefill n-4 tokens batched (last logits only), then decode the rest one by one against transformers
        var last = new float[v];
        b.Forward(reference.InputIds.AsSpan(0, n - 4), 0, last, allLogits: false);
        Gpu.Close(last, reference.Logits[n - 5], ProofTests.FixtureTolerance, $"{name} last logits of the batched prefill");
        for (int p = n - 4; p < n; p++)
        {
            b.Forward(reference.InputIds.AsSpan(p, 1), p, last, allLogits: false);
            Gpu.Close(last, reference.Logits[p], ProofTests.FixtureTolerance, $"{name} decode at {p} after batched prefill");
        }
        // greedy after a batched prefill is the argmax of those logits
        int g = b.ForwardGreedy(reference.InputIds.AsSpan(0, n), 0);
        var lastRow = batched.AsSpan((n - 1) * v, v).ToArray();
        Assert.Equal(Array.IndexOf(lastRow, lastRow.Max()), g);
        TestContext.Current.SendDiagnosticMessage($"{name}: batched/chunked vs per-token prefill worst relative L2 {worst:E2} over {n} positions");
    }

    // fp8 / int4 models through the batched path (variant 5 GEMMs with the scales) against the per-token path of the
    // same backend (the quantized matvecs, which QuantBackendGpuTests hold to the CPU), at the bound of the bf16 batched
    // path above: every prefill position, 5-row chunks, and decode after a batched prefill
    [Theory]
    [InlineData("tiny-wp", DType.F8E4M3)]
    [InlineData("tiny-wp", DType.Int4)]
    [InlineData("llama_tied", DType.Int4)]   // tied classifier's own quantized copy
    [InlineData("qwen2", DType.F8E4M3)]      // q/k/v biases
    [InlineData("qwen3", DType.Int4)]        // q/k RMSNorm
    [InlineData("gemma", DType.F8E4M3)]      // GELU, (1 + w) norms, scaled embeddings
    public void QuantizedBatchedPrefillEqualsPerTokenPrefill(string name, DType dt)
    {
        if (CudaDeviceInfo.Unavailable() is { } why) Assert.Skip("No usable CUDA device: " + why);
        string folder = name == "tiny-wp" ? TinyWp.Folder : Path.Combine(TransformersFixtureTests.FixturesDir, name);
        using var m = ModelFactory.Import(folder, new ImportOptions { Device = DeviceChoice.Cuda, WeightDType = dt, ContextLength = 128 });
        var b = (CudaBackend)m.Backend;
        int v = m.Config.VocabSize;
        var r = Gpu.Rng();
        int[] prompt = name == "tiny-wp" ? Enumerable.Range(0, 40).Select(_ => r.Next(v)).ToArray()
                                         : TransformersFixtureTests.LoadReference(name).InputIds;
        int n = prompt.Length;
        if (b.PrefillFallbackReason is { } fb)
        {
            Assert.False(b.UsesBatchedPrefill(n));
            Assert.Skip($"{name} {DTypes.Name(dt)} prefills token by token: {fb}");
        }
        Assert.True(b.UsesBatchedPrefill(n));
        var batched = new float[n * v];
        b.Forward(prompt, 0, batched, allLogits: true);
        b.PrefillChunkRows = 5;
        var chunked = new float[n * v];
        b.Forward(prompt, 0, chunked, allLogits: true);
        b.PrefillChunkRows = CudaBackend.PrefillChunk;
        b.BatchedPrefill = false;
        var perToken = new float[n * v];
        b.Forward(prompt, 0, perToken, allLogits: true);
        b.BatchedPrefill = true;
        double worst = 0;
        for (int p = 0; p < n; p++)
        {
            var want = perToken.AsSpan(p * v, v);
            foreach (var x in batched.AsSpan(p * v, v)) Assert.True(float.IsFinite(x), $"{name} {DTypes.Name(dt)}: non-finite batched logit at {p}");
            double e1 = Gpu.RelL2(batched.AsSpan(p * v, v), want), e2 = Gpu.RelL2(chunked.AsSpan(p * v, v), want);
            worst = Math.Max(worst, Math.Max(e1, e2));
            Assert.True(e1 <= 2e-3, $"{name} {DTypes.Name(dt)} position {p}: batched vs per-token relative L2 {e1:E2}");
            Assert.True(e2 <= 2e-3, $"{name} {DTypes.Name(dt)} position {p}: 5-row chunks vs per-token relative L2 {e2:E2}");
        }
        // n-4 tokens batched, then the last 4 decoded one by one
        var last = new float[v];
        b.Forward(prompt.AsSpan(0, n - 4), 0, last, allLogits: false);
        for (int p = n - 4; p < n; p++)
        {
            b.Forward(prompt.AsSpan(p, 1), p, last, allLogits: false);
            double e = Gpu.RelL2(last, perToken.AsSpan(p * v, v));
            worst = Math.Max(worst, e);
            Assert.True(e <= 2e-3, $"{name} {DTypes.Name(dt)}: decode at {p} after a batched prefill vs per-token relative L2 {e:E2}");
        }
        TestContext.Current.SendDiagnosticMessage($"{name} {DTypes.Name(dt)}: batched/chunked vs per-token worst relative L2 {worst:E2} over {n} positions");
    }
}
