using System.Xml;
using System.Xml.Linq;
using Calm.Engine.Model;
using Calm.Engine.SpeedOfLight;

namespace Calm.Engine.Tests.SpeedOfLight;

public class SolBenchTests
{
    private static Session.LoadedModel Tiny(int ctx = 300, DType dt = DType.BF16)
        => ModelFactory.CreateSynthetic("tiny", 1, dt, new ImportOptions { Device = DeviceChoice.Cpu, ContextLength = ctx });

    [Fact]
    public void DecodeRowIsConsistentWithTheByteModel()
    {
        using var m = Tiny();
        var o = new SolBenchOptions { Tokens = 5, Warmup = 1, Repeat = 2, BandwidthGBps = 20, BandwidthSource = "Given" };
        var r = SolBench.MeasureDecode(m, o, 100, default);
        Assert.Equal("Decode", r.Phase);
        Assert.Equal("f32", r.KvDType);          // the CPU keeps an f32 cache
        // tiny: 4 layers x 2 x 4 kv heads x 32 dims x 4 bytes.
        Assert.Equal(4 * 2 * 4 * 32 * 4, r.KvBytesPerToken);
        var sol = SolModel.Compute("tiny", m.Config, "bf16", "f32", 0, 20);
        Assert.Equal(sol.WeightBytes, r.WeightBytes);
        Assert.Equal(r.WeightBytes + r.KvBytesPerToken * 102, r.BytesPerToken); // mean timed position 100 + (5-1)/2
        Assert.True(r.TokensPerSecond > 0 && r.StdDev >= 0 && r.MsPerToken > 0);
        Assert.Equal(r.BytesPerToken * r.TokensPerSecond / 1e9, r.AchievedGBps, 6);
        Assert.Equal(r.TokensPerSecond / r.SolTokensPerSecond * 100, r.PercentOfSol, 6);
        Assert.Equal(20e9 / r.BytesPerToken, r.SolTokensPerSecond, 6);
        Assert.Null(r.PercentOfPeak);
        Assert.Equal(m.Config.ParameterCount, r.Parameters);
    }

    [Fact]
    public void PrefillAndStagesAndLlamaBenchColumns()
    {
        using var m = Tiny();
        var o = new SolBenchOptions { Tokens = 4, Repeat = 2, BandwidthGBps = 20, PeakBandwidthGBps = 40 };
        var p = SolBench.MeasurePrefill(m, o, 48, default);
        Assert.Equal("Prefill", p.Phase);
        Assert.Equal(48, p.PromptTokens);
        Assert.Equal(48 / (p.TimeToFirstTokenMs!.Value / 1e3), p.TokensPerSecond, 0.5 * p.TokensPerSecond); // mean vs median
        Assert.NotNull(p.PercentOfPeak);
        var stages = SolBench.MeasureStages(m, o, 64, default);
        Assert.Equal(5, stages.Count);
        Assert.Equal(100, stages.Sum(s => s.PercentOfStep), 6);
        foreach (var s in stages)
        {
            Assert.Equal(s.Bytes / 20e9 * 1e3, s.LimitMs, 9);
            Assert.Equal(s.LimitMs / s.Ms * 100, s.PercentOfLimit, 6);
        }
        var cols = SolBench.LlamaBenchColumns(p).ToDictionary(kv => kv.Key, kv => kv.Value);
        foreach (var k in new[] { "n_prompt", "n_gen", "n_depth", "avg_ts", "stddev_ts", "model_size", "model_n_params" }) Assert.True(cols.ContainsKey(k), k);
        Assert.Equal(48, cols["n_prompt"]);
        Assert.Equal(p.TokensPerSecond, cols["avg_ts"]);
        Assert.Equal(m.WeightBytes, cols["model_size"]);
    }

    [Fact]
    public void TooDeepAContextIsAClearError()
    {
        using var m = Tiny(64);
        var o = new SolBenchOptions { Contexts = new[] { 60 }, Tokens = 8, BandwidthGBps = 10 };
        var e = Assert.Throws<CalmException>(() => SolBench.Validate(m, o));
        Assert.Equal(ErrorIds.ContextOverflow, e.ErrorId);
        Assert.Contains("ContextLength", e.Message);
    }

