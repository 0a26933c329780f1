# GPU tests: run by `build.ps1 GpuTest` on the H200 machine; skipped with the reason where there is no NVIDIA GPU.
BeforeDiscovery {
    $script:HasGpu = [bool](Get-Command nvidia-smi -ErrorAction Ignore) -and ((& nvidia-smi -L 2>$null) -match '^GPU \d')
    $script:Fixtures = @('llama', 'llama_tied', 'mistral', 'qwen2', 'qwen3', 'gemma', 'phi3', 'mixtral') | ForEach-Object { @{ Name = $_ } }
}
BeforeAll {
    . (Join-Path $PSScriptRoot 'CalmTestHelpers.ps1')
    Import-CalmForTest
    $script:FixtureRoot = Join-Path $PSScriptRoot 'fixtures'
    function Get-GpuFreeGB { (Get-CalmDevice | Where-Object { $_.Kind -eq 'Cuda' -and $_.Index -eq 0 }).FreeMemoryGB }
}

Describe 'On an NVIDIA GPU' -Tag 'GPU' -Skip:(-not $script:HasGpu) {
    AfterEach { Get-CalmModel | Remove-CalmModel }

    It 'Get-CalmDevice lists a Cuda row per GPU with its memory, attributes and peak bandwidth' {
        $gpus = @(Get-CalmDevice | Where-Object Kind -EQ 'Cuda')
        $gpus.Count | Should -Be @(& nvidia-smi -L | Where-Object { $_ -match '^GPU \d' }).Count
        foreach ($g in $gpus) {
            $g.Name | Should -Match 'NVIDIA'
            $g.ComputeCapability | Should -Match '^\d+\.\d+$'
            $g.MemoryGB | Should -BeGreaterThan 1
            $g.FreeMemoryGB | Should -BeGreaterThan 0
            $g.FreeMemoryGB | Should -BeLessOrEqual $g.MemoryGB
            $g.Multiprocessors | Should -BeGreaterThan 0
            $g.MemoryBusWidth | Should -BeGreaterThan 0
            $g.MemoryClockMHz | Should -BeGreaterThan 0
            $g.PeakBandwidthGBps | Should -BeGreaterThan 100
            $g.PeakBandwidthGBps | Should -Be ([math]::Round(2 * $g.MemoryClockMHz * 1e6 * $g.MemoryBusWidth / 8 / 1e9, 1)) -Because 'peak = 2 x clock x bus width / 8'
            $g.DriverVersion | Should -Match '^\d+\.\d+$'
            $g.NvrtcVersion | Should -Match '^\d+\.\d+$'
        }
    }

    It 'Get-CalmDevice -MeasureBandwidth measures the GPU read bandwidth below its peak' {
        $g = Get-CalmDevice -MeasureBandwidth | Where-Object Kind -EQ 'Cuda' | Select-Object -First 1
        $g.MeasuredBandwidthGBps | Should -BeGreaterThan 100
        $g.MeasuredBandwidthGBps | Should -BeLessThan (1.05 * $g.PeakBandwidthGBps)
    }

    It 'a GPU model and its measurements record the kernel switches set when it was made' {
        $old = $env:CALM_MV_DEEP
        try {
            $env:CALM_MV_DEEP = '16'   # the default depth, set explicitly: recorded, nothing changes
            $m = Import-CalmModel -Path (Join-Path $script:FixtureRoot 'llama') -Device Cuda -Name gpu-switches
        } finally { $env:CALM_MV_DEEP = $old }
        $m.KernelSwitches | Should -Match '(^|;)CALM_MV_DEEP=16(;|$)'
        $r = Measure-CalmSpeedOfLight -Model $m -Context 0 -Tokens 2 -Repeat 1
        @($r | ForEach-Object KernelSwitches | Sort-Object -Unique) | Should -Be @($m.KernelSwitches) -Because 'the switches of the backend, not of the environment now'
    }

    It 'Import-CalmModel -Device Cuda loads the <Name> fixture on the GPU' -TestCases $script:Fixtures {
        param($Name)
        $m = Import-CalmModel -Path (Join-Path $script:FixtureRoot $Name) -Device Cuda -Name "gpu-$Name"
        $m.Device | Should -Be 'Cuda'
        $m.Vocab | Should -Be 256
        (Get-CalmModel | Where-Object Name -EQ "gpu-$Name").Device | Should -Be 'Cuda'
    }

    It 'New-CalmModel -Device Cuda makes a Llama-3-8B shape on the GPU in seconds, and Remove-CalmModel frees it' {
        $free0 = Get-GpuFreeGB
        $sw = [Diagnostics.Stopwatch]::StartNew()
        $m = New-CalmModel -Preset Llama-3-8B -Device Cuda -Name gpu-8b -ContextLength 4096
        $sw.Stop()
        $m.Device | Should -Be 'Cuda'
        $m.WeightBytes | Should -BeGreaterThan 15e9
        $sw.Elapsed.TotalSeconds | Should -BeLessThan 20 -Because "made on the GPU with no host copy (took $($sw.Elapsed.TotalSeconds) s)"
        $used = $free0 - (Get-GpuFreeGB)
        $used | Should -BeGreaterThan ($m.WeightBytes / 1e9)
        Remove-CalmModel -Name gpu-8b
        [math]::Abs($free0 - (Get-GpuFreeGB)) | Should -BeLessThan (0.01 * $free0) -Because 'Remove-CalmModel returns the GPU memory'
    }

    It 'New-CalmModel -DType <DType> -Device Cuda makes a Mixtral-8x7B shape on the GPU in seconds' -TestCases @(@{ DType = 'fp8' }, @{ DType = 'int4' }) {
        param($DType)
        $free0 = Get-GpuFreeGB
        $sw = [Diagnostics.Stopwatch]::StartNew()
        $m = New-CalmModel -Preset Mixtral-8x7B -DType $DType -Device Cuda -Name "gpu-mixtral-$DType" -ContextLength 1024
        $sw.Stop()
        $m.Device | Should -Be 'Cuda'
        $m.WeightBytes | Should -BeGreaterThan 25e9
        $sw.Elapsed.TotalSeconds | Should -BeLessThan 60 -Because "quantized on the GPU with no host copy (took $($sw.Elapsed.TotalSeconds) s)"
        ($free0 - (Get-GpuFreeGB)) | Should -BeGreaterThan ($m.WeightBytes / 1e9)
        Remove-CalmModel -Name "gpu-mixtral-$DType"
        [math]::Abs($free0 - (Get-GpuFreeGB)) | Should -BeLessThan (0.01 * $free0) -Because 'Remove-CalmModel returns the GPU memory'
    }

    It 'New-CalmModel -Device Cuda refuses a model larger than the GPU with Calm.OutOfMemory' {
        $free0 = Get-GpuFreeGB
        { New-CalmModel -Preset Llama-3.1-70B -DType f32 -Device Cuda -Name too-big -ContextLength 1024 -ErrorAction Stop } |
            Should -Throw -ErrorId 'Calm.OutOfMemory*'
        @(Get-CalmModel | Where-Object Name -EQ 'too-big').Count | Should -Be 0
        [math]::Abs($free0 - (Get-GpuFreeGB)) | Should -BeLessThan 0.5
    }

    It '-KvCacheDType fp8 on the GPU: the model and the speed-of-light rows say fp8; the KV bytes per token are about half' {
        (New-CalmModel tiny -Device Cuda -KvCacheDType fp8 -Name kv-gpu-fp8).KvCacheDType | Should -Be 'fp8'
        (New-CalmModel tiny -Device Cuda -Name kv-gpu-f16).KvCacheDType | Should -Be 'f16'
        $r8 = Measure-CalmSpeedOfLight -Preset tiny -Device Cuda -Context 1500 -Tokens 4 -Repeat 1 -KvCacheDType fp8
        $r16 = Measure-CalmSpeedOfLight -Preset tiny -Device Cuda -Context 1500 -Tokens 4 -Repeat 1
        $r8.KvDType | Should -Be 'fp8'
        $r16.KvDType | Should -Be 'f16'
        $r8.TokensPerSecond | Should -BeGreaterThan 0
        # tiny: 4 layers x 2 x 4 kv heads x 32 dims: f16 2048 bytes per position, fp8 1024 + 128 of scales
        $r16.KvBytesPerToken | Should -Be 2048
        $r8.KvBytesPerToken | Should -Be (1024 + 4 * 2 * 4 * 4)
    }
}

Describe 'Without an NVIDIA GPU' -Tag 'GPU' -Skip:$script:HasGpu {
    It 'GPU tests need an NVIDIA GPU' {
        Set-ItResult -Skipped -Because 'there is no NVIDIA GPU on this machine (nvidia-smi -L lists none); run build.ps1 GpuTest on the GPU machine'
    }
}
