# Needs: GPU
<#
.SYNOPSIS
    Split decode attention over an fp8 KV cache: the tensor-core kernel (CudaKernels.AttentionFp8Wide,
    CALM_ATT_FP8_WIDE=1) against the 8-per-lane fp8 kernel (the default) and the fp16 KV kernel, on the Llama-3-8B shape
    (32/8 heads x 128) at context 32768 by default. Each figure: CUDA events around a captured graph of calls over
    rotating copies of the cache (4x the L2), median of -Repeat graph launches per round, the kernels interleaved for
    -Rounds rounds and the median taken over all; GB/s of the bytes one call must read (fp8: K + V + row scales) and %
    of the read bandwidth measured first in the same process.
.EXAMPLE
    pwsh -NoProfile -File bench/AttentionFp8.Bench.ps1
.EXAMPLE
    pwsh -NoProfile -File bench/AttentionFp8.Bench.ps1 -Context 4096,8192,32768 -Rounds 5 -Out $OUT
#>
param(
    [int[]] $Context = @(32768),
    [int] $Heads = 32,
    [int] $KvHeads = 8,
    [int] $HeadDim = 128,
    [int] $Repeat = 20,
    [int] $Rounds = 3,
    [string] $Out = $env:OUT
)
$ErrorActionPreference = 'Stop'
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
$kernels = [ordered]@{
    'fp16 KV (split)'                  = { param($c) [Calm.Engine.Cuda.CudaMicrobench]::Attention($c, $Heads, $KvHeads, $HeadDim, $Repeat, 0, $ct, $true, 2, $false) }
    'fp8 KV, 8 per lane (default)'     = { param($c) [Calm.Engine.Cuda.CudaMicrobench]::AttentionFp8($c, $Heads, $KvHeads, $HeadDim, $Repeat, 0, $ct, $false) }
    'fp8 KV, tensor cores (FP8_WIDE)'  = { param($c) [Calm.Engine.Cuda.CudaMicrobench]::AttentionFp8($c, $Heads, $KvHeads, $HeadDim, $Repeat, 0, $ct, $true) }
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
