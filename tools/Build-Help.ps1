#!/usr/bin/env pwsh
<#
.SYNOPSIS
    Builds the cmdlet help (MAML) from the markdown sources docs/help/<Cmdlet>.md.

.DESCRIPTION
    Reads every docs/help/*.md (README.md and files starting with '_' are skipped), imports the built module to learn
    each cmdlet's parameter sets, types, positions, pipeline input and aliases, and writes one MAML file
    (default bin/en-US/Calm.PowerShell.dll-Help.xml, next to the assembly, where Get-Help finds it for the nested
    binary module). Descriptions, examples, inputs/outputs, notes and links come from the markdown; everything that
    can be read from the cmdlet itself comes from the cmdlet, so syntax in help never drifts from the code.

    The markdown format is described in docs/help/README.md. Structural mistakes (no SYNOPSIS, a documented parameter
    the cmdlet does not have, an example without a code block) stop the build with the file and line; a cmdlet or
    parameter without documentation is only a warning here (tests/Calm.Help.Tests.ps1 fails for it).

    -ParseOnly returns the parsed documents (for the help tests) and writes nothing; it needs no module.

.EXAMPLE
    pwsh ./tools/Build-Help.ps1
.EXAMPLE
    pwsh ./tools/Build-Help.ps1 -ParseOnly | Select-Object Name, @{ n = 'Examples'; e = { $_.Examples.Count } }
#>
[CmdletBinding()]
param(
    [string] $SourceDir = (Join-Path (Split-Path -Parent $PSScriptRoot) 'docs/help'),
    [string] $Manifest = (Join-Path (Split-Path -Parent $PSScriptRoot) 'Calm.psd1'),
    [string] $OutFile = (Join-Path (Split-Path -Parent $PSScriptRoot) 'bin/en-US/Calm.PowerShell.dll-Help.xml'),
    [switch] $ParseOnly
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$KnownSections = 'SYNOPSIS', 'DESCRIPTION', 'PARAMETERS', 'INPUTS', 'OUTPUTS', 'EXAMPLES', 'NOTES', 'RELATED LINKS'

function New-DocError([string] $File, [int] $Line, [string] $What) {
    [System.IO.InvalidDataException]::new("${File}:${Line}: $What (see docs/help/README.md for the format)")
}

function Split-Paragraphs([string[]] $Lines) {
    # Markdown text -> paragraphs: blank lines separate; list items ('- ', '* ', '1. ') and fenced blocks stay whole.
    $paras = [System.Collections.Generic.List[string]]::new()
    $cur = [System.Collections.Generic.List[string]]::new()
    $inFence = $false
    $flush = { if ($cur.Count) { $paras.Add(($cur -join ' ').Trim()); $cur.Clear() } }
    foreach ($l in $Lines) {
        if ($l -match '^\s*```') {
            if ($inFence) { $inFence = $false; $paras.Add(($cur -join "`n")); $cur.Clear() }
            else { & $flush; $inFence = $true }
            continue
        }
        if ($inFence) { $cur.Add('    ' + $l); continue }
        if ($l -match '^\s*$') { & $flush; continue }
        if ($l -match '^\s*([-*]|\d+\.)\s+') { & $flush }
        $cur.Add($l.Trim())
    }
    & $flush
    @($paras | Where-Object { $_ -ne "" })
}

function Read-HelpMarkdown([string] $Path) {
    $file = Split-Path -Leaf $Path
    $lines = @(Get-Content -LiteralPath $Path -Encoding utf8)
    $doc = [ordered]@{
        Name = $null; File = $Path; Synopsis = $null; Description = @(); Parameters = [ordered]@{}; Inputs = @(); Outputs = @()
        Examples = @(); Notes = @(); Links = @()
    }
    # Cut into sections (##) and subsections (###), remembering line numbers.
    $section = $null; $sub = $null; $buf = [System.Collections.Generic.List[string]]::new(); $subLine = 0
    $inFence = $false
    $blocks = [System.Collections.Generic.List[object]]::new()
    $close = {
        if ($section) { $blocks.Add([pscustomobject]@{ Section = $section; Sub = $sub; Line = $subLine; Lines = $buf.ToArray() }) }
        $buf.Clear()
    }
    for ($i = 0; $i -lt $lines.Count; $i++) {
        $l = $lines[$i]
        if ($l -match '^\s*```') { $inFence = -not $inFence }
        if (-not $inFence -and $l -match '^#\s+(\S.*?)\s*$') {
            if ($doc.Name) { throw (New-DocError $file ($i + 1) 'a second top-level "# " heading') }
            $doc.Name = $Matches[1]; continue
        }
        if (-not $inFence -and $l -match '^##\s+(\S.*?)\s*$') {
            & $close
            $section = $Matches[1].ToUpperInvariant(); $sub = $null; $subLine = $i + 1
            if ($section -notin $KnownSections) { throw (New-DocError $file ($i + 1) "unknown section '## $($Matches[1])'; known: $($KnownSections -join ', ')") }
            continue
        }
        if (-not $inFence -and $l -match '^###\s+(\S.*?)\s*$') {
            & $close
            $sub = $Matches[1]; $subLine = $i + 1
            continue
        }
        if ($l -match '^\s*<!--.*-->\s*$') { continue }   # comments are for authors only
        if ($section) { $buf.Add($l) }
    }
    & $close
    if (-not $doc.Name) { throw (New-DocError $file 1 'no "# <Cmdlet-Name>" heading') }
    if ($doc.Name -ne [IO.Path]::GetFileNameWithoutExtension($Path)) {
        throw (New-DocError $file 1 "the heading names '$($doc.Name)' but the file is $file; name the file <Cmdlet-Name>.md")
    }

    foreach ($b in $blocks) {
        $text = @(Split-Paragraphs $b.Lines)
        switch ($b.Section) {
            'SYNOPSIS' { $doc.Synopsis = ($text -join ' ').Trim() }
            'DESCRIPTION' { $doc.Description += $text }
            'NOTES' { $doc.Notes += $text }
            'PARAMETERS' {
                if (-not $b.Sub) { if ($text.Count) { throw (New-DocError $file $b.Line 'text under "## PARAMETERS" outside a "### -Name" subsection') }; continue }
                if ($b.Sub -notmatch '^-(\w+)$') { throw (New-DocError $file $b.Line "a parameter heading must be '### -Name', not '### $($b.Sub)'") }
                $pname = $Matches[1]
                $default = $null
                $kept = @()
                foreach ($t in $b.Lines) { if ($t -match '^\s*Default(?: value)?:\s*(.+?)\s*$') { $default = $Matches[1] } else { $kept += $t } }
                $text = @(Split-Paragraphs $kept)
                if (-not $text.Count) { throw (New-DocError $file $b.Line "parameter -$pname has no description") }
                $doc.Parameters[$pname] = [pscustomobject]@{ Name = $pname; Description = $text; Default = $default }
            }
            { $_ -in 'INPUTS', 'OUTPUTS' } {
                if (-not $b.Sub) { if ($text.Count) { throw (New-DocError $file $b.Line "text under '## $($b.Section)' outside a '### <TypeName>' subsection") }; continue }
                $entry = [pscustomobject]@{ Type = $b.Sub; Description = $text }
                if ($b.Section -eq 'INPUTS') { $doc.Inputs += $entry } else { $doc.Outputs += $entry }
            }
            'EXAMPLES' {
                if (-not $b.Sub) { if ($text.Count) { throw (New-DocError $file $b.Line 'text under "## EXAMPLES" outside a "### Example N: title" subsection') }; continue }
                $title = $b.Sub; $gpu = $false; $skip = $null
                if ($title -match '^(.*?)\s*\{gpu\}\s*$') { $title = $Matches[1]; $gpu = $true }
                elseif ($title -match '^(.*?)\s*\{skip:\s*(.+?)\}\s*$') { $title = $Matches[1]; $skip = $Matches[2] }
                # The first fenced block is the code; what follows is the remarks.
                $code = $null; $rest = [System.Collections.Generic.List[string]]::new(); $in = $false; $codeLines = $null; $before = @()
                foreach ($l in $b.Lines) {
                    if ($null -eq $code -and -not $in -and $l -match '^\s*```') { $in = $true; $codeLines = [System.Collections.Generic.List[string]]::new(); continue }
                    if ($in -and $l -match '^\s*```') { $in = $false; $code = ($codeLines -join "`n").TrimEnd(); continue }
                    if ($in) { $codeLines.Add($l); continue }
                    if ($null -eq $code) { $before += $l } else { $rest.Add($l) }
                }
                if (-not $code) { throw (New-DocError $file $b.Line "example '$title' has no fenced code block") }
                $doc.Examples += [pscustomobject]@{
                    Title = $title; Code = $code; Remarks = @(Split-Paragraphs (@($before) + @($rest))); Gpu = $gpu; Skip = $skip
                    Line = $b.Line
                }
            }
            'RELATED LINKS' {
                foreach ($l in $b.Lines) {
                    if ($l -match '^\s*[-*]\s+\[([^\]]+)\]\(([^)]*)\)') { $doc.Links += [pscustomobject]@{ Text = $Matches[1]; Uri = $Matches[2] } }
                    elseif ($l -match '^\s*[-*]\s+(\S.*?)\s*$') { $doc.Links += [pscustomobject]@{ Text = $Matches[1]; Uri = '' } }
                }
            }
        }
    }
    if (-not $doc.Synopsis) { throw (New-DocError $file 1 'no "## SYNOPSIS" text') }
    if (-not $doc.Description) { throw (New-DocError $file 1 'no "## DESCRIPTION" text') }
    [pscustomobject]$doc
}

function Get-HelpDocuments {
    Get-ChildItem -LiteralPath $SourceDir -Filter '*.md' -File |
        Where-Object { $_.Name -ne 'README.md' -and -not $_.Name.StartsWith('_') } |
        Sort-Object Name |
        ForEach-Object { Read-HelpMarkdown $_.FullName }
}

# ----------------------------------------------------------------------------------------------------------------- MAML

$NsMaml = 'http://schemas.microsoft.com/maml/2004/10'
$NsCommand = 'http://schemas.microsoft.com/maml/dev/command/2004/10'
$NsDev = 'http://schemas.microsoft.com/maml/dev/2004/10'
$CommonParameters = [System.Collections.Generic.HashSet[string]]::new(
    [string[]]([System.Management.Automation.PSCmdlet]::CommonParameters + [System.Management.Automation.PSCmdlet]::OptionalCommonParameters),
    [StringComparer]::OrdinalIgnoreCase)

function Write-Paras($w, [string[]] $Paras) {
    $w.WriteStartElement('maml', 'description', $NsMaml)
    foreach ($p in $Paras) { $w.WriteElementString('maml', 'para', $NsMaml, $p) }
    $w.WriteEndElement()
}

function Get-TypeName([type] $T) {
    if ($T.IsArray) { return (Get-TypeName $T.GetElementType()) + '[]' }
    if ($T.IsGenericType -and $T.GetGenericTypeDefinition() -eq [Nullable`1]) { return Get-TypeName $T.GetGenericArguments()[0] }
    return $T.Name
}

function Get-PipelineText($Attr) {
    $kinds = @()
    if ($Attr.ValueFromPipeline) { $kinds += 'ByValue' }
    if ($Attr.ValueFromPipelineByPropertyName) { $kinds += 'ByPropertyName' }
    if ($kinds) { "True ($($kinds -join ', '))" } else { 'False' }
}

function Get-AllowedValues($P) {
    $t = $P.ParameterType
    if ($t.IsGenericType -and $t.GetGenericTypeDefinition() -eq [Nullable`1]) { $t = $t.GetGenericArguments()[0] }
    if ($t.IsArray) { $t = $t.GetElementType() }
    if ($t.IsEnum) { return [Enum]::GetNames($t) }
    $set = $P.Attributes | Where-Object { $_ -is [System.Management.Automation.ValidateSetAttribute] } | Select-Object -First 1
    if ($set) { return $set.ValidValues }
    return @()
}

function Write-ParameterElement($w, $P, $Attr, [string[]] $Description, [string] $Default, [bool] $InSyntax) {
    $isSwitch = $P.SwitchParameter
    $w.WriteStartElement('command', 'parameter', $NsCommand)
    $w.WriteAttributeString('required', $(if ($Attr.Mandatory) { 'true' } else { 'false' }))
    $w.WriteAttributeString('variableLength', $(if ($P.ParameterType.IsArray) { 'true' } else { 'false' }))
    $glob = [bool]($P.Attributes | Where-Object { $_ -is [System.Management.Automation.SupportsWildcardsAttribute] })
    $w.WriteAttributeString('globbing', $glob.ToString().ToLowerInvariant())
    $w.WriteAttributeString('pipelineInput', (Get-PipelineText $Attr))
    $w.WriteAttributeString('position', $(if ($Attr.Position -ge 0) { "$($Attr.Position)" } else { 'named' }))
    $w.WriteAttributeString('aliases', $(if ($P.Aliases.Count) { $P.Aliases -join ', ' } else { 'none' }))
    $w.WriteElementString('maml', 'name', $NsMaml, $P.Name)
    if (-not $InSyntax) {
        $allowed = @(Get-AllowedValues $P)
        $paras = @($Description)
        if ($allowed.Count) { $paras += "Allowed values: $($allowed -join ', ')." }
        Write-Paras $w $paras
    }
    if (-not $isSwitch) {
        $w.WriteStartElement('command', 'parameterValue', $NsCommand)
        $w.WriteAttributeString('required', 'true')
        $w.WriteAttributeString('variableLength', $(if ($P.ParameterType.IsArray) { 'true' } else { 'false' }))
        $w.WriteString((Get-TypeName $P.ParameterType))
        $w.WriteEndElement()
    }
    $w.WriteStartElement('dev', 'type', $NsDev)
    $w.WriteElementString('maml', 'name', $NsMaml, $(if ($isSwitch) { 'System.Management.Automation.SwitchParameter' } else { $P.ParameterType.FullName }))
    $w.WriteEndElement()
    if (-not $InSyntax) {
        $w.WriteElementString('dev', 'defaultValue', $NsDev, $(if ($Default) { $Default } elseif ($isSwitch) { 'False' } else { 'None' }))
    }
    $w.WriteEndElement()
}

function Write-Command($w, $Doc, $Cmd) {
    $w.WriteStartElement('command', 'command', $NsCommand)
    $w.WriteAttributeString('xmlns', 'maml', $null, $NsMaml)
    $w.WriteAttributeString('xmlns', 'dev', $null, $NsDev)

    $w.WriteStartElement('command', 'details', $NsCommand)
    $w.WriteElementString('command', 'name', $NsCommand, $Cmd.Name)
    Write-Paras $w @($Doc.Synopsis)
    $w.WriteElementString('command', 'verb', $NsCommand, $Cmd.Verb)
    $w.WriteElementString('command', 'noun', $NsCommand, $Cmd.Noun)
    $w.WriteEndElement()

    Write-Paras $w $Doc.Description

    # Syntax: one item per parameter set, in the cmdlet's own order.
    $w.WriteStartElement('command', 'syntax', $NsCommand)
    foreach ($set in $Cmd.ParameterSets) {
        $w.WriteStartElement('command', 'syntaxItem', $NsCommand)
        $w.WriteElementString('maml', 'name', $NsMaml, $Cmd.Name)
        $ps = @($set.Parameters | Where-Object { -not $CommonParameters.Contains($_.Name) } |
                Sort-Object @{ e = { if ($_.Position -ge 0) { $_.Position } else { [int]::MaxValue } } }, @{ e = { -not $_.IsMandatory } })
        foreach ($sp in $ps) {
            $p = $Cmd.Parameters[$sp.Name]
            $attr = [pscustomobject]@{ Mandatory = $sp.IsMandatory; Position = $sp.Position; ValueFromPipeline = $sp.ValueFromPipeline; ValueFromPipelineByPropertyName = $sp.ValueFromPipelineByPropertyName }
            Write-ParameterElement $w $p $attr @() $null $true
        }
        $w.WriteEndElement()
    }
    $w.WriteEndElement()

    # Parameters: every non-common parameter, documented or not (an undocumented one gets a visible placeholder).
    $w.WriteStartElement('command', 'parameters', $NsCommand)
    foreach ($p in $Cmd.Parameters.Values | Where-Object { -not $CommonParameters.Contains($_.Name) } | Sort-Object Name) {
        $pa = @($p.Attributes | Where-Object { $_ -is [System.Management.Automation.ParameterAttribute] })
        $attr = [pscustomobject]@{
            Mandatory = [bool]($pa | Where-Object Mandatory)
            Position = [int](($pa | ForEach-Object Position | Where-Object { $_ -ge 0 } | Select-Object -First 1) ?? -1)
            ValueFromPipeline = [bool]($pa | Where-Object ValueFromPipeline)
            ValueFromPipelineByPropertyName = [bool]($pa | Where-Object ValueFromPipelineByPropertyName)
        }
        $d = $Doc.Parameters[$p.Name]
        $desc = if ($d) { $d.Description } else { @('(Not documented yet.)') }
        Write-ParameterElement $w $p $attr $desc $(if ($d) { $d.Default }) $false
    }
    $w.WriteEndElement()

    foreach ($pair in @(@('inputTypes', 'inputType', $Doc.Inputs), @('returnValues', 'returnValue', $Doc.Outputs))) {
        $w.WriteStartElement('command', $pair[0], $NsCommand)
        foreach ($e in $pair[2]) {
            $w.WriteStartElement('command', $pair[1], $NsCommand)
            $w.WriteStartElement('dev', 'type', $NsDev)
            $w.WriteElementString('maml', 'name', $NsMaml, $e.Type)
            $w.WriteEndElement()
            Write-Paras $w $e.Description
            $w.WriteEndElement()
        }
        $w.WriteEndElement()
    }

    if ($Doc.Notes) {
        $w.WriteStartElement('maml', 'alertSet', $NsMaml)
        $w.WriteStartElement('maml', 'alert', $NsMaml)
        foreach ($n in $Doc.Notes) { $w.WriteElementString('maml', 'para', $NsMaml, $n) }
        $w.WriteEndElement(); $w.WriteEndElement()
    }

    $w.WriteStartElement('command', 'examples', $NsCommand)
    foreach ($e in $Doc.Examples) {
        $w.WriteStartElement('command', 'example', $NsCommand)
        $title = $e.Title + $(if ($e.Gpu) { ' (needs an NVIDIA GPU)' } else { '' })
        $w.WriteElementString('maml', 'title', $NsMaml, "-------------------------- $title --------------------------")
        $w.WriteElementString('dev', 'code', $NsDev, $e.Code)
        $w.WriteStartElement('dev', 'remarks', $NsDev)
        foreach ($r in $e.Remarks) { $w.WriteElementString('maml', 'para', $NsMaml, $r) }
        $w.WriteEndElement()
        $w.WriteEndElement()
    }
    $w.WriteEndElement()

    $w.WriteStartElement('command', 'relatedLinks', $NsCommand)
    foreach ($l in $Doc.Links) {
        $w.WriteStartElement('maml', 'navigationLink', $NsMaml)
        $w.WriteElementString('maml', 'linkText', $NsMaml, $l.Text)
        $w.WriteElementString('maml', 'uri', $NsMaml, $l.Uri)
        $w.WriteEndElement()
    }
    $w.WriteEndElement()

    $w.WriteEndElement()
}

# ----------------------------------------------------------------------------------------------------------------- main

$docs = @(Get-HelpDocuments)
if ($ParseOnly) { return $docs }

Import-Module $Manifest -Force
$module = Get-Module Calm
$exported = $module.ExportedCmdlets
$dir = Split-Path -Parent $OutFile
New-Item -ItemType Directory -Force $dir | Out-Null

$settings = [System.Xml.XmlWriterSettings]::new()
$settings.Indent = $true
$settings.Encoding = [System.Text.UTF8Encoding]::new($false)
$tmp = "$OutFile.tmp"
$w = [System.Xml.XmlWriter]::Create($tmp, $settings)
$written = @()
try {
    $w.WriteStartDocument()
    $w.WriteStartElement('helpItems', 'http://msh')
    $w.WriteAttributeString('schema', 'maml')
    foreach ($doc in $docs) {
        $cmd = $exported[$doc.Name]
        if (-not $cmd) { Write-Warning "docs/help/$(Split-Path -Leaf $doc.File): the module exports no cmdlet '$($doc.Name)'; skipped."; continue }
        foreach ($pn in $doc.Parameters.Keys) {
            if (-not $cmd.Parameters.ContainsKey($pn)) {
                throw (New-DocError (Split-Path -Leaf $doc.File) 1 "documents -$pn, which $($doc.Name) does not have (parameters: $((@($cmd.Parameters.Keys | Where-Object { -not $CommonParameters.Contains($_) }) -join ', ')))")
            }
        }
        foreach ($pn in $cmd.Parameters.Keys | Where-Object { -not $CommonParameters.Contains($_) }) {
            if (-not $doc.Parameters.Contains($pn)) { Write-Warning "$($doc.Name): parameter -$pn is not documented." }
        }
        Write-Command $w $doc $cmd
        $written += $doc.Name
    }
    $w.WriteEndElement()
    $w.WriteEndDocument()
}
finally { $w.Dispose() }
Move-Item -Force $tmp $OutFile
foreach ($name in $exported.Keys | Sort-Object) {
    if ($name -notin $written) { Write-Warning "$name has no docs/help/$name.md yet: Get-Help shows only its syntax." }
}
Write-Host "Help: $($written.Count) cmdlets -> $OutFile"
