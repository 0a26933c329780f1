using System.Text.Json;

namespace Calm.Engine.Model;

/// <summary>
/// Reads Hugging Face config.json into <see cref="ModelConfig"/> with transformers' own defaults per model_type,
/// and generation_config.json into <see cref="GenerationConfig"/>. Accepts both the transformers 4 layout
/// (rope_theta, rope_scaling, torch_dtype) and the transformers 5 one (rope_parameters, dtype).
/// </summary>
public static class ConfigReader
{
    /// <summary>model_type values Calm runs.</summary>
    public static readonly IReadOnlyList<string> SupportedModelTypes = new[] { "llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "mixtral" };

    private const long MaxConfigBytes = 16L * 1024 * 1024;

    /// <summary>transformers' defaults for fields a config may omit (from each family's Config class).</summary>
    private sealed record Defaults(int MaxPos, double Eps, double RopeTheta, int? KvHeads, int? HeadDim, bool Tie, string Act, int? SlidingWindow);

    private static Defaults DefaultsFor(Architecture a) => a switch
    {
        Architecture.Llama => new(2048, 1e-6, 10000.0, null, null, false, "silu", null),
        Architecture.Mistral => new(4096 * 32, 1e-6, 10000.0, 8, null, false, "silu", 4096),
        Architecture.Qwen2 => new(32768, 1e-6, 10000.0, 32, null, false, "silu", 4096),
        Architecture.Qwen3 => new(32768, 1e-6, 10000.0, 32, 128, false, "silu", 4096),
        Architecture.Gemma => new(8192, 1e-6, 10000.0, 16, 256, true, "gelu_pytorch_tanh", null),
        Architecture.Phi3 => new(4096, 1e-5, 10000.0, null, null, false, "silu", null),
        Architecture.Mixtral => new(4096 * 32, 1e-5, 1e6, 8, null, false, "silu", null),
        _ => throw new ArgumentOutOfRangeException(nameof(a)),
    };

    /// <summary>Reads and validates config.json at <paramref name="path"/>.</summary>
    public static ModelConfig Read(string path)
    {
        byte[] bytes = ReadSmallFile(path, ErrorIds.ConfigInvalid);
        return Parse(bytes, path);
    }

    /// <summary>
    /// Reads config.json once for a model folder: the model and, when it has a quantization_config, the pre-quantized
    /// checkpoint's format (<see cref="Quant.CheckpointQuantization"/>; other quantization methods refused).
    /// </summary>
    public static (ModelConfig Config, Quant.CheckpointQuantization? Quantization) ReadWithQuantization(string path)
    {
        byte[] bytes = ReadSmallFile(path, ErrorIds.ConfigInvalid);
        using var doc = ParseJson(bytes, path, "config.json");
        var config = Build(doc, path);
        return (config, Quant.CheckpointQuantization.FromConfig(doc.RootElement, path));
    }

    /// <summary>Parses config.json content; <paramref name="source"/> names the file in errors.</summary>
    public static ModelConfig Parse(string json, string source) => Parse(System.Text.Encoding.UTF8.GetBytes(json), source);

    public static ModelConfig Parse(ReadOnlyMemory<byte> json, string source)
    {
        using var doc = ParseJson(json, source, "config.json");
        return Build(doc, source);
    }

    private static ModelConfig Build(JsonDocument doc, string source)
    {
        var r = new Reader(doc.RootElement, source);
        try { return Build(r, source); }
        catch (InvalidOperationException e) // undecodable string escapes
        {
            throw r.Fail($"holds an undecodable string ({e.Message})");
        }
    }

    /// <summary>Reads generation_config.json at <paramref name="path"/>.</summary>
    public static GenerationConfig ReadGeneration(string path) => ParseGeneration(ReadSmallFile(path, ErrorIds.ConfigInvalid), path);

    public static GenerationConfig ParseGeneration(ReadOnlyMemory<byte> json, string source)
    {
        using var doc = ParseJson(json, source, "generation_config.json");
        var r = new Reader(doc.RootElement, source);
        try
        {
            return new GenerationConfig
            {
                BosTokenId = r.TokenId("bos_token_id"),
                EosTokenIds = r.TokenIds("eos_token_id"),
                PadTokenId = r.TokenId("pad_token_id"),
                Temperature = r.Double("temperature"),
                TopK = r.Int("top_k"),
                TopP = r.Double("top_p"),
                DoSample = r.Bool("do_sample"),
            };
        }
        catch (InvalidOperationException e)
        {
            throw r.Fail($"holds an undecodable string ({e.Message})");
        }
    }

    private static byte[] ReadSmallFile(string path, string errorId)
    {
        try
        {
            var info = new FileInfo(path);
            if (!info.Exists)
                throw new CalmException(ErrorIds.ConfigMissing, CalmErrorKind.ObjectNotFound, $"{path} does not exist.", path);
            if (info.Length > MaxConfigBytes)
                throw new CalmException(errorId, CalmErrorKind.InvalidData,
                    $"{path} is {info.Length} bytes; a model config is at most a few kilobytes. Use the model's own config file.", path);
            return File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CalmException(errorId, CalmErrorKind.ResourceUnavailable, $"Cannot read {path} ({e.Message}). Check that it is readable.", path, e);
        }
    }

    private static JsonDocument ParseJson(ReadOnlyMemory<byte> json, string source, string what)
    {
        if (!System.Text.Unicode.Utf8.IsValid(json.Span))
            throw new CalmException(ErrorIds.ConfigInvalid, CalmErrorKind.InvalidData,
                $"{source}: {what} is not valid UTF-8 text. Restore the model's own {what}.", source);
        try
        {
            var doc = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 32, CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                var kind = doc.RootElement.ValueKind;
                doc.Dispose();
                throw new CalmException(ErrorIds.ConfigInvalid, CalmErrorKind.InvalidData,
                    $"{source}: {what} must hold a JSON object, found {kind}. Use the model's own {what}.", source);
            }
            return doc;
        }
        catch (JsonException e)
        {
            throw new CalmException(ErrorIds.ConfigInvalid, CalmErrorKind.InvalidData,
                $"{source}: {what} is not valid JSON ({e.Message}). Restore the model's own {what}.", source, e);
        }
    }

