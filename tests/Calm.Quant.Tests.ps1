# Quantized weights at import (issue 6): Import-CalmModel / New-CalmModel -DType fp8|int4 on the CPU, and on the GPU
# (Describe tagged GPU: run by `build.ps1 GpuTest` on the H200 machine).
BeforeDiscovery {
    $script:HasGpu = [bool](Get-Command nvidia-smi -ErrorAction Ignore) -and ((& nvidia-smi -L 2>$null) -match '^GPU \d')
}
BeforeAll {
    . (Join-Path $PSScriptRoot 'CalmTestHelpers.ps1')
    Import-CalmForTest
    $script:TinyWp = Join-Path $script:RepoRoot 'models/tiny-wp'
    $script:Training = Get-Content -Raw (Join-Path $script:TinyWp 'training.json') | ConvertFrom-Json
}
AfterAll { Get-CalmModel | Where-Object Name -like 'quant-*' | Remove-CalmModel -Confirm:$false }

Describe 'Import-CalmModel -DType' {
    BeforeAll {
        $script:Bf16 = Import-CalmModel $script:TinyWp -Device Cpu -Name quant-bf16
    }
    AfterAll { Remove-CalmModel -Model quant-bf16 -Confirm:$false -ErrorAction Ignore }

    It 'imports tiny-wp as <dtype>, reports the quantized size and generates' -ForEach @(
        @{ DType = 'fp8'; BytesPerWeight = 1 }
        @{ DType = 'int4'; BytesPerWeight = 0.5625 }
    ) {
        $m = Import-CalmModel $script:TinyWp -Device Cpu -DType $DType -Name "quant-$DType"
        try {
            $m.DType | Should -Be $DType
            $m.Device | Should -Be 'Cpu'
            # Sizes from the shape: embedding and norms stay bf16; the projections and the (tied) classifier's own
            # copy are quantized (fp8: 1 byte + 4 per row; int4: 0.5 byte + 2 per group of 32).
            $d = $m.HiddenSize; $f = 768; $kv = $m.KvHeads * $m.HeadDim
            $proj = $m.Layers * (2 * $d * $d + 2 * $kv * $d + 3 * $f * $d) + $m.Vocab * $d
            $kept = $script:Bf16.WeightBytes - 2 * ($proj - $m.Vocab * $d)
            $rows = $m.Layers * (2 * $d + 2 * $kv + 2 * $f + $d) + $m.Vocab
            $want = if ($DType -eq 'fp8') { $kept + $proj + 4 * $rows } else { $kept + $proj / 2 + $proj / 32 * 2 }
            $m.WeightBytes | Should -Be $want
            $m.WeightBytes | Should -BeLessThan $script:Bf16.WeightBytes
            $ids = $script:Training.greedy.ids
            $r = Invoke-CalmGenerate -Prompt $script:Training.greedy.prompt -Model $m -MaxTokens 8 -Temperature 0
            $r.GeneratedTokens | Should -Be 8
            $r.GetTokenIds()[0..2] | Should -Be $ids[0..2]
            $r.Text | Should -Not -BeNullOrEmpty
        }
        finally { Remove-CalmModel -Model $m -Confirm:$false }
    }
    It 'accepts the alias e4m3 for fp8' {
        $m = Import-CalmModel $script:TinyWp -Device Cpu -DType e4m3 -Name quant-alias
        try { $m.DType | Should -Be 'fp8' } finally { Remove-CalmModel -Model $m -Confirm:$false }
    }
    It 'refuses an unknown -DType before loading, naming the valid ones' {
        $before = @(Get-CalmModel).Count
        { Import-CalmModel $script:TinyWp -Device Cpu -DType int3 -Name quant-bad } | Should -Throw -ErrorId 'Calm.InvalidArgument,*'
        try { Import-CalmModel $script:TinyWp -Device Cpu -DType int3 -ErrorAction Stop } catch { $_.Exception.Message | Should -Match 'fp8 or int4' }
        @(Get-CalmModel).Count | Should -Be $before
    }
    It 'refuses a float -DType other than the checkpoint''s own' {
        { Import-CalmModel $script:TinyWp -Device Cpu -DType f32 -Name quant-f32 } | Should -Throw -ErrorId 'Calm.InvalidArgument,*'
        Get-CalmModel -Name quant-f32 -ErrorAction Ignore | Should -BeNullOrEmpty
    }
    It 'refuses -Device Cuda with a quantized dtype where there is no GPU, before loading, with Calm.DeviceNotAvailable' -Skip:$script:HasGpu {
        $before = @(Get-CalmModel).Count
        { Import-CalmModel $script:TinyWp -Device Cuda -DType fp8 -Name quant-gpu } | Should -Throw -ErrorId 'Calm.DeviceNotAvailable,*'
        { New-CalmModel -Preset tiny -Device Cuda -DType int4 -Name quant-gpu } | Should -Throw -ErrorId 'Calm.DeviceNotAvailable,*'
        @(Get-CalmModel).Count | Should -Be $before
    }
    It 'completes -DType with the quantized types' {
        (TabExpansion2 -inputScript 'Import-CalmModel x -DType ' -cursorColumn 26).CompletionMatches.CompletionText |
            Should -Be @('bf16', 'f16', 'f32', 'fp8', 'int4')
    }
}

