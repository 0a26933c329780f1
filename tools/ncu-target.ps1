#!/usr/bin/env pwsh
# Needs: GPU. A small target for Nsight Compute (tools/gpu-call.sh step ncu): times one matvec shape with the engine's
# own microbenchmark so ncu can profile its kernel (ncu -k regex:... -s N -c 1 pwsh -File tools/ncu-target.ps1 ...).
#   Kind: quant (fp8|int4 tensor-core variant) | dense (bf16 matvec) | step (a few decode steps of a preset)
param(
    [ValidateSet('quant', 'dense', 'step')] [string] $Kind = 'quant',
    [int] $Rows = 4096, [int] $Cols = 4096,
    [string] $DType = 'int4', [string] $Variant = 't1',
    [string] $Preset = 'Llama-3-8B', [int] $Tokens = 4, [int] $Context = 0
)
$ErrorActionPreference = 'Stop'
$root = Split-Path $PSScriptRoot -Parent
if ($Kind -eq 'step') {
    Import-Module (Join-Path $root 'Calm.psd1')
    Measure-CalmSpeedOfLight -Preset $Preset -DType $DType -Device Cuda -Context $Context -Tokens $Tokens -Repeat 1 | Format-Table TokensPerSecond, PercentOfSol | Out-Host
    return
}
Add-Type -Path (Join-Path $root 'bin/Calm.Engine.dll')
$dt = [Calm.Engine.Model.DType]$(switch ($DType) { 'fp8' { 'F8E4M3' } 'int4' { 'Int4' } 'bf16' { 'BF16' } 'f16' { 'F16' } default { $DType } })
$t = if ($Kind -eq 'quant') { [Calm.Engine.Cuda.CudaQuantKernels]::Bench($Rows, $Cols, $dt, 2, 0, [Threading.CancellationToken]::None, 0, $false, $true, $Variant) }
     else { [Calm.Engine.Cuda.CudaMicrobench]::Matvec($Rows, $Cols, $dt, 2) }
"{0} {1}x{2}: {3:F2} us/call" -f $t.Kernel, $Rows, $Cols, ($t.MedianMs * 1e3)