    private static ModelConfig Build(Reader r, string source)
    {
        string? modelType = r.String("model_type");
        if (modelType is null)
            throw new CalmException(ErrorIds.ConfigInvalid, CalmErrorKind.InvalidData,
                $"{source}: the required field 'model_type' is missing. Supported model_types: {string.Join(", ", SupportedModelTypes)}.", source);
        Architecture arch = modelType switch
        {
            "llama" => Architecture.Llama,
            "mistral" => Architecture.Mistral,
            "qwen2" => Architecture.Qwen2,
            "qwen3" => Architecture.Qwen3,
            "gemma" => Architecture.Gemma,
            "phi3" => Architecture.Phi3,
            "mixtral" => Architecture.Mixtral,
            _ => throw new CalmException(ErrorIds.UnsupportedArchitecture, CalmErrorKind.NotSupported,
                $"{source}: model_type '{(modelType.Length > 60 ? modelType[..60] + "..." : modelType)}' is not supported. " +
                $"Calm runs these model_types: {string.Join(", ", SupportedModelTypes)}.", source),
        };
        var d = DefaultsFor(arch);

        int vocab = r.RequiredInt("vocab_size");
        int hidden = r.RequiredInt("hidden_size");
        int inter = r.RequiredInt("intermediate_size");
        int layers = r.RequiredInt("num_hidden_layers");
        int heads = r.RequiredInt("num_attention_heads");
        if (heads <= 0) throw r.Fail($"num_attention_heads must be positive (got {heads})");
        if (hidden <= 0) throw r.Fail($"hidden_size must be positive (got {hidden})");
        int kvHeads = r.Int("num_key_value_heads") ?? d.KvHeads ?? heads;
        int? headDimField = r.Int("head_dim") ?? d.HeadDim;
        int headDim;
        if (headDimField is int hd) headDim = hd;
        else
        {
            if (hidden % heads != 0)
                throw r.Fail($"hidden_size ({hidden}) is not divisible by num_attention_heads ({heads}) and there is no head_dim");
            headDim = hidden / heads;
        }

        // RoPE: transformers 5 writes rope_parameters {rope_type, rope_theta, factor, ...}; 4 wrote rope_theta + rope_scaling.
        JsonElement? ropeBlock = r.Object("rope_parameters") ?? r.Object("rope_scaling");
        double ropeTheta = r.Double("rope_theta") ?? d.RopeTheta;
        double partial = r.Double("partial_rotary_factor") ?? 1.0;
        RopeScaling? scaling = null;
        if (ropeBlock is JsonElement rb)
        {
            var rr = new Reader(rb, source, r.Field(r.Object("rope_parameters") is not null ? "rope_parameters" : "rope_scaling"));
            ropeTheta = rr.Double("rope_theta") ?? ropeTheta;
            partial = rr.Double("partial_rotary_factor") ?? partial;
            scaling = ReadRopeScaling(rr, r);
        }

        bool attnBias = r.Bool("attention_bias") ?? false;
        bool mlpBias = r.Bool("mlp_bias") ?? false;
        bool qkvBias = false, outBias = false, qkNorm = false, scaleEmb = false, normAddOne = false;
        int? sliding = null;
        int experts = 0, perTok = 0;
        string act = r.String("hidden_act") ?? d.Act;
        switch (arch)
        {
            case Architecture.Llama:
                qkvBias = outBias = attnBias;
                break;
            case Architecture.Mistral:
                sliding = r.IntOrNull("sliding_window", d.SlidingWindow);
                mlpBias = false;
                break;
            case Architecture.Qwen2:
            {
                qkvBias = true; // Qwen2Attention: q/k/v always carry a bias, o_proj never
                mlpBias = false;
                if (r.Bool("use_sliding_window") == true)
                {
                    int? w = r.IntOrNull("sliding_window", d.SlidingWindow);
                    int maxWindowLayers = r.Int("max_window_layers") ?? 28;
                    // transformers: layer i slides when i >= max_window_layers.
                    if (w is not null && maxWindowLayers < layers)
                    {
                        if (maxWindowLayers > 0)
                            throw new CalmException(ErrorIds.UnsupportedArchitecture, CalmErrorKind.NotSupported,
                                $"{source}: use_sliding_window with max_window_layers {maxWindowLayers} < num_hidden_layers {layers} mixes sliding and " +
                                "full-attention layers, which Calm does not run yet. Set use_sliding_window to false to run with full attention.", source);
                        sliding = w;
                    }
                }
                break;
            }
            case Architecture.Qwen3:
                qkvBias = outBias = attnBias;
                qkNorm = true;
                mlpBias = false;
                if (r.Bool("use_sliding_window") == true)
                    throw new CalmException(ErrorIds.UnsupportedArchitecture, CalmErrorKind.NotSupported,
                        $"{source}: qwen3 with use_sliding_window true is not supported yet. Set it to false to run with full attention.", source);
                break;
            case Architecture.Gemma:
                qkvBias = outBias = attnBias;
                mlpBias = false;
                scaleEmb = true;
                normAddOne = true;
                // hidden_activation wins over hidden_act; Gemma's original configs say "gelu" and mean the tanh
                // approximation, which is what transformers runs for them.
                act = r.String("hidden_activation") ?? act;
                break;
            case Architecture.Phi3:
                sliding = r.IntOrNull("sliding_window", null);
                mlpBias = false;
                break;
            case Architecture.Mixtral:
                sliding = r.IntOrNull("sliding_window", null);
                mlpBias = false;
                experts = r.Int("num_local_experts") ?? 8;
                perTok = r.Int("num_experts_per_tok") ?? 2;
                if (experts <= 0) throw r.Fail($"num_local_experts must be positive (got {experts})");
                break;
        }
        Activation activation = act switch
        {
            "silu" or "swish" => Activation.Silu,
            "gelu_pytorch_tanh" or "gelu_new" or "gelu_fast" => Activation.GeluTanh,
            "gelu" => arch == Architecture.Gemma ? Activation.GeluTanh : Activation.Gelu,
            _ => throw new CalmException(ErrorIds.UnsupportedArchitecture, CalmErrorKind.NotSupported,
                $"{source}: activation '{(act.Length > 40 ? act[..40] : act)}' is not supported (supported: silu, gelu, gelu_pytorch_tanh).", source),
        };

        if (scaling is { Type: RopeScalingType.LongRope })
        {
            // Phi-3 keeps original_max_position_embeddings at the top level.
            int omp = scaling.OriginalMaxPositionEmbeddings > 0 ? scaling.OriginalMaxPositionEmbeddings
                : r.Int("original_max_position_embeddings") ?? r.Int("max_position_embeddings") ?? d.MaxPos;
            scaling = scaling with { OriginalMaxPositionEmbeddings = omp };
            int pairs = (int)(headDim * partial) / 2;
            if (scaling.ShortFactor!.Length != pairs || scaling.LongFactor!.Length != pairs)
                throw r.Fail($"rope scaling short_factor/long_factor must have {pairs} entries (rotary dims / 2), got {scaling.ShortFactor.Length} and {scaling.LongFactor.Length}");
        }

        DType dtype = DType.BF16;
        string? dtText = r.String("dtype") ?? r.String("torch_dtype");
        if (dtText is not null && DTypes.TryParseName(dtText, out var parsed)) dtype = parsed;

        var config = new ModelConfig
        {
            Architecture = arch,
            ModelType = modelType,
            VocabSize = vocab,
            HiddenSize = hidden,
            IntermediateSize = inter,
            NumLayers = layers,
            NumHeads = heads,
            NumKvHeads = kvHeads,
            HeadDim = headDim,
            MaxPositionEmbeddings = r.Int("max_position_embeddings") ?? d.MaxPos,
            RmsNormEps = r.Double("rms_norm_eps") ?? d.Eps,
            RopeTheta = ropeTheta,
            RopeScaling = scaling,
            PartialRotaryFactor = partial,
            TieWordEmbeddings = r.Bool("tie_word_embeddings") ?? d.Tie,
            QkvBias = qkvBias,
            OutputBias = outBias,
            MlpBias = mlpBias,
            QkNorm = qkNorm,
            SlidingWindow = sliding,
            HiddenAct = activation,
            ScaleEmbeddings = scaleEmb,
            NormAddOne = normAddOne,
            NumExperts = experts,
            NumExpertsPerToken = perTok,
            DType = dtype,
            BosTokenId = r.TokenId("bos_token_id"),
            EosTokenIds = r.TokenIds("eos_token_id"),
        };
        config.Validate(source);
        if (config.BosTokenId is int bos && bos >= vocab) throw r.Fail($"bos_token_id {bos} is outside the vocabulary (vocab_size {vocab})");
        foreach (var e in config.EosTokenIds)
            if (e >= vocab) throw r.Fail($"eos_token_id {e} is outside the vocabulary (vocab_size {vocab})");
        return config;
    }

