#!/usr/bin/env bash
# The shared-prompt A/B on the GPU behind docs/benchmarks.md (2b model at 672 px; vs TRL with sharing off, then on):
#   bash scripts/gpu_bench_ab.sh [OUT_DIR]
set -u
OUT_DIR=${1:-${OUT:-/tmp/rllava_gpu_bench_ab}}
source scripts/gpu_env.sh
echo "== 2b 672px 8x256"
timeout 170 python3 benchmarks/shared_prompt.py --device cuda --size 2b --dtype bfloat16 --image 672 --response 256 --threads 4 2>&1 | tail -n 1
echo "== vs_trl share off"
timeout 150 python3 benchmarks/vs_trl.py --device cuda --warmup 3 --steps 10 --threads 4 --ours-override actor.share_prompt=false 2>&1 | tail -n 1
echo "== vs_trl share on"
timeout 150 python3 benchmarks/vs_trl.py --device cuda --warmup 3 --steps 10 --threads 4 2>&1 | tail -n 1
