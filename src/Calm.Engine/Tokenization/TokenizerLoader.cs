using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Calm.Engine.Tokenization;

/// <summary>Reads tokenizer.json (Hugging Face tokenizers format) into the pieces <see cref="CalmTokenizer"/> runs.</summary>
internal static class TokenizerLoader
{
    internal const string Supported =
        "Supported: model BPE (byte-level with a split regex, as Llama 3, Qwen2/2.5/3, Mistral Nemo, OLMo 2; or SentencePiece-style " +
        "with byte_fallback, as Llama 2, TinyLlama, Mistral 7B, Gemma, Phi-3); normalizers NFC/NFD/NFKC/NFKD, Replace, Prepend, " +
        "Lowercase, Strip, Sequence; pre-tokenizers Split, ByteLevel, Metaspace, Digits, Sequence; decoders ByteLevel, Metaspace, " +
        "Replace, ByteFallback, Fuse, Strip, Sequence; post-processors TemplateProcessing, ByteLevel, Sequence; or a SentencePiece " +
        "tokenizer.model when there is no tokenizer.json.";

    public static CalmException Invalid(string where, string what) =>
        new(ErrorIds.TokenizerInvalid, CalmErrorKind.InvalidData,
            $"The tokenizer file '{where}' is not a valid tokenizer.json: {what}. Re-download the model's tokenizer files.", where);

    public static CalmException Unsupported(string where, string what) =>
        new(ErrorIds.TokenizerUnsupported, CalmErrorKind.NotSupported,
            $"The tokenizer in '{where}' uses {what}, which Calm does not support. {Supported}", where);

    internal sealed class Parts
    {
        public NormalizerStep? Normalizer;
        public PreTokenizerStep? PreTokenizer;
        public BpeModel Model = null!;
        public DecoderSpec Decoder = new();
        public List<AddedToken> Added = new();
        public int[] Prefix = Array.Empty<int>(), Suffix = Array.Empty<int>();
    }

