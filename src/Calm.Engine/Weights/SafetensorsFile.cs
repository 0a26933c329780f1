using System.IO.MemoryMappedFiles;
using System.Text.Json;
using System.Text.Unicode;
using Calm.Engine.Model;

namespace Calm.Engine.Weights;

/// <summary>One tensor entry of a safetensors header. Begin/End are byte offsets into the data section.</summary>
public sealed record SafetensorsEntry(string Name, DType DType, long[] Shape, long Begin, long End)
{
    public long ByteLength => End - Begin;
}

/// <summary>
/// A validated safetensors header. File layout:
///   [0, 8)          u64 little-endian N = header length
///   [8, 8+N)        UTF-8 JSON object: name -> {dtype, shape, data_offsets [begin, end)}, optional "__metadata__"
///   [8+N, EOF)      data section; every tensor's bytes lie at data_offsets relative to its start
/// </summary>
public sealed class SafetensorsHeader
{
    /// <summary>Largest header Calm accepts (real headers are kilobytes to a few megabytes).</summary>
    public const long MaxHeaderBytes = 100L * 1024 * 1024;

    public required string Path { get; init; }
    public required long FileLength { get; init; }
    /// <summary>Byte offset of the data section in the file (8 + N).</summary>
    public required long DataStart { get; init; }
    public long DataLength => FileLength - DataStart;
    /// <summary>Tensors in header order.</summary>
    public required IReadOnlyList<SafetensorsEntry> Entries { get; init; }
    public required IReadOnlyDictionary<string, string> Metadata { get; init; }
}

/// <summary>
/// Reads and validates safetensors files, and maps them read-only. Validation happens on the header before any
/// tensor data is touched and before any allocation sized by the file's claims.
/// </summary>
public static class SafetensorsFile
{
    private static CalmException Error(string id, string path, string what, string? tensor = null) =>
        new(id, CalmErrorKind.InvalidData,
            $"{path}: {(tensor is null ? "" : $"tensor '{tensor}': ")}{what} The file is damaged or not a safetensors file; " +
            "download or save it again (e.g. with transformers save_pretrained).",
            tensor is null ? path : $"{path}:{tensor}");

    /// <summary>Reads and validates the header of the safetensors file at <paramref name="path"/>.</summary>
    public static SafetensorsHeader ReadHeader(string path)
    {
        using var fs = OpenRead(path);
        return ReadHeader(fs, path);
    }

