using Calm.Engine.Cpu;
using Calm.Engine.Model;
using Calm.Engine.Session;
using Calm.Engine.Synthetic;
using Calm.Engine.Weights;

namespace Calm.Engine;

public enum DeviceChoice { Auto, Cpu, Cuda }

/// <summary>One step of a long operation, for Write-Progress. Fraction in [0,1], or negative when unknown.</summary>
public sealed record LoadProgress(string Activity, string Status, double Fraction);

public sealed record ImportOptions
{
    /// <summary>Session name; default: the folder name (or preset name), made unique.</summary>
    public string? Name { get; init; }
    public DeviceChoice Device { get; init; } = DeviceChoice.Auto;
    /// <summary>Positions the KV cache holds; default min(max_position_embeddings, <see cref="ModelFactory.DefaultContextCap"/>).</summary>
    public int? ContextLength { get; init; }
    /// <summary>Receives warnings (e.g. Auto fell back to CPU) and verbose lines.</summary>
    public Action<string>? Warning { get; init; }
    public Action<string>? Verbose { get; init; }
}

/// <summary>Builds <see cref="LoadedModel"/>s: from a Hugging Face folder, or synthetic from a preset.</summary>
public static class ModelFactory
{
    public const int DefaultContextCap = 8192;

    /// <summary>Maps and validates a model folder, then puts it on a device. Nothing stays allocated on failure.</summary>
    public static LoadedModel Import(string path, ImportOptions options, IProgress<LoadProgress>? progress = null, CancellationToken ct = default)
    {
        var loaded = ModelFolderLoader.Load(path, progress, ct, options.Verbose);
        try
        {
            var full = System.IO.Path.GetFullPath(path);
            // Tokenizer and chat template first (they only warn), so nothing on the device can leak if they throw.
            var text = Generation.ModelText.TryLoad(Directory.Exists(full) ? full : System.IO.Path.GetDirectoryName(full)!, options.Warning);
            var backend = CreateBackend(loaded.Config, loaded.Weights, options, progress, ct);
            var name = options.Name ?? System.IO.Path.GetFileName(System.IO.Path.TrimEndingDirectorySeparator(full));
            return new LoadedModel(name, loaded.Config, loaded.Weights, loaded.Store, backend, full)
            {
                Generation = loaded.Generation,
                Text = text,
                Tokenizer = text?.Tokenizer,
            };
        }
        catch
        {
            loaded.Store.Dispose();
            throw;
        }
    }

    /// <summary>A model of a named real shape with deterministic random weights and no files.</summary>
    public static LoadedModel CreateSynthetic(string preset, int seed, DType dtype, ImportOptions options, IProgress<LoadProgress>? progress = null, CancellationToken ct = default)
    {
        var config = Presets.Get(preset) with { DType = dtype };
        if (options.ContextLength is int c && c > config.MaxPositionEmbeddings)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                $"ContextLength {c} exceeds the preset's max_position_embeddings ({config.MaxPositionEmbeddings}).", "ContextLength");
        // On a GPU the weights are made there by the fill kernel (no host copy): the host holds shapes only.
        bool onGpu = options.Device == DeviceChoice.Cuda || (options.Device == DeviceChoice.Auto && Cuda.CudaDeviceInfo.Unavailable() is null);
        if (onGpu)
        {
            var deviceWeights = SyntheticWeights.DeviceOnly(config);
            var emptyStore = new NativeWeightStore();
            try
            {
                var backend = CreateBackend(config, deviceWeights, options with { Device = DeviceChoice.Cuda }, progress, ct, seed);
                return new LoadedModel(options.Name ?? Presets.Canonical(preset), config, deviceWeights, emptyStore, backend, null)
                {
                    Preset = Presets.Canonical(preset),
                    Seed = seed,
                };
            }
            catch
            {
                emptyStore.Dispose();
                throw;
            }
        }
        var (weights, store) = SyntheticWeights.Build(config, seed, progress, ct);
        try
        {
            var backend = CreateBackend(config, weights, options, progress, ct);
            return new LoadedModel(options.Name ?? Presets.Canonical(preset), config, weights, store, backend, null)
            {
                Preset = Presets.Canonical(preset),
                Seed = seed,
            };
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }

    internal static IForwardBackend CreateBackend(ModelConfig config, ModelWeights weights, ImportOptions options, IProgress<LoadProgress>? progress, CancellationToken ct,
                                                  int? syntheticSeed = null)
    {
        int ctx = options.ContextLength ?? Math.Min(config.MaxPositionEmbeddings, DefaultContextCap);
        if (ctx <= 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"ContextLength must be positive (got {ctx}).", "ContextLength");
        switch (options.Device)
        {
            case DeviceChoice.Cuda:
            {
                var why = Cuda.CudaDeviceInfo.Unavailable();
                if (why is not null)
                    throw new CalmException(ErrorIds.DeviceNotAvailable, CalmErrorKind.NotAvailable,
                        $"-Device Cuda is not available: {why} Use -Device Cpu (or Auto).", "Cuda");
                return new Cuda.CudaBackend(config, weights, ctx, 0, progress, ct, options.Verbose, syntheticSeed);
            }
            case DeviceChoice.Auto:
            {
                var why = Cuda.CudaDeviceInfo.Unavailable();
                if (why is null)
                    return new Cuda.CudaBackend(config, weights, ctx, 0, progress, ct, options.Verbose);
                options.Warning?.Invoke($"Running on the CPU: {why}");
                return new CpuBackend(config, weights, ctx);
            }
            case DeviceChoice.Cpu:
            default:
                return new CpuBackend(config, weights, ctx);
        }
    }
}
