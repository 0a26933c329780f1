# Import-CalmModel: the happy path on a small llama folder written here, and every bad-input case of issue 2
# as the user sees it (a terminating error with a stable ErrorId; nothing stays loaded).
BeforeAll {
    . (Join-Path $PSScriptRoot 'CalmTestHelpers.ps1')
    Import-CalmForTest
    $script:Work = Join-Path ([IO.Path]::GetTempPath()) "calm-import-tests-$PID"
    New-Item -ItemType Directory -Force $script:Work | Out-Null
}
AfterAll {
    Get-CalmModel | Remove-CalmModel -Confirm:$false
    Remove-Item -Recurse -Force -ErrorAction Ignore $script:Work
}

Describe 'Import-CalmModel parameters' {
    It 'has the Path and LiteralPath parameter sets' {
        $c = Get-Command Import-CalmModel
        $c.ParameterSets.Name | Should -Be @('Path', 'LiteralPath')
        $c.Parameters['Path'].Attributes.Where({ $_ -is [System.Management.Automation.SupportsWildcardsAttribute] }).Count | Should -Be 1
        $c.Parameters['LiteralPath'].Aliases | Should -Contain 'PSPath'
        $c.Parameters['Device'].ParameterType.Name | Should -Be 'DeviceChoice'
        $c.OutputType.Name | Should -Contain 'Calm.PowerShell.CalmModel'
    }
    It 'rejects a non-positive -ContextLength before loading' {
        { Import-CalmModel -Path $script:Work -ContextLength 0 } | Should -Throw -ErrorId 'Calm.InvalidArgument,*'
    }
}

Describe 'Import-CalmModel on a valid folder' {
    It 'imports a llama folder by -Path, with the shapes of config.json' {
        $dir = New-ModelFolder -Root $script:Work -Name 'good-llama'
        $m = Import-CalmModel -Path $dir -Device Cpu -ContextLength 32
        $m | Should -BeOfType Calm.PowerShell.CalmModel
        $m.Name | Should -Be 'good-llama'
        $m.Architecture | Should -Be 'llama'
        $m.Layers | Should -Be 1
        $m.HiddenSize | Should -Be 16
        $m.Heads | Should -Be 2
        $m.KvHeads | Should -Be 1
        $m.HeadDim | Should -Be 8
        $m.Vocab | Should -Be 32
        $m.ContextLength | Should -Be 32
        $m.DType | Should -Be 'f32'
        $m.Device | Should -Be 'Cpu'
        # every tensor once, 4 bytes each: 32*16 + 16 + 16*16 + 2*8*16 + 16*16 + 16 + 3*32*16 + 16
        $m.WeightBytes | Should -Be (4 * (512 + 16 + 256 + 256 + 256 + 16 + 1536 + 16))
        $m.Path | Should -Be (Resolve-Path $dir).ProviderPath
        (Get-CalmModel -Name 'good-llama').Name | Should -Be 'good-llama'
        Remove-CalmModel -Name 'good-llama'
    }
    It 'resolves wildcards in -Path and takes -LiteralPath literally' {
        $dir = New-ModelFolder -Root $script:Work -Name 'wild[1]'
        { Import-CalmModel -LiteralPath $dir -Name 'literal' -Device Cpu } | Should -Not -Throw
        Get-CalmModel -Name 'literal' | Should -Not -BeNullOrEmpty
        Remove-CalmModel -Name 'literal'
        $m = Import-CalmModel -Path (Join-Path $script:Work 'good-ll*') -Name 'wild' -Device Cpu
        $m.Name | Should -Be 'wild'
        Remove-CalmModel -Name 'wild'
    }
    It 'refuses a -Name already in use and keeps the loaded model' {
        $dir = New-ModelFolder -Root $script:Work -Name 'dup'
        $null = Import-CalmModel -Path $dir -Name 'dup' -Device Cpu
        { Import-CalmModel -Path $dir -Name 'dup' -Device Cpu } | Should -Throw -ErrorId 'Calm.ModelNameInUse,*'
        @(Get-CalmModel -Name 'dup').Count | Should -Be 1
        Remove-CalmModel -Name 'dup'
    }
}