    private static FileStream OpenRead(string path)
    {
        try { return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.None); }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new CalmException(ErrorIds.ShardMissing, CalmErrorKind.ObjectNotFound,
                $"{path}: the weights file does not exist. Download the model folder again.", path, e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CalmException(ErrorIds.WeightsMissing, CalmErrorKind.ResourceUnavailable,
                $"{path}: cannot open the weights file ({e.Message}). Check that it is readable.", path, e);
        }
    }

    /// <summary>
    /// Reads and validates a safetensors header from a seekable stream whose Length is the file length.
    /// Throws <see cref="CalmException"/> (Calm.Safetensors.*) naming <paramref name="path"/> and the tensor.
    /// </summary>
    public static SafetensorsHeader ReadHeader(Stream stream, string path)
    {
        long fileLength = stream.Length;
        if (fileLength < 8)
            throw Error(ErrorIds.SafetensorsTruncated, path, $"the file is {fileLength} bytes, shorter than the 8-byte header length.");
        Span<byte> len8 = stackalloc byte[8];
        stream.Position = 0;
        stream.ReadExactly(len8);
        ulong n = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(len8);
        // Refuse absurd or impossible lengths before allocating anything of that size.
        if (n > (ulong)SafetensorsHeader.MaxHeaderBytes)
            throw Error(ErrorIds.SafetensorsHeaderTooLarge, path,
                $"the header length field says {n} bytes, more than the {SafetensorsHeader.MaxHeaderBytes / (1024 * 1024)} MiB Calm accepts.");
        if ((long)n > fileLength - 8)
            throw Error(ErrorIds.SafetensorsHeaderTooLarge, path,
                $"the header length field says {n} bytes but only {fileLength - 8} bytes follow it (the file is truncated or corrupt).");
        var json = new byte[(int)n];
        stream.ReadExactly(json);
        return ParseHeaderJson(json, path, fileLength, 8 + (long)n);
    }

    private static SafetensorsHeader ParseHeaderJson(byte[] json, string path, long fileLength, long dataStart)
    {
        if (!Utf8.IsValid(json))
            throw Error(ErrorIds.SafetensorsHeaderInvalid, path, "the header is not valid UTF-8.");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 16 }); }
        catch (JsonException e)
        {
            throw Error(ErrorIds.SafetensorsHeaderInvalid, path, $"the header is not valid JSON ({e.Message}).");
        }
        using (doc)
        {
            try { return ParseHeaderDocument(doc.RootElement, path, fileLength, dataStart); }
            catch (InvalidOperationException e) // undecodable escapes in names or strings
            {
                throw Error(ErrorIds.SafetensorsHeaderInvalid, path, $"the header holds an undecodable string ({e.Message}).");
            }
        }
    }

    private static SafetensorsHeader ParseHeaderDocument(JsonElement root, string path, long fileLength, long dataStart)
    {
        if (root.ValueKind != JsonValueKind.Object)
            throw Error(ErrorIds.SafetensorsHeaderInvalid, path, $"the header is a JSON {root.ValueKind}, not an object.");
        long dataLength = fileLength - dataStart;
        var entries = new List<SafetensorsEntry>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        bool sawMetadata = false;
        foreach (var prop in root.EnumerateObject())
        {
            string name = prop.Name;
            if (name == "__metadata__")
            {
                if (sawMetadata) throw Error(ErrorIds.SafetensorsHeaderInvalid, path, "__metadata__ appears twice.");
                sawMetadata = true;
                if (prop.Value.ValueKind == JsonValueKind.Null) continue;
                if (prop.Value.ValueKind != JsonValueKind.Object)
                    throw Error(ErrorIds.SafetensorsHeaderInvalid, path, "__metadata__ is not an object of strings.");
                foreach (var m in prop.Value.EnumerateObject())
                {
                    if (m.Value.ValueKind != JsonValueKind.String)
                        throw Error(ErrorIds.SafetensorsHeaderInvalid, path, $"__metadata__ value '{m.Name}' is not a string.");
                    metadata[m.Name] = m.Value.GetString()!;
                }
                continue;
            }
            if (!names.Add(name))
                throw Error(ErrorIds.SafetensorsHeaderInvalid, path, "the tensor is listed twice in the header.", name);
            entries.Add(ParseEntry(name, prop.Value, path, dataLength));
        }

        // No two tensors may share bytes. Sort by begin; each must start at or after the previous end.
        var sorted = entries.OrderBy(e => e.Begin).ThenBy(e => e.End).ToArray();
        for (int i = 1; i < sorted.Length; i++)
        {
            var a = sorted[i - 1]; var b = sorted[i];
            if (b.Begin < a.End && b.ByteLength > 0 && a.ByteLength > 0)
                throw Error(ErrorIds.SafetensorsOverlap, path,
                    $"its bytes [{b.Begin}, {b.End}) overlap tensor '{a.Name}' [{a.Begin}, {a.End}).", b.Name);
        }

        // Every tensor must lie inside the data section. A header that packs its tensors end to end from 0 but
        // describes more bytes than the file holds is a truncated file; anything else is a bad offset.
        var outside = entries.FirstOrDefault(e => e.End > dataLength);
        if (outside is not null)
        {
            bool packed = sorted.Length > 0 && sorted[0].Begin == 0;
            for (int i = 1; packed && i < sorted.Length; i++) packed = sorted[i].Begin == sorted[i - 1].End;
            if (packed)
                throw Error(ErrorIds.SafetensorsTruncated, path,
                    $"the header describes {sorted[^1].End} bytes of tensor data but the file holds only {dataLength} (the file is truncated; " +
                    $"first tensor past the end: '{outside.Name}').");
            throw Error(ErrorIds.SafetensorsOffsetsInvalid, path,
                $"data_offsets [{outside.Begin}, {outside.End}) reach past the end of the {dataLength}-byte data section.", outside.Name);
        }

        return new SafetensorsHeader
        {
            Path = path, FileLength = fileLength, DataStart = dataStart, Entries = entries, Metadata = metadata,
        };
    }

    private static SafetensorsEntry ParseEntry(string name, JsonElement v, string path, long dataLength)
    {
        if (v.ValueKind != JsonValueKind.Object)
            throw Error(ErrorIds.SafetensorsHeaderInvalid, path, $"the entry is a JSON {v.ValueKind}, not an object with dtype, shape and data_offsets.", name);
        if (!v.TryGetProperty("dtype", out var dtEl) || dtEl.ValueKind != JsonValueKind.String)
            throw Error(ErrorIds.SafetensorsHeaderInvalid, path, "the entry has no string 'dtype'.", name);
        string dtText = dtEl.GetString()!;
        if (!DTypes.TryParseSafetensors(dtText, out var dtype))
            throw Error(ErrorIds.SafetensorsUnknownDType, path,
                $"dtype '{Truncate(dtText)}' is not a safetensors dtype Calm knows (F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2).", name);

        if (!v.TryGetProperty("shape", out var shEl) || shEl.ValueKind != JsonValueKind.Array)
            throw Error(ErrorIds.SafetensorsHeaderInvalid, path, "the entry has no 'shape' array.", name);
        int rank = shEl.GetArrayLength();
        if (rank > 8)
            throw Error(ErrorIds.SafetensorsHeaderInvalid, path, $"shape has {rank} dimensions (at most 8 are accepted).", name);
        var shape = new long[rank];
        long elements = 1;
        bool overflow = false;
        int k = 0;
        foreach (var d in shEl.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0)
                throw Error(ErrorIds.SafetensorsHeaderInvalid, path, $"shape dimension {k} is not a non-negative integer ({Truncate(d.GetRawText())}).", name);
            shape[k++] = dim;
            if (!overflow)
            {
                try { elements = checked(elements * dim); }
                catch (OverflowException) { overflow = true; }
            }
        }

        if (!v.TryGetProperty("data_offsets", out var offEl) || offEl.ValueKind != JsonValueKind.Array || offEl.GetArrayLength() != 2)
            throw Error(ErrorIds.SafetensorsOffsetsInvalid, path, "the entry has no 'data_offsets' array of two integers.", name);
        var b = offEl[0]; var e = offEl[1];
        if (b.ValueKind != JsonValueKind.Number || e.ValueKind != JsonValueKind.Number ||
            !b.TryGetInt64(out long begin) || !e.TryGetInt64(out long end) || begin < 0 || end < begin)
            throw Error(ErrorIds.SafetensorsOffsetsInvalid, path,
                $"data_offsets [{Truncate(b.GetRawText())}, {Truncate(e.GetRawText())}] are not integers 0 <= begin <= end.", name);

        long expected = 0;
        if (!overflow)
        {
            try { expected = checked(elements * DTypes.SizeOf(dtype)); }
            catch (OverflowException) { overflow = true; }
        }
        if (overflow || expected != end - begin)
            throw Error(ErrorIds.SafetensorsSizeMismatch, path,
                $"dtype {dtText} with shape {Tensor.ShapeText(shape)} needs {(overflow ? "more than 2^63" : expected.ToString())} bytes but data_offsets " +
                $"[{begin}, {end}) hold {end - begin}.", name);
        return new SafetensorsEntry(name, dtype, shape, begin, end);
    }

    private static string Truncate(string s) => s.Length <= 40 ? s : s[..40] + "...";

    /// <summary>
    /// Validates the header of <paramref name="path"/>, then maps the file read-only. The returned store owns the
    /// mapping; its tensors point straight into the mapped file (no copy).
    /// </summary>
    public static MappedSafetensors Open(string path)
    {
        var fs = OpenRead(path);
        MemoryMappedFile? mmf = null;
        MemoryMappedViewAccessor? view = null;
        try
        {
            var header = ReadHeader(fs, path);
            mmf = MemoryMappedFile.CreateFromFile(fs, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            view = mmf.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            return new MappedSafetensors(header, mmf, view);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            view?.Dispose(); mmf?.Dispose(); fs.Dispose();
            throw new CalmException(ErrorIds.WeightsMissing, CalmErrorKind.ResourceUnavailable,
                $"{path}: cannot memory-map the weights file ({e.Message}). Check that it is readable and the disk is healthy.", path, e);
        }
        catch
        {
            view?.Dispose(); mmf?.Dispose(); fs.Dispose();
            throw;
        }
    }
}

