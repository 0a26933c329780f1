using Calm.Engine.Model;
using Calm.Engine.Weights;

namespace Calm.Engine.Session;

/// <summary>
/// A model held by the session: config, weights (and the store that owns their memory), the backend that runs it.
/// Thread-safety: any forward work holds <see cref="Gate"/>; two runspaces on one model are serialized.
/// </summary>
public sealed class LoadedModel : IDisposable
{
    public string Name { get; internal set; }
    public ModelConfig Config { get; }
    public ModelWeights Weights { get; }
    /// <summary>Folder the model came from; null for synthetic models.</summary>
    public string? Path { get; }
    /// <summary>Preset name for synthetic models.</summary>
    public string? Preset { get; init; }
    public int? Seed { get; init; }
    public IForwardBackend Backend { get; private set; }
    /// <summary>Held while a forward pass, generation or measurement runs.</summary>
    public SemaphoreSlim Gate { get; } = new(1, 1);
    public DateTime LoadedAt { get; } = DateTime.Now;
    /// <summary>Tokenizer and friends attach here (text issue); opaque to the core.</summary>
    public object? Tokenizer { get; set; }
    /// <summary>Tokenizer + chat template of the folder (null for synthetic models or folders without a tokenizer).
    /// <see cref="Tokenizer"/> holds the same CalmTokenizer.</summary>
    public Generation.ModelText? Text { get; set; }
    /// <summary>generation_config.json of the folder (eos ids, sampling defaults); null for synthetic models.</summary>
    public GenerationConfig? Generation { get; init; }
    public bool IsDisposed { get; private set; }

    private readonly WeightStore _store;

    public LoadedModel(string name, ModelConfig config, ModelWeights weights, WeightStore store, IForwardBackend backend, string? path)
    {
        Name = name; Config = config; Weights = weights; _store = store; Backend = backend; Path = path;
    }

    public DType DType => Config.DType;
    public long WeightBytes => Weights.TotalBytes;
    public string DeviceKind => Backend.DeviceKind;

    /// <summary>Takes the gate or throws Calm.Cancelled when cancelled while waiting.</summary>
    public IDisposable Acquire(CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        try { Gate.Wait(ct); }
        catch (OperationCanceledException)
        {
            throw new CalmException(ErrorIds.Cancelled, CalmErrorKind.OperationStopped, $"Stopped while waiting for model '{Name}', which another runspace is using.", Name);
        }
        if (IsDisposed) { Gate.Release(); throw new CalmException(ErrorIds.ModelDisposed, CalmErrorKind.InvalidOperation, $"Model '{Name}' was removed.", Name); }
        return new Releaser(Gate);
    }

    private sealed class Releaser(SemaphoreSlim s) : IDisposable
    {
        private int _done;
        public void Dispose() { if (Interlocked.Exchange(ref _done, 1) == 0) s.Release(); }
    }

    public void Dispose()
    {
        if (IsDisposed) return;
        // Wait for running work to finish so memory is not freed under it.
        Gate.Wait();
        try
        {
            IsDisposed = true;
            Backend.Dispose();
            (Tokenizer as IDisposable)?.Dispose();
            _store.Dispose();
        }
        finally { Gate.Release(); }
    }

    public override string ToString() => Name;
}