    private static RopeScaling? ReadRopeScaling(Reader rr, Reader top)
    {
        string? type = rr.String("rope_type") ?? rr.String("type");
        switch (type)
        {
            case null:
            case "default":
                return null;
            case "linear":
            case "dynamic":
            {
                double f = rr.Double("factor") ?? throw rr.Fail("'factor' is required for rope type " + type);
                if (!(f >= 1) || double.IsInfinity(f)) throw rr.Fail($"'factor' must be >= 1 (got {f})");
                return new RopeScaling
                {
                    Type = type == "linear" ? RopeScalingType.Linear : RopeScalingType.Dynamic, Factor = f,
                    OriginalMaxPositionEmbeddings = rr.Int("original_max_position_embeddings") ?? top.Int("max_position_embeddings") ?? 0,
                };
            }
            case "llama3":
            {
                double f = rr.Double("factor") ?? throw rr.Fail("'factor' is required for rope type llama3");
                double lo = rr.Double("low_freq_factor") ?? throw rr.Fail("'low_freq_factor' is required for rope type llama3");
                double hi = rr.Double("high_freq_factor") ?? throw rr.Fail("'high_freq_factor' is required for rope type llama3");
                int omp = rr.Int("original_max_position_embeddings") ?? throw rr.Fail("'original_max_position_embeddings' is required for rope type llama3");
                if (!(f >= 1) || double.IsInfinity(f)) throw rr.Fail($"'factor' must be >= 1 (got {f})");
                if (!(lo > 0) || !(hi > lo) || double.IsInfinity(hi)) throw rr.Fail($"need 0 < low_freq_factor < high_freq_factor (got {lo}, {hi})");
                if (omp <= 0) throw rr.Fail($"'original_max_position_embeddings' must be positive (got {omp})");
                return new RopeScaling { Type = RopeScalingType.Llama3, Factor = f, LowFreqFactor = lo, HighFreqFactor = hi, OriginalMaxPositionEmbeddings = omp };
            }
            case "longrope":
            case "su":
            {
                double[] sf = rr.Doubles("short_factor") ?? throw rr.Fail("'short_factor' is required for rope type longrope");
                double[] lf = rr.Doubles("long_factor") ?? throw rr.Fail("'long_factor' is required for rope type longrope");
                foreach (var x in sf.Concat(lf))
                    if (!(x > 0) || double.IsInfinity(x)) throw rr.Fail($"short_factor/long_factor entries must be positive (got {x})");
                return new RopeScaling
                {
                    Type = RopeScalingType.LongRope, ShortFactor = sf, LongFactor = lf,
                    Factor = rr.Double("factor") ?? 1.0,
                    OriginalMaxPositionEmbeddings = rr.Int("original_max_position_embeddings") ?? 0,
                };
            }
            default:
                throw new CalmException(ErrorIds.UnsupportedArchitecture, CalmErrorKind.NotSupported,
                    $"{rr.Source}: {rr.Field("rope_type")} '{(type.Length > 40 ? type[..40] : type)}' is not supported (supported: default, linear, dynamic, llama3, longrope).",
                    rr.Source);
        }
    }

