#!/usr/bin/env pwsh
# Needs: GPU
# Calm and Hugging Face transformers decoding the same shape on the same GPU in one call (the performance issue's
# side-by-side row). Needs the GPU machine: python3 with torch + transformers, and Calm's build (see bench/RESULTS.md).
#   pwsh bench/SideBySide.Bench.ps1 -OutputFolder $OUT/side
[CmdletBinding()]
param(
    [string] $OutputFolder = $(if ($env:OUT) { Join-Path $env:OUT 'side' } else { Join-Path $PSScriptRoot 'out/side' }),
    [ValidateSet('Llama-3-8B', 'Llama-3.2-1B')] [string] $Preset = 'Llama-3-8B',
    [int] $PromptTokens = 16,
    [int] $NewTokens = 128,
    [string] $Modes = 'eager,static',
    [int] $Repeat = 3
)
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
if (-not (Get-Module Calm)) { Import-Module (Join-Path $PSScriptRoot '../Calm.psd1') }
if (-not (Get-CalmDevice | Where-Object Kind -EQ 'Cuda')) { throw 'The side-by-side benchmark needs an NVIDIA GPU.' }
New-Item -ItemType Directory -Force -Path $OutputFolder | Out-Null
$shape = @{ 'Llama-3-8B' = 'llama-3-8b'; 'Llama-3.2-1B' = 'llama-3.2-1b' }[$Preset]
$peerJson = Join-Path $OutputFolder 'transformers.json'
& python3 (Join-Path $PSScriptRoot 'transformers_peer.py') --shape $shape --prompt-tokens $PromptTokens --new $NewTokens --modes $Modes --repeat $Repeat --out $peerJson
if ($LASTEXITCODE -ne 0) { throw "transformers_peer.py failed ($LASTEXITCODE)" }
$peer = Get-Content -Raw $peerJson | ConvertFrom-Json

# Calm: the same decode, positions PromptTokens .. PromptTokens + NewTokens, measured as tokens/s of decode steps.
$bw = Measure-CalmBandwidth -Device Cuda | Where-Object Kind -EQ 'Read'
$calm = Measure-CalmSpeedOfLight -Preset $Preset -DType bf16 -Device Cuda -Context $PromptTokens -Tokens $NewTokens -Repeat $Repeat
$row = [pscustomobject]@{
    Shape                      = $Preset
    CalmTokensPerSecond        = [math]::Round($calm.TokensPerSecond, 1)
    CalmPercentOfSol           = [math]::Round($calm.PercentOfSol, 1)
    TransformersEager          = if ($peer.PSObject.Properties['eager']) { [math]::Round($peer.eager.median_tok_s, 1) } else { $null }
    TransformersStaticCompiled = if ($peer.PSObject.Properties['static_compiled']) { [math]::Round($peer.static_compiled.median_tok_s, 1) } else { $null }
    SpeedupVsCompiled          = if ($peer.PSObject.Properties['static_compiled']) { [math]::Round($calm.TokensPerSecond / $peer.static_compiled.median_tok_s, 2) } else { $null }
    SpeedupVsEager             = if ($peer.PSObject.Properties['eager']) { [math]::Round($calm.TokensPerSecond / $peer.eager.median_tok_s, 2) } else { $null }
    ReadBandwidthGBps          = [math]::Round($bw.MedianGBps, 0)
    Transformers               = $peer.transformers
    Torch                      = $peer.torch
}
$row | Format-List | Out-Host
$row | Export-Csv (Join-Path $OutputFolder 'side-by-side.csv') -NoTypeInformation
