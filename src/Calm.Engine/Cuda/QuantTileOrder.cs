using Calm.Engine.Model;

namespace Calm.Engine.Cuda;

/// <summary>
/// The tile order of fp8/int4 values on the device (kernels/quant.cuh quant_tile_off): the order the CUDA backend
/// stores the int4 matrices the tensor-core matvecs read in (<see cref="CudaBackend.TileOrder"/>, <see cref="Stored"/>), so that
/// one 16-byte load per lane of a warp, lane (g, t) reading bytes 64k + 16t of row 8o + g (the mma fragment pattern),
/// is 512 contiguous bytes rather than 8 rows x 64 bytes. The host formats (<see cref="Quant.QuantFormats"/>) stay
/// row-major: the backend uploads row-major and reorders on the device (kernels/matvec_quant.cu quant_tile).
/// <code>
///   rows in blocks of 8 (the last padded with zero rows): block o = rows 8o .. 8o+7 at o * 8 * rowBytes
///   inside a block: 64-byte column pieces k (bytes 64k .. 64k+63 of each row) at k * 512, row r % 8 at (r % 8) * 64
///   byte b of row r  ->  (r / 8) * 8 * rowBytes + (b / 64) * 512 + (r % 8) * 64 + b % 64
/// </code>
/// Only for rows of a multiple of 64 bytes: exactly the shapes the tensor-core kernels take
/// (<see cref="CudaQuantKernels.TensorCoreShape"/>: fp8 cols % 64 == 0, int4 cols % 128 == 0).
/// An int4 matrix's scales [rows, cols / 32] f16 go with its values (quant.cuh quant_scale_idx): the same 8-row blocks
/// with 8-byte pieces (<see cref="ScalePieceBytes"/>: the 4 scales of one 128-column k-block), so a warp's scale load
/// (8 rows x 8 bytes) is 64 contiguous bytes. Every method takes the piece size, values' <see cref="PieceBytes"/> by default.
/// The backend stores int4 matrices in it (<see cref="Stored"/>); the fp8 tensor-core matvecs read row-major only
/// (measured faster with their L2 prefetch-size hint: kernels/matvec_quant.cu, bench/RESULTS.md fifteenth session).
/// The prefill GEMM (kernels/gemm_wgmma.cu) reads either order for both formats.
/// </summary>
public static class QuantTileOrder
{
    /// <summary>Rows per block of the order.</summary>
    public const int BlockRows = 8;
    /// <summary>Bytes of a row's piece inside a block (the row bytes must be a multiple of it).</summary>
    public const int PieceBytes = 64;
    /// <summary>The piece of the int4 scales: 4 f16 scales, one 128-column k-block of the tensor-core kernels.</summary>
    public const int ScalePieceBytes = 8;

    /// <summary>Whether [*, <paramref name="cols"/>] values of <paramref name="dt"/> can be in the tile order.</summary>
    public static bool Fits(DType dt, long cols) => DTypes.IsQuantized(dt) && cols <= int.MaxValue && CudaQuantKernels.TensorCoreShape(dt, (int)cols);

    /// <summary>Whether the CUDA backend stores [*, <paramref name="cols"/>] values of <paramref name="dt"/> in the tile
    /// order where it uses the order at all (<see cref="CudaBackend.TileOrder"/>): int4 matrices the tensor-core
    /// kernels take, values and scales. Llama-3-8B int4 on the H200, same call: 533.8 tok/s row-major, 548.7 with the
    /// values in the tile order (fifteenth session); 545.9 → 555.2 / 554.6 with the scales too (sixteenth).</summary>
    public static bool Stored(DType dt, long cols) => dt == DType.Int4 && Fits(dt, cols);

    /// <summary>Bytes of <paramref name="rows"/> rows of <paramref name="rowBytes"/> in the tile order (whole blocks of 8 rows).</summary>
    public static long Bytes(long rows, long rowBytes) => (rows + BlockRows - 1) / BlockRows * BlockRows * rowBytes;

    /// <summary>Offset of byte <paramref name="b"/> of row <paramref name="r"/> (quant.cuh quant_tile_off; with
    /// <see cref="ScalePieceBytes"/> quant_scale_idx in bytes).</summary>
    public static long Offset(long r, long b, long rowBytes, int piece = PieceBytes)
        => r / BlockRows * BlockRows * rowBytes + b / piece * (BlockRows * piece) + r % BlockRows * piece + b % piece;

    private static void Check(long rows, long rowBytes, int piece)
    {
        if (piece is not (PieceBytes or ScalePieceBytes))
            throw new ArgumentException($"the tile order's pieces are {PieceBytes} bytes (values) or {ScalePieceBytes} (int4 scales), not {piece}");
        if (rows < 0 || rowBytes <= 0 || rowBytes % piece != 0)
            throw new ArgumentException($"the tile order takes rows of a multiple of {piece} bytes (got {rows} rows of {rowBytes})");
    }

    /// <summary>Row-major <paramref name="rowMajor"/> [rows, rowBytes] in the tile order (<see cref="Bytes"/> long, padding zero).</summary>
    public static byte[] Tile(ReadOnlySpan<byte> rowMajor, long rows, long rowBytes, int piece = PieceBytes)
    {
        Check(rows, rowBytes, piece);
        if (rowMajor.Length < rows * rowBytes) throw new ArgumentException($"{rowMajor.Length} bytes hold fewer than {rows} rows of {rowBytes}", nameof(rowMajor));
        var t = new byte[Bytes(rows, rowBytes)];
        for (long r = 0; r < rows; r++)
            for (long b = 0; b < rowBytes; b += piece)
                rowMajor.Slice((int)(r * rowBytes + b), piece).CopyTo(t.AsSpan((int)Offset(r, b, rowBytes, piece), piece));
        return t;
    }

    /// <summary>Rows <paramref name="row0"/> .. + <paramref name="rows"/> of a matrix in the tile order (<paramref name="tiled"/>
    /// holds the whole blocks they fall in, the first at offset 0) as row-major bytes.</summary>
    public static byte[] Untile(ReadOnlySpan<byte> tiled, long row0, long rows, long rowBytes, int piece = PieceBytes)
    {
        Check(rows, rowBytes, piece);
        long first = row0 / BlockRows * BlockRows;
        var m = new byte[rows * rowBytes];
        for (long r = 0; r < rows; r++)
            for (long b = 0; b < rowBytes; b += piece)
                tiled.Slice((int)Offset(row0 + r - first, b, rowBytes, piece), piece).CopyTo(m.AsSpan((int)(r * rowBytes + b), piece));
        return m;
    }
}
