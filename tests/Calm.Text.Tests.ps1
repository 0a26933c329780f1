# The text cmdlets on the tiny real model (models/tiny-wp): tokens, generation (golden greedy ids from transformers in
# float64, streaming, seeds, stop strings, every StopReason), chat through the model's template, perplexity, and each
# bad input as a stable ErrorId.
BeforeAll {
    . (Join-Path $PSScriptRoot 'CalmTestHelpers.ps1')
    Import-CalmForTest
    $script:TinyWp = Join-Path $script:RepoRoot 'models/tiny-wp'
    $script:Training = Get-Content -Raw (Join-Path $script:TinyWp 'training.json') | ConvertFrom-Json
    $script:Model = Import-CalmModel -Path $script:TinyWp -Device Cpu -Name 'tiny-wp-text-tests'
    $script:Prompt = $script:Training.greedy.prompt
    $script:Work = Join-Path ([IO.Path]::GetTempPath()) "calm-text-tests-$PID"
    New-Item -ItemType Directory -Force $script:Work | Out-Null

    # A copy of tiny-wp with another tokenizer_config.json chat template (weights and tokenizer as they are).
    function New-TemplateVariant([string] $Name, [string] $Template) {
        $dir = Join-Path $script:Work $Name
        New-Item -ItemType Directory -Force $dir | Out-Null
        Copy-Item (Join-Path $script:TinyWp '*') $dir
        $cfg = Get-Content -Raw (Join-Path $dir 'tokenizer_config.json') | ConvertFrom-Json
        $cfg.chat_template = $Template
        $cfg | ConvertTo-Json -Depth 5 | Set-Content -LiteralPath (Join-Path $dir 'tokenizer_config.json') -Encoding utf8NoBOM
        $dir
    }
}
AfterAll {
    Get-CalmModel | Remove-CalmModel -Confirm:$false
    Remove-Item -Recurse -Force -ErrorAction Ignore $script:Work
}

