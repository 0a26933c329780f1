# Needs: GPU
<#
.SYNOPSIS
    Prefill figures for bench/RESULTS.md (performance issue's prefill row): time to first token of 128/512/1024-token
    prompts on the Llama-3-8B shape in bf16 through the batched path, with the defaults and with every selectable
    variant (environment variables read when a backend makes its prefill kernels); the GPU time of each stage of a
    512-token prefill per variant; and each GEMM shape of a layer alone (TFLOP/s) for every GEMM variant, tile height
    and k depth, on random (not zero) operands.
.EXAMPLE
    pwsh -NoProfile -File bench/Gpu.Prefill.Bench.ps1      # writes $OUT/prefill.txt
.EXAMPLE
    pwsh -NoProfile -File bench/Gpu.Prefill.Bench.ps1 -Variants defaults, gemm-v2 -PromptTokens 512 -SkipTokenByToken
#>
param(
    [string] $Preset = 'Llama-3-8B',
    # lengths; a comma list through pwsh -File arrives as one string ("128,512"), which [int[]] would read as 128512
    [string[]] $PromptTokens = @('128', '512', '1024'),
    [int] $ContextLength = 2048,
    [int] $Repeat = 5,
    [string[]] $Variants,
    [switch] $SkipTokenByToken,
    [switch] $SkipGemmTable,
    [ValidateSet('bf16', 'fp8', 'int4')] [string] $WeightDType = 'bf16',
    [string] $Out = $env:OUT
)
$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot '../Calm.psd1')
$ct = [Threading.CancellationToken]::None
$info = [Calm.Engine.Cuda.CudaDeviceInfo]::List()[0]
$lines = [Collections.Generic.List[string]]::new()
function Say([string] $s) { Write-Host $s; $lines.Add($s) }
Say "GPU: $($info.Name), driver $($info.DriverVersion), NVRTC $($info.NvrtcVersion), $($info.Multiprocessors) SMs"