Describe 'Import-CalmModel refuses bad input' {
    BeforeEach { $script:Before = Get-LoadedNames }
    AfterEach { Get-LoadedNames | Should -Be $script:Before -Because 'nothing half-loaded may stay in the session' }

    It 'a missing path: Calm.PathNotFound' {
        { Import-CalmModel -Path (Join-Path $script:Work 'no-such-folder') } | Should -Throw -ErrorId 'Calm.PathNotFound,*'
        { Import-CalmModel -LiteralPath (Join-Path $script:Work 'no-such-folder') } | Should -Throw -ErrorId 'Calm.PathNotFound,*'
    }
    It 'a wildcard that matches nothing: Calm.PathNotFound' {
        { Import-CalmModel -Path (Join-Path $script:Work 'nothing-here-*') } | Should -Throw -ErrorId 'Calm.PathNotFound,*'
    }
    It 'a folder without config.json: Calm.ConfigMissing' {
        $dir = New-ModelFolder -Root $script:Work -Name 'no-config' -NoConfig
        { Import-CalmModel -Path $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.ConfigMissing,*'
    }
    It 'an unsupported model_type: Calm.UnsupportedArchitecture, naming what is supported' {
        $dir = New-ModelFolder -Root $script:Work -Name 'gpt2' -Mutate { param($s) $s.Config.model_type = 'gpt2' }
        { Import-CalmModel -Path $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.UnsupportedArchitecture,*'
        { Import-CalmModel -Path $dir -Device Cpu } | Should -Throw -ExpectedMessage '*llama*'
    }
    It 'a truncated safetensors file (data cut short): Calm.Safetensors.Truncated' {
        $dir = New-ModelFolder -Root $script:Work -Name 'truncated'
        $file = Join-Path $dir 'model.safetensors'
        $fs = [IO.File]::Open($file, 'Open'); try { $fs.SetLength($fs.Length - 100) } finally { $fs.Dispose() }
        { Import-CalmModel -Path $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.Safetensors.Truncated,*'
    }
    It 'a header length beyond the file: Calm.Safetensors.HeaderTooLarge' {
        $dir = New-ModelFolder -Root $script:Work -Name 'header-beyond'
        $file = Join-Path $dir 'model.safetensors'
        $fs = [IO.File]::Open($file, 'Open')
        try { $len = [BitConverter]::GetBytes([uint64]($fs.Length + 1)); $fs.Write($len, 0, 8) } finally { $fs.Dispose() }
        { Import-CalmModel -Path $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.Safetensors.HeaderTooLarge,*'
    }
    It 'offsets out of range (end before begin): Calm.Safetensors.OffsetsInvalid' {
        $dir = New-ModelFolder -Root $script:Work -Name 'offsets-reversed' -Mutate {
            param($s) $s.Tensors[$s.Tensors.Count - 1].Offsets = @(11456, 11392)   # model.norm.weight: end < begin
        }
        { Import-CalmModel -Path $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.Safetensors.OffsetsInvalid,*'
    }
    It 'offsets far outside the data section: Calm.Safetensors.OffsetsInvalid' {
        $dir = New-ModelFolder -Root $script:Work -Name 'offsets-outside' -Mutate {
            param($s) $s.Tensors[1].Offsets = @(1000000000000, 1000000000064)   # input_layernorm: 16 f32 at 1 TB
        }
        { Import-CalmModel -Path $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.Safetensors.OffsetsInvalid,*'
    }
    It 'overlapping tensors: Calm.Safetensors.Overlap' {
        $dir = New-ModelFolder -Root $script:Work -Name 'overlap' -Mutate {
            # input_layernorm (64 bytes) placed inside the embedding's bytes [0, 2048)
            param($s) $s.Tensors[1].Offsets = @(64, 128)
        }
        { Import-CalmModel -Path $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.Safetensors.Overlap,*'
    }
    It 'an unknown dtype: Calm.Safetensors.UnknownDType' {
        $dir = New-ModelFolder -Root $script:Work -Name 'unknown-dtype' -Mutate { param($s) $s.Tensors[1].DType = 'F12' }
        { Import-CalmModel -Path $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.Safetensors.UnknownDType,*'
    }
    It 'a missing tensor: Calm.TensorMissing, naming it' {
        $dir = New-ModelFolder -Root $script:Work -Name 'missing-tensor' -Mutate {
            param($s) $null = $s.Tensors.Remove(($s.Tensors | Where-Object Name -EQ 'model.layers.0.mlp.down_proj.weight'))
        }
        { Import-CalmModel -Path $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.TensorMissing,*'
        { Import-CalmModel -Path $dir -Device Cpu } | Should -Throw -ExpectedMessage '*down_proj*'
    }
    It 'a tensor of the wrong shape: Calm.TensorShapeMismatch, naming it' {
        $dir = New-ModelFolder -Root $script:Work -Name 'wrong-shape' -Mutate {
            param($s) ($s.Tensors | Where-Object Name -EQ 'model.layers.0.self_attn.k_proj.weight').Shape = [long[]]@(16, 16)
        }
        { Import-CalmModel -Path $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.TensorShapeMismatch,*'
        { Import-CalmModel -Path $dir -Device Cpu } | Should -Throw -ExpectedMessage '*k_proj*'
    }
    It 'a shard index naming a file outside the model folder: Calm.ShardPathOutsideModel' {
        $dir = New-ModelFolder -Root $script:Work -Name 'shard-escape'
        $outside = Join-Path $script:Work 'outside.safetensors'
        Move-Item (Join-Path $dir 'model.safetensors') $outside -Force
        $map = [ordered]@{}
        foreach ($t in (New-TinyLlamaSpec).Tensors) { $map[$t.Name] = '../outside.safetensors' }
        [ordered]@{ metadata = @{ total_size = 11456 }; weight_map = $map } | ConvertTo-Json -Depth 5 |
            Set-Content (Join-Path $dir 'model.safetensors.index.json') -Encoding utf8
        { Import-CalmModel -Path $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.ShardPathOutsideModel,*'
    }
}
