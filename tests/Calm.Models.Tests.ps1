# New-CalmModel, Get-CalmModel, Remove-CalmModel on the CPU with the tiny preset; Export-Csv round trip; binding.
BeforeAll {
    . (Join-Path $PSScriptRoot 'CalmTestHelpers.ps1')
    Import-CalmForTest
    Get-CalmModel | Remove-CalmModel -Confirm:$false
}
AfterAll { Get-CalmModel | Remove-CalmModel -Confirm:$false }

Describe 'Cmdlet parameters' {
    It 'New-CalmModel: -Preset (mandatory, position 0), -Seed, -DType, -Name, -Device, -ContextLength' {
        $c = Get-Command New-CalmModel
        $c.Parameters['Preset'].Attributes.Where({ $_ -is [System.Management.Automation.ParameterAttribute] }).Mandatory | Should -Contain $true
        foreach ($p in 'Seed', 'DType', 'Name', 'Device', 'ContextLength') { $c.Parameters.Keys | Should -Contain $p }
        $c.Parameters['Seed'].ParameterType | Should -Be ([int])
        $c.OutputType.Name | Should -Contain 'Calm.PowerShell.CalmModel'
    }
    It 'Remove-CalmModel supports -WhatIf/-Confirm and takes -Model from the pipeline or -Name' {
        $c = Get-Command Remove-CalmModel
        $c.Parameters.Keys | Should -Contain 'WhatIf'
        $c.Parameters.Keys | Should -Contain 'Confirm'
        $c.ParameterSets.Name | Should -Be @('Model', 'Name')
        $c.Parameters['Model'].Attributes.Where({ $_ -is [System.Management.Automation.ParameterAttribute] }).ValueFromPipeline | Should -Contain $true
    }
    It 'Get-CalmModel -Name supports wildcards' {
        (Get-Command Get-CalmModel).Parameters['Name'].Attributes.Where({ $_ -is [System.Management.Automation.SupportsWildcardsAttribute] }).Count | Should -Be 1
    }
}

Describe 'Argument completion' {
    It 'completes -Preset with the presets (tiny among them)' {
        $r = TabExpansion2 -inputScript 'New-CalmModel -Preset ti' -cursorColumn 'New-CalmModel -Preset ti'.Length
        $r.CompletionMatches.CompletionText | Should -Contain 'tiny'
    }
    It 'completes -KvCacheDType with f16 and fp8' {
        foreach ($cmd in 'New-CalmModel', 'Import-CalmModel', 'Measure-CalmSpeedOfLight') {
            $line = "$cmd -KvCacheDType "
            (TabExpansion2 -inputScript $line -cursorColumn $line.Length).CompletionMatches.CompletionText | Should -Be @('f16', 'fp8')
        }
    }
    It 'completes -Device and -DType' {
        (TabExpansion2 -inputScript 'New-CalmModel -Device C' -cursorColumn 23).CompletionMatches.CompletionText | Should -Be @('Cpu', 'Cuda')
        (TabExpansion2 -inputScript 'New-CalmModel -DType b' -cursorColumn 22).CompletionMatches.CompletionText | Should -Be @('bf16')
    }
}

Describe 'Bad arguments' {
    BeforeEach { $script:Before = Get-LoadedNames }
    AfterEach { Get-LoadedNames | Should -Be $script:Before }
    It 'an unknown -DType: Calm.InvalidArgument' {
        { New-CalmModel -Preset tiny -DType int3 } | Should -Throw -ErrorId 'Calm.InvalidArgument,*'
    }
    It 'an unknown -KvCacheDType: Calm.InvalidArgument (New-CalmModel, Import-CalmModel, Measure-CalmSpeedOfLight)' {
        { New-CalmModel -Preset tiny -Device Cpu -KvCacheDType int3 } | Should -Throw -ErrorId 'Calm.InvalidArgument,*'
        { Import-CalmModel (Join-Path $PSScriptRoot '..' 'models' 'tiny-wp') -Device Cpu -KvCacheDType fp4 } | Should -Throw -ErrorId 'Calm.InvalidArgument,*'
        { Measure-CalmSpeedOfLight -Preset tiny -Device Cpu -KvCacheDType q8 } | Should -Throw -ErrorId 'Calm.InvalidArgument,*'
    }
    It 'an unknown preset: Calm.PresetUnknown' {
        { New-CalmModel -Preset 'no-such-model-7B' } | Should -Throw -ErrorId 'Calm.PresetUnknown,*'
    }
    It 'Get-CalmModel / Remove-CalmModel of a name that is not loaded: Calm.ModelNotFound' {
        { Get-CalmModel -Name 'not-loaded' -ErrorAction Stop } | Should -Throw -ErrorId 'Calm.ModelNotFound,*'
        { Remove-CalmModel -Name 'not-loaded' -ErrorAction Stop } | Should -Throw -ErrorId 'Calm.ModelNotFound,*'
        { Remove-CalmModel -Model 'not-loaded' -ErrorAction Stop } | Should -Throw -ErrorId 'Calm.ModelNotFound,*'
        Get-CalmModel -Name 'not-*' | Should -BeNullOrEmpty
    }
    It '-Device Cuda without a GPU: Calm.DeviceNotAvailable' -Skip:([bool](Get-Command nvidia-smi -ErrorAction Ignore)) {
        { New-CalmModel -Preset tiny -Device Cuda } | Should -Throw -ErrorId 'Calm.DeviceNotAvailable,*'
    }
}

