#!/usr/bin/env pwsh
# What-if table: the speed of light of every preset on this machine's GPU (or CPU), from its measured bandwidth --
# pure arithmetic, nothing is loaded. Which models fit, and how fast could each decode at 0 and 32k context?
#   ./examples/SolWhatIfPresets.ps1
#   ./examples/SolWhatIfPresets.ps1 -Device Cpu -Context 0 -Path what-if.csv
[CmdletBinding()]
param(
    [ValidateSet('Auto', 'Cpu', 'Cuda')] [string] $Device = 'Auto',
    [string] $DType = 'bf16',
    [int[]] $Context = @(0, 32768),
    [double] $BandwidthGBps,
    [string] $Path
)
$ErrorActionPreference = 'Stop'
if (-not (Get-Module Calm)) { Import-Module (Join-Path $PSScriptRoot '../Calm.psd1') }

$sol = @{ DType = $DType; Context = $Context }
if ($PSBoundParameters.ContainsKey('BandwidthGBps')) { $sol.BandwidthGBps = $BandwidthGBps }
else {
    $bw = Measure-CalmBandwidth -Device $Device -Kind Read
    Write-Host ("{0}: {1:N1} GB/s read (measured){2}" -f $bw.Device, $bw.MedianGBps, $(if ($bw.PeakGBps) { ", peak {0:N0}" -f $bw.PeakGBps }))
    $sol.Device = $(if ($bw.DeviceKind -eq 'Cpu') { 'Cpu' } else { "Cuda:$($bw.DeviceIndex)" })
}
$rows = Get-CalmPreset | Where-Object Name -NE 'tiny' | Get-CalmSpeedOfLight @sol
$rows | Format-Table Model, Context, @{ n = 'GB/token'; e = { '{0:N2}' -f ($_.BytesPerToken / 1e9) } }, @{ n = 'SOL tok/s'; e = { '{0:N1}' -f $_.SolTokensPerSecond } }, BandwidthSource, BoundBy | Out-Host
if ($Path) { $rows | Export-Csv -Path $Path -NoTypeInformation }
$rows
