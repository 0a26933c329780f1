using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using Calm.Engine.Model;
using Calm.Engine.Session;
using Calm.Engine.Tokenization;
using Calm.Engine.Weights;
using Calm.Engine.Tests.Loading;

namespace Calm.Engine.Tests.Hardening;

/// <summary>Where the repository's own files are (models/tiny-wp).</summary>
internal static class Repo
{
    public static string Root
    {
        get
        {
            var d = new DirectoryInfo(AppContext.BaseDirectory);
            while (d is not null && !File.Exists(Path.Combine(d.FullName, "Calm.psd1"))) d = d.Parent;
            return d?.FullName ?? throw new InvalidOperationException("Cannot find the repository root (Calm.psd1) above " + AppContext.BaseDirectory);
        }
    }
    public static string TinyWp => Path.Combine(Root, "models", "tiny-wp");
}

/// <summary>
/// tokenizer.json mapping under mutation: a real byte-level BPE tokenizer.json (models/tiny-wp, cut to its first 300
/// merges so one case is cheap) and a SentencePiece-style one (Metaspace + byte_fallback, the Llama 2 / Mistral
/// family) are mutated byte- and JSON-wise; every mutated file is loaded and, when it loads, encodes and decodes a
/// text. Only <see cref="CalmException"/> may come out; nothing may hang. The seed is in every failure message.
/// </summary>
public class TokenizerFuzzTests
{
    private static readonly string[] JsonTokens =
    {
        "\"", "{", "}", "[", "]", ",", ":", "-1", "1e309", "99999999999", "null", "true", "\"BPE\"", "\"WordPiece\"", "\"Split\"",
        "\"Metaspace\"", "\"ByteLevel\"", "\"Sequence\"", "\\u0000", "\\ud800", "\u00e9", "[]", "{}", "\"(\"", "\"[\"", "\"\\\\\"", " ",
        "{\"type\": \"Replace\", \"pattern\": {\"Regex\": \"(a+)+$\"}, \"content\": \"x\"}",
    };

    private static string TrimmedTinyWp()
    {
        // The real file with its vocabulary and merges cut down (all other sections untouched).
        var root = JsonNode.Parse(File.ReadAllText(Path.Combine(Repo.TinyWp, "tokenizer.json")))!.AsObject();
        var model = root["model"]!.AsObject();
        var merges = model["merges"]!.AsArray();
        var keepMerges = new JsonArray(merges.Take(300).Select(m => m!.DeepClone()).ToArray());
        var vocab = model["vocab"]!.AsObject();
        var keepVocab = new JsonObject(vocab.Where(kv => kv.Value!.GetValue<int>() < 300 + 262).Select(kv => KeyValuePair.Create(kv.Key, kv.Value!.DeepClone())));
        model["merges"] = keepMerges;
        model["vocab"] = keepVocab;
        return root.ToJsonString();
    }

