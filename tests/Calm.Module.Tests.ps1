# The module: manifest, exports, Get-CalmDevice, error records, and Remove-Module releasing the session.
BeforeAll {
    . (Join-Path $PSScriptRoot 'CalmTestHelpers.ps1')
    Import-CalmForTest
    $script:Manifest = Join-Path $script:RepoRoot 'Calm.psd1'
}

Describe 'Module manifest' {
    It 'passes Test-ModuleManifest with an explicit cmdlet list, PowerShell 7.4, Core' {
        $m = Test-ModuleManifest -Path $script:Manifest
        $data = Import-PowerShellDataFile $script:Manifest
        $data.CmdletsToExport | Should -Not -Contain '*'
        $data.PowerShellVersion | Should -Be '7.4'
        $data.CompatiblePSEditions | Should -Be @('Core')
        $data.FormatsToProcess | Should -Contain 'module/Calm.Format.ps1xml'
        $m.Version | Should -Be ([version]([xml](Get-Content -Raw (Join-Path $script:RepoRoot 'Directory.Build.props'))).Project.PropertyGroup.Version)
    }
    It 'exports exactly the declared cmdlets' {
        $declared = (Import-PowerShellDataFile $script:Manifest).CmdletsToExport | Sort-Object
        (Get-Module Calm).ExportedCmdlets.Keys | Sort-Object | Should -Be $declared
    }
    It 'has a table view for every output type' {
        foreach ($type in 'Calm.PowerShell.CalmModel', 'Calm.Engine.Devices.CalmDevice') {
            (Get-FormatData -TypeName $type).FormatViewDefinition.Control.GetType().Name | Should -Be 'TableControl' -Because $type
        }
        foreach ($cmd in (Get-Module Calm).ExportedCmdlets.Values) {
            foreach ($t in $cmd.OutputType.Type | Where-Object { $_ -ne [void] }) {
                Get-FormatData -TypeName $t.FullName | Should -Not -BeNullOrEmpty -Because "$($cmd.Name) writes $($t.FullName)"
                $t.IsSealed | Should -BeTrue
            }
        }
    }
}

Describe 'Get-CalmDevice' {
    It 'writes a CPU row with the CPU model, cores and memory, GPU fields null' {
        $cpu = Get-CalmDevice | Where-Object Kind -EQ 'Cpu'
        $cpu | Should -HaveCount 1
        $cpu.Name | Should -Not -BeNullOrEmpty
        $cpu.Cores | Should -Be ([Environment]::ProcessorCount)
        $cpu.MemoryGB | Should -BeGreaterThan 0.1
        $cpu.MeasuredBandwidthGBps | Should -BeNullOrEmpty
        foreach ($p in 'ComputeCapability', 'Multiprocessors', 'MemoryBusWidth', 'MemoryClockMHz', 'PeakBandwidthGBps', 'DriverVersion', 'NvrtcVersion') {
            $cpu.PSObject.Properties[$p] | Should -Not -BeNullOrEmpty -Because "the row type has $p for GPU rows"
            $cpu.$p | Should -BeNullOrEmpty
        }
        if (Test-Path /proc/cpuinfo) {
            $model = (Select-String -Path /proc/cpuinfo -Pattern '^model name\s*:\s*(.+)$' | Select-Object -First 1)
            if ($model) { $cpu.Name | Should -Be $model.Matches[0].Groups[1].Value.Trim() }
        }
    }
    It '-MeasureBandwidth measures a plausible read bandwidth with its spread' {
        $cpu = Get-CalmDevice -MeasureBandwidth | Where-Object Kind -EQ 'Cpu'
        $cpu.MeasuredBandwidthGBps | Should -BeGreaterThan 0.5      # any machine since ~2000
        $cpu.MeasuredBandwidthGBps | Should -BeLessThan 5000        # more than any host memory system
        $cpu.BandwidthSpreadPercent | Should -BeGreaterOrEqual 0
    }
    It 'its rows export to CSV' {
        $csv = Join-Path ([IO.Path]::GetTempPath()) "calm-devices-$PID.csv"
        try {
            Get-CalmDevice | Export-Csv $csv -NoTypeInformation
            (Import-Csv $csv)[0].Kind | Should -Be 'Cpu'
        }
        finally { Remove-Item -Force -ErrorAction Ignore $csv }
    }
}

Describe 'Error records' {
    It 'carry the stable id, a category, the target and a recommended action' {
        $missing = Join-Path ([IO.Path]::GetTempPath()) "calm-no-such-$PID"
        $err = { Import-CalmModel -Path $missing } | Should -Throw -PassThru
        $err.FullyQualifiedErrorId | Should -BeLike 'Calm.PathNotFound,*'
        $err.CategoryInfo.Category | Should -Be 'ObjectNotFound'
        $err.TargetObject | Should -Be $missing
        $err.ErrorDetails.RecommendedAction | Should -Not -BeNullOrEmpty
        $err.Exception.Message | Should -BeLike "*$missing*"
    }
    It 'with no model loaded, a default-model lookup says Calm.NoModelLoaded' {
        Get-CalmModel | Remove-CalmModel
        $err = { [Calm.Engine.Session.CalmSession]::Shared.Resolve($null) } | Should -Throw -PassThru
        $err.Exception.InnerException.ErrorId | Should -Be 'Calm.NoModelLoaded'
    }
}

Describe 'Remove-Module' {
    It 'disposes every loaded model of the session' {
        $script = @"
`$ErrorActionPreference = 'Stop'
Import-Module '$($script:Manifest)'
`$null = New-CalmModel -Preset tiny -Device Cpu
`$engine = [Calm.Engine.Session.CalmSession]::Shared.Find('tiny')
Remove-Module Calm
if (-not `$engine.IsDisposed) { throw 'the model was not disposed' }
if ([Calm.Engine.Session.CalmSession]::Shared.Models.Count -ne 0) { throw 'the session still holds models' }
'released'
"@
        $pwsh = [Environment]::ProcessPath
        $pre = @(if ([IO.Path]::GetFileNameWithoutExtension($pwsh) -ne 'pwsh') { Join-Path $PSHOME 'pwsh.dll' })
        $env:NO_COLOR = '1'
        try { $out = & $pwsh @pre -NoProfile -NonInteractive -Command $script 2>&1 }
        finally { Remove-Item Env:NO_COLOR }
        $LASTEXITCODE | Should -Be 0 -Because (($out -join "`n") -replace '\x1b\[[0-9;]*m', '')
        $out | Should -Contain 'released'
    }
}

Describe 'Stopping (Ctrl+C)' {
    It 'stops Get-CalmDevice -MeasureBandwidth promptly and leaves the module usable' {
        $ps = [PowerShell]::Create()
        try {
            $null = $ps.AddScript("Import-Module '$($script:Manifest)'; while (`$true) { Get-CalmDevice -MeasureBandwidth }")
            $async = $ps.BeginInvoke()
            Start-Sleep -Milliseconds 1500
            $sw = [Diagnostics.Stopwatch]::StartNew()
            $ps.Stop()
            $sw.Elapsed.TotalSeconds | Should -BeLessThan 10
            $ps.InvocationStateInfo.State | Should -Be 'Stopped'
        }
        finally { $ps.Dispose() }
        (Get-CalmDevice).Kind | Should -Contain 'Cpu'
    }
}