    /// <summary>Typed, null-tolerant field access that turns every wrong type into Calm.ConfigInvalid naming the field.</summary>
    private sealed class Reader(JsonElement obj, string source, string prefix = "")
    {
        public string Source => source;
        public string Field(string name) => prefix.Length == 0 ? name : prefix + "." + name;

        public CalmException Fail(string what) => new(ErrorIds.ConfigInvalid, CalmErrorKind.InvalidData,
            $"{source}: {what}. Fix the config file or use the one saved with the model by Hugging Face transformers.", source);

        private JsonElement? Get(string name) =>
            obj.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

        public int RequiredInt(string name) => Int(name) ?? throw Fail($"the required field '{Field(name)}' is missing");

        public int? Int(string name)
        {
            if (Get(name) is not JsonElement v) return null;
            if (v.ValueKind == JsonValueKind.Number)
            {
                if (v.TryGetInt32(out int i)) return i;
                // 4096.0 is fine; 4096.5 or 1e30 is not.
                if (v.TryGetDouble(out double x) && x == Math.Floor(x) && x >= int.MinValue && x <= int.MaxValue) return (int)x;
            }
            throw Fail($"'{Field(name)}' must be an integer (got {Short(v)})");
        }

        /// <summary>An int that may be explicitly null (meaning "off"); absent gives the default.</summary>
        public int? IntOrNull(string name, int? dflt)
        {
            if (!obj.TryGetProperty(name, out var v)) return dflt;
            return v.ValueKind == JsonValueKind.Null ? null : Int(name);
        }