# name -> environment (CALM_GEMM_K 32|64, CALM_GEMM_TILE auto|auto2|64|128, CALM_GEMM_VARIANT 1|2|3|4|5, CALM_GEMM_V4N /
# CALM_GEMM_WN 128|192|256 (variant 4's / 5's column tile; unset: per shape), CALM_PREFILL_ATT 1|2, CALM_PREFILL_FUSE 0|1,
# CALM_PREFILL_ROWS 0|1)
$all = [ordered]@{
    'defaults'              = @{}
    'old-defaults'          = @{ CALM_GEMM_VARIANT = '1'; CALM_GEMM_K = '32'; CALM_GEMM_TILE = 'auto2'; CALM_PREFILL_ATT = '1'; CALM_PREFILL_FUSE = '0' }   # 2026-11-26: 59.2 ms
    'old-k64'               = @{ CALM_GEMM_VARIANT = '1'; CALM_GEMM_TILE = 'auto2'; CALM_PREFILL_ATT = '1'; CALM_PREFILL_FUSE = '0' }                       # 2026-11-26: 53.1 ms
    'fp32-attention'        = @{ CALM_PREFILL_ATT = '1' }
    'unfused-act'           = @{ CALM_PREFILL_FUSE = '0' }
    'old-row-kernels'       = @{ CALM_PREFILL_ROWS = '0' }   # rmsnorm_rows / qkv_rope_rows: one block per row / per (head, row)
    'tile-128'              = @{ CALM_GEMM_TILE = '128' }
    'gemm-v1'               = @{ CALM_GEMM_VARIANT = '1' }   # 2026-11-29: 39.6 ms (the default before variants 2 and 4)
    'gemm-v2'               = @{ CALM_GEMM_VARIANT = '2' }   # 2026-11-29: 31.9 ms
    'gemm-v3'               = @{ CALM_GEMM_VARIANT = '3' }
    'gemm-v2-tile-128'      = @{ CALM_GEMM_VARIANT = '2'; CALM_GEMM_TILE = '128' }
    'gemm-v4'               = @{ CALM_GEMM_VARIANT = '4' }                                                                       # column tile picked per shape
    'gemm-v4-n128'          = @{ CALM_GEMM_VARIANT = '4'; CALM_GEMM_V4N = '128' }
    'gemm-v4-n192'          = @{ CALM_GEMM_VARIANT = '4'; CALM_GEMM_V4N = '192' }
    'gemm-v4-n256'          = @{ CALM_GEMM_VARIANT = '4'; CALM_GEMM_V4N = '256' }
    'gemm-v5'               = @{ CALM_GEMM_VARIANT = '5' }   # wgmma (sm_90a); the default where it runs
    'gemm-v5-n128'          = @{ CALM_GEMM_VARIANT = '5'; CALM_GEMM_WN = '128' }
    'gemm-v5-n192'          = @{ CALM_GEMM_VARIANT = '5'; CALM_GEMM_WN = '192' }
    'gemm-v5-n256'          = @{ CALM_GEMM_VARIANT = '5'; CALM_GEMM_WN = '256' }
}
$Variants = @($Variants | ForEach-Object { $_ -split "," } | Where-Object { $_ })   # pwsh -File passes one comma-joined string
[int[]] $PromptTokens = @($PromptTokens | ForEach-Object { $_ -split ',' } | Where-Object { $_.Trim() } | ForEach-Object { [int]::Parse($_.Trim(), [Globalization.CultureInfo]::InvariantCulture) })
if (-not $Variants) { $Variants = @($all.Keys) }
$envNames = 'CALM_GEMM_K', 'CALM_GEMM_TILE', 'CALM_GEMM_VARIANT', 'CALM_GEMM_V4N', 'CALM_GEMM_WN', 'CALM_PREFILL_ATT', 'CALM_PREFILL_FUSE', 'CALM_PREFILL_ROWS'
$opt = [Calm.Engine.ImportOptions]@{ Device = [Calm.Engine.DeviceChoice]::Cuda; ContextLength = $ContextLength }
$ttft = [Collections.Generic.List[string]]::new()
$stageRows = [Collections.Generic.List[object]]::new()
$c = $null
foreach ($v in $Variants) {
    if (-not $all.Contains($v)) { throw "unknown variant '$v' (one of: $($all.Keys -join ', '))" }
    foreach ($n in $envNames) { Remove-Item "env:$n" -ErrorAction Ignore }
    foreach ($kv in $all[$v].GetEnumerator()) { Set-Item "env:$($kv.Key)" $kv.Value }
    $wdt = @{ bf16 = [Calm.Engine.Model.DType]::BF16; fp8 = [Calm.Engine.Model.DType]::F8E4M3; int4 = [Calm.Engine.Model.DType]::Int4 }[$WeightDType]
    $m = [Calm.Engine.ModelFactory]::CreateSynthetic($Preset, 1, $wdt, $opt, $null, $ct)
    try {
        $b = $m.Backend
        $c = $m.Config
        if ($b.PrefillFallbackReason) { Say "$v : batched prefill not taken: $($b.PrefillFallbackReason)"; continue }
        $flopPerTok = 2.0 * [Calm.Engine.SpeedOfLight.SolModel]::ElementsPerToken($c).Total
        $b.BatchedPrefill = $true
        $cells = foreach ($p in $PromptTokens) {
            if ($p -gt $ContextLength) { continue }
            $null = $b.TimePrefill($p, 1, $ct)   # warm-up (kernel load, scratch)
            $ms = $b.TimePrefill($p, $Repeat, $ct)
            '{0:F2} ms ({1:F0} TFLOP/s)' -f $ms, ($flopPerTok * $p / ($ms * 1e9))
        }
        $envText = ($all[$v].GetEnumerator() | Sort-Object Key | ForEach-Object { "$($_.Key)=$($_.Value)" }) -join ' '
        $ttft.Add("| $v | $(if ($envText) { $envText } else { '(none)' }) | $($cells -join ' | ') |")
        $prof = $b.ProfileBatchedPrefill(512, $ct)
        if ($prof) { $stageRows.Add([pscustomobject]@{ Variant = $v; Stages = $prof }) }
        if ($v -eq 'defaults' -and -not $SkipTokenByToken) {
            $b.BatchedPrefill = $false
            Say ("Prefill 512 tokens, token by token (graph launches): {0:F1} ms" -f $b.TimePrefill(512, 1, $ct))
        }
    } finally { $m.Dispose() }
}
foreach ($n in $envNames) { Remove-Item "env:$n" -ErrorAction Ignore }