    private static string SentencePieceStyle()
    {
        var vocab = new JsonObject { ["<unk>"] = 0, ["<s>"] = 1, ["</s>"] = 2 };
        for (int b = 0; b < 256; b++) vocab[$"<0x{b:X2}>"] = 3 + b;
        string[] pieces = { "▁", "h", "e", "l", "o", "▁h", "ll", "▁he", "llo", "▁hello", "w", "r", "d", "▁w", "or", "▁wor", "ld", "▁world" };
        for (int i = 0; i < pieces.Length; i++) vocab[pieces[i]] = 259 + i;
        var merges = new JsonArray("▁ h", "l l", "▁h e", "ll o", "▁he llo", "▁ w", "o r", "▁w or", "l d", "▁wor ld");
        var ms = new JsonObject { ["type"] = "Metaspace", ["replacement"] = "▁", ["prepend_scheme"] = "first", ["split"] = false };
        return new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(
                new JsonObject { ["id"] = 0, ["content"] = "<unk>", ["special"] = true },
                new JsonObject { ["id"] = 1, ["content"] = "<s>", ["special"] = true },
                new JsonObject { ["id"] = 2, ["content"] = "</s>", ["special"] = true }),
            ["normalizer"] = null,
            ["pre_tokenizer"] = ms.DeepClone(),
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new JsonArray(new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<s>", ["type_id"] = 0 } },
                    new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }),
                ["pair"] = new JsonArray(),
                ["special_tokens"] = new JsonObject { ["<s>"] = new JsonObject { ["id"] = "<s>", ["ids"] = new JsonArray(1), ["tokens"] = new JsonArray("<s>") } },
            },
            ["decoder"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["decoders"] = new JsonArray(ms.DeepClone(), new JsonObject { ["type"] = "ByteFallback" }, new JsonObject { ["type"] = "Fuse" }),
            },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["unk_token"] = "<unk>", ["fuse_unk"] = true, ["byte_fallback"] = true, ["ignore_merges"] = false,
                ["vocab"] = vocab, ["merges"] = merges,
            },
        }.ToJsonString();
    }

    private static byte[] Mutate(byte[] input, Random rng)
    {
        var b = (byte[])input.Clone();
        switch (rng.Next(6))
        {
            case 0: for (int i = rng.Next(1, 5); i > 0; i--) b[rng.Next(b.Length)] ^= (byte)(1 << rng.Next(8)); return b;
            case 1: return b[..rng.Next(b.Length + 1)];
            case 2: for (int i = rng.Next(1, 4); i > 0; i--) b[rng.Next(b.Length)] = (byte)rng.Next(256); return b;
            case 3:
            {
                var s = Encoding.UTF8.GetString(b);
                return Encoding.UTF8.GetBytes(s.Insert(rng.Next(s.Length + 1), JsonTokens[rng.Next(JsonTokens.Length)]));
            }
            case 4:
            {
                // Replace a JSON string value or a number somewhere with another token (keeps the JSON mostly valid).
                var s = Encoding.UTF8.GetString(b);
                int at = rng.Next(s.Length);
                int q = s.IndexOf('"', at);
                if (q < 0) return b;
                int end = s.IndexOf('"', q + 1);
                if (end < 0) return b;
                return Encoding.UTF8.GetBytes(s[..q] + JsonTokens[rng.Next(JsonTokens.Length)] + s[(end + 1)..]);
            }
            default:
            {
                int at = rng.Next(b.Length), len = rng.Next(1, 40);
                return b[..at].Concat(b[Math.Min(b.Length, at + len)..]).ToArray();
            }
        }
    }

    [Fact]
    public void TenThousandMutatedTokenizerFilesGiveOnlyCalmErrors()
    {
        int seed = Environment.TickCount;
        var task = Task.Run(() => Run(seed), TestContext.Current.CancellationToken);
        Assert.True(task.Wait(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken), $"tokenizer fuzzing did not finish in 60 s (seed {seed}): a hang");
        var (cases, loaded, rejected) = task.Result;
        Assert.True(cases >= 10_000, $"only {cases} cases");
        Assert.True(loaded > cases / 20 && rejected > cases / 4, $"loaded {loaded}, rejected {rejected} of {cases} (seed {seed}): the mutations do not reach both outcomes");
    }

    private static (int Cases, int Loaded, int Rejected) Run(int seed)
    {
        var rng = new Random(seed);
        var sw = Stopwatch.StartNew();
        using var dir = new TempDir();
        File.Copy(Path.Combine(Repo.TinyWp, "tokenizer_config.json"), dir.File("tokenizer_config.json"));
        string file = dir.File("tokenizer.json");
        var inputs = new[] { Encoding.UTF8.GetBytes(TrimmedTinyWp()), Encoding.UTF8.GetBytes(SentencePieceStyle()) };
        // Both originals load and round-trip (else the fuzzer would only test the JSON parser).
        foreach (var input in inputs)
        {
            File.WriteAllBytes(file, input);
            var t = CalmTokenizer.FromFile(file);
            Assert.Equal("hello world", t.Decode(t.Encode("hello world", addSpecialTokens: false)));
        }
        const string text = "hello world, Pierre! Natasha\u00e9 123 <s>\u4e2d\t\n";
        int cases = 0, loaded = 0, rejected = 0;
        for (int i = 0; i < 10_000; i++)
        {
            var m = Mutate(inputs[i % 2], rng);
            File.WriteAllBytes(file, m);
            cases++;
            try
            {
                var t = CalmTokenizer.FromFile(file);
                var ids = t.Encode(text);
                _ = t.Decode(ids);
                loaded++;
            }
            catch (CalmException) { rejected++; }
            catch (Exception e)
            {
                File.WriteAllBytes(Path.Combine(Path.GetTempPath(), $"calm-tokenizer-fuzz-{seed}-{i}.json"), m);
                Assert.Fail($"case {i} (seed {seed}) threw {e.GetType().Name} instead of a CalmException (input saved as calm-tokenizer-fuzz-{seed}-{i}.json in the temp folder): {e}");
            }
        }
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(50), $"tokenizer fuzzing took {sw.Elapsed.TotalSeconds:F1} s");
        return (cases, loaded, rejected);
    }

    [Theory]
    [InlineData("not json", "TokenizerInvalid")]
    [InlineData("[1, 2]", "TokenizerInvalid")]
    [InlineData("{\"version\": \"1.0\"}", "TokenizerInvalid")]
    [InlineData("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}", "TokenizerInvalid")]
    [InlineData("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}", "TokenizerInvalid")]
    [InlineData("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"ab\"]}}", "TokenizerInvalid")]
    [InlineData("{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", "TokenizerUnsupported")]
    [InlineData("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"added_tokens\": [{\"id\": \"x\"}]}", "TokenizerInvalid")]
    public void MalformedTokenizerJsonIsACalmError(string json, string id)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("tokenizer.json"), json);
        var e = Assert.Throws<CalmException>(() => CalmTokenizer.FromFolder(dir.Path));
        Assert.Equal("Calm." + id, e.ErrorId);
        Assert.Contains("tokenizer.json", e.Message);
    }

    [Fact]
    public void NonUtf8TokenizerJsonIsACalmError()
    {
        using var dir = new TempDir();
        var bytes = Encoding.UTF8.GetBytes(SentencePieceStyle());
        int at = Array.IndexOf(bytes, (byte)'h');
        bytes[at] = 0xFF; bytes[at + 1] = 0xFE;
        File.WriteAllBytes(dir.File("tokenizer.json"), bytes);
        var e = Assert.Throws<CalmException>(() => CalmTokenizer.FromFolder(dir.Path));
        Assert.Equal(ErrorIds.TokenizerInvalid, e.ErrorId);
    }
}