Describe 'ConvertTo-CalmToken / ConvertFrom-CalmToken' {
    It 'gives the ids of training.json for the golden prompt' {
        $t = ConvertTo-CalmToken -Text $script:Prompt
        $t.Id | Should -Be $script:Training.greedy.prompt_ids
        $t.Index | Should -Be (0..($t.Count - 1))
        $t[0].Text | Should -Be '<s>'
        $t[0].GetType().Name | Should -Be 'CalmToken'
    }
    It 'works from a tokenizer.json without loading weights, with -NoSpecialTokens' {
        $t = 'Natasha' | ConvertTo-CalmToken -Tokenizer (Join-Path $script:TinyWp 'tokenizer.json') -NoSpecialTokens
        $t.Id | Should -Not -Contain 0
        ($t | ConvertFrom-CalmToken -Tokenizer $script:TinyWp) | Should -Be 'Natasha'
    }
    It 'round-trips through the pipeline and skips special tokens on request' {
        $text = "Pierre smiled.`n  `"Ça va?`" -- 1812"
        (ConvertTo-CalmToken $text | ConvertFrom-CalmToken) | Should -Be "<s>$text"
        (ConvertTo-CalmToken $text | ConvertFrom-CalmToken -SkipSpecialTokens) | Should -Be $text
        ConvertFrom-CalmToken -Id 0, 1171 -Model $script:Model | Should -Be '<s>"Well'
    }
    It 'reports a tokenizer.json of an unknown kind as Calm.TokenizerUnsupported' {
        $dir = Join-Path $script:Work 'unigram'
        New-Item -ItemType Directory -Force $dir | Out-Null
        '{"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"Unigram","unk_id":0,"vocab":[["<unk>",0.0],["a",-1.0]]}}' |
            Set-Content -LiteralPath (Join-Path $dir 'tokenizer.json')
        { ConvertTo-CalmToken 'a' -Tokenizer (Join-Path $dir 'tokenizer.json') } | Should -Throw -ErrorId 'Calm.TokenizerUnsupported,*'
    }
    It 'reports a missing tokenizer as Calm.TokenizerMissing for a synthetic model' {
        $syn = New-CalmModel -Preset tiny -Device Cpu -Name 'syn-text'
        try {
            { ConvertTo-CalmToken 'a' -Model $syn } | Should -Throw -ErrorId 'Calm.TokenizerMissing,*'
            { Invoke-CalmGenerate 'a' -Model $syn } | Should -Throw -ErrorId 'Calm.TokenizerMissing,*'
        } finally { Remove-CalmModel -Model $syn -Confirm:$false }
    }
}

Describe 'Invoke-CalmGenerate' {
    It 'reproduces the golden greedy continuation (transformers, float64) exactly' {
        $ids = $script:Training.greedy.ids
        $r = Invoke-CalmGenerate -Prompt $script:Prompt -Model $script:Model -MaxTokens $ids.Count -Temperature 0
        $r.GetTokenIds() | Should -Be $ids
        $r.Text | Should -BeExactly $script:Training.greedy.text
        $r.StopReason | Should -Be 'MaxTokens'
        $r.PromptTokens | Should -Be $script:Training.greedy.prompt_ids.Count
        $r.GeneratedTokens | Should -Be $ids.Count
        $r.PrefillTokensPerSecond | Should -BeGreaterThan 0
        $r.DecodeTokensPerSecond | Should -BeGreaterThan 0
        $r.TimeToFirstTokenMs | Should -BeGreaterThan 0
        $r.Model | Should -Be 'tiny-wp-text-tests'
    }
    It 'streams one object per token whose texts join to the non-streamed text' {
        $p = @{ Prompt = 'The Emperor'; MaxTokens = 30; Temperature = 0.9; TopK = 40; Seed = 7 }
        $whole = Invoke-CalmGenerate @p
        $parts = @(Invoke-CalmGenerate @p -Stream)
        $parts.Count | Should -Be 30
        $parts[0].GetType().Name | Should -Be 'CalmGeneratedToken'
        $parts.Index | Should -Be (0..29)
        -join $parts.Text | Should -BeExactly $whole.Text
        $parts.TokenId | Should -Be $whole.GetTokenIds()
    }
    It 'gives the same tokens for the same seed and others for another' {
        $a = Invoke-CalmGenerate 'Moscow' -MaxTokens 20 -Temperature 1 -TopP 0.95 -MinP 0.01 -Seed 123
        $b = Invoke-CalmGenerate 'Moscow' -MaxTokens 20 -Temperature 1 -TopP 0.95 -MinP 0.01 -Seed 123
        $c = Invoke-CalmGenerate 'Moscow' -MaxTokens 20 -Temperature 1 -TopP 0.95 -MinP 0.01 -Seed 124
        $a.Seed | Should -Be 123
        $a.GetTokenIds() | Should -Be $b.GetTokenIds()
        ($a.GetTokenIds() -join ',') | Should -Not -Be ($c.GetTokenIds() -join ',')
    }
    It 'takes many prompts from the pipeline' {
        $r = @('Prince Andrew', 'Natasha') | Invoke-CalmGenerate -MaxTokens 3
        $r.Count | Should -Be 2
        $r.Prompt | Should -Be @('Prince Andrew', 'Natasha')
    }
    It 'stops on a stop string, which is not in the text' {
        $r = Invoke-CalmGenerate $script:Prompt -MaxTokens 48 -Stop "good`n", 'never appears'
        $r.StopReason | Should -Be 'StopString'
        $r.Text | Should -BeExactly ' "I am very glad to have a '
    }
    It 'stops at a full context' {
        $small = Import-CalmModel -Path $script:TinyWp -Device Cpu -ContextLength 12 -Name 'tiny-wp-ctx12'
        try {
            $r = Invoke-CalmGenerate $script:Prompt -Model $small -MaxTokens 48
            $r.StopReason | Should -Be 'ContextFull'
            $r.GeneratedTokens | Should -Be 4
            { Invoke-CalmGenerate ($script:Prompt * 3) -Model $small } | Should -Throw -ErrorId 'Calm.ContextOverflow,*'
        } finally { Remove-CalmModel -Model $small -Confirm:$false }
    }
    It 'stops at an EOS id, which is not in the output' {
        # tiny-wp was trained on plain text and never emits </s>: -StopTokenId adds an id that ends generation as EOS.
        $ids = $script:Training.greedy.ids
        $r = Invoke-CalmGenerate $script:Prompt -MaxTokens 48 -StopTokenId $ids[5]
        $r.StopReason | Should -Be 'Eos'
        $r.GetTokenIds() | Should -Be $ids[0..4]
        $s = @(Invoke-CalmGenerate $script:Prompt -MaxTokens 48 -StopTokenId $ids[5] -Stream)
        $s.TokenId | Should -Be $ids[0..4]
        -join $s.Text | Should -BeExactly $r.Text
    }
    It 'reports log-probabilities and alternatives' {
        $t = @(Invoke-CalmGenerate $script:Prompt -MaxTokens 3 -Stream -TopLogProbs 2)
        $t | ForEach-Object { $_.LogProb | Should -BeLessThan 0; $_.TopLogProbs | Should -Match "^'.*' -?\d+\.\d{4}; '.*' -?\d+\.\d{4}$" }
        $r = Invoke-CalmGenerate $script:Prompt -MaxTokens 3 -LogProbs
        $r.LogProb | Should -BeLessThan 0
        [math]::Abs($r.LogProb - ($t.LogProb | Measure-Object -Sum).Sum) | Should -BeLessThan 1e-9
    }
    It 'rejects <Case> with <Id>' -TestCases @(
        @{ Case = 'an empty prompt'; Params = @{ Prompt = '' }; Id = 'Calm.InvalidArgument' }
        @{ Case = 'a negative temperature'; Params = @{ Prompt = 'a'; Temperature = -1 }; Id = 'Calm.InvalidArgument' }
        @{ Case = 'top-p 0'; Params = @{ Prompt = 'a'; TopP = 0 }; Id = 'Calm.InvalidArgument' }
        @{ Case = 'top-p above 1'; Params = @{ Prompt = 'a'; TopP = 1.5 }; Id = 'Calm.InvalidArgument' }
        @{ Case = 'a negative top-k'; Params = @{ Prompt = 'a'; TopK = -2 }; Id = 'Calm.InvalidArgument' }
        @{ Case = 'min-p above 1'; Params = @{ Prompt = 'a'; MinP = 2 }; Id = 'Calm.InvalidArgument' }
        @{ Case = 'a zero repetition penalty'; Params = @{ Prompt = 'a'; RepetitionPenalty = 0 }; Id = 'Calm.InvalidArgument' }
        @{ Case = 'a negative presence penalty'; Params = @{ Prompt = 'a'; PresencePenalty = -1 }; Id = 'Calm.InvalidArgument' }
        @{ Case = 'zero max tokens'; Params = @{ Prompt = 'a'; MaxTokens = 0 }; Id = 'Calm.InvalidArgument' }
        @{ Case = 'a prompt longer than the context'; Params = @{ Prompt = ('word ' * 600) }; Id = 'Calm.ContextOverflow' }
    ) {
        param($Case, $Params, $Id)
        $err = $null
        try { Invoke-CalmGenerate @Params -Model $script:Model } catch { $err = $_ }
        $err | Should -Not -BeNullOrEmpty
        $err.FullyQualifiedErrorId | Should -BeLike "$Id,*"
        if ($Id -eq 'Calm.ContextOverflow') { $err.Exception.Message | Should -Match '512 positions' }
    }
    It 'stops within a token step on Ctrl+C (PowerShell.Stop), keeping what was streamed; the model stays usable' {
        $ps = [powershell]::Create()
        try {
            $null = $ps.AddScript("Import-Module '$($script:RepoRoot)/Calm.psd1'; Invoke-CalmGenerate 'Moscow' -Model tiny-wp-text-tests -MaxTokens 100000 -Temperature 0.8 -Seed 1 -Stream")
            $out = [System.Management.Automation.PSDataCollection[psobject]]::new()
            $handle = $ps.BeginInvoke([System.Management.Automation.PSDataCollection[psobject]]::new(), $out)
            $deadline = [DateTime]::UtcNow.AddSeconds(20)
            while ($out.Count -lt 5 -and [DateTime]::UtcNow -lt $deadline) { Start-Sleep -Milliseconds 10 }
            $out.Count | Should -BeGreaterOrEqual 5
            $sw = [Diagnostics.Stopwatch]::StartNew()
            $ps.Stop()
            $sw.Elapsed.TotalSeconds | Should -BeLessThan 2
            $ps.InvocationStateInfo.State | Should -Be 'Stopped'
            $n = $out.Count
            $n | Should -BeLessThan 512
            $out.Index | Should -Be (0..($n - 1))
        } finally { $ps.Dispose() }
        (Invoke-CalmGenerate $script:Prompt -Model $script:Model -MaxTokens 5).GetTokenIds() | Should -Be $script:Training.greedy.ids[0..4]
    }
    It 'leaves the model usable after an error' {
        { Invoke-CalmGenerate 'a' -Temperature -1 } | Should -Throw
        (Invoke-CalmGenerate $script:Prompt -MaxTokens 5).GetTokenIds() | Should -Be $script:Training.greedy.ids[0..4]
    }
}

