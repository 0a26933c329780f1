#!/usr/bin/env pwsh
# The H200 table in one call (build.ps1 Bench runs it): Measure-CalmBandwidth, then Measure-CalmSpeedOfLight on
# Llama-3-8B bf16 (synthetic weights of the real shape, as the Llama-3.1-8B preset: same tensors, 128k positions) at contexts 0, 1k, 4k, 16k, 32k with the per-stage
# breakdown and a 512-token prefill; CSV files, a markdown table and the HTML report go to the output folder.
# Without a GPU it degrades to the tiny preset on the CPU (small contexts) so the script itself stays tested.
#   Output folder: -OutputFolder, else $env:CALM_BENCH_OUT, else $env:OUT (the GPU machine's), else bench/out.
[CmdletBinding()]
param(
    [string] $OutputFolder = $(if ($env:CALM_BENCH_OUT) { $env:CALM_BENCH_OUT } elseif ($env:OUT) { $env:OUT } else { Join-Path $PSScriptRoot 'out' }),
    [string] $Preset,
    [int[]] $Context,
    [int] $Tokens = 32,
    [int] $Repeat = 3,
    [int] $PromptTokens = 512,
    [switch] $Cpu
)
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
if (-not (Get-Module Calm)) { Import-Module (Join-Path $PSScriptRoot '../Calm.psd1') }

$gpu = -not $Cpu -and [bool](Get-CalmDevice | Where-Object Kind -EQ 'Cuda')
if ($gpu) {
    $device = 'Cuda'
    # Llama-3.1-8B is Llama-3-8B's exact tensor shape with a 128k context (Llama-3-8B itself allows 8192 positions).
    if (-not $Preset) { $Preset = 'Llama-3.1-8B' }
    if (-not $Context) { $Context = 0, 1024, 4096, 16384, 32768 }
} else {
    Write-Host 'No CUDA device: running the small CPU version of the table (tiny preset).'
    $device = 'Cpu'
    if (-not $Preset) { $Preset = 'tiny' }
    if (-not $Context) { $Context = 0, 256, 1024 }
    $Tokens = [Math]::Min($Tokens, 8); $Repeat = [Math]::Min($Repeat, 2); $PromptTokens = [Math]::Min($PromptTokens, 64)
}
New-Item -ItemType Directory -Force -Path $OutputFolder | Out-Null

$bw = @(Measure-CalmBandwidth -Device $device)
$bw | Format-Table | Out-Host
$bw | Export-Csv (Join-Path $OutputFolder 'bandwidth.csv') -NoTypeInformation

$rows = @(Measure-CalmSpeedOfLight -Preset $Preset -DType bf16 -Device $device -Context $Context -Tokens $Tokens -Repeat $Repeat -PromptTokens $PromptTokens -Breakdown)
$points = @($rows | Where-Object { $_ -is [Calm.Engine.SpeedOfLight.SolMeasurement] })
$stages = @($rows | Where-Object { $_ -is [Calm.Engine.SpeedOfLight.SolStageMeasurement] })
$points | Format-Table | Out-Host
$stages | Format-Table | Out-Host
$points | Export-Csv (Join-Path $OutputFolder 'speed-of-light.csv') -NoTypeInformation
$stages | Export-Csv (Join-Path $OutputFolder 'stages.csv') -NoTypeInformation
$points | ConvertTo-Json -Depth 3 | Set-Content (Join-Path $OutputFolder 'speed-of-light.json')
$llama = @(Measure-CalmSpeedOfLight -Preset $Preset -DType bf16 -Device $device -Context $Context[0] -Tokens $Tokens -Repeat $Repeat -PromptTokens $PromptTokens -LlamaBench)
$llama | Export-Csv (Join-Path $OutputFolder 'llama-bench-columns.csv') -NoTypeInformation

# A markdown table for bench/RESULTS.md.
$read = $bw | Where-Object Kind -EQ 'Read' | Select-Object -First 1
$md = [System.Collections.Generic.List[string]]::new()
$md.Add("## $Preset bf16 on $($read.Device) ($(Get-Date -Format 'yyyy-MM-dd'))")
$md.Add('')
$md.Add(('Bandwidth: ' + (($bw | ForEach-Object { '{0} {1:N0} GB/s (spread {2:N1}%{3})' -f $_.Kind, $_.MedianGBps, $_.SpreadPercent, $(if ($_.PeakGBps) { ', {0:N0}% of {1:N0} peak' -f $_.PercentOfPeak, $_.PeakGBps }) }) -join '; ')))
$md.Add('')
$md.Add('| Phase | Context | Prompt | tok/s | ± | ms/token | SOL tok/s | % of SOL | GB/s | % of peak |')
$md.Add('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
foreach ($p in $points) {
    $md.Add(('| {0} | {1} | {2} | {3:N1} | {4:N1} | {5:N3} | {6:N1} | {7:N1} | {8:N0} | {9} |' -f $p.Phase, $p.Context, $p.PromptTokens, $p.TokensPerSecond, $p.StdDev, $p.MsPerToken, $p.SolTokensPerSecond, $p.PercentOfSol, $p.AchievedGBps, $(if ($null -ne $p.PercentOfPeak) { '{0:N1}' -f $p.PercentOfPeak } else { '' })))
}
$md.Add('')
$md.Add('| Context | Stage | ms | MB | GB/s | % of its limit | % of step |')
$md.Add('|---:|---|---:|---:|---:|---:|---:|')
foreach ($s in $stages) { $md.Add(('| {0} | {1} | {2:N3} | {3:N1} | {4:N0} | {5:N1} | {6:N1} |' -f $s.Context, $s.Stage, $s.Ms, ($s.Bytes / 1e6), $s.GBps, $s.PercentOfLimit, $s.PercentOfStep)) }
$md | Set-Content (Join-Path $OutputFolder 'RESULTS.md')

$report = @($bw) + $rows | Export-CalmReport -Path (Join-Path $OutputFolder 'report.html') -Title "Calm: $Preset bf16 on $($read.Device)" -PassThru
Write-Host "Wrote bandwidth.csv, speed-of-light.csv/json, stages.csv, llama-bench-columns.csv, RESULTS.md and $($report.Name) to $OutputFolder"
