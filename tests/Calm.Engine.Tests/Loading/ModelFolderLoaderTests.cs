using System.Text.Json.Nodes;
using Calm.Engine.Model;
using Calm.Engine.Weights;
using static Calm.Engine.Tests.Loading.ModelFolders;

namespace Calm.Engine.Tests.Loading;

public class ModelFolderLoaderTests
{
    private static LoadedFolder Load(string path, IProgress<LoadProgress>? p = null, CancellationToken ct = default, Action<string>? verbose = null) =>
        ModelFolderLoader.Load(path, p, ct, verbose);

    private static CalmException LoadFails(string path, string id, params string[] mentions)
    {
        var ex = Throws(() => Load(path).Store.Dispose());
        Assert.Equal(id, ex.ErrorId);
        foreach (var m in mentions) Assert.Contains(m, ex.Message);
        // Nothing stays mapped after a failure.
        foreach (var f in Directory.Exists(path) ? Directory.GetFiles(path, "*.safetensors", SearchOption.AllDirectories) : Array.Empty<string>())
            Assert.Equal(0, MappedSafetensors.LiveMappings(f));
        return ex;
    }

    private static unsafe byte[] Bytes(Tensor t) => new ReadOnlySpan<byte>((void*)t.Data, checked((int)t.ByteLength)).ToArray();

    private static byte[] Data(List<SafetensorsTensor> written, string name) => written.Single(t => t.Name == name).Data.ToArray();

