# Speed-of-light cmdlets on the CPU with the tiny preset: arithmetic, measurements, breakdown, llama-bench columns,
# Export-Csv / ConvertTo-Json, the HTML report, the examples and the bench script.
BeforeAll {
    . (Join-Path $PSScriptRoot 'CalmTestHelpers.ps1')
    Import-CalmForTest
    Get-CalmModel | Remove-CalmModel -Confirm:$false
    $script:Tmp = Join-Path ([IO.Path]::GetTempPath()) "calm-sol-$PID-$(Get-Random)"
    New-Item -ItemType Directory -Path $script:Tmp | Out-Null
    # A small measured CPU bandwidth: the session's default denominator from here on.
    $script:Bw = Measure-CalmBandwidth -Device Cpu -BufferBytes 64MB -Repeat 3
}
AfterAll {
    Get-CalmModel | Remove-CalmModel -Confirm:$false
    Remove-Item -Recurse -Force $script:Tmp -ErrorAction Ignore
}

Describe 'Get-CalmPreset' {
    It 'lists the real shapes with published parameter counts' {
        $p = Get-CalmPreset
        foreach ($n in 'Llama-2-7B', 'Llama-3-8B', 'Llama-3.2-1B', 'Llama-3.2-3B', 'Llama-3.1-70B', 'Mistral-7B', 'Mixtral-8x7B', 'Qwen2.5-7B', 'Qwen2.5-32B', 'Qwen3-8B', 'Gemma-7B', 'Phi-3-mini', 'Phi-3-medium') {
            $p.Name | Should -Contain $n
        }
        foreach ($r in $p) { ($r.Parameters / 1e9) | Should -BeGreaterThan ($r.PublishedBillions * 0.985) -Because $r.Name; ($r.Parameters / 1e9) | Should -BeLessThan ($r.PublishedBillions * 1.015) -Because $r.Name }
        $l3 = Get-CalmPreset Llama-3-8B
        $l3.KvHeads | Should -Be 8; $l3.HeadDim | Should -Be 128; $l3.Vocab | Should -Be 128256; $l3.BytesBf16 | Should -Be ($l3.Parameters * 2)
        (Get-CalmPreset 'Qwen*').Name | Should -Be @('Qwen2.5-7B', 'Qwen2.5-32B', 'Qwen3-8B')
        { Get-CalmPreset 'no-such' -ErrorAction Stop } | Should -Throw -ErrorId 'Calm.PresetUnknown,*'
    }
    It 'a preset too large for host memory is refused before allocating' {
        { New-CalmModel -Preset Llama-3.1-70B -DType f32 -Device Cpu } | Should -Throw -ErrorId 'Calm.PresetTooLarge,*'
        Get-CalmModel | Should -BeNullOrEmpty
    }
}

