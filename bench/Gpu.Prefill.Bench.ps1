# Needs: GPU
<#
.SYNOPSIS
    Prefill figures for bench/RESULTS.md (performance issue's prefill row): time to first token of a 512-token prompt on
    the Llama-3-8B shape in bf16 through the batched path (tensor-core GEMMs + prefill attention), the per-token path
    for comparison, and each GEMM shape of a layer alone (TFLOP/s) with both tile heights.
.EXAMPLE
    pwsh -NoProfile -File bench/Gpu.Prefill.Bench.ps1      # writes $OUT/prefill.txt
#>
param(
    [string] $Preset = 'Llama-3-8B',
    [int[]] $PromptTokens = @(128, 512, 1024),
    [int] $ContextLength = 2048,
    [int] $Repeat = 5,
    [string] $Out = $env:OUT
)
$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot '../Calm.psd1')
$ct = [Threading.CancellationToken]::None
$info = [Calm.Engine.Cuda.CudaDeviceInfo]::List()[0]
$lines = [Collections.Generic.List[string]]::new()
$lines.Add("GPU: $($info.Name), driver $($info.DriverVersion), NVRTC $($info.NvrtcVersion), $($info.Multiprocessors) SMs")

$opt = [Calm.Engine.ImportOptions]@{ Device = [Calm.Engine.DeviceChoice]::Cuda; ContextLength = $ContextLength }
foreach ($depth in 32, 64) {
    $env:CALM_GEMM_K = "$depth"   # read when the backend makes its prefill kernels (first batched prefill)
    $m = [Calm.Engine.ModelFactory]::CreateSynthetic($Preset, 1, [Calm.Engine.Model.DType]::BF16, $opt, $null, $ct)
    $b = $m.Backend
    $c = $m.Config
    $lines.Add("$Preset bf16, GEMM k depth $depth; batched prefill: $(if ($b.PrefillFallbackReason) { 'no: ' + $b.PrefillFallbackReason } else { 'yes' })")
    $flopPerTok = 2.0 * [Calm.Engine.SpeedOfLight.SolModel]::ElementsPerToken($c).Total
    foreach ($p in $PromptTokens) {
        if ($p -gt $ContextLength) { continue }
        $b.BatchedPrefill = $true
        $null = $b.TimePrefill($p, 1, $ct)   # warm-up (kernel load, scratch)
        $ms = $b.TimePrefill($p, $Repeat, $ct)
        $lines.Add(("Prefill {0} tokens, batched (k depth {4}): {1:F2} ms median of {2} ({3:F0} TFLOP/s over the weight matmuls)" -f $p, $ms, $Repeat, ($flopPerTok * $p / ($ms * 1e9)), $depth))
    }
    if ($depth -eq 32) {
        $b.BatchedPrefill = $false
        $lines.Add(("Prefill 512 tokens, token by token (graph launches): {0:F1} ms" -f $b.TimePrefill(512, 1, $ct)))
    }
    $m.Dispose()
}
Remove-Item env:CALM_GEMM_K

# each GEMM of a layer alone: X [T, K] . W [N, K]^T, bf16, both tile heights
$ctx = [Calm.Engine.Cuda.CudaContext]::Acquire(0)
$pk = [Calm.Engine.Cuda.CudaPrefillKernels]::new($ctx, $info.Arch, $null, $null)
$s = [Calm.Engine.Cuda.CudaStream]::new($ctx)
$D = $c.HiddenSize; $F = $c.IntermediateSize; $QKV = $c.QDim + 2 * $c.KvDim
$shapes = @(@('qkv', $QKV, $D), @('o', $D, $c.QDim), @('gate_up', (2 * $F), $D), @('down', $D, $F))
$T = 512
$X = [Calm.Engine.Cuda.CudaDeviceMemory]::Allocate($ctx, [long]$T * [math]::Max($D, $F) * 2, 'x'); $X.Zero()
$W = [Calm.Engine.Cuda.CudaDeviceMemory]::Allocate($ctx, [long]2 * $F * $D * 2, 'w'); $W.Zero()
$Y = [Calm.Engine.Cuda.CudaDeviceMemory]::Allocate($ctx, [long]$T * 2 * $F * 4, 'y'); $Y.Zero()
$e0 = [Calm.Engine.Cuda.CudaEvent]::new($ctx); $e1 = [Calm.Engine.Cuda.CudaEvent]::new($ctx)
$lines.Add("| GEMM (T=$T) | N | K | tile rows | k depth | ms | TFLOP/s |")
$lines.Add("|---|---|---|---|---|---|---|")
foreach ($sh in $shapes) {
    foreach ($tile in 64, 128) {
        foreach ($depth in 32, 64) {
            $pk.Gemm($s, [Calm.Engine.Model.DType]::BF16, $X.Ptr, $W.Ptr, $Y.Ptr, 0, $T, $sh[1], $sh[2], $false, $tile, $depth)
            $e0.Record($s)
            for ($i = 0; $i -lt 20; $i++) { $pk.Gemm($s, [Calm.Engine.Model.DType]::BF16, $X.Ptr, $W.Ptr, $Y.Ptr, 0, $T, $sh[1], $sh[2], $false, $tile, $depth) }
            $e1.Record($s); $e1.Synchronize()
            $ms = $e1.ElapsedSince($e0) / 20
            $pick = if ($pk.GemmTileRows($T, $sh[1]) -eq $tile) { ' (picked)' } else { '' }
            $lines.Add(("| {0} | {1} | {2} | {3}{4} | {5} | {6:F3} | {7:F0} |" -f $sh[0], $sh[1], $sh[2], $tile, $pick, $depth, $ms, (2.0 * $T * $sh[1] * $sh[2] / ($ms * 1e9))))
        }
    }
}
$e0.Dispose(); $e1.Dispose(); $X.Dispose(); $W.Dispose(); $Y.Dispose(); $s.Dispose(); $pk.Dispose(); $ctx.Dispose()
$lines | ForEach-Object { Write-Host $_ }
if ($Out) { New-Item -ItemType Directory -Force $Out | Out-Null; $lines | Set-Content (Join-Path $Out 'prefill.txt') }
