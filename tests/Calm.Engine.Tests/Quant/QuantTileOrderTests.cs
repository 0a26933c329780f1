using Calm.Engine.Cuda;
using Calm.Engine.Model;

namespace Calm.Engine.Tests.Quant;

/// <summary>
/// The tile order of quantized values on the device (<see cref="QuantTileOrder"/>, kernels/quant.cuh quant_tile_off):
/// a permutation inside blocks of 8 rows under which the tensor-core kernels' load pattern (lane (g, t) of a warp:
/// bytes 64k + 16t of row 8o + g) is one contiguous 512-byte run in lane order. Host only; the GPU's reorder kernel and
/// the kernels that read the order are checked against these in Cuda/QuantKernelTests.
/// </summary>
public class QuantTileOrderTests
{
    [Theory]
    [InlineData(8, 64, QuantTileOrder.PieceBytes)]
    [InlineData(16, 192, QuantTileOrder.PieceBytes)]
    [InlineData(24, 4096, QuantTileOrder.PieceBytes)]
    [InlineData(8, 8, QuantTileOrder.ScalePieceBytes)]      // int4 scales: 4 groups (128 columns)
    [InlineData(24, 264, QuantTileOrder.ScalePieceBytes)]   // 4224 columns
    public void OffsetIsAPermutationOfWholeBlocks(int rows, int rowBytes, int piece)
    {
        long n = QuantTileOrder.Bytes(rows, rowBytes);
        Assert.Equal((long)rows * rowBytes, n);
        var seen = new bool[n];
        for (long r = 0; r < rows; r++)
            for (long b = 0; b < rowBytes; b++)
            {
                long o = QuantTileOrder.Offset(r, b, rowBytes, piece);
                Assert.InRange(o, 0, n - 1);
                Assert.False(seen[o], $"offset {o} reached twice (row {r}, byte {b})");
                seen[o] = true;
                // the order moves bytes only inside their own 8-row block
                Assert.Equal(r / 8, o / (8L * rowBytes));
            }
    }

    [Theory]
    [InlineData(16, 128)]
    [InlineData(40, 14336)]
    public void TheFragmentLoadOfAWarpIsOneContiguousRun(int rows, int rowBytes)
    {
        for (int o = 0; o < rows / 8; o++)
            for (int k = 0; k < rowBytes / 64; k++)
            {
                long first = QuantTileOrder.Offset(8 * o, 64 * k, rowBytes);
                Assert.Equal(0, first % 512);
                for (int lane = 0; lane < 32; lane++)
                {
                    int g = lane / 4, t = lane % 4;
                    for (int j = 0; j < 16; j++)
                        Assert.Equal(first + 16 * lane + j, QuantTileOrder.Offset(8 * o + g, 64 * k + 16 * t + j, rowBytes));
                }
            }
    }