Describe 'Get-CalmSpeedOfLight' {
    It 'Llama-3-8B bf16 by hand, one row per context' {
        $r = Get-CalmSpeedOfLight -Preset Llama-3-8B -Context 0, 4096 -BandwidthGBps 4800
        $r.Count | Should -Be 2
        $layer = 4096L * 4096 * 2 + 1024L * 4096 * 2 + 3L * 14336 * 4096 + 2 * 4096
        $w = (32 * $layer + 4096 + 4096 + 128256L * 4096) * 2
        $r[0].WeightBytes | Should -Be $w
        $r[1].KvBytesPerToken | Should -Be (32 * 2 * 8 * 128 * 2)
        $r[1].BytesPerToken | Should -Be ($w + 131072L * 4096)
        $r[0].SolTokensPerSecond | Should -BeGreaterThan (4800e9 / $w * 0.999999)
        $r[0].SolTokensPerSecond | Should -BeLessThan (4800e9 / $w * 1.000001)
        $r[0].BandwidthSource | Should -Be 'Given'
    }
    It 'explicit dims equal the preset; -KvCacheDType fp8 halves the KV bytes (plus one f32 scale per row)' {
        $a = Get-CalmSpeedOfLight -Layers 32 -Hidden 4096 -Intermediate 14336 -Heads 32 -KvHeads 8 -Vocab 128256 -Context 1000 -BandwidthGBps 1000
        $b = Get-CalmSpeedOfLight -Preset Llama-3-8B -Context 1000 -BandwidthGBps 1000
        $a.BytesPerToken | Should -Be $b.BytesPerToken
        (Get-CalmSpeedOfLight -Preset Llama-3-8B -KvCacheDType fp8 -BandwidthGBps 1000).KvBytesPerToken | Should -Be (65536 + 32 * 2 * 8 * 4)
    }
    It '-Device Cpu uses the bandwidth measured this session and says so' {
        $r = Get-CalmSpeedOfLight -Preset Llama-3.2-1B -Device Cpu
        $r.BandwidthSource | Should -Be 'Measured'
        $r.BandwidthGBps | Should -Be $script:Bw.MedianGBps
    }
    It 'takes presets and loaded models from the pipeline' {
        (Get-CalmPreset 'Llama-3*' | Get-CalmSpeedOfLight -BandwidthGBps 100).Model | Should -Be @('Llama-3-8B', 'Llama-3.1-8B', 'Llama-3.2-1B', 'Llama-3.2-3B', 'Llama-3.1-70B')
        $m = New-CalmModel -Preset tiny -Device Cpu -ContextLength 64
        try {
            $r = $m | Get-CalmSpeedOfLight -Context 0, 10
            $r.KvDType | Should -Be @('f32', 'f32')
            $r[1].KvBytesPerToken | Should -Be (4 * 2 * 4 * 32 * 4)
        } finally { $m | Remove-CalmModel -Confirm:$false }
    }
    It 'bad input is a Calm error' {
        { Get-CalmSpeedOfLight -Preset tiny -DType bf17 -BandwidthGBps 1 } | Should -Throw -ErrorId 'Calm.InvalidArgument,*'
        { Get-CalmSpeedOfLight -Preset tiny -BandwidthGBps -5 } | Should -Throw -ErrorId 'Calm.InvalidArgument,*'
        { Get-CalmSpeedOfLight -Preset tiny -Device Tpu } | Should -Throw -ErrorId 'Calm.InvalidArgument,*'
    }
}

Describe 'Measure-CalmBandwidth and Measure-CalmKernel' {
    It 'CPU read bandwidth: median between min and max, spread, buffer' {
        $b = $script:Bw
        $b.Kind | Should -Be 'Read'; $b.DeviceKind | Should -Be 'Cpu'
        $b.Repetitions | Should -Be 3
        $b.MedianGBps | Should -BeGreaterThan 0
        $b.MinGBps | Should -BeLessOrEqual $b.MedianGBps; $b.MaxGBps | Should -BeGreaterOrEqual $b.MedianGBps
        $b.BufferBytes | Should -BeGreaterOrEqual 60MB
        ($b.Samples -split ';').Count | Should -Be 3
        { Measure-CalmBandwidth -Device Cpu -Kind Copy -BufferBytes 8MB -Repeat 1 } | Should -Throw -ErrorId 'Calm.InvalidArgument,*'
    }
    It 'matvec and attention GB/s against the measured bandwidth' {
        $k = Measure-CalmKernel -Rows 512 -Cols 1024 -DType bf16 -Device Cpu -Repeat 5
        $k.Bytes | Should -Be (512 * 1024 * 2)
        $k.GBps | Should -BeGreaterThan 0
        $k.BandwidthSource | Should -Be 'Measured'
        [math]::Abs($k.PercentOfBandwidth - $k.GBps / $script:Bw.MedianGBps * 100) | Should -BeLessThan 1e-6
        $a = Measure-CalmKernel -Attention -Context 512 -Heads 8 -KvHeads 2 -HeadDim 64 -Device Cpu -Repeat 3
        $a.Bytes | Should -Be (2 * 512 * 2 * 64 * 4)
        $a.Kernel | Should -Be 'Attention'
    }
    It 'the quantized matvecs: bytes are the values plus the scales, the dtype is named as Calm names it' {
        $f = Measure-CalmKernel -Rows 512 -Cols 1000 -DType e4m3 -Device Cpu -Repeat 3
        $f.DType | Should -Be 'fp8'
        $f.Bytes | Should -Be (512 * 1000 + 512 * 4)                       # one fp32 scale per row
        $q = Measure-CalmKernel -Rows 512 -Cols 1000 -DType int4 -Device Cpu -Repeat 3
        $q.DType | Should -Be 'int4'
        $q.Bytes | Should -Be (512 * 32 * 16 + 512 * 32 * 2)               # rows padded to 32 groups of 16 bytes + fp16 scales
        $f.GBps, $q.GBps | ForEach-Object { $_ | Should -BeGreaterThan 0 }
        { Measure-CalmKernel -Rows 8 -Cols 8 -DType q8 -Device Cpu } | Should -Throw -ErrorId 'Calm.InvalidArgument,*'
    }
    It 'a GPU measurement without a GPU is Calm.DeviceNotAvailable' -Skip:([bool](Get-Command nvidia-smi -ErrorAction Ignore)) {
        { Measure-CalmBandwidth -Device Cuda } | Should -Throw -ErrorId 'Calm.DeviceNotAvailable,*'
    }
}