Describe 'New-CalmModel -Preset tiny on the CPU' {
    It '-KvCacheDType fp8 and f16 on the CPU: the model says so; the default CPU cache is f32' {
        try {
            (New-CalmModel tiny -Device Cpu -KvCacheDType fp8 -Name kv-fp8).KvCacheDType | Should -Be 'fp8'
            (New-CalmModel tiny -Device Cpu -KvCacheDType F16 -Name kv-f16).KvCacheDType | Should -Be 'f16'
            (New-CalmModel tiny -Device Cpu -Name kv-f32).KvCacheDType | Should -Be 'f32'
        }
        finally { Get-CalmModel -Name 'kv-*' | Remove-CalmModel }
    }

    It 'makes a synthetic model with flat properties, which becomes the default' {
        $m = New-CalmModel -Preset tiny -Seed 7 -DType f32 -Device Cpu -ContextLength 64
        $m | Should -BeOfType Calm.PowerShell.CalmModel
        $m.Name | Should -Be 'tiny'
        $m.Preset | Should -Be 'tiny'
        $m.Seed | Should -Be 7
        $m.DType | Should -Be 'f32'
        $m.Device | Should -Be 'Cpu'
        $m.ContextLength | Should -Be 64
        $m.Path | Should -BeNullOrEmpty
        $m.Layers | Should -BeGreaterThan 0
        $m.Parameters | Should -BeGreaterThan 0
        $m.WeightBytes | Should -Be ($m.Parameters * 4)
        (Get-CalmModel)[-1].Name | Should -Be 'tiny'
    }
    It 'gives a second model of the same preset a unique name, and bf16 halves the bytes' {
        $m2 = New-CalmModel -Preset tiny -Seed 7 -DType bf16 -Device Cpu
        $m2.Name | Should -Be 'tiny-2'
        $m2.WeightBytes | Should -Be ((Get-CalmModel tiny).WeightBytes / 2)
    }
    It 'refuses a -Name in use: Calm.ModelNameInUse' {
        { New-CalmModel -Preset tiny -Name tiny } | Should -Throw -ErrorId 'Calm.ModelNameInUse,*'
    }
    It 'Get-CalmModel filters by wildcard' {
        @(Get-CalmModel -Name 'tiny*').Count | Should -Be 2
        @(Get-CalmModel -Name 'tiny-?').Name | Should -Be @('tiny-2')
    }
    It 'Get-CalmModel output round-trips through Export-Csv' {
        $csv = Join-Path ([IO.Path]::GetTempPath()) "calm-models-$PID.csv"
        try {
            $models = @(Get-CalmModel)
            $models | Export-Csv -Path $csv -NoTypeInformation
            $back = @(Import-Csv -Path $csv)
            $back.Count | Should -Be $models.Count
            $cols = $back[0].PSObject.Properties.Name
            foreach ($p in 'Name', 'Architecture', 'Parameters', 'Layers', 'HiddenSize', 'Heads', 'KvHeads', 'HeadDim', 'Vocab',
                'ContextLength', 'DType', 'Device', 'KvCacheDType', 'Decode', 'KernelSwitches', 'WeightBytes', 'Path', 'Preset', 'Seed') { $cols | Should -Contain $p }
            $cols | Should -Not -Contain 'Loaded'
            foreach ($m in $models | Where-Object Device -EQ 'Cpu') { $m.Decode | Should -BeNullOrEmpty; $m.KernelSwitches | Should -BeNullOrEmpty }   # GPU only
            for ($i = 0; $i -lt $models.Count; $i++) {
                $back[$i].Name | Should -Be $models[$i].Name
                [long]$back[$i].WeightBytes | Should -Be $models[$i].WeightBytes
                [long]$back[$i].Parameters | Should -Be $models[$i].Parameters
                $back[$i].DType | Should -Be $models[$i].DType
            }
            # the rows bind to -Model by name
            $back[0] | Remove-CalmModel -WhatIf
            @(Get-CalmModel).Count | Should -Be $models.Count
        }
        finally { Remove-Item -Force -ErrorAction Ignore $csv }
    }
    It 'completes -Model and -Name with the loaded names' {
        (TabExpansion2 -inputScript 'Remove-CalmModel -Name tiny-' -cursorColumn 28).CompletionMatches.CompletionText | Should -Be @('tiny-2')
    }
    It 'has a table view' {
        $text = Get-CalmModel | Format-Table | Out-String -Width 200
        $text | Should -Match 'Architecture'
        $text | Should -Match 'tiny-2'
    }
    It 'Remove-CalmModel -WhatIf removes nothing; from the pipeline it frees the model' {
        Remove-CalmModel -Name tiny-2 -WhatIf
        Get-CalmModel -Name tiny-2 | Should -Not -BeNullOrEmpty
        $engine = [Calm.Engine.Session.CalmSession]::Shared.Find('tiny-2')
        Get-CalmModel -Name tiny-2 | Remove-CalmModel
        $engine.IsDisposed | Should -BeTrue
        Get-CalmModel -Name tiny-2 -ErrorAction Ignore | Should -BeNullOrEmpty
    }
    It 'a CalmModel object of a removed model: Calm.ModelNotFound' {
        $m = Get-CalmModel -Name tiny
        Remove-CalmModel -Model $m
        { Remove-CalmModel -Model $m -ErrorAction Stop } | Should -Throw -ErrorId 'Calm.ModelNotFound,*'
        Get-CalmModel | Should -BeNullOrEmpty
    }
}
