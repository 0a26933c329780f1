using System.Management.Automation;
using Calm.Engine.Synthetic;

namespace Calm.PowerShell.Commands;

/// <summary>One row of Get-CalmPreset: a real model's shape (flat, Export-Csv friendly).</summary>
public sealed class CalmPresetInfo
{
    public required string Name { get; init; }
    public required string Family { get; init; }
    /// <summary>Parameters computed from the shape (all experts).</summary>
    public required long Parameters { get; init; }
    /// <summary>The published count, billions.</summary>
    public required double PublishedBillions { get; init; }
    public required int Layers { get; init; }
    public required int Hidden { get; init; }
    public required int Intermediate { get; init; }
    public required int Heads { get; init; }
    public required int KvHeads { get; init; }
    public required int HeadDim { get; init; }
    public required int Vocab { get; init; }
    /// <summary>max_position_embeddings.</summary>
    public required int Context { get; init; }
    public int? Experts { get; init; }
    public int? ExpertsPerToken { get; init; }
    public bool TiedEmbeddings { get; init; }
    /// <summary>Bytes of all weights at bf16.</summary>
    public required long BytesBf16 { get; init; }
    public required string Description { get; init; }
    public override string ToString() => Name;
}

/// <summary>Get-CalmPreset: the real model shapes New-CalmModel -Preset and Get-CalmSpeedOfLight -Preset accept.</summary>
[Cmdlet(VerbsCommon.Get, "CalmPreset")]
[OutputType(typeof(CalmPresetInfo))]
public sealed class GetCalmPresetCommand : CalmCmdlet
{
    /// <summary>Preset names; wildcards allowed (default: all).</summary>
    [Parameter(Position = 0)]
    [SupportsWildcards]
    [ArgumentCompleter(typeof(PresetCompleter))]
    public string[] Name { get; set; } = { "*" };

    protected override void End()
    {
        foreach (var n in Name)
        {
            var pattern = WildcardPattern.Get(n, WildcardOptions.IgnoreCase);
            var hits = Presets.All.Where(p => pattern.IsMatch(p.Name)).ToList();
            if (hits.Count == 0 && !WildcardPattern.ContainsWildcardCharacters(n))
            {
                try { Presets.Find(n); }
                catch (Calm.Engine.CalmException ex) { WriteCalmError(ex, n); }
            }
            foreach (var p in hits) WriteObject(From(p));
        }
    }

    internal static CalmPresetInfo From(Preset p)
    {
        var c = p.Config;
        return new CalmPresetInfo
        {
            Name = p.Name, Family = p.Family, Parameters = c.ParameterCount, PublishedBillions = p.PublishedBillions,
            Layers = c.NumLayers, Hidden = c.HiddenSize, Intermediate = c.IntermediateSize, Heads = c.NumHeads, KvHeads = c.NumKvHeads,
            HeadDim = c.HeadDim, Vocab = c.VocabSize, Context = c.MaxPositionEmbeddings,
            Experts = c.IsMoE ? c.NumExperts : null, ExpertsPerToken = c.IsMoE ? c.NumExpertsPerToken : null, TiedEmbeddings = c.TieWordEmbeddings,
            BytesBf16 = c.ParameterCount * 2, Description = p.Description,
        };
    }
}