Say ""
Say "Time to first token, $Preset $WeightDType, batched prefill (median of $Repeat; TFLOP/s over the weight matmuls):"
Say "| variant | environment | $(($PromptTokens | ForEach-Object { "$_ tokens" }) -join ' | ') |"
Say "|---|---|$(($PromptTokens | ForEach-Object { '---' }) -join '|')|"
$ttft | ForEach-Object { Say $_ }

if ($stageRows.Count) {
    $stages = 'token copy + embed', 'norm', 'gemm qkv', 'rope + kv write', 'attention', 'gemm o', 'gemm gate_up', 'gate act', 'gemm gate_up + act', 'gemm down', 'classifier'
    Say ""
    Say "GPU ms per stage of one 512-token prefill (all layers; an event between launches):"
    Say "| variant | $($stages -join ' | ') | sum |"
    Say "|---|$(($stages | ForEach-Object { '---' }) -join '|')|---|"
    foreach ($r in $stageRows) {
        $vals = foreach ($st in $stages) { '{0:F2}' -f ($(if ($r.Stages.ContainsKey($st)) { $r.Stages[$st] } else { 0 })) }
        $sum = 0.0; foreach ($x in $r.Stages.Values) { $sum += $x }
        Say "| $($r.Variant) | $($vals -join ' | ') | $('{0:F2}' -f $sum) |"
    }
}

