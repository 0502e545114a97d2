"""Issue 20 item 3: a --quantization the checkpoint does not carry is refused before the exec,
naming vLLM's rule, and checked against vLLM 0.32's own create_engine_config.

vllm/config/model.py ModelConfig._verify_quantization reads quant_method from the checkpoint's
config.json and refuses another method ("... does not match the quantization method specified
in the `quantization` argument"), or a name it does not have ("Unknown quantization method").
A checkpoint that carries none accepts fp8 (quantized at load); a method that reads its settings
from the checkpoint (awq, gptq, ...) is refused while the engine config is built
(vllm/config/vllm.py VllmConfig._get_quantization_config ->
vllm/model_executor/model_loader/weight_utils.py get_quant_config: "Cannot find the config file
for awq"). The cases go through the real
vLLM release (tests/support/vllm_check.py) with a config.json per repo that carries the
checkpoint's quantization_config, as the Hub's do.

On main before this change each of these was an input error (exit 2) or, for fp8 on a bf16
checkpoint, refused although vLLM serves it.
"""

from __future__ import annotations

import json
import shlex

import pytest
from tests.plan.conftest import run_plan
from tests.support.vllm_coverage import CPU_PY
from tests.support.vllm_run import SCRIPT, VENV_PY, run_in_vllm, write_hub

from gpu_preflight.cli.estimate_cmd import run_estimate
from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.plan.vllm import checkpoint_method

# Each checkpoint's quantization_config as its config.json on the Hub carries it.
QUANT_CONFIGS = {
    "Qwen/Qwen3-14B-FP8": {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "weight_block_size": [128, 128],
    },
    "Qwen/Qwen3-14B-AWQ": {
        "quant_method": "awq",
        "bits": 4,
        "group_size": 128,
        "zero_point": True,
        "version": "gemm",
    },
}
# (name, typed command, rejected by vLLM's create_engine_config, refused by the plan, rule cited)
CASES = [
    ("fp8 checkpoint, awq asked", "vllm serve Qwen/Qwen3-14B-FP8 --quantization awq", True, True, "_verify_quantization"),
    ("fp8 checkpoint, fp8 asked", "vllm serve Qwen/Qwen3-14B-FP8 --quantization fp8", False, False, ""),
    ("fp8 checkpoint, nothing asked", "vllm serve Qwen/Qwen3-14B-FP8", False, False, ""),
    ("awq checkpoint, fp8 asked", "vllm serve Qwen/Qwen3-14B-AWQ -q fp8", True, True, "_verify_quantization"),
    ("awq checkpoint, gptq asked", "vllm serve Qwen/Qwen3-14B-AWQ --quantization gptq", True, True, "_verify_quantization"),
    ("awq checkpoint, awq asked", "vllm serve Qwen/Qwen3-14B-AWQ --quantization awq", False, False, ""),
    ("bf16 checkpoint, fp8 asked (online)", "vllm serve Qwen/Qwen3-8B --quantization fp8", False, False, ""),
    # VllmConfig._get_quantization_config -> get_quant_config: no awq config file in the repo.
    ("bf16 checkpoint, awq asked", "vllm serve Qwen/Qwen3-8B --quantization awq", True, True, "get_quant_config"),
]  # fmt: skip
GPU = "h100-sxm"


def _estimate(cmd: str):
    return run_estimate({}, {}, (*shlex.split(cmd), "--max-model-len", "8192"), GPU, False, None)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_the_plan_applies_vllms_quantization_rule(index):
    name, cmd, _, refused, rule = CASES[index]
    p = _estimate(cmd)
    if refused:
        assert p.verdict == "refuse", (name, p.argv)
        joined = " ".join(p.reasons)
        assert rule in joined and "Accepted:" in joined, (name, joined)
    else:
        assert p.verdict == "ship", (name, p.reasons)
        assert p.argv == (*shlex.split(cmd), "--max-model-len", "8192")


def test_the_refusal_is_a_refusal_not_a_bad_input():
    # `plan`/`run` too: vLLM's rule, exit 3, not an input error (exit 2).
    p = run_plan(GPU, {}, ("vllm", "serve", "Qwen/Qwen3-14B-FP8", "--quantization", "awq"))
    assert p.verdict == "refuse"
    assert "does not match the quantization method" in " ".join(p.reasons)


def test_checkpoint_methods_follow_the_checkpoints_config():
    by_repo = {a.repo: a for m in load_catalog().models for a in m.artifacts if a.engine == "vllm"}
    assert checkpoint_method(by_repo["Qwen/Qwen3-8B"]) is None
    assert checkpoint_method(by_repo["Qwen/Qwen3-14B-FP8"]) == "fp8"
    # llm-compressor exports: config.json quant_method "compressed-tensors"
    assert checkpoint_method(by_repo["RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8"]) == (
        "compressed-tensors"
    )
    p = run_estimate(
        {},
        {},
        ("vllm", "serve", "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8", "--quantization", "fp8"),
        GPU,
        False,
        None,
    )
    assert p.verdict == "refuse" and "compressed-tensors" in " ".join(p.reasons)


@pytest.mark.vllm
def test_the_rule_is_vllms_own(tmp_path):
    python = VENV_PY if VENV_PY.exists() else CPU_PY
    if not python.exists():
        pytest.skip("vLLM environment not built: run `make vllm` (.ci/vllm.sh)")
    repos = {shlex.split(c[1])[2] for c in CASES}
    write_hub(tmp_path / "hub", repos)
    for repo, qc in QUANT_CONFIGS.items():
        for cfg in (tmp_path / "hub").glob(
            f"models--{repo.replace('/', '--')}/snapshots/*/config.json"
        ):
            data = json.loads(cfg.read_text())
            cfg.write_text(json.dumps({**data, "quantization_config": qc}))
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    cases = [
        {"argv": [*shlex.split(c[1]), "--max-model-len", "8192"], "engine_config": True}
        for c in CASES
    ]
    results = run_in_vllm(SCRIPT, cases, tmp_path, env, python=python)
    for (name, cmd, rejected, refused, _), res in zip(CASES, results, strict=True):
        assert res["ok"] is (not rejected), (name, res)
        if rejected:
            # whatever vLLM rejects, the plan rejects (and in vLLM's words)
            assert refused, name
            assert any(
                why in res["error"]
                for why in ("does not match the quantization method", "Cannot find the config file")
            ), (name, res)
        if not refused:
            # whatever the plan ships, vLLM accepts
            assert res["ok"] and res["stage"] == "engine_config", (name, res)
            assert _estimate(cmd).verdict == "ship", name
