#!/usr/bin/env pwsh
# Chat with Calm through the model's own chat template. With -Interactive (in a console) it is a chat loop: type
# 'exit' or press Ctrl+C to end. Otherwise it scripts a short conversation, carrying the history from turn to turn.
[CmdletBinding()]
param(
    [string] $ModelPath = (Join-Path $PSScriptRoot '../models/tiny-wp'),
    [switch] $Interactive
)
$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot '../Calm.psd1') -Force
$null = Import-CalmModel -Path $ModelPath -Device Cpu
$system = 'You are a narrator of War and Peace.'

if ($Interactive) {
    $history = Invoke-CalmChat -SystemPrompt $system -Temperature 0.7 -TopP 0.95
} else {
    $history = Invoke-CalmChat -Message 'Who is Pierre?' -SystemPrompt $system -MaxTokens 40 -Temperature 0.7 -Seed 3
    $history = Invoke-CalmChat -Message 'And what did Natasha say?' -History $history -MaxTokens 40 -Temperature 0.7 -Seed 3
}
$history | Format-Table Role, Content -Wrap | Out-Host
Get-CalmModel | Remove-CalmModel -Confirm:$false
