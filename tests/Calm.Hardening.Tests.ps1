# Hardening (issue 7) through the cmdlets: bad model folders (the cases Calm.Import.Tests.ps1 does not cover), Ctrl+C
# during an import, 50 import/remove cycles without growth, two runspaces on one model, a model folder that tries to
# reach outside itself, caches only under the cache folder, completion, -Verbose, and the packaged module.
BeforeAll {
    . (Join-Path $PSScriptRoot 'CalmTestHelpers.ps1')
    Import-CalmForTest
    $script:Work = Join-Path ([IO.Path]::GetTempPath()) "calm-hardening-tests-$PID"
    New-Item -ItemType Directory -Force $script:Work | Out-Null
    $script:TinyWp = Join-Path $script:RepoRoot 'models/tiny-wp'

    function Set-HeaderBytes([string] $File, [byte[]] $Header) {
        # Replaces the JSON header of a safetensors file (keeps the data section) and fixes the length prefix.
        $all = [IO.File]::ReadAllBytes($File)
        $n = [BitConverter]::ToUInt64($all, 0)
        $data = $all[(8 + $n)..($all.Length - 1)]
        $fs = [IO.File]::Create($File)
        try {
            $fs.Write([BitConverter]::GetBytes([uint64]$Header.Length), 0, 8)
            $fs.Write($Header, 0, $Header.Length)
            $fs.Write($data, 0, $data.Length)
        }
        finally { $fs.Dispose() }
    }
    function Get-HeaderText([string] $File) {
        $all = [IO.File]::ReadAllBytes($File)
        $n = [BitConverter]::ToUInt64($all, 0)
        [Text.Encoding]::UTF8.GetString($all, 8, $n)
    }
    function Set-Config([string] $Dir, [scriptblock] $Change) {
        $c = Get-Content -Raw (Join-Path $Dir 'config.json') | ConvertFrom-Json -AsHashtable
        & $Change $c
        $c | ConvertTo-Json -Depth 5 | Set-Content -LiteralPath (Join-Path $Dir 'config.json') -Encoding utf8
    }
    function Get-MemorySample {
        # Working set and private memory after a full, compacting collection (finalizers run: mapped files closed).
        [GC]::Collect(); [GC]::WaitForPendingFinalizers(); [GC]::Collect()
        $p = [Diagnostics.Process]::GetCurrentProcess()
        $p.Refresh()
        [pscustomobject]@{ WorkingSet = $p.WorkingSet64; Private = $p.PrivateMemorySize64 }
    }
    function Get-Median([double[]] $Values) {
        $a = [double[]]$Values.Clone(); [Array]::Sort($a); $n = $a.Length
        if ($n % 2) { $a[[int](($n - 1) / 2)] } else { ($a[[int]($n / 2) - 1] + $a[[int]($n / 2)]) / 2 }
    }
}
AfterAll {
    Get-CalmModel | Remove-CalmModel -Confirm:$false
    Remove-Item -Recurse -Force -ErrorAction Ignore $script:Work
}