if (-not $SkipGemmTable -and $c) {
    # each GEMM of a layer alone: X [T, K] f16 . W [N, K]^T bf16, random operands (zeros flatter the tensor cores' power)
    $ctx = [Calm.Engine.Cuda.CudaContext]::Acquire(0)
    $pk = [Calm.Engine.Cuda.CudaPrefillKernels]::new($ctx, $info.Arch, $null, $null)
    $kk = [Calm.Engine.Cuda.CudaKernels]::new($ctx, $info.Arch, $null, 2, $null, $null, $null)
    $s = [Calm.Engine.Cuda.CudaStream]::new($ctx)
    $D = $c.HiddenSize; $F = $c.IntermediateSize; $QKV = $c.QDim + 2 * $c.KvDim
    $shapes = @(@('qkv', $QKV, $D), @('o', $D, $c.QDim), @('gate_up', (2 * $F), $D), @('down', $D, $F))
    $T = 512
    $xn = [long]$T * [math]::Max($D, $F); $wn = [long]2 * $F * $D
    $X = [Calm.Engine.Cuda.CudaDeviceMemory]::Allocate($ctx, $xn * 2, 'x')
    $W = [Calm.Engine.Cuda.CudaDeviceMemory]::Allocate($ctx, $wn * 2, 'w')
    $Y = [Calm.Engine.Cuda.CudaDeviceMemory]::Allocate($ctx, [long]$T * 2 * $F * 4, 'y'); $Y.Zero()
    $kk.FillSynthetic($s, $X.Ptr, $xn, 11, 1.0, 0.0, [Calm.Engine.Model.DType]::F16, $false)
    $kk.FillSynthetic($s, $W.Ptr, $wn, 12, 0.02, 0.0, [Calm.Engine.Model.DType]::BF16, $false)
    $e0 = [Calm.Engine.Cuda.CudaEvent]::new($ctx); $e1 = [Calm.Engine.Cuda.CudaEvent]::new($ctx)
    # (variant, tile rows, k depth, variant 4's column tile: 0 = picked per shape)
    $combos = @(@(1, 64, 32, 0), @(1, 64, 64, 0), @(1, 128, 32, 0), @(1, 128, 64, 0), @(2, 64, 64, 0), @(2, 128, 64, 0), @(3, 64, 64, 0), @(3, 128, 64, 0),
                @(4, 128, 64, 128), @(4, 128, 64, 192), @(4, 128, 64, 256))
    if ($pk.WgmmaAvailable) { $combos += @(@(5, 128, 64, 128), @(5, 128, 64, 192), @(5, 128, 64, 256)) }
    $H = [Calm.Engine.Cuda.CudaDeviceMemory]::Allocate($ctx, [long]$T * $F * 2, 'h')
    Say ""
    Say "| GEMM (T=$T) | N | K | variant | tile rows (x cols) | k depth | ms | TFLOP/s |"
    Say "|---|---|---|---|---|---|---|---|"
    foreach ($sh in $shapes) {
        foreach ($cb in $combos) {
            $var, $tile, $depth, $cols = $cb
            $pk.Gemm($s, [Calm.Engine.Model.DType]::BF16, $X.Ptr, $W.Ptr, $Y.Ptr, 0, $T, $sh[1], $sh[2], $false, $tile, $depth, $var, $cols)
            $e0.Record($s)
            for ($i = 0; $i -lt 20; $i++) { $pk.Gemm($s, [Calm.Engine.Model.DType]::BF16, $X.Ptr, $W.Ptr, $Y.Ptr, 0, $T, $sh[1], $sh[2], $false, $tile, $depth, $var, $cols) }
            $e1.Record($s); $e1.Synchronize()
            $ms = $e1.ElapsedSince($e0) / 20
            if ($var -ge 4) {
                $tileText = "128 x $cols"
                $picked = if ($var -eq 4) { $pk.Gemm4TileCols($T, $sh[1], $false) } else { $pk.GemmWTileCols($T, $sh[1], $false) }
                $pick = if ($picked -eq $cols) { ' (picked)' } else { '' }
            } else {
                $tileText = "$tile"
                $pick = if ($pk.GemmTileRows($T, $sh[1]) -eq $tile) { ' (picked)' } else { '' }
            }
            Say ("| {0} | {1} | {2} | {3} | {4}{5} | {6} | {7:F3} | {8:F0} |" -f $sh[0], $sh[1], $sh[2], $var, $tileText, $pick, $depth, $ms, (2.0 * $T * $sh[1] * $sh[2] / ($ms * 1e9)))
            if ($sh[0] -eq 'gate_up' -and $depth -eq 64) {   # the same product with the activation fused (bf16 out)
                $act = [Calm.Engine.Model.Activation]::Silu; $bf = [Calm.Engine.Model.DType]::BF16
                $pk.GemmGated($s, $bf, $X.Ptr, $W.Ptr, $H.Ptr, 0, $T, $F, $sh[2], $act, $bf, $tile, $var, $cols)
                $e0.Record($s)
                for ($i = 0; $i -lt 20; $i++) { $pk.GemmGated($s, $bf, $X.Ptr, $W.Ptr, $H.Ptr, 0, $T, $F, $sh[2], $act, $bf, $tile, $var, $cols) }
                $e1.Record($s); $e1.Synchronize()
                $ms = $e1.ElapsedSince($e0) / 20
                $pick = if (($var -eq 4 -and $pk.Gemm4TileCols($T, $F, $true) -eq $cols) -or ($var -eq 5 -and $pk.GemmWTileCols($T, $F, $true) -eq $cols)) { ' (picked)' } else { '' }
                Say ("| gate_up + act | {0} | {1} | {2} | {3}{4} | 64 | {5:F3} | {6:F0} |" -f $sh[1], $sh[2], $var, $tileText, $pick, $ms, (2.0 * $T * $sh[1] * $sh[2] / ($ms * 1e9)))
            }
        }
    }
    $H.Dispose()
    $e0.Dispose(); $e1.Dispose(); $X.Dispose(); $W.Dispose(); $Y.Dispose(); $s.Dispose(); $kk.Dispose(); $pk.Dispose(); $ctx.Dispose()
}
if ($Out) { New-Item -ItemType Directory -Force $Out | Out-Null; $lines | Set-Content (Join-Path $Out $(if ($WeightDType -eq 'bf16') { 'prefill.txt' } else { "prefill-$WeightDType.txt" })) }
