using System.Buffers.Binary;
using System.Text.Json.Nodes;
using Calm.Engine.Model;
using Calm.Engine.Quant;
using Calm.Engine.Weights;
using static Calm.Engine.Tests.Loading.ModelFolders;

namespace Calm.Engine.Tests.Loading;

/// <summary>
/// Pre-quantized fp8 checkpoints (compressed-tensors, AutoFP8 "fp8", fine-grained "fp8" with blocks, fbgemm_fp8): the
/// folders are written here from random bf16 weights by this file's own quantizer (scales by granularity, e4m3 bytes),
/// independently of the loader; the loader must keep tensor- and channel-scaled values byte for byte with one scale per
/// row, and requantize block-scaled ones with the error it reports.
/// </summary>
public class Fp8CheckpointTests
{
    private static readonly string[] ProjSuffixes = { "q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "qkv_proj.weight",
        "gate_proj.weight", "up_proj.weight", "down_proj.weight", "gate_up_proj.weight", ".w1.weight", ".w2.weight", ".w3.weight" };

    private static bool IsProjection(string name) => ProjSuffixes.Any(name.EndsWith);

    private static float[] Floats(SafetensorsTensor t)
    {
        var b = t.Data.Span;
        var f = new float[b.Length / 2];
        for (int i = 0; i < f.Length; i++) f[i] = BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(b[(2 * i)..]) << 16);
        return f;
    }

    private static byte[] ScaleBytes(float[] s, DType dt)
    {
        var b = new byte[s.Length * DTypes.SizeOf(dt)];
        for (int i = 0; i < s.Length; i++)
            switch (dt)
            {
                case DType.F32: BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(4 * i), s[i]); break;
                case DType.F16: BinaryPrimitives.WriteHalfLittleEndian(b.AsSpan(2 * i), (Half)s[i]); break;
                default: BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(2 * i), (ushort)(BitConverter.SingleToInt32Bits(s[i]) >> 16)); break;
            }
        return b;
    }

    /// <summary>A scale as the file stores it (rounded to its dtype).</summary>
    private static float Stored(float s, DType dt) => dt switch
    {
        DType.F32 => s,
        DType.F16 => (float)(Half)s,
        _ => BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(s) >> 16 << 16),
    };

    /// <summary>What the test's quantizer wrote for one weight: e4m3 bytes, the scales as stored, their block.</summary>
    internal sealed record Written(byte[] Q, float[] Scales, long Rows, long Cols, long B0, long B1);

    /// <summary>
    /// Replaces every projection (2-D [R, C]) by fp8 values and a scale tensor named <paramref name="scaleSuffix"/>:
    /// granularity "tensor" (shape <paramref name="tensorShape"/>), "channel" ([R, 1]) or "block" ([ceil(R/b0), ceil(C/b1)]);
    /// scale = absmax / 448 of its part, rounded to <paramref name="scaleType"/>, q = e4m3(w / stored scale).
    /// </summary>
    internal static Func<List<SafetensorsTensor>, List<SafetensorsTensor>> ToFp8(string granularity, DType scaleType, Dictionary<string, Written> written,
        string scaleSuffix = "weight_scale", long b0 = 16, long b1 = 20, long[]? tensorShape = null, bool keepLmHead = true)
    {
        return tensors =>
        {
            var r = new List<SafetensorsTensor>();
            foreach (var t in tensors)
            {
                if (!IsProjection(t.Name) && (keepLmHead || t.Name != "lm_head.weight")) { r.Add(t); continue; }
                long rows = t.Shape[0], cols = t.Shape[1];
                var w = Floats(t);
                long g0 = granularity == "block" ? (rows + b0 - 1) / b0 : granularity == "channel" ? rows : 1;
                long g1 = granularity == "block" ? (cols + b1 - 1) / b1 : 1;
                long bb0 = granularity == "block" ? b0 : granularity == "channel" ? 1 : rows, bb1 = granularity == "block" ? b1 : cols;
                var s = new float[g0 * g1];
                for (long i = 0; i < rows; i++)
                    for (long j = 0; j < cols; j++)
                    {
                        long k = (i / bb0) * g1 + j / bb1;
                        s[k] = Math.Max(s[k], Math.Abs(w[i * cols + j]));
                    }
                for (int k = 0; k < s.Length; k++) s[k] = Stored(s[k] > 0 ? s[k] / 448f : 1f, scaleType);
                var q = new byte[rows * cols];
                for (long i = 0; i < rows; i++)
                    for (long j = 0; j < cols; j++)
                        q[i * cols + j] = QuantFormats.FloatToE4M3(w[i * cols + j] / s[(i / bb0) * g1 + j / bb1]);
                written[t.Name] = new Written(q, s, rows, cols, bb0, bb1);
                string baseName = t.Name[..^"weight".Length];
                long[] shape = granularity switch { "tensor" => tensorShape ?? new long[] { 1 }, "channel" => new[] { rows, 1L }, _ => new[] { g0, g1 } };
                r.Add(new SafetensorsTensor(t.Name, DType.F8E4M3, t.Shape, q));
                r.Add(new SafetensorsTensor(baseName + scaleSuffix, scaleType, shape, ScaleBytes(s, scaleType)));
                if (granularity == "tensor") r.Add(new SafetensorsTensor(baseName + "input_scale", scaleType, shape, ScaleBytes(new[] { 0.05f }, scaleType)));
            }
            return r;
        };
    }

    /// <summary>
    /// <paramref name="source"/> (a bf16 folder with one model.safetensors, e.g. models/tiny-wp) rewritten into
    /// <paramref name="dir"/> as a compressed-tensors fp8 checkpoint of <paramref name="granularity"/> (lm_head, when
    /// untied, left bf16 as llm-compressor's "ignore" does); the tokenizer files are copied.
    /// </summary>
    internal static unsafe Dictionary<string, Written> WriteFp8CopyOf(string source, string dir, string granularity, DType scaleType)
    {
        var written = new Dictionary<string, Written>();
        var tensors = new List<SafetensorsTensor>();
        using (var f = SafetensorsFile.Open(Path.Combine(source, "model.safetensors")))
            foreach (var t in f.Tensors.Values.OrderBy(t => t.Name, StringComparer.Ordinal))
                tensors.Add(new SafetensorsTensor(t.Name, t.DType, t.Shape, new ReadOnlySpan<byte>((void*)t.Data, checked((int)t.ByteLength)).ToArray()));
        SafetensorsWriter.Write(Path.Combine(dir, "model.safetensors"), ToFp8(granularity, scaleType, written, b0: 128, b1: 128)(tensors),
            new Dictionary<string, string> { ["format"] = "pt" });
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(source, "config.json")))!.AsObject();
        config["quantization_config"] = granularity == "block"
            ? new JsonObject { ["quant_method"] = "fp8", ["fmt"] = "e4m3", ["activation_scheme"] = "dynamic", ["weight_block_size"] = new JsonArray(128, 128) }
            : CompressedTensors(granularity);
        WriteConfig(dir, config);
        foreach (var extra in new[] { "tokenizer.json", "tokenizer_config.json", "generation_config.json" })
            if (File.Exists(Path.Combine(source, extra))) File.Copy(Path.Combine(source, extra), Path.Combine(dir, extra));
        return written;
    }

    [Fact]
    public void TinyWpAsAnFp8CheckpointKeepsItsHeldOutQuality()
    {
        // the trained model through a channel-scaled checkpoint: the greedy continuation's first tokens and a
        // perplexity within 1% of bf16 (the issue's fp8 rule), on the CPU
        using var dir = new TempDir();
        WriteFp8CopyOf(Calm.Engine.Tests.Generation.TinyWp.Folder, dir.Path, "channel", DType.BF16);
        using var m = ModelFactory.Import(dir.Path, new ImportOptions { Device = DeviceChoice.Cpu, ContextLength = 256 });
        using var bf = ModelFactory.Import(Calm.Engine.Tests.Generation.TinyWp.Folder, new ImportOptions { Device = DeviceChoice.Cpu, ContextLength = 256 });
        Assert.Equal(DType.F8E4M3, m.Config.DType);
        var text = File.ReadAllText(Calm.Engine.Tests.Generation.TinyWp.WarAndPeacePath());
        var held = text.Substring(text.IndexOf("SECOND EPILOGUE", StringComparison.Ordinal), 6000);
        var ids = bf.Text!.Tokenizer!.Encode(held);
        var pq = Calm.Engine.Generation.Perplexity.Measure(m, ids, 256, 128).Perplexity;
        var pb = Calm.Engine.Generation.Perplexity.Measure(bf, ids, 256, 128).Perplexity;
        TestContext.Current.SendDiagnosticMessage($"tiny-wp held-out perplexity ({ids.Length} tokens): bf16 {pb:F4}, fp8 checkpoint {pq:F4} ({(pq / pb - 1) * 100:+0.00;-0.00}%)");
        Assert.NotEqual(pb, pq);   // the weights did change
        Assert.InRange(pq / pb - 1, -0.01, 0.01);
    }

    private static JsonObject Quantized(string arch, JsonObject q)
    {
        var c = Config(arch);
        c["quantization_config"] = q;
        return c;
    }

    internal static JsonObject CompressedTensors(string strategy, int[]? block = null) => new()
    {
        ["quant_method"] = "compressed-tensors",
        ["format"] = "float-quantized",
        ["quantization_status"] = "compressed",
        ["ignore"] = new JsonArray("lm_head"),
        ["config_groups"] = new JsonObject
        {
            ["group_0"] = new JsonObject
            {
                ["targets"] = new JsonArray("Linear"),
                ["weights"] = new JsonObject
                {
                    ["num_bits"] = 8, ["type"] = "float", ["strategy"] = strategy, ["symmetric"] = true, ["dynamic"] = false,
                    ["block_structure"] = block is null ? null : new JsonArray(block[0], block[1]),
                },
            },
        },
    };

    private static unsafe void AssertKeptExactly(Tensor t, Written w)
    {
        Assert.Equal(DType.F8E4M3, t.DType);
        Assert.True(t.HasScales);
        Assert.Equal(w.Q, new ReadOnlySpan<byte>((void*)t.Data, w.Q.Length).ToArray());
        for (long r = 0; r < w.Rows; r++)
            Assert.Equal(w.Scales[w.B0 == 1 ? r : 0], ((float*)t.Scales)[r]);
    }

    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    public void ChannelScaledCompressedTensorsKeepValuesAndScalesExactly(DType scaleType)
    {
        using var dir = new TempDir();
        var w = new Dictionary<string, Written>();
        var tensors = Write(dir.Path, "llama", DType.BF16, Environment.TickCount, Quantized("llama", CompressedTensors("channel")), edit: ToFp8("channel", scaleType, w));
        var verbose = new List<string>();
        var f = ModelFolderLoader.Load(dir.Path, null, default, verbose.Add);
        try
        {
            Assert.Equal(DType.F8E4M3, f.Config.DType);
            Assert.Equal(DType.BF16, f.Weights.Embedding.DType);
            Assert.Equal(DType.BF16, f.Weights.FinalNorm.DType);
            for (int l = 0; l < L; l++)
            {
                var lw = f.Weights.Layers[l];
                string p = $"model.layers.{l}.";
                AssertKeptExactly(lw.Wq, w[p + "self_attn.q_proj.weight"]);
                AssertKeptExactly(lw.Wk, w[p + "self_attn.k_proj.weight"]);
                AssertKeptExactly(lw.Wv, w[p + "self_attn.v_proj.weight"]);
                AssertKeptExactly(lw.Wo, w[p + "self_attn.o_proj.weight"]);
                AssertKeptExactly(lw.WGate!, w[p + "mlp.gate_proj.weight"]);
                AssertKeptExactly(lw.WUp!, w[p + "mlp.up_proj.weight"]);
                AssertKeptExactly(lw.WDown!, w[p + "mlp.down_proj.weight"]);
                Assert.Equal(DType.BF16, lw.AttnNorm.DType);
            }
            // lm_head was left in bf16 by the checkpoint ("ignore"): quantized per row as -DType fp8 does
            Assert.Equal(DType.F8E4M3, f.Weights.LmHead.DType);
            var lm = Floats(tensors.Single(t => t.Name == "lm_head.weight"));
            for (long i = 0; i < lm.Length; i++)
                Assert.InRange(Math.Abs(f.Weights.LmHead.GetFloat(i) - lm[i]), 0, Math.Abs(lm[i]) / 16 + 1e-5);   // + subnormal steps
            Assert.Contains(verbose, v => v.Contains("quantization_config: compressed-tensors"));
            Assert.Contains(verbose, v => v.Contains($"{7 * L} fp8 tensors read with one scale per row") && v.Contains("lm_head.weight"));
        }
        finally { f.Store.Dispose(); }
    }

    [Fact]
    public void TensorScaledAutoFp8AndFbgemmChannelScalesBecomeRowScales()
    {
        // AutoFP8: quant_method fp8 without a block size, a 0-d F32 weight_scale (and an input_scale, not used)
        using (var dir = new TempDir())
        {
            var w = new Dictionary<string, Written>();
            Write(dir.Path, "mistral", DType.BF16, 3, Quantized("mistral", new JsonObject { ["quant_method"] = "fp8", ["activation_scheme"] = "static" }),
                edit: ToFp8("tensor", DType.F32, w, tensorShape: Array.Empty<long>()));
            var f = ModelFolderLoader.Load(dir.Path, null, default);
            try
            {
                AssertKeptExactly(f.Weights.Layers[1].Wo, w["model.layers.1.self_attn.o_proj.weight"]);
                AssertKeptExactly(f.Weights.Layers[0].WDown!, w["model.layers.0.mlp.down_proj.weight"]);
            }
            finally { f.Store.Dispose(); }
        }
        // fbgemm_fp8: [out, 1] F32 scales
        using (var dir = new TempDir())
        {
            var w = new Dictionary<string, Written>();
            Write(dir.Path, "llama", DType.BF16, 4, Quantized("llama", new JsonObject { ["quant_method"] = "fbgemm_fp8", ["activation_scale_ub"] = 1200.0 }),
                edit: ToFp8("channel", DType.F32, w));
            var f = ModelFolderLoader.Load(dir.Path, null, default);
            try { AssertKeptExactly(f.Weights.Layers[0].WUp!, w["model.layers.0.mlp.up_proj.weight"]); }
            finally { f.Store.Dispose(); }
        }
    }

    [Fact]
    public void FusedQkvAndMoeExpertsKeepTheirRowScales()
    {
        using (var dir = new TempDir())
        {
            var w = new Dictionary<string, Written>();
            Write(dir.Path, "phi3", DType.BF16, 5, Quantized("phi3", CompressedTensors("channel")), edit: ToFp8("channel", DType.BF16, w));
            var f = ModelFolderLoader.Load(dir.Path, null, default);
            try
            {
                var qkv = w["model.layers.0.self_attn.qkv_proj.weight"];
                var lw = f.Weights.Layers[0];
                long q = lw.Wq.Rows, kv = lw.Wk.Rows;
                unsafe
                {
                    for (long r = 0; r < q; r++) Assert.Equal(qkv.Scales[r], ((float*)lw.Wq.Scales)[r]);
                    for (long r = 0; r < kv; r++) Assert.Equal(qkv.Scales[q + r], ((float*)lw.Wk.Scales)[r]);
                    for (long r = 0; r < kv; r++) Assert.Equal(qkv.Scales[q + kv + r], ((float*)lw.Wv.Scales)[r]);
                    Assert.Equal(qkv.Q[(int)(q * qkv.Cols)], ((byte*)lw.Wk.Data)[0]);
                }
                Assert.Equal(DType.F8E4M3, lw.WGate!.DType);
            }
            finally { f.Store.Dispose(); }
        }
        using (var dir = new TempDir())
        {
            var w = new Dictionary<string, Written>();
            Write(dir.Path, "mixtral", DType.BF16, 6, Quantized("mixtral", CompressedTensors("channel")), edit: ToFp8("channel", DType.BF16, w));
            var f = ModelFolderLoader.Load(dir.Path, null, default);
            try
            {
                for (int e = 0; e < E; e++)
                {
                    AssertKeptExactly(f.Weights.Layers[1].ExpertGate![e], w[$"model.layers.1.block_sparse_moe.experts.{e}.w1.weight"]);
                    AssertKeptExactly(f.Weights.Layers[1].ExpertDown![e], w[$"model.layers.1.block_sparse_moe.experts.{e}.w2.weight"]);
                }
                Assert.Equal(DType.BF16, f.Weights.Layers[1].Router!.DType);   // the router stays as stored
            }
            finally { f.Store.Dispose(); }
        }
    }

    [Fact]
    public unsafe void StackedMoeExpertsTakeOneScalePerExpertOrPerRow()
    {
        // transformers 5's stacked experts: gate_up_proj [E, 2F, D] with one scale per expert ([E]), down_proj
        // [E, D, F] with one per row ([E, D, 1]); names without ".weight", so the scales are "<name>_scale"
        using var dir = new TempDir();
        var rng = new Random(12);
        var q = new Dictionary<string, (byte[] Q, float[] S, long[] Shape)>();
        Write(dir.Path, "mixtral", DType.BF16, 12, Quantized("mixtral", CompressedTensors("channel")), stackedExperts: true, edit: ts => ts.SelectMany(t =>
        {
            if (!t.Name.EndsWith("experts.gate_up_proj") && !t.Name.EndsWith("experts.down_proj")) return new[] { t };
            long n = t.Shape[0] * t.Shape[1] * t.Shape[2], rows = t.Shape[0] * t.Shape[1];
            var bytes = new byte[n];
            rng.NextBytes(bytes);
            for (long i = 0; i < n; i++) if ((bytes[i] & 0x7F) == 0x7F) bytes[i] = 0x12;   // no NaN codes
            bool perExpert = t.Name.EndsWith("gate_up_proj");
            var s = Enumerable.Range(0, (int)(perExpert ? t.Shape[0] : rows)).Select(i => 0.01f * (i + 1)).ToArray();
            q[t.Name] = (bytes, s, t.Shape);
            return new[]
            {
                new SafetensorsTensor(t.Name, DType.F8E4M3, t.Shape, bytes),
                new SafetensorsTensor(t.Name + "_scale", DType.F32, perExpert ? new[] { t.Shape[0] } : new[] { t.Shape[0], t.Shape[1], 1L }, ScaleBytes(s, DType.F32)),
            };
        }).ToList());
        var f = ModelFolderLoader.Load(dir.Path, null, default);
        try
        {
            for (int l = 0; l < L; l++)
            {
                var lw = f.Weights.Layers[l];
                var gu = q[$"model.layers.{l}.mlp.experts.gate_up_proj"];
                var dn = q[$"model.layers.{l}.mlp.experts.down_proj"];
                for (int e = 0; e < E; e++)
                {
                    foreach (var (t, half) in new[] { (lw.ExpertGate![e], 0), (lw.ExpertUp![e], 1) })
                    {
                        Assert.Equal(DType.F8E4M3, t.DType);
                        long off = ((long)e * 2 * F + half * F) * D;
                        Assert.Equal(gu.Q.AsSpan((int)off, F * D).ToArray(), new ReadOnlySpan<byte>((void*)t.Data, F * D).ToArray());
                        for (int r = 0; r < F; r++) Assert.Equal(gu.S[e], ((float*)t.Scales)[r]);
                    }
                    var d = lw.ExpertDown![e];
                    Assert.Equal(dn.Q.AsSpan(e * D * F, D * F).ToArray(), new ReadOnlySpan<byte>((void*)d.Data, D * F).ToArray());
                    for (int r = 0; r < D; r++) Assert.Equal(dn.S[e * D + r], ((float*)d.Scales)[r]);
                }
            }
        }
        finally { f.Store.Dispose(); }
    }

    [Theory]
    [InlineData("fp8", "weight_scale_inv", DType.BF16)]
    [InlineData("compressed-tensors", "weight_scale", DType.F32)]
    public void BlockScaledCheckpointIsRequantizedPerRowAndTheChangeReported(string method, string scaleName, DType scaleType)
    {
        using var dir = new TempDir();
        var w = new Dictionary<string, Written>();
        var q = method == "fp8"
            ? new JsonObject { ["quant_method"] = "fp8", ["fmt"] = "e4m3", ["activation_scheme"] = "dynamic", ["weight_block_size"] = new JsonArray(16, 20) }
            : CompressedTensors("block", new[] { 16, 20 });
        Write(dir.Path, "llama", DType.BF16, 7, Quantized("llama", q), edit: ToFp8("block", scaleType, w, scaleName, 16, 20));
        var warnings = new List<string>();
        var f = ModelFolderLoader.Load(dir.Path, null, default, null, warnings.Add);
        try
        {
            // every projection: one scale per row; dequantized within e4m3 rounding of the checkpoint's values
            double e2 = 0, r2 = 0;
            var names = new[] { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj" };
            for (int l = 0; l < L; l++)
            {
                var lw = f.Weights.Layers[l];
                var got = new[] { lw.Wq, lw.Wk, lw.Wv, lw.Wo, lw.WGate!, lw.WUp!, lw.WDown! };
                var rowScales = got.Select(RowScales).ToArray();
                for (int k = 0; k < names.Length; k++)
                {
                    var x = w[$"model.layers.{l}.{names[k]}.weight"];
                    Assert.Equal(DType.F8E4M3, got[k].DType);
                    long g1 = (x.Cols + x.B1 - 1) / x.B1;
                    for (long r = 0; r < x.Rows; r++)
                        for (long c = 0; c < x.Cols; c++)
                        {
                            double want = (double)QuantFormats.E4M3ToFloat(x.Q[r * x.Cols + c]) * x.Scales[(r / x.B0) * g1 + c / x.B1];
                            double have = got[k].GetFloat(r * x.Cols + c);
                            // e4m3 keeps 3 mantissa bits: half a step is at most 1/16 of the value; below 2^-6 (subnormal) it is
                            // 2^-10 of the row scale (rounding of the products in float: 1e-6 relative)
                            double step = Math.Max(Math.Abs(want) / 16, rowScales[k][r] * Math.Pow(2, -10));
                            Assert.InRange(Math.Abs(have - want), 0, step * (1 + 1e-6) + 1e-12);
                            e2 += (have - want) * (have - want); r2 += want * want;
                        }
                }
            }
            var warning = Assert.Single(warnings);
            Assert.Contains($"{7 * L} fp8 tensors", warning);
            Assert.Contains("16x20 block", warning);
            // the reported relative RMS change is the one measured here
            var reported = double.Parse(System.Text.RegularExpressions.Regex.Match(warning, @"relative RMS change ([0-9.eE+-]+)\)").Groups[1].Value,
                System.Globalization.CultureInfo.InvariantCulture);
            Assert.InRange(reported / Math.Sqrt(e2 / r2), 0.99, 1.01);   // printed with 3 significant digits
            Assert.InRange(reported, 1e-4, 0.05);
        }
        finally { f.Store.Dispose(); }
    }

    private static unsafe float[] RowScales(Tensor t)
    {
        var s = new float[t.TotalRows];
        for (long r = 0; r < s.Length; r++) s[r] = ((float*)t.Scales)[r];
        return s;
    }

    [Fact]
    public void AnFp8CheckpointMadeAsImportQuantizesRunsExactlyLikeImportDTypeFp8()
    {
        // The checkpoint written with Calm's own rule (per row, absmax / 448, F32 scales, lm_head quantized too) and the
        // bf16 folder imported with -DType fp8 hold the same weights: the CPU logits are bit for bit the same.
        using var bf = new TempDir();
        using var ck = new TempDir();
        int seed = Environment.TickCount;
        Write(bf.Path, "llama", DType.BF16, seed);
        var w = new Dictionary<string, Written>();
        Write(ck.Path, "llama", DType.BF16, seed, Quantized("llama", CompressedTensors("channel")), edit: ToFp8("channel", DType.F32, w, keepLmHead: false));
        var ct = CancellationToken.None;
        using var a = ModelFactory.Import(bf.Path, new ImportOptions { Device = DeviceChoice.Cpu, WeightDType = DType.F8E4M3 }, null, ct);
        using var b = ModelFactory.Import(ck.Path, new ImportOptions { Device = DeviceChoice.Cpu }, null, ct);
        Assert.Equal(DType.F8E4M3, b.Config.DType);
        var ids = new[] { 1, 5, 9, 33, 60, 2 };
        var la = new float[ids.Length * V]; var lb = new float[ids.Length * V];
        a.Backend.Forward(ids, 0, la, true, ct);
        b.Backend.Forward(ids, 0, lb, true, ct);
        Assert.Equal(la, lb);
        // and -DType int4 takes the fp8 checkpoint too (dequantized row by row, then quantized per group of 32)
        using var c = ModelFactory.Import(ck.Path, new ImportOptions { Device = DeviceChoice.Cpu, WeightDType = DType.Int4 }, null, ct);
        Assert.Equal(DType.Int4, c.Config.DType);
        Assert.Equal(DType.Int4, c.Weights.Layers[0].Wq.DType);
        // each int4 weight is the fp8 one rounded to 16 levels of its group of 32: a relative RMS change of a few
        // percent (uniform weights: step / sqrt(12) over rms ~ 6%), not the factor ~450 of a scale left out
        foreach (var (x, y) in new[] { (c.Weights.Layers[0].Wq, b.Weights.Layers[0].Wq), (c.Weights.Layers[1].WDown!, b.Weights.Layers[1].WDown!), (c.Weights.LmHead, b.Weights.LmHead) })
        {
            double e2 = 0, r2 = 0;
            for (long i = 0; i < x.ElementCount; i++) { double d = x.GetFloat(i) - y.GetFloat(i); e2 += d * d; r2 += (double)y.GetFloat(i) * y.GetFloat(i); }
            Assert.InRange(Math.Sqrt(e2 / r2), 0.01, 0.1);
        }
        var lc = new float[ids.Length * V];
        c.Backend.Forward(ids, 0, lc, true, ct);
        Assert.All(lc, v => Assert.True(float.IsFinite(v)));
    }

    private static CalmException Fails(string dir, string id, params string[] mentions)
    {
        var ex = Throws(() => ModelFolderLoader.Load(dir, null, default).Store.Dispose());
        Assert.Equal(id, ex.ErrorId);
        foreach (var m in mentions) Assert.Contains(m, ex.Message);
        foreach (var f in Directory.GetFiles(dir, "*.safetensors")) Assert.Equal(0, MappedSafetensors.LiveMappings(f));
        return ex;
    }

    [Fact]
    public void BadFp8CheckpointsAreClearErrors()
    {
        // a weight without its scale
        using (var dir = new TempDir())
        {
            Write(dir.Path, "llama", DType.BF16, 8, Quantized("llama", CompressedTensors("channel")),
                edit: ts => ToFp8("channel", DType.BF16, new())(ts).Where(t => t.Name != "model.layers.1.mlp.up_proj.weight_scale").ToList());
            Fails(dir.Path, ErrorIds.QuantScaleMissing, "model.layers.1.mlp.up_proj.weight", "weight_scale");
        }
        // a scale of the wrong shape
        using (var dir = new TempDir())
        {
            Write(dir.Path, "llama", DType.BF16, 9, Quantized("llama", CompressedTensors("channel")),
                edit: ts => ToFp8("channel", DType.BF16, new())(ts).Select(t => t.Name == "model.layers.0.self_attn.o_proj.weight_scale"
                    ? new SafetensorsTensor(t.Name, t.DType, new long[] { 3, 1 }, t.Data[..6]) : t).ToList());
            Fails(dir.Path, ErrorIds.TensorShapeMismatch, "o_proj.weight_scale", "[3, 1]");
        }
        // a negative and a NaN scale
        foreach (float bad in new[] { -0.5f, float.NaN })
        {
            using var dir = new TempDir();
            Write(dir.Path, "llama", DType.BF16, 10, Quantized("llama", CompressedTensors("channel")),
                edit: ts => ToFp8("channel", DType.F32, new())(ts).Select(t => t.Name == "model.layers.0.mlp.down_proj.weight_scale"
                    ? new SafetensorsTensor(t.Name, t.DType, t.Shape, ScaleBytes(Enumerable.Repeat(bad, (int)t.Shape[0]).ToArray(), DType.F32)) : t).ToList());
            Fails(dir.Path, ErrorIds.QuantScaleInvalid, "down_proj.weight_scale", "finite and not negative");
        }
        // fp8 where Calm needs f32/f16/bf16 (a norm)
        using (var dir = new TempDir())
        {
            Write(dir.Path, "llama", DType.BF16, 11, Quantized("llama", CompressedTensors("channel")),
                edit: ts => ts.Select(t => t.Name == "model.norm.weight" ? new SafetensorsTensor(t.Name, DType.F8E4M3, t.Shape, new byte[t.Shape[0]]) : t).ToList());
            Fails(dir.Path, ErrorIds.TensorDTypeUnsupported, "model.norm.weight", "fp8");
        }
    }

    [Fact]
    public void ACompressedTensorsCheckpointSavedDenseLoadsAsItsStoredDType()
    {
        // format "dense": llm-compressor saved the weights uncompressed (bf16 here); nothing to convert
        using var dir = new TempDir();
        var q = CompressedTensors("channel");
        q["format"] = "dense";
        Write(dir.Path, "llama", DType.BF16, 13, Quantized("llama", q));
        var f = ModelFolderLoader.Load(dir.Path, null, default);
        try
        {
            Assert.Equal(DType.BF16, f.Config.DType);
            Assert.Equal(DType.BF16, f.Weights.Layers[0].Wq.DType);
        }
        finally { f.Store.Dispose(); }
    }

    [Theory]
    [InlineData("{\"quant_method\": \"gptq\", \"bits\": 4}", ErrorIds.QuantizationNotSupported, "'gptq'")]
    [InlineData("{\"quant_method\": \"awq\"}", ErrorIds.QuantizationNotSupported, "'awq'")]
    [InlineData("{\"quant_method\": \"compressed-tensors\", \"format\": \"pack-quantized\"}", ErrorIds.QuantizationNotSupported, "pack-quantized")]
    [InlineData("{\"quant_method\": \"compressed-tensors\", \"config_groups\": {\"g\": {\"weights\": {\"num_bits\": 4, \"type\": \"int\"}}}}", ErrorIds.QuantizationNotSupported, "4-bit int")]
    [InlineData("{\"quant_method\": \"fp8\", \"fmt\": \"e5m2\"}", ErrorIds.QuantizationNotSupported, "e5m2")]
    [InlineData("{\"quant_method\": \"fp8\", \"weight_block_size\": [128]}", ErrorIds.ConfigInvalid, "weight_block_size")]
    [InlineData("{\"bits\": 4}", ErrorIds.ConfigInvalid, "quant_method")]
    [InlineData("\"fp8\"", ErrorIds.ConfigInvalid, "quantization_config")]
    public void OtherQuantizationMethodsAreRefusedBeforeAnyWeightIsRead(string quantJson, string id, string mention)
    {
        using var dir = new TempDir();
        var c = Config("llama");
        c["quantization_config"] = JsonNode.Parse(quantJson);
        WriteConfig(dir.Path, c);   // no weights at all: the config is refused first
        var ex = Fails(dir.Path, id, mention);
        if (id == ErrorIds.QuantizationNotSupported) Assert.Contains("-DType fp8 or int4", ex.Message);
    }
}
