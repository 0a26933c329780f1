#!/usr/bin/env bash
# Packs the Release build output (module bin/ and the xunit test executable) into .stage/build.tar.xz so a device
# call can carry it with .gpu/ under the 64 MiB limit. Then, on the GPU machine (carry [".gpu", ".stage"]):
#   source .gpu/boot.sh && tar xJf .stage/build.tar.xz && pwsh -NoProfile -File ./build.ps1 GpuTest
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
dotnet pwsh ./build.ps1 Build >/dev/null
mkdir -p .stage
grep -qx '/.stage/' .git/info/exclude 2>/dev/null || echo '/.stage/' >>.git/info/exclude
tar cf - bin tests/Calm.Engine.Tests/bin/Release | xz -T0 -6 >.stage/build.tar.xz
du -sh .stage/build.tar.xz | sed 's/^/carry .stage: /' >&2
