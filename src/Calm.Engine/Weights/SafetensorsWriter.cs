using System.Text;
using System.Text.Json;
using Calm.Engine.Model;

namespace Calm.Engine.Weights;

/// <summary>A tensor to write: raw little-endian bytes of <paramref name="DType"/> in row-major order of <paramref name="Shape"/>.</summary>
public sealed record SafetensorsTensor(string Name, DType DType, long[] Shape, ReadOnlyMemory<byte> Data);

/// <summary>
/// Writes safetensors files: u64 header length, JSON header padded with spaces to a multiple of 8, then the
/// tensors' bytes back to back in the order given. Writes to a temporary file and renames, so a failed write
/// never leaves a half-written file under the final name.
/// </summary>
public static class SafetensorsWriter
{
    /// <summary>Writes tensors held in managed memory.</summary>
    public static void Write(string path, IReadOnlyList<SafetensorsTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var specs = tensors.Select(t => (t.Name, t.DType, t.Shape, (long)t.Data.Length)).ToList();
        WriteCore(path, specs, metadata, (i, s) => s.Write(tensors[i].Data.Span));
    }

    /// <summary>Writes tensors that live in native memory (e.g. a synthetic model's <see cref="NativeWeightStore"/>).</summary>
    public static unsafe void Write(string path, IReadOnlyList<Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var specs = tensors.Select(t => (t.Name, t.DType, t.Shape, t.ByteLength)).ToList();
        WriteCore(path, specs, metadata, (i, s) =>
        {
            var t = tensors[i];
            byte* p = (byte*)t.Data;
            long left = t.ByteLength;
            while (left > 0)
            {
                int chunk = (int)Math.Min(left, 1 << 24);
                s.Write(new ReadOnlySpan<byte>(p, chunk));
                p += chunk; left -= chunk;
            }
        });
    }

    /// <summary>The header bytes (unpadded JSON) for the given tensors; exposed for tests that hand-craft files.</summary>
    public static byte[] BuildHeaderJson(IReadOnlyList<(string Name, DType DType, long[] Shape, long Bytes)> specs, IReadOnlyDictionary<string, string>? metadata)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, dtype, shape, bytes) in specs)
            {
                if (string.IsNullOrEmpty(name) || name == "__metadata__" || !names.Add(name))
                    throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                        $"Cannot write tensor '{name}': names must be non-empty, unique and not '__metadata__'.", name);
                long elements = 1;
                foreach (var d in shape)
                {
                    if (d < 0) throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                        $"Cannot write tensor '{name}': shape {Tensor.ShapeText(shape)} has a negative dimension.", name);
                    elements = checked(elements * d);
                }
                if (checked(elements * DTypes.SizeOf(dtype)) != bytes)
                    throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                        $"Cannot write tensor '{name}': {dtype} {Tensor.ShapeText(shape)} needs {elements * DTypes.SizeOf(dtype)} bytes, got {bytes}.", name);
                w.WriteStartObject(name);
                w.WriteString("dtype", SafetensorsName(dtype));
                w.WriteStartArray("shape");
                foreach (var d in shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += bytes;
            }
            w.WriteEndObject();
        }
        return ms.ToArray();
    }

    public static string SafetensorsName(DType t) => t switch
    {
        DType.F32 => "F32", DType.F16 => "F16", DType.BF16 => "BF16", DType.F64 => "F64",
        DType.I64 => "I64", DType.I32 => "I32", DType.I16 => "I16", DType.I8 => "I8", DType.U8 => "U8",
        DType.Bool => "BOOL", DType.F8E4M3 => "F8_E4M3", DType.F8E5M2 => "F8_E5M2",
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    };

    private static void WriteCore(string path, List<(string Name, DType DType, long[] Shape, long Bytes)> specs,
        IReadOnlyDictionary<string, string>? metadata, Action<int, Stream> writeData)
    {
        var json = BuildHeaderJson(specs, metadata);
        int padded = (json.Length + 7) / 8 * 8;
        var header = new byte[8 + padded];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(header, (ulong)padded);
        json.CopyTo(header, 8);
        for (int i = 8 + json.Length; i < header.Length; i++) header[i] = (byte)' ';

        string full = System.IO.Path.GetFullPath(path);
        string tmp = full + ".tmp-" + Environment.ProcessId + "-" + Guid.NewGuid().ToString("N")[..8];
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                fs.Write(header);
                for (int i = 0; i < specs.Count; i++) writeData(i, fs);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch { /* best effort */ }
            throw;
        }
    }
}