        public double? Double(string name)
        {
            if (Get(name) is not JsonElement v) return null;
            if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double x) && double.IsFinite(x)) return x;
            throw Fail($"'{Field(name)}' must be a finite number (got {Short(v)})");
        }

        public bool? Bool(string name)
        {
            if (Get(name) is not JsonElement v) return null;
            return v.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Fail($"'{Field(name)}' must be true or false (got {Short(v)})"),
            };
        }

        public string? String(string name)
        {
            if (Get(name) is not JsonElement v) return null;
            if (v.ValueKind != JsonValueKind.String) throw Fail($"'{Field(name)}' must be a string (got {Short(v)})");
            return v.GetString();
        }

        public JsonElement? Object(string name)
        {
            if (Get(name) is not JsonElement v) return null;
            if (v.ValueKind != JsonValueKind.Object) throw Fail($"'{Field(name)}' must be an object (got {Short(v)})");
            return v;
        }

        public double[]? Doubles(string name)
        {
            if (Get(name) is not JsonElement v) return null;
            if (v.ValueKind != JsonValueKind.Array) throw Fail($"'{Field(name)}' must be an array of numbers (got {Short(v)})");
            var r = new double[v.GetArrayLength()];
            int i = 0;
            foreach (var e in v.EnumerateArray())
            {
                if (e.ValueKind != JsonValueKind.Number || !e.TryGetDouble(out double x) || !double.IsFinite(x))
                    throw Fail($"'{Field(name)}[{i}]' must be a finite number (got {Short(e)})");
                r[i++] = x;
            }
            return r;
        }

        public int? TokenId(string name)
        {
            int? id = Int(name);
            if (id < 0) throw Fail($"'{Field(name)}' must not be negative (got {id})");
            return id;
        }

        /// <summary>eos_token_id: an int, a list of ints, or absent/null.</summary>
        public int[] TokenIds(string name)
        {
            if (Get(name) is not JsonElement v) return Array.Empty<int>();
            if (v.ValueKind == JsonValueKind.Number) return new[] { TokenId(name)!.Value };
            if (v.ValueKind != JsonValueKind.Array) throw Fail($"'{Field(name)}' must be an integer or a list of integers (got {Short(v)})");
            var ids = new List<int>();
            int i = 0;
            foreach (var e in v.EnumerateArray())
            {
                if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out int id) || id < 0)
                    throw Fail($"'{Field(name)}[{i}]' must be a non-negative integer (got {Short(e)})");
                if (!ids.Contains(id)) ids.Add(id);
                i++;
            }
            return ids.ToArray();
        }

        private static string Short(JsonElement v)
        {
            string t = v.GetRawText();
            return t.Length <= 40 ? t : t[..40] + "...";
        }
    }
}
