using System.Collections;
using System.Management.Automation;
using Calm.Engine;
using Calm.Engine.Generation;
using Calm.Engine.Templates;

namespace Calm.PowerShell.Commands;

/// <summary>
/// Invoke-CalmChat: one turn of a conversation through the model's own chat template. Writes the updated history
/// (objects with Role and Content; the last is the reply), so `$h = Invoke-CalmChat -Message ... -History $h`
/// continues it. Without -Message in an interactive console it is a chat loop (type the exit word or press Ctrl+C);
/// elsewhere -Message is required.
/// </summary>
[Cmdlet(VerbsLifecycle.Invoke, "CalmChat")]
[OutputType(typeof(CalmChatMessage))]
public sealed class InvokeCalmChatCommand : CalmCmdlet
{
    [Parameter(Position = 0, ValueFromPipeline = true)]
    public string? Message { get; set; }

    /// <summary>Messages so far: Invoke-CalmChat output, or any objects / hashtables with Role and Content.</summary>
    [Parameter]
    public object[] History { get; set; } = Array.Empty<object>();

    /// <summary>A system message first (when the history has none).</summary>
    [Parameter]
    public string? SystemPrompt { get; set; }

    [Parameter]
    [ModelTransformation]
    [ArgumentCompleter(typeof(ModelNameCompleter))]
    public CalmModel? Model { get; set; }

    [Parameter] public int MaxTokens { get; set; } = 256;
    [Parameter] public double? Temperature { get; set; }
    [Parameter] public int? TopK { get; set; }
    [Parameter] public double? TopP { get; set; }
    [Parameter] public double? MinP { get; set; }
    [Parameter] public double? RepetitionPenalty { get; set; }
    [Parameter] public double? PresencePenalty { get; set; }
    [Parameter] public long? Seed { get; set; }
    [Parameter] public string[] Stop { get; set; } = Array.Empty<string>();

    /// <summary>In the chat loop: the line that ends it (default "exit").</summary>
    [Parameter] public string ExitWord { get; set; } = "exit";

    private bool _gotMessage;

    protected override void Process()
    {
        if (Message is null) return;
        _gotMessage = true;
        if (Message.Length == 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument, "-Message is empty. Say something.", "Message");
        var history = StartHistory();
        history.Add(new CalmChatMessage { Role = "user", Content = Message });
        var reply = Reply(history, null);
        history.Add(reply);
        foreach (var h in history) WriteObject(h);
    }

    protected override void End()
    {
        if (_gotMessage) return;
        if (!TextHelpers.IsInteractive(Host))
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                "Invoke-CalmChat needs -Message in a non-interactive host (the chat loop reads from the console). Pass -Message, and -History to continue a conversation.", "Message");
        var history = StartHistory();
        var ui = Host.UI;
        ui.WriteLine($"Chatting with '{ResolveModel(Model).Name}'. Type '{ExitWord}' or press Ctrl+C to end.");
        while (!Stopping)
        {
            ui.Write("you> ");
            var line = ui.ReadLine();
            if (line is null || line.Trim().Equals(ExitWord, StringComparison.OrdinalIgnoreCase)) break;
            if (line.Trim().Length == 0) continue;
            history.Add(new CalmChatMessage { Role = "user", Content = line });
            ui.Write("bot> ");
            var reply = Reply(history, t => ui.Write(t.Text));
            ui.WriteLine();
            history.Add(reply);
        }
        foreach (var h in history) WriteObject(h);
    }

    private List<CalmChatMessage> StartHistory()
    {
        var list = History.Select(ToMessage).ToList();
        if (!string.IsNullOrEmpty(SystemPrompt) && !list.Any(m => m.Role == "system"))
            list.Insert(0, new CalmChatMessage { Role = "system", Content = SystemPrompt });
        return list;
    }

    private CalmChatMessage Reply(List<CalmChatMessage> history, Action<GeneratedToken>? onToken)
    {
        var m = ResolveModel(Model);
        var tok = ModelText.RequireTokenizer(m);
        var template = ModelText.RequireTemplate(m);
        string rendered = template.Render(history.Select(h => new ChatMessage(h.Role, h.Content)).ToList(), addGenerationPrompt: true);
        var options = new GenerateOptions
        {
            MaxTokens = MaxTokens,
            Sampling = SamplingParameters.Build(m, Temperature, TopK, TopP, MinP, RepetitionPenalty, PresencePenalty, Seed),
            Stop = Stop,
            StopOnSpecialTokens = true,
        };
        var r = Generator.Generate(m, tok.Encode(rendered, addSpecialTokens: false), options, onToken, CancellationToken);
        if (r.StopReason == StopReason.Cancelled) throw new PipelineStoppedException();
        return new CalmChatMessage
        {
            Role = "assistant",
            Content = r.Text ?? "",
            StopReason = r.StopReason.ToString(),
            GeneratedTokens = r.Ids.Length,
            DecodeTokensPerSecond = r.DecodeTokensPerSecond is double d ? Math.Round(d, 1) : null,
        };
    }

    private static CalmChatMessage ToMessage(object o)
    {
        object? role = null, content = null;
        var v = o is PSObject p ? p.BaseObject : o;
        if (v is CalmChatMessage c) return c;
        if (v is IDictionary d)
        {
            foreach (DictionaryEntry e in d)
            {
                if (string.Equals(e.Key?.ToString(), "Role", StringComparison.OrdinalIgnoreCase)) role = e.Value;
                if (string.Equals(e.Key?.ToString(), "Content", StringComparison.OrdinalIgnoreCase)) content = e.Value;
            }
        }
        else
        {
            var ps = PSObject.AsPSObject(o);
            role = ps.Properties["Role"]?.Value;
            content = ps.Properties["Content"]?.Value;
        }
        if (role is null || content is null)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                "Each -History item needs Role and Content (e.g. @{ Role = 'user'; Content = 'Hello' }, or Invoke-CalmChat's output).", "History");
        return new CalmChatMessage { Role = role.ToString()!.ToLowerInvariant(), Content = content.ToString() ?? "" };
    }
}
