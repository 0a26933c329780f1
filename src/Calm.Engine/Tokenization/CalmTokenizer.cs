using System.Text;
using System.Text.Json;
using Microsoft.ML.Tokenizers;

namespace Calm.Engine.Tokenization;

/// <summary>
/// A model's tokenizer, built from its tokenizer.json (Hugging Face tokenizers format) with ids exactly those of the
/// tokenizers library, or from a SentencePiece tokenizer.model (through Microsoft.ML.Tokenizers) when there is no
/// tokenizer.json. BOS/EOS come from tokenizer_config.json, generation_config.json and config.json beside it.
/// Thread-safe for concurrent Encode/Decode.
/// </summary>
public sealed class CalmTokenizer
{
    // tokenizer.json path
    readonly TokenizerLoader.Parts? _parts;
    readonly AddedTokenMatcher? _rawAdded, _normAdded;
    // tokenizer.model path
    readonly SentencePieceTokenizer? _sp;

    /// <summary>[VocabSize]: each id's token string as stored (byte-level chars, ▁, &lt;0xNN&gt;), null for unused ids.</summary>
    readonly string?[] _idToToken;
    readonly bool[] _isAdded, _isSpecial;
    readonly int[] _prefix, _suffix;

    internal DecoderSpec Decoder { get; }
    /// <summary>Where it was loaded from.</summary>
    public string Source { get; }
    public int VocabSize => _idToToken.Length;
    /// <summary>The model's beginning-of-sequence id, if it has one (whether or not Encode adds it).</summary>
    public int? BosId { get; }
    /// <summary>Ids that end generation (generation_config.json, config.json, tokenizer_config.json).</summary>
    public IReadOnlyList<int> EosIds { get; }
    /// <summary>The ids Encode(text, addSpecialTokens: true) puts before / after the text.</summary>
    public IReadOnlyList<int> PrefixIds => _prefix;
    public IReadOnlyList<int> SuffixIds => _suffix;

    CalmTokenizer(string source, TokenizerLoader.Parts? parts, SentencePieceTokenizer? sp, ConfigInfo cfg)
    {
        Source = source;
        _parts = parts;
        _sp = sp;
        var tokens = new Dictionary<int, string>();
        var added = new HashSet<int>();
        var special = new HashSet<int>();
        if (parts != null)
        {
            foreach (var (t, id) in parts.Model.Vocab) tokens[id] = t;
            foreach (var a in parts.Added) { tokens[a.Id] = a.Content; added.Add(a.Id); if (a.Special) special.Add(a.Id); }
            Decoder = parts.Decoder;
            var norm = parts.Normalizer;
            _rawAdded = new AddedTokenMatcher(parts.Added.Where(a => !a.Normalized || norm == null), null);
            _normAdded = norm == null ? null : new AddedTokenMatcher(parts.Added.Where(a => a.Normalized), norm.Apply);
            _prefix = parts.Prefix; _suffix = parts.Suffix;
        }
        else
        {
            foreach (var (t, id) in sp!.Vocabulary) tokens[id] = t;
            foreach (int id in new[] { sp.BeginningOfSentenceId, sp.EndOfSentenceId, sp.UnknownId }) if (id >= 0) { special.Add(id); added.Add(id); }
            Decoder = new DecoderSpec { ByteFallback = true, MetaspaceReplacement = '\u2581', MetaspaceStripFirst = sp.AddDummyPrefix };
            _prefix = cfg.AddBos ?? true ? new[] { sp.BeginningOfSentenceId } : Array.Empty<int>();
            _suffix = cfg.AddEos ?? false ? new[] { sp.EndOfSentenceId } : Array.Empty<int>();
        }
        int size = tokens.Count == 0 ? 0 : tokens.Keys.Max() + 1;
        _idToToken = new string?[size];
        foreach (var (id, t) in tokens) _idToToken[id] = t;
        _isAdded = new bool[size]; foreach (int id in added) _isAdded[id] = true;
        _isSpecial = new bool[size]; foreach (int id in special) _isSpecial[id] = true;

        int? Lookup(string? tok) => tok != null && IdOf(tok) is int i ? i : null;
        // transformers rebuilds the Llama/Gemma post-processor from add_bos_token/add_eos_token.
        if (parts != null && cfg.TokenizerClass is { } cls && (cls.StartsWith("Llama") || cls.StartsWith("Gemma") || cls.StartsWith("CodeLlama"))
            && (cfg.AddBos != null || cfg.AddEos != null))
        {
            var pre = new List<int>(); var suf = new List<int>();
            if ((cfg.AddBos ?? true) && Lookup(cfg.BosToken) is int b) pre.Add(b);
            if ((cfg.AddEos ?? false) && Lookup(cfg.EosToken) is int e) suf.Add(e);
            _prefix = pre.ToArray(); _suffix = suf.ToArray();
        }
        BosId = Lookup(cfg.BosToken) ?? cfg.BosIdFromModel ?? (_sp != null ? _sp.BeginningOfSentenceId : null);
        var eos = new List<int>();
        foreach (int e in cfg.EosIdsFromModel) if (!eos.Contains(e)) eos.Add(e);
        if (Lookup(cfg.EosToken) is int et && !eos.Contains(et)) eos.Add(et);
        if (eos.Count == 0 && _sp != null && _sp.EndOfSentenceId >= 0) eos.Add(_sp.EndOfSentenceId);
        EosIds = eos;
    }

