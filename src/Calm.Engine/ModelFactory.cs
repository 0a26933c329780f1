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
    /// <summary>
    /// Weight dtype to quantize to at import: <see cref="DType.F8E4M3"/> (fp8) or <see cref="DType.Int4"/> (int4),
    /// formats in <see cref="Quant.QuantFormats"/>; null (or the checkpoint's own dtype) keeps the stored weights.
    /// </summary>
    public DType? WeightDType { get; init; }
    /// <summary>
    /// KV cache type (<see cref="KvCacheTypes"/>): "f16" or "fp8"; null: the backend's default (CUDA f16, CPU f32).
    /// </summary>
    public string? KvCacheDType { get; init; }
}

/// <summary>Builds <see cref="LoadedModel"/>s: from a Hugging Face folder, or synthetic from a preset.</summary>
public static class ModelFactory
{
    public const int DefaultContextCap = 8192;

    /// <summary>Maps and validates a model folder, then puts it on a device. Nothing stays allocated on failure.</summary>
    public static LoadedModel Import(string path, ImportOptions options, IProgress<LoadProgress>? progress = null, CancellationToken ct = default)
    {
        options = CheckQuantizedDevice(options.WeightDType, options);
        var loaded = ModelFolderLoader.Load(path, progress, ct, options.Verbose, options.Warning);
        if (options.WeightDType is DType want && want != loaded.Config.DType)
        {
            if (!DTypes.IsQuantized(want))
            {
                loaded.Store.Dispose();
                throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                    $"-DType {DTypes.Name(want)}: this checkpoint is stored as {DTypes.Name(loaded.Config.DType)}; import converts only to fp8 or int4 " +
                    $"(or leave out -DType to keep {DTypes.Name(loaded.Config.DType)}).", "DType");
            }
            var mapped = loaded.Store;
            try
            {
                var (qw, qs) = Quant.Quantizer.QuantizeModel(loaded.Weights, want, progress, ct);
                options.Verbose?.Invoke($"Quantized to {DTypes.Name(want)}: {loaded.Weights.TotalBytes / 1e6:F1} MB -> {qw.TotalBytes / 1e6:F1} MB.");
                loaded = loaded with { Config = loaded.Config with { DType = want }, Weights = qw, Store = qs };
            }
            finally
            {
                // The mapped checkpoint is needed no longer: everything kept was copied into the native store
                // (and on failure the quantizer freed its own store).
                mapped.Dispose();
            }
        }
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
        if (DTypes.IsQuantized(dtype))
        {
            // Quantized: bf16 random weights (the same values as -DType bf16 with this seed), quantized. On a GPU both
            // happen there (kernels/quantize.cu, byte for byte the host's result; no host copy); on the CPU on the host.
            options = CheckQuantizedDevice(dtype, options);
            var bconfig = Presets.Get(preset) with { DType = SyntheticWeights.QuantizedSourceDType };
            if (options.ContextLength is int cq && cq > bconfig.MaxPositionEmbeddings)
                throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                    $"ContextLength {cq} exceeds the preset's max_position_embeddings ({bconfig.MaxPositionEmbeddings}).", "ContextLength");
            bool qOnGpu = options.Device == DeviceChoice.Cuda || (options.Device == DeviceChoice.Auto && Cuda.CudaDeviceInfo.Unavailable() is null);
            if (qOnGpu)
            {
                var qdconfig = bconfig with { DType = dtype };
                var qdWeights = SyntheticWeights.DeviceOnly(bconfig, dtype);
                var emptyStore = new NativeWeightStore();
                try
                {
                    var backend = CreateBackend(qdconfig, qdWeights, options with { Device = DeviceChoice.Cuda }, progress, ct, seed);
                    return new LoadedModel(options.Name ?? Presets.Canonical(preset), qdconfig, qdWeights, emptyStore, backend, null)
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
            var (bw, bstore) = SyntheticWeights.Build(bconfig, seed, progress, ct);
            ModelWeights qw; NativeWeightStore qs;
            try { (qw, qs) = Quant.Quantizer.QuantizeModel(bw, dtype, progress, ct); }
            finally { bstore.Dispose(); }
            var qconfig = bconfig with { DType = dtype };
            try
            {
                var backend = CreateBackend(qconfig, qw, options, progress, ct);
                return new LoadedModel(options.Name ?? Presets.Canonical(preset), qconfig, qw, qs, backend, null)
                {
                    Preset = Presets.Canonical(preset),
                    Seed = seed,
                };
            }
            catch
            {
                qs.Dispose();
                throw;
            }
        }
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

    /// <summary>
    /// Quantized weights run on both backends (the CPU kernels and CudaQuantKernels). -Device Cuda without a usable GPU
    /// is refused here, before the checkpoint is loaded and quantized, rather than after.
    /// </summary>
    private static ImportOptions CheckQuantizedDevice(DType? dtype, ImportOptions options)
    {
        if (dtype is not DType d || !DTypes.IsQuantized(d) || options.Device != DeviceChoice.Cuda) return options;
        if (Cuda.CudaDeviceInfo.Unavailable() is { } why)
            throw new CalmException(ErrorIds.DeviceNotAvailable, CalmErrorKind.NotAvailable,
                $"-Device Cuda is not available: {why} Use -Device Cpu (or Auto) for {DTypes.Name(d)} weights.", "Cuda");
        return options;
    }

    internal static IForwardBackend CreateBackend(ModelConfig config, ModelWeights weights, ImportOptions options, IProgress<LoadProgress>? progress, CancellationToken ct,
                                                  int? syntheticSeed = null)
    {
        int ctx = options.ContextLength ?? Math.Min(config.MaxPositionEmbeddings, DefaultContextCap);
        string? kv = options.KvCacheDType is null ? null : KvCacheTypes.Parse(options.KvCacheDType);
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
                return new Cuda.CudaBackend(config, weights, ctx, 0, progress, ct, options.Verbose, syntheticSeed, kvCacheDType: kv);
            }
            case DeviceChoice.Auto:
            {
                var why = Cuda.CudaDeviceInfo.Unavailable();
                if (why is null)
                    return new Cuda.CudaBackend(config, weights, ctx, 0, progress, ct, options.Verbose, null, kvCacheDType: kv);
                options.Warning?.Invoke($"Running on the CPU: {why}");
                return new CpuBackend(config, weights, ctx, kv);
            }
            case DeviceChoice.Cpu:
            default:
                return new CpuBackend(config, weights, ctx, kv);
        }
    }
}