    /// <summary>The int4 scales' order: the kernels' scale load of a warp (lane (g, t): the f16 pair of groups
    /// 2(t % 2), 2(t % 2) + 1 of k-block k of row 8o + g) is one 64-byte run, and the byte offsets are those of
    /// quant_scale_idx (kernels/quant.cuh: (r / 8) 8 G + (g / 4) 32 + (r % 8) 4 + g % 4 elements) for G = cols / 32,
    /// which is also the 16-byte unit of the group's values in their tile order.</summary>
    [Theory]
    [InlineData(16, 4096)]
    [InlineData(40, 14336)]
    [InlineData(24, 4224)]
    public void TheScaleLoadOfAWarpIsOneContiguousRun(int rows, int cols)
    {
        int G = cols / 32, rowBytes = 2 * G;
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < G; g++)
            {
                long idx = QuantTileOrder.Offset(r, 2 * g, rowBytes, QuantTileOrder.ScalePieceBytes) / 2;
                Assert.Equal((r / 8) * 8L * G + (g / 4) * 32 + (r % 8) * 4 + g % 4, idx);
                // the kernels find a group's scale at the index of its 16 value bytes in 16-byte units (matvec_int4_tc_impl)
                Assert.Equal(QuantTileOrder.Offset(r, 16 * g, 16 * G) / 16, idx);
            }
        for (int o = 0; o < rows / 8; o++)
            for (int k = 0; k < G / 4; k++)
            {
                long first = QuantTileOrder.Offset(8 * o, 8 * k, rowBytes, QuantTileOrder.ScalePieceBytes);
                Assert.Equal(0, first % 64);
                for (int lane = 0; lane < 32; lane++)
                {
                    int g = lane / 4, t = lane % 4;
                    for (int j = 0; j < 4; j++)
                        Assert.Equal(first + 8 * g + 4 * (t & 1) + j, QuantTileOrder.Offset(8 * o + g, 8 * k + 4 * (t & 1) + j, rowBytes, QuantTileOrder.ScalePieceBytes));
                }
            }
    }

    [Fact]
    public void ScalesTileAndUntileRoundTripWithAPartialLastBlock()
    {
        const int rows = 13, rowBytes = 264, piece = QuantTileOrder.ScalePieceBytes;
        var r = new Random(11);
        var m = new byte[rows * rowBytes];
        r.NextBytes(m);
        var t = QuantTileOrder.Tile(m, rows, rowBytes, piece);
        Assert.Equal(16 * rowBytes, t.Length);
        for (int row = 0; row < rows; row++)
            for (int b = 0; b < rowBytes; b++)
                Assert.Equal(m[row * rowBytes + b], t[QuantTileOrder.Offset(row, b, rowBytes, piece)]);
        for (int row = rows; row < 16; row++)
            for (int b = 0; b < rowBytes; b++)
                Assert.Equal(0, t[QuantTileOrder.Offset(row, b, rowBytes, piece)]);
        Assert.Equal(m, QuantTileOrder.Untile(t, 0, rows, rowBytes, piece));
        Assert.Equal(m.AsSpan(5 * rowBytes, 6 * rowBytes).ToArray(), QuantTileOrder.Untile(t.AsSpan(0), 5, 6, rowBytes, piece));
    }

    [Fact]
    public void TileAndUntileRoundTripWithAPartialLastBlock()
    {
        const int rows = 13, rowBytes = 192;
        var r = new Random(7);
        var m = new byte[rows * rowBytes];
        r.NextBytes(m);
        var t = QuantTileOrder.Tile(m, rows, rowBytes);
        Assert.Equal(16 * rowBytes, t.Length);
        for (int row = 0; row < rows; row++)
            for (int b = 0; b < rowBytes; b++)
                Assert.Equal(m[row * rowBytes + b], t[QuantTileOrder.Offset(row, b, rowBytes)]);
        for (int row = rows; row < 16; row++)   // padding rows are zero
            for (int b = 0; b < rowBytes; b++)
                Assert.Equal(0, t[QuantTileOrder.Offset(row, b, rowBytes)]);
        Assert.Equal(m, QuantTileOrder.Untile(t, 0, rows, rowBytes));
        // a part that starts inside a block (a fused matrix's second part): its rows, from the blocks they fall in
        var part = QuantTileOrder.Untile(t.AsSpan(0), 5, 6, rowBytes);
        Assert.Equal(m.AsSpan(5 * rowBytes, 6 * rowBytes).ToArray(), part);
        var tail = QuantTileOrder.Untile(t.AsSpan(8 * rowBytes), 9, 4, rowBytes);
        Assert.Equal(m.AsSpan(9 * rowBytes, 4 * rowBytes).ToArray(), tail);
    }

    [Theory]
    [InlineData(DType.F8E4M3, 64, true)]
    [InlineData(DType.F8E4M3, 4096, true)]
    [InlineData(DType.F8E4M3, 100, false)]
    [InlineData(DType.F8E4M3, 4112, false)]
    [InlineData(DType.Int4, 128, true)]
    [InlineData(DType.Int4, 14336, true)]
    [InlineData(DType.Int4, 96, false)]
    [InlineData(DType.Int4, 4160, false)]
    [InlineData(DType.BF16, 4096, false)]
    public void FitsExactlyTheTensorCoreShapesAndOnlyInt4IsStored(DType dt, int cols, bool fits)
    {
        Assert.Equal(fits, QuantTileOrder.Fits(dt, cols));
        Assert.Equal(fits && dt == DType.Int4, QuantTileOrder.Stored(dt, cols));   // the backend tiles int4 only
        if (fits) Assert.True(CudaQuantKernels.TensorCoreShape(dt, cols));
    }

    [Fact]
    public void RowsThatAreNotWholePiecesAreRefused()
    {
        Assert.Throws<ArgumentException>(() => QuantTileOrder.Tile(new byte[100], 1, 100));
        Assert.Throws<ArgumentException>(() => QuantTileOrder.Untile(new byte[512], 0, 1, 0));
        Assert.Throws<ArgumentException>(() => QuantTileOrder.Tile(new byte[64], 2, 64));   // fewer bytes than rows
        Assert.Throws<ArgumentException>(() => QuantTileOrder.Tile(new byte[12], 1, 12, QuantTileOrder.ScalePieceBytes));
        Assert.Throws<ArgumentException>(() => QuantTileOrder.Tile(new byte[64], 1, 64, 16));   // only the two pieces
    }
}
