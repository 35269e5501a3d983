#!/usr/bin/env bash
# What one more response pass costs on a GPU (`actor.response_pass_tokens`, a guess until this runs), and packed
# rows in the plain forward. Run from the repo root on a CUDA machine (about 5 minutes):
#   bash scripts/gpu_passes.sh [OUT_DIR]
# Each line is one JSON result; compare shared_s across --pass-tokens, and passes_time_ratio against one pass.
set -u
OUT_DIR=${1:-${OUT:-/tmp/rllava_gpu_passes}}
source scripts/gpu_env.sh
for tokens in 0 64 256 1024; do
    echo "== response passes, Qwen2-VL-2B shape, bf16, 8 responses of 26-256 tokens, pass cost $tokens"
    timeout 150 python3 benchmarks/shared_prompt.py --device cuda --size 2b --dtype bfloat16 --image 448 \
        --response 256 --spread 0.9 --pass-tokens "$tokens" --threads 4 2>&1 | tail -n 1 | tee "$OUT_DIR/passes_$tokens.json"
done
echo "== packed rows, Qwen2 2B shape (text), bf16, 8 rows of 1024 tokens split differently"
timeout 150 python3 benchmarks/packing.py --device cuda --size 2b --dtype bfloat16 --total 1024 \
    --prompt 64 960 --threads 4 2>&1 | tail -n 1 | tee "$OUT_DIR/packing_1024.json"
