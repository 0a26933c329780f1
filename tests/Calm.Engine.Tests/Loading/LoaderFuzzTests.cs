using System.Diagnostics;
using System.Text;
using Calm.Engine.Model;
using Calm.Engine.Weights;
using static Calm.Engine.Tests.Loading.ModelFolders;

namespace Calm.Engine.Tests.Loading;

/// <summary>
/// Mutates valid inputs (safetensors header and data, config.json, generation_config.json, whole folders) and checks
/// that only <see cref="CalmException"/> ever comes out, and that nothing hangs. The seed is printed on failure.
/// </summary>
public class LoaderFuzzTests
{
    private static readonly string[] JsonTokens =
    {
        "\"", "{", "}", "[", "]", ",", ":", "-", "0", "-1", "1e309", "99999999999999999999", "null", "true", "\"F32\"", "\"Q8\"",
        "\\u0000", "\\ud800", "\u00e9", "NaN", "Infinity", "[]", "{}", "1.5", "\"model_type\"", "\"head_dim\"", " ",
    };

    private const string Replacements = "{}[],:\"-0e.";

    private static byte[] Mutate(byte[] input, Random rng, bool hasLengthPrefix)
    {
        var b = (byte[])input.Clone();
        int kind = rng.Next(hasLengthPrefix ? 7 : 5);
        switch (kind)
        {
            case 0: // byte flips
                for (int i = rng.Next(1, 5); i > 0 && b.Length > 0; i--) b[rng.Next(b.Length)] ^= (byte)(1 << rng.Next(8));
                return b;
            case 1: // truncation
                return b[..rng.Next(b.Length + 1)];
            case 2: // random byte values
                for (int i = rng.Next(1, 4); i > 0 && b.Length > 0; i--) b[rng.Next(b.Length)] = (byte)rng.Next(256);
                return b;
            case 3: // JSON token insertion
            {
                var s = Encoding.UTF8.GetString(b);
                int at = rng.Next(hasLengthPrefix ? Math.Min(8, s.Length) : 0, s.Length + 1);
                return ReLength(Encoding.UTF8.GetBytes(s.Insert(at, JsonTokens[rng.Next(JsonTokens.Length)])), input, hasLengthPrefix);
            }
            case 4: // JSON digit / character replacement keeping the length
            {
                for (int i = rng.Next(1, 4); i > 0; i--)
                {
                    int at = rng.Next(b.Length);
                    if (b[at] is >= (byte)'0' and <= (byte)'9') b[at] = (byte)('0' + rng.Next(10));
                    else if (b[at] == (byte)'"') b[at] = (byte)' ';
                    else b[at] = (byte)Replacements[rng.Next(Replacements.Length)];
                }
                return b;
            }
            case 5: // header length: random, near-correct or huge
            {
                ulong n = BitConverter.ToUInt64(b, 0);
                ulong v = rng.Next(4) switch
                {
                    0 => (ulong)rng.NextInt64(),
                    1 => n + (ulong)rng.Next(-16, 17),
                    2 => 1UL << rng.Next(64),
                    _ => (ulong)rng.Next(0, b.Length + 16),
                };
                BitConverter.GetBytes(v).CopyTo(b, 0);
                return b;
            }
            default: // delete a span
            {
                int at = rng.Next(b.Length), len = rng.Next(1, 12);
                var cut = b[..at].Concat(b[Math.Min(b.Length, at + len)..]).ToArray();
                return rng.Next(2) == 0 ? cut : ReLength(cut, input, true);
            }
        }
    }

    /// <summary>After a length-changing edit of a safetensors file, sometimes fix the header length so parsing goes deeper.</summary>
    private static byte[] ReLength(byte[] mutated, byte[] original, bool hasLengthPrefix)
    {
        if (!hasLengthPrefix || mutated.Length < 8) return mutated;
        long delta = mutated.Length - original.Length;
        ulong n = BitConverter.ToUInt64(original, 0);
        BitConverter.GetBytes((ulong)((long)n + delta)).CopyTo(mutated, 0);
        return mutated;
    }

    private static void OnlyCalm(Action a, int seed, int i, string what)
    {
        try { a(); }
        catch (CalmException) { }
        catch (Exception e)
        {
            Assert.Fail($"{what} case {i} (seed {seed}) threw {e.GetType().Name} instead of a CalmException: {e}");
        }
    }