Describe 'Invoke-CalmChat' {
    It 'answers through the chat template and returns the updated history' {
        $h = Invoke-CalmChat -Message 'Who is Pierre?' -SystemPrompt 'You are a Russian novelist.' -MaxTokens 16 -Temperature 0.7 -Seed 5
        $h.Count | Should -Be 3
        $h.Role | Should -Be @('system', 'user', 'assistant')
        $h[2].Content | Should -Not -BeNullOrEmpty
        $h[2].StopReason | Should -BeIn @('Eos', 'MaxTokens')
        $h2 = Invoke-CalmChat -Message 'And Natasha?' -History $h -MaxTokens 8 -Temperature 0.7 -Seed 5
        $h2.Count | Should -Be 5
        $h2[0..2].Content | Should -Be $h.Content
        $h2[4].Role | Should -Be 'assistant'
    }
    It 'continues the same as Invoke-CalmGenerate -Chat (same template, same seed)' {
        $h = Invoke-CalmChat -Message 'Tell me of Borodino.' -MaxTokens 12 -Temperature 0
        $g = Invoke-CalmGenerate 'Tell me of Borodino.' -Chat -MaxTokens 12 -Temperature 0
        $h[-1].Content | Should -BeExactly $g.Text
    }
    It 'takes hashtables as history' {
        $h = Invoke-CalmChat -Message 'Go on.' -History @(@{ Role = 'user'; Content = 'Hello' }, @{ Role = 'assistant'; Content = 'Well.' }) -MaxTokens 4
        $h.Role | Should -Be @('user', 'assistant', 'user', 'assistant')
        { Invoke-CalmChat -Message 'x' -History @(@{ Who = 'me' }) } | Should -Throw -ErrorId 'Calm.InvalidArgument,*'
    }
    It 'needs -Message in a non-interactive host' {
        { Invoke-CalmChat } | Should -Throw -ErrorId 'Calm.InvalidArgument,*'
    }
    It 'reports a template that fails to render as Calm.TemplateError' {
        $m = Import-CalmModel -Path (New-TemplateVariant 'raises' "{{ raise_exception('no chats here') }}") -Device Cpu -Name 'tpl-raise'
        try { { Invoke-CalmChat -Message 'hi' -Model $m } | Should -Throw -ErrorId 'Calm.TemplateError,*' }
        finally { Remove-CalmModel -Model $m -Confirm:$false }
    }
    It 'reports a template that exceeds its bounds as Calm.TemplateLimitExceeded' {
        $m = Import-CalmModel -Path (New-TemplateVariant 'loops' '{% for i in range(50000) %}{% for j in range(50000) %}x{% endfor %}{% endfor %}') -Device Cpu -Name 'tpl-loop'
        try { { Invoke-CalmGenerate 'hi' -Chat -Model $m } | Should -Throw -ErrorId 'Calm.TemplateLimitExceeded,*' }
        finally { Remove-CalmModel -Model $m -Confirm:$false }
    }
}