Describe 'Bad model files through Import-CalmModel' {
    BeforeEach { $script:Before = Get-LoadedNames }
    AfterEach {
        Get-LoadedNames | Should -Be $script:Before -Because 'nothing half-loaded may stay in the session'
        # and the session still imports
        $ok = New-CalmModel tiny -Device Cpu -Name 'after-bad-input'
        $ok.Name | Should -Be 'after-bad-input'
        Remove-CalmModel -Name 'after-bad-input'
    }

    It 'an absurd header length (2^63-1, 2^40): Calm.Safetensors.HeaderTooLarge' {
        foreach ($len in @(([uint64]::MaxValue -shr 1), ([uint64]1 -shl 40))) {
            $dir = New-ModelFolder -Root $script:Work -Name "header-absurd-$len"
            $fs = [IO.File]::Open((Join-Path $dir 'model.safetensors'), 'Open')
            try { $fs.Write([BitConverter]::GetBytes([uint64]$len), 0, 8) } finally { $fs.Dispose() }
            { Import-CalmModel -LiteralPath $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.Safetensors.HeaderTooLarge,*'
        }
    }
    It 'a header length within a huge (sparse) file but beyond any real header: refused before allocating it' {
        $dir = New-ModelFolder -Root $script:Work -Name 'header-huge-in-file'
        $file = Join-Path $dir 'model.safetensors'
        $fs = [IO.File]::Open($file, 'Open')
        try {
            $fs.SetLength(3GB)                                          # sparse on Linux: no disk is used
            $fs.Write([BitConverter]::GetBytes([uint64]2.5GB), 0, 8)
        }
        finally { $fs.Dispose() }
        $before = [GC]::GetTotalAllocatedBytes($true)
        { Import-CalmModel -LiteralPath $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.Safetensors.HeaderTooLarge,*'
        ([GC]::GetTotalAllocatedBytes($true) - $before) | Should -BeLessThan 100MB -Because 'the 2.5 GB header must not be read into memory'
        Remove-Item -Force $file
    }
    It 'a header that is not JSON: Calm.Safetensors.HeaderInvalid' {
        $dir = New-ModelFolder -Root $script:Work -Name 'header-not-json'
        Set-HeaderBytes (Join-Path $dir 'model.safetensors') ([Text.Encoding]::ASCII.GetBytes('this is not json at all!'))
        { Import-CalmModel -LiteralPath $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.Safetensors.HeaderInvalid,*'
    }
    It 'a header that is not UTF-8: Calm.Safetensors.HeaderInvalid' {
        $dir = New-ModelFolder -Root $script:Work -Name 'header-not-utf8'
        $file = Join-Path $dir 'model.safetensors'
        $bytes = [Text.Encoding]::UTF8.GetBytes((Get-HeaderText $file))
        $i = [Array]::IndexOf($bytes, [byte][char]'p')   # inside "pt" of __metadata__ or a tensor name
        $bytes[$i] = 0xFF; $bytes[$i + 1] = 0xFE
        Set-HeaderBytes $file $bytes
        { Import-CalmModel -LiteralPath $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.Safetensors.HeaderInvalid,*'
    }
    It 'a header that is a JSON array, or an entry without dtype: Calm.Safetensors.HeaderInvalid' {
        $dir = New-ModelFolder -Root $script:Work -Name 'header-array'
        Set-HeaderBytes (Join-Path $dir 'model.safetensors') ([Text.Encoding]::ASCII.GetBytes('[1, 2, 3]       '))
        { Import-CalmModel -LiteralPath $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.Safetensors.HeaderInvalid,*'
        $dir = New-ModelFolder -Root $script:Work -Name 'header-no-dtype'
        $file = Join-Path $dir 'model.safetensors'
        Set-HeaderBytes $file ([Text.Encoding]::UTF8.GetBytes(((Get-HeaderText $file) -replace '"dtype":"F32",', '')))
        { Import-CalmModel -LiteralPath $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.Safetensors.HeaderInvalid,*'
    }
    It 'a dtype/shape that disagrees with the byte range: Calm.Safetensors.SizeMismatch, naming the tensor' {
        # input_layernorm: 16 f32 = 64 bytes, declared as F16 (32 bytes) over the same 64-byte range
        $dir = New-ModelFolder -Root $script:Work -Name 'size-mismatch' -Mutate {
            param($s) $t = $s.Tensors | Where-Object Name -EQ 'model.layers.0.input_layernorm.weight'; $t.Shape = [long[]]@(8)
        }
        # Written packed with 32 bytes; now say it has 16 elements without moving the bytes.
        $file = Join-Path $dir 'model.safetensors'
        $text = Get-HeaderText $file
        $text = $text -replace '("model\.layers\.0\.input_layernorm\.weight":\{"dtype":"F32","shape":)\[8\]', '${1}[16]'
        Set-HeaderBytes $file ([Text.Encoding]::UTF8.GetBytes($text))
        $err = { Import-CalmModel -LiteralPath $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.Safetensors.SizeMismatch,*' -PassThru
        $err.Exception.Message | Should -BeLike '*input_layernorm*'
    }
    It 'config.json that is not JSON: Calm.ConfigInvalid' {
        $dir = New-ModelFolder -Root $script:Work -Name 'config-not-json'
        Set-Content -LiteralPath (Join-Path $dir 'config.json') -Value '{ "model_type": "llama", ' -Encoding utf8
        { Import-CalmModel -LiteralPath $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.ConfigInvalid,*'
    }
    It 'config.json without <Field>: Calm.ConfigInvalid naming it' -ForEach @(
        @{ Field = 'hidden_size' }, @{ Field = 'num_hidden_layers' }, @{ Field = 'num_attention_heads' }, @{ Field = 'vocab_size' }
    ) {
        $dir = New-ModelFolder -Root $script:Work -Name "config-no-$Field"
        Set-Config $dir { param($c) $c.Remove($Field) }
        $err = { Import-CalmModel -LiteralPath $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.ConfigInvalid,*' -PassThru
        $err.Exception.Message | Should -BeLike "*$Field*"
    }
    It 'config.json with nonsense: <Why>' -ForEach @(
        @{ Why = 'zero attention heads'; Change = { param($c) $c.num_attention_heads = 0 } }
        @{ Why = 'zero layers'; Change = { param($c) $c.num_hidden_layers = 0 } }
        @{ Why = 'negative hidden size'; Change = { param($c) $c.hidden_size = -16 } }
        @{ Why = 'head_dim not dividing hidden (no head_dim, 16 / 3 heads)'; Change = { param($c) $c.Remove('head_dim'); $c.num_attention_heads = 3; $c.num_key_value_heads = 3 } }
        @{ Why = 'kv heads not dividing heads'; Change = { param($c) $c.num_key_value_heads = 3 } }
        @{ Why = 'rms_norm_eps a string'; Change = { param($c) $c.rms_norm_eps = 'small' } }
        @{ Why = 'num_hidden_layers beyond int'; Change = { param($c) $c.num_hidden_layers = 1e12 } }
    ) {
        $dir = New-ModelFolder -Root $script:Work -Name ('config-' + ($Why -replace '\W', '-'))
        Set-Config $dir $Change
        { Import-CalmModel -LiteralPath $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.ConfigInvalid,*'
    }
    It 'a shard index naming a shard that is not there: Calm.ShardMissing' {
        $dir = New-ModelFolder -Root $script:Work -Name 'shard-missing'
        Rename-Item (Join-Path $dir 'model.safetensors') 'model-00001-of-00002.safetensors'
        $map = [ordered]@{}
        $i = 0
        foreach ($t in (New-TinyLlamaSpec).Tensors) { $map[$t.Name] = if ($i++ % 2) { 'model-00002-of-00002.safetensors' } else { 'model-00001-of-00002.safetensors' } }
        [ordered]@{ metadata = @{ total_size = 11456 }; weight_map = $map } | ConvertTo-Json -Depth 5 |
            Set-Content (Join-Path $dir 'model.safetensors.index.json') -Encoding utf8
        $err = { Import-CalmModel -LiteralPath $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.ShardMissing,*' -PassThru
        $err.Exception.Message | Should -BeLike '*model-00002-of-00002.safetensors*'
    }
    It 'a shard index with an absolute path or a path through ..: Calm.ShardPathOutsideModel' {
        $outsideDir = New-ModelFolder -Root $script:Work -Name 'shard-target'
        foreach ($shard in (Join-Path $outsideDir 'model.safetensors'), '../shard-target/model.safetensors', 'sub/../../shard-target/model.safetensors') {
            $dir = New-ModelFolder -Root $script:Work -Name 'shard-abs'
            Remove-Item (Join-Path $dir 'model.safetensors')
            $map = [ordered]@{}
            foreach ($t in (New-TinyLlamaSpec).Tensors) { $map[$t.Name] = $shard }
            [ordered]@{ weight_map = $map } | ConvertTo-Json -Depth 5 | Set-Content (Join-Path $dir 'model.safetensors.index.json') -Encoding utf8
            { Import-CalmModel -LiteralPath $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.ShardPathOutsideModel,*' -Because $shard
        }
    }
    It 'a shard index that is not JSON or has no weight_map: Calm.ShardIndexInvalid' {
        foreach ($text in '{ "weight_map": ', '{ "metadata": {} }', '{ "weight_map": { "model.norm.weight": 7 } }') {
            $dir = New-ModelFolder -Root $script:Work -Name 'shard-index-bad'
            Remove-Item (Join-Path $dir 'model.safetensors')
            Set-Content (Join-Path $dir 'model.safetensors.index.json') -Value $text -Encoding utf8
            { Import-CalmModel -LiteralPath $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.ShardIndexInvalid,*' -Because $text
        }
    }
}

Describe 'Ctrl+C during an import' {
    BeforeAll {
        function Start-InRunspace([string] $Script) {
            # A second runspace in this process (the same CalmSession), with the module already imported there.
            $ps = [powershell]::Create()
            $null = $ps.AddScript("Import-Module '$(Join-Path $script:RepoRoot 'Calm.psd1')'").Invoke()
            $ps.Commands.Clear()
            $null = $ps.AddScript($Script)
            $ps
        }
    }
    It 'stopping New-CalmModel of a 1B model mid-way leaves the session unchanged, frees the memory, and the session imports again' {
        $before = Get-LoadedNames
        $mem0 = Get-MemorySample
        $ps = Start-InRunspace 'New-CalmModel -Preset Llama-3.2-1B -Device Cpu -Name stopped-1b'
        try {
            $h = $ps.BeginInvoke()
            # wait until the weights are being written (a progress record), then press "Ctrl+C"
            $deadline = [DateTime]::UtcNow.AddSeconds(30)
            while ($ps.Streams.Progress.Count -lt 2 -and -not $h.IsCompleted -and [DateTime]::UtcNow -lt $deadline) { Start-Sleep -Milliseconds 10 }
            $h.IsCompleted | Should -BeFalse -Because 'the stop must land while the import runs'
            $sw = [Diagnostics.Stopwatch]::StartNew()
            $ps.Stop()
            $sw.Elapsed.TotalSeconds | Should -BeLessThan 5 -Because 'Ctrl+C returns promptly'
            $ps.InvocationStateInfo.State | Should -Be 'Stopped'
        }
        finally { $ps.Dispose() }
        Get-LoadedNames | Should -Be $before
        # The worker notices the token within a chunk of 1M weights and frees what it wrote; on a busy machine that can
        # land after Stop returns, so sample until it is back (or 15 s have passed: then the assertion fails).
        $deadline = [DateTime]::UtcNow.AddSeconds(15)
        do { $mem1 = Get-MemorySample } while (($mem1.WorkingSet - $mem0.WorkingSet) -ge 200MB -and [DateTime]::UtcNow -lt $deadline -and -not (Start-Sleep -Milliseconds 100))
        ($mem1.WorkingSet - $mem0.WorkingSet) | Should -BeLessThan 200MB -Because 'the 2.5 GB of weights written so far are freed'
        $m = Import-CalmModel -LiteralPath $script:TinyWp -Device Cpu -Name 'after-stop'
        $m.Name | Should -Be 'after-stop'
        Remove-CalmModel -Name 'after-stop'
    }
    It 'stopping Import-CalmModel stuck reading a file returns within seconds, and the late result is discarded' -Skip:(-not (Get-Command mkfifo -ErrorAction Ignore)) {
        # An import of a small folder on the CPU takes ~2 ms (the weights are memory-mapped), too fast to stop by hand.
        # A config.json that is a FIFO blocks the read (like a hung network drive) until something writes to it.
        $dir = New-ModelFolder -Root $script:Work -Name 'fifo-config'
        $config = Get-Content -Raw (Join-Path $dir 'config.json')
        Remove-Item (Join-Path $dir 'config.json')
        & mkfifo (Join-Path $dir 'config.json')
        $before = Get-LoadedNames
        $ps = Start-InRunspace "Import-CalmModel -LiteralPath '$dir' -Device Cpu -Name 'fifo'"
        try {
            $h = $ps.BeginInvoke()
            Start-Sleep -Milliseconds 300
            $h.IsCompleted | Should -BeFalse -Because 'the import waits on the FIFO'
            $sw = [Diagnostics.Stopwatch]::StartNew()
            $ps.Stop()
            $sw.Elapsed.TotalSeconds | Should -BeLessThan 8 -Because 'Ctrl+C returns even when the engine cannot notice it'
            $ps.InvocationStateInfo.State | Should -Be 'Stopped'
        }
        finally { $ps.Dispose() }
        # Now let the stuck read finish with a valid config: the import completes in the background and must be freed,
        # not added to the session.
        [IO.File]::WriteAllText((Join-Path $dir 'config.json'), $config)
        Start-Sleep -Milliseconds 500
        Get-LoadedNames | Should -Be $before
        @(Get-CalmModel -Name 'fifo' -ErrorAction Ignore).Count | Should -Be 0
        (Import-CalmModel -LiteralPath $script:TinyWp -Device Cpu -Name 'after-stops').Name | Should -Be 'after-stops'
        Remove-CalmModel -Name 'after-stops'
    }
}

Describe 'Load and endurance' {
    It '50 import/remove cycles (tiny-wp folder and synthetic tiny): process memory returns within 1%' {
        # Noise rule. Measured on Linux: freed weight buffers (posix_memalign, 10 MB) are not always handed back to the
        # OS at once (glibc raises its mmap threshold after the first free), so the working set of a leak-free run
        # wanders by ~15 MB between cycles and climbs during the first ~20 cycles. So: 20 warm-up cycles are not
        # measured; of the 50 measured cycles, the baseline is the median of the first 10 and the end the median of the
        # last 10; the end may exceed the baseline by 1% plus the range (max - min) seen within the baseline window.
        # A leak of one model per cycle (8.4 MB + 10 MB) would add > 900 MB; of a KV cache alone, > 20 MB.
        # The cycles run in a child pwsh that does nothing else: inside Pester the working set also grows by ~0.3 MB per
        # cycle with no Calm object alive (Pester's own bookkeeping), which would hide or fake a Calm leak.
        $script_ = @"
`$ErrorActionPreference = 'Stop'
Import-Module '$(Join-Path $script:RepoRoot 'Calm.psd1')'
`$ws = @(); `$priv = @()
for (`$i = 1; `$i -le 70; `$i++) {
    `$a = Import-CalmModel -LiteralPath '$($script:TinyWp)' -Device Cpu -Name cycle-a
    `$b = New-CalmModel tiny -Seed `$i -Device Cpu -Name cycle-b
    `$null = Invoke-CalmGenerate -Model `$a -TokenId 1, 2, 3 -MaxTokens 2 -Temperature 0
    Remove-CalmModel -Name cycle-a, cycle-b
    if (`$i -le 20) { continue }
    [GC]::Collect(); [GC]::WaitForPendingFinalizers(); [GC]::Collect()
    `$p = [Diagnostics.Process]::GetCurrentProcess(); `$p.Refresh()
    `$ws += `$p.WorkingSet64; `$priv += `$p.PrivateMemorySize64
}
if (@(Get-CalmModel).Count) { throw 'models left loaded' }
[pscustomobject]@{ WorkingSet = `$ws; Private = `$priv } | ConvertTo-Json -Compress
"@
        $inv = [Environment]::ProcessPath
        $pre = @(); if ([IO.Path]::GetFileNameWithoutExtension($inv) -ne 'pwsh') { $pre += (Join-Path $PSHOME 'pwsh.dll') }
        # A fixed glibc mmap threshold: every block over 128 KB is its own mapping, returned to the OS when freed, so the
        # working set shows what Calm holds rather than what the allocator keeps cached (no effect off glibc).
        $savedThreshold = $env:MALLOC_MMAP_THRESHOLD_
        $env:MALLOC_MMAP_THRESHOLD_ = '131072'
        try { $json = & $inv @pre -NoProfile -NonInteractive -Command $script_ }
        finally { $env:MALLOC_MMAP_THRESHOLD_ = $savedThreshold }
        $LASTEXITCODE | Should -Be 0 -Because "$json"
        $r = $json | Select-Object -Last 1 | ConvertFrom-Json
        $ws = [double[]]$r.WorkingSet; $priv = [double[]]$r.Private
        $ws.Count | Should -Be 50
        $priv.Count | Should -Be 50
        foreach ($series in @(@{ Name = 'private bytes'; V = $priv }, @{ Name = 'working set'; V = $ws })) {
            $base = @($series.V[0..9]); $end = @($series.V[40..49])
            $spread = [Linq.Enumerable]::Max([double[]]$base) - [Linq.Enumerable]::Min([double[]]$base)
            $limit = (Get-Median $base) * 1.01 + $spread
            # Private bytes on Linux is the data segment including reserved, untouched address space: each thread-pool
            # thread the runtime adds under load reserves an 8 MB stack (seen: 1-3 steps of ~9 MB on a busy machine),
            # so it is only reported (in the message); the resident working set carries the 1% rule.
            $why = ("{0}: baseline median {1:N1} MB (range {2:N1} MB), end median {3:N1} MB; series (MB): {4}" -f
                $series.Name, ((Get-Median $base) / 1MB), ($spread / 1MB), ((Get-Median $end) / 1MB), (($series.V | ForEach-Object { [int]($_ / 1MB) }) -join ' '))
            if ($series.Name -eq 'private bytes') { Write-Host $why; continue }
            (Get-Median $end) | Should -BeLessOrEqual $limit -Because $why
        }
        Get-LoadedNames | Should -Be ''
    }
    It 'two runspaces decoding on one model at once are serialized: each gets the single-threaded result' {
        $m = Import-CalmModel -LiteralPath $script:TinyWp -Device Cpu -Name 'shared' -ContextLength 256
        try {
            $promptA = [int[]](0, 100, 200, 300, 400); $promptB = [int[]](0, 7, 77, 777, 1777)
            $refA = (Invoke-CalmGenerate -Model $m -TokenId $promptA -MaxTokens 24 -Temperature 0).GetTokenIds() -join ','
            $refB = (Invoke-CalmGenerate -Model $m -TokenId $promptB -MaxTokens 24 -Temperature 0).GetTokenIds() -join ','
            $refA | Should -Not -Be $refB
            Get-Command Start-ThreadJob -ErrorAction Stop | Out-Null
            $manifest = Join-Path $script:RepoRoot 'Calm.psd1'
            $jobs = foreach ($p in @($promptA, $promptB, $promptA, $promptB)) {
                Start-ThreadJob -ArgumentList $manifest, $p -ScriptBlock {
                    param($manifest, [int[]] $prompt)
                    Import-Module $manifest
                    1..3 | ForEach-Object { (Invoke-CalmGenerate -Model shared -TokenId $prompt -MaxTokens 24 -Temperature 0).GetTokenIds() -join ',' }
                }
            }
            $null = $jobs | Wait-Job
            $results = @(foreach ($j in $jobs) { Receive-Job $j -ErrorAction Stop; Remove-Job $j })
            $results.Count | Should -Be 12
            $results[0..2] | Should -Be @($refA, $refA, $refA)
            $results[3..5] | Should -Be @($refB, $refB, $refB)
            $results[6..8] | Should -Be @($refA, $refA, $refA)
            $results[9..11] | Should -Be @($refB, $refB, $refB)
        }
        finally { Remove-CalmModel -Name 'shared' }
    }
    It 'two runspaces importing the same folder at once both succeed with distinct models' {
        $manifest = Join-Path $script:RepoRoot 'Calm.psd1'
        $jobs = foreach ($n in 'twin-1', 'twin-2') {
            Start-ThreadJob -ArgumentList $manifest, $script:TinyWp, $n -ScriptBlock {
                param($manifest, $dir, $name)
                Import-Module $manifest
                (Import-CalmModel -LiteralPath $dir -Device Cpu -Name $name).Name
            }
        }
        @($jobs | Receive-Job -Wait -AutoRemoveJob -ErrorAction Stop | Sort-Object) | Should -Be @('twin-1', 'twin-2')
        Remove-CalmModel -Name twin-*
    }
}

Describe 'Security: a model folder is data only' {
    It 'an index.json cannot make Calm read a file outside the folder, even one that exists' {
        # ShardPathOutsideModel covers the cases; here the target is a real, readable safetensors file next door.
        $victim = New-ModelFolder -Root $script:Work -Name 'victim'
        $dir = New-ModelFolder -Root $script:Work -Name 'escaper'
        Remove-Item (Join-Path $dir 'model.safetensors')
        $map = [ordered]@{}
        foreach ($t in (New-TinyLlamaSpec).Tensors) { $map[$t.Name] = '../victim/model.safetensors' }
        [ordered]@{ weight_map = $map } | ConvertTo-Json -Depth 5 | Set-Content (Join-Path $dir 'model.safetensors.index.json') -Encoding utf8
        $err = { Import-CalmModel -LiteralPath $dir -Device Cpu } | Should -Throw -ErrorId 'Calm.ShardPathOutsideModel,*' -PassThru
        $err.Exception.Message | Should -BeLike '*victim*'
    }
    It 'symbolic links inside the folder are followed (by design, documented in Get-Help Import-CalmModel)' -Skip:$IsWindows {
        $real = New-ModelFolder -Root $script:Work -Name 'link-target'
        $dir = Join-Path $script:Work 'linked'
        New-Item -ItemType Directory -Force $dir | Out-Null
        Copy-Item (Join-Path $real 'config.json') $dir
        New-Item -ItemType SymbolicLink -Path (Join-Path $dir 'model.safetensors') -Target (Join-Path $real 'model.safetensors') -Force | Out-Null
        (Import-CalmModel -LiteralPath $dir -Device Cpu -Name 'linked').Name | Should -Be 'linked'
        Remove-CalmModel -Name 'linked'
        (Get-Help Import-CalmModel).alertSet.alert.Text | Should -BeLike '*Symbolic links*followed*'
    }
    It 'a chat template in a model folder cannot reach files, the environment or .NET' {
        $dir = Join-Path $script:Work 'evil-template'
        Copy-Item -Recurse -Force $script:TinyWp $dir
        $secret = Join-Path $script:Work 'secret.txt'
        'TOP-SECRET' | Set-Content $secret
        $env:CALM_TEST_SECRET = 'ENV-SECRET'
        $cfg = Get-Content -Raw (Join-Path $dir 'tokenizer_config.json') | ConvertFrom-Json -AsHashtable
        $cfg.chat_template = "{{ messages[0].content }}|{{ ''.__class__ }}|{{ self }}|{{ config }}|{{ lipsum }}|{{ cycler }}|{{ env }}|" +
            "{% include '$secret' %}"
        $cfg | ConvertTo-Json -Depth 5 | Set-Content (Join-Path $dir 'tokenizer_config.json') -Encoding utf8
        $tpl = $null
        $out = try {
            $tpl = [Calm.Engine.Templates.ChatTemplate]::FromModelFolder($dir)
            $msgs = [System.Collections.Generic.List[Calm.Engine.Templates.ChatMessage]]::new()
            $msgs.Add([Calm.Engine.Templates.ChatMessage]::new('user', 'hi', $null))
            $tpl.Render($msgs, $true, $null)
        }
        catch [Calm.Engine.CalmException] { $_.Exception.ErrorId }
        catch { "$($_.Exception.GetType().Name): $($_.Exception.Message)" }
        finally { $env:CALM_TEST_SECRET = $null }
        "$out" | Should -Not -BeLike '*TOP-SECRET*'
        "$out" | Should -Not -BeLike '*ENV-SECRET*'
        "$out" | Should -Not -BeLike '*System.*'
        "$out" | Should -Match '^(Calm\.Template\w+|hi\|.*)$'
    }
}

Describe 'Caches only under the cache folder' {
    It 'the kernel cache is CALM_CACHE_DIR/kernels, else $XDG_CACHE_HOME/calm/kernels or ~/.cache/calm/kernels' {
        # The engine writes files in one place only: KernelCompiler (compiled kernels, named by a hash of source,
        # options and NVRTC version; written to a .tmp and moved). Model data never chooses a path.
        $kc = [Calm.Engine.Cuda.KernelCompiler]
        $saved = $env:CALM_CACHE_DIR, $env:XDG_CACHE_HOME
        try {
            $env:CALM_CACHE_DIR = Join-Path $script:Work 'kcache'
            $kc::CacheFolder | Should -Be (Join-Path $script:Work 'kcache/kernels')
            $env:CALM_CACHE_DIR = $null
            $env:XDG_CACHE_HOME = Join-Path $script:Work 'xdg'
            if (-not $IsWindows) { $kc::CacheFolder | Should -Be (Join-Path $script:Work 'xdg/calm/kernels') }
            $env:XDG_CACHE_HOME = $null
            $expected = if ($IsWindows) { Join-Path ([Environment]::GetFolderPath('LocalApplicationData')) 'Calm/cache/kernels' }
                        else { Join-Path ([Environment]::GetFolderPath('UserProfile')) '.cache/calm/kernels' }
            $kc::CacheFolder | Should -Be $expected
        }
        finally { $env:CALM_CACHE_DIR, $env:XDG_CACHE_HOME = $saved }
    }
    It 'importing and removing a model writes nothing into the model folder or the current directory' {
        $dir = New-ModelFolder -Root $script:Work -Name 'read-only-check'
        $before = @(Get-ChildItem -Recurse -Force $dir | ForEach-Object { "$($_.Name):$($_.Length):$($_.LastWriteTimeUtc.Ticks)" })
        $cwd = Join-Path $script:Work 'cwd'
        New-Item -ItemType Directory -Force $cwd | Out-Null
        Push-Location $cwd
        try {
            $null = Import-CalmModel -LiteralPath $dir -Device Cpu -Name 'ro'
            $null = Invoke-CalmGenerate -Model ro -TokenId 1, 2 -MaxTokens 2 -Temperature 0
            Remove-CalmModel -Name 'ro'
        }
        finally { Pop-Location }
        @(Get-ChildItem -Recurse -Force $dir | ForEach-Object { "$($_.Name):$($_.Length):$($_.LastWriteTimeUtc.Ticks)" }) | Should -Be $before
        @(Get-ChildItem -Force $cwd).Count | Should -Be 0
    }
}

Describe 'The PowerShell finish' {
    BeforeAll {
        function Get-Completions([string] $Line) {
            @((TabExpansion2 -inputScript $Line -cursorColumn $Line.Length).CompletionMatches | ForEach-Object CompletionText)
        }
    }
    It 'completes -Preset with the engine presets' {
        $c = Get-Completions 'New-CalmModel -Preset Llama-3.'
        $c | Should -Contain 'Llama-3.2-1B'
        $c | Should -Contain 'Llama-3.1-70B'
        $c | Should -Not -Contain 'Llama-3-8B' -Because "'Llama-3.' is not a prefix of it"
    }
    It 'completes -Preset with every preset the engine knows, and nothing else' {
        $c = Get-Completions 'New-CalmModel -Preset '
        $c | Sort-Object | Should -Be @([Calm.Engine.Synthetic.Presets]::Names | Sort-Object)
    }
    It 'completes -Name and -Model with the loaded models' {
        $null = New-CalmModel tiny -Device Cpu -Name 'complete-me'
        $null = New-CalmModel tiny -Device Cpu -Name 'complete me too'
        try {
            Get-Completions 'Get-CalmModel -Name comp' | Should -Be @('complete-me', "'complete me too'")
            Get-Completions 'Remove-CalmModel -Model complete-' | Should -Be @('complete-me')
            Get-Completions 'Remove-CalmModel -Name xyz' | Should -BeNullOrEmpty
        }
        finally { Remove-CalmModel -Name 'complete-me', 'complete me too' }
    }
    It 'completes -Device and -DType' {
        Get-Completions 'Import-CalmModel x -Device C' | Should -Be @('Cpu', 'Cuda')
        Get-Completions 'New-CalmModel tiny -Device ' | Should -Be @('Auto', 'Cpu', 'Cuda')
        Get-Completions 'New-CalmModel tiny -DType f' | Should -Be @('f16', 'f32', 'fp8')
        Get-Completions 'New-CalmModel tiny -DType ' | Should -Be @('bf16', 'f16', 'f32', 'fp8', 'int4')
    }
    It '-Verbose tells the story of an import: folder, config, files, tensors and dtype, device, memory' {
        $v = @(Import-CalmModel -LiteralPath $script:TinyWp -Device Cpu -Name 'story' -Verbose 4>&1 |
                Where-Object { $_ -is [System.Management.Automation.VerboseRecord] } | ForEach-Object Message)
        Remove-CalmModel -Name 'story'
        $text = $v -join "`n"
        $text | Should -BeLike "*Importing*tiny-wp*as 'story'*"
        $text | Should -BeLike '*config.json: model_type llama, 4 layers*'
        $text | Should -BeLike '*Mapped*model.safetensors*38 tensors*bf16*'
        $text | Should -BeLike '*Validated 38 tensors*bf16*'
        $text | Should -BeLike '*CPU*'
        $text | Should -BeLike "*Loaded 'story'*GB*"
    }
    It 'writes progress while importing, and completes it' {
        $ps = [powershell]::Create()
        try {
            $null = $ps.AddScript("Import-Module '$(Join-Path $script:RepoRoot 'Calm.psd1')'; `$ProgressPreference = 'Continue'; `$null = Import-CalmModel -LiteralPath '$($script:TinyWp)' -Device Cpu -Name 'progress'").Invoke()
            $p = @($ps.Streams.Progress)
            $p.Count | Should -BeGreaterThan 1
            @($p | Where-Object Activity -Like '*progress*').Count | Should -BeGreaterThan 0 -Because 'the activity names the import'
            $p[-1].RecordType | Should -Be 'Completed'
        }
        finally { $ps.Dispose(); Remove-CalmModel -Name 'progress' -ErrorAction Ignore }
    }
    It 'build.ps1 Package output imports from a temporary folder with a clean PSModulePath' -Tag 'Package' {
        $inv = [Environment]::ProcessPath
        $args_ = @()
        if ([IO.Path]::GetFileNameWithoutExtension($inv) -ne 'pwsh') { $args_ += (Join-Path $PSHOME 'pwsh.dll') }
        $args_ += @('-NoProfile', '-NonInteractive', '-File', (Join-Path $script:RepoRoot 'build.ps1'), 'Package')
        $out = & $inv @args_ 2>&1 | Out-String
        $LASTEXITCODE | Should -Be 0 -Because $out
        $out | Should -Match 'Imported Calm [\d.]+ from .*calm-package-.*: .*Import-CalmModel'
        $version = (Import-PowerShellDataFile (Join-Path $script:RepoRoot 'Calm.psd1')).ModuleVersion
        $pkg = Join-Path $script:RepoRoot "out/Calm/$version"
        Join-Path $pkg 'bin/en-US/Calm.PowerShell.dll-Help.xml' | Should -Exist
        $m = Test-ModuleManifest (Join-Path $pkg 'Calm.psd1')
        $m.ExportedCmdlets.Keys | Sort-Object | Should -Be @((Import-PowerShellDataFile (Join-Path $pkg 'Calm.psd1')).CmdletsToExport | Sort-Object)
    }
}

Describe 'Ctrl+C during perplexity' {
    It 'stopping Measure-CalmPerplexity mid-way returns promptly, emits nothing half-done, and leaves the model usable' {
        $m = Import-CalmModel -LiteralPath $script:TinyWp -Device Cpu -Name 'ppl-stop'
        try {
            # ~13,000 tokens of text (~200 windows): seconds of scoring on the CPU, far longer than the stop takes.
            $text = ((1..60) | ForEach-Object { 'Prince Andrew looked at the sky, and Natasha laughed in the ballroom while Pierre watched.' }) -join "`n"
            $text = ($text + "`n") * 12
            $ps = [powershell]::Create()
            try {
                $null = $ps.AddScript("Import-Module '$(Join-Path $script:RepoRoot 'Calm.psd1')'").Invoke()
                $ps.Commands.Clear()
                $null = $ps.AddCommand('Measure-CalmPerplexity').AddParameter('Text', $text).AddParameter('Model', 'ppl-stop').AddParameter('Window', 128).AddParameter('Stride', 64)
                $out = [System.Management.Automation.PSDataCollection[psobject]]::new()
                # The input must be closed: an open input collection keeps the command waiting for pipeline input
                # before its End (where -Text is scored), so a stop would land before any scoring.
                $in = [System.Management.Automation.PSDataCollection[psobject]]::new(); $in.Complete()
                $h = $ps.BeginInvoke($in, $out)
                # scoring under way: its progress reports windows scored (~200 windows, seconds on the CPU)
                $deadline = [DateTime]::UtcNow.AddSeconds(30)
                while ($ps.Streams.Progress.Count -lt 2 -and -not $h.IsCompleted -and [DateTime]::UtcNow -lt $deadline) { Start-Sleep -Milliseconds 10 }
                $ps.Streams.Progress.Count | Should -BeGreaterOrEqual 2 -Because 'scoring reports each window'
                $h.IsCompleted | Should -BeFalse -Because 'the stop must land while the text is being scored'
                $sw = [Diagnostics.Stopwatch]::StartNew()
                $ps.Stop()
                $sw.Elapsed.TotalSeconds | Should -BeLessThan 5 -Because 'Ctrl+C returns promptly'
                $ps.InvocationStateInfo.State | Should -Be 'Stopped'
                $out.Count | Should -Be 0 -Because 'no half-computed perplexity is emitted'
            }
            finally { $ps.Dispose() }
            $r = Measure-CalmPerplexity -Text 'Prince Andrew looked at the sky.' -Model 'ppl-stop'
            $r.Tokens | Should -BeGreaterThan 3
            $r.Perplexity | Should -BeGreaterThan 1
        }
        finally { Remove-CalmModel -Name 'ppl-stop' }
    }
}
