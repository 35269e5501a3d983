#!/usr/bin/env bash
# The 24 GiB memory benchmark behind docs/benchmarks.md ("A 4 B-class VLM on 24 GB"). Repo root, CUDA machine:
#   bash scripts/gpu_memory.sh [OUT_DIR]
# MEM_ARGS adds arguments, e.g. the 7 B check with 8-bit AdamW states in host memory:
#   MEM_ARGS="--size 7b --vocab 152064 --variants offload_8bit --timeout 480" bash scripts/gpu_memory.sh
set -u
OUT_DIR=${1:-${OUT:-/tmp/rllava_gpu_memory}}
source scripts/gpu_env.sh
free -g | head -2 | tee -a "$OUT_DIR/machine.txt"; nproc | tee -a "$OUT_DIR/machine.txt"
timeout 540 python3 benchmarks/memory_24gb.py --workdir /tmp/m24 --timeout 210 ${MEM_ARGS:-} 2>&1 \
  | grep -v "Loading weights\|Writing model" | tee "$OUT_DIR/memory_24gb.log" | tail -n 4
