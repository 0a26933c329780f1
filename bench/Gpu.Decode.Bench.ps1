# Needs: GPU
<#
.SYNOPSIS
    GPU decode figures for bench/RESULTS.md (CUDA issue's first figure; performance issue's bf16 row): measured read
    bandwidth (CudaBandwidth) and Llama-3-8B-shape bf16 decode in the same process, with per-stage times.
.EXAMPLE
    pwsh -NoProfile -File bench/Gpu.Decode.Bench.ps1      # Llama-3-8B, contexts 0,1024,4000,8000, variants, microbenchmarks
#>
param(
    [string] $Preset = 'Llama-3-8B',
    [int[]] $Context = @(0, 1024, 4000, 8000),
    [int] $ContextLength = 8192,          # the Llama-3-8B preset's max_position_embeddings
    [int[]] $StageContext = @(0, 4000, 8000),
    [int] $Steps = 64,
    [int] $Repeat = 5,
    [string] $Out = $env:OUT
)
$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot '../Calm.psd1')
$ct = [Threading.CancellationToken]::None
$info = [Calm.Engine.Cuda.CudaDeviceInfo]::List()[0]
function Stat([double[]] $v) { $s = $v | Sort-Object; [pscustomobject]@{ Median = $s[[int][math]::Floor(($s.Count - 1) / 2)]; Min = $s[0]; Max = $s[-1] } }

$read = [Calm.Engine.Cuda.CudaBandwidth]::Measure([Calm.Engine.Cuda.CudaBandwidthKind]::Read, 4GB, 20, 0, $ct)
$copy = [Calm.Engine.Cuda.CudaBandwidth]::Measure([Calm.Engine.Cuda.CudaBandwidthKind]::Copy, 4GB, 20, 0, $ct)
$lines = [Collections.Generic.List[string]]::new()
$lines.Add("GPU: $($info.Name), driver $($info.DriverVersion), NVRTC $($info.NvrtcVersion), peak (attributes) $($info.PeakBandwidthGBps) GB/s")
$lines.Add(("Read bandwidth (4 GiB, 20 passes): median {0:F0} GB/s, min {1:F0}, max {2:F0} (spread {3:F1}%)" -f $read.MedianGBps, $read.MinGBps, $read.MaxGBps, $read.SpreadPercent))
$lines.Add(("Copy bandwidth (4 GiB, 20 passes, read+write): median {0:F0} GB/s, min {1:F0}, max {2:F0}" -f $copy.MedianGBps, $copy.MinGBps, $copy.MaxGBps))

