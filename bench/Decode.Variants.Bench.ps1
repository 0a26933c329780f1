# Needs: GPU
<#
.SYNOPSIS
    Decode ms/token and % of the speed of light for kernel variants switched by environment variables (read when a
    model is made), each on a synthetic model made on the GPU, against the read bandwidth measured first in the same
    process. A variant is NAME=VAR=VALUE[;VAR=VALUE...]; 'defaults' sets nothing.
.EXAMPLE
    pwsh -NoProfile -File bench/Decode.Variants.Bench.ps1 -Run 'Llama-3-8B:bf16' -Variant 'defaults','unpaired=CALM_FUSE_PAIRS=0'
#>
param(
    [string[]] $Run = @('Llama-3-8B:bf16'),
    [string[]] $Variant = @('defaults'),
    [int[]] $Context = @(0, 4000),
    [int] $ContextLength = 8192,
    [int] $Steps = 32,
    [int] $Repeat = 3,
    [string] $Out = $env:OUT
)
$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot '../Calm.psd1')
$Run = @($Run | ForEach-Object { $_ -split ',' } | Where-Object { $_ })          # pwsh -File passes one comma-joined string
$Variant = @($Variant | ForEach-Object { $_ -split ',' } | Where-Object { $_ })
$Context = @($Context | ForEach-Object { "$_" -split ',' } | Where-Object { $_ } | ForEach-Object { [int]$_ })
$ct = [Threading.CancellationToken]::None
function Stat([double[]] $v) { $s = $v | Sort-Object; [pscustomobject]@{ Median = $s[[int][math]::Floor(($s.Count - 1) / 2)]; Min = $s[0]; Max = $s[-1] } }
$read = [Calm.Engine.Cuda.CudaBandwidth]::Measure([Calm.Engine.Cuda.CudaBandwidthKind]::Read, 4GB, 20, 0, $ct)
$info = [Calm.Engine.Cuda.CudaDeviceInfo]::List()[0]
$lines = [Collections.Generic.List[string]]::new()
function Say([string] $s) { $lines.Add($s); Write-Host $s }
Say "GPU: $($info.Name), driver $($info.DriverVersion), NVRTC $($info.NvrtcVersion); read bandwidth (4 GiB, 20 passes) median $([math]::Round($read.MedianGBps)) GB/s (min $([math]::Round($read.MinGBps)), max $([math]::Round($read.MaxGBps)))"
$rows = [Collections.Generic.List[object]]::new()
foreach ($r in $Run) {
    $preset, $dt = $r -split ':'
    $dtype = switch ($dt) { 'bf16' { 'BF16' } 'f16' { 'F16' } 'fp8' { 'F8E4M3' } 'int4' { 'Int4' } default { throw "dtype $dt" } }
    foreach ($v in $Variant) {
        $name, $spec = $v -split '=', 2
        $set = @{}
        if ($spec) { foreach ($kv in $spec -split ';') { $k, $val = $kv -split '=', 2; $set[$k] = $val } }
        foreach ($e in $set.GetEnumerator()) { Set-Item "env:$($e.Key)" $e.Value }
        try {
            $opt = [Calm.Engine.ImportOptions]@{ Device = [Calm.Engine.DeviceChoice]::Cuda; ContextLength = $ContextLength }
            $m = [Calm.Engine.ModelFactory]::CreateSynthetic($preset, 1, [Calm.Engine.Model.DType]$dtype, $opt, $null, $ct)
            $b = $m.Backend
            $b.FillKvCacheForBenchmark($ContextLength, 1)
            foreach ($p in $Context) {
                $meds = foreach ($i in 1..$Repeat) { (Stat $b.TimeDecodeSteps($p, $Steps, 8, $ct)).Median }
                $st = Stat $meds
                $sol = [Calm.Engine.SpeedOfLight.SolModel]::Compute($preset, $m.Config, $dt, 'f16', $p + [math]::Floor($Steps / 2), $read.MedianGBps)
                $pct = 100 * $sol.SolMsPerToken / $st.Median
                Say ("{0,-14} {1,-5} {2,-12} ({3}) ctx {4,6}: {5:F4} ms/token ({6:F4}..{7:F4}), {8:F1} tok/s, {9:F1}% of SOL" -f $preset, $dt, $name, $b.DecodeMode, $p, $st.Median, $st.Min, $st.Max, (1000 / $st.Median), $pct)
                $rows.Add([pscustomobject]@{ Preset = $preset; DType = $dt; Variant = $name; Environment = $spec; Decode = $b.DecodeMode; Context = $p; MsPerToken = $st.Median; Min = $st.Min; Max = $st.Max; TokensPerSecond = 1000 / $st.Median; SolMsPerToken = $sol.SolMsPerToken; PercentOfSol = $pct; ReadGBps = $read.MedianGBps })
            }
            $m.Dispose()
        }
        catch { Say "$preset $dt ${name}: FAILED $($_.Exception.Message)" }
        finally { foreach ($e in $set.GetEnumerator()) { Remove-Item "env:$($e.Key)" -ErrorAction SilentlyContinue } }
    }
}
if ($Out) {
    New-Item -ItemType Directory -Force -Path $Out | Out-Null
    $rows | Export-Csv (Join-Path $Out 'decode-variants.csv') -NoTypeInformation
    $lines | Set-Content (Join-Path $Out 'decode-variants.txt')
}