    public static Parts Load(string path, bool allowLibrary = true)
    {
        // Hardening: System.Text.Json reports a wrong-typed or badly encoded value only when it is read (as
        // InvalidOperationException), and the BPE library rejects some vocabularies with ArgumentException; a
        // tokenizer.json is data, so all of these are Calm.TokenizerInvalid.
        try { return LoadCore(path, allowLibrary); }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or FormatException or OverflowException
                                      or KeyNotFoundException or IndexOutOfRangeException or DecoderFallbackException)
        {
            throw Invalid(path, $"a value cannot be used ({e.Message})");
        }
    }

    private static Parts LoadCore(string path, bool allowLibrary)
    {
        JsonDocument doc;
        try
        {
            var bytes = File.ReadAllBytes(path);
            if (!System.Text.Unicode.Utf8.IsValid(bytes))
                throw Invalid(path, "the file is not UTF-8 text");
            doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 256 });
        }
        catch (JsonException e) { throw new CalmException(ErrorIds.TokenizerInvalid, CalmErrorKind.InvalidData, $"The tokenizer file '{path}' is not valid JSON ({e.Message}). Re-download the model's tokenizer files.", path, e); }
        catch (IOException e) { throw new CalmException(ErrorIds.PathNotFound, CalmErrorKind.ObjectNotFound, $"Cannot read the tokenizer file '{path}': {e.Message}", path, e); }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw Invalid(path, "the top level is not a JSON object");
            var parts = new Parts();
            if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object) throw Invalid(path, "there is no \"model\" object");
            parts.Model = LoadModel(model, path, allowLibrary);
            if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind == JsonValueKind.Array)
                foreach (var a in added.EnumerateArray())
                {
                    if (a.ValueKind != JsonValueKind.Object || !a.TryGetProperty("id", out var idEl) || !idEl.TryGetInt32(out int id) || id < 0
                        || !a.TryGetProperty("content", out var cEl) || cEl.ValueKind != JsonValueKind.String)
                        throw Invalid(path, "an entry of \"added_tokens\" lacks an integer \"id\" or a string \"content\"");
                    parts.Added.Add(new AddedToken(id, cEl.GetString()!, Bool(a, "special", false), Bool(a, "normalized", true),
                        Bool(a, "lstrip", false), Bool(a, "rstrip", false), Bool(a, "single_word", false)));
                }
            parts.Normalizer = Prop(root, "normalizer") is { } n ? LoadNormalizer(n, path) : null;
            parts.PreTokenizer = Prop(root, "pre_tokenizer") is { } p ? LoadPreTokenizer(p, path) : null;
            if (Prop(root, "decoder") is { } d) LoadDecoder(d, parts.Decoder, path);
            if (Prop(root, "post_processor") is { } pp)
            {
                var pre = new List<int>(); var suf = new List<int>();
                LoadPostProcessor(pp, pre, suf, path);
                parts.Prefix = pre.ToArray(); parts.Suffix = suf.ToArray();
            }
            return parts;
        }
    }

    static JsonElement? Prop(JsonElement o, string name) =>
        o.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    static bool Bool(JsonElement o, string name, bool dflt) =>
        o.TryGetProperty(name, out var v) && (v.ValueKind == JsonValueKind.True || v.ValueKind == JsonValueKind.False) ? v.GetBoolean() : dflt;

    static string? Str(JsonElement o, string name) =>
        o.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    static string TypeOf(JsonElement o, string what, string path) =>
        o.ValueKind == JsonValueKind.Object && Str(o, "type") is { } t ? t : throw Invalid(path, $"a {what} has no \"type\"");

    static BpeModel LoadModel(JsonElement m, string path, bool allowLibrary)
    {
        string type = Str(m, "type") ?? (m.TryGetProperty("merges", out _) ? "BPE" : "?");
        if (type != "BPE") throw Unsupported(path, $"a model of type '{type}'");
        if (Prop(m, "dropout") is { } dr && dr.ValueKind == JsonValueKind.Number && dr.GetDouble() > 0)
            throw Unsupported(path, "BPE dropout (random segmentation)");
        if (!m.TryGetProperty("vocab", out var v) || v.ValueKind != JsonValueKind.Object) throw Invalid(path, "the model has no \"vocab\" object");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var e in v.EnumerateObject())
        {
            if (!e.Value.TryGetInt32(out int id) || id < 0) throw Invalid(path, $"the vocabulary entry '{e.Name}' has no non-negative integer id");
            vocab[e.Name] = id;
        }
        var merges = new List<(string, string)>();
        if (m.TryGetProperty("merges", out var ms) && ms.ValueKind == JsonValueKind.Array)
            foreach (var e in ms.EnumerateArray())
            {
                if (e.ValueKind == JsonValueKind.String)
                {
                    string s = e.GetString()!;
                    int sp = s.IndexOf(' ', 1 < s.Length ? 1 : 0);
                    if (sp <= 0 || sp == s.Length - 1) throw Invalid(path, $"the merge \"{s}\" is not two tokens separated by a space");
                    merges.Add((s[..sp], s[(sp + 1)..]));
                }
                else if (e.ValueKind == JsonValueKind.Array && e.GetArrayLength() == 2 && e[0].ValueKind == JsonValueKind.String && e[1].ValueKind == JsonValueKind.String)
                    merges.Add((e[0].GetString()!, e[1].GetString()!));
                else throw Invalid(path, "a merge is neither \"a b\" nor [\"a\", \"b\"]");
            }
        else throw Invalid(path, "the BPE model has no \"merges\" array");
        return new BpeModel(vocab, merges, Str(m, "unk_token"), Bool(m, "byte_fallback", false), Bool(m, "fuse_unk", false),
            Bool(m, "ignore_merges", false), Str(m, "continuing_subword_prefix"), Str(m, "end_of_word_suffix"), path, allowLibrary);
    }

    static NormalizerStep LoadNormalizer(JsonElement n, string path)
    {
        string t = TypeOf(n, "normalizer", path);
        switch (t)
        {
            case "NFC": return new UnicodeNormalizerStep(NormalizationForm.FormC);
            case "NFD": return new UnicodeNormalizerStep(NormalizationForm.FormD);
            case "NFKC": return new UnicodeNormalizerStep(NormalizationForm.FormKC);
            case "NFKD": return new UnicodeNormalizerStep(NormalizationForm.FormKD);
            case "Lowercase": return new LowercaseNormalizerStep();
            case "Strip": return new StripNormalizerStep(Bool(n, "strip_left", true), Bool(n, "strip_right", true));
            case "Prepend": return new PrependNormalizerStep(Str(n, "prepend") ?? throw Invalid(path, "a Prepend normalizer has no \"prepend\""));
            case "Replace":
            {
                var (lit, rx) = Pattern(n, path);
                return new ReplaceNormalizerStep(lit, rx, Str(n, "content") ?? throw Invalid(path, "a Replace normalizer has no \"content\""));
            }
            case "Sequence":
                if (!n.TryGetProperty("normalizers", out var arr) || arr.ValueKind != JsonValueKind.Array) throw Invalid(path, "a Sequence normalizer has no \"normalizers\" array");
                return new SequenceNormalizerStep(arr.EnumerateArray().Select(x => LoadNormalizer(x, path)).ToArray());
            default: throw Unsupported(path, $"the normalizer '{t}'");
        }
    }

    static (string? Literal, Regex? Regex) Pattern(JsonElement o, string path)
    {
        if (!o.TryGetProperty("pattern", out var p) || p.ValueKind != JsonValueKind.Object) throw Invalid(path, "a Split/Replace has no \"pattern\"");
        if (Str(p, "String") is { } s) return (s, null);
        if (Str(p, "Regex") is { } r)
        {
            try { return (null, new Regex(r, RegexOptions.Compiled | RegexOptions.CultureInvariant)); }
            catch (ArgumentException e) { throw Unsupported(path, $"the regex /{r}/ that .NET cannot compile ({e.Message})"); }
        }
        throw Invalid(path, "a pattern is neither {\"String\": ...} nor {\"Regex\": ...}");
    }

    static PreTokenizerStep LoadPreTokenizer(JsonElement p, string path)
    {
        string t = TypeOf(p, "pre-tokenizer", path);
        switch (t)
        {
            case "Sequence":
                if (!p.TryGetProperty("pretokenizers", out var arr) || arr.ValueKind != JsonValueKind.Array) throw Invalid(path, "a Sequence pre-tokenizer has no \"pretokenizers\" array");
                return new SequencePreTokenizerStep(arr.EnumerateArray().Select(x => LoadPreTokenizer(x, path)).ToArray());
            case "Split":
            {
                var (lit, rx) = Pattern(p, path);
                rx ??= new Regex(Regex.Escape(lit!), RegexOptions.CultureInvariant);
                string b = Str(p, "behavior") ?? "Isolated";
                if (!Enum.TryParse<SplitBehavior>(b, out var beh)) throw Unsupported(path, $"the Split behavior '{b}'");
                return new SplitStep(rx, beh, Bool(p, "invert", false));
            }
            case "ByteLevel": return new ByteLevelStep(Bool(p, "add_prefix_space", true), Bool(p, "use_regex", true));
            case "Metaspace":
            {
                string rep = Str(p, "replacement") ?? "\u2581";
                if (rep.Length != 1) throw Unsupported(path, $"a Metaspace replacement '{rep}' that is not one char");
                string scheme = Str(p, "prepend_scheme") ?? (Bool(p, "add_prefix_space", true) ? "always" : "never");
                if (scheme is not ("always" or "first" or "never")) throw Unsupported(path, $"the Metaspace prepend_scheme '{scheme}'");
                return new MetaspaceStep(rep[0], scheme, Bool(p, "split", true));
            }
            case "Digits":
                return new SplitStep(new Regex(Bool(p, "individual_digits", false) ? @"\p{N}" : @"\p{N}+", RegexOptions.Compiled), SplitBehavior.Isolated, false);
            default: throw Unsupported(path, $"the pre-tokenizer '{t}'");
        }
    }

    static void LoadDecoder(JsonElement d, DecoderSpec spec, string path)
    {
        string t = TypeOf(d, "decoder", path);
        switch (t)
        {
            case "Sequence":
                if (!d.TryGetProperty("decoders", out var arr) || arr.ValueKind != JsonValueKind.Array) throw Invalid(path, "a Sequence decoder has no \"decoders\" array");
                foreach (var x in arr.EnumerateArray()) LoadDecoder(x, spec, path);
                break;
            case "ByteLevel": spec.ByteLevel = true; break;
            case "ByteFallback": spec.ByteFallback = true; break;
            case "Fuse": break;
            case "Replace":
            {
                var (lit, _) = Pattern(d, path);
                if (lit == null) throw Unsupported(path, "a Replace decoder with a regex pattern");
                spec.Replaces.Add((lit, Str(d, "content") ?? ""));
                break;
            }
            case "Strip":
            {
                string c = Str(d, "content") ?? " ";
                int start = d.TryGetProperty("start", out var s) && s.TryGetInt32(out int si) ? si : 0;
                int stop = d.TryGetProperty("stop", out var e) && e.TryGetInt32(out int ei) ? ei : 0;
                if (stop != 0 || c.Length != 1) throw Unsupported(path, "a Strip decoder that strips at the end or strips more than one char kind");
                spec.StripStart = start; spec.StripChar = c[0];
                break;
            }
            case "Metaspace":
            {
                string rep = Str(d, "replacement") ?? "\u2581";
                string scheme = Str(d, "prepend_scheme") ?? (Bool(d, "add_prefix_space", true) ? "always" : "never");
                spec.MetaspaceReplacement = rep[0];
                spec.MetaspaceStripFirst = scheme != "never";
                break;
            }
            default: throw Unsupported(path, $"the decoder '{t}'");
        }
    }

    static void LoadPostProcessor(JsonElement pp, List<int> prefix, List<int> suffix, string path)
    {
        string t = TypeOf(pp, "post-processor", path);
        switch (t)
        {
            case "ByteLevel": break; // offsets only
            case "Sequence":
                if (!pp.TryGetProperty("processors", out var arr) || arr.ValueKind != JsonValueKind.Array) throw Invalid(path, "a Sequence post-processor has no \"processors\" array");
                foreach (var x in arr.EnumerateArray()) LoadPostProcessor(x, prefix, suffix, path);
                break;
            case "TemplateProcessing":
            {
                if (!pp.TryGetProperty("single", out var single) || single.ValueKind != JsonValueKind.Array) throw Invalid(path, "a TemplateProcessing has no \"single\" template");
                var specials = pp.TryGetProperty("special_tokens", out var st) && st.ValueKind == JsonValueKind.Object ? st : default;
                bool seenSeq = false;
                foreach (var item in single.EnumerateArray())
                {
                    if (item.TryGetProperty("Sequence", out _)) { seenSeq = true; continue; }
                    if (!item.TryGetProperty("SpecialToken", out var sp) || Str(sp, "id") is not { } name) throw Invalid(path, "a template item is neither Sequence nor SpecialToken");
                    if (specials.ValueKind != JsonValueKind.Object || !specials.TryGetProperty(name, out var entry) || !entry.TryGetProperty("ids", out var ids) || ids.ValueKind != JsonValueKind.Array)
                        throw Invalid(path, $"the template names the special token '{name}' but \"special_tokens\" has no ids for it");
                    foreach (var i in ids.EnumerateArray()) (seenSeq ? suffix : prefix).Add(i.GetInt32());
                }
                break;
            }
            default: throw Unsupported(path, $"the post-processor '{t}'");
        }
    }
}
