using System.Management.Automation;
using System.Text;
using Calm.Engine;
using Calm.Engine.Generation;
using Calm.Engine.Session;

namespace Calm.PowerShell.Commands;

/// <summary>
/// Measure-CalmPerplexity: how well the model predicts a text. Sliding windows of -Window tokens (default the model's
/// context, at most 512) advancing by -Stride (default half the window); each token is scored once, given the earlier
/// tokens of its window. The text is tokenized as the model's tokenizer does by default (with its BOS). Each -Path
/// file gives one result; -Text lines from the pipeline are joined with newlines into one text. -PerToken writes each
/// scored token (Index, Id, Text, LogProb, Rank) instead of the summary.
/// </summary>
[Cmdlet(VerbsDiagnostic.Measure, "CalmPerplexity", DefaultParameterSetName = TextSet)]
[OutputType(typeof(CalmPerplexity))]
[OutputType(typeof(CalmScoredToken))]
public sealed class MeasureCalmPerplexityCommand : CalmCmdlet
{
    private const string TextSet = "Text";
    private const string PathSet = "Path";

    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true, ParameterSetName = TextSet)]
    [AllowEmptyString]
    public string[] Text { get; set; } = Array.Empty<string>();

    [Parameter(Mandatory = true, ParameterSetName = PathSet, ValueFromPipelineByPropertyName = true)]
    [Alias("FullName", "PSPath")]
    [ValidateNotNullOrEmpty]
    public string[] Path { get; set; } = Array.Empty<string>();

    [Parameter]
    [ModelTransformation]
    [ArgumentCompleter(typeof(ModelNameCompleter))]
    public CalmModel? Model { get; set; }

    [Parameter] public int? Window { get; set; }
    [Parameter] public int? Stride { get; set; }
    [Parameter] public SwitchParameter PerToken { get; set; }

    private readonly StringBuilder _text = new();
    private bool _anyText;

    protected override void Process()
    {
        if (ParameterSetName == TextSet)
        {
            foreach (var t in Text)
            {
                if (_anyText) _text.Append('\n');
                _text.Append(t);
                _anyText = true;
            }
            return;
        }
        foreach (var p in Path)
        {
            var full = SessionState.Path.GetUnresolvedProviderPathFromPSPath(p);
            if (!File.Exists(full))
                throw new CalmException(ErrorIds.PathNotFound, CalmErrorKind.ObjectNotFound, $"Cannot find the text file '{p}'.", p);
            MeasureOne(File.ReadAllText(full, Encoding.UTF8), full);
        }
    }

    protected override void End()
    {
        if (ParameterSetName == TextSet) MeasureOne(_text.ToString(), "text");
    }

    private void MeasureOne(string text, string source)
    {
        var m = ResolveModel(Model);
        var tok = ModelText.RequireTokenizer(m);
        if (text.Length == 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, $"The text of {source} is empty.", "Text");
        var ids = tok.Encode(text);
        var r = RunWithProgress($"Measure-CalmPerplexity {source}", (reporter, ct) => Perplexity.Measure(m, ids, Window, Stride, PerToken, reporter, ct));
        if (PerToken)
        {
            foreach (var t in r.PerToken!)
                WriteObject(new CalmScoredToken { Index = t.Index, Id = t.Id, Text = tok.TokenText(t.Id), LogProb = t.LogProb, Rank = t.Rank });
            WriteVerbose($"{source}: {r.Tokens} tokens, perplexity {r.Perplexity:F4}.");
            return;
        }
        WriteObject(new CalmPerplexity
        {
            Source = source,
            Tokens = r.Tokens,
            NegativeLogLikelihood = r.NegativeLogLikelihood,
            Perplexity = r.Perplexity,
            BitsPerToken = r.NegativeLogLikelihood / r.Tokens / Math.Log(2),
            Window = r.Window,
            Stride = r.Stride,
            Model = m.Name,
            Device = m.Backend.DeviceName,
            ElapsedMs = Math.Round(r.ElapsedMs, 1),
        });
    }
}
