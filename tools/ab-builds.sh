#!/usr/bin/env bash
# One device call comparing staged builds (.stage/<name>.tar.xz, each what tools/stage-gpu.sh packs): every build in
# $BUILDS gets its own copy of the working tree, then per build the settings in AB_ENVS_<name> (';'-separated, default
# one empty setting) run tools/quick-sol.ps1 ($QUICK_RUNS); VARIANTS_<name>=1 also runs the quantized variant report
# (needs the tarball's test build, which tools/stage-gpu.sh packs; bin-only tarballs are refused). The first build run
# on a fresh machine compiles every kernel file (a change in any header recompiles every file): give it AB_TIMEOUT
# 200 s or more, or carry .stage/kcache.tar.xz.
# Usage there: source .gpu/boot.sh && BUILDS="head new" AB_ENVS_new="CALM_FOLD_NORM=0;CALM_FOLD_NORM=1" bash tools/ab-builds.sh
set -uo pipefail
root=$(pwd)
export CALM_CACHE_DIR=${CALM_CACHE_DIR:-/tmp/calmcache}
# a carried kernel cache (tools/gpu-call.sh) saves the builds that share kernel sources the cold compile
if [[ -f .stage/kcache.tar.xz && ! -d "$CALM_CACHE_DIR" ]]; then mkdir -p "$CALM_CACHE_DIR" && tar xJf .stage/kcache.tar.xz -C "$CALM_CACHE_DIR"; fi
for b in $BUILDS; do
  d=/tmp/build-$b; rm -rf "$d"; mkdir -p "$d"
  tar c --exclude=./.gpu --exclude=./.stage --exclude=./.git . | (cd "$d" && tar x)
  (cd "$d" && tar xJf "$root/.stage/$b.tar.xz")
  envs_var="AB_ENVS_$b"; IFS=';' read -ra sets <<< "${!envs_var:-}"; [[ ${#sets[@]} -eq 0 ]] && sets=("")
  for set in "${sets[@]}"; do
    echo "== build $b: ${set:-defaults}" | tee -a "$OUT/ab-builds.txt"
    (cd "$d" && env $set timeout ${AB_TIMEOUT:-200} pwsh -NoProfile -File tools/quick-sol.ps1 -Runs "${QUICK_RUNS:-Llama-3-8B:fp8,Llama-3-8B:int4}" 2>&1) | grep -E "^quick|Error|error" | tee -a "$OUT/ab-builds.txt"
  done
  var_var="VARIANTS_$b"
  if [[ "${!var_var:-0}" == 1 ]] && ! tar tJf "$root/.stage/$b.tar.xz" | grep -q '^tests/Calm.Engine.Tests/bin/Release/'; then
    # the report runs the xunit build in the tree: with a bin-only tarball it would time whatever engine that build holds
    echo "== build $b: no variant report (its tarball holds no tests/Calm.Engine.Tests/bin/Release; pack it with tools/stage-gpu.sh)" | tee -a "$OUT/ab-builds.txt"
  elif [[ "${!var_var:-0}" == 1 ]]; then
    (cd "$d" && CALM_VARIANTS_TC_ONLY=1 OUT=/tmp timeout 200 dotnet tests/Calm.Engine.Tests/bin/Release/net8.0/Calm.Engine.Tests.dll -method Calm.Engine.Tests.Cuda.QuantKernelVariantReport.TimeRowsPerWarpVariants > /dev/null 2>&1)
    cp /tmp/quant-matvec-variants.txt "$OUT/variants-$b.txt" 2>/dev/null && grep -E "t4 |t1w " "$OUT/variants-$b.txt" | head -12
  fi
done