Describe 'Measure-CalmSpeedOfLight on the tiny model' {
    BeforeAll {
        $script:M = New-CalmModel -Preset tiny -Device Cpu -ContextLength 400
        $script:Rows = Measure-CalmSpeedOfLight -Model $script:M -Context 0, 256 -Tokens 4 -Repeat 2 -PromptTokens 32 -Breakdown
    }
    AfterAll { $script:M | Remove-CalmModel -Confirm:$false }
    It 'one decode row per context, prefill separately, five stages per context' {
        $pts = $script:Rows | Where-Object { $_ -is [Calm.Engine.SpeedOfLight.SolMeasurement] }
        $dec = $pts | Where-Object Phase -EQ 'Decode'
        $pre = $pts | Where-Object Phase -EQ 'Prefill'
        $st = $script:Rows | Where-Object { $_ -is [Calm.Engine.SpeedOfLight.SolStageMeasurement] }
        $dec.Context | Should -Be @(0, 256)
        $pre.PromptTokens | Should -Be 32
        $pre.TimeToFirstTokenMs | Should -BeGreaterThan 0
        $st.Count | Should -Be 10
        ($st | Where-Object Context -EQ 256).Stage | Should -Be @('AttentionProjections', 'Ffn', 'Classifier', 'Attention', 'Other')
        foreach ($d in $dec) {
            $d.TokensPerSecond | Should -BeGreaterThan 0
            $d.BandwidthSource | Should -Be 'Measured'
            [math]::Abs($d.PercentOfSol - $d.TokensPerSecond / $d.SolTokensPerSecond * 100) | Should -BeLessThan 1e-6
            [math]::Abs($d.AchievedGBps - $d.BytesPerToken * $d.TokensPerSecond / 1e9) | Should -BeLessThan 1e-6
        }
        ($dec[1].BytesPerToken - $dec[0].BytesPerToken) | Should -Be (256 * $dec[0].KvBytesPerToken)
    }
    It 'pipes into Export-Csv and ConvertTo-Json' {
        $csv = Join-Path $script:Tmp 'rows.csv'
        $pts = $script:Rows | Where-Object { $_ -is [Calm.Engine.SpeedOfLight.SolMeasurement] }
        $pts | Export-Csv $csv -NoTypeInformation
        $back = Import-Csv $csv
        $back.Count | Should -Be 3
        [double]$back[1].TokensPerSecond | Should -Be ([double]$pts[1].TokensPerSecond.ToString('R'))
        $j = ($pts | Where-Object Phase -EQ 'Decode') | ConvertTo-Json | ConvertFrom-Json
        $j[1].Context | Should -Be 256
        $j[0].PSObject.Properties.Name | Should -Contain 'SolTokensPerSecond'
        # the kernel switches column is there for sweeps (empty on the CPU: no kernels to switch)
        (Import-Csv $csv)[0].PSObject.Properties.Name | Should -Contain 'KernelSwitches'
        $pts.KernelSwitches | Should -Be @('', '', '')
    }
    It '-LlamaBench gives llama-bench column names' {
        $l = Measure-CalmSpeedOfLight -Model $script:M -Context 16 -Tokens 3 -Repeat 2 -PromptTokens 8 -LlamaBench
        foreach ($c in 'n_prompt', 'n_gen', 'n_depth', 'avg_ts', 'stddev_ts', 'model_size', 'model_n_params') { $l[0].PSObject.Properties.Name | Should -Contain $c }
        $l[1].n_depth | Should -Be 16; $l[1].n_gen | Should -Be 3; $l[0].n_prompt | Should -Be 8
        $l[0].model_n_params | Should -Be $script:M.Parameters
    }
    It 'a context deeper than the cache is a clear error before measuring' {
        { Measure-CalmSpeedOfLight -Model $script:M -Context 399 -Tokens 4 } | Should -Throw -ErrorId 'Calm.ContextOverflow,*'
    }
    It '-Preset makes a synthetic model for the run and frees it' {
        $r = Measure-CalmSpeedOfLight -Preset tiny -Device Cpu -DType f32 -Context 8 -Tokens 2 -Repeat 1
        $r.DType | Should -Be 'f32'
        (Get-CalmModel).Name | Should -Not -Contain $r.Model
    }
    It 'Ctrl+C (a stopped pipeline) stops a long run, with the points already measured emitted' {
        $ps = [powershell]::Create()
        $null = $ps.AddScript("Import-Module '$((Join-Path $PSScriptRoot '../Calm.psd1'))'; Measure-CalmSpeedOfLight -Preset tiny -Device Cpu -BandwidthGBps 10 -Context (0..200) -Tokens 4 -Repeat 1")
        $out = [System.Management.Automation.PSDataCollection[psobject]]::new()
        $h = $ps.BeginInvoke([System.Management.Automation.PSDataCollection[psobject]]::new(), $out)
        $deadline = (Get-Date).AddSeconds(60)
        while ($out.Count -lt 2 -and (Get-Date) -lt $deadline) { Start-Sleep -Milliseconds 50 }
        $ps.Stop()
        $out.Count | Should -BeGreaterOrEqual 2
        $out.Count | Should -BeLessThan 201
        $out[0].Context | Should -Be 0
        $ps.Dispose()
    }
}

