using System.Diagnostics;
using System.Text;
using Calm.Engine.Model;
using Calm.Engine.Weights;
using static Calm.Engine.Tests.Loading.ModelFolders;

namespace Calm.Engine.Tests.Loading;

public class SafetensorsTests
{
    private static CalmException ParseFails(byte[] file, string id)
    {
        var ex = Throws(() => SafetensorsFile.ReadHeader(new MemoryStream(file), "x.safetensors"));
        Assert.Equal(id, ex.ErrorId);
        Assert.Contains("x.safetensors", ex.Message);
        return ex;
    }

    private static byte[] F32Data(int n) => new byte[n * 4];

    [Fact]
    public void WriterAndReaderRoundTripEveryWeightDTypeAndMetadata()
    {
        using var dir = new TempDir();
        var rng = new Random(Environment.TickCount);
        var tensors = new List<SafetensorsTensor>
        {
            new("a", DType.F32, new long[] { 3, 5 }, RandomBytes(DType.F32, new long[] { 3, 5 }, rng)),
            new("b.weight", DType.F16, new long[] { 7 }, RandomBytes(DType.F16, new long[] { 7 }, rng)),
            new("c", DType.BF16, new long[] { 2, 3, 4 }, RandomBytes(DType.BF16, new long[] { 2, 3, 4 }, rng)),
            new("empty", DType.F32, new long[] { 0, 4 }, Array.Empty<byte>()),
            new("scalar", DType.I64, Array.Empty<long>(), RandomBytes(DType.I64, Array.Empty<long>(), rng)),
        };
        string path = dir.File("m.safetensors");
        SafetensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["format"] = "pt", ["who"] = "calm" });

        var bytes = File.ReadAllBytes(path);
        ulong n = BitConverter.ToUInt64(bytes, 0);
        Assert.Equal(0UL, (8 + n) % 8); // header padded to 8-byte alignment

        using (var f = SafetensorsFile.Open(path))
        {
            Assert.Equal("calm", f.Metadata["who"]);
            Assert.Equal(tensors.Count, f.Tensors.Count);
            foreach (var t in tensors)
            {
                var m = f.Tensors[t.Name];
                Assert.Equal(t.DType, m.DType);
                Assert.Equal(t.Shape, m.Shape);
                Assert.Equal(path, m.Source);
                unsafe { Assert.True(new ReadOnlySpan<byte>((void*)m.Data, (int)m.ByteLength).SequenceEqual(t.Data.Span), t.Name); }
            }
            // Values read through the tensor match what was written.
            var c = f.Tensors["c"];
            var raw = tensors[2].Data.Span;
            for (int i = 0; i < 24; i++)
                Assert.Equal(BitConverter.Int32BitsToSingle(BitConverter.ToUInt16(raw.Slice(i * 2, 2)) << 16), c.GetFloat(i));
            Assert.Equal(1, MappedSafetensors.LiveMappings(path));
            Assert.True(f.Bytes > 0);
        }
        Assert.Equal(0, MappedSafetensors.LiveMappings(path));
    }

    [Fact]
    public unsafe void OpeningMapsTheFileWithoutCopyingItThroughManagedMemory()
    {
        using var dir = new TempDir();
        string path = dir.File("big.safetensors");
        var data = new byte[48 << 20];
        new Random(Environment.TickCount).NextBytes(data.AsSpan(0, 4096));
        data[^1] = 0x5A;
        SafetensorsWriter.Write(path, new[] { new SafetensorsTensor("w", DType.BF16, new long[] { 24 << 10, 1024 }, data) });
        long before = GC.GetAllocatedBytesForCurrentThread();
        using var f = SafetensorsFile.Open(path);
        var w = f.Tensors["w"];
        // Touch the first and last bytes through the mapping.
        byte first = ((byte*)w.Data)[0], last = ((byte*)w.Data)[w.ByteLength - 1];
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(data[0], first);
        Assert.Equal(0x5A, last);
        Assert.True(allocated < 256 << 10, $"opening a 48 MB file allocated {allocated} managed bytes");
    }

    [Fact]
    public void WriterRefusesBytesThatDisagreeWithShape()
    {
        using var dir = new TempDir();
        var ex = Throws(() => SafetensorsWriter.Write(dir.File("m.safetensors"),
            new[] { new SafetensorsTensor("a", DType.F32, new long[] { 2, 2 }, new byte[12]) }));
        Assert.Equal(ErrorIds.InvalidArgument, ex.ErrorId);
        Assert.False(File.Exists(dir.File("m.safetensors")));
    }

    [Fact]
    public void FileShorterThanEightBytesIsTruncated()
    {
        ParseFails(new byte[] { 1, 2, 3 }, ErrorIds.SafetensorsTruncated);
        ParseFails(Array.Empty<byte>(), ErrorIds.SafetensorsTruncated);
    }

    [Fact]
    public void TruncatedDataSectionIsReportedAsTruncated()
    {
        using var dir = new TempDir();
        string path = dir.File("m.safetensors");
        SafetensorsWriter.Write(path, MakeTensors(new[] { ("a", new long[] { 16, 16 }), ("b", new long[] { 16 }) }, DType.BF16, 3));
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^10]);
        var ex = Throws(() => SafetensorsFile.Open(path).Dispose());
        Assert.Equal(ErrorIds.SafetensorsTruncated, ex.ErrorId);
        Assert.Contains(path, ex.Message);
        Assert.Equal(0, MappedSafetensors.LiveMappings(path));
    }

    [Fact]
    public void HeaderLengthBeyondTheFileIsRefused()
    {
        var ex = ParseFails(RawFile("{}", Array.Empty<byte>(), headerLength: 1000), ErrorIds.SafetensorsHeaderTooLarge);
        Assert.Contains("1000", ex.Message);
    }

    [Fact]
    public void AbsurdHeaderLengthIsRefusedFastWithoutAllocating()
    {
        using var dir = new TempDir();
        string path = dir.File("big.safetensors");
        File.WriteAllBytes(path, RawFile("{}", new byte[64], headerLength: 1UL << 60));
        var sw = Stopwatch.StartNew();
        long before = GC.GetAllocatedBytesForCurrentThread();
        var ex = Throws(() => SafetensorsFile.Open(path).Dispose());
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(ErrorIds.SafetensorsHeaderTooLarge, ex.ErrorId);
        Assert.True(sw.ElapsedMilliseconds < 2000, $"took {sw.ElapsedMilliseconds} ms");
        Assert.True(allocated < 1 << 20, $"allocated {allocated} bytes");
        // Just over the 100 MiB cap, also refused before reading.
        ParseFails(RawFile("{}", Array.Empty<byte>(), headerLength: 100UL * 1024 * 1024 + 1), ErrorIds.SafetensorsHeaderTooLarge);
    }

    [Theory]
    [InlineData("not json at all")]
    [InlineData("{\"a\": {\"dtype\": \"F32\"")]
    [InlineData("[1, 2, 3]")]
    [InlineData("{\"a\": 5}")]
    [InlineData("{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}")]
    [InlineData("{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}")]
    [InlineData("{\"a\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}")]
    [InlineData("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}")]
    [InlineData("{\"__metadata__\": [1]}")]
    public void MalformedHeaderJsonIsHeaderInvalid(string header) =>
        ParseFails(RawFile(header, F32Data(2)), ErrorIds.SafetensorsHeaderInvalid);

    [Fact]
    public void NonUtf8HeaderIsHeaderInvalid()
    {
        var header = Encoding.UTF8.GetBytes("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}");
        header[3] = 0xC3; header[4] = 0x28; // invalid 2-byte sequence inside the name
        var ex = ParseFails(RawFile(header, F32Data(1)), ErrorIds.SafetensorsHeaderInvalid);
        Assert.Contains("UTF-8", ex.Message);
    }

    [Theory]
    [InlineData("[100, 104]")]      // past the end of the data section (and not a packed layout, so not "truncated")
    [InlineData("[8, 4]")]          // begin > end
    [InlineData("[-4, 0]")]
    [InlineData("[0]")]
    [InlineData("[4, 8, 12]")]
    [InlineData("\"4-8\"")]
    [InlineData("[4.5, 8.5]")]
    public void OffsetsOutOfRangeAreOffsetsInvalid(string offsets)
    {
        string h = "{\"b\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [0, 4]}, " +
                   "\"a\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": " + offsets + "}}";
        var ex = ParseFails(RawFile(h, new byte[16]), ErrorIds.SafetensorsOffsetsInvalid);
        Assert.Contains("'a'", ex.Message);
    }

    [Fact]
    public void OffsetsOutsideTheDataNameTheTensor()
    {
        string h = "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [16, 24]}, \"v\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}";
        var ex = ParseFails(RawFile(h, F32Data(4)), ErrorIds.SafetensorsOffsetsInvalid);
        Assert.Contains("'w'", ex.Message);
    }

    [Fact]
    public void OverlappingTensorsAreRefused()
    {
        string h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}, \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}";
        var ex = ParseFails(RawFile(h, F32Data(4)), ErrorIds.SafetensorsOverlap);
        Assert.Contains("'b'", ex.Message);
        Assert.Contains("'a'", ex.Message);
    }

    [Fact]
    public void UnknownDTypeIsRefused()
    {
        string h = "{\"a\": {\"dtype\": \"Q4_K\", \"shape\": [4], \"data_offsets\": [0, 16]}}";
        var ex = ParseFails(RawFile(h, F32Data(4)), ErrorIds.SafetensorsUnknownDType);
        Assert.Contains("Q4_K", ex.Message);
        Assert.Contains("'a'", ex.Message);
    }

    [Theory]
    [InlineData("F32", "[3]", "[0, 16]")]
    [InlineData("BF16", "[4]", "[0, 16]")]
    [InlineData("F32", "[4611686018427387904, 4]", "[0, 16]")] // element count overflows
    public void DTypeAndShapeDisagreeingWithByteSizeIsSizeMismatch(string dtype, string shape, string offsets)
    {
        string h = "{\"a\": {\"dtype\": \"" + dtype + "\", \"shape\": " + shape + ", \"data_offsets\": " + offsets + "}}";
        ParseFails(RawFile(h, F32Data(4)), ErrorIds.SafetensorsSizeMismatch);
    }

    [Fact]
    public void ValidHandWrittenHeaderParses()
    {
        string h = "{\"__metadata__\": {\"format\": \"pt\"}, \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}, " +
                   "\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}   ";
        var hdr = SafetensorsFile.ReadHeader(new MemoryStream(RawFile(h, F32Data(4))), "x.safetensors");
        Assert.Equal(2, hdr.Entries.Count);
        Assert.Equal("pt", hdr.Metadata["format"]);
        Assert.Equal(8 + Encoding.UTF8.GetByteCount(h), hdr.DataStart);
        Assert.Equal(16, hdr.DataLength);
    }
}
