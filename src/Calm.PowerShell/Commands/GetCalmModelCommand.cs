using System.Management.Automation;
using Calm.Engine;
using Calm.Engine.Session;

namespace Calm.PowerShell.Commands;

/// <summary>Get-CalmModel: the loaded models, in load order (the last one is the default).</summary>
[Cmdlet(VerbsCommon.Get, "CalmModel")]
[OutputType(typeof(CalmModel))]
public sealed class GetCalmModelCommand : CalmCmdlet
{
    /// <summary>Names to show; wildcards allowed. A name without wildcards that matches nothing is an error.</summary>
    [Parameter(Position = 0, ValueFromPipeline = true, ValueFromPipelineByPropertyName = true)]
    [ValidateNotNullOrEmpty]
    [SupportsWildcards]
    [ArgumentCompleter(typeof(ModelNameCompleter))]
    public string[]? Name { get; set; }

    protected override void Process()
    {
        var models = CalmSession.Shared.Models;
        if (Name is null)
        {
            foreach (var m in models) WriteObject(CalmModel.From(m));
            return;
        }
        var written = new HashSet<LoadedModel>();
        foreach (var n in Name)
        {
            var pattern = WildcardPattern.Get(n, WildcardOptions.IgnoreCase);
            bool any = false;
            foreach (var m in models.Where(m => pattern.IsMatch(m.Name)))
            {
                any = true;
                if (written.Add(m)) WriteObject(CalmModel.From(m));
            }
            if (!any && !WildcardPattern.ContainsWildcardCharacters(n))
                WriteCalmError(new CalmException(ErrorIds.ModelNotFound, CalmErrorKind.ObjectNotFound,
                    $"No loaded model is named '{n}'. Get-CalmModel lists the loaded models.", n));
        }
    }
}
