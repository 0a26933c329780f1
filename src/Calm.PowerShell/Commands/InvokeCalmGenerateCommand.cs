using System.Management.Automation;
using Calm.Engine;
using Calm.Engine.Generation;
using Calm.Engine.Templates;

namespace Calm.PowerShell.Commands;

/// <summary>
/// Invoke-CalmGenerate: continues each prompt with the model. The prompt is raw text (the tokenizer adds its BOS);
/// -Chat puts it through the model's chat template as one user message (after -SystemPrompt) instead. Without -Stream
/// one result per prompt; with -Stream one object per token as it is produced. Ctrl+C stops within one token step.
/// -TokenId takes the prompt as token ids instead, which also works for models without a tokenizer (synthetic presets).
/// </summary>
[Cmdlet(VerbsLifecycle.Invoke, "CalmGenerate", DefaultParameterSetName = TextSet)]
[OutputType(typeof(CalmGeneration))]
[OutputType(typeof(CalmGeneratedToken))]
public sealed class InvokeCalmGenerateCommand : CalmCmdlet
{
    private const string TextSet = "Text";
    private const string TokenSet = "TokenId";

    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true, ValueFromPipelineByPropertyName = true, ParameterSetName = TextSet)]
    [AllowEmptyString]
    public string[] Prompt { get; set; } = Array.Empty<string>();

    /// <summary>The prompt as token ids (no tokenizer needed; the result's Text is empty when the model has none).</summary>
    [Parameter(Mandatory = true, ParameterSetName = TokenSet)]
    public int[] TokenId { get; set; } = Array.Empty<int>();

    [Parameter]
    [ModelTransformation]
    [ArgumentCompleter(typeof(ModelNameCompleter))]
    public CalmModel? Model { get; set; }

    /// <summary>Most tokens to generate (default 128).</summary>
    [Parameter]
    public int MaxTokens { get; set; } = 128;

    /// <summary>0 = greedy. Default: the model's generation_config.json (greedy when it does not sample).</summary>
    [Parameter] public double? Temperature { get; set; }
    /// <summary>Keep the k most likely tokens (0 = off).</summary>
    [Parameter] public int? TopK { get; set; }
    /// <summary>Nucleus sampling, in (0, 1] (1 = off).</summary>
    [Parameter] public double? TopP { get; set; }
    /// <summary>Drop tokens below MinP × the top probability, in [0, 1].</summary>
    [Parameter] public double? MinP { get; set; }
    /// <summary>HF repetition penalty (&gt; 0; 1 = none) on tokens already in the sequence.</summary>
    [Parameter] public double? RepetitionPenalty { get; set; }
    /// <summary>Subtracted from the logits of tokens already in the sequence (&gt; 0).</summary>
    [Parameter] public double? PresencePenalty { get; set; }
    /// <summary>Same seed, same tokens. Default: a random seed (reported in the result).</summary>
    [Parameter] public long? Seed { get; set; }
    /// <summary>Stop when the text contains one of these (not included in the text).</summary>
    [Parameter] public string[] Stop { get; set; } = Array.Empty<string>();
    /// <summary>Token ids that end generation like the model's EOS (StopReason Eos), in addition to its own.</summary>
    [Parameter] public int[] StopTokenId { get; set; } = Array.Empty<int>();
    /// <summary>Log-probabilities of the chosen tokens.</summary>
    [Parameter] public SwitchParameter LogProbs { get; set; }
    /// <summary>Also the N most likely alternatives at each step.</summary>
    [Parameter] public int TopLogProbs { get; set; }
    /// <summary>One object per token as it is produced.</summary>
    [Parameter] public SwitchParameter Stream { get; set; }
    /// <summary>Apply the model's chat template (a user message) instead of continuing raw text.</summary>
    [Parameter] public SwitchParameter Chat { get; set; }
    /// <summary>With -Chat: a system message before the prompt.</summary>
    [Parameter] public string? SystemPrompt { get; set; }

    protected override void Process()
    {
        var m = ResolveModel(Model);
        var sampling = SamplingParameters.Build(m, Temperature, TopK, TopP, MinP, RepetitionPenalty, PresencePenalty, Seed);
        var options = new GenerateOptions
        {
            MaxTokens = MaxTokens,
            Sampling = sampling,
            Stop = Stop,
            LogProbs = LogProbs || TopLogProbs > 0,
            TopLogProbs = TopLogProbs,
            StopOnSpecialTokens = Chat,
            EosIds = StopTokenId.Length == 0 ? null : Generator.DefaultEos(m).Concat(StopTokenId).ToArray(),
        };
        if (ParameterSetName == TokenSet)
        {
            if (Chat)
                throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                    "-Chat renders text through the chat template; it cannot be used with -TokenId.", "Chat");
            var t = m.Text?.Tokenizer;
            Action<GeneratedToken>? onIdToken = Stream ? x => WriteObject(CalmGeneratedToken.From(x, t)) : null;
            var rr = Generator.Generate(m, TokenId, options, onIdToken, CancellationToken);
            if (rr.StopReason == StopReason.Cancelled) throw new PipelineStoppedException();
            if (!Stream) WriteObject(CalmGeneration.From(string.Join(" ", TokenId), rr, m, options.LogProbs));
            return;
        }
        foreach (var prompt in Prompt)
        {
            if (string.IsNullOrEmpty(prompt))
                throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                    "The prompt is empty. Give some text to continue.", "Prompt");
            var tok = ModelText.RequireTokenizer(m);
            int[] ids;
            if (Chat)
            {
                var messages = new List<ChatMessage>();
                if (!string.IsNullOrEmpty(SystemPrompt)) messages.Add(new ChatMessage("system", SystemPrompt));
                messages.Add(new ChatMessage("user", prompt));
                ids = tok.Encode(ModelText.RequireTemplate(m).Render(messages, addGenerationPrompt: true), addSpecialTokens: false);
            }
            else ids = tok.Encode(prompt);
            Action<GeneratedToken>? onToken = Stream ? t => WriteObject(CalmGeneratedToken.From(t, tok)) : null;
            var r = Generator.Generate(m, ids, options, onToken, CancellationToken);
            if (r.StopReason == StopReason.Cancelled) throw new PipelineStoppedException();
            WriteVerbose($"{r.PromptIds.Length} prompt tokens, {r.Ids.Length} generated ({r.StopReason}); first token {r.TimeToFirstTokenMs:F1} ms, prefill {r.PrefillTokensPerSecond:F1} tok/s, decode {r.DecodeTokensPerSecond:F1} tok/s, seed {r.Seed}.");
            if (!Stream) WriteObject(CalmGeneration.From(prompt, r, m, options.LogProbs));
        }
    }
}