    [Fact]
    public void TenThousandMutatedInputsGiveOnlyCalmErrors()
    {
        int seed = Environment.TickCount;
        var task = Task.Run(() => RunFuzz(seed));
        Assert.True(task.Wait(TimeSpan.FromSeconds(60)), $"fuzzing did not finish in 60 s (seed {seed}): a hang");
        var (cases, accepted, rejected) = task.Result;
        Assert.True(cases >= 10_000, $"only {cases} cases");
        // The mutations must exercise both outcomes, or the fuzzer is not reaching the parser.
        Assert.True(accepted > 0 && rejected > cases / 4, $"accepted {accepted}, rejected {rejected} of {cases}");
    }

    private static (int Cases, int Accepted, int Rejected) RunFuzz(int seed)
    {
        var rng = new Random(seed);
        var sw = Stopwatch.StartNew();
        int cases = 0, accepted = 0, rejected = 0;
        void Count(Action a, int i, string what)
        {
            cases++;
            bool ok = false;
            OnlyCalm(() => { a(); ok = true; }, seed, i, what);
            if (ok) accepted++; else rejected++;
        }

        // A real small safetensors file (phi3 tensors, mixed dtypes) and a config.json with rope scaling.
        using var dir = new TempDir();
        var config = Config("phi3");
        config["rope_scaling"] = System.Text.Json.Nodes.JsonNode.Parse("{\"type\": \"longrope\", \"short_factor\": [1, 1, 1, 1], \"long_factor\": [2, 2, 2, 2]}");
        var tensors = MakeTensors(TensorSpecs("phi3", config).Take(6), DType.BF16, seed);
        tensors.Add(new SafetensorsTensor("extra.f32", DType.F32, new long[] { 3 }, new byte[12]));
        SafetensorsWriter.Write(dir.File("t.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        byte[] st = File.ReadAllBytes(dir.File("t.safetensors"));
        int headerEnd = 8 + (int)BitConverter.ToUInt64(st, 0);
        byte[] stHeaderOnly = st[..(headerEnd + 64)]; // mutate mostly the header; keep some data
        byte[] cfg = Encoding.UTF8.GetBytes(config.ToJsonString());
        byte[] gen = Encoding.UTF8.GetBytes("{\"bos_token_id\": 1, \"eos_token_id\": [2, 32000], \"do_sample\": true, \"temperature\": 0.7}");

        for (int i = 0; i < 6000; i++)
        {
            var m = Mutate(i % 2 == 0 ? st : stHeaderOnly, rng, hasLengthPrefix: true);
            Count(() => SafetensorsFile.ReadHeader(new MemoryStream(m), "fuzz.safetensors"), i, "safetensors");
        }
        for (int i = 0; i < 3500; i++)
        {
            var m = Mutate(cfg, rng, hasLengthPrefix: false);
            Count(() => ConfigReader.Parse(m, "fuzz/config.json"), i, "config.json");
        }
        for (int i = 0; i < 500; i++)
        {
            var m = Mutate(gen, rng, hasLengthPrefix: false);
            Count(() => ConfigReader.ParseGeneration(m, "fuzz/generation_config.json"), i, "generation_config.json");
        }

        // Whole folders through the real loader (mapping included): mutate the weights file or the config.
        using var folder = new TempDir();
        Write(folder.Path, "llama", DType.BF16, seed);
        byte[] goodSt = File.ReadAllBytes(folder.File("model.safetensors"));
        byte[] goodCfg = File.ReadAllBytes(folder.File("config.json"));
        for (int i = 0; i < 300; i++)
        {
            bool weights = i % 3 != 0;
            var m = Mutate(weights ? goodSt : goodCfg, rng, weights);
            File.WriteAllBytes(folder.File("model.safetensors"), weights ? m : goodSt);
            File.WriteAllBytes(folder.File("config.json"), weights ? goodCfg : m);
            Count(() => ModelFolderLoader.Load(folder.Path, null, default).Store.Dispose(), i, "folder");
            Assert.Equal(0, MappedSafetensors.LiveMappings(folder.File("model.safetensors")));
        }
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(45), $"fuzzing took {sw.Elapsed.TotalSeconds:F1} s");
        return (cases, accepted, rejected);
    }
}