Describe 'Measure-CalmPerplexity' {
    It 'measures text, and -PerToken gives each scored token' {
        $text = 'Prince Andrew looked at the sky above him, the lofty sky, and thought of nothing.'
        $r = $text | Measure-CalmPerplexity -Window 8 -Stride 4
        $ids = ConvertTo-CalmToken $text
        $r.Tokens | Should -Be ($ids.Count - 1)
        $r.Window | Should -Be 8
        $r.Stride | Should -Be 4
        $r.Perplexity | Should -BeGreaterThan 1
        [math]::Abs($r.Perplexity - [math]::Exp($r.NegativeLogLikelihood / $r.Tokens)) | Should -BeLessThan 1e-9
        $t = @($text | Measure-CalmPerplexity -Window 8 -Stride 4 -PerToken)
        $t.Count | Should -Be $r.Tokens
        $t.Index | Should -Be (1..$r.Tokens)
        $t.Id | Should -Be $ids.Id[1..$r.Tokens]
        [math]::Abs(-($t.LogProb | Measure-Object -Sum).Sum - $r.NegativeLogLikelihood) | Should -BeLessThan 1e-6
        $t.Rank | ForEach-Object { $_ | Should -BeGreaterOrEqual 1 }
    }
    It 'measures a file by -Path' {
        $f = Join-Path $script:Work 'para.txt'
        "It was in July, 1805, and the speaker was the well-known Anna Pavlovna Scherer." | Set-Content -LiteralPath $f
        $r = Measure-CalmPerplexity -Path $f
        $r.Source | Should -Be $f
        $r.Window | Should -Be 512
        $r.Stride | Should -Be 256
    }
    It 'rejects a window larger than the context' {
        { 'some text here' | Measure-CalmPerplexity -Window 4096 } | Should -Throw -ErrorId 'Calm.ContextOverflow,*'
    }
}
