#!/usr/bin/env bash
# One device call (see tools/stage-gpu.sh): unpack the staged build, then run the steps named in $STEPS (comma list)
# with logs under $OUT. Steps: regs (registers/spills of every kernel for this GPU, incl. sm_90a files), wgmma-tests,
# classes (CLASSES=...), prefill-tests, prefill-bench, prefill-quant, quant-tests, pester-gpu, gpu-tests (build.ps1
# GpuTest), issue6 (bench/Issue6.Bench.ps1, every row), ab (Issue6 rows AB_ONLY once per setting of AB_ENVS), attpf
# (bench/AttentionFp8.Bench.ps1 over the L2 prefetch distances ATT_PF), ncu (Nsight Compute: NCU_CONFIGS, NCU_STEP), quick
# (tools/quick-sol.ps1 once per setting of QUICK_ENVS), probe (tools/probe/*.cu built with nvcc, PROBES = which:
# mv_chain, engine_chain, att_trace, stream_modes), side (bench/SideBySide.Bench.ps1, static cache only), harness (tools/harness-check.ps1).
# Kernel cache: .stage/kcache.tar.xz (when carried) fills CALM_CACHE_DIR before the steps, and the cache is packed
# into $OUT/kcache.tar.xz afterwards; copy that to .stage/ for the next call, which then compiles only kernel files
# whose source or headers changed (keys: source, all headers, target, NVRTC version).
# Usage there: source .gpu/boot.sh && STEPS=regs,wgmma-tests,prefill-bench bash tools/gpu-call.sh
set -uo pipefail
tar xJf .stage/build.tar.xz
export CALM_CACHE_DIR=${CALM_CACHE_DIR:-/tmp/calmcache}
if [[ -f .stage/kcache.tar.xz ]]; then mkdir -p "$CALM_CACHE_DIR" && tar xJf .stage/kcache.tar.xz -C "$CALM_CACHE_DIR"; fi
trap 'tar cf - -C "$CALM_CACHE_DIR" . 2>/dev/null | xz -T0 -3 > "$OUT/kcache.tar.xz"' EXIT
T=tests/Calm.Engine.Tests/bin/Release/net8.0/Calm.Engine.Tests.dll
NS=Calm.Engine.Tests.Cuda
has() { [[ ",$STEPS," == *",$1,"* ]]; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
if has regs; then
  mkdir -p /tmp/cubins
  cat > /tmp/regs.ps1 <<'PS'
Add-Type -Path ./bin/Calm.Engine.dll
foreach ($f in [Calm.Engine.Cuda.KernelCompiler]::Sources.Keys) {
  $img = [Calm.Engine.Cuda.KernelCompiler]::Get($f, 90, $null, $false)
  if ($img.IsCubin) { [IO.File]::WriteAllBytes("/tmp/cubins/$f.$($img.Target).cubin", $img.Image) } else { Write-Host "${f}: $($img.Target) (PTX)" }
}
PS
  pwsh -NoProfile -File /tmp/regs.ps1 2>&1 | tee "$OUT/regs.txt"
  python3 tools/kernel-regs.py /tmp/cubins/*.cubin 2>&1 | tee -a "$OUT/regs.txt" | grep -E "gemmw|gemm4_|rmsnorm_rows|qkv_rope_rows"
  # SASS instruction counts of the GEMM kernels: tensor-core ops, local memory, barriers
  for c in /tmp/cubins/gemm_wgmma.cu.*.cubin /tmp/cubins/gemm.cu.*.cubin; do
    cuobjdump -sass "$c" > /tmp/sass.txt 2>&1 || continue
    awk '/Function :/ {f=$3} /HGMMA/ {g[f]++} /HMMA/ {h[f]++} /LDL|STL/ {l[f]++} /BAR/ {b[f]++} /WARPSYNC|WARPGROUP/ {w[f]++}
         END {for (k in g) printf "%-28s HGMMA %d LDL/STL %d BAR %d WG %d\n", k, g[k], l[k], b[k], w[k];
              for (k in h) if (!(k in g)) printf "%-28s HMMA %d LDL/STL %d BAR %d\n", k, h[k], l[k], b[k]}' /tmp/sass.txt | sort | tee -a "$OUT/regs.txt"
  done
fi
if has probe; then   # PROBES: which of tools/probe/*.cu (default both)
  for pr in ${PROBES:-mv_chain engine_chain}; do
    nvcc -O3 -std=c++17 -arch=sm_90 -o /tmp/$pr tools/probe/$pr.cu 2>&1 | grep -v "warning #177\|declared but never\|^ *\^\|^Remark\|const int pos" | tee "$OUT/probe-$pr.txt"
    timeout ${PROBE_TIMEOUT:-120} /tmp/$pr 2>&1 | tee -a "$OUT/probe-$pr.txt"
  done
fi
if has issue6; then
  timeout 500 pwsh -NoProfile -File bench/Issue6.Bench.ps1 -OutputFolder $OUT/issue6 ${ISSUE6_ONLY:+-Only $ISSUE6_ONLY} 2>&1 | tee "$OUT/issue6.log" | tail -40
fi
if has ab; then   # AB_ONLY=bf16,1b AB_ENVS="CALM_MV_EARLY=0;CALM_MV_EARLY=1 CALM_ATT_PREFETCH=2": Issue6 rows once per setting
  IFS=';' read -ra sets <<< "${AB_ENVS:-}"
  i=0
  for set in "${sets[@]}"; do
    i=$((i+1))
    echo "== ab $i: $set" | tee -a "$OUT/ab.txt"
    env $set timeout ${AB_TIMEOUT:-240} pwsh -NoProfile -File bench/Issue6.Bench.ps1 -OutputFolder $OUT/ab-$i ${AB_ONLY:+-Only $AB_ONLY} > "$OUT/ab-$i.log" 2>&1
    grep -E "^\S+-bench " "$OUT/ab-$i.log" | tee -a "$OUT/ab.txt"
  done
fi
if has quick; then   # QUICK_ENVS="A=1;B=0": decode tok/s at context 0 (tools/quick-sol.ps1, QUICK_RUNS) once per setting
  IFS=';' read -ra sets <<< "${QUICK_ENVS:-}"; [[ ${#sets[@]} -eq 0 ]] && sets=("")
  for set in "${sets[@]}"; do
    echo "== quick: ${set:-defaults}" | tee -a "$OUT/quick.txt"
    env $set timeout ${QUICK_TIMEOUT:-200} pwsh -NoProfile -File tools/quick-sol.ps1 -Runs "${QUICK_RUNS:-Llama-3-8B:fp8,Llama-3-8B:int4}" 2>&1 | grep -E "^quick|Error|error" | tee -a "$OUT/quick.txt"
  done
fi
if has harness; then   # tools/harness-check.ps1: context 0 of one preset/dtype (HARNESS="Llama-3-8B int4") in four measurement forms
  read -r hp hd <<< "${HARNESS:-Llama-3-8B int4}"
  timeout ${HARNESS_TIMEOUT:-240} pwsh -NoProfile -File tools/harness-check.ps1 -Preset $hp -DType $hd 2>&1 | tee "$OUT/harness.txt" | grep -E "^harness [a-z]|rror"
fi
if has side; then   # the side-by-side row: transformers (static cache, compiled) and Calm on the same shape
  timeout ${SIDE_TIMEOUT:-300} pwsh -NoProfile -File bench/SideBySide.Bench.ps1 -OutputFolder $OUT/side -Modes static -Repeat 2 -NewTokens 64 2>&1 | tail -30 | tee "$OUT/side.txt"
fi
if has attpf; then   # attention microbenchmark: L2 prefetch distances (ATT_PF) at ATT_CONTEXTS
  timeout 300 pwsh -NoProfile -File bench/AttentionFp8.Bench.ps1 -Context ${ATT_CONTEXTS:-4096,32768} -Prefetch ${ATT_PF:-0,1,2,4} -SkipEightPerLane -Out $OUT 2>&1 | tail -30 | tee "$OUT/attpf.txt"
fi
if has ncu; then   # Nsight Compute on single kernels (NCU_CONFIGS "kind rows cols dtype variant;...") and one decode step (NCU_STEP "preset dtype")
  IFS=';' read -ra cfgs <<< "${NCU_CONFIGS:-quant 28672 4096 int4 t4;quant 6144 4096 int4 t1;quant 4096 14336 int4 t1;quant 4096 14336 fp8 t1;quant 28672 4096 fp8 t4;dense 4096 14336 bf16 x}"
  ncu --version 2>&1 | tail -1 | tee "$OUT/ncu-version.txt"
  i=0
  for cfg in "${cfgs[@]}"; do
    read -r kind rows cols dt var <<< "$cfg"; i=$((i+1))
    re='matvec_(int4|fp8)_tc_'; [[ $kind == dense ]] && re='^matvec_bf16'
    timeout ${NCU_TIMEOUT:-120} ncu --clock-control none --set full --import-source no -k "regex:$re" -s 1 -c 1 \
      pwsh -NoProfile -File tools/ncu-target.ps1 -Kind $kind -Rows $rows -Cols $cols -DType $dt -Variant $var > "$OUT/ncu-$i-$kind-$dt-${rows}x$cols-$var.txt" 2>&1
    grep -E "^  [a-z_]+.*\(|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Issue Slots Busy|No Eligible|Warp Cycles Per Issued" "$OUT/ncu-$i-$kind-$dt-${rows}x$cols-$var.txt" | head -14
  done
  if [[ -n "${NCU_STEP:-}" ]]; then
    read -r preset sdt <<< "$NCU_STEP"
    timeout ${NCU_TIMEOUT:-200} ncu --clock-control none --csv --page raw -k 'regex:^(matvec|attention|rmsnorm|embed|argmax|moe|qkv|gate)' -s ${NCU_STEP_SKIP:-400} -c ${NCU_STEP_COUNT:-240} \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size,launch__block_size,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active \
      pwsh -NoProfile -File tools/ncu-target.ps1 -Kind step -Preset $preset -DType $sdt > "$OUT/ncu-step-$sdt.csv" 2>&1
    tail -3 "$OUT/ncu-step-$sdt.csv"
  fi
fi
if has wgmma-tests; then
  dotnet $T -method "$NS.PrefillTests.GemmVariant5MatchesReference" -method "$NS.PrefillTests.GemmGatedVariant5MatchesReferenceAndUnfused" 2>&1 | grep -E "FAIL|Total|Passed|Failed|Skipped|Error|error" | head -40 | tee "$OUT/wgmma-tests.txt"
fi
if has classes; then   # CLASSES=PrefillTests,ProofTests,... (test classes of Calm.Engine.Tests.Cuda / .Generation); METHODS=KernelTests.X,...
  # (xunit ANDs -class with -method filters, so the methods run in a second invocation)
  cl=${CLASSES:-}; me=${METHODS:-}
  args=(); for c in ${cl//,/ }; do case $c in *.*) args+=(-class "Calm.Engine.Tests.$c");; *) args+=(-class "$NS.$c");; esac; done
  margs=(); for m in ${me//,/ }; do margs+=(-method "$NS.$m"); done
  : > /tmp/classes.txt
  if [[ ${#args[@]} -gt 0 ]]; then timeout ${CLASSES_TIMEOUT:-400} dotnet $T "${args[@]}" >> /tmp/classes.txt 2>&1; fi
  if [[ ${#margs[@]} -gt 0 ]]; then timeout ${CLASSES_TIMEOUT:-400} dotnet $T "${margs[@]}" >> /tmp/classes.txt 2>&1; fi
  grep -E "\[FAIL\]|Total:|Assert|relative L2 [0-9.E+-]+ >|Error Message" /tmp/classes.txt | head -80
  grep -E "\[FAIL\]|Total:|Passed|Skipped|Error|Assert|L2|at Calm" /tmp/classes.txt | head -300 > "$OUT/classes.txt"
  tail -c 2000000 /tmp/classes.txt > "$OUT/classes-full.txt"   # the whole run (a killed or crashed host prints no Total line)
fi
if has prefill-tests; then
  timeout 400 dotnet $T -class $NS.PrefillTests 2>&1 | grep -E "\[FAIL\]|Total|Failed|Passed:|Skipped:" | head -60 | tee "$OUT/prefill-tests.txt"
fi
if has prefill-bench; then
  timeout 300 pwsh -NoProfile -File bench/Gpu.Prefill.Bench.ps1 -Variants ${PREFILL_VARIANTS:-defaults,gemm-v4} -PromptTokens 512 -SkipTokenByToken -Repeat 3 -Out $OUT 2>&1 | tail -50
fi
if has prefill-quant; then
  for d in fp8 int4; do
    timeout 200 pwsh -NoProfile -File bench/Gpu.Prefill.Bench.ps1 -WeightDType $d -Variants defaults -PromptTokens 512 -Repeat 3 -SkipGemmTable -Out $OUT 2>&1 | tail -12
  done
fi
if has quant-tests; then
  { timeout 300 dotnet $T -method "$NS.PrefillTests.GemmVariant5QuantizedMatchesReference" -method "$NS.PrefillTests.QuantizedBatchedPrefillEqualsPerTokenPrefill" 2>&1
    timeout 200 dotnet $T -class $NS.QuantBackendGpuTests 2>&1; } | grep -E "\[FAIL\]|Total|Assert|relative|Error" | head -60 | tee "$OUT/quant-tests.txt"
fi
if has pester-gpu; then   # the Pester tests tagged GPU (cmdlets end to end on the device)
  timeout ${PESTER_TIMEOUT:-240} pwsh -NoProfile -Command '$c = New-PesterConfiguration; $c.Run.Path = "tests"; $c.Filter.Tag = "GPU"; $c.Output.Verbosity = "Normal"; $c.Run.PassThru = $true; $r = Invoke-Pester -Configuration $c; "Pester GPU: $($r.PassedCount) passed, $($r.FailedCount) failed, $($r.SkippedCount) skipped"' 2>&1 | tee "$OUT/pester-gpu.txt" | grep -E "\[-\]|Pester GPU|Tests Passed" | head -40
fi
if has gpu-tests; then   # the whole GPU suite needs more than one call's 600 s now (2026-11-29): prefer classes
  timeout ${GPU_TESTS_TIMEOUT:-500} pwsh -NoProfile -File ./build.ps1 GpuTest 2>&1 | tail -40 | tee "$OUT/gputest.txt"
fi
