#!/usr/bin/env bash
# The GPU checks behind docs/benchmarks.md ("GPU checks"). Run from the repo root on a CUDA machine:
#   bash scripts/gpu_check.sh [OUT_DIR]
# scripts/gpu_env.sh installs the carried wheels and sets the environment first.
# Every part has its own time limit, so one hang cannot eat the others.
set -u
OUT_DIR=${1:-${OUT:-/tmp/rllava_gpu_check}}
source scripts/gpu_env.sh
echo "== 1/3 CUDA tests"
timeout 240 python3 -m pytest tests/test_cuda.py -v -s -p no:cacheprovider 2>&1 | tee "$OUT_DIR/test_cuda.log" | grep -v "Loading weights\|Writing model"
echo "== 2/3 vs TRL on the GPU (fp32, the CPU benchmark's settings)"
timeout 200 python3 benchmarks/vs_trl.py --device cuda --warmup 2 --steps 8 --threads 4 --profile "$OUT_DIR" 2>&1 \
  | tee "$OUT_DIR/vs_trl_cuda.log" | tail -n 1
for side in ours trl; do  # where each side's time goes (cProfile: a GPU wait shows up in the call that syncs)
  [ -f "$OUT_DIR/$side.prof" ] && python3 -c "import pstats, sys; s = pstats.Stats(sys.argv[1]); \
s.sort_stats('tottime').print_stats(30); s.sort_stats('cumulative').print_stats(60)" "$OUT_DIR/$side.prof" \
  > "$OUT_DIR/profile_$side.txt" 2>&1 && rm "$OUT_DIR/$side.prof"
done
echo "== 3/3 every tiny model family on this torch/transformers (CPU)"
CUDA_VISIBLE_DEVICES= timeout 120 python3 -m pytest tests/test_models_tiny.py -q -p no:cacheprovider -x 2>&1 | tail -n 5 | tee "$OUT_DIR/families.log"