/// <summary>
/// A safetensors file mapped read-only. <see cref="Tensors"/> point into the mapping; <see cref="Dispose"/> unmaps it.
/// Managed overhead is the header's entries only, whatever the file size.
/// </summary>
public sealed unsafe class MappedSafetensors : WeightStore
{
    private MemoryMappedFile? _mmf;
    private MemoryMappedViewAccessor? _view;
    private byte* _base;
    private readonly Dictionary<string, Tensor> _tensors;

    public SafetensorsHeader Header { get; }
    public string Path => Header.Path;
    public IReadOnlyDictionary<string, Tensor> Tensors => _tensors;
    public IReadOnlyDictionary<string, string> Metadata => Header.Metadata;
    public override long Bytes => _base == null ? 0 : Header.DataLength;
    public bool IsDisposed => _base == null;

    internal MappedSafetensors(SafetensorsHeader header, MemoryMappedFile mmf, MemoryMappedViewAccessor view)
    {
        Header = header; _mmf = mmf; _view = view;
        byte* p = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _base = p + view.PointerOffset;
        _tensors = new Dictionary<string, Tensor>(header.Entries.Count, StringComparer.Ordinal);
        byte* data = _base + header.DataStart;
        foreach (var e in header.Entries)
            _tensors[e.Name] = new Tensor(e.Name, e.DType, e.Shape, (nint)(data + e.Begin), header.Path);
        s_live.AddOrUpdate(header.Path, 1, (_, n) => n + 1);
    }

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, int> s_live = new(StringComparer.Ordinal);

    /// <summary>How many live mappings of <paramref name="path"/> exist (tests check nothing stays mapped after a failure).</summary>
    internal static int LiveMappings(string path) => s_live.TryGetValue(path, out int n) ? n : 0;

    public override void Dispose()
    {
        if (_base == null) return;
        _base = null;
        _view!.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose(); _view = null;
        _mmf!.Dispose(); _mmf = null;
        s_live.AddOrUpdate(Header.Path, 0, (_, n) => n - 1);
    }
}
