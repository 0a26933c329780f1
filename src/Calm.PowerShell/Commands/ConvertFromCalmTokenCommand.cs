using System.Management.Automation;
using Calm.Engine.Tokenization;

namespace Calm.PowerShell.Commands;

/// <summary>
/// ConvertFrom-CalmToken: token ids -> text. Ids come as -Id, or from the pipeline as integers or token objects (their
/// Id / TokenId property), so `ConvertTo-CalmToken x | ConvertFrom-CalmToken` round-trips; all ids of one call are
/// decoded together into one string.
/// </summary>
[Cmdlet(VerbsData.ConvertFrom, "CalmToken", DefaultParameterSetName = ModelSet)]
[OutputType(typeof(string))]
public sealed class ConvertFromCalmTokenCommand : CalmCmdlet
{
    private const string ModelSet = "Model";
    private const string TokenizerSet = "Tokenizer";

    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true, ValueFromPipelineByPropertyName = true)]
    [Alias("TokenId")]
    public int[] Id { get; set; } = Array.Empty<int>();

    [Parameter(ParameterSetName = ModelSet)]
    [ModelTransformation]
    [ArgumentCompleter(typeof(ModelNameCompleter))]
    public CalmModel? Model { get; set; }

    /// <summary>A tokenizer.json, tokenizer.model, or a model folder; no weights are loaded.</summary>
    [Parameter(Mandatory = true, ParameterSetName = TokenizerSet)]
    [ValidateNotNullOrEmpty]
    public string? Tokenizer { get; set; }

    /// <summary>Leave out special tokens (BOS, EOS, chat markers).</summary>
    [Parameter]
    public SwitchParameter SkipSpecialTokens { get; set; }

    private CalmTokenizer? _tok;
    private readonly List<int> _ids = new();

    protected override void Begin() => _tok = TextHelpers.Resolve(this, Tokenizer, Model);

    protected override void Process() => _ids.AddRange(Id);

    protected override void End() => WriteObject(_tok!.Decode(_ids.ToArray(), SkipSpecialTokens));
}
