using System.Text;
using System.Text.Json;
using Calm.Engine.Tokenization;

namespace Calm.Engine.Tests.Tokenization;

/// <summary>Ids and decoded text must equal Hugging Face tokenizers' (reference files made by tools/make_tokenizer_refs.py).</summary>
public class ReferenceIdTests
{
    public static TheoryData<string> Names => new(RealTokenizers.Names);

    sealed record Case(string text, int[] ids, int[] ids_special, string decoded, string decoded_skip);
    sealed record RefFile(string tokenizer, string generator, Case[] cases);

    static RefFile Load(string name) => JsonSerializer.Deserialize<RefFile>(File.ReadAllText(RealTokenizers.RefPath(name)))!;

    [Theory, MemberData(nameof(Names))]
    public void IdsMatchHuggingFace(string name) => CheckIds(name, RealTokenizers.Get(name));

    /// <summary>The same references with every merge in Calm's own BPE code (the path byte-fallback models take).</summary>
    [Theory, MemberData(nameof(Names))]
    public void IdsMatchHuggingFaceWithOwnMerges(string name)
    {
        var tok = RealTokenizers.GetOwnMerges(name);
        Assert.False(tok.MergesInLibrary);
        CheckIds(name, tok);
    }

    [Fact]
    public void ByteLevelModelsMergeInMicrosoftMLTokenizers()
    {
        foreach (var n in new[] { "llama3_2", "qwen2_5", "qwen3", "mistral_nemo" }) Assert.True(RealTokenizers.Get(n).MergesInLibrary, n);
        Assert.False(RealTokenizers.Get("gemma2").MergesInLibrary); // byte fallback: the library has no such option
    }

    static void CheckIds(string name, CalmTokenizer tok)
    {
        var refs = Load(name);
        Assert.True(refs.cases.Length >= 50);
        var failures = new List<string>();
        foreach (var c in refs.cases)
        {
            var plain = tok.Encode(c.text, addSpecialTokens: false);
            var special = tok.Encode(c.text, addSpecialTokens: true);
            if (!plain.SequenceEqual(c.ids)) failures.Add($"{JsonSerializer.Serialize(c.text)}: got [{string.Join(",", plain)}] want [{string.Join(",", c.ids)}]");
            if (!special.SequenceEqual(c.ids_special)) failures.Add($"{JsonSerializer.Serialize(c.text)} (+special): got [{string.Join(",", special)}] want [{string.Join(",", c.ids_special)}]");
        }
        Assert.True(failures.Count == 0, $"{name} ({refs.generator}): {failures.Count} mismatches\n" + string.Join("\n", failures.Take(10)));
    }

    [Theory, MemberData(nameof(Names))]
    public void DecodeMatchesHuggingFace(string name)
    {
        var tok = RealTokenizers.Get(name);
        var failures = new List<string>();
        foreach (var c in Load(name).cases)
        {
            string d = tok.Decode(c.ids_special, skipSpecialTokens: false), s = tok.Decode(c.ids_special, skipSpecialTokens: true);
            if (d != c.decoded) failures.Add($"{JsonSerializer.Serialize(c.text)}: got {JsonSerializer.Serialize(d)} want {JsonSerializer.Serialize(c.decoded)}");
            if (s != c.decoded_skip) failures.Add($"{JsonSerializer.Serialize(c.text)} (skip): got {JsonSerializer.Serialize(s)} want {JsonSerializer.Serialize(c.decoded_skip)}");
        }
        Assert.True(failures.Count == 0, $"{name}: {failures.Count} mismatches\n" + string.Join("\n", failures.Take(10)));
    }

    [Theory, MemberData(nameof(Names))]
    public void StreamingDecodeNeverShowsReplacementCharsMidStream(string name)
    {
        var tok = RealTokenizers.Get(name);
        foreach (var c in Load(name).cases)
        {
            if (c.text.Contains('\uFFFD')) continue;
            var stream = tok.CreateStreamDecoder();
            var sb = new StringBuilder();
            foreach (int id in c.ids_special)
            {
                string piece = stream.Add(id);
                Assert.DoesNotContain('\uFFFD', piece);
                sb.Append(piece);
            }
            sb.Append(stream.Flush());
            Assert.Equal(tok.Decode(c.ids_special), sb.ToString());
        }
    }

