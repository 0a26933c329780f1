#!/usr/bin/env pwsh
# The Calm demo (build.ps1 Demo runs it after building): import the tiny real model (models/tiny-wp, a 4.2M-parameter
# Llama trained on War and Peace), generate English from a prompt with a fixed seed on the CPU, and put the decode
# speed next to its speed of light: the bytes one token must read ÷ this machine's measured memory read bandwidth.
[CmdletBinding()]
param(
    [string] $Prompt = 'Prince Andrew looked at the sky and',
    [int] $Tokens = 60,
    [long] $Seed = 42,
    [double] $Temperature = 0.7
)
$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot '../Calm.psd1') -Force

Write-Host "`n== The machine" -ForegroundColor Cyan
$cpu = Get-CalmDevice -MeasureBandwidth | Where-Object Kind -EQ 'Cpu'
$cpu | Format-Table | Out-Host
Write-Host ("Measured read bandwidth: {0:N1} GB/s (median of 7 passes, spread {1:N0}%)" -f $cpu.MeasuredBandwidthGBps, $cpu.BandwidthSpreadPercent)

Write-Host "`n== The embedded model: Import-CalmModel models/tiny-wp" -ForegroundColor Cyan
$model = Import-CalmModel -Path (Join-Path $PSScriptRoot '../models/tiny-wp') -Device Cpu
$model | Format-Table | Out-Host

Write-Host "== Invoke-CalmGenerate (seed $Seed, temperature $Temperature, top-p 0.95)" -ForegroundColor Cyan
$r = Invoke-CalmGenerate -Prompt $Prompt -Model $model -MaxTokens $Tokens -Temperature $Temperature -TopP 0.95 -Seed $Seed
Write-Host $Prompt -NoNewline -ForegroundColor White
Write-Host $r.Text -ForegroundColor Green
$r | Select-Object PromptTokens, GeneratedTokens, StopReason, TimeToFirstTokenMs, PrefillTokensPerSecond, DecodeTokensPerSecond, Seed | Format-List | Out-Host

Write-Host "== Speed of light" -ForegroundColor Cyan
# What one decoded token must read: each weight matrix once (one embedding row), plus the KV cache so far
# (the CPU backend keeps it in f32); SolModel.Compute does the arithmetic, at the middle of this generation.
$engine = [Calm.Engine.Session.CalmSession]::Shared.Find($model.Name)
$mid = $r.PromptTokens + [int]($r.GeneratedTokens / 2)
$sol = [Calm.Engine.SpeedOfLight.SolModel]::Compute($model.Name, $engine.Config, $model.DType, 'f32', $mid, $cpu.MeasuredBandwidthGBps, $null)
$measuredMs = 1e3 / $r.DecodeTokensPerSecond
Write-Host ("bytes per token:    {0:N0} (weights {1:N0} + KV {2:N0} x {3} positions)" -f $sol.BytesPerToken, $sol.WeightBytes, $sol.KvBytesPerToken, $mid)
Write-Host ("speed of light:     {0:N4} ms/token = bytes per token / {1:N1} GB/s  ({2:N0} tokens/s at most)" -f $sol.SolMsPerToken, $sol.BandwidthGBps, $sol.SolTokensPerSecond)
Write-Host ("measured decode:    {0:N4} ms/token  ({1:N0} tokens/s)" -f $measuredMs, $r.DecodeTokensPerSecond)
Write-Host ("of speed of light:  {0:P1}" -f ($sol.SolMsPerToken / $measuredMs))
Write-Host '(A model this small fits in the caches and is bound by compute and overheads, not by memory: the figure is the method, not a claim.)'

Remove-CalmModel -Model $model -Confirm:$false
