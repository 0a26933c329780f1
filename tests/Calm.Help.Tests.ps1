# Help: every exported cmdlet has Get-Help built from docs/help/<Cmdlet>.md with a synopsis, a description, every
# parameter documented and at least two examples; and every example that needs no GPU runs without an error.
BeforeDiscovery {
    $root = Split-Path -Parent $PSScriptRoot
    Import-Module (Join-Path $root 'Calm.psd1') -Force
    $script:Cmdlets = @((Get-Module Calm).ExportedCmdlets.Keys | Sort-Object | ForEach-Object { @{ Name = $_ } })
    $docs = @(& (Join-Path $root 'tools/Build-Help.ps1') -ParseOnly)
    $script:Examples = @(foreach ($d in $docs) {
            $i = 0
            foreach ($e in $d.Examples) {
                $i++
                @{ Command = $d.Name; Index = $i; Title = $e.Title; Code = $e.Code; Gpu = $e.Gpu; Skip = $e.Skip }
            }
        })
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'CalmTestHelpers.ps1')
    Import-CalmForTest
    $script:Common = [System.Management.Automation.PSCmdlet]::CommonParameters + [System.Management.Automation.PSCmdlet]::OptionalCommonParameters
}

Describe 'Get-Help <Name>' -ForEach $script:Cmdlets {
    BeforeAll {
        $script:Help = Get-Help $Name -Full
        $script:Source = Join-Path $script:RepoRoot "docs/help/$Name.md"
    }
    It 'has a markdown source docs/help/<Name>.md' {
        $script:Source | Should -Exist -Because "every exported cmdlet needs help (docs/help/README.md says how)"
    }
    It 'has a synopsis and a description from the MAML (not the generated syntax-only help)' {
        # Without MAML, Get-Help makes the synopsis from the syntax ("Name [-Param] ...") and has no description.
        $script:Help.Synopsis | Should -Not -BeNullOrEmpty
        $script:Help.Synopsis.Trim() | Should -Not -BeLike "$Name *"
        ($script:Help.description.Text -join ' ') | Should -Not -BeNullOrEmpty
    }
    It 'documents every parameter' {
        $cmd = Get-Command $Name
        $params = @($cmd.Parameters.Keys | Where-Object { $_ -notin $script:Common })
        foreach ($p in $params) {
            $h = $script:Help.parameters.parameter | Where-Object name -EQ $p
            $h | Should -Not -BeNullOrEmpty -Because "-$p must appear in Get-Help $Name"
            $text = ($h.description.Text -join ' ').Trim()
            $text | Should -Not -BeNullOrEmpty -Because "-$p of $Name needs a description"
            $text | Should -Not -Be '(Not documented yet.)' -Because "-$p of $Name needs a description in docs/help/$Name.md"
        }
    }
    It 'has at least two examples' {
        @($script:Help.examples.example).Count | Should -BeGreaterOrEqual 2
        foreach ($e in $script:Help.examples.example) { $e.code | Should -Not -BeNullOrEmpty }
    }
}

Describe 'Help example: <Command> #<Index> <Title>' -ForEach $script:Examples {
    BeforeAll {
        Get-CalmModel | Remove-CalmModel -Confirm:$false
    }
    AfterAll {
        Get-CalmModel | Remove-CalmModel -Confirm:$false
    }
    It 'is the code Get-Help shows' {
        $shown = @((Get-Help $Command -Examples).examples.example)[$Index - 1].code
        ($shown -replace '\r', '').Trim() | Should -Be ($Code -replace '\r', '').Trim() -Because 'the MAML must be rebuilt from the markdown (build.ps1 Build)'
    }
    It 'runs without an error' {
        if ($Gpu) { Set-ItResult -Skipped -Because 'the example needs an NVIDIA GPU'; return }
        if ($Skip) { Set-ItResult -Skipped -Because $Skip; return }
        Push-Location $script:RepoRoot
        try {
            $Error.Clear()
            $sb = [scriptblock]::Create($Code)
            $out = & { $ErrorActionPreference = 'Stop'; $WarningPreference = 'SilentlyContinue'; & $sb 4>$null } 2>&1
            $errs = @($out | Where-Object { $_ -is [System.Management.Automation.ErrorRecord] })
            # Stop turns any error into a throw (the It fails); an example may show an error on purpose with
            # -ErrorAction SilentlyContinue -ErrorVariable, and only errors that reached the output count then.
            $errs | Should -BeNullOrEmpty -Because "example $Index of $Command must run as written"
        }
        finally { Pop-Location }
    }
}

Describe 'tools/Build-Help.ps1' {
    BeforeAll {
        $script:Tmp = Join-Path ([IO.Path]::GetTempPath()) "calm-help-tests-$PID"
        New-Item -ItemType Directory -Force $script:Tmp | Out-Null
    }
    AfterAll { Remove-Item -Recurse -Force -ErrorAction Ignore $script:Tmp }

    It 'stops on a documented parameter the cmdlet does not have, naming the file' {
        $src = Join-Path $script:Tmp 'stale'
        New-Item -ItemType Directory -Force $src | Out-Null
        (Get-Content -Raw (Join-Path $script:RepoRoot 'docs/help/Get-CalmModel.md')) -replace '### -Name', '### -Nome' |
            Set-Content (Join-Path $src 'Get-CalmModel.md')
        $err = { & (Join-Path $script:RepoRoot 'tools/Build-Help.ps1') -SourceDir $src -OutFile (Join-Path $script:Tmp 'x.xml') 3>$null 6>$null } |
            Should -Throw -PassThru
        $err.Exception.Message | Should -BeLike '*Get-CalmModel.md*-Nome*'
        Import-CalmForTest   # the script imported the module again; keep this session's import
    }
    It 'stops on an example without a code block' {
        $src = Join-Path $script:Tmp 'nocode'
        New-Item -ItemType Directory -Force $src | Out-Null
        "# Get-CalmModel`n## SYNOPSIS`nx`n## DESCRIPTION`ny`n## EXAMPLES`n### Example 1: none`njust text" | Set-Content (Join-Path $src 'Get-CalmModel.md')
        { & (Join-Path $script:RepoRoot 'tools/Build-Help.ps1') -SourceDir $src -ParseOnly } | Should -Throw -ExpectedMessage '*no fenced code block*'
    }
    It 'writes well-formed MAML with the parameter metadata of the cmdlet' {
        $xml = [xml](Get-Content -Raw (Join-Path $script:RepoRoot 'bin/en-US/Calm.PowerShell.dll-Help.xml'))
        $ns = [System.Xml.XmlNamespaceManager]::new($xml.NameTable)
        $ns.AddNamespace('command', 'http://schemas.microsoft.com/maml/dev/command/2004/10')
        $ns.AddNamespace('maml', 'http://schemas.microsoft.com/maml/2004/10')
        $p = $xml.SelectSingleNode("//command:command[command:details/command:name='Import-CalmModel']/command:parameters/command:parameter[maml:name='LiteralPath']", $ns)
        $p | Should -Not -BeNullOrEmpty
        $p.aliases | Should -Be 'PSPath, LP'
        $p.required | Should -Be 'true'
        (Get-Help Import-CalmModel -Parameter Device).defaultValue | Should -Be 'Auto'
    }
}