    [Theory]
    [InlineData("llama3_2", false)]
    [InlineData("qwen2_5", true)]
    [InlineData("qwen3", true)]
    [InlineData("mistral_nemo", false)]
    public void ByteLevelRoundTripsAnyText(string name, bool nfc)
    {
        var tok = RealTokenizers.Get(name);
        var rng = new Random(Environment.TickCount);
        var texts = File.ReadAllLines(CorpusPath()).Where(l => l.Length > 0).Select(l => JsonSerializer.Deserialize<string>(l)!).ToList();
        // plus random strings over a mix of scripts, emoji, whitespace
        string[] alphabet = ["a", "Z", " ", "  ", "\n", "\t", "'s", "7", "é", "ß", "中", "ت", "ह", "😀", "👩‍💻", "𝐀", "<", "|", ">", "\r\n", "_", "."];
        for (int i = 0; i < 200; i++)
            texts.Add(string.Concat(Enumerable.Range(0, rng.Next(1, 40)).Select(_ => alphabet[rng.Next(alphabet.Length)])));
        foreach (var t in texts)
        {
            string want = nfc ? t.Normalize(NormalizationForm.FormC) : t;
            Assert.Equal(want, tok.Decode(tok.Encode(t, addSpecialTokens: false)));
        }
    }

    [Theory, MemberData(nameof(Names))]
    public void Encodes100KBInUnderASecond(string name)
    {
        var tok = RealTokenizers.Get(name);
        var corpus = string.Join("\n", File.ReadAllLines(CorpusPath()).Where(l => l.Length > 0).Select(l => JsonSerializer.Deserialize<string>(l)!));
        var sb = new StringBuilder();
        var rng = new Random(1);
        while (sb.Length < 100_000) sb.Append(corpus.AsSpan(rng.Next(corpus.Length / 2))).Append(' ').Append(rng.Next());
        string text = sb.ToString(0, 100_000);
        tok.Encode("warm up");
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var ids = tok.Encode(text, addSpecialTokens: false);
        sw.Stop();
        Assert.True(ids.Length > 10_000, $"{ids.Length} ids");
        Assert.True(sw.Elapsed.TotalSeconds < 1.0, $"{name}: 100 KB took {sw.Elapsed.TotalMilliseconds:F0} ms");
    }

    [Fact]
    public void Llama3KnownIdsAndSpecials()
    {
        var tok = RealTokenizers.Get("llama3_2");
        Assert.Equal([128000, 9906, 1917], tok.Encode("Hello world"));
        Assert.Equal(128000, tok.BosId);
        Assert.Contains(128009, tok.EosIds); // <|eot_id|> from tokenizer_config.json
        Assert.True(tok.IsSpecial(128000));
        Assert.False(tok.IsSpecial(9906));
        Assert.Equal("Hello", tok.TokenText(9906));
        Assert.Equal(" world", tok.TokenText(1917));
        Assert.Equal("<|begin_of_text|>", tok.TokenText(128000));
        Assert.Equal(128256, tok.VocabSize);
        var ex = Assert.Throws<CalmException>(() => tok.Decode([128256]));
        Assert.Equal(ErrorIds.TokenOutOfRange, ex.ErrorId);
    }

    [Fact]
    public void GemmaAddsBosAndFallsBackToBytes()
    {
        var tok = RealTokenizers.Get("gemma2");
        Assert.Equal(2, tok.BosId);
        Assert.Equal([2], tok.PrefixIds);
        var ids = tok.Encode("Hello world");
        Assert.Equal(2, ids[0]);
        Assert.Equal("Hello world", tok.Decode(ids, skipSpecialTokens: true));
        Assert.Equal("<bos>Hello world", tok.Decode(ids));
    }

    internal static string CorpusPath()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
        {
            string p = Path.Combine(d.FullName, "tools", "tokenizer_corpus.jsonl");
            if (File.Exists(p)) return p;
        }
        Assert.Fail("tools/tokenizer_corpus.jsonl not found");
        return "";
    }
}
