using System.Management.Automation;
using Calm.Engine;
using Calm.Engine.Session;

namespace Calm.PowerShell.Commands;

/// <summary>Remove-CalmModel: takes models out of the session and frees their memory (host and device).</summary>
[Cmdlet(VerbsCommon.Remove, "CalmModel", DefaultParameterSetName = ModelSet, SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Low)]
[OutputType(typeof(void))]
public sealed class RemoveCalmModelCommand : CalmCmdlet
{
    private const string ModelSet = "Model";
    private const string NameSet = "Name";

    /// <summary>Models from Get-CalmModel (or their names).</summary>
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true, ParameterSetName = ModelSet)]
    [ValidateNotNull]
    [ModelTransformation]
    [ArgumentCompleter(typeof(ModelNameCompleter))]
    public CalmModel[] Model { get; set; } = Array.Empty<CalmModel>();

    /// <summary>Names of loaded models; wildcards allowed.</summary>
    [Parameter(Mandatory = true, ParameterSetName = NameSet)]
    [ValidateNotNullOrEmpty]
    [SupportsWildcards]
    [ArgumentCompleter(typeof(ModelNameCompleter))]
    public string[] Name { get; set; } = Array.Empty<string>();

    protected override void Process()
    {
        if (ParameterSetName == ModelSet)
        {
            foreach (var m in Model)
            {
                LoadedModel loaded;
                try { loaded = m.Resolve(); }
                catch (CalmException ex) { WriteCalmError(ex, m); continue; }
                RemoveOne(loaded);
            }
            return;
        }
        var models = CalmSession.Shared.Models;
        foreach (var n in Name)
        {
            var pattern = WildcardPattern.Get(n, WildcardOptions.IgnoreCase);
            var matches = models.Where(m => pattern.IsMatch(m.Name)).ToList();
            if (matches.Count == 0 && !WildcardPattern.ContainsWildcardCharacters(n))
                WriteCalmError(new CalmException(ErrorIds.ModelNotFound, CalmErrorKind.ObjectNotFound,
                    $"No loaded model is named '{n}'. Get-CalmModel lists the loaded models.", n));
            foreach (var m in matches) RemoveOne(m);
        }
    }

    private void RemoveOne(LoadedModel m)
    {
        if (!ShouldProcess($"{m.Name} ({m.WeightBytes / 1e9:F2} GB on {m.DeviceKind})", "Remove model and free its memory")) return;
        CalmSession.Shared.Remove(m);
        WriteVerbose($"Removed '{m.Name}' and freed {m.WeightBytes / 1e9:F2} GB.");
    }
}
