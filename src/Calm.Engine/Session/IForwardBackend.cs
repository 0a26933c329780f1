using Calm.Engine.Model;

namespace Calm.Engine.Session;

/// <summary>
/// A device that runs a model's forward pass and keeps its KV cache (one sequence). The CPU reference backend and the
/// CUDA backend implement it; the generator, perplexity and benchmarks talk only to this.
/// Not thread-safe: callers hold <see cref="LoadedModel.Gate"/>.
/// </summary>
public interface IForwardBackend : IDisposable
{
    /// <summary>"Cpu" or "Cuda".</summary>
    string DeviceKind { get; }
    /// <summary>Human-readable device, e.g. "CPU (2 cores)" or "NVIDIA H200".</summary>
    string DeviceName { get; }
    ModelConfig Config { get; }
    /// <summary>Element type of the KV cache ("f32" on the CPU reference, "f16" on the GPU), for the byte model.</summary>
    string KvCacheDType { get; }
    /// <summary>Positions the KV cache holds.</summary>
    int MaxContext { get; }

    /// <summary>
    /// Runs <paramref name="tokens"/> at positions startPos, startPos+1, … and updates the KV cache for them
    /// (positions ≥ startPos are overwritten: passing startPos = 0 starts a new sequence).
    /// <paramref name="logits"/> receives tokens.Length × V floats when <paramref name="allLogits"/> is true,
    /// otherwise V floats for the last token.
    /// </summary>
    void Forward(ReadOnlySpan<int> tokens, int startPos, Span<float> logits, bool allLogits, CancellationToken cancellationToken = default);
}
