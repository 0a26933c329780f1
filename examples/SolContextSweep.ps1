#!/usr/bin/env pwsh
# Context sweep to CSV: decode tokens/s at growing KV-cache depths next to the speed of light at each depth.
#   ./examples/SolContextSweep.ps1                                     # Llama-3-8B bf16 on the GPU, 0..32k
#   ./examples/SolContextSweep.ps1 -Preset tiny -Device Cpu -Context 0,256,1024 -Path sweep.csv
# The CSV opens in any spreadsheet; Import-Csv sweep.csv | Export-CalmReport sweep.html draws it.
[CmdletBinding()]
param(
    [string] $Preset = 'Llama-3-8B',
    [string] $DType = 'bf16',
    [ValidateSet('Auto', 'Cpu', 'Cuda')] [string] $Device = 'Auto',
    [int[]] $Context = @(0, 1024, 4096, 16384, 32768),
    [int] $Tokens = 32,
    [int] $Repeat = 3,
    [string] $Path = 'calm-context-sweep.csv'
)
$ErrorActionPreference = 'Stop'
if (-not (Get-Module Calm)) { Import-Module (Join-Path $PSScriptRoot '../Calm.psd1') }

$rows = Measure-CalmSpeedOfLight -Preset $Preset -DType $DType -Device $Device -Context $Context -Tokens $Tokens -Repeat $Repeat
$rows | Export-Csv -Path $Path -NoTypeInformation
$rows | Format-Table Context, TokensPerSecond, StdDev, SolTokensPerSecond, PercentOfSol, AchievedGBps, BandwidthSource | Out-Host
Write-Host "Wrote $($rows.Count) rows to $Path"
$rows