    /// <summary>Loads the tokenizer of a model folder: tokenizer.json, else tokenizer.model.</summary>
    public static CalmTokenizer FromFolder(string folder)
    {
        if (!Directory.Exists(folder))
            throw new CalmException(ErrorIds.PathNotFound, CalmErrorKind.ObjectNotFound, $"The model folder '{folder}' does not exist.", folder);
        string json = Path.Combine(folder, "tokenizer.json"), model = Path.Combine(folder, "tokenizer.model");
        if (File.Exists(json)) return FromFile(json);
        if (File.Exists(model)) return FromFile(model);
        throw new CalmException(ErrorIds.TokenizerMissing, CalmErrorKind.ObjectNotFound,
            $"The folder '{folder}' has neither tokenizer.json nor tokenizer.model. Copy the model's tokenizer files into it.", folder);
    }

    /// <summary>Loads a tokenizer.json or a SentencePiece tokenizer.model (or a folder holding one).</summary>
    public static CalmTokenizer FromFile(string path) => FromFile(path, allowLibraryMerges: true);

    /// <summary>allowLibraryMerges: false runs every BPE merge in Calm's own code (tests compare both ways).</summary>
    internal static CalmTokenizer FromFile(string path, bool allowLibraryMerges)
    {
        if (Directory.Exists(path)) return FromFolder(path);
        if (!File.Exists(path))
            throw new CalmException(ErrorIds.PathNotFound, CalmErrorKind.ObjectNotFound, $"The tokenizer file '{path}' does not exist.", path);
        path = Path.GetFullPath(path);
        var cfg = ConfigInfo.Read(Path.GetDirectoryName(path)!);
        if (path.EndsWith(".model", StringComparison.OrdinalIgnoreCase))
        {
            SentencePieceTokenizer sp;
            try
            {
                using var fs = File.OpenRead(path);
                sp = SentencePieceTokenizer.Create(fs, false, false);
            }
            catch (Exception e) when (e is not CalmException)
            {
                throw new CalmException(ErrorIds.TokenizerInvalid, CalmErrorKind.InvalidData,
                    $"The SentencePiece model '{path}' could not be read ({e.Message}). Re-download it, or use the model's tokenizer.json.", path, e);
            }
            return new CalmTokenizer(path, null, sp, cfg);
        }
        return new CalmTokenizer(path, TokenizerLoader.Load(path, allowLibraryMerges), null, cfg);
    }

    /// <summary>True when BPE merges run in Microsoft.ML.Tokenizers (byte-level models, tokenizer.model).</summary>
    internal bool MergesInLibrary => _sp != null || _parts!.Model.UsesLibrary;

