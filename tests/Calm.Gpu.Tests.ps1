# GPU tests: run by `build.ps1 GpuTest` on the H200 machine; skipped with the reason where there is no NVIDIA GPU.
BeforeDiscovery {
    $script:HasGpu = [bool](Get-Command nvidia-smi -ErrorAction Ignore) -and ((& nvidia-smi -L 2>$null) -match '^GPU \d')
}
BeforeAll {
    . (Join-Path $PSScriptRoot 'CalmTestHelpers.ps1')
    Import-CalmForTest
}

Describe 'On an NVIDIA GPU' -Tag 'GPU' -Skip:(-not $script:HasGpu) {
    It 'Get-CalmDevice lists a Cuda row per GPU with its memory and peak bandwidth' {
        $gpus = @(Get-CalmDevice | Where-Object Kind -EQ 'Cuda')
        $gpus.Count | Should -Be @(& nvidia-smi -L | Where-Object { $_ -match '^GPU \d' }).Count
        foreach ($g in $gpus) {
            $g.ComputeCapability | Should -Match '^\d+\.\d+$'
            $g.MemoryGB | Should -BeGreaterThan 1
            $g.PeakBandwidthGBps | Should -BeGreaterThan 100
            $g.DriverVersion | Should -Not -BeNullOrEmpty
        }
    }
    It 'New-CalmModel -Device Cuda puts the tiny preset on the GPU' {
        $m = New-CalmModel -Preset tiny -Device Cuda -Name gpu-tiny
        $m.Device | Should -Be 'Cuda'
        Remove-CalmModel -Name gpu-tiny
    }
}

Describe 'Without an NVIDIA GPU' -Tag 'GPU' -Skip:$script:HasGpu {
    It 'GPU tests need an NVIDIA GPU' {
        Set-ItResult -Skipped -Because 'there is no NVIDIA GPU on this machine (nvidia-smi -L lists none); run build.ps1 GpuTest on the GPU machine'
    }
}
