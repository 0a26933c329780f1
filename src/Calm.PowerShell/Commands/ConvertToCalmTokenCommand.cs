using System.Management.Automation;
using Calm.Engine.Tokenization;

namespace Calm.PowerShell.Commands;

/// <summary>
/// ConvertTo-CalmToken: text -> the model's token ids, one object per token (Index, Id, Text). Uses -Model's tokenizer
/// (default: the last loaded model) or -Tokenizer, a tokenizer.json / tokenizer.model / model folder, without weights.
/// </summary>
[Cmdlet(VerbsData.ConvertTo, "CalmToken", DefaultParameterSetName = ModelSet)]
[OutputType(typeof(CalmToken))]
public sealed class ConvertToCalmTokenCommand : CalmCmdlet
{
    private const string ModelSet = "Model";
    private const string TokenizerSet = "Tokenizer";

    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true)]
    [AllowEmptyString]
    public string[] Text { get; set; } = Array.Empty<string>();

    [Parameter(ParameterSetName = ModelSet)]
    [ModelTransformation]
    [ArgumentCompleter(typeof(ModelNameCompleter))]
    public CalmModel? Model { get; set; }

    /// <summary>A tokenizer.json, tokenizer.model, or a model folder; no weights are loaded.</summary>
    [Parameter(Mandatory = true, ParameterSetName = TokenizerSet)]
    [ValidateNotNullOrEmpty]
    public string? Tokenizer { get; set; }

    /// <summary>Add no BOS/EOS (special-token text in the input still becomes its id).</summary>
    [Parameter]
    public SwitchParameter NoSpecialTokens { get; set; }

    private CalmTokenizer? _tok;

    protected override void Begin() => _tok = TextHelpers.Resolve(this, Tokenizer, Model);

    protected override void Process()
    {
        foreach (var t in Text)
        {
            var ids = _tok!.Encode(t, addSpecialTokens: !NoSpecialTokens);
            for (int i = 0; i < ids.Length; i++)
                WriteObject(new CalmToken { Index = i, Id = ids[i], Text = _tok.TokenText(ids[i]) });
        }
    }
}
