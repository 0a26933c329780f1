#!/usr/bin/env pwsh
# Needs: GPU. Decode tok/s of a few preset:dtype[:context[:kv cache dtype]] runs (context 0 and the f16 cache unless
# given; no breakdown, no prefill): a quick A/B between builds or settings in one device call (tools/ab-builds.sh). The figures for bench/RESULTS.md come from
# bench/Issue6.Bench.ps1; this only ranks variants (its % of SOL is against the read bandwidth measured first, as there).
param([string[]] $Runs = @('Llama-3-8B:fp8', 'Llama-3-8B:int4'), [int] $Tokens = 32, [int] $Repeat = 3)
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
Import-Module (Join-Path (Split-Path $PSScriptRoot -Parent) 'Calm.psd1')
$Runs = @($Runs | ForEach-Object { $_ -split ',' } | Where-Object { $_ })
$bw = Measure-CalmBandwidth -Device Cuda -Kind Read | Select-Object -First 1
"quick read bandwidth {0:F1} GB/s" -f $bw.MedianGBps
foreach ($r in $Runs) {
    $preset, $dt, $ctx, $kv = $r -split ':'
    $extra = @{}
    if ($kv) { $extra.KvCacheDType = $kv }
    $context = if ($ctx) { [int]$ctx } else { 0 }
    $m = Measure-CalmSpeedOfLight -Preset $preset -DType $dt -Device Cuda -Context $context -Tokens $Tokens -Repeat $Repeat @extra |
        Where-Object Phase -eq 'Decode' | Select-Object -First 1
    $what = if ($ctx -or $kv) { "{0} @{1}{2}" -f $dt, $context, $(if ($kv) { " kv $kv" } else { '' }) } else { $dt }
    "quick {0,-14} {1,-5} {2,8:F1} tok/s {3,6:F1}% of SOL  [{4}]" -f $preset, $what, $m.TokensPerSecond, $m.PercentOfSol, $m.KernelSwitches
}
