namespace Calm.Engine.Session;

/// <summary>
/// The engine's one per-process session: the models loaded, which one is the default (the last loaded).
/// The PowerShell module uses <see cref="Shared"/>; tests may create their own.
/// </summary>
public sealed class CalmSession : IDisposable
{
    private static readonly Lazy<CalmSession> s_shared = new(() => new CalmSession());
    public static CalmSession Shared => s_shared.Value;

    private readonly object _lock = new();
    private readonly List<LoadedModel> _models = new();

    public IReadOnlyList<LoadedModel> Models { get { lock (_lock) return _models.ToArray(); } }

    /// <summary>The model used where none is named: the one loaded last.</summary>
    public LoadedModel? Default { get { lock (_lock) return _models.Count == 0 ? null : _models[^1]; } }

    /// <summary>A name not yet used: <paramref name="baseName"/>, or baseName-2, -3, …</summary>
    public string UniqueName(string baseName)
    {
        lock (_lock)
        {
            if (!_models.Any(m => string.Equals(m.Name, baseName, StringComparison.OrdinalIgnoreCase))) return baseName;
            for (int i = 2; ; i++)
            {
                var n = $"{baseName}-{i}";
                if (!_models.Any(m => string.Equals(m.Name, n, StringComparison.OrdinalIgnoreCase))) return n;
            }
        }
    }

    public void Add(LoadedModel model)
    {
        lock (_lock)
        {
            if (_models.Any(m => string.Equals(m.Name, model.Name, StringComparison.OrdinalIgnoreCase)))
                throw new CalmException(ErrorIds.ModelNameInUse, CalmErrorKind.InvalidArgument,
                    $"A model named '{model.Name}' is already loaded. Choose another -Name or Remove-CalmModel it first.", model.Name);
            _models.Add(model);
        }
    }

    public LoadedModel? Find(string name)
    {
        lock (_lock) return _models.FirstOrDefault(m => string.Equals(m.Name, name, StringComparison.OrdinalIgnoreCase));
    }

    /// <summary>The named model, or the default; Calm.ModelNotFound / Calm.NoModelLoaded otherwise.</summary>
    public LoadedModel Resolve(string? name)
    {
        if (string.IsNullOrEmpty(name))
            return Default ?? throw new CalmException(ErrorIds.NoModelLoaded, CalmErrorKind.ObjectNotFound,
                "No model is loaded. Load one with Import-CalmModel -Path <folder> or New-CalmModel -Preset <name>.");
        return Find(name) ?? throw new CalmException(ErrorIds.ModelNotFound, CalmErrorKind.ObjectNotFound,
            $"No loaded model is named '{name}'. Get-CalmModel lists the loaded models.", name);
    }

    /// <summary>Removes the model from the session and frees its memory.</summary>
    public bool Remove(LoadedModel model)
    {
        bool removed;
        lock (_lock) removed = _models.Remove(model);
        model.Dispose();
        return removed;
    }

    public void Dispose()
    {
        LoadedModel[] all;
        lock (_lock) { all = _models.ToArray(); _models.Clear(); }
        foreach (var m in all) m.Dispose();
    }
}