Describe 'New-CalmModel -DType' {
    It 'makes the tiny preset with int4 weights that run' {
        $m = New-CalmModel -Preset tiny -DType int4 -Device Cpu -Name quant-tiny
        try {
            $m.DType | Should -Be 'int4'
            $bf = New-CalmModel -Preset tiny -DType bf16 -Device Cpu -Name quant-tiny-bf16
            try { $m.WeightBytes | Should -BeLessThan $bf.WeightBytes } finally { Remove-CalmModel -Model $bf -Confirm:$false }
            $r = Invoke-CalmGenerate -TokenId 1, 2, 3 -Model $m -MaxTokens 4 -Temperature 0
            $r.GeneratedTokens | Should -Be 4
        }
        finally { Remove-CalmModel -Model $m -Confirm:$false }
    }
    It 'refuses an unknown -DType' {
        { New-CalmModel -Preset tiny -DType fp4 -Device Cpu } | Should -Throw -ErrorId 'Calm.InvalidArgument,*'
    }
}

Describe 'Import-CalmModel of a pre-quantized fp8 checkpoint' {
    BeforeAll {
        $script:Work = Join-Path ([IO.Path]::GetTempPath()) "calm-fp8-ckpt-$PID"
        New-Item -ItemType Directory -Force $script:Work | Out-Null
        # A: a tiny f32 llama folder (tied embeddings). B: A as an fp8 checkpoint in the compressed-tensors format
        # (llm-compressor's FP8_DYNAMIC layout), quantized by this script with Calm's rule: per output row
        # s = absmax / 448 (F32 weight_scale [R, 1]), q = e4m3(w / s). Importing B must give the model that
        # Import-CalmModel A -DType fp8 makes.
        $script:A = New-ModelFolder -Root $script:Work -Name 'ckpt-f32'
        $script:B = Join-Path $script:Work 'ckpt-fp8'
        New-Item -ItemType Directory -Force $script:B | Out-Null
        $file = [IO.File]::ReadAllBytes((Join-Path $script:A 'model.safetensors'))
        $n = [BitConverter]::ToUInt64($file, 0)
        $header = [Text.Encoding]::UTF8.GetString($file, 8, $n) | ConvertFrom-Json -AsHashtable
        $base = 8 + $n
        $out = [Collections.Generic.List[object]]::new()
        function Add-Tensor([string] $name, [string] $dtype, [long[]] $shape, [byte[]] $bytes) {
            $out.Add([pscustomobject]@{ Name = $name; DType = $dtype; Shape = $shape; Offsets = $null; Bytes = $bytes })
        }
        foreach ($name in @($header.Keys | Where-Object { $_ -ne '__metadata__' })) {
            $h = $header[$name]; $o = $h.data_offsets
            $bytes = [byte[]]::new($o[1] - $o[0]); [Array]::Copy($file, $base + $o[0], $bytes, 0, $bytes.Length)
            if ($name -notmatch '_proj\.weight$') { Add-Tensor $name $h.dtype $h.shape $bytes; continue }
            $rows = $h.shape[0]; $cols = $h.shape[1]
            $q = [byte[]]::new($rows * $cols); $scales = [float[]]::new($rows)
            for ($r = 0; $r -lt $rows; $r++) {
                $amax = [float]0
                for ($c = 0; $c -lt $cols; $c++) { $amax = [Math]::Max($amax, [Math]::Abs([BitConverter]::ToSingle($bytes, 4 * ($r * $cols + $c)))) }
                $s = if ($amax -gt 0) { [float]($amax / [float]448) } else { [float]1 }
                $scales[$r] = $s
                for ($c = 0; $c -lt $cols; $c++) { $q[$r * $cols + $c] = [Calm.Engine.Quant.QuantFormats]::FloatToE4M3([float]([BitConverter]::ToSingle($bytes, 4 * ($r * $cols + $c)) / $s)) }
            }
            $sb = [byte[]]::new(4 * $rows); [Buffer]::BlockCopy($scales, 0, $sb, 0, $sb.Length)
            Add-Tensor $name 'F8_E4M3' @($rows, $cols) $q
            Add-Tensor ($name -replace 'weight$', 'weight_scale') 'F32' @($rows, 1) $sb
        }
        Write-SafetensorsFile -Path (Join-Path $script:B 'model.safetensors') -Tensors $out
        $config = Get-Content -Raw (Join-Path $script:A 'config.json') | ConvertFrom-Json -AsHashtable
        $config['quantization_config'] = [ordered]@{
            quant_method = 'compressed-tensors'; format = 'float-quantized'; ignore = @('lm_head')
            config_groups = @{ group_0 = @{ targets = @('Linear'); weights = @{ num_bits = 8; type = 'float'; strategy = 'channel'; symmetric = $true; dynamic = $false } } }
        }
        $config | ConvertTo-Json -Depth 8 | Set-Content -LiteralPath (Join-Path $script:B 'config.json') -Encoding utf8
    }
    AfterAll {
        Get-CalmModel | Where-Object Name -like 'fp8ckpt-*' | Remove-CalmModel -Confirm:$false
        Remove-Item -Recurse -Force $script:Work -ErrorAction Ignore
    }

    It 'imports as fp8 with no -DType and generates exactly what -DType fp8 of the unquantized folder generates' {
        $b = Import-CalmModel $script:B -Device Cpu -Name fp8ckpt-b
        $a = Import-CalmModel $script:A -Device Cpu -DType fp8 -Name fp8ckpt-a
        $b.DType | Should -Be 'fp8'
        $b.WeightBytes | Should -Be $a.WeightBytes
        $ta = (Invoke-CalmGenerate -Model $a -TokenId 1, 7, 3 -MaxTokens 12 -Temperature 0).GetTokenIds()
        $tb = (Invoke-CalmGenerate -Model $b -TokenId 1, 7, 3 -MaxTokens 12 -Temperature 0).GetTokenIds()
        $tb | Should -Be $ta
        $ta.Count | Should -Be 12
    }
    It 'takes -DType int4 to requantize it' {
        $m = Import-CalmModel $script:B -Device Cpu -DType int4 -Name fp8ckpt-int4
        $m.DType | Should -Be 'int4'
        (Invoke-CalmGenerate -Model $m -TokenId 1, 7, 3 -MaxTokens 4 -Temperature 0).GeneratedTokens | Should -Be 4
    }
    It 'refuses a checkpoint quantized another way with Calm.QuantizationNotSupported, before reading weights, leaving the session as it was' {
        $dir = Join-Path $script:Work 'ckpt-gptq'
        New-Item -ItemType Directory -Force $dir | Out-Null
        $config = Get-Content -Raw (Join-Path $script:A 'config.json') | ConvertFrom-Json -AsHashtable
        $config['quantization_config'] = @{ quant_method = 'gptq'; bits = 4; group_size = 128 }
        $config | ConvertTo-Json -Depth 5 | Set-Content -LiteralPath (Join-Path $dir 'config.json') -Encoding utf8
        $before = Get-LoadedNames
        $err = $null
        try { Import-CalmModel $dir -Device Cpu -Name fp8ckpt-gptq -ErrorAction Stop } catch { $err = $_ }
        $err | Should -Not -BeNullOrEmpty
        $err.FullyQualifiedErrorId | Should -BeLike 'Calm.QuantizationNotSupported,*'
        $err.Exception.Message | Should -Match "'gptq'"
        $err.Exception.Message | Should -Match '-DType fp8 or int4'
        $err.ErrorDetails.RecommendedAction | Should -Match 'Import-CalmModel -DType fp8 or int4'
        Get-LoadedNames | Should -Be $before
    }
}

