set -u
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name --format=csv,noheader
echo "== 2b 672px 8x256"
timeout 170 python3 benchmarks/shared_prompt.py --device cuda --size 2b --dtype bfloat16 --image 672 --response 256 --threads 4 2>&1 | tail -n 1
echo "== vs_trl share off"
timeout 150 python3 benchmarks/vs_trl.py --device cuda --warmup 3 --steps 10 --threads 4 --ours-override actor.share_prompt=false 2>&1 | tail -n 1
echo "== vs_trl share on"
timeout 150 python3 benchmarks/vs_trl.py --device cuda --warmup 3 --steps 10 --threads 4 2>&1 | tail -n 1
