# Needs: GPU
<#
.SYNOPSIS
    Decode with the persistent kernel vs the per-kernel graph on the same model in the same process, against the read
    bandwidth measured first: Llama-3-8B bf16/fp8/int4, Llama-3.2-1B bf16, Llama-3.1-8B at 32k; the persistent
    kernel's in-kernel stage profile.
.EXAMPLE
    pwsh -NoProfile -File bench/Persistent.Bench.ps1 -Out $OUT
#>
param(
    [string] $Out = $env:OUT,
    [int] $Steps = 32,
    [int] $Repeat = 3,
    [string[]] $Only
)
$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot '../Calm.psd1')
$ct = [Threading.CancellationToken]::None
$info = [Calm.Engine.Cuda.CudaDeviceInfo]::List()[0]
function Stat([double[]] $v) { $s = $v | Sort-Object; [pscustomobject]@{ Median = $s[[int][math]::Floor(($s.Count - 1) / 2)]; Min = $s[0]; Max = $s[-1] } }
$read = [Calm.Engine.Cuda.CudaBandwidth]::Measure([Calm.Engine.Cuda.CudaBandwidthKind]::Read, 4GB, 20, 0, $ct)
$lines = [Collections.Generic.List[string]]::new()
function Say([string] $s) { $lines.Add($s); Write-Host $s }
Say "GPU: $($info.Name), driver $($info.DriverVersion), NVRTC $($info.NvrtcVersion); read bandwidth (4 GiB, 20 passes) median $([math]::Round($read.MedianGBps)) GB/s (min $([math]::Round($read.MinGBps)), max $([math]::Round($read.MaxGBps)))"
$rows = [Collections.Generic.List[object]]::new()
$runs = @(
    @{ Name = '8B-bf16'; Preset = 'Llama-3-8B'; DType = 'BF16'; Context = @(0, 1024, 4000); Len = 8192 }
    @{ Name = '1B-bf16'; Preset = 'Llama-3.2-1B'; DType = 'BF16'; Context = @(0, 4000); Len = 8192 }
    @{ Name = '8B-fp8'; Preset = 'Llama-3-8B'; DType = 'F8E4M3'; Context = @(0, 4000); Len = 8192 }
    @{ Name = '8B-int4'; Preset = 'Llama-3-8B'; DType = 'Int4'; Context = @(0, 4000); Len = 8192 }
    @{ Name = '8B-32k'; Preset = 'Llama-3.1-8B'; DType = 'BF16'; Context = @(32768); Len = 32768 + 64 }
)
$env:CALM_DECODE = 'persistent'
foreach ($r in $runs) {
    if ($Only -and $r.Name -notin $Only) { continue }
    try {
        $sw = [Diagnostics.Stopwatch]::StartNew()
        $opt = [Calm.Engine.ImportOptions]@{ Device = [Calm.Engine.DeviceChoice]::Cuda; ContextLength = $r.Len }
        $m = [Calm.Engine.ModelFactory]::CreateSynthetic($r.Preset, 1, [Calm.Engine.Model.DType]$r.DType, $opt, $null, $ct)
        $b = $m.Backend
        $c = $m.Config
        Say ("{0}: made in {1:F1} s; decode mode {2}{3}" -f $r.Name, $sw.Elapsed.TotalSeconds, $b.DecodeMode, $(if ($b.PersistentUnavailableReason) { " ($($b.PersistentUnavailableReason))" } else { '' }))
        $b.FillKvCacheForBenchmark($r.Len, 1)
        $dt = switch ($r.DType) { 'BF16' { 'bf16' } 'F8E4M3' { 'fp8' } 'Int4' { 'int4' } }
        foreach ($mode in 'persistent', 'graph') {
            if ($mode -eq 'persistent' -and $b.DecodeMode -ne 'persistent') { continue }
            $b.PersistentEnabled = $mode -eq 'persistent'
            foreach ($p in $r.Context) {
                $meds = foreach ($i in 1..$Repeat) { (Stat $b.TimeDecodeSteps($p, $Steps, 8, $ct)).Median }
                $st = Stat $meds
                $sol = [Calm.Engine.SpeedOfLight.SolModel]::Compute($r.Preset, $c, $dt, 'f16', $p + [math]::Floor($Steps / 2), $read.MedianGBps)
                $pct = 100 * $sol.SolMsPerToken / $st.Median
                Say ("  {0,-10} ctx {1,6}: {2:F4} ms/token ({3:F4}..{4:F4}), {5:F1} tok/s, {6:F1}% of SOL" -f $mode, $p, $st.Median, $st.Min, $st.Max, (1000 / $st.Median), $pct)
                $rows.Add([pscustomobject]@{ Run = $r.Name; Mode = $mode; Context = $p; MsPerToken = $st.Median; Min = $st.Min; Max = $st.Max; TokensPerSecond = 1000 / $st.Median; SolMs = $sol.SolMsPerToken; PercentOfSol = $pct; ReadGBps = $read.MedianGBps })
            }
            if ($mode -eq 'persistent') {
                foreach ($p in $r.Context) {
                    $st = $b.ProfileDecodeStages($p, 10, $ct)
                    Say ("  stages at {0}: {1}" -f $p, (($st | ForEach-Object { '{0} {1:F3} ms ({2:F0} GB/s)' -f $_.Stage, $_.Ms, ($_.Bytes / [math]::Max($_.Ms * 1e6, 1e-9)) }) -join '; '))
                }
            }
        }
        $m.Dispose()
    }
    catch { Say "$($r.Name): FAILED $($_.Exception.GetType().Name): $($_.Exception.Message)" }
}
if ($Out) {
    New-Item -ItemType Directory -Force -Path $Out | Out-Null
    $rows | Export-Csv (Join-Path $Out 'persistent-bench.csv') -NoTypeInformation
    $lines | Set-Content (Join-Path $Out 'persistent-bench.txt')
}
