#!/usr/bin/env pwsh
# Needs: GPU. Why one preset/dtype decodes at different speeds at context 0 depending on how the measurement sizes the
# model (ninth session: Llama-3-8B int4 500.5 tok/s with -Context 0 and 475.4 with -Context 0,4096 -PromptTokens 512,
# the Issue6 form, in one process at 1980 MHz throughout; fp8 showed no such gap). Measures context 0 in four forms,
# each with -Breakdown so the stage that moves shows: (a) sized for the run alone, (b) KV cache for 4096 more positions
# without a prompt, (c) a 512-token prefill first without the larger cache beyond the prompt, (d) the Issue6 form; then
# (a) again. One line per form and the stages of each to the output.
param([string] $Preset = 'Llama-3-8B', [string] $DType = 'int4', [int] $Tokens = 32, [int] $Repeat = 3)
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
Import-Module (Join-Path (Split-Path $PSScriptRoot -Parent) 'Calm.psd1')
$bw = Measure-CalmBandwidth -Device Cuda -Kind Read | Select-Object -First 1
"harness read bandwidth {0:F1} GB/s" -f $bw.MedianGBps
$forms = [ordered]@{
    'a: -Context 0'                         = @{ Context = 0 }
    'b: -Context 0,4096'                    = @{ Context = 0, 4096 }
    'c: -Context 0 -PromptTokens 512'       = @{ Context = 0; PromptTokens = 512 }
    'd: -Context 0,4096 -PromptTokens 512'  = @{ Context = 0, 4096; PromptTokens = 512 }
    'a again'                               = @{ Context = 0 }
}
foreach ($name in $forms.Keys) {
    $p = $forms[$name]
    $out = @(Measure-CalmSpeedOfLight -Preset $Preset -DType $DType -Device Cuda -Tokens $Tokens -Repeat $Repeat -Breakdown @p)
    $d = $out | Where-Object { $_ -is [Calm.Engine.SpeedOfLight.SolMeasurement] -and $_.Phase -eq 'Decode' -and $_.Context -eq 0 } | Select-Object -First 1
    "harness {0,-38} {1,8:F1} tok/s sd {2,5:F2} {3,5:F1}% of SOL" -f $name, $d.TokensPerSecond, $d.StdDev, $d.PercentOfSol
    $out | Where-Object { $_ -is [Calm.Engine.SpeedOfLight.SolStageMeasurement] -and $_.Context -eq 0 } |
        ForEach-Object { "harness   {0,-22} {1,8:F3} ms {2,6:F1}% of its limit" -f $_.Stage, $_.Ms, $_.PercentOfLimit }
}
