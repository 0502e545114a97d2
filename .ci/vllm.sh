#!/usr/bin/env bash
# A virtual environment with a real vLLM release, cached outside the repository, so the tests can
# check every vLLM argv the planner writes against vLLM's own CLI parser and config validation.
# Prints the environment's python. Re-running with a warm cache costs nothing.
set -euo pipefail
VERSION="${VLLM_VERSION:-0.32.0}"
CACHE="${GPU_PREFLIGHT_CACHE:-/var/cache/gpu-preflight}/vllm-${VERSION}"
PY="$CACHE/bin/python"
if [[ -x "$PY" && -f "$CACHE/.complete" ]]; then
  echo "$PY"; exit 0
fi
rm -rf "$CACHE"
python3 -m venv "$CACHE"
"$PY" -m pip install -q "vllm==${VERSION}" >&2
# Only the text CLI is exercised. Where pip resolves a CPU torch build, the CUDA-built
# torchvision/torchaudio fail to import ("operator torchvision::nms does not exist") and
# transformers imports torchvision when present; they are not needed for text models.
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec >&2 || true
VLLM_TARGET_DEVICE=cpu "$PY" -c "import vllm.entrypoints.cli.main" >&2
touch "$CACHE/.complete"
echo "$PY"
