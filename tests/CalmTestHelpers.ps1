# Helpers the Pester tests dot-source: import the module from the checkout, and write small model folders
# (config.json + safetensors) byte by byte so every bad-input case can be built exactly.
#
# safetensors layout: [u64 little-endian header length N][N bytes of JSON header, space-padded][data section]
# header: { "<tensor>": { "dtype": "F32", "shape": [..], "data_offsets": [begin, end] }, "__metadata__": {..} }
# offsets are relative to the start of the data section.

$script:RepoRoot = Split-Path -Parent $PSScriptRoot

function Import-CalmForTest {
    Import-Module (Join-Path $script:RepoRoot 'Calm.psd1') -Force -ErrorAction Stop
}

function Get-DTypeSize([string] $DType) {
    switch ($DType) { 'F64' { 8 } 'F32' { 4 } 'F16' { 2 } 'BF16' { 2 } default { 4 } }
}

function New-TinyLlamaSpec {
    # A llama model of 1 layer: V=32, D=16, F=32, H=2 heads, K=1 kv head, Hd=8, tied embeddings, f32.
    $config = [ordered]@{
        architectures           = @('LlamaForCausalLM')
        model_type              = 'llama'
        vocab_size              = 32
        hidden_size             = 16
        intermediate_size       = 32
        num_hidden_layers       = 1
        num_attention_heads     = 2
        num_key_value_heads     = 1
        head_dim                = 8
        max_position_embeddings = 64
        rms_norm_eps            = 1e-5
        rope_theta              = 10000.0
        hidden_act              = 'silu'
        tie_word_embeddings     = $true
        torch_dtype             = 'float32'
        bos_token_id            = 1
        eos_token_id            = 2
    }
    $t = [System.Collections.Generic.List[object]]::new()
    function AddT([string] $name, [long[]] $shape) { $t.Add([pscustomobject]@{ Name = $name; DType = 'F32'; Shape = $shape; Offsets = $null }) }
    AddT 'model.embed_tokens.weight' @(32, 16)                       # [V, D]
    AddT 'model.layers.0.input_layernorm.weight' @(16)               # [D]
    AddT 'model.layers.0.self_attn.q_proj.weight' @(16, 16)          # [H*Hd, D]
    AddT 'model.layers.0.self_attn.k_proj.weight' @(8, 16)           # [K*Hd, D]
    AddT 'model.layers.0.self_attn.v_proj.weight' @(8, 16)           # [K*Hd, D]
    AddT 'model.layers.0.self_attn.o_proj.weight' @(16, 16)          # [D, H*Hd]
    AddT 'model.layers.0.post_attention_layernorm.weight' @(16)      # [D]
    AddT 'model.layers.0.mlp.gate_proj.weight' @(32, 16)             # [F, D]
    AddT 'model.layers.0.mlp.up_proj.weight' @(32, 16)               # [F, D]
    AddT 'model.layers.0.mlp.down_proj.weight' @(16, 32)             # [D, F]
    AddT 'model.norm.weight' @(16)                                   # [D]
    [pscustomobject]@{ Config = $config; Tensors = $t }
}

function Write-SafetensorsFile {
    <#
    Writes tensors (objects with Name, DType, Shape, optional Offsets, optional Bytes) with random data, or a tensor's
    own Bytes when it has them. Offsets default to packed in order; a tensor's Offsets (two numbers) are written as
    given, the data section is then as long as the largest end.
    #>
    param([string] $Path, [object[]] $Tensors, [int] $Seed = 1)
    $rng = [System.Random]::new($Seed)
    $header = [ordered]@{}
    $offset = [long]0
    $dataEnd = [long]0
    foreach ($t in $Tensors) {
        $n = [long]1; foreach ($d in $t.Shape) { $n *= $d }
        $bytes = if ($t.PSObject.Properties['Bytes'] -and $null -ne $t.Bytes) { $t.Bytes.Length } else { $n * (Get-DTypeSize $t.DType) }
        $o = if ($null -ne $t.Offsets) { @($t.Offsets) } else { @($offset, ($offset + $bytes)) }
        $header[$t.Name] = [ordered]@{ dtype = $t.DType; shape = @($t.Shape); data_offsets = $o }
        if ($null -eq $t.Offsets) { $offset = [long]$o[1] }   # a tensor placed by hand leaves the packing alone
        if ($o[1] -gt $dataEnd -and $o[1] -lt 1e9) { $dataEnd = [long]$o[1] }
    }
    $header['__metadata__'] = [ordered]@{ format = 'pt' }
    $json = $header | ConvertTo-Json -Depth 5 -Compress
    $pad = (8 - [Text.Encoding]::UTF8.GetByteCount($json) % 8) % 8
    $jsonBytes = [Text.Encoding]::UTF8.GetBytes($json + (' ' * $pad))
    # Data: small random floats so the weights are not all zero.
    $floats = [float[]]::new([Math]::Ceiling($dataEnd / 4))
    for ($i = 0; $i -lt $floats.Length; $i++) { $floats[$i] = [float](($rng.NextDouble() - 0.5) * 0.2) }
    $data = [byte[]]::new($dataEnd)
    [Buffer]::BlockCopy($floats, 0, $data, 0, $dataEnd)
    foreach ($t in $Tensors) {
        if ($t.PSObject.Properties['Bytes'] -and $null -ne $t.Bytes) { [Array]::Copy($t.Bytes, 0, $data, [long]$header[$t.Name].data_offsets[0], $t.Bytes.Length) }
    }
    $fs = [IO.File]::Create($Path)
    try {
        $fs.Write([BitConverter]::GetBytes([uint64]$jsonBytes.Length), 0, 8)
        $fs.Write($jsonBytes, 0, $jsonBytes.Length)
        $fs.Write($data, 0, $data.Length)
    }
    finally { $fs.Dispose() }
}

function New-ModelFolder {
    <#
    Writes a tiny llama model folder under $Root\$Name. -Mutate gets the spec (Config, Tensors) to change first.
    -NoConfig leaves out config.json. Returns the folder path.
    #>
    param([string] $Root, [string] $Name = 'tiny-llama', [scriptblock] $Mutate, [switch] $NoConfig)
    $dir = Join-Path $Root $Name
    New-Item -ItemType Directory -Force $dir | Out-Null
    $spec = New-TinyLlamaSpec
    if ($Mutate) { & $Mutate $spec }
    if (-not $NoConfig) { $spec.Config | ConvertTo-Json -Depth 5 | Set-Content -LiteralPath (Join-Path $dir 'config.json') -Encoding utf8 }
    Write-SafetensorsFile -Path (Join-Path $dir 'model.safetensors') -Tensors $spec.Tensors
    [ordered]@{ bos_token_id = 1; eos_token_id = 2 } | ConvertTo-Json | Set-Content -LiteralPath (Join-Path $dir 'generation_config.json') -Encoding utf8
    $dir
}

function Get-LoadedNames { @(Get-CalmModel | ForEach-Object Name) -join ',' }
