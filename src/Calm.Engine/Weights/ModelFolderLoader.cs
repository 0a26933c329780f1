using System.Text.Json;
using Calm.Engine.Model;

namespace Calm.Engine.Weights;

/// <summary>What <see cref="ModelFolderLoader.Load"/> returns: everything but the device.</summary>
public sealed record LoadedFolder(ModelConfig Config, ModelWeights Weights, WeightStore Store, GenerationConfig? Generation);

/// <summary>
/// Reads a Hugging Face model folder: config.json, model.safetensors or shards with model.safetensors.index.json,
/// generation_config.json. Files are memory-mapped; everything is validated before use. On any failure every
/// mapping made so far is released before the exception leaves.
/// </summary>
public static class ModelFolderLoader
{
    public const string ConfigFileName = "config.json";
    public const string SingleWeightsFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";
    public const string GenerationConfigFileName = "generation_config.json";

    public static LoadedFolder Load(string path, IProgress<LoadProgress>? progress, CancellationToken ct, Action<string>? verbose = null,
        Action<string>? warning = null)
    {
        string folder = ResolveFolder(path);
        string activity = $"Importing {System.IO.Path.GetFileName(folder)}";
        string configPath = System.IO.Path.Combine(folder, ConfigFileName);
        if (!File.Exists(configPath))
            throw new CalmException(ErrorIds.ConfigMissing, CalmErrorKind.ObjectNotFound,
                $"{folder} has no {ConfigFileName}. Point -Path at a Hugging Face model folder (config.json plus *.safetensors).", folder);

        progress?.Report(new LoadProgress(activity, "Reading config.json", 0));
        // A pre-quantized checkpoint: fp8 is read, any other method refused here, before a file is mapped.
        var (config, quant) = ConfigReader.ReadWithQuantization(configPath);
        if (quant is not null) verbose?.Invoke($"{configPath}: quantization_config: {quant.Method}" + (quant.BlockSize is { } b ? $", blocks {b[0]}x{b[1]}" : ""));
        verbose?.Invoke($"{configPath}: model_type {config.ModelType}, {config.NumLayers} layers, hidden {config.HiddenSize}, " +
                        $"heads {config.NumHeads}/{config.NumKvHeads} x {config.HeadDim}, vocab {config.VocabSize}" +
                        (config.IsMoE ? $", {config.NumExperts} experts (top {config.NumExpertsPerToken})" : ""));
        GenerationConfig? generation = null;
        string genPath = System.IO.Path.Combine(folder, GenerationConfigFileName);
        if (File.Exists(genPath))
        {
            generation = ConfigReader.ReadGeneration(genPath);
            verbose?.Invoke($"{genPath}: eos {string.Join(", ", generation.EosTokenIds)}");
        }
        ct.ThrowIfCancellationRequested();

        // Which files hold the weights (all shard names checked before anything is opened).
        var plan = PlanWeightFiles(folder);

        var store = new CompositeWeightStore();
        try
        {
            var mapped = new Dictionary<string, MappedSafetensors>(StringComparer.Ordinal);
            for (int i = 0; i < plan.Files.Count; i++)
            {
                ct.ThrowIfCancellationRequested();
                string rel = plan.Files[i];
                string full = System.IO.Path.Combine(folder, rel);
                progress?.Report(new LoadProgress(activity, $"Mapping file {i + 1} of {plan.Files.Count}: {rel}", 0.5 * i / plan.Files.Count));
                var file = SafetensorsFile.Open(full);
                store.Add(file);
                mapped[rel] = file;
                verbose?.Invoke($"Mapped {full}: {file.Header.FileLength / 1e6:F1} MB, {file.Tensors.Count} tensors" +
                                DTypeSummary(file.Tensors.Values));
            }

            // name -> tensor. With an index, each tensor comes from the shard the index names.
            var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            if (plan.WeightMap is not null)
            {
                foreach (var (name, shard) in plan.WeightMap)
                {
                    if (!mapped[shard].Tensors.TryGetValue(name, out var t))
                        throw new CalmException(ErrorIds.TensorMissing, CalmErrorKind.InvalidData,
                            $"{mapped[shard].Path}: tensor '{name}' is listed in {IndexFileName} but is not in this shard. " +
                            "The shard and the index disagree; download the model folder again.", $"{mapped[shard].Path}:{name}");
                    tensors[name] = t;
                }
            }
            foreach (var f in mapped.Values)
                foreach (var (name, t) in f.Tensors)
                    tensors.TryAdd(name, t);

            progress?.Report(new LoadProgress(activity, "Validating tensors", 0.5));
            // Row scales (and requantized values) of fp8 checkpoint tensors live here, freed with the mappings.
            var native = new NativeWeightStore();
            store.Add(native);
            var fp8 = new Quant.CheckpointFp8Reader(quant, native, ct);
            var set = new TensorSet(tensors, folder, plan.Files, fp8);
            var weights = MapWeights(config, set, progress, activity, ct);
            ct.ThrowIfCancellationRequested();
            config = config with { DType = weights.Embedding.DType };
            if (set.Fp8Count > 0)
            {
                (weights, string note) = AllProjectionsFp8(weights, native, ct);
                config = config with { DType = DType.F8E4M3 };
                verbose?.Invoke($"fp8 checkpoint: {set.Fp8Count} fp8 tensors read with one scale per row{note}.");
                if (fp8.Requantized.Count > 0)
                    warning?.Invoke($"{fp8.Requantized.Count} fp8 tensors of {folder} (e.g. {fp8.Requantized[0]}) have one scale per " +
                                    $"{fp8.Block[0]}x{fp8.Block[1]} block; Calm's fp8 keeps one scale per row, " +
                                    $"so their values were re-rounded to row scales (relative RMS change {fp8.RequantizedRelativeRms:G3}). " +
                                    "Tensor- and channel-scaled fp8 checkpoints are read exactly.");
            }
            if (generation is { EosTokenIds.Length: > 0 })
                config = config with { EosTokenIds = generation.EosTokenIds };

            int unused = tensors.Count - set.UsedCount;
            verbose?.Invoke($"Validated {set.UsedCount} tensors ({weights.TotalBytes / 1e6:F1} MB), dtype {DTypes.Name(config.DType)}" +
                            DTypeSummary(weights.AllTensors()) + (unused > 0 ? $"; {unused} tensors not used by Calm: {string.Join(", ", set.Unused().Take(5))}" : ""));
            progress?.Report(new LoadProgress(activity, "Done", 1));
            return new LoadedFolder(config, weights, store, generation);
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }

    /// <summary>
    /// An fp8 checkpoint as Calm's fp8 models are: every projection and the classifier fp8 with row scales. The ones the
    /// checkpoint kept unquantized (typically lm_head; a tied classifier gets its own copy, the embedding stays) are
    /// quantized per row as Import-CalmModel -DType fp8 does; norms, biases, the router and the embedding stay as stored.
    /// </summary>
    private static (ModelWeights, string Note) AllProjectionsFp8(ModelWeights w, NativeWeightStore store, CancellationToken ct)
    {
        var quantized = new List<string>();
        Tensor F(Tensor t)
        {
            if (t.DType == DType.F8E4M3) return t;
            quantized.Add(t.Name);
            return Quant.Quantizer.Quantize(t, DType.F8E4M3, store, ct);
        }
        var mapped = w.MapMatrices(F, F);
        string note = quantized.Count == 0 ? ""
            : $"; {quantized.Count} tensor{(quantized.Count == 1 ? "" : "s")} the checkpoint kept unquantized quantized to fp8 per row here ({string.Join(", ", quantized.Take(3))}{(quantized.Count > 3 ? ", ..." : "")})";
        return (mapped, note);
    }

    private static string DTypeSummary(IEnumerable<Tensor> tensors)
    {
        var groups = tensors.GroupBy(t => t.DType).Select(g => $"{DTypes.Name(g.Key)} x{g.Count()}").ToArray();
        return groups.Length == 0 ? "" : " (" + string.Join(", ", groups) + ")";
    }

    private static string ResolveFolder(string path)
    {
        if (string.IsNullOrWhiteSpace(path))
            throw new CalmException(ErrorIds.PathNotFound, CalmErrorKind.ObjectNotFound, "No model path was given. Give the path of a Hugging Face model folder.", path);
        string full;
        try { full = System.IO.Path.GetFullPath(path); }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw new CalmException(ErrorIds.PathNotFound, CalmErrorKind.ObjectNotFound, $"'{path}' is not a valid path ({e.Message}).", path, e);
        }
        full = System.IO.Path.TrimEndingDirectorySeparator(full);
        if (Directory.Exists(full)) return full;
        if (File.Exists(full))
        {
            string name = System.IO.Path.GetFileName(full);
            if (name == ConfigFileName || name == IndexFileName || name.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
                return System.IO.Path.GetDirectoryName(full)!;
            throw new CalmException(ErrorIds.ConfigMissing, CalmErrorKind.InvalidArgument,
                $"{full} is a file, not a model folder. Give the folder that holds config.json and the *.safetensors files.", full);
        }
        throw new CalmException(ErrorIds.PathNotFound, CalmErrorKind.ObjectNotFound,
            $"{full} does not exist. Check the path (a Hugging Face model folder with config.json and *.safetensors).", full);
    }

    private sealed record WeightPlan(IReadOnlyList<string> Files, IReadOnlyList<(string Tensor, string Shard)>? WeightMap);

    private static WeightPlan PlanWeightFiles(string folder)
    {
        string index = System.IO.Path.Combine(folder, IndexFileName);
        if (File.Exists(index)) return ReadIndex(folder, index);
        if (File.Exists(System.IO.Path.Combine(folder, SingleWeightsFileName)))
            return new WeightPlan(new[] { SingleWeightsFileName }, null);
        var others = Directory.EnumerateFiles(folder, "*.safetensors").Select(System.IO.Path.GetFileName).Take(3).ToArray();
        throw new CalmException(ErrorIds.WeightsMissing, CalmErrorKind.ObjectNotFound,
            $"{folder} has neither {SingleWeightsFileName} nor {IndexFileName}" +
            (others.Length > 0 ? $" (it has {string.Join(", ", others)} but no index naming them)" : "") +
            ". Download the model's safetensors weights into the folder (PyTorch .bin checkpoints are not read).", folder);
    }

    private static WeightPlan ReadIndex(string folder, string indexPath)
    {
        CalmException Invalid(string what, Exception? inner = null) => new(ErrorIds.ShardIndexInvalid, CalmErrorKind.InvalidData,
            $"{indexPath}: {what}. Download the model folder again.", indexPath, inner);
        byte[] bytes;
        try
        {
            if (new FileInfo(indexPath).Length > 256L * 1024 * 1024) throw Invalid("the index is implausibly large");
            bytes = File.ReadAllBytes(indexPath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw Invalid($"cannot read it ({e.Message})", e); }
        JsonDocument doc;
        try { doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 16 }); }
        catch (JsonException e) { throw Invalid($"not valid JSON ({e.Message})", e); }
        using (doc)
        {
            try
            {
                if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object)
                    throw Invalid("it has no 'weight_map' object");
                var map = new List<(string, string)>();
                var shards = new SortedSet<string>(StringComparer.Ordinal);
                string root = folder.EndsWith(System.IO.Path.DirectorySeparatorChar) ? folder : folder + System.IO.Path.DirectorySeparatorChar;
                foreach (var p in wm.EnumerateObject())
                {
                    if (p.Value.ValueKind != JsonValueKind.String || string.IsNullOrEmpty(p.Value.GetString()))
                        throw Invalid($"weight_map entry '{p.Name}' is not a file name");
                    string shard = p.Value.GetString()!;
                    if (!shards.Contains(shard)) CheckShardPath(folder, root, indexPath, shard);
                    shards.Add(shard);
                    map.Add((p.Name, shard));
                }
                if (map.Count == 0) throw Invalid("weight_map is empty");
                foreach (var s in shards)
                {
                    string full = System.IO.Path.Combine(folder, s);
                    if (!File.Exists(full))
                        throw new CalmException(ErrorIds.ShardMissing, CalmErrorKind.ObjectNotFound,
                            $"{full}: shard named by {IndexFileName} does not exist ({shards.Count} shards listed). " +
                            "Download the missing shard (an interrupted download?).", full);
                }
                return new WeightPlan(shards.ToArray(), map);
            }
            catch (InvalidOperationException e) { throw Invalid($"it holds an undecodable string ({e.Message})", e); }
        }
    }

    /// <summary>A shard must be a plain relative path inside the folder: no root, no '..', nothing resolving outside.</summary>
    private static void CheckShardPath(string folder, string root, string indexPath, string shard)
    {
        CalmException Outside() => new(ErrorIds.ShardPathOutsideModel, CalmErrorKind.InvalidData,
            $"{indexPath}: shard path '{(shard.Length > 100 ? shard[..100] + "..." : shard)}' points outside the model folder {folder}; refused. " +
            "Model files may only name files inside their own folder.", indexPath);
        if (shard.IndexOf('\0') >= 0 || System.IO.Path.IsPathRooted(shard) || shard.StartsWith('/') || shard.StartsWith('\\') ||
            (shard.Length >= 2 && shard[1] == ':'))
            throw Outside();
        foreach (var seg in shard.Split('/', '\\'))
            if (seg == "..") throw Outside();
        string full;
        try { full = System.IO.Path.GetFullPath(System.IO.Path.Combine(folder, shard)); }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException) { throw Outside(); }
        if (!full.StartsWith(root, StringComparison.Ordinal)) throw Outside();
    }

    /// <summary>Tensors by name, with checked access and a record of which were used.</summary>
    private sealed class TensorSet(Dictionary<string, Tensor> all, string folder, IReadOnlyList<string> files, Quant.CheckpointFp8Reader fp8)
    {
        private readonly HashSet<string> _used = new(StringComparer.Ordinal);
        public int UsedCount => _used.Count;
        /// <summary>fp8 checkpoint tensors read (with their scales) by <see cref="Proj"/>.</summary>
        public int Fp8Count { get; private set; }

        /// <summary>
        /// A projection matrix (or the classifier): as <see cref="Need"/>, and an fp8 (F8_E4M3) tensor of a
        /// pre-quantized checkpoint is returned with one scale per row from its scale tensor (<see cref="Quant.CheckpointFp8Reader"/>).
        /// </summary>
        public Tensor Proj(string name, params long[] shape)
        {
            if (!all.TryGetValue(name, out var t) || t.DType != DType.F8E4M3) return Need(name, shape);
            CheckShape(t, shape);
            Tensor? scale = null;
            foreach (var sn in Quant.CheckpointFp8Reader.ScaleNames(name))
                if (all.TryGetValue(sn, out scale)) break;
            if (scale is null)
                throw new CalmException(ErrorIds.QuantScaleMissing, CalmErrorKind.InvalidData,
                    $"{t.Source}: the fp8 weight '{name}' has no scale tensor ({string.Join(" or ", Quant.CheckpointFp8Reader.ScaleNames(name).Take(2))}). " +
                    "fp8 checkpoints store one beside each quantized weight; download the model folder again.", $"{t.Source}:{name}");
            var r = fp8.ToPerRow(t, scale);
            _used.Add(name); _used.Add(scale.Name);
            Fp8Count++;
            return r;
        }
        public IEnumerable<string> Unused() => all.Keys.Where(k => !_used.Contains(k));
        public bool Has(string name) => all.ContainsKey(name);

        public Tensor Need(string name, params long[] shape)
        {
            if (!all.TryGetValue(name, out var t))
                throw new CalmException(ErrorIds.TensorMissing, CalmErrorKind.InvalidData,
                    $"{folder}: tensor '{name}' {Tensor.ShapeText(shape)} is missing from {string.Join(", ", files.Take(4))}{(files.Count > 4 ? ", ..." : "")}. " +
                    "The weights do not match config.json; download the model folder again.", name);
            return Check(t, shape);
        }

        public Tensor? Maybe(string name, params long[] shape) => all.TryGetValue(name, out var t) ? Check(t, shape) : null;

        private Tensor Check(Tensor t, long[] shape)
        {
            CheckShape(t, shape);
            if (!DTypes.IsWeightType(t.DType))
                throw new CalmException(ErrorIds.TensorDTypeUnsupported, CalmErrorKind.NotSupported,
                    $"{t.Source}: tensor '{t.Name}' is {DTypes.Name(t.DType)}; Calm reads it only as f32, f16 or bf16" +
                    (t.DType == DType.F8E4M3 ? " (fp8 is read for the projection matrices and the classifier of an fp8 checkpoint)" : "") +
                    ". Use an unquantized (f32/f16/bf16) copy of the model.", $"{t.Source}:{t.Name}");
            _used.Add(t.Name);
            return t;
        }

        private static void CheckShape(Tensor t, long[] shape)
        {
            if (!t.Shape.AsSpan().SequenceEqual(shape))
                throw new CalmException(ErrorIds.TensorShapeMismatch, CalmErrorKind.InvalidData,
                    $"{t.Source}: tensor '{t.Name}' has shape {Tensor.ShapeText(t.Shape)} but config.json needs {Tensor.ShapeText(shape)}. " +
                    "The weights and config.json belong to different models; download the model folder again.", $"{t.Source}:{t.Name}");
        }
    }

    private static ModelWeights MapWeights(ModelConfig c, TensorSet s, IProgress<LoadProgress>? progress, string activity, CancellationToken ct)
    {
        long V = c.VocabSize, D = c.HiddenSize, F = c.IntermediateSize, Q = c.QDim, KV = c.KvDim, Hd = c.HeadDim, E = c.NumExperts;
        var embedding = s.Need("model.embed_tokens.weight", V, D);
        var layers = new LayerWeights[c.NumLayers];
        for (int i = 0; i < c.NumLayers; i++)
        {
            ct.ThrowIfCancellationRequested();
            progress?.Report(new LoadProgress(activity, $"Validating layer {i + 1} of {c.NumLayers}", 0.5 + 0.5 * i / c.NumLayers));
            string p = $"model.layers.{i}.";
            string a = p + "self_attn.";
            Tensor wq, wk, wv;
            if (c.Architecture == Architecture.Phi3)
            {
                // qkv_proj [Q + 2KV, D]: rows q, then k, then v.
                var qkv = s.Proj(a + "qkv_proj.weight", Q + 2 * KV, D);
                wq = qkv.SliceRows(0, Q, a + "q_proj.weight");
                wk = qkv.SliceRows(Q, KV, a + "k_proj.weight");
                wv = qkv.SliceRows(Q + KV, KV, a + "v_proj.weight");
            }
            else
            {
                wq = s.Proj(a + "q_proj.weight", Q, D);
                wk = s.Proj(a + "k_proj.weight", KV, D);
                wv = s.Proj(a + "v_proj.weight", KV, D);
            }

            Tensor? gate = null, up = null, down = null, bGate = null, bUp = null, bDown = null, router = null;
            Tensor[]? eGate = null, eUp = null, eDown = null;
            if (c.IsMoE)
                (router, eGate, eUp, eDown) = MapExperts(c, s, p, E, D, F);
            else if (c.Architecture == Architecture.Phi3)
            {
                // gate_up_proj [2F, D]: rows gate, then up.
                var gu = s.Proj(p + "mlp.gate_up_proj.weight", 2 * F, D);
                gate = gu.SliceRows(0, F, p + "mlp.gate_proj.weight");
                up = gu.SliceRows(F, F, p + "mlp.up_proj.weight");
                down = s.Proj(p + "mlp.down_proj.weight", D, F);
            }
            else
            {
                gate = s.Proj(p + "mlp.gate_proj.weight", F, D);
                up = s.Proj(p + "mlp.up_proj.weight", F, D);
                down = s.Proj(p + "mlp.down_proj.weight", D, F);
                if (c.MlpBias)
                {
                    bGate = s.Need(p + "mlp.gate_proj.bias", F);
                    bUp = s.Need(p + "mlp.up_proj.bias", F);
                    bDown = s.Need(p + "mlp.down_proj.bias", D);
                }
            }

            layers[i] = new LayerWeights
            {
                AttnNorm = s.Need(p + "input_layernorm.weight", D),
                Wq = wq, Wk = wk, Wv = wv,
                Wo = s.Proj(a + "o_proj.weight", D, Q),
                Bq = c.QkvBias ? s.Need(a + "q_proj.bias", Q) : null,
                Bk = c.QkvBias ? s.Need(a + "k_proj.bias", KV) : null,
                Bv = c.QkvBias ? s.Need(a + "v_proj.bias", KV) : null,
                Bo = c.OutputBias ? s.Need(a + "o_proj.bias", D) : null,
                QNorm = c.QkNorm ? s.Need(a + "q_norm.weight", Hd) : null,
                KNorm = c.QkNorm ? s.Need(a + "k_norm.weight", Hd) : null,
                FfnNorm = s.Need(p + "post_attention_layernorm.weight", D),
                WGate = gate, WUp = up, WDown = down, BGate = bGate, BUp = bUp, BDown = bDown,
                Router = router, ExpertGate = eGate, ExpertUp = eUp, ExpertDown = eDown,
            };
        }
        var norm = s.Need("model.norm.weight", D);
        // Tied: the classifier is the embedding (save_pretrained drops lm_head.weight then).
        var lmHead = c.TieWordEmbeddings ? embedding : s.Proj("lm_head.weight", V, D);
        return new ModelWeights { Embedding = embedding, Layers = layers, FinalNorm = norm, LmHead = lmHead };
    }

    /// <summary>
    /// Mixtral experts, in either layout:
    ///   per expert (transformers 4): block_sparse_moe.gate.weight [E, D], experts.e.w1 [F, D] (gate), w3 [F, D] (up), w2 [D, F] (down)
    ///                                (also accepted under mlp., and with gate_proj/up_proj/down_proj names)
    ///   stacked (transformers 5):    mlp.gate.weight [E, D], mlp.experts.gate_up_proj [E, 2F, D] (gate rows first), mlp.experts.down_proj [E, D, F]
    /// </summary>
    private static (Tensor, Tensor[], Tensor[], Tensor[]) MapExperts(ModelConfig c, TensorSet s, string p, long E, long D, long F)
    {
        var gate = new Tensor[E]; var up = new Tensor[E]; var down = new Tensor[E];
        foreach (var block in new[] { "mlp.", "block_sparse_moe." })
        {
            if (!s.Has(p + block + "experts.gate_up_proj") && !s.Has(p + block + "experts.gate_up_proj.weight")) continue;
            string gu = s.Has(p + block + "experts.gate_up_proj") ? p + block + "experts.gate_up_proj" : p + block + "experts.gate_up_proj.weight";
            string dn = s.Has(p + block + "experts.down_proj.weight") ? p + block + "experts.down_proj.weight" : p + block + "experts.down_proj";
            var router = s.Need(p + block + "gate.weight", E, D);
            var gateUp = s.Proj(gu, E, 2 * F, D);
            var downAll = s.Proj(dn, E, D, F);
            for (int e = 0; e < E; e++)
            {
                var ge = gateUp.Index0(e, $"{gu}[{e}]");
                gate[e] = ge.SliceRows(0, F, $"{p}{block}experts.{e}.gate");
                up[e] = ge.SliceRows(F, F, $"{p}{block}experts.{e}.up");
                down[e] = downAll.Index0(e, $"{dn}[{e}]");
            }
            return (router, gate, up, down);
        }
        // Per-expert tensors under block_sparse_moe (transformers 4) or mlp, named w1/w3/w2 or gate_proj/up_proj/down_proj.
        string b = p + "block_sparse_moe.";
        var (g, u, d) = ("w1", "w3", "w2");
        foreach (var block in new[] { "block_sparse_moe.", "mlp." })
        {
            if (s.Has($"{p}{block}experts.0.w1.weight")) { b = p + block; break; }
            if (s.Has($"{p}{block}experts.0.gate_proj.weight")) { b = p + block; (g, u, d) = ("gate_proj", "up_proj", "down_proj"); break; }
        }
        var r = s.Need(b + "gate.weight", E, D);
        for (int e = 0; e < E; e++)
        {
            gate[e] = s.Proj($"{b}experts.{e}.{g}.weight", F, D);
            up[e] = s.Proj($"{b}experts.{e}.{u}.weight", F, D);
            down[e] = s.Proj($"{b}experts.{e}.{d}.weight", D, F);
        }
        return (r, gate, up, down);
    }
}