/// <summary>Context overflow on the real tiny model: a clear error, and the model stays usable.</summary>
public class ContextOverflowTests
{
    [Fact]
    public void ForwardBeyondTheContextIsContextOverflowAndTheModelStaysUsable()
    {
        var ct = TestContext.Current.CancellationToken;
        using var model = ModelFactory.Import(Repo.TinyWp, new ImportOptions { Device = DeviceChoice.Cpu, ContextLength = 8 }, null, ct);
        var logits = new float[model.Config.VocabSize];
        var first = new float[model.Config.VocabSize];
        using (model.Acquire(ct))
        {
            model.Backend.Forward(new[] { 0, 5, 9, 14 }, 0, first, false, ct);
            var e = Assert.Throws<CalmException>(() => model.Backend.Forward(new[] { 1, 2, 3, 4, 5 }, 4, logits, false, ct));
            Assert.Equal(ErrorIds.ContextOverflow, e.ErrorId);
            Assert.Contains("ContextLength", e.Message);
            e = Assert.Throws<CalmException>(() => model.Backend.Forward(new int[9], 0, logits, false, ct));
            Assert.Equal(ErrorIds.ContextOverflow, e.ErrorId);
            // Still usable: the same prompt gives the same logits as before the failed calls, and the last slot fills.
            model.Backend.Forward(new[] { 0, 5, 9, 14 }, 0, logits, false, ct);
            Assert.Equal(first, logits);
            model.Backend.Forward(new[] { 1, 2, 3, 4 }, 4, logits, false, ct);
            Assert.All(logits, x => Assert.True(float.IsFinite(x)));
        }
    }

    [Fact]
    public void TwoThreadsOnOneModelUnderAcquireGetTheSingleThreadedLogits()
    {
        var ct = TestContext.Current.CancellationToken;
        using var model = ModelFactory.Import(Repo.TinyWp, new ImportOptions { Device = DeviceChoice.Cpu, ContextLength = 64 }, null, ct);
        var rng = new Random(Environment.TickCount);
        int v = model.Config.VocabSize;
        var prompts = Enumerable.Range(0, 2).Select(_ => Enumerable.Range(0, 12).Select(_ => rng.Next(v)).ToArray()).ToArray();
        float[] Run(int[] p)
        {
            var l = new float[v];
            using (model.Acquire(ct)) model.Backend.Forward(p, 0, l, false, ct);
            return l;
        }
        var reference = prompts.Select(Run).ToArray();
        var results = new float[2][][];
        Parallel.For(0, 2, new ParallelOptions { CancellationToken = ct }, t =>
        {
            results[t] = new float[20][];
            for (int i = 0; i < 20; i++) results[t][i] = Run(prompts[t]);
        });
        for (int t = 0; t < 2; t++)
            foreach (var r in results[t]) Assert.Equal(reference[t], r);
    }
}
