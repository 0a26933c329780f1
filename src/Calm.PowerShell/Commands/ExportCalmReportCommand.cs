using System.Management.Automation;
using Calm.Engine;
using Calm.Engine.SpeedOfLight;

namespace Calm.PowerShell.Commands;

/// <summary>
/// Export-CalmReport: the measurement objects from the pipeline (Measure-CalmSpeedOfLight, -Breakdown rows,
/// Measure-CalmBandwidth, Measure-CalmKernel, Get-CalmSpeedOfLight, or Import-Csv of any of them) as one
/// self-contained HTML file: SVG charts of tokens/s against context with the speed-of-light line per model and dtype,
/// per-stage time stacked per context, and tables. No script, no network.
/// </summary>
[Cmdlet(VerbsData.Export, "CalmReport", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Low)]
[OutputType(typeof(FileInfo))]
public sealed class ExportCalmReportCommand : CalmCmdlet
{
    [Parameter(Mandatory = true, ValueFromPipeline = true)]
    [AllowNull]
    public PSObject? InputObject { get; set; }

    /// <summary>The .html file to write (its folder must exist).</summary>
    [Parameter(Mandatory = true, Position = 0)]
    [ValidateNotNullOrEmpty]
    public string Path { get; set; } = "";

    [Parameter] public string Title { get; set; } = "Calm speed of light";

    /// <summary>Write the file's FileInfo.</summary>
    [Parameter] public SwitchParameter PassThru { get; set; }

    private readonly List<IReadOnlyDictionary<string, object?>> _rows = new();

    protected override void Process()
    {
        if (InputObject is null) return;
        var d = new Dictionary<string, object?>(StringComparer.OrdinalIgnoreCase);
        foreach (var p in InputObject.Properties)
        {
            if (!p.IsGettable) continue;
            object? v;
            try { v = p.Value; } catch (GetValueException) { continue; }
            d[p.Name] = v is PSObject po ? po.BaseObject : v;
        }
        _rows.Add(d);
    }

    protected override void End()
    {
        var full = GetUnresolvedProviderPathFromPSPath(Path);
        var dir = System.IO.Path.GetDirectoryName(full);
        if (string.IsNullOrEmpty(dir) || !Directory.Exists(dir))
            throw new CalmException(ErrorIds.PathNotFound, CalmErrorKind.ObjectNotFound,
                $"The folder of '{full}' does not exist. Create it first (New-Item -ItemType Directory).", Path);
        if (_rows.Count == 0) WriteWarning("Export-CalmReport got no objects; the report says so.");
        var html = SolReport.Build(_rows, Title);
        if (!ShouldProcess(full, $"Write an HTML report of {_rows.Count} rows")) return;
        File.WriteAllText(full, html, new System.Text.UTF8Encoding(false));
        if (PassThru) WriteObject(new FileInfo(full));
    }
}
