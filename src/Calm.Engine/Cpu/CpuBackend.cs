using Calm.Engine.Model;
using Calm.Engine.Session;
using Calm.Engine.Weights;

namespace Calm.Engine.Cpu;

/// <summary>CPU reference backend. PLACEHOLDER until the CPU work lands.</summary>
public sealed class CpuBackend : IForwardBackend
{
    public CpuBackend(ModelConfig config, ModelWeights weights, int maxContext)
    {
        Config = config; MaxContext = maxContext;
    }
    public string DeviceKind => "Cpu";
    public string DeviceName => $"CPU ({Environment.ProcessorCount} cores)";
    public ModelConfig Config { get; }
    public int MaxContext { get; }
    public void Forward(ReadOnlySpan<int> tokens, int startPos, Span<float> logits, bool allLogits, CancellationToken cancellationToken = default)
        => throw new NotImplementedException();
    public void Dispose() { }
}
