source .gpu/boot.sh
STEPS=issue6 bash tools/gpu-call.sh 2>&1 | grep -E "Decode|Prefill|rror" | head -20
STEPS=side SIDE_TIMEOUT=280 bash tools/gpu-call.sh 2>&1 | tail -8
if (( SECONDS < 470 )); then STEPS=pester-gpu PESTER_TIMEOUT=$((570 - SECONDS)) bash tools/gpu-call.sh 2>&1 | tail -2; fi
cd $OUT && tar cJf /tmp/logs.tar.xz --exclude=kcache.tar.xz . ; find . -mindepth 1 -exec rm -rf {} + ; mv /tmp/logs.tar.xz $OUT/; ls $OUT