    private sealed class FakeProbe(double[] samples) : IBandwidthProbe
    {
        public string DeviceKind => "Cpu";
        public int DeviceIndex => 0;
        public string DeviceName => "fake";
        public double? PeakGBps => 100;
        public double? PeakTflops => null;
        public long DefaultBufferBytes => 1 << 20;
        public double[] Measure(string kind, long bytes, int repeat, CancellationToken ct) => samples.Take(repeat).ToArray();
    }

    [Fact]
    public void BandwidthSummaryAndSessionCache()
    {
        var r = BenchDevices.MeasureBandwidth(new FakeProbe(new[] { 50.0, 40, 80, 60, 70 }), "read", null, 5, default);
        Assert.Equal(60, r.MedianGBps);
        Assert.Equal(40, r.MinGBps);
        Assert.Equal(80, r.MaxGBps);
        Assert.Equal(40.0 / 60 * 100, r.SpreadPercent, 9);
        Assert.Equal(60, r.PercentOfPeak!.Value, 9);
        Assert.Equal("Read", r.Kind);
        Assert.Same(r, BenchDevices.Measured("Cpu", 0));
        var copy = BenchDevices.MeasureBandwidth(new FakeProbe(new[] { 1.0, 2 }), "Copy", null, 2, default);
        Assert.Same(r, BenchDevices.Measured("Cpu", 0)); // copy figures are not the decode denominator
        Assert.Equal(1.5, copy.MedianGBps);
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => BenchDevices.MeasureBandwidth(new FakeProbe(new[] { 1.0 }), "Write", null, 1, default)).ErrorId);
        BenchDevices.Forget();
    }

    [Fact]
    public void DeviceNames()
    {
        Assert.Equal(("Cpu", 0), BenchDevices.Parse("cpu"));
        Assert.Equal(("Cuda", 1), BenchDevices.Parse("Cuda:1"));
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => BenchDevices.Parse("Tpu")).ErrorId);
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => BenchDevices.Parse("Cuda:x")).ErrorId);
        if (!BenchDevices.CudaRegistered)
            Assert.Equal(ErrorIds.DeviceNotAvailable, Assert.Throws<CalmException>(() => BenchDevices.Kernels("Cuda")).ErrorId);
        Assert.Equal(989.4, BenchDevices.KnownTflops("NVIDIA H200"));
    }

    [Fact]
    public void CpuKernelBenchReadsTheRightBytes()
    {
        var k = new CpuKernelBench();
        var mv = k.Matvec(300, 257, "bf16", 3, default);
        Assert.Equal(300L * 257 * 2, mv.Bytes);
        Assert.Equal(3, mv.Ms.Length);
        Assert.All(mv.Ms, x => Assert.True(x > 0));
        Assert.Equal(300L * 257 * 4, k.Matvec(300, 257, "f32", 1, default).Bytes);
        var at = k.Attention(500, 8, 2, 64, 2, default);
        Assert.Equal(2L * 500 * 2 * 64 * 4, at.Bytes);
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => k.Matvec(4, 4, "q3", 1, default)).ErrorId);
        Assert.Equal(ErrorIds.InvalidArgument, Assert.Throws<CalmException>(() => k.Attention(10, 6, 4, 8, 1, default)).ErrorId);
    }

    /// <summary>An A/B sweep of kernel switches on one model and dtype: one series per setting, and the switches in the
    /// tables; rows without switches keep the plain series name and no such column appears.</summary>
    [Fact]
    public void ReportSplitsSeriesByKernelSwitches()
    {
        Dictionary<string, object?> Point(int ctx, double ts, string? sw) => new()
        {
            ["Model"] = "M", ["DType"] = "bf16", ["Phase"] = "Decode", ["Context"] = ctx, ["TokensPerSecond"] = ts,
            ["SolTokensPerSecond"] = 300.0, ["PercentOfSol"] = ts / 3, ["KernelSwitches"] = sw,
        };
        var rows = new List<IReadOnlyDictionary<string, object?>> { Point(0, 240, ""), Point(1024, 228, ""), Point(0, 236, "CALM_ATT_NEXT=1"), Point(1024, 225, "CALM_ATT_NEXT=1") };
        XNamespace x = "http://www.w3.org/1999/xhtml", svg = "http://www.w3.org/2000/svg";
        XDocument Load(string html) => XDocument.Load(XmlReader.Create(new StringReader(html), new XmlReaderSettings { DtdProcessing = DtdProcessing.Ignore }));
        var doc = Load(SolReport.Build(rows));
        var series = doc.Descendants(svg + "polyline").Where(p => (string?)p.Attribute("class") == "measured").Select(p => (string)p.Attribute("data-series")!).OrderBy(s => s).ToArray();
        Assert.Equal(new[] { "M bf16", "M bf16 [CALM_ATT_NEXT=1]" }, series);
        var table = doc.Descendants(x + "table").First(t => (string?)t.Attribute("data-section") == "Decode");
        Assert.Contains(table.Descendants(x + "th"), th => th.Value == "KernelSwitches");
        Assert.Equal(2, table.Descendants(x + "td").Count(td => td.Value == "CALM_ATT_NEXT=1"));
        // no row with switches: no column, one series
        doc = Load(SolReport.Build(rows.Take(2)));
        Assert.DoesNotContain(doc.Descendants(x + "th"), th => th.Value == "KernelSwitches");
        Assert.Single(doc.Descendants(svg + "polyline").Where(p => (string?)p.Attribute("class") == "measured"));
    }

    [Fact]
    public void ReportIsWellFormedAndCarriesTheSeries()
    {
        var rows = new List<IReadOnlyDictionary<string, object?>>();
        var rng = new Random(Environment.TickCount);
        var ts = new Dictionary<int, double>();
        foreach (int ctx in new[] { 0, 1024, 4096 })
        {
            ts[ctx] = Math.Round(100 + rng.NextDouble() * 50, 3);
            rows.Add(new Dictionary<string, object?>
            {
                ["Model"] = "M<&>", ["DType"] = "bf16", ["Phase"] = "Decode", ["Context"] = ctx, ["TokensPerSecond"] = ts[ctx],
                ["SolTokensPerSecond"] = 200.0 - ctx / 100.0, ["PercentOfSol"] = ts[ctx] / 2,
            });
            foreach (var s in Session.Stages.All)
                rows.Add(new Dictionary<string, object?> { ["Model"] = "M<&>", ["DType"] = "bf16", ["Context"] = ctx.ToString(), ["Stage"] = s, ["Ms"] = "0.5", ["Bytes"] = "1000" });
        }
        // A CSV row (strings only) of a second dtype.
        rows.Add(new Dictionary<string, object?> { ["Model"] = "M<&>", ["DType"] = "f32", ["Phase"] = "Decode", ["Context"] = "0", ["TokensPerSecond"] = "55.5", ["SolTokensPerSecond"] = "99" });
        rows.Add(new Dictionary<string, object?> { ["Device"] = "cpu", ["Kind"] = "Read", ["MedianGBps"] = 12.5 });
        var html = SolReport.Build(rows, "Report & test");
        var doc = XDocument.Load(XmlReader.Create(new StringReader(html), new XmlReaderSettings { DtdProcessing = DtdProcessing.Ignore }));
        XNamespace x = "http://www.w3.org/1999/xhtml", svg = "http://www.w3.org/2000/svg";
        Assert.Equal("Report & test", doc.Descendants(x + "title").Single().Value);
        Assert.Equal(2, doc.Descendants(svg + "svg").Count());
        Assert.Empty(doc.Descendants(x + "script"));
        Assert.DoesNotContain("http://", html.Replace("http://www.w3.org/1999/xhtml", "").Replace("http://www.w3.org/2000/svg", ""));
        var measured = doc.Descendants(svg + "polyline").Where(p => (string?)p.Attribute("class") == "measured").ToList();
        Assert.Equal(new[] { "M<&> bf16", "M<&> f32" }, measured.Select(p => (string)p.Attribute("data-series")!).OrderBy(s => s));
        Assert.Equal(3, measured.Single(p => (string)p.Attribute("data-series")! == "M<&> bf16").Attribute("points")!.Value.Split(' ').Length);
        Assert.Equal(2, doc.Descendants(svg + "polyline").Count(p => (string?)p.Attribute("class") == "sol"));
        Assert.Equal(15, doc.Descendants(svg + "rect").Count(r => (string?)r.Attribute("class") == "stage"));
        var decodeTable = doc.Descendants(x + "table").First(t => (string?)t.Attribute("data-section") == "Decode");
        foreach (var v in ts.Values) Assert.Contains(decodeTable.Descendants(x + "td"), td => td.Value == v.ToString("0.#", System.Globalization.CultureInfo.InvariantCulture) || td.Value == v.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture));
        Assert.Contains(doc.Descendants(x + "table"), t => (string?)t.Attribute("data-section") == "Memory bandwidth");
    }
}
