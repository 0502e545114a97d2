"""What vLLM 0.32 refuses at start, the plan refuses; what the plan ships, vLLM accepts (issue 20,
item 3). Each typed command goes through `estimate` and through the real vLLM release's CLI,
EngineArgs and create_engine_config (tests/support/vllm_check.py, on the CPU platform, with a
config.json per model in an offline Hugging Face cache).

Memory is not vLLM's to judge on this machine (no GPU), so the cases are the configuration
rules: --max-model-len against the model's derived length (with and without
VLLM_ALLOW_LONG_MAX_MODEL_LEN), the tensor parallel size against the attention heads, and values
vLLM takes as typed (--data-parallel-size, vLLM's own default --max-num-seqs).
"""

from __future__ import annotations

import shlex

import pytest
from tests.support.vllm_run import VENV_PY, check_argvs

from gpu_preflight.cli.estimate_cmd import run_estimate

pytestmark = pytest.mark.vllm

# (name, devices, typed command, environment, whether vLLM's config check must reject it)
CASES = [
    ("gemma-2 above its length", "h100-sxm", "vllm serve google/gemma-2-2b-it --max-model-len 16384", {}, True),
    (
        "gemma-2 above its length, allowed",
        "h100-sxm",
        "vllm serve google/gemma-2-2b-it --max-model-len 16384",
        {"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"},
        False,
    ),
    ("gemma-2 at its length", "h100-sxm", "vllm serve google/gemma-2-2b-it --max-model-len 8192", {}, False),
    ("qwen2.5-7b tp 8 (28 heads)", "8xh100-sxm", "vllm serve Qwen/Qwen2.5-7B-Instruct -tp 8", {}, True),
    ("qwen2.5-7b tp 4", "4xh100-sxm", "vllm serve Qwen/Qwen2.5-7B-Instruct -tp 4 --max-model-len 8192", {}, False),
    (
        "llama 8b, vLLM's default max-num-seqs written out",
        "h100-sxm",
        "vllm serve meta-llama/Llama-3.1-8B-Instruct --max-model-len 8192 --max-num-seqs 1024",
        {},
        False,
    ),
    (
        "llama 8b data parallel 2",
        "2xh100-sxm",
        "vllm serve meta-llama/Llama-3.1-8B-Instruct --max-model-len 8192 --data-parallel-size 2",
        {},
        False,
    ),
]  # fmt: skip


@pytest.fixture(scope="module")
def vllm_verdicts(tmp_path_factory):
    if not VENV_PY.exists():
        pytest.skip("vLLM environment not built: run `make vllm` (.ci/vllm.sh)")
    tmp = tmp_path_factory.mktemp("vllm-rules")
    cases = [
        {"argv": shlex.split(cmd), "engine_config": True, "env": env} for _, _, cmd, env, _ in CASES
    ]
    repos = {shlex.split(cmd)[2] for _, _, cmd, _, _ in CASES}
    return check_argvs(cases, repos, tmp)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_the_plan_refuses_what_vllm_refuses(vllm_verdicts, index):
    name, gpu, cmd, env, rejected = CASES[index]
    res = vllm_verdicts[index]
    plan = run_estimate(env, {}, tuple(shlex.split(cmd)), gpu, False, None)
    assert res["ok"] is (not rejected), (name, res)
    if not res["ok"]:
        assert plan.verdict == "refuse", (name, plan.argv)
    if plan.verdict == "ship":
        assert res["ok"], (name, res)
        assert res["stage"] == "engine_config"
        assert res["resolved_max_model_len"] == plan.context
        assert res["max_num_seqs"] in (None, plan.parallel)
