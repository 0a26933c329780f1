#!/usr/bin/env pwsh
# Generation with Calm: greedy and sampled continuations, streaming token by token, stop strings, log-probabilities,
# and the held-out perplexity of a text. Runs on the CPU with the embedded tiny model unless -ModelPath says otherwise.
[CmdletBinding()]
param([string] $ModelPath = (Join-Path $PSScriptRoot '../models/tiny-wp'))
$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot '../Calm.psd1') -Force
$null = Import-CalmModel -Path $ModelPath -Device Cpu

# Tokens of a prompt (the tokenizer alone needs no weights: -Tokenizer <folder or tokenizer.json>).
ConvertTo-CalmToken '"Well, Prince," said Anna Pavlovna,' | Format-Table | Out-Host

# Greedy (temperature 0), then two sampled continuations with fixed seeds (the same seed gives the same text).
Invoke-CalmGenerate 'The French army' -MaxTokens 40 -Temperature 0 | Format-List Prompt, Text, StopReason | Out-Host
'The French army', 'Natasha' | Invoke-CalmGenerate -MaxTokens 40 -Temperature 0.8 -TopP 0.95 -Seed 7 |
    Format-Table Prompt, Text, GeneratedTokens, DecodeTokensPerSecond -Wrap | Out-Host

# Streaming: write each token's text as it arrives; stop at the first full stop.
Invoke-CalmGenerate 'Pierre' -MaxTokens 60 -Temperature 0.7 -Seed 1 -Stop '.' -Stream |
    ForEach-Object { Write-Host $_.Text -NoNewline }
Write-Host

# How sure was the model? Each token's log-probability and its two most likely alternatives.
Invoke-CalmGenerate 'Moscow was' -MaxTokens 6 -Temperature 0 -Stream -TopLogProbs 2 | Format-Table | Out-Host

# Perplexity of a passage (sliding windows; -PerToken shows each token's log-probability and rank).
'It was in July, 1805, and the speaker was the well-known Anna Pavlovna Scherer.' | Measure-CalmPerplexity | Out-Host

Get-CalmModel | Remove-CalmModel -Confirm:$false