Describe 'Export-CalmReport' {
    It 'writes one self-contained, well-formed XHTML file with the measured series' {
        $m = New-CalmModel -Preset tiny -Device Cpu -ContextLength 300
        try { $rows = @($script:Bw) + @(Measure-CalmSpeedOfLight -Model $m -Context 0, 128 -Tokens 3 -Repeat 1 -Breakdown) }
        finally { $m | Remove-CalmModel -Confirm:$false }
        $path = Join-Path $script:Tmp 'r.html'
        $f = $rows | Export-CalmReport -Path $path -Title 'tiny <test>' -PassThru
        $f.FullName | Should -Be $path
        $text = Get-Content -Raw $path
        $text | Should -Not -Match '<script'
        $settings = [System.Xml.XmlReaderSettings]::new(); $settings.DtdProcessing = 'Ignore'
        $doc = [System.Xml.XmlDocument]::new()
        $doc.Load([System.Xml.XmlReader]::Create([IO.StringReader]::new($text), $settings))
        $ns = [System.Xml.XmlNamespaceManager]::new($doc.NameTable); $ns.AddNamespace('s', 'http://www.w3.org/2000/svg'); $ns.AddNamespace('h', 'http://www.w3.org/1999/xhtml')
        $doc.SelectSingleNode('//h:title', $ns).InnerText | Should -Be 'tiny <test>'
        $doc.SelectNodes('//s:svg', $ns).Count | Should -Be 2
        $meas = $doc.SelectNodes("//s:polyline[@class='measured']", $ns)
        $meas.Count | Should -Be 1
        $meas[0].GetAttribute('points').Split(' ').Count | Should -Be 2
        $doc.SelectNodes("//s:rect[@class='stage']", $ns).Count | Should -Be 10
        $cells = $doc.SelectNodes("//h:table[@data-section='Decode']//h:td", $ns) | ForEach-Object InnerText
        $pts = $rows | Where-Object { $_ -is [Calm.Engine.SpeedOfLight.SolMeasurement] }
        foreach ($d in ($pts | Where-Object Phase -EQ 'Decode')) { $cells | Should -Contain $d.TokensPerSecond.ToString($(if ($d.TokensPerSecond -ge 100) { '0.#' } else { '0.###' }), [cultureinfo]::InvariantCulture) }
        # CSV rows (strings) draw the same chart.
        $csv = Join-Path $script:Tmp 'r.csv'
        $pts | Export-Csv $csv -NoTypeInformation
        Import-Csv $csv | Export-CalmReport -Path (Join-Path $script:Tmp 'r2.html')
        (Get-Content -Raw (Join-Path $script:Tmp 'r2.html')) | Should -Match "class=`"measured`""
    }
    It 'a missing folder is Calm.PathNotFound' {
        { $script:Bw | Export-CalmReport -Path (Join-Path $script:Tmp 'no/such/dir/r.html') } | Should -Throw -ErrorId 'Calm.PathNotFound,*'
    }
}

Describe 'Examples and the bench script run on the CPU with the tiny preset' {
    BeforeAll { $script:Ex = Join-Path $PSScriptRoot '../examples' }
    It 'SolContextSweep.ps1 writes a CSV' {
        $csv = Join-Path $script:Tmp 'sweep.csv'
        $r = & (Join-Path $script:Ex 'SolContextSweep.ps1') -Preset tiny -Device Cpu -Context 0, 64 -Tokens 2 -Repeat 1 -Path $csv 6>$null
        (Import-Csv $csv).Context | Should -Be @('0', '64')
        $r.Count | Should -Be 2
    }
    It 'SolDTypeComparison.ps1 measures each dtype (quantized ones too) and adds the what-ifs' {
        $r = & (Join-Path $script:Ex 'SolDTypeComparison.ps1') -Preset tiny -Device Cpu -DType bf16, fp8 -WhatIfDType int4, f32 -Context 0 -Tokens 2 -Repeat 1 6>$null
        $measured = @($r | Where-Object Kind -EQ 'Measured')
        $measured.DType | Should -Be @('bf16', 'fp8')
        $measured | ForEach-Object { $_.TokensPerSecond | Should -BeGreaterThan 0 }
        ($measured | Where-Object DType -EQ 'fp8').GBPerToken | Should -BeLessThan ($measured | Where-Object DType -EQ 'bf16').GBPerToken
        ($r | Where-Object Kind -EQ 'WhatIf').DType | Should -Be @('int4', 'f32')
    }
    It 'SolWhatIfPresets.ps1 tabulates every real preset' {
        $r = & (Join-Path $script:Ex 'SolWhatIfPresets.ps1') -Device Cpu -Context 0 -BandwidthGBps 50 6>$null
        $r.Count | Should -Be ((Get-CalmPreset).Count - 1)
        ($r | Where-Object Model -EQ 'Llama-3-8B').SolTokensPerSecond | Should -BeGreaterThan 2.9
    }
    It 'SolReport.ps1 writes a report' {
        $p = Join-Path $script:Tmp 'ex.html'
        $f = & (Join-Path $script:Ex 'SolReport.ps1') -Preset tiny -Device Cpu -Context 0, 32 -Tokens 2 -Repeat 1 -PromptTokens 16 -Path $p 6>$null
        Test-Path $p | Should -BeTrue
        Get-Content -Raw $p | Should -Match 'class="stage"'
    }
    It 'bench/SpeedOfLight.Bench.ps1 degrades to the CPU and writes its files' {
        $o = Join-Path $script:Tmp 'bench'
        & (Join-Path $PSScriptRoot '../bench/SpeedOfLight.Bench.ps1') -OutputFolder $o -Cpu -Context 0, 32 -Tokens 2 -Repeat 1 -PromptTokens 8 6>$null | Out-Null
        foreach ($f in 'bandwidth.csv', 'speed-of-light.csv', 'stages.csv', 'speed-of-light.json', 'llama-bench-columns.csv', 'RESULTS.md', 'report.html') { Join-Path $o $f | Should -Exist }
        (Import-Csv (Join-Path $o 'stages.csv')).Count | Should -Be 10
    }
}
