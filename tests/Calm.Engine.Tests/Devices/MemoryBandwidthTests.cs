using Calm.Engine.Devices;

namespace Calm.Engine.Tests.Devices;

public class MemoryBandwidthTests
{
    [Fact]
    public unsafe void ReadAllSumsEveryByteAsUInt64Lanes()
    {
        // Fresh random data: the reader's checksum must equal a scalar sum of the same 64-bit words.
        var rng = new Random(Environment.TickCount);
        var words = new ulong[4096 + 16 * rng.Next(1, 64)];   // a multiple of 16 words = 128 bytes
        for (int i = 0; i < words.Length; i++) words[i] = (ulong)rng.NextInt64();
        ulong expected = 0;
        foreach (var w in words) expected += w;
        fixed (ulong* p = words)
            Assert.Equal(expected, MemoryBandwidth.ReadAll((byte*)p, words.Length * 8L));
    }

    [Fact]
    public void MeasureReportsMedianWithinMinAndMax()
    {
        var r = MemoryBandwidth.Measure(new BandwidthOptions { BufferBytes = 16L << 20, Repetitions = 5, Threads = 2 });
        Assert.Equal(5, r.SamplesGBps.Length);
        Assert.All(r.SamplesGBps, s => Assert.True(s > 0 && double.IsFinite(s)));
        Assert.InRange(r.MedianGBps, r.MinGBps, r.MaxGBps);
        Assert.Equal(r.SamplesGBps.Min(), r.MinGBps);
        Assert.Equal(r.SamplesGBps.Max(), r.MaxGBps);
        Assert.Equal(2, r.Threads);
        Assert.Equal(0, r.BufferBytes % (2 * 128));
    }

    [Fact]
    public void MeasureStopsWhenCancelled()
    {
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var ex = Assert.Throws<CalmException>(() => MemoryBandwidth.Measure(new BandwidthOptions { BufferBytes = 8L << 20 }, cts.Token));
        Assert.Equal(ErrorIds.Cancelled, ex.ErrorId);
    }

    [Fact]
    public void MeasureRejectsNonsenseOptions()
    {
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => MemoryBandwidth.Measure(new BandwidthOptions { Threads = 0 })).ErrorId);
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => MemoryBandwidth.Measure(new BandwidthOptions { BufferBytes = 1000 })).ErrorId);
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => MemoryBandwidth.Measure(new BandwidthOptions { Repetitions = 0 })).ErrorId);
    }

    [Fact]
    public void CpuRowHasCoresAndMemoryAndNoGpuFields()
    {
        var row = CpuInfo.Describe();
        Assert.Equal("Cpu", row.Kind);
        Assert.Equal(Environment.ProcessorCount, row.Cores);
        Assert.False(string.IsNullOrWhiteSpace(row.Name));
        Assert.True(row.MemoryGB > 0);
        Assert.Null(row.ComputeCapability);
        Assert.Null(row.PeakBandwidthGBps);
        Assert.Null(row.MeasuredBandwidthGBps);
    }
}
