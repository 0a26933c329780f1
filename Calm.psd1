#
# Calm: run LLMs at the memory-bandwidth speed of light, and see where every millisecond goes.
# ModuleVersion is kept equal to <Version> in Directory.Build.props by build.ps1 (Build and Package).
#
@{
    RootModule           = 'Calm.psm1'
    NestedModules        = @('bin/Calm.PowerShell.dll')
    ModuleVersion        = '0.1.0'
    GUID                 = 'a1860ac6-a939-46a3-aa14-8769caf52568'
    Author               = 'Calm engineers'
    CompanyName          = 'Calm'
    Copyright            = 'Calm'
    Description          = 'Runs large language models on one NVIDIA GPU (or the CPU) near the memory-bandwidth speed of light, and measures how close it gets.'
    PowerShellVersion    = '7.4'
    CompatiblePSEditions = @('Core')
    FormatsToProcess     = @('module/Calm.Format.ps1xml', 'module/Calm.Text.Format.ps1xml', 'module/Calm.Sol.Format.ps1xml')
    CmdletsToExport      = @(
        'Import-CalmModel'
        'New-CalmModel'
        'Get-CalmModel'
        'Remove-CalmModel'
        'Get-CalmDevice'
        'ConvertTo-CalmToken'
        'ConvertFrom-CalmToken'
        'Invoke-CalmGenerate'
        'Invoke-CalmChat'
        'Measure-CalmPerplexity'
        'Get-CalmPreset'
        'Get-CalmSpeedOfLight'
        'Measure-CalmBandwidth'
        'Measure-CalmSpeedOfLight'
        'Measure-CalmKernel'
        'Export-CalmReport'
    )
    FunctionsToExport    = @()
    VariablesToExport    = @()
    AliasesToExport      = @()
    PrivateData          = @{
        PSData = @{
            Tags       = @('LLM', 'Inference', 'CUDA', 'GPU', 'Llama', 'Mistral', 'Qwen', 'Gemma', 'Phi', 'Mixtral', 'safetensors')
            ProjectUri = 'https://github.com/calm/calm'
        }
    }
}
