namespace Calm.Engine.Model;

/// <summary>generation_config.json (only what Calm uses).</summary>
public sealed record GenerationConfig
{
    public int? BosTokenId { get; init; }
    public int[] EosTokenIds { get; init; } = Array.Empty<int>();
    public int? PadTokenId { get; init; }
    public double? Temperature { get; init; }
    public int? TopK { get; init; }
    public double? TopP { get; init; }
    public bool? DoSample { get; init; }
}