    internal int? IdOf(string token)
    {
        if (_parts != null)
        {
            foreach (var a in _parts.Added) if (a.Content == token) return a.Id;
            return _parts.Model.Vocab.TryGetValue(token, out int id) ? id : null;
        }
        return _sp!.Vocabulary.TryGetValue(token, out int sid) ? sid : null;
    }

    /// <summary>True for tokens of tokenizer.json "added_tokens" (special or not).</summary>
    public bool IsAddedToken(int id) => (uint)id < (uint)_isAdded.Length && _isAdded[id];

    /// <summary>True for added tokens marked special (BOS, EOS, chat markers...).</summary>
    public bool IsSpecial(int id) => (uint)id < (uint)_isSpecial.Length && _isSpecial[id];

    internal void CheckId(int id)
    {
        if ((uint)id >= (uint)_idToToken.Length || _idToToken[id] == null)
            throw new CalmException(ErrorIds.TokenOutOfRange, CalmErrorKind.InvalidArgument,
                $"Token id {id} is not in this tokenizer's vocabulary (ids 0..{_idToToken.Length - 1}, {Source}).", Source);
    }

    /// <summary>Text -> ids. addSpecialTokens: add the BOS/EOS the model's config asks for. Special-token text in the
    /// input (e.g. "&lt;|im_start|&gt;") always becomes its id, as in Hugging Face tokenizers.</summary>
    public int[] Encode(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        text = ReplaceLoneSurrogates(text);
        var ids = new List<int>(text.Length / 3 + 4);
        if (addSpecialTokens) ids.AddRange(_prefix);
        if (_sp != null)
            ids.AddRange(_sp.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false, considerPreTokenization: true, considerNormalization: true));
        else
            EncodeJson(text, ids);
        if (addSpecialTokens) ids.AddRange(_suffix);
        return ids.ToArray();
    }

    void EncodeJson(string text, List<int> ids)
    {
        var parts = _parts!;
        var spans = new List<(int Start, int End, AddedToken? Token)>();
        _rawAdded!.Split(text, spans);
        var pieces = new List<Piece>();
        var inner = new List<(int, int, AddedToken?)>();
        foreach (var (s, e, tok) in spans)
        {
            if (tok != null) { ids.Add(tok.Id); continue; }
            string seg = text[s..e];
            if (parts.Normalizer != null) seg = parts.Normalizer.Apply(seg);
            inner.Clear();
            if (_normAdded != null && !_normAdded.IsEmpty) _normAdded.Split(seg, inner);
            else inner.Add((0, seg.Length, null));
            foreach (var (s2, e2, tok2) in inner)
            {
                if (tok2 != null) { ids.Add(tok2.Id); continue; }
                pieces.Clear();
                pieces.Add(new Piece(seg[s2..e2], s == 0 && s2 == 0));
                List<Piece> words = pieces;
                if (parts.PreTokenizer != null)
                {
                    words = new List<Piece>();
                    parts.PreTokenizer.Apply(pieces, words);
                }
                foreach (var w in words) parts.Model.EncodeWord(w.Text, ids);
            }
        }
    }

    static string ReplaceLoneSurrogates(string s)
    {
        for (int i = 0; i < s.Length; i++)
        {
            if (!char.IsSurrogate(s[i])) continue;
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { i++; continue; }
            var sb = new StringBuilder(s);
            for (int j = i; j < sb.Length; j++)
            {
                if (!char.IsSurrogate(sb[j])) continue;
                if (char.IsHighSurrogate(sb[j]) && j + 1 < sb.Length && char.IsLowSurrogate(sb[j + 1])) { j++; continue; }
                sb[j] = '\uFFFD';
            }
            return sb.ToString();
        }
        return s;
    }

    /// <summary>Ids -> text, as Hugging Face's decode (without clean-up of spaces).</summary>
    public string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens = false)
    {
        var d = new TokenStreamDecoder(this, skipSpecialTokens);
        var sb = new StringBuilder();
        foreach (int id in ids) sb.Append(d.Add(id));
        sb.Append(d.Flush());
        return sb.ToString();
    }

    /// <summary>A decoder for ids arriving one at a time (generation): returns only complete characters.</summary>
    public TokenStreamDecoder CreateStreamDecoder(bool skipSpecialTokens = false) => new(this, skipSpecialTokens);

    internal void AppendTokenBytes(int id, bool first, List<byte> dst)
    {
        // Added tokens go through the decoder too, as in Hugging Face (Gemma's "▁▁▁" added tokens decode to spaces).
        Decoder.AppendBytes(_idToToken[id]!, first, dst);
    }

    /// <summary>The token as stored in the vocabulary (e.g. "Ġworld", "▁world", "&lt;0x0A&gt;").</summary>
    public string RawToken(int id) { CheckId(id); return _idToToken[id]!; }

    /// <summary>The token's text as a user should see it: its decoded text; a token that is only part of a
    /// character's UTF-8 bytes shows those bytes as &lt;0xNN&gt;.</summary>
    public string TokenText(int id)
    {
        CheckId(id);
        var bytes = new List<byte>();
        AppendTokenBytes(id, first: false, bytes);
        var arr = bytes.ToArray();
        try { return new UTF8Encoding(false, true).GetString(arr); }
        catch (DecoderFallbackException) { return string.Concat(arr.Select(b => $"<0x{b:X2}>")); }
    }

    sealed record ConfigInfo(string? TokenizerClass, bool? AddBos, bool? AddEos, string? BosToken, string? EosToken, int? BosIdFromModel, List<int> EosIdsFromModel)
    {
        public static ConfigInfo Read(string folder)
        {
            string? cls = null, bos = null, eos = null; bool? addBos = null, addEos = null; int? bosId = null;
            var eosIds = new List<int>();
            if (ReadJson(Path.Combine(folder, "tokenizer_config.json")) is { } tc)
            {
                cls = Str(tc, "tokenizer_class");
                addBos = tc.TryGetProperty("add_bos_token", out var ab) && ab.ValueKind is JsonValueKind.True or JsonValueKind.False ? ab.GetBoolean() : null;
                addEos = tc.TryGetProperty("add_eos_token", out var ae) && ae.ValueKind is JsonValueKind.True or JsonValueKind.False ? ae.GetBoolean() : null;
                bos = TokenName(tc, "bos_token"); eos = TokenName(tc, "eos_token");
            }
            foreach (var f in new[] { "generation_config.json", "config.json" })
                if (ReadJson(Path.Combine(folder, f)) is { } g)
                {
                    if (bosId == null && g.TryGetProperty("bos_token_id", out var b) && b.TryGetInt32(out int bi)) bosId = bi;
                    if (g.TryGetProperty("eos_token_id", out var e))
                    {
                        if (e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int ei) && !eosIds.Contains(ei)) eosIds.Add(ei);
                        else if (e.ValueKind == JsonValueKind.Array)
                            foreach (var x in e.EnumerateArray()) if (x.TryGetInt32(out int xi) && !eosIds.Contains(xi)) eosIds.Add(xi);
                    }
                }
            return new ConfigInfo(cls, addBos, addEos, bos, eos, bosId, eosIds);
        }

        static string? Str(JsonElement o, string n) => o.TryGetProperty(n, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

        static string? TokenName(JsonElement o, string n) =>
            !o.TryGetProperty(n, out var v) ? null
            : v.ValueKind == JsonValueKind.String ? v.GetString()
            : v.ValueKind == JsonValueKind.Object ? Str(v, "content") : null;

        static JsonElement? ReadJson(string path)
        {
            if (!File.Exists(path)) return null;
            try { using var d = JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip }); return d.RootElement.Clone(); }
            catch (JsonException e)
            {
                throw new CalmException(ErrorIds.TokenizerInvalid, CalmErrorKind.InvalidData, $"'{path}' is not valid JSON ({e.Message}). Re-download the model's config files.", path, e);
            }
        }
    }
}