    [Theory]
    [InlineData("llama")]
    [InlineData("mistral")]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("gemma")]
    [InlineData("phi3")]
    [InlineData("mixtral")]
    public void EachArchitectureLoadsWithItsShapesAndConfig(string arch)
    {
        using var dir = new TempDir();
        int seed = Environment.TickCount;
        var written = Write(dir.Path, arch, DType.BF16, seed);
        var lines = new List<string>();
        var reports = new List<LoadProgress>();
        var loaded = Load(dir.Path, new SyncProgress(reports.Add), default, lines.Add);
        string file = dir.File("model.safetensors");
        try
        {
            var c = loaded.Config;
            int hd = HeadDim(arch);
            Assert.Equal(arch, c.ModelType);
            Assert.Equal((V, D, F, L, H, K, hd), (c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumLayers, c.NumHeads, c.NumKvHeads, c.HeadDim));
            Assert.Equal(DType.BF16, c.DType);
            var w = loaded.Weights;
            Assert.Equal(new long[] { V, D }, w.Embedding.Shape);
            Assert.Equal(new long[] { D }, w.FinalNorm.Shape);
            Assert.Equal(L, w.Layers.Length);
            Assert.Equal(Data(written, "model.embed_tokens.weight"), Bytes(w.Embedding));
            if (arch == "gemma") Assert.Same(w.Embedding, w.LmHead);
            else Assert.Equal(Data(written, "lm_head.weight"), Bytes(w.LmHead));
            for (int i = 0; i < L; i++)
            {
                var l = w.Layers[i];
                string p = $"model.layers.{i}.";
                Assert.Equal(new long[] { H * hd, D }, l.Wq.Shape);
                Assert.Equal(new long[] { K * hd, D }, l.Wk.Shape);
                Assert.Equal(new long[] { K * hd, D }, l.Wv.Shape);
                Assert.Equal(new long[] { D, H * hd }, l.Wo.Shape);
                Assert.Equal(Data(written, p + "input_layernorm.weight"), Bytes(l.AttnNorm));
                Assert.Equal(Data(written, p + "post_attention_layernorm.weight"), Bytes(l.FfnNorm));
                Assert.Equal(arch == "qwen2", l.Bq is not null && l.Bk is not null && l.Bv is not null);
                Assert.Null(l.Bo);
                Assert.Equal(arch == "qwen3", l.QNorm is not null && l.KNorm is not null);
                if (arch == "phi3")
                {
                    // q rows, then k rows, then v rows of the fused tensor.
                    var qkv = Data(written, p + "self_attn.qkv_proj.weight");
                    int qb = H * hd * D * 2, kb = K * hd * D * 2;
                    Assert.Equal(qkv[..qb], Bytes(l.Wq));
                    Assert.Equal(qkv[qb..(qb + kb)], Bytes(l.Wk));
                    Assert.Equal(qkv[(qb + kb)..], Bytes(l.Wv));
                    var gu = Data(written, p + "mlp.gate_up_proj.weight");
                    Assert.Equal(gu[..(F * D * 2)], Bytes(l.WGate!));
                    Assert.Equal(gu[(F * D * 2)..], Bytes(l.WUp!));
                }
                else Assert.Equal(Data(written, p + "self_attn.k_proj.weight"), Bytes(l.Wk));
                if (arch == "mixtral")
                {
                    Assert.Null(l.WGate);
                    Assert.Equal(new long[] { E, D }, l.Router!.Shape);
                    Assert.Equal(E, l.ExpertGate!.Length);
                    for (int e = 0; e < E; e++)
                    {
                        Assert.Equal(Data(written, $"{p}block_sparse_moe.experts.{e}.w1.weight"), Bytes(l.ExpertGate[e]));
                        Assert.Equal(Data(written, $"{p}block_sparse_moe.experts.{e}.w3.weight"), Bytes(l.ExpertUp![e]));
                        Assert.Equal(Data(written, $"{p}block_sparse_moe.experts.{e}.w2.weight"), Bytes(l.ExpertDown![e]));
                    }
                }
                else
                {
                    Assert.Equal(new long[] { F, D }, l.WGate!.Shape);
                    Assert.Equal(new long[] { F, D }, l.WUp!.Shape);
                    Assert.Equal(new long[] { D, F }, l.WDown!.Shape);
                }
            }
            // Every written tensor is reachable, each once.
            Assert.Equal(written.Sum(t => (long)t.Data.Length), w.TotalBytes);
            Assert.Equal(1, MappedSafetensors.LiveMappings(file));
            Assert.Contains(lines, s => s.Contains("model.safetensors") && s.Contains("bf16"));
            Assert.Contains(reports, r => r.Status.Contains("file 1 of 1"));
            Assert.Contains(reports, r => r.Status.Contains("Validating"));
        }
        finally { loaded.Store.Dispose(); }
        Assert.Equal(0, MappedSafetensors.LiveMappings(file));
    }

    [Fact]
    public void MixtralStackedExpertLayoutIsSlicedGateFirst()
    {
        using var dir = new TempDir();
        var written = Write(dir.Path, "mixtral", DType.F32, 11, stackedExperts: true);
        var loaded = Load(dir.Path);
        try
        {
            var l = loaded.Weights.Layers[1];
            var gu = Data(written, "model.layers.1.mlp.experts.gate_up_proj");
            var dn = Data(written, "model.layers.1.mlp.experts.down_proj");
            int per = 2 * F * D * 4, half = F * D * 4;
            for (int e = 0; e < E; e++)
            {
                Assert.Equal(gu[(e * per)..(e * per + half)], Bytes(l.ExpertGate![e]));
                Assert.Equal(gu[(e * per + half)..((e + 1) * per)], Bytes(l.ExpertUp![e]));
                Assert.Equal(dn[(e * D * F * 4)..((e + 1) * D * F * 4)], Bytes(l.ExpertDown![e]));
                Assert.Equal(new long[] { F, D }, l.ExpertUp[e].Shape);
                Assert.Equal(new long[] { D, F }, l.ExpertDown[e].Shape);
            }
            Assert.Equal(Data(written, "model.layers.1.mlp.gate.weight"), Bytes(l.Router!));
        }
        finally { loaded.Store.Dispose(); }
    }

    [Fact]
    public void MixtralPerExpertUnderMlpWithProjNamesLoads()
    {
        using var dir = new TempDir();
        var written = Write(dir.Path, "mixtral", DType.BF16, 12, edit: ts => ts.Select(t => new SafetensorsTensor(
            t.Name.Replace("block_sparse_moe.", "mlp.").Replace(".w1.", ".gate_proj.").Replace(".w3.", ".up_proj.").Replace(".w2.", ".down_proj."),
            t.DType, t.Shape, t.Data)).ToList());
        var loaded = Load(dir.Path);
        try
        {
            var l = loaded.Weights.Layers[0];
            Assert.Equal(Data(written, "model.layers.0.mlp.experts.3.up_proj.weight"), Bytes(l.ExpertUp![3]));
            Assert.Equal(Data(written, "model.layers.0.mlp.experts.2.down_proj.weight"), Bytes(l.ExpertDown![2]));
            Assert.Equal(Data(written, "model.layers.0.mlp.gate.weight"), Bytes(l.Router!));
        }
        finally { loaded.Store.Dispose(); }
    }

    [Fact]
    public void MixtralStackedExpertsWithWrongShapeAreRefused()
    {
        using var dir = new TempDir();
        Write(dir.Path, "mixtral", DType.BF16, 2, stackedExperts: true, edit: ts =>
            ts.Select(t => t.Name == "model.layers.0.mlp.experts.down_proj"
                ? new SafetensorsTensor(t.Name, t.DType, new long[] { E, F, D }, t.Data) : t).ToList());
        LoadFails(dir.Path, ErrorIds.TensorShapeMismatch, "down_proj", $"[{E}, {F}, {D}]", $"[{E}, {D}, {F}]");
    }

    [Fact]
    public void BiasesAndMixedDTypesLoadAndConfigDTypeIsTheEmbeddings()
    {
        using var dir = new TempDir();
        var c = Config("llama");
        c["attention_bias"] = true;
        c["mlp_bias"] = true;
        Write(dir.Path, "llama", DType.F16, 5, c, edit: ts => ts.Select(t => t.Name.EndsWith("norm.weight")
            ? new SafetensorsTensor(t.Name, DType.F32, t.Shape, RandomBytes(DType.F32, t.Shape, new Random(1))) : t).ToList());
        var loaded = Load(dir.Path);
        try
        {
            Assert.Equal(DType.F16, loaded.Config.DType);
            var l = loaded.Weights.Layers[0];
            Assert.Equal(DType.F32, l.AttnNorm.DType);
            Assert.Equal(new long[] { D }, l.Bo!.Shape);
            Assert.Equal(new long[] { F }, l.BGate!.Shape);
            Assert.Equal(new long[] { D }, l.BDown!.Shape);
        }
        finally { loaded.Store.Dispose(); }
    }

    [Fact]
    public void ShardedIndexLoadsAndTakesEachTensorFromItsShard()
    {
        using var dir = new TempDir();
        var config = Config("qwen2");
        WriteConfig(dir.Path, config);
        var tensors = MakeTensors(TensorSpecs("qwen2", config), DType.BF16, 9);
        var map = new JsonObject();
        var shards = new[] { "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors" };
        for (int s = 0; s < 3; s++)
        {
            var part = tensors.Where((_, i) => i % 3 == s).ToList();
            SafetensorsWriter.Write(dir.File(shards[s]), part);
            foreach (var t in part) map[t.Name] = shards[s];
        }
        File.WriteAllText(dir.File("model.safetensors.index.json"),
            new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = 1 }, ["weight_map"] = map }.ToJsonString());
        File.WriteAllText(dir.File("generation_config.json"), "{\"bos_token_id\": 1, \"eos_token_id\": [2, 3]}");
        var reports = new List<LoadProgress>();
        var loaded = Load(dir.Path, new SyncProgress(reports.Add));
        try
        {
            Assert.Equal(3, reports.Count(r => r.Status.StartsWith("Mapping file")));
            Assert.Contains(reports, r => r.Status.Contains("file 3 of 3"));
            Assert.Equal(new[] { 2, 3 }, loaded.Generation!.EosTokenIds);
            Assert.Equal(new[] { 2, 3 }, loaded.Config.EosTokenIds);
            Assert.Equal(tensors.Sum(t => (long)t.Data.Length), loaded.Weights.TotalBytes);
            Assert.Equal(Data(tensors, "model.layers.1.self_attn.v_proj.bias"), Bytes(loaded.Weights.Layers[1].Bv!));
            foreach (var s in shards) Assert.Equal(1, MappedSafetensors.LiveMappings(dir.File(s)));
        }
        finally { loaded.Store.Dispose(); }
        foreach (var s in shards) Assert.Equal(0, MappedSafetensors.LiveMappings(dir.File(s)));
    }

    [Fact]
    public void TiedEmbeddingsUseTheEmbeddingAndUntiedNeedLmHead()
    {
        using var dir = new TempDir();
        var c = Config("llama");
        c["tie_word_embeddings"] = true;
        Write(dir.Path, "llama", config: c);
        var loaded = Load(dir.Path);
        try
        {
            Assert.Same(loaded.Weights.Embedding, loaded.Weights.LmHead);
            Assert.True(loaded.Config.TieWordEmbeddings);
        }
        finally { loaded.Store.Dispose(); }

        using var dir2 = new TempDir();
        Write(dir2.Path, "llama", edit: ts => ts.Where(t => t.Name != "lm_head.weight").ToList());
        LoadFails(dir2.Path, ErrorIds.TensorMissing, "lm_head.weight");
    }

    [Fact]
    public void AFilePathInsideTheFolderLoadsTheFolder()
    {
        using var dir = new TempDir();
        Write(dir.Path, "mistral");
        var loaded = Load(dir.File("config.json"));
        loaded.Store.Dispose();
        Assert.Equal(128, loaded.Config.SlidingWindow);
    }

    [Fact]
    public void MissingPathIsPathNotFound()
    {
        using var dir = new TempDir();
        LoadFails(dir.File("nope"), ErrorIds.PathNotFound, "nope");
    }

    [Fact]
    public void FolderWithoutConfigIsConfigMissing()
    {
        using var dir = new TempDir();
        SafetensorsWriter.Write(dir.File("model.safetensors"), MakeTensors(new[] { ("a", new long[] { 2 }) }, DType.F32, 1));
        LoadFails(dir.Path, ErrorIds.ConfigMissing, "config.json");
    }

    [Fact]
    public void FolderWithoutWeightsIsWeightsMissing()
    {
        using var dir = new TempDir();
        WriteConfig(dir.Path, Config("llama"));
        LoadFails(dir.Path, ErrorIds.WeightsMissing, "model.safetensors");
    }

    [Fact]
    public void UnsupportedModelTypeInAFolder()
    {
        using var dir = new TempDir();
        var c = Config("llama");
        c["model_type"] = "mamba";
        Write(dir.Path, "llama", config: c);
        LoadFails(dir.Path, ErrorIds.UnsupportedArchitecture, "mamba", "qwen3");
    }

    [Fact]
    public void BadConfigInAFolderIsConfigInvalid()
    {
        using var dir = new TempDir();
        Write(dir.Path, "llama");
        File.WriteAllText(dir.File("config.json"), "{ this is not json");
        LoadFails(dir.Path, ErrorIds.ConfigInvalid, dir.File("config.json"));
    }

    [Fact]
    public void MissingTensorNamesFileAndTensor()
    {
        using var dir = new TempDir();
        Write(dir.Path, "qwen3", edit: ts => ts.Where(t => t.Name != "model.layers.1.self_attn.k_norm.weight").ToList());
        LoadFails(dir.Path, ErrorIds.TensorMissing, "model.layers.1.self_attn.k_norm.weight", dir.Path);
    }

    [Fact]
    public void WrongShapeNamesFileTensorAndBothShapes()
    {
        using var dir = new TempDir();
        Write(dir.Path, "llama", edit: ts => ts.Select(t => t.Name == "model.layers.0.mlp.down_proj.weight"
            ? new SafetensorsTensor(t.Name, t.DType, new long[] { F, D }, t.Data) : t).ToList());
        LoadFails(dir.Path, ErrorIds.TensorShapeMismatch, "model.layers.0.mlp.down_proj.weight", dir.File("model.safetensors"),
            $"[{F}, {D}]", $"[{D}, {F}]");
    }

    [Fact]
    public void NonWeightDTypeIsRefused()
    {
        using var dir = new TempDir();
        Write(dir.Path, "llama", edit: ts => ts.Select(t => t.Name == "model.norm.weight"
            ? new SafetensorsTensor(t.Name, DType.I32, t.Shape, new byte[D * 4]) : t).ToList());
        LoadFails(dir.Path, ErrorIds.TensorDTypeUnsupported, "model.norm.weight");
    }

    [Fact]
    public void CorruptWeightsFileInAFolderIsReported()
    {
        using var dir = new TempDir();
        Write(dir.Path, "llama");
        var bytes = File.ReadAllBytes(dir.File("model.safetensors"));
        File.WriteAllBytes(dir.File("model.safetensors"), bytes[..(bytes.Length / 2)]);
        LoadFails(dir.Path, ErrorIds.SafetensorsTruncated, dir.File("model.safetensors"));
    }

    private static void WriteSharded(TempDir dir, Func<string, string>? shardName = null, Action<JsonObject>? editMap = null)
    {
        var config = Config("llama");
        WriteConfig(dir.Path, config);
        var tensors = MakeTensors(TensorSpecs("llama", config), DType.BF16, 4);
        var map = new JsonObject();
        string[] shards = { "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors" };
        for (int s = 0; s < 2; s++)
        {
            var part = tensors.Where((_, i) => i % 2 == s).ToList();
            SafetensorsWriter.Write(dir.File(shards[s]), part);
            foreach (var t in part) map[t.Name] = shardName is null ? shards[s] : shardName(shards[s]);
        }
        editMap?.Invoke(map);
        File.WriteAllText(dir.File("model.safetensors.index.json"), new JsonObject { ["weight_map"] = map }.ToJsonString());
    }

    [Theory]
    [InlineData("../outside.safetensors")]
    [InlineData("sub/../../outside.safetensors")]
    [InlineData("..\\outside.safetensors")]
    [InlineData("/etc/passwd")]
    [InlineData("ABSOLUTE")]
    public void IndexNamingAShardOutsideTheFolderIsRefusedBeforeOpening(string shard)
    {
        using var outer = new TempDir();
        string model = Path.Combine(outer.Path, "model");
        Directory.CreateDirectory(model);
        var dir = new TempDir(model);
        // A real safetensors file outside the folder that the index points at.
        string outside = Path.Combine(outer.Path, "outside.safetensors");
        SafetensorsWriter.Write(outside, MakeTensors(new[] { ("model.norm.weight", new long[] { D }) }, DType.BF16, 1));
        string name = shard == "ABSOLUTE" ? outside : shard;
        WriteSharded(dir, editMap: m => m["model.norm.weight"] = name);
        var ex = LoadFails(model, ErrorIds.ShardPathOutsideModel, "model.safetensors.index.json");
        Assert.Equal(0, MappedSafetensors.LiveMappings(outside));
        Assert.Equal(0, MappedSafetensors.LiveMappings(Path.Combine(model, "model-00001-of-00002.safetensors")));
    }

    [Fact]
    public void MissingShardIsShardMissing()
    {
        using var dir = new TempDir();
        WriteSharded(dir);
        File.Delete(dir.File("model-00002-of-00002.safetensors"));
        LoadFails(dir.Path, ErrorIds.ShardMissing, "model-00002-of-00002.safetensors");
    }

    [Fact]
    public void TensorListedInIndexButNotInItsShardIsTensorMissing()
    {
        using var dir = new TempDir();
        WriteSharded(dir, editMap: m =>
        {
            // Point one tensor at the other shard, where it is not.
            string n = "model.norm.weight";
            string cur = m[n]!.GetValue<string>();
            m[n] = cur.Contains("00001") ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
        });
        LoadFails(dir.Path, ErrorIds.TensorMissing, "model.norm.weight", "not in this shard");
    }

    [Theory]
    [InlineData("not json")]
    [InlineData("{\"metadata\": {}}")]
    [InlineData("{\"weight_map\": {\"a\": 5}}")]
    [InlineData("{\"weight_map\": {}}")]
    public void MalformedIndexIsShardIndexInvalid(string index)
    {
        using var dir = new TempDir();
        WriteSharded(dir);
        File.WriteAllText(dir.File("model.safetensors.index.json"), index);
        LoadFails(dir.Path, ErrorIds.ShardIndexInvalid, "model.safetensors.index.json");
    }

    [Fact]
    public void CancellationBetweenFilesThrowsAndUnmapsEverything()
    {
        using var dir = new TempDir();
        WriteSharded(dir);
        using var cts = new CancellationTokenSource();
        // Cancel once the second file starts mapping: the first is mapped by then and must be released.
        var progress = new SyncProgress(r => { if (r.Status.Contains("file 2 of 2")) cts.Cancel(); });
        Assert.ThrowsAny<OperationCanceledException>(() => Load(dir.Path, progress, cts.Token));
        Assert.Equal(0, MappedSafetensors.LiveMappings(dir.File("model-00001-of-00002.safetensors")));
        Assert.Equal(0, MappedSafetensors.LiveMappings(dir.File("model-00002-of-00002.safetensors")));

        // Cancelled during validation (after both files are mapped).
        using var cts2 = new CancellationTokenSource();
        var p2 = new SyncProgress(r => { if (r.Status.Contains("layer 2")) cts2.Cancel(); });
        Assert.ThrowsAny<OperationCanceledException>(() => Load(dir.Path, p2, cts2.Token));
        Assert.Equal(0, MappedSafetensors.LiveMappings(dir.File("model-00001-of-00002.safetensors")));
        Assert.Equal(0, MappedSafetensors.LiveMappings(dir.File("model-00002-of-00002.safetensors")));
    }

    [Fact]
    public void LoadingFiftyTimesLeavesNothingMapped()
    {
        using var dir = new TempDir();
        Write(dir.Path, "phi3");
        string f = dir.File("model.safetensors");
        for (int i = 0; i < 50; i++)
        {
            var l = Load(dir.Path);
            Assert.Equal(1, MappedSafetensors.LiveMappings(f));
            l.Store.Dispose();
        }
        Assert.Equal(0, MappedSafetensors.LiveMappings(f));
    }

    /// <summary>IProgress that reports synchronously (Progress&lt;T&gt; posts to the thread pool).</summary>
    private sealed class SyncProgress(Action<LoadProgress> on) : IProgress<LoadProgress>
    {
        public void Report(LoadProgress value) => on(value);
    }
}