$sw = [Diagnostics.Stopwatch]::StartNew()
$opt = [Calm.Engine.ImportOptions]@{ Device = [Calm.Engine.DeviceChoice]::Cuda; ContextLength = $ContextLength }
$m = [Calm.Engine.ModelFactory]::CreateSynthetic($Preset, 1, [Calm.Engine.Model.DType]::BF16, $opt, $null, $ct)
$lines.Add(("{0} bf16 made on the GPU in {1:F2} s ({2:N0} weight bytes)" -f $Preset, $sw.Elapsed.TotalSeconds, $m.WeightBytes))
$b = $m.Backend
$c = $m.Config
$b.FillKvCacheForBenchmark($ContextLength, 1)
$perTokWeights = [Calm.Engine.SpeedOfLight.SolModel]::ElementsPerToken($c).Total * 2
$kvPerPos = [Calm.Engine.SpeedOfLight.SolModel]::KvBytesPerPosition($c, 2)
$lines.Add("| context | ms/token (median) | min..max of $Repeat medians | tok/s | GB/s | % of measured read | % of peak |")
$lines.Add("|---|---|---|---|---|---|---|")
foreach ($p in $Context) {
    $meds = foreach ($r in 1..$Repeat) { (Stat $b.TimeDecodeSteps($p, $Steps, 8, $ct)).Median }
    $st = Stat $meds
    $bytes = $perTokWeights + $kvPerPos * ($p + [math]::Floor($Steps / 2) + 1)
    $gbps = $bytes / ($st.Median * 1e6)
    $lines.Add(("| {0} | {1:F4} | {2:F4}..{3:F4} | {4:F1} | {5:F0} | {6:F1}% | {7:F1}% |" -f $p, $st.Median, $st.Min, $st.Max, (1000 / $st.Median), $gbps, (100 * $gbps / $read.MedianGBps), (100 * $gbps / $info.PeakBandwidthGBps)))
}
foreach ($p in $StageContext) {
    $lines.Add("Stages at position ${p}:")
    foreach ($s in $b.ProfileDecodeStages($p, 20, $ct)) {
        $lines.Add(("  {0,-22} {1,8:F4} ms {2,16:N0} B {3,7:F0} GB/s" -f $s.Stage, $s.Ms, $s.Bytes, ($s.Bytes / [math]::Max($s.Ms * 1e6, 1e-9))))
    }
}
$pf = $b.TimePrefill(512, 3, $ct)
$lines.Add(("Prefill 512 tokens ({1}): {0:F1} ms" -f $pf, $(if ($b.UsesBatchedPrefill(512)) { 'batched, tensor-core GEMMs' } else { 'token-by-token graph launches: ' + $b.PrefillFallbackReason })))
$lines.Add("Defaults: programmatic dependent launch $($b.ProgrammaticLaunch); norm fused into matvec $($b.FuseNorm); split attention pipelined (cp.async) $($b.AttentionPipelined); CALM_* set: $((Get-ChildItem env:CALM_* | ForEach-Object Name) -join ',')")
$m.Dispose()
# the same decode with the optimisations switched off one at a time (environment read when the model is made)
$variants = @(
    @{ CALM_PDL = '0'; CALM_MV_DEEP = '0' },   # the first figure's matvec, no PDL (split attention stays)
    @{ CALM_PDL = '0' },
    @{ CALM_MV_DEEP = '8' },
    @{ CALM_FUSE_NORM = '1' }
)
foreach ($variant in $variants) {
    $name = ($variant.GetEnumerator() | Sort-Object Key | ForEach-Object { "$($_.Key)=$($_.Value)" }) -join ' '
    foreach ($e in $variant.GetEnumerator()) { Set-Item "env:$($e.Key)" $e.Value }
    try {
        $m = [Calm.Engine.ModelFactory]::CreateSynthetic($Preset, 1, [Calm.Engine.Model.DType]::BF16, $opt, $null, $ct)
        $b = $m.Backend
        $b.FillKvCacheForBenchmark($ContextLength, 1)
        foreach ($p in @(0, 4000, 8000)) {
            $meds = foreach ($r in 1..3) { (Stat $b.TimeDecodeSteps($p, $Steps, 8, $ct)).Median }
            $st = Stat $meds
            $bytes = $perTokWeights + $kvPerPos * ($p + [math]::Floor($Steps / 2) + 1)
            $gbps = $bytes / ($st.Median * 1e6)
            $lines.Add(("{5}: context {0}: {1:F4} ms/token ({2:F4}..{3:F4}), {4:F1}% of read" -f $p, $st.Median, $st.Min, $st.Max, (100 * $gbps / $read.MedianGBps), $name))
        }
        $m.Dispose()
    } finally { foreach ($e in $variant.GetEnumerator()) { Remove-Item "env:$($e.Key)" } }
}
foreach ($shape in @(@(4096, 4096), @(14336, 4096), @(4096, 14336), @(128256, 4096))) {
    foreach ($v in @(@($true, 16), @($false, 0), @($true, 8))) {
        $t = [Calm.Engine.Cuda.CudaMicrobench]::Matvec($shape[0], $shape[1], [Calm.Engine.Model.DType]::BF16, 20, 0, $ct, $v[0], $v[1])
        $lines.Add(("matvec {0}x{1} bf16 (pdl {5}, deep {6}): {2:F2} us, {3:F0} GB/s ({4:F1}% of read)" -f $shape[0], $shape[1], ($t.MedianMs * 1000), $t.MedianGBps, (100 * $t.MedianGBps / $read.MedianGBps), $v[0], $v[1]))
    }
}
foreach ($ctx in @(1024, 4096, 32768)) {
    foreach ($v in @(@($false, 2, $false), @($true, 2, $false), @($true, 1, $false), @($true, 2, $true))) {
        if (-not $v[0] -and $ctx -gt 4096) { continue }   # the single-block kernel: 4 ms at 32768, known
        $t = [Calm.Engine.Cuda.CudaMicrobench]::Attention($ctx, 32, 8, 128, 20, 0, $ct, $v[0], $v[1], $v[2])
        $lines.Add(("attention {5} ctx {0} 32/8 heads x128: {1:F2} us, {2:F0} GB/s ({3:F1}% of read){4}" -f $ctx, ($t.MedianMs * 1000), $t.MedianGBps, (100 * $t.MedianGBps / $read.MedianGBps),
            $(if ($v[0]) { " [$($v[1]) blocks/SM]" } else { '' }), $t.Kernel))
    }
}
$lines | ForEach-Object { Write-Host $_ }
if ($Out) { $lines | Set-Content (Join-Path $Out 'gpu-bench.txt') }
