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
