#!/usr/bin/env bash
# The shared-prompt GPU measurements behind docs/benchmarks.md. Run from the repo root on a CUDA machine:
#   bash scripts/gpu_bench.sh [OUT_DIR]
# scripts/gpu_env.sh installs the carried wheels and sets the environment first.
set -u
OUT_DIR=${1:-${OUT:-/tmp/rllava_gpu_bench}}
source scripts/gpu_env.sh
echo "== 1/4 shared-prompt equality on this transformers version (CPU)"
CUDA_VISIBLE_DEVICES= timeout 150 python3 -m pytest tests/test_shared_prompt.py -q -p no:cacheprovider 2>&1 | tail -n 3 | tee "$OUT_DIR/test_shared_prompt.log"
echo "== 2/4 Qwen2-VL-2B shape, bf16, 448 px image, 8 x 256 tokens"
timeout 150 python3 benchmarks/shared_prompt.py --device cuda --size 2b --dtype bfloat16 --image 448 --response 256 --threads 4 2>&1 | tail -n 1 | tee "$OUT_DIR/shared_448.json"
echo "== 3/4 the same with a 672 px image (576 image tokens)"
timeout 150 python3 benchmarks/shared_prompt.py --device cuda --size 2b --dtype bfloat16 --image 672 --response 256 --threads 4 2>&1 | tail -n 1 | tee "$OUT_DIR/shared_672.json"
echo "== 4/4 vs TRL on the GPU (fp32, the CPU benchmark's settings)"
timeout 150 python3 benchmarks/vs_trl.py --device cuda --warmup 3 --steps 10 --threads 4 2>&1 | tail -n 1 | tee "$OUT_DIR/vs_trl_cuda.json"
