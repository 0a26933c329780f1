#!/usr/bin/env pwsh
# The Calm demo (build.ps1 Demo runs it after building): make the tiny synthetic model on the CPU, generate a few
# tokens greedily, and put the time per token next to its speed of light: the bytes a token must read divided by
# this machine's measured memory read bandwidth.
[CmdletBinding()]
param(
    [string] $Preset = 'tiny',
    [int] $Tokens = 16,
    [int] $Seed = 1
)
$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot '../Calm.psd1') -Force

Write-Host "`n== The machine" -ForegroundColor Cyan
$cpu = Get-CalmDevice -MeasureBandwidth | Where-Object Kind -EQ 'Cpu'
$cpu | Format-Table | Out-Host
Write-Host ("Measured read bandwidth: {0:N1} GB/s (median of 7 passes, spread {1:N0}%)" -f $cpu.MeasuredBandwidthGBps, $cpu.BandwidthSpreadPercent)

Write-Host "`n== A synthetic model: New-CalmModel -Preset $Preset" -ForegroundColor Cyan
$model = New-CalmModel -Preset $Preset -Seed $Seed -Device Cpu
$model | Format-Table | Out-Host

Write-Host "== Greedy generation ($Tokens tokens; token ids until the tokenizer lands)" -ForegroundColor Cyan
$prompt = [int[]](1, 2, 3, 4)
$r = [Calm.PowerShell.DemoDecoder]::Greedy($model, $prompt, $Tokens)
Write-Host ("prompt: {0}" -f ($prompt -join ' '))
Write-Host ("output: {0}" -f ($r.Tokens -join ' '))

Write-Host "`n== Speed of light" -ForegroundColor Cyan
# What one decoded token must read: every weight once, except that only one row of the embedding table is read
# (ModelConfig.ActiveParameterCountPerToken also counts only the active experts of an MoE model).
$engine = [Calm.Engine.Session.CalmSession]::Shared.Find($model.Name)
$bytesPerWeight = $model.WeightBytes / $model.Parameters
$bytesPerToken = [double]$engine.Config.ActiveParameterCountPerToken * $bytesPerWeight
$floorMs = $bytesPerToken / ($cpu.MeasuredBandwidthGBps * 1e9) * 1e3
Write-Host ("weights:            {0:N0} bytes ({1})" -f $model.WeightBytes, $model.DType)
Write-Host ("bytes per token:    {0:N0}" -f $bytesPerToken)
Write-Host ("speed of light:     {0:N4} ms/token = bytes per token / {1:N1} GB/s  ({2:N0} tokens/s at most)" -f $floorMs, $cpu.MeasuredBandwidthGBps, (1e3 / $floorMs))
Write-Host ("measured:           {0:N4} ms/token  ({1:N0} tokens/s)" -f $r.MsPerToken, (1e3 / $r.MsPerToken))
Write-Host ("of speed of light:  {0:P1}" -f ($floorMs / $r.MsPerToken))
Write-Host '(A model this small fits in the caches and is bound by compute and overheads, not by memory: the figure is the method, not a claim.)'

Remove-CalmModel -Model $model
