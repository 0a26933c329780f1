# Needs: GPU
<#
.SYNOPSIS
    Split decode attention over an fp8 KV cache: the tensor-core kernel (CudaKernels.AttentionFp8Wide, the default)
    against the 8-per-lane fp8 kernel (CALM_ATT_FP8_WIDE=0) and the fp16 KV kernel, on the Llama-3-8B shape
    (32/8 heads x 128) at context 32768 by default, each with every L2 prefetch distance of -Prefetch
    (CudaKernels.AttentionPrefetch). Each figure: CUDA events around a captured graph of calls over
    rotating copies of the cache (4x the L2), median of -Repeat graph launches per round, the kernels interleaved for
    -Rounds rounds and the median taken over all; GB/s of the bytes one call must read (fp8: K + V + row scales) and %
    of the read bandwidth measured first in the same process.
.EXAMPLE
    pwsh -NoProfile -File bench/AttentionFp8.Bench.ps1
.EXAMPLE
    pwsh -NoProfile -File bench/AttentionFp8.Bench.ps1 -Context 4096,8192,32768 -Rounds 5 -Out $OUT
.EXAMPLE
    pwsh -NoProfile -File bench/AttentionFp8.Bench.ps1 -Prefetch 0,1,2,4 -SkipEightPerLane
#>
param(
    [string[]] $Context = @('32768'),
    [int] $Heads = 32,
    [int] $KvHeads = 8,
    [int] $HeadDim = 128,
    [int] $Repeat = 20,
    [int] $Rounds = 3,
    # L2 prefetch distances to compare (CudaKernels.AttentionPrefetch: steps ahead, 0 = none); each kernel runs with each
    [string[]] $Prefetch = @('0'),
    [switch] $SkipEightPerLane,
    [string] $Out = $env:OUT
)
$ErrorActionPreference = 'Stop'
# comma lists arrive as one string through `pwsh -File`
function ConvertTo-IntList([string[]] $s) { @($s | ForEach-Object { $_ -split ',' } | Where-Object { $_.Trim() } | ForEach-Object { [int]::Parse($_.Trim(), [Globalization.CultureInfo]::InvariantCulture) }) }
[int[]] $Context = ConvertTo-IntList $Context
[int[]] $Prefetch = ConvertTo-IntList $Prefetch
Import-Module (Join-Path $PSScriptRoot '../Calm.psd1')
$ct = [Threading.CancellationToken]::None
$info = [Calm.Engine.Cuda.CudaDeviceInfo]::List()[0]
$lines = [Collections.Generic.List[string]]::new()
function Say([string] $s) { $lines.Add($s); Write-Host $s }
$read = [Calm.Engine.Cuda.CudaBandwidth]::Measure([Calm.Engine.Cuda.CudaBandwidthKind]::Read, 4GB, 20, 0, $ct)
Say "GPU: $($info.Name) (sm_$($info.Arch)), driver $($info.DriverVersion), NVRTC $($info.NvrtcVersion); read bandwidth (4 GiB, 20 passes) median $([math]::Round($read.MedianGBps)) GB/s"
Say "attention shape: heads $Heads / kv heads $KvHeads, head_dim $HeadDim; $Rounds rounds x $Repeat timed launches each; CALM_* set: $((Get-ChildItem env:CALM_* -ErrorAction Ignore | ForEach-Object Name) -join ',')"
Say '| context | kernel | µs (median) | min..max µs | MB read | GB/s | % of read |'
Say '|---|---|---|---|---|---|---|'
$kernels = [ordered]@{}
foreach ($pf in $Prefetch) {
    # GetNewClosure: each entry keeps its own prefetch distance
    $kernels["fp16 KV (split), prefetch $pf"] = { param($c) [Calm.Engine.Cuda.CudaMicrobench]::Attention($c, $Heads, $KvHeads, $HeadDim, $Repeat, 0, $ct, $true, 2, $false, $pf) }.GetNewClosure()
    if (-not $SkipEightPerLane) {
        $kernels["fp8 KV, 8 per lane, prefetch $pf"] = { param($c) [Calm.Engine.Cuda.CudaMicrobench]::AttentionFp8($c, $Heads, $KvHeads, $HeadDim, $Repeat, 0, $ct, $false, $pf) }.GetNewClosure()
    }
    $kernels["fp8 KV, tensor cores, prefetch $pf"] = { param($c) [Calm.Engine.Cuda.CudaMicrobench]::AttentionFp8($c, $Heads, $KvHeads, $HeadDim, $Repeat, 0, $ct, $true, $pf) }.GetNewClosure()
}
foreach ($c in $Context) {
    $ms = @{}; $bytes = @{}
    foreach ($k in $kernels.Keys) { $ms[$k] = [Collections.Generic.List[double]]::new() }
    foreach ($r in 1..$Rounds) {
        foreach ($k in $kernels.Keys) {
            $t = & $kernels[$k] $c
            $ms[$k].AddRange([double[]]$t.Ms)
            $bytes[$k] = $t.Bytes
        }
    }
    foreach ($k in $kernels.Keys) {
        $s = $ms[$k] | Sort-Object
        $med = $s[[int][math]::Floor(($s.Count - 1) / 2)]
        $gbps = $bytes[$k] / ($med * 1e-3) / 1e9
        Say ("| {0} | {1} | {2:F2} | {3:F2}..{4:F2} | {5:F1} | {6:F0} | {7:F1}% |" -f $c, $k, ($med * 1e3), ($s[0] * 1e3), ($s[-1] * 1e3), ($bytes[$k] / 1e6), $gbps, (100 * $gbps / $read.MedianGBps))
    }
}
if ($Out) {
    New-Item -ItemType Directory -Force $Out | Out-Null
    $file = Join-Path $Out ("AttentionFp8.Bench-{0:yyyy-MM-dd-HHmm}.txt" -f (Get-Date))
    $lines | Set-Content $file
    Write-Host "written: $file"
}
