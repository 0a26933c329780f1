using System.Text.Json;
using Calm.Engine.Cpu;
using Calm.Engine.Weights;

namespace Calm.Engine.Tests.Fixtures;

/// <summary>
/// The proof against Hugging Face transformers: tiny models saved by transformers 5.17 (tests/fixtures/make_fixtures.py,
/// run on the GPU machine) with transformers' float64 logits for a fixed 24-token sequence at every position.
/// An architecture without a passing fixture here is not supported.
/// </summary>
public class TransformersFixtureTests
{
    public const double CpuTolerance = 1e-3;

    public static string FixturesDir
    {
        get
        {
            var dir = AppContext.BaseDirectory;
            while (dir is not null && !File.Exists(Path.Combine(dir, "tests", "fixtures", "make_fixtures.py")))
                dir = Path.GetDirectoryName(dir);
            return dir is null ? throw new DirectoryNotFoundException("tests/fixtures not found above " + AppContext.BaseDirectory)
                               : Path.Combine(dir, "tests", "fixtures");
        }
    }

    public static TheoryData<string> Names() => new() { "llama", "llama_tied", "mistral", "qwen2", "qwen3", "gemma", "phi3", "mixtral" };

    public sealed record Reference(int[] InputIds, float[][] Logits, string Dtype);

    public static Reference LoadReference(string name)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(FixturesDir, name, "reference.json")));
        var r = doc.RootElement;
        var ids = r.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var logits = r.GetProperty("logits").EnumerateArray().Select(row => row.EnumerateArray().Select(e => (float)e.GetDouble()).ToArray()).ToArray();
        return new Reference(ids, logits, r.GetProperty("dtype").GetString()!);
    }

    public static double RelL2(ReadOnlySpan<float> got, float[] want)
    {
        double num = 0, den = 0;
        for (int i = 0; i < want.Length; i++) { double d = got[i] - want[i]; num += d * d; den += (double)want[i] * want[i]; }
        return Math.Sqrt(num / den);
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void FixtureLoadsWithItsDeclaredDType(string name)
    {
        var folder = ModelFolderLoader.Load(Path.Combine(FixturesDir, name), null, default);
        using (folder.Store)
        {
            var reference = LoadReference(name);
            Assert.Equal(reference.Dtype switch { "bfloat16" => Model.DType.BF16, "float16" => Model.DType.F16, _ => Model.DType.F32 }, folder.Config.DType);
            Assert.Equal(256, folder.Config.VocabSize);
        }
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void CpuPrefillMatchesTransformersAtEveryPosition(string name)
    {
        var reference = LoadReference(name);
        var folder = ModelFolderLoader.Load(Path.Combine(FixturesDir, name), null, default);
        using (folder.Store)
        using (var backend = new CpuBackend(folder.Config, folder.Weights, 64))
        {
            int v = folder.Config.VocabSize, n = reference.InputIds.Length;
            var logits = new float[n * v];
            backend.Forward(reference.InputIds, 0, logits, allLogits: true);
            for (int p = 0; p < n; p++)
            {
                double err = RelL2(logits.AsSpan(p * v, v), reference.Logits[p]);
                Assert.True(err <= CpuTolerance, $"{name}: position {p}: relative L2 {err:E2} > {CpuTolerance:E0}");
            }
        }
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void CpuDecodeTokenByTokenMatchesTransformers(string name)
    {
        var reference = LoadReference(name);
        var folder = ModelFolderLoader.Load(Path.Combine(FixturesDir, name), null, default);
        using (folder.Store)
        using (var backend = new CpuBackend(folder.Config, folder.Weights, 64))
        {
            int v = folder.Config.VocabSize;
            var logits = new float[v];
            for (int p = 0; p < reference.InputIds.Length; p++)
            {
                backend.Forward(reference.InputIds.AsSpan(p, 1), p, logits, allLogits: false);
                double err = RelL2(logits, reference.Logits[p]);
                Assert.True(err <= CpuTolerance, $"{name}: decode position {p}: relative L2 {err:E2} > {CpuTolerance:E0}");
            }
        }
    }
}
