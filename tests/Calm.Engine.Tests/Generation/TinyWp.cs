using System.Text.Json;
using Calm.Engine.Session;

namespace Calm.Engine.Tests.Generation;

/// <summary>models/tiny-wp and its training.json, found above the test binaries; one CPU instance per test class.</summary>
public static class TinyWp
{
    public static string RepoRoot
    {
        get
        {
            for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
                if (File.Exists(Path.Combine(d.FullName, "models", "tiny-wp", "training.json"))) return d.FullName;
            throw new DirectoryNotFoundException("models/tiny-wp not found above " + AppContext.BaseDirectory);
        }
    }

    public static string Folder => Path.Combine(RepoRoot, "models", "tiny-wp");

    /// <summary>
    /// ../shared/data/war-and-peace.txt beside the checkout (CI always has it; CALM_SHARED_DATA overrides the folder).
    /// Missing: the test is skipped with the reason on a developer's machine, and fails under CI=true.
    /// </summary>
    public static string WarAndPeacePath()
    {
        string dir = Environment.GetEnvironmentVariable("CALM_SHARED_DATA") is { Length: > 0 } d ? d : Path.Combine(RepoRoot, "..", "shared", "data");
        string path = Path.GetFullPath(Path.Combine(dir, "war-and-peace.txt"));
        if (File.Exists(path)) return path;
        string why = $"the held-out text is expected at {path} (the project's shared/ folder beside the checkout, or CALM_SHARED_DATA)";
        Assert.False(string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase), why);
        Assert.Skip(why);
        return path;
    }

    public static JsonElement Training()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(Folder, "training.json")));
        return doc.RootElement.Clone();
    }

    public static LoadedModel Load(int? context = null) =>
        ModelFactory.Import(Folder, new ImportOptions { Device = DeviceChoice.Cpu, ContextLength = context, Name = "tiny-wp" });
}

/// <summary>Shares one loaded tiny-wp among a class's tests.</summary>
public sealed class TinyWpFixture : IDisposable
{
    public LoadedModel Model { get; } = TinyWp.Load();
    public void Dispose() => Model.Dispose();
}
