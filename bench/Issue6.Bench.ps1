#!/usr/bin/env pwsh
# Needs: GPU
# The rows of the performance issue that the other bench scripts do not cover, in one call: Llama-3-8B decode with
# fp8 and int4 weights (with -Breakdown), Llama-3.2-1B bf16, Mixtral-8x7B bf16 and fp8 (MoE: only active experts read;
# quantized synthetic weights are made on the GPU, kernels/quantize.cu).
# Every row against the read bandwidth Measure-CalmBandwidth measures first in the same process.
#   pwsh bench/Issue6.Bench.ps1 -OutputFolder $OUT/issue6
[CmdletBinding()]
param(
    [string] $OutputFolder = $(if ($env:OUT) { Join-Path $env:OUT 'issue6' } else { Join-Path $PSScriptRoot 'out/issue6' }),
    [int] $Tokens = 32,
    [int] $Repeat = 3,
    # run only these rows (names: bf16, bf16-fp8kv, fp8, int4, 1b, mixtral-fp8, persistent); all when empty
    [string[]] $Only = @()
)
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
if (-not (Get-Module Calm)) { Import-Module (Join-Path $PSScriptRoot '../Calm.psd1') }
New-Item -ItemType Directory -Force -Path $OutputFolder | Out-Null
$bw = @(Measure-CalmBandwidth -Device Cuda)
$bw | Format-Table | Out-Host
$rows = [System.Collections.Generic.List[object]]::new()
$Only = @($Only | ForEach-Object { $_ -split ',' } | Where-Object { $_ })   # pwsh -File passes a comma list as one string
$runs = @(
    @{ Name = 'bf16'; Preset = 'Llama-3.1-8B'; DType = 'bf16'; Context = 0, 1024, 4096, 32768; PromptTokens = 512 }   # Llama-3-8B tensors, 128k positions
    @{ Name = 'bf16-fp8kv'; Preset = 'Llama-3.1-8B'; DType = 'bf16'; Context = , 32768; KvCacheDType = 'fp8' }
    @{ Name = 'fp8'; Preset = 'Llama-3-8B'; DType = 'fp8'; Context = 0, 4096; PromptTokens = 512 }      # batched prefill on sm_90 (wgmma)
    @{ Name = 'int4'; Preset = 'Llama-3-8B'; DType = 'int4'; Context = 0, 4096; PromptTokens = 512 }
    @{ Name = '1b'; Preset = 'Llama-3.2-1B'; DType = 'bf16'; Context = 0, 4096 }
    @{ Name = 'mixtral-fp8'; Preset = 'Mixtral-8x7B'; DType = 'fp8'; Context = 0, 4096 }
    @{ Name = 'persistent'; Preset = 'Llama-3-8B'; DType = 'bf16'; Context = , 0; Decode = 'persistent' }               # the persistent kernel, for the record
)
foreach ($r in $runs) {
    if ($Only.Count -and $r.Name -notin $Only) { continue }
    try {
        $extra = @{}
        if ($r.KvCacheDType) { $extra.KvCacheDType = $r.KvCacheDType }
        if ($r.PromptTokens) { $extra.PromptTokens = $r.PromptTokens }
        if ($r.Decode) { $env:CALM_DECODE = $r.Decode } else { Remove-Item env:CALM_DECODE -ErrorAction SilentlyContinue }
        $sw = [Diagnostics.Stopwatch]::StartNew()
        $out = @(Measure-CalmSpeedOfLight -Preset $r.Preset -DType $r.DType -Device Cuda -Context $r.Context -Tokens $Tokens -Repeat $Repeat -Breakdown @extra)
        Write-Host ("{0} {1} kv {2} decode {3}: {4:F1} s" -f $r.Preset, $r.DType, $(if ($r.KvCacheDType) { $r.KvCacheDType } else { 'f16' }), $(if ($r.Decode) { $r.Decode } else { 'default' }), $sw.Elapsed.TotalSeconds)
        $out | Out-Host
        foreach ($o in $out) { $rows.Add($o) }
    }
    catch { Write-Host "$($r.Preset) $($r.DType): $($_.FullyQualifiedErrorId): $($_.Exception.Message)" -ForegroundColor Red }
    finally { Remove-Item env:CALM_DECODE -ErrorAction SilentlyContinue }
}
$points = @($rows | Where-Object { $_ -is [Calm.Engine.SpeedOfLight.SolMeasurement] })
$stages = @($rows | Where-Object { $_ -is [Calm.Engine.SpeedOfLight.SolStageMeasurement] })
$points | Export-Csv (Join-Path $OutputFolder 'issue6.csv') -NoTypeInformation
$stages | Export-Csv (Join-Path $OutputFolder 'issue6-stages.csv') -NoTypeInformation
$points | Format-Table Model, Phase, DType, Context, PromptTokens, TokensPerSecond, MsPerToken, TimeToFirstTokenMs, SolTokensPerSecond, PercentOfSol, AchievedGBps | Out-String -Width 220 | Out-Host
