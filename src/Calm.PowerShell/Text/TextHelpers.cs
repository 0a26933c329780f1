using System.Management.Automation;
using System.Management.Automation.Host;
using Calm.Engine;
using Calm.Engine.Generation;
using Calm.Engine.Session;
using Calm.Engine.Tokenization;

namespace Calm.PowerShell;

internal static class TextHelpers
{
    /// <summary>The tokenizer for -Tokenizer (a tokenizer.json / tokenizer.model / model folder, no weights) or -Model
    /// (default: the last loaded).</summary>
    public static CalmTokenizer Resolve(PSCmdlet cmdlet, string? tokenizerPath, CalmModel? model)
    {
        if (tokenizerPath is not null)
        {
            string full;
            try { full = cmdlet.SessionState.Path.GetUnresolvedProviderPathFromPSPath(tokenizerPath); }
            catch (System.Management.Automation.DriveNotFoundException) { full = tokenizerPath; }
            return CalmTokenizer.FromFile(full);
        }
        var m = model is null ? CalmSession.Shared.Resolve(null) : model.Resolve();
        return ModelText.RequireTokenizer(m);
    }

    /// <summary>True when a person can answer prompts: a console host with its input not redirected and not -NonInteractive.</summary>
    public static bool IsInteractive(PSHost host)
    {
        if (host.Name != "ConsoleHost") return false;
        try { if (Console.IsInputRedirected) return false; } catch { return false; }
        foreach (var a in Environment.GetCommandLineArgs())
        {
            var s = a.TrimStart('-', '/').ToLowerInvariant();
            if (s.Length >= 4 && "noninteractive".StartsWith(s, StringComparison.Ordinal)) return false;
        }
        return true;
    }
}
