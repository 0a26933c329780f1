using System.Text;
using System.Text.Json.Nodes;
using Calm.Engine.Tokenization;

namespace Calm.Engine.Tests.Tokenization;

/// <summary>
/// A tiny SentencePiece-style BPE tokenizer.json (byte fallback, ▁ for spaces) written here, with ids worked out by hand
/// from Hugging Face's rules: lowest merge rank first, leftmost on ties; missing chars -> &lt;0xNN&gt; bytes.
/// Ids: &lt;unk&gt; 0, &lt;s&gt; 1, &lt;/s&gt; 2, &lt;0x00&gt;..&lt;0xFF&gt; 3..258, then the pieces below from 259.
/// </summary>
public sealed class HandMadeTokenizerTests : IDisposable
{
    static readonly string[] Pieces = ["▁", "h", "e", "l", "o", "▁h", "ll", "▁he", "llo", "▁hello", "w", "r", "d", "▁w", "or", "▁wor", "ld", "▁world", "é"];
    static readonly string[] Merges = ["▁ h", "l l", "▁h e", "ll o", "▁he llo", "▁ w", "o r", "▁w or", "l d", "▁wor ld"];
    const int Mask = 278;
    static int B(int b) => 3 + b;
    static int P(string piece) => 259 + Array.IndexOf(Pieces, piece);

    readonly string _dir = Path.Combine(Path.GetTempPath(), "calm-tok-" + Guid.NewGuid().ToString("N"));

