#!/usr/bin/env bash
# Registers and spills of every kernel (see tools/kernel-regs.py): compiles kernels/*.cu for sm_<arch> (default 90)
# with NVRTC through the engine's KernelCompiler (Release build of src/Calm.Engine) and reads the cubins. No GPU needed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
arch="${1:-90}"
cd "$root"
dotnet build src/Calm.Engine -c Release -v q -nologo -clp:ErrorsOnly >/dev/null
tmp="$(mktemp -d)"
dotnet pwsh -NoProfile -Command "
  Add-Type -Path '$root/src/Calm.Engine/bin/Release/net8.0/Calm.Engine.dll'
  foreach (\$f in [Calm.Engine.Cuda.KernelCompiler]::Sources.Keys) {
    if (-not \$f.EndsWith('.cu')) { continue }
    \$img = [Calm.Engine.Cuda.KernelCompiler]::Get(\$f, $arch, \$null, \$false)
    if (\$img.IsCubin) { [IO.File]::WriteAllBytes(\"$tmp/\$f.sm_$arch.cubin\", \$img.Image) }
  }"
python3 "$root/tools/kernel-regs.py" "$tmp"/*.cubin
rm -rf "$tmp"
