# Sourced by the scripts/gpu_*.sh runners (repo root, CUDA machine): install the wheels in .whl/ (trl,
# datasets and their missing deps) when present, for machines without a package index; set the
# environment; record the machine in $OUT_DIR/machine.txt.
OUT_DIR=${OUT_DIR:-${OUT:-/tmp/rllava_gpu}}
mkdir -p "$OUT_DIR"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  date -u; } 2>&1 | tee "$OUT_DIR/machine.txt"