Describe 'Quantized weights on an NVIDIA GPU' -Tag 'GPU' -Skip:(-not $script:HasGpu) {
    AfterEach { Get-CalmModel | Where-Object Name -like 'quant-gpu-*' | Remove-CalmModel -Confirm:$false }

    It 'Import-CalmModel ./models/tiny-wp -Device Cuda -DType <DType> runs on the GPU, as large as on the CPU, and generates' -ForEach @(
        @{ DType = 'fp8' }
        @{ DType = 'int4' }
    ) {
        $cpu = Import-CalmModel $script:TinyWp -Device Cpu -DType $DType -Name "quant-gpu-cpu-$DType"
        $m = Import-CalmModel $script:TinyWp -Device Cuda -DType $DType -Name "quant-gpu-$DType"
        $m.Device | Should -Be 'Cuda'
        $m.DType | Should -Be $DType
        $m.WeightBytes | Should -Be $cpu.WeightBytes
        $ids = $script:Training.greedy.ids
        $r = Invoke-CalmGenerate -Prompt $script:Training.greedy.prompt -Model $m -MaxTokens 8 -Temperature 0
        $r.GeneratedTokens | Should -Be 8
        $r.GetTokenIds()[0..2] | Should -Be $ids[0..2]
        $r.Text | Should -Not -BeNullOrEmpty
        $rc = Invoke-CalmGenerate -Prompt $script:Training.greedy.prompt -Model $cpu -MaxTokens 3 -Temperature 0
        $r.GetTokenIds()[0..2] | Should -Be $rc.GetTokenIds()[0..2] -Because 'the GPU runs the same quantized weights as the CPU'
    }
    It 'New-CalmModel -Device Cuda -DType int4 makes the tiny preset on the GPU and generates' {
        $m = New-CalmModel -Preset tiny -DType int4 -Device Cuda -Name quant-gpu-tiny
        $m.Device | Should -Be 'Cuda'
        $m.DType | Should -Be 'int4'
        $r = Invoke-CalmGenerate -TokenId 1, 2, 3 -Model $m -MaxTokens 4 -Temperature 0
        $r.GeneratedTokens | Should -Be 4
    }
}