    public HandMadeTokenizerTests() => Directory.CreateDirectory(_dir);
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    static JsonObject Build(bool metaspace, bool dropF0 = false)
    {
        var vocab = new JsonObject { ["<unk>"] = 0, ["<s>"] = 1, ["</s>"] = 2 };
        for (int b = 0; b < 256; b++) if (!(dropF0 && b == 0xF0)) vocab[$"<0x{b:X2}>"] = B(b);
        for (int i = 0; i < Pieces.Length; i++) vocab[Pieces[i]] = 259 + i;
        vocab["<mask>"] = Mask;
        JsonObject Added(int id, string c, bool special, bool lstrip = false) => new()
        { ["id"] = id, ["content"] = c, ["single_word"] = false, ["lstrip"] = lstrip, ["rstrip"] = false, ["normalized"] = false, ["special"] = special };
        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(Added(0, "<unk>", true), Added(1, "<s>", true), Added(2, "</s>", true), Added(Mask, "<mask>", false, lstrip: true)),
            ["normalizer"] = metaspace ? null : new JsonObject
            {
                ["type"] = "Sequence",
                ["normalizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Prepend", ["prepend"] = "▁" },
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = " " }, ["content"] = "▁" }),
            },
            ["pre_tokenizer"] = metaspace ? new JsonObject { ["type"] = "Metaspace", ["replacement"] = "▁", ["prepend_scheme"] = "first", ["split"] = false } : null,
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new JsonArray(new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<s>", ["type_id"] = 0 } },
                                           new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }),
                ["special_tokens"] = new JsonObject { ["<s>"] = new JsonObject { ["id"] = "<s>", ["ids"] = new JsonArray(1), ["tokens"] = new JsonArray("<s>") } },
            },
            ["decoder"] = metaspace ? new JsonObject { ["type"] = "Metaspace", ["replacement"] = "▁", ["prepend_scheme"] = "first", ["split"] = false }
                : new JsonObject
                {
                    ["type"] = "Sequence",
                    ["decoders"] = new JsonArray(
                        new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = "▁" }, ["content"] = " " },
                        new JsonObject { ["type"] = "ByteFallback" }, new JsonObject { ["type"] = "Fuse" },
                        new JsonObject { ["type"] = "Strip", ["content"] = " ", ["start"] = 1, ["stop"] = 0 }),
                },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["unk_token"] = "<unk>", ["fuse_unk"] = true, ["byte_fallback"] = true, ["ignore_merges"] = false,
                ["vocab"] = vocab, ["merges"] = new JsonArray(Merges.Select(m => (JsonNode)JsonValue.Create(m)!).ToArray()),
            },
        };
        return root;
    }

    CalmTokenizer Make(JsonObject json, string? tokenizerConfig = null, string? generationConfig = null)
    {
        File.WriteAllText(Path.Combine(_dir, "tokenizer.json"), json.ToJsonString());
        if (tokenizerConfig != null) File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), tokenizerConfig);
        if (generationConfig != null) File.WriteAllText(Path.Combine(_dir, "generation_config.json"), generationConfig);
        return CalmTokenizer.FromFolder(_dir);
    }

    [Fact]
    public void MergesByRankThenLeftmost()
    {
        var t = Make(Build(metaspace: false));
        Assert.Equal([1, P("▁hello"), P("▁world")], t.Encode("hello world"));
        Assert.Equal([P("▁hello"), P("▁world")], t.Encode("hello world", addSpecialTokens: false));
        // ▁ h e l l: "▁ h" (rank 0), "l l" (1), then "▁h e" (2); "ll o" never applies
        Assert.Equal([P("▁he"), P("ll")], t.Encode("hell", false));
        Assert.Equal(Array.Empty<int>(), t.Encode("", false));
    }

    [Fact]
    public void MissingCharsFallBackToUtf8Bytes()
    {
        var t = Make(Build(metaspace: false));
        Assert.Equal([P("▁h"), P("é"), B(0xE2), B(0x82), B(0xAC)], t.Encode("hé€", false));
        Assert.Equal([P("▁"), B(0xF0), B(0x9F), B(0x98), B(0x80)], t.Encode("😀", false));
        Assert.Equal("hé€ 😀", t.Decode(t.Encode("hé€ 😀")[1..]));
    }

    [Fact]
    public void UnknownCharsWithoutAllTheirBytesBecomeOneFusedUnk()
    {
        var t = Make(Build(metaspace: false, dropF0: true));
        Assert.Equal([P("▁h"), 0, P("é")], t.Encode("h😀😀é", false));
    }

    [Fact]
    public void AddedTokensMatchBeforeNormalizationAndLstripEatsSpaces()
    {
        var t = Make(Build(metaspace: false));
        // "hello" | " <mask>" (lstrip takes the space) | " world" -> Prepend+Replace -> "▁▁world"
        Assert.Equal([P("▁hello"), Mask, P("▁"), P("▁world")], t.Encode("hello <mask> world", false));
        Assert.Equal([1, 1, P("▁hello"), 2], t.Encode("<s>hello</s>"));
        Assert.True(t.IsSpecial(1));
        Assert.False(t.IsSpecial(Mask));
        Assert.True(t.IsAddedToken(Mask));
    }

    [Fact]
    public void MetaspacePrependsOnlyAtTheStartOfTheInput()
    {
        var t = Make(Build(metaspace: true));
        Assert.Equal([P("▁hello"), Mask, P("h"), P("e"), P("llo")], t.Encode("hello<mask>hello", false));
        Assert.Equal("hello world", t.Decode([P("▁hello"), P("▁world")]));
        var p = Make(Build(metaspace: false));
        Assert.Equal([P("▁hello"), Mask, P("▁hello")], p.Encode("hello<mask>hello", false));
    }

    [Fact]
    public void DecodeStripsOneLeadingSpaceAndSkipsSpecials()
    {
        var t = Make(Build(metaspace: false));
        int[] ids = [1, P("▁hello"), P("▁world"), 2];
        Assert.Equal("<s> hello world</s>", t.Decode(ids));
        Assert.Equal("hello world", t.Decode(ids, skipSpecialTokens: true));
        Assert.Equal(" world", t.TokenText(P("▁world")));
        Assert.Equal("\n", t.TokenText(B(0x0A)));
        Assert.Equal("<0xE2>", t.TokenText(B(0xE2)));
    }

    [Theory]
    [InlineData("é")]      // 2 bytes
    [InlineData("€")]      // 3 bytes
    [InlineData("😀")]     // 4 bytes
    public void StreamingHoldsBackEveryPrefixOfAMultiByteChar(string ch)
    {
        var t = Make(Build(metaspace: false));
        byte[] bytes = Encoding.UTF8.GetBytes(ch);
        for (int k = 1; k <= bytes.Length; k++)
        {
            var d = t.CreateStreamDecoder();
            Assert.Equal("hello", d.Add(P("▁hello")));
            for (int i = 0; i < k; i++)
            {
                string got = d.Add(B(bytes[i]));
                Assert.Equal(i == bytes.Length - 1 ? ch : "", got);
            }
            // flushing an unfinished char shows it as one U+FFFD; a finished one leaves nothing
            Assert.Equal(k < bytes.Length ? "\uFFFD" : "", d.Flush());
        }
    }

    [Fact]
    public void BosAndEosComeFromTheConfigs()
    {
        var t = Make(Build(metaspace: false), tokenizerConfig: """{"bos_token": {"content": "<s>"}, "eos_token": "</s>", "tokenizer_class": "LlamaTokenizer", "add_bos_token": true, "add_eos_token": true}""",
            generationConfig: """{"bos_token_id": 1, "eos_token_id": [2, 278]}""");
        Assert.Equal(1, t.BosId);
        Assert.Equal([2, 278], t.EosIds);
        Assert.Equal([1, P("▁hello"), 2], t.Encode("hello"));
        var u = Make(Build(metaspace: false), tokenizerConfig: """{"bos_token": "<s>", "tokenizer_class": "LlamaTokenizer", "add_bos_token": false}""");
        Assert.Equal([P("▁hello")], u.Encode("hello"));
    }

    [Fact]
    public void MalformedJsonIsTokenizerInvalid()
    {
        File.WriteAllText(Path.Combine(_dir, "tokenizer.json"), "{\"model\": {\"type\": \"BPE\", \"vocab\": {");
        var ex = Assert.Throws<CalmException>(() => CalmTokenizer.FromFolder(_dir));
        Assert.Equal(ErrorIds.TokenizerInvalid, ex.ErrorId);
        Assert.Contains("tokenizer.json", ex.Message);
    }

    [Fact]
    public void MergeOfUnknownTokenIsTokenizerInvalid()
    {
        var j = Build(metaspace: false);
        j["model"]!["merges"]!.AsArray().Add("x y");
        var ex = Assert.Throws<CalmException>(() => Make(j));
        Assert.Equal(ErrorIds.TokenizerInvalid, ex.ErrorId);
        Assert.Contains("'x y'", ex.Message);
    }

    [Theory]
    [InlineData("model", "WordPiece", "model of type 'WordPiece'")]
    [InlineData("pre_tokenizer", "BertPreTokenizer", "pre-tokenizer 'BertPreTokenizer'")]
    [InlineData("normalizer", "BertNormalizer", "normalizer 'BertNormalizer'")]
    [InlineData("decoder", "CTC", "decoder 'CTC'")]
    public void UnknownKindsAreTokenizerUnsupported(string part, string type, string said)
    {
        var j = Build(metaspace: false);
        if (part == "model") j["model"]!["type"] = type;
        else j[part] = new JsonObject { ["type"] = type };
        var ex = Assert.Throws<CalmException>(() => Make(j));
        Assert.Equal(ErrorIds.TokenizerUnsupported, ex.ErrorId);
        Assert.Contains(said, ex.Message);
        Assert.Contains("Supported:", ex.Message);
    }

    [Fact]
    public void MissingFilesAndBadIds()
    {
        Assert.Equal(ErrorIds.TokenizerMissing, Assert.Throws<CalmException>(() => CalmTokenizer.FromFolder(_dir)).ErrorId);
        Assert.Equal(ErrorIds.PathNotFound, Assert.Throws<CalmException>(() => CalmTokenizer.FromFile(Path.Combine(_dir, "nope.json"))).ErrorId);
        File.WriteAllBytes(Path.Combine(_dir, "tokenizer.model"), [1, 2, 3, 255, 0, 7]);
        Assert.Equal(ErrorIds.TokenizerInvalid, Assert.Throws<CalmException>(() => CalmTokenizer.FromFolder(_dir)).ErrorId);
        File.Delete(Path.Combine(_dir, "tokenizer.model"));
        var t = Make(Build(metaspace: false));
        Assert.Equal(ErrorIds.TokenOutOfRange, Assert.Throws<CalmException>(() => t.Decode([-1])).ErrorId);
        Assert.Equal(ErrorIds.TokenOutOfRange, Assert.Throws<CalmException>(() => t.TokenText(9999)).ErrorId);
    }
}
