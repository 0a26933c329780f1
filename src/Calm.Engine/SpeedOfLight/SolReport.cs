using System.Globalization;
using System.Text;

namespace Calm.Engine.SpeedOfLight;

/// <summary>
/// Export-CalmReport's HTML: one self-contained, well-formed XHTML file (inline CSS and SVG, no script, no network)
/// from measurement rows given as property bags (objects from the pipeline, or Import-Csv rows whose values are
/// strings). Charts: decode tokens/s against context with the speed-of-light line per model and dtype; per-stage time
/// stacked per context; then tables of every row.
/// </summary>
public static class SolReport
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;
    private static readonly string[] Palette = { "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2" };
    private static readonly Dictionary<string, string> StageColors = new()
    {
        ["AttentionProjections"] = "#4e79a7", ["Ffn"] = "#f28e2b", ["Classifier"] = "#59a14f", ["Attention"] = "#e15759", ["Other"] = "#9c9c9c",
    };

    private sealed record Row(IReadOnlyDictionary<string, object?> P)
    {
        public string? S(string k) => P.TryGetValue(k, out var v) && v is not null ? Convert.ToString(v, Inv) : null;
        public double? D(string k)
        {
            if (!P.TryGetValue(k, out var v) || v is null) return null;
            if (v is IConvertible cv && v is not string) { try { return cv.ToDouble(Inv); } catch (Exception e) when (e is FormatException or InvalidCastException) { return null; } }
            return double.TryParse(Convert.ToString(v, Inv), NumberStyles.Float, Inv, out var d) ? d : null;
        }
        public bool Has(string k) => D(k) is not null || S(k) is { Length: > 0 };
    }

    private static string E(string? s) => System.Security.SecurityElement.Escape(s ?? "") ?? "";
    private static string F(double v, string fmt = "0.##") => v.ToString(fmt, Inv);

    public static string Build(IEnumerable<IReadOnlyDictionary<string, object?>> input, string title = "Calm speed of light")
    {
        var rows = input.Select(p => new Row(new Dictionary<string, object?>(p, StringComparer.OrdinalIgnoreCase))).ToList();
        var stages = rows.Where(r => r.S("Stage") is { Length: > 0 } && r.D("Ms") is not null).ToList();
        var bandwidth = rows.Where(r => r.D("MedianGBps") is not null && r.S("Kind") is { Length: > 0 }).ToList();
        var kernels = rows.Where(r => r.S("Kernel") is { Length: > 0 } && r.D("GBps") is not null).ToList();
        var points = rows.Except(stages).Except(bandwidth).Except(kernels).Where(r => r.D("Context") is not null).ToList();
        var decode = points.Where(r => !string.Equals(r.S("Phase"), "Prefill", StringComparison.OrdinalIgnoreCase)).ToList();
        var prefill = points.Where(r => string.Equals(r.S("Phase"), "Prefill", StringComparison.OrdinalIgnoreCase)).ToList();

        var h = new StringBuilder();
        h.Append("<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n");
        h.Append($"<title>{E(title)}</title>\n<style>\n");
        h.Append("body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;max-width:1100px}\n");
        h.Append("h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}\n");
        h.Append("table{border-collapse:collapse;font-size:11px;margin:8px 0;display:block;overflow-x:auto;max-width:100%}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}");
        h.Append("th{background:#f3f3f3}td.t,th.t{text-align:left}.note{color:#666;font-size:12px}\n");
        h.Append("svg{background:#fff;border:1px solid #e5e5e5}svg text{font-family:system-ui,sans-serif;font-size:11px;fill:#333}\n</style>\n</head>\n<body>\n");
        h.Append($"<h1>{E(title)}</h1>\n<p class=\"note\">Made by Export-CalmReport on {E(DateTime.Now.ToString("yyyy-MM-dd HH:mm", Inv))}. ");
        h.Append("Speed of light = bytes a decoded token must read (every weight once + the KV cache so far) / memory bandwidth.</p>\n");

        if (decode.Count > 0) DecodeChart(h, decode);
        if (stages.Count > 0) StageChart(h, stages);
        if (decode.Count > 0)
            Table(h, "Decode", decode, new[] { "Model", "DType", "KvDType", "Context", "Tokens", "TokensPerSecond", "StdDev", "MsPerToken", "SolTokensPerSecond", "PercentOfSol", "AchievedGBps", "BandwidthGBps", "BandwidthSource", "PercentOfPeak", "Device", "KernelSwitches" });
        if (prefill.Count > 0)
            Table(h, "Prefill", prefill, new[] { "Model", "DType", "PromptTokens", "TimeToFirstTokenMs", "TokensPerSecond", "StdDev", "SolTokensPerSecond", "PercentOfSol", "AchievedGBps", "Device", "KernelSwitches" });
        if (stages.Count > 0)
            Table(h, "Stages", stages, new[] { "Model", "DType", "Context", "Stage", "Ms", "Bytes", "GBps", "LimitMs", "PercentOfLimit", "PercentOfStep", "KernelSwitches" });
        if (bandwidth.Count > 0)
            Table(h, "Memory bandwidth", bandwidth, new[] { "Device", "Kind", "MedianGBps", "MinGBps", "MaxGBps", "SpreadPercent", "Repetitions", "BufferBytes", "PeakGBps", "PercentOfPeak" });
        if (kernels.Count > 0)
            Table(h, "Kernels", kernels, new[] { "Kernel", "Shape", "DType", "Device", "Ms", "Bytes", "GBps", "BandwidthGBps", "PercentOfBandwidth" });
        if (rows.Count == 0) h.Append("<p>No measurements were given.</p>\n");
        h.Append("</body>\n</html>\n");
        return h.ToString();
    }

    /// <summary>A chart series: model and dtype, and the kernel switches where a row ran with some (an A/B sweep of
    /// CALM_* settings on one model draws one line per setting).</summary>
    private static string SeriesKey(Row r)
    {
        string key = $"{r.S("Model") ?? "model"} {r.S("DType") ?? ""}".Trim();
        return r.S("KernelSwitches") is { Length: > 0 } k ? $"{key} [{k}]" : key;
    }

    /// <summary>A round step for about <paramref name="ticks"/> ticks over [0, max].</summary>
    private static double Step(double max, int ticks)
    {
        double raw = max / ticks, mag = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        foreach (var m in new[] { 1.0, 2, 2.5, 5, 10 }) if (m * mag >= raw) return m * mag;
        return 10 * mag;
    }

    private static void DecodeChart(StringBuilder h, List<Row> decode)
    {
        const int H = 420, L = 70, T = 20, B = 50, PlotWidth = 600;
        // The legend sits right of the plot: wide enough for the longest "<series> speed of light" (~7 px a character).
        int R = Math.Max(230, 60 + 7 * decode.Select(SeriesKey).Distinct().Max(k => k.Length + " speed of light".Length));
        int W = L + PlotWidth + R, pw = PlotWidth, ph = H - T - B;
        double maxX = Math.Max(1, decode.Max(r => r.D("Context") ?? 0));
        double maxY = decode.Max(r => Math.Max(r.D("TokensPerSecond") ?? 0, r.D("SolTokensPerSecond") ?? 0));
        if (!(maxY > 0)) maxY = 1;
        double yStep = Step(maxY * 1.05, 6), yTop = Math.Ceiling(maxY * 1.05 / yStep) * yStep;
        double xStep = Step(maxX, 8), xTop = Math.Max(maxX, Math.Ceiling(maxX / xStep) * xStep);
        string X(double v) => F(L + v / xTop * pw, "0.#");
        string Y(double v) => F(T + ph - v / yTop * ph, "0.#");

        h.Append("<h2>Decode: tokens/s against context</h2>\n");
        h.Append($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\">\n");
        for (double y = 0; y <= yTop + 1e-9; y += yStep)
            h.Append($"<line x1=\"{L}\" x2=\"{L + pw}\" y1=\"{Y(y)}\" y2=\"{Y(y)}\" stroke=\"#eee\"/><text x=\"{L - 6}\" y=\"{Y(y)}\" dy=\"4\" text-anchor=\"end\">{E(F(y, "0.##"))}</text>\n");
        for (double x = 0; x <= xTop + 1e-9; x += xStep)
            h.Append($"<line x1=\"{X(x)}\" x2=\"{X(x)}\" y1=\"{T}\" y2=\"{T + ph}\" stroke=\"#f3f3f3\"/><text x=\"{X(x)}\" y=\"{T + ph + 16}\" text-anchor=\"middle\">{E(F(x, "0"))}</text>\n");
        h.Append($"<line x1=\"{L}\" x2=\"{L}\" y1=\"{T}\" y2=\"{T + ph}\" stroke=\"#555\"/><line x1=\"{L}\" x2=\"{L + pw}\" y1=\"{T + ph}\" y2=\"{T + ph}\" stroke=\"#555\"/>\n");
        h.Append($"<text x=\"{L + pw / 2}\" y=\"{H - 10}\" text-anchor=\"middle\">context (tokens already in the KV cache)</text>\n");
        h.Append($"<text x=\"16\" y=\"{T + ph / 2}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {T + ph / 2})\">tokens/s</text>\n");

        int i = 0, legendY = T + 10;
        foreach (var g in decode.GroupBy(SeriesKey))
        {
            string color = Palette[i++ % Palette.Length];
            var pts = g.OrderBy(r => r.D("Context")).ToList();
            var sol = pts.Where(r => r.D("SolTokensPerSecond") is not null).ToList();
            if (sol.Count > 0)
            {
                h.Append($"<polyline class=\"sol\" data-series=\"{E(g.Key)}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"6 4\" points=\"");
                h.Append(string.Join(" ", sol.Select(r => $"{X(r.D("Context")!.Value)},{Y(r.D("SolTokensPerSecond")!.Value)}")));
                h.Append("\"/>\n");
            }
            var meas = pts.Where(r => r.D("TokensPerSecond") is not null).ToList();
            if (meas.Count > 0)
            {
                h.Append($"<polyline class=\"measured\" data-series=\"{E(g.Key)}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"");
                h.Append(string.Join(" ", meas.Select(r => $"{X(r.D("Context")!.Value)},{Y(r.D("TokensPerSecond")!.Value)}")));
                h.Append("\"/>\n");
                foreach (var r in meas)
                {
                    double ctx = r.D("Context")!.Value, ts = r.D("TokensPerSecond")!.Value;
                    string tip = $"{g.Key} @ {F(ctx, "0")}: {F(ts)} tok/s" + (r.D("PercentOfSol") is double p ? $" ({F(p, "0.#")}% of SOL)" : "");
                    h.Append($"<circle cx=\"{X(ctx)}\" cy=\"{Y(ts)}\" r=\"4\" fill=\"{color}\"><title>{E(tip)}</title></circle>\n");
                }
            }
            h.Append($"<line x1=\"{L + pw + 14}\" x2=\"{L + pw + 40}\" y1=\"{legendY}\" y2=\"{legendY}\" stroke=\"{color}\" stroke-width=\"2\"/>");
            h.Append($"<text x=\"{L + pw + 46}\" y=\"{legendY + 4}\">{E(g.Key)} measured</text>\n");
            legendY += 18;
            if (sol.Count > 0)
            {
                h.Append($"<line x1=\"{L + pw + 14}\" x2=\"{L + pw + 40}\" y1=\"{legendY}\" y2=\"{legendY}\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"6 4\"/>");
                h.Append($"<text x=\"{L + pw + 46}\" y=\"{legendY + 4}\">{E(g.Key)} speed of light</text>\n");
                legendY += 22;
            }
        }
        h.Append("</svg>\n");
    }

    private static void StageChart(StringBuilder h, List<Row> stages)
    {
        var bars = stages.GroupBy(r => (Series: SeriesKey(r), Context: r.D("Context") ?? 0)).OrderBy(g => g.Key.Series).ThenBy(g => g.Key.Context).ToList();
        const int L = 70, T = 20, B = 70, R = 200, H = 400;
        int bw = 46, gap = 22, W = Math.Max(600, L + R + bars.Count * (bw + gap) + gap);
        int ph = H - T - B;
        double maxY = bars.Max(g => g.Sum(r => r.D("Ms") ?? 0));
        if (!(maxY > 0)) maxY = 1;
        double yStep = Step(maxY * 1.05, 6), yTop = Math.Ceiling(maxY * 1.05 / yStep) * yStep;
        string Y(double v) => F(T + ph - v / yTop * ph, "0.#");

        h.Append("<h2>Where a decode step's time goes (each stage timed on its own)</h2>\n");
        h.Append($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\">\n");
        for (double y = 0; y <= yTop + 1e-9; y += yStep)
            h.Append($"<line x1=\"{L}\" x2=\"{W - R}\" y1=\"{Y(y)}\" y2=\"{Y(y)}\" stroke=\"#eee\"/><text x=\"{L - 6}\" y=\"{Y(y)}\" dy=\"4\" text-anchor=\"end\">{E(F(y, "0.###"))}</text>\n");
        h.Append($"<text x=\"16\" y=\"{T + ph / 2}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {T + ph / 2})\">ms per token</text>\n");
        int x = L + gap;
        bool oneModel = stages.Select(r => r.S("Model")).Distinct().Count() == 1;
        foreach (var g in bars)
        {
            double acc = 0;
            foreach (var stage in StageColors.Keys.Concat(g.Select(r => r.S("Stage")!).Where(s => !StageColors.ContainsKey(s))).Distinct())
            {
                var r = g.FirstOrDefault(z => string.Equals(z.S("Stage"), stage, StringComparison.OrdinalIgnoreCase));
                if (r is null) continue;
                double ms = r.D("Ms") ?? 0;
                double y0 = T + ph - (acc + ms) / yTop * ph, hgt = ms / yTop * ph;
                string color = StageColors.TryGetValue(stage, out var c) ? c : "#bbbbbb";
                string tip = $"{g.Key.Series} @ {F(g.Key.Context, "0")}: {stage} {F(ms, "0.###")} ms" + (r.D("PercentOfLimit") is double p ? $", {F(p, "0.#")}% of its limit" : "");
                h.Append($"<rect class=\"stage\" data-stage=\"{E(stage)}\" x=\"{x}\" y=\"{F(y0, "0.#")}\" width=\"{bw}\" height=\"{F(Math.Max(hgt, 0), "0.#")}\" fill=\"{color}\"><title>{E(tip)}</title></rect>\n");
                acc += ms;
            }
            h.Append($"<text x=\"{x + bw / 2}\" y=\"{T + ph + 14}\" text-anchor=\"middle\">{E(F(g.Key.Context, "0"))}</text>");
            string label = oneModel ? (g.First().S("DType") ?? g.Key.Series) : g.Key.Series;
            if (label.Length > 12) label = label[^12..];
            h.Append($"<text x=\"{x + bw / 2}\" y=\"{T + ph + 28}\" text-anchor=\"middle\" style=\"font-size:9px\">{E(label)}</text>\n");
            x += bw + gap;
        }
        h.Append($"<line x1=\"{L}\" x2=\"{W - R}\" y1=\"{T + ph}\" y2=\"{T + ph}\" stroke=\"#555\"/><line x1=\"{L}\" x2=\"{L}\" y1=\"{T}\" y2=\"{T + ph}\" stroke=\"#555\"/>\n");
        h.Append($"<text x=\"{(L + W - R) / 2}\" y=\"{H - 12}\" text-anchor=\"middle\">context</text>\n");
        int ly = T + 10;
        foreach (var (stage, color) in StageColors)
        {
            h.Append($"<rect x=\"{W - R + 16}\" y=\"{ly - 8}\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{W - R + 34}\" y=\"{ly + 2}\">{E(stage)}</text>\n");
            ly += 20;
        }
        h.Append("</svg>\n");
    }

    private static void Table(StringBuilder h, string title, List<Row> rows, string[] columns)
    {
        var cols = columns.Where(c => rows.Any(r => r.Has(c))).ToArray();
        h.Append($"<h2>{E(title)}</h2>\n<table class=\"data\" data-section=\"{E(title)}\">\n<tr>");
        foreach (var c in cols) h.Append($"<th class=\"{(IsText(rows, c) ? "t" : "n")}\">{E(c)}</th>");
        h.Append("</tr>\n");
        foreach (var r in rows)
        {
            h.Append("<tr>");
            foreach (var c in cols)
            {
                bool text = IsText(rows, c);
                string v = text ? r.S(c) ?? "" : r.D(c) is double d ? FormatNumber(c, d) : "";
                h.Append($"<td class=\"{(text ? "t" : "n")}\">{E(v)}</td>");
            }
            h.Append("</tr>\n");
        }
        h.Append("</table>\n");
    }

    private static bool IsText(List<Row> rows, string c) => rows.Any(r => r.S(c) is { Length: > 0 } && r.D(c) is null);

    private static string FormatNumber(string column, double d)
        => column.EndsWith("Bytes", StringComparison.OrdinalIgnoreCase) || column is "Context" or "Tokens" or "PromptTokens" or "Repetitions" or "Repeat"
            ? d.ToString("0", Inv)
            : Math.Abs(d) >= 100 ? d.ToString("0.#", Inv) : d.ToString("0.###", Inv);
}
