#!/usr/bin/env pwsh
<#
.SYNOPSIS
    The one entry point for building, testing, demonstrating and packaging Calm.

.DESCRIPTION
    Tasks (run in the order given):
      Build    dotnet build the module (bin/) and the engine tests; after it, Import-Module ./Calm.psd1 works.
      Test     Build, then the xunit engine tests and the Pester tests (in a child pwsh), GPU-tagged ones excluded.
               Ends with the line "N passed, N failed[, N skipped]"; exits non-zero when anything failed.
      GpuTest  Only the GPU-tagged tests (xunit -trait Category=GPU, Pester -Tag GPU). Runs on a machine that has
               only the .NET runtime and pwsh: when there is no SDK and the build output exists, it is used as is.
      Demo     Build, import the embedded tiny model (models/tiny-wp), generate English text, show the speed-of-light figure.
      Bench    Runs the benchmark scripts bench/*.Bench.ps1 (GPU-only ones are skipped, saying so, without a GPU).
      Package  A publishable module folder out/Calm/<version>/, checked with Test-ModuleManifest and imported.
      Clean    Removes build output (bin/, obj/, out/).

.EXAMPLE
    dotnet tool restore && dotnet pwsh ./build.ps1 Test
.EXAMPLE
    dotnet pwsh ./build.ps1 Build, Package
#>
[CmdletBinding()]
param(
    [Parameter(Position = 0)]
    [ValidateSet('Build', 'Test', 'GpuTest', 'Demo', 'Bench', 'Package', 'Clean', 'PesterChild')]
    [string[]] $Task = @('Build'),

    [ValidateSet('Release', 'Debug')]
    [string] $Configuration = 'Release',

    # PesterChild only (internal): which tags to run or exclude, and where to write the counts.
    [string[]] $Tag,
    [string[]] $ExcludeTag,
    [string] $ResultFile
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

$Root = $PSScriptRoot
$ModuleProject = Join-Path $Root 'src/Calm.PowerShell/Calm.PowerShell.csproj'
$TestProject = Join-Path $Root 'tests/Calm.Engine.Tests/Calm.Engine.Tests.csproj'
$ModuleBin = Join-Path $Root 'bin'
$TestDll = Join-Path $Root "tests/Calm.Engine.Tests/bin/$Configuration/net8.0/Calm.Engine.Tests.dll"
$OutDir = Join-Path $Root 'out'
$PesterVersion = '6.2.0'
$env:DOTNET_CLI_TELEMETRY_OPTOUT = '1'
$env:DOTNET_NOLOGO = '1'
$env:POWERSHELL_TELEMETRY_OPTOUT = '1'

function Write-Step([string] $Text) { Write-Host "==> $Text" -ForegroundColor Cyan }

function Invoke-Native {
    # Runs a native command; throws when it fails.
    param([string] $Exe, [string[]] $Arguments)
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { throw "'$Exe $($Arguments -join ' ')' failed with exit code $LASTEXITCODE." }
}

function Get-CalmVersion {
    # <Version> of Directory.Build.props: the one place the version lives.
    [xml] $props = Get-Content -Raw (Join-Path $Root 'Directory.Build.props')
    $v = @($props.Project.PropertyGroup | ForEach-Object { $_.SelectSingleNode('Version') } | Where-Object { $_ })[0].InnerText
    if (-not $v) { throw 'Directory.Build.props has no <Version>.' }
    return $v
}

function Set-ManifestVersion([string] $Path, [string] $Version) {
    $text = Get-Content -Raw $Path
    $new = $text -replace "(?m)^(\s*ModuleVersion\s*=\s*)'[^']*'", "`${1}'$Version'"
    if ($new -ne $text) { Set-Content -Path $Path -Value $new -NoNewline -Encoding utf8 }
}

function Test-DotnetSdk {
    $dotnet = Get-Command dotnet -ErrorAction SilentlyContinue
    if (-not $dotnet) { return $false }
    $sdks = & dotnet --list-sdks 2>$null
    return [bool]($LASTEXITCODE -eq 0 -and $sdks)
}

function Get-PwshInvocation {
    # The pwsh this script runs under, as an executable plus leading arguments (a dotnet-tool pwsh is "dotnet pwsh.dll").
    $process = [Environment]::ProcessPath
    if ([IO.Path]::GetFileNameWithoutExtension($process) -eq 'pwsh') { return @($process) }
    $dll = Join-Path $PSHOME 'pwsh.dll'
    if (Test-Path $dll) { return @($process, $dll) }
    return @((Get-Command pwsh).Source)
}

function Invoke-ChildPwsh([string[]] $Arguments) {
    $inv = @(Get-PwshInvocation)
    $rest = @($inv | Select-Object -Skip 1) + @('-NoProfile', '-NonInteractive') + $Arguments
    & $inv[0] @rest | Out-Host
    return $LASTEXITCODE
}

# ---------------------------------------------------------------------------------------------------------------- Build

function Invoke-Build {
    $version = Get-CalmVersion
    Set-ManifestVersion (Join-Path $Root 'Calm.psd1') $version
    $haveOutput = (Test-Path (Join-Path $ModuleBin 'Calm.PowerShell.dll')) -and (Test-Path $TestDll)
    if (-not (Test-DotnetSdk)) {
        if ($haveOutput) {
            Write-Step "No .NET SDK here: using the existing build output (bin/, $([IO.Path]::GetRelativePath($Root, $TestDll)))"
            Invoke-HelpBuild
            return
        }
        throw 'There is no .NET SDK here and no build output: build on a machine with the SDK first (dotnet pwsh ./build.ps1 Build).'
    }
    Write-Step "Build Calm $version ($Configuration)"
    Invoke-Native dotnet @('build', $ModuleProject, '-c', $Configuration, '-o', $ModuleBin, '-v', 'q', '-nologo', '-clp:NoSummary')
    Invoke-Native dotnet @('build', $TestProject, '-c', $Configuration, '-v', 'q', '-nologo', '-clp:NoSummary')
    Invoke-HelpBuild
    Write-Host "Module: $ModuleBin (Import-Module ./Calm.psd1)"
}

function Invoke-HelpBuild {
    # docs/help/*.md -> bin/en-US/Calm.PowerShell.dll-Help.xml (in a child pwsh: it imports the built module).
    Write-Step 'Help (tools/Build-Help.ps1)'
    $rc = Invoke-ChildPwsh @('-File', (Join-Path $Root 'tools/Build-Help.ps1'))
    if ($rc -ne 0) { throw "tools/Build-Help.ps1 failed (exit code $rc)." }
}

# --------------------------------------------------------------------------------------------------------------- Pester

function Get-PesterManifest {
    # $env:CALM_PESTER (the GPU machine sets it), else Pester restored from NuGet into .tools/nuget.
    if ($env:CALM_PESTER) {
        if (-not (Test-Path $env:CALM_PESTER)) { throw "CALM_PESTER is '$env:CALM_PESTER', which does not exist." }
        return $env:CALM_PESTER
    }
    $packages = Join-Path $Root '.tools/nuget'
    $manifest = Join-Path $packages "pester/$PesterVersion/tools/Pester.psd1"
    if (Test-Path $manifest) { return $manifest }
    if (-not (Test-DotnetSdk)) { throw "Pester $PesterVersion is not restored and there is no .NET SDK to restore it; set CALM_PESTER to Pester.psd1." }
    Write-Step "Restore Pester $PesterVersion from NuGet"
    $dir = Join-Path $Root '.tools/pester-restore'
    New-Item -ItemType Directory -Force $dir | Out-Null
    @"
<Project Sdk="Microsoft.NET.Sdk">
  <!-- Throwaway project: only downloads the Pester package (a plain PowerShell module under tools/). -->
  <PropertyGroup><TargetFramework>net8.0</TargetFramework></PropertyGroup>
  <ItemGroup><PackageDownload Include="Pester" Version="[$PesterVersion]" /></ItemGroup>
</Project>
"@ | Set-Content -Path (Join-Path $dir 'pester.csproj') -Encoding utf8
    Invoke-Native dotnet @('restore', (Join-Path $dir 'pester.csproj'), '--packages', $packages, '-v', 'q', '-nologo')
    if (-not (Test-Path $manifest)) { throw "Pester restore did not produce $manifest." }
    return $manifest
}

function Invoke-PesterChild {
    # Runs in the child pwsh: Pester over tests/*.Tests.ps1, counts written to $ResultFile as JSON.
    Import-Module (Get-PesterManifest) -Force
    $config = New-PesterConfiguration
    $config.Run.Path = Join-Path $Root 'tests'
    $config.Run.PassThru = $true
    $config.Output.Verbosity = if ($env:CI) { 'Detailed' } else { 'Normal' }
    if ($Tag) { $config.Filter.Tag = @($Tag -split ',') }
    if ($ExcludeTag) { $config.Filter.ExcludeTag = @($ExcludeTag -split ',') }
    $r = Invoke-Pester -Configuration $config
    $failed = $r.FailedCount + $r.FailedContainersCount
    if ($failed -eq 0) { $failed += $r.FailedBlocksCount }
    # What failed, one line each (file: test path: first line of the error), so the end of a long log names it.
    $names = @(
        foreach ($t in $r.Failed) {
            $why = if ($t.ErrorRecord) { ("$($t.ErrorRecord[0].Exception.Message)" -split "`n")[0] } else { '' }
            '{0}: {1}: {2}' -f (Split-Path -Leaf $t.ScriptBlock.File), $t.ExpandedPath, $why
        }
        foreach ($c in @($r.FailedContainers)) { "$(Split-Path -Leaf "$($c.Item)"): the file failed to run: $((("$($c.ErrorRecord | Select-Object -First 1)") -split "`n")[0])" }
        foreach ($b in @($r.FailedBlocks)) { "$($b.ExpandedPath): a setup or teardown block failed" }
    )
    [pscustomobject]@{ Passed = $r.PassedCount; Failed = $failed; Skipped = $r.SkippedCount + $r.InconclusiveCount; FailedNames = $names } |
        ConvertTo-Json | Set-Content -Path $ResultFile -Encoding utf8
}

function Invoke-PesterTests([string[]] $IncludeTag, [string[]] $Exclude) {
    $manifest = Get-PesterManifest   # restore here (parent) so the child only imports
    $env:CALM_PESTER = $manifest
    $resultFile = Join-Path ([IO.Path]::GetTempPath()) "calm-pester-$PID-$([guid]::NewGuid().ToString('n')).json"
    $arguments = @('-File', (Join-Path $Root 'build.ps1'), 'PesterChild', '-Configuration', $Configuration, '-ResultFile', $resultFile)
    if ($IncludeTag) { $arguments += @('-Tag', ($IncludeTag -join ',')) }
    if ($Exclude) { $arguments += @('-ExcludeTag', ($Exclude -join ',')) }
    Write-Step "Pester (child pwsh$(if ($IncludeTag) { ", tags $($IncludeTag -join ',')" })$(if ($Exclude) { ", excluding $($Exclude -join ',')" }))"
    $rc = Invoke-ChildPwsh $arguments
    try {
        if (-not (Test-Path $resultFile)) {
            Write-Host "Pester did not finish (exit code $rc): counted as 1 failed." -ForegroundColor Red
            return [pscustomobject]@{ Passed = 0; Failed = 1; Skipped = 0; FailedNames = @("Pester did not finish (exit code $rc)") }
        }
        $r = Get-Content -Raw $resultFile | ConvertFrom-Json
        Write-Host ("Pester: {0} passed, {1} failed, {2} skipped" -f $r.Passed, $r.Failed, $r.Skipped)
        return $r
    }
    finally { Remove-Item -Force -ErrorAction Ignore $resultFile }
}

# ---------------------------------------------------------------------------------------------------------------- xunit

function Invoke-XunitTests([string[]] $Filter) {
    if (-not (Test-Path $TestDll)) { throw "The engine tests are not built ($TestDll); run Build first." }
    Write-Step "xunit engine tests$(if ($Filter) { " ($($Filter -join ' '))" })"
    $resultDir = Join-Path $OutDir 'test-results'
    New-Item -ItemType Directory -Force $resultDir | Out-Null
    $arguments = @($TestDll, '-noColor', '-noLogo', '-xml', (Join-Path $resultDir "xunit$(if ($Filter -contains '-trait') { '-gpu' }).xml")) + $Filter
    $lines = [System.Collections.Generic.List[string]]::new()
    & dotnet @arguments 2>&1 | ForEach-Object { $s = "$_"; $lines.Add($s); Write-Host $s }
    $rc = $LASTEXITCODE
    # "   Calm.Engine.Tests  Total: 12, Errors: 0, Failed: 1, Skipped: 2, Not Run: 0, Time: 0.4s" (or just "Total: 0")
    $summary = $lines | Where-Object { $_ -match '\bTotal: \d+' } | Select-Object -Last 1
    if (-not $summary) {
        Write-Host "xunit did not report a summary (exit code $rc): counted as 1 failed." -ForegroundColor Red
        return [pscustomobject]@{ Passed = 0; Failed = 1; Skipped = 0; FailedNames = @("xunit did not report a summary (exit code $rc)") }
    }
    # "    Calm.Engine.Tests.Some.Test(x: 1) [FAIL]": the failed tests' names for the end of the run
    $names = @($lines | Where-Object { $_ -match '^\s*(\S.*?)\s+\[FAIL\]\s*$' } | ForEach-Object { "xunit: $($Matches[1])" })
    $n = @{}
    foreach ($k in 'Total', 'Errors', 'Failed', 'Skipped', 'Not Run') {
        $n[$k] = if ($summary -match "\b$k\: (\d+)") { [int]$Matches[1] } else { 0 }
    }
    $failed = $n['Failed'] + $n['Errors']
    if ($rc -ne 0 -and $failed -eq 0) { $failed = 1 }   # the runner failed in a way the counts do not show
    $skipped = $n['Skipped'] + $n['Not Run']
    if ($failed -gt 0 -and $names.Count -eq 0) { $names = @("xunit exited with code $rc") }
    $r = [pscustomobject]@{ Passed = $n['Total'] - $n['Failed'] - $n['Skipped'] - $n['Not Run']; Failed = $failed; Skipped = $skipped; FailedNames = $names }
    Write-Host ("xunit: {0} passed, {1} failed, {2} skipped" -f $r.Passed, $r.Failed, $r.Skipped)
    return $r
}

function Complete-TestRun($Results) {
    $passed = ($Results | Measure-Object Passed -Sum).Sum
    $failed = ($Results | Measure-Object Failed -Sum).Sum
    $skipped = ($Results | Measure-Object Skipped -Sum).Sum
    $line = "$passed passed, $failed failed"
    if ($skipped) { $line += ", $skipped skipped" }
    Write-Host ''
    # The failures again, just above the count: a log cut to its last lines still says what failed.
    $names = @($Results | ForEach-Object { if ($_.PSObject.Properties['FailedNames']) { $_.FailedNames } } | Where-Object { $_ })
    if ($names.Count) {
        Write-Host 'Failed:' -ForegroundColor Red
        foreach ($n in $names) { Write-Host "  $n" -ForegroundColor Red }
    }
    Write-Host $line
    if ($failed -gt 0) { $script:ExitCode = 1 }
}

function Invoke-Test {
    Invoke-Build
    $x = Invoke-XunitTests @('-trait-', 'Category=GPU')
    $p = Invoke-PesterTests -Exclude 'GPU'
    Complete-TestRun @($x, $p)
}

function Invoke-GpuTest {
    Invoke-Build
    $x = Invoke-XunitTests @('-trait', 'Category=GPU')
    $p = Invoke-PesterTests -IncludeTag 'GPU'
    Complete-TestRun @($x, $p)
}

# ------------------------------------------------------------------------------------------------------ Demo and Bench

function Invoke-Demo {
    Invoke-Build
    Write-Step 'Demo (child pwsh): examples/Demo.ps1'
    $rc = Invoke-ChildPwsh @('-File', (Join-Path $Root 'examples/Demo.ps1'))
    if ($rc -ne 0) { $script:ExitCode = 1 }
}

function Invoke-Bench {
    Invoke-Build
    $benches = @(Get-ChildItem -Path (Join-Path $Root 'bench') -Filter '*.Bench.ps1' -File -ErrorAction Ignore | Sort-Object Name)
    if ($benches.Count -eq 0) {
        Write-Host 'No benchmark scripts yet (bench/*.Bench.ps1 arrive with the speed-of-light work); nothing was measured.'
        return
    }
    $hasGpu = [bool](Get-Command nvidia-smi -ErrorAction Ignore) -and ((& nvidia-smi -L 2>$null) -match '^GPU \d')
    foreach ($b in $benches) {
        # A script whose header says "# Needs: GPU" is skipped, with the reason, where there is no NVIDIA GPU.
        if (-not $hasGpu -and (Select-String -Path $b.FullName -Pattern '^# Needs: GPU' -Quiet)) {
            Write-Host "Bench $($b.Name) skipped: it needs an NVIDIA GPU and nvidia-smi lists none." -ForegroundColor Yellow
            continue
        }
        Write-Step "Bench $($b.Name) (child pwsh)"
        $rc = Invoke-ChildPwsh @('-File', $b.FullName)
        if ($rc -ne 0) { Write-Host "$($b.Name) failed (exit code $rc)." -ForegroundColor Red; $script:ExitCode = 1 }
    }
}

# ------------------------------------------------------------------------------------------------------------- Package

function Invoke-Package {
    Invoke-Build
    $version = Get-CalmVersion
    $dest = Join-Path $OutDir "Calm/$version"
    Write-Step "Package Calm $version -> $([IO.Path]::GetRelativePath($Root, $dest))"
    if (Test-Path $dest) { Remove-Item -Recurse -Force $dest }
    New-Item -ItemType Directory -Force (Join-Path $dest 'bin'), (Join-Path $dest 'module') | Out-Null
    Copy-Item (Join-Path $Root 'Calm.psd1'), (Join-Path $Root 'Calm.psm1') $dest
    Set-ManifestVersion (Join-Path $dest 'Calm.psd1') $version
    Copy-Item (Join-Path $Root 'module/*') (Join-Path $dest 'module') -Recurse
    Get-ChildItem $ModuleBin -File | Where-Object Extension -in '.dll', '.json' | Copy-Item -Destination (Join-Path $dest 'bin')
    Copy-Item (Join-Path $ModuleBin 'en-US') (Join-Path $dest 'bin') -Recurse   # the cmdlet help (MAML)
    foreach ($extra in 'README.md', 'LICENSE') {
        if (Test-Path (Join-Path $Root $extra)) { Copy-Item (Join-Path $Root $extra) $dest }
    }

    $m = Test-ModuleManifest -Path (Join-Path $dest 'Calm.psd1')
    if ($m.Version -ne [version]$version) { throw "The packaged manifest says $($m.Version), the build says $version." }

    # Prove it imports with no checkout around it: copy to a temporary folder and import from there in a child pwsh.
    $away = Join-Path ([IO.Path]::GetTempPath()) "calm-package-$([guid]::NewGuid().ToString('n'))"
    New-Item -ItemType Directory -Force (Join-Path $away 'Calm') | Out-Null
    Copy-Item $dest (Join-Path $away "Calm/$version") -Recurse
    try {
        $check = @"
`$ErrorActionPreference = 'Stop'
# A clean module path: the package folder and pwsh's own modules only (nothing from a checkout or a user folder).
`$env:PSModulePath = '$away' + [IO.Path]::PathSeparator + (Join-Path `$PSHOME 'Modules')
Set-Location ([IO.Path]::GetTempPath())
Import-Module Calm -RequiredVersion $version
`$mod = Get-Module Calm
`$want = @(`$mod.ExportedCmdlets.Keys | Sort-Object)
`$declared = @((Import-PowerShellDataFile (Join-Path `$mod.ModuleBase 'Calm.psd1')).CmdletsToExport | Sort-Object)
if ((`$want -join ',') -ne (`$declared -join ',')) { throw "exported: `$(`$want -join ','); declared: `$(`$declared -join ',')" }
if (-not `$mod.ModuleBase.StartsWith('$away')) { throw "imported from `$(`$mod.ModuleBase)" }
`$null = Get-CalmDevice
`$noHelp = @(`$want | Where-Object { @((Get-Help `$_).examples.example).Count -lt 2 })
if (`$noHelp.Count -eq `$want.Count) { throw 'the package has no cmdlet help (bin/en-US/Calm.PowerShell.dll-Help.xml)' }
foreach (`$c in `$noHelp) { Write-Warning "`$c has no help in the package yet (docs/help/`$c.md)" }
"Imported Calm `$(`$mod.Version) from `$(`$mod.ModuleBase): `$(`$want -join ', ')"
"@
        $rc = Invoke-ChildPwsh @('-Command', $check)
        if ($rc -ne 0) { throw "Import-Module from the packaged folder failed (exit code $rc)." }
    }
    finally { Remove-Item -Recurse -Force -ErrorAction Ignore $away }
    Write-Host "Package: $dest"
}

function Invoke-Clean {
    Write-Step 'Clean'
    $paths = @($ModuleBin, $OutDir) +
        @(Get-ChildItem -Path (Join-Path $Root 'src'), (Join-Path $Root 'tests') -Directory -Recurse -ErrorAction Ignore |
            Where-Object { $_.Name -in 'bin', 'obj' } | ForEach-Object FullName)
    foreach ($p in $paths) { if (Test-Path $p) { Remove-Item -Recurse -Force $p; Write-Host "removed $p" } }
}

# ----------------------------------------------------------------------------------------------------------------- main

$script:ExitCode = 0
try {
    foreach ($t in $Task) {
        switch ($t) {
            'Build' { Invoke-Build }
            'Test' { Invoke-Test }
            'GpuTest' { Invoke-GpuTest }
            'Demo' { Invoke-Demo }
            'Bench' { Invoke-Bench }
            'Package' { Invoke-Package }
            'Clean' { Invoke-Clean }
            'PesterChild' { Invoke-PesterChild }
        }
    }
}
catch {
    Write-Host "build.ps1 $($Task -join ','): $($_.Exception.Message)" -ForegroundColor Red
    exit 1
}
exit $script:ExitCode
