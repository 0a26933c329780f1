#!/usr/bin/env pwsh
# A report: measure bandwidth, a context sweep with the per-stage breakdown and one prefill, and write one
# self-contained HTML file (open it in any browser; no network needed).
#   ./examples/SolReport.ps1 -Preset Llama-3-8B -Path llama3-h200.html
#   ./examples/SolReport.ps1 -Preset tiny -Device Cpu -Context 0,256 -Path tiny.html
[CmdletBinding()]
param(
    [string] $Preset = 'Llama-3-8B',
    [string] $DType = 'bf16',
    [ValidateSet('Auto', 'Cpu', 'Cuda')] [string] $Device = 'Auto',
    [int[]] $Context = @(0, 1024, 4096, 16384, 32768),
    [int] $Tokens = 32,
    [int] $Repeat = 3,
    [int] $PromptTokens = 512,
    [string] $Path = 'calm-report.html'
)
$ErrorActionPreference = 'Stop'
if (-not (Get-Module Calm)) { Import-Module (Join-Path $PSScriptRoot '../Calm.psd1') }

$rows = @(
    Measure-CalmBandwidth -Device $Device
    Measure-CalmSpeedOfLight -Preset $Preset -DType $DType -Device $Device -Context $Context -Tokens $Tokens -Repeat $Repeat -PromptTokens $PromptTokens -Breakdown
)
$file = $rows | Export-CalmReport -Path $Path -Title "Calm: $Preset $DType" -PassThru
Write-Host "Report: $($file.FullName)"
$file
