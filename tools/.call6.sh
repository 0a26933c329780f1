source .gpu/boot.sh
STEPS=quick QUICK_RUNS=Llama-3-8B:int4 QUICK_ENVS=";CALM_QUANT_TC_INT4=t1,t1b,t4b;CALM_QUANT_TC_INT4=t1,t1b,t4;CALM_QUANT_TC_INT4=t1,t2b,t2b;CALM_QUANT_TC_INT4=t1b,t1b,t2b;" bash tools/gpu-call.sh 2>&1 | grep quick
best=$(awk '/== quick/ {s=$3} /quick Llama-3-8B/ {print $4, s}' $OUT/quick.txt | sort -rn | head -1)
def=$(awk '/== quick/ {s=$3} /quick Llama-3-8B/ && s=="defaults" {t+=$4; n++} END {print t/n}' $OUT/quick.txt)
echo "best: $best; defaults mean $def"
read bv bs <<< "$best"
if [[ "$bs" != defaults ]] && awk "BEGIN {exit !($bv > 1.01 * $def)}"; then
  STEPS=ab AB_ONLY=int4 AB_ENVS=";$bs;;$bs" bash tools/gpu-call.sh 2>&1 | tail -10
fi
cd $OUT && tar cJf /tmp/logs.tar.xz --exclude=kcache.tar.xz . ; find . -mindepth 1 -exec rm -rf {} + ; mv /tmp/logs.tar.xz $OUT/; ls $OUT
