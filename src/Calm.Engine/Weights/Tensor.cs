using Calm.Engine.Model;

namespace Calm.Engine.Weights;

/// <summary>
/// A view of one weight tensor in host memory (memory-mapped file or native buffer). Row-major; Shape[0] is rows
/// (output features for a projection). The memory belongs to a <see cref="WeightStore"/>; a Tensor never frees it.
/// </summary>
public sealed unsafe class Tensor
{
    public string Name { get; }
    public DType DType { get; }
    public long[] Shape { get; }
    /// <summary>First byte of the tensor's data.</summary>
    public nint Data { get; }
    /// <summary>Where the bytes come from (a file path or "synthetic"), for error messages.</summary>
    public string Source { get; }

    /// <summary>
    /// Scales of a quantized tensor (layouts in <see cref="Quant.QuantFormats"/>): F8E4M3 fp32 [rows] (one per output
    /// row), Int4 fp16 [rows][ceil(Cols/32)] (one per group of 32). 0 for unquantized tensors (and for an fp8 checkpoint
    /// tensor without scales, read with scale 1).
    /// </summary>
    public nint Scales { get; }

    /// <summary>
    /// True when the tensor has scales: a host <see cref="Scales"/> pointer, or scales that live only on a device with
    /// the values (a device-only quantized tensor, <see cref="Synthetic.SyntheticWeights.DeviceOnly(ModelConfig, DType)"/>).
    /// Sizes (<see cref="ByteLength"/>, <see cref="ScaleBytes"/>) count the scales whenever this is true.
    /// </summary>
    public bool HasScales => Scales != 0 || _deviceScales;
    private readonly bool _deviceScales;

    /// <param name="deviceScales">A quantized tensor whose scales (like its values, <paramref name="data"/> = 0) exist
    /// only on a device: sized as if <paramref name="scales"/> were given.</param>
    public Tensor(string name, DType dtype, long[] shape, nint data, string source, nint scales = 0, bool deviceScales = false)
    {
        Name = name; DType = dtype; Shape = shape; Data = data; Source = source; Scales = scales;
        _deviceScales = deviceScales && scales == 0 && DTypes.IsQuantized(dtype);
    }

    /// <summary>Elements that share one scale: a whole row for fp8, <see cref="Quant.QuantFormats.Int4GroupSize"/> for int4, 0 otherwise.</summary>
    public long GroupSize => DType switch
    {
        DType.F8E4M3 when HasScales => Cols,
        DType.Int4 => Quant.QuantFormats.Int4GroupSize,
        _ => 0,
    };

    /// <summary>Rows over all leading dimensions (ElementCount / Cols).</summary>
    public long TotalRows => Cols == 0 ? 0 : ElementCount / Cols;
    /// <summary>Bytes of one row of values (int4: 16 per group of 32, the last group padded).</summary>
    public long RowDataBytes => DType == DType.Int4 ? Quant.QuantFormats.Int4RowBytes(Cols) : Cols * DTypes.SizeOf(DType);
    /// <summary>Bytes of one row's scales (fp8: 4, int4: 2 * Cols / 32; 0 without scales).</summary>
    public long RowScaleBytes => !HasScales ? 0 : DType switch
    {
        DType.F8E4M3 => sizeof(float),
        DType.Int4 => Quant.QuantFormats.Int4Groups(Cols) * sizeof(ushort),
        _ => 0,
    };
    /// <summary>Bytes of the values alone.</summary>
    public long DataBytes => TotalRows * RowDataBytes;
    /// <summary>Bytes of the scales alone.</summary>
    public long ScaleBytes => TotalRows * RowScaleBytes;

    /// <summary>True when the values live only on a device (synthetic models made on the GPU): Data is 0.</summary>
    public bool IsDeviceOnly => Data == 0;

    public long ElementCount { get { long n = 1; foreach (var d in Shape) n *= d; return n; } }
    /// <summary>Bytes the tensor occupies: values plus scales.</summary>
    public long ByteLength => DataBytes + ScaleBytes;
    public int Rank => Shape.Length;
    /// <summary>Rows of a 2-D tensor (1 for a vector).</summary>
    public long Rows => Shape.Length >= 2 ? Shape[0] : 1;
    /// <summary>Elements per row (the last dimension).</summary>
    public long Cols => Shape.Length == 0 ? 1 : Shape[^1];

    /// <summary>Rows [start, start+count) of a 2-D tensor as a tensor of its own (no copy): fused qkv/gate_up splits.</summary>
    public Tensor SliceRows(long start, long count, string name)
    {
        if (Shape.Length != 2 || start < 0 || count < 0 || start + count > Shape[0])
            throw new ArgumentOutOfRangeException(nameof(start), $"cannot slice rows {start}+{count} of {Name} {ShapeText(Shape)}");
        return new Tensor(name, DType, new[] { count, Shape[1] }, Data == 0 ? 0 : Data + (nint)(start * RowDataBytes), Source,
                          Scales == 0 ? 0 : Scales + (nint)(start * RowScaleBytes), _deviceScales);
    }

    /// <summary>Element <paramref name="index"/> of a 3-D tensor [N, R, C] as a 2-D tensor [R, C] (stacked experts).</summary>
    public Tensor Index0(long index, string name)
    {
        if (Shape.Length != 3 || index < 0 || index >= Shape[0])
            throw new ArgumentOutOfRangeException(nameof(index), $"cannot take [{index}] of {Name} {ShapeText(Shape)}");
        long rows = Shape[1];
        return new Tensor(name, DType, new[] { Shape[1], Shape[2] }, Data == 0 ? 0 : Data + (nint)(index * rows * RowDataBytes), Source,
                          Scales == 0 ? 0 : Scales + (nint)(index * rows * RowScaleBytes), _deviceScales);
    }

    public ReadOnlySpan<byte> RowBytes(long row)
    {
        long rowBytes = RowDataBytes;
        return new ReadOnlySpan<byte>((byte*)Data + row * rowBytes, checked((int)rowBytes));
    }

    /// <summary>Reads element i as float (slow path for tests and small vectors; quantized tensors dequantized).</summary>
    public float GetFloat(long i) => DType switch
    {
        DType.F32 => ((float*)Data)[i],
        DType.F16 => (float)((Half*)Data)[i],
        DType.BF16 => BitConverter.Int32BitsToSingle(((ushort*)Data)[i] << 16),
        DType.F8E4M3 => Quant.QuantFormats.E4M3ToFloat(((byte*)Data)[i]) * (Scales == 0 ? 1f : ((float*)Scales)[i / Cols]),
        DType.Int4 => Int4At(i / Cols, i % Cols),
        _ => throw new NotSupportedException($"{Name}: dtype {DType} is not a weight type"),
    };

    private float Int4At(long row, long col)
    {
        byte b = ((byte*)Data)[row * RowDataBytes + col / 2];
        return Quant.QuantFormats.Int4Value(b, (int)(col & 1))
               * (float)((Half*)Scales)[row * Quant.QuantFormats.Int4Groups(Cols) + col / Quant.QuantFormats.Int4GroupSize];
    }

    /// <summary>Copies the whole tensor to a new float array (small tensors: norms, biases).</summary>
    public float[] ToFloatArray()
    {
        var r = new float[checked((int)ElementCount)];
        for (int i = 0; i < r.Length; i++) r[i] = GetFloat(i);
        return r;
    }

    public static string ShapeText(long[] shape) => "[" + string.Join(", ", shape) + "]";
    public override string ToString() => $"{Name} {DTypes.Name(DType)} {ShapeText(Shape)}";
}
