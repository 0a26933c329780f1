#!/usr/bin/env pwsh
# Dtype comparison: the same shape measured at each weight dtype (bf16, and fp8 / int4 quantized as -DType does at
# import), each against its own speed of light; -WhatIfDType adds rows that are arithmetic only (no measurement).
#   ./examples/SolDTypeComparison.ps1 -Preset Llama-3.2-1B
#   ./examples/SolDTypeComparison.ps1 -Preset Llama-3-8B -DType bf16, fp8, int4 -Context 0, 4096
#   ./examples/SolDTypeComparison.ps1 -Preset tiny -Device Cpu -Context 0,128 -DType bf16, f32 -WhatIfDType fp8
[CmdletBinding()]
param(
    [string] $Preset = 'Llama-3.2-1B',
    [string[]] $DType = @('bf16', 'fp8', 'int4'),
    [string[]] $WhatIfDType = @(),
    [ValidateSet('Auto', 'Cpu', 'Cuda')] [string] $Device = 'Auto',
    [int[]] $Context = @(0, 4096),
    [int] $Tokens = 16,
    [int] $Repeat = 3
)
$ErrorActionPreference = 'Stop'
if (-not (Get-Module Calm)) { Import-Module (Join-Path $PSScriptRoot '../Calm.psd1') }

$measured = foreach ($d in $DType) {
    Measure-CalmSpeedOfLight -Preset $Preset -DType $d -Device $Device -Context $Context -Tokens $Tokens -Repeat $Repeat
}
# The same denominator the measurements used (measured this session), for the dtypes that are arithmetic only.
$bw = ($measured | Select-Object -First 1).BandwidthGBps
$whatIf = foreach ($d in $WhatIfDType) { Get-CalmSpeedOfLight -Preset $Preset -DType $d -Context $Context -BandwidthGBps $bw }

$table = @(
    $measured | Select-Object DType, Context, TokensPerSecond, SolTokensPerSecond, PercentOfSol, @{ n = 'GBPerToken'; e = { $_.BytesPerToken / 1e9 } }, @{ n = 'Kind'; e = { 'Measured' } }
    $whatIf | Select-Object DType, Context, @{ n = 'TokensPerSecond'; e = { $null } }, SolTokensPerSecond, @{ n = 'PercentOfSol'; e = { $null } }, @{ n = 'GBPerToken'; e = { $_.BytesPerToken / 1e9 } }, @{ n = 'Kind'; e = { 'WhatIf' } }
)
$table | Format-Table | Out-Host
$table
