"""Every vLLM argv the planner writes is accepted by a real vLLM release (.ci/vllm.sh, 0.32.0).

The argv goes through vLLM's own CLI (parser and `serve` validation) and EngineArgs; for the
unquantized models vLLM also builds its engine config: it resolves config.json (ours, written into
an offline HF cache from the catalog's facts), checks max_model_len against the model, and builds
the speculative config with the draft's own config.json. Quantized checkpoints stop at EngineArgs:
the CPU platform this machine offers rejects GPU-only quantizations for reasons unrelated to argv.
"""

from __future__ import annotations

import pytest
from tests.plan.conftest import run_plan
from tests.support.vllm_run import VENV_PY, check_argvs

pytestmark = pytest.mark.vllm

# (name, simulated hardware, env, engine args, whether vLLM builds the whole engine config)
CASES = [
    ("zero-config H100", "h100-sxm", {}, (), False),
    ("zero-config A100 40GB", "a100-40gb", {}, (), False),
    ("tensor parallel 4xL4", "4xl4", {}, (), False),
    ("tensor parallel 2x4090", "2xrtx-4090", {}, (), False),
    (
        "bf16 with a draft model",
        "a100-80gb",
        {
            "PREFLIGHT_MODEL": "llama-3.1-8b-instruct@bf16",
            "PREFLIGHT_ENGINE": "vllm",
            "PREFLIGHT_SPECULATIVE": "on",
        },
        (),
        True,
    ),
    (
        "bf16 Qwen3 with a draft, fp8 KV, user flags",
        "h100-sxm",
        {
            "PREFLIGHT_MODEL": "qwen3-8b@bf16",
            "PREFLIGHT_ENGINE": "vllm",
            "PREFLIGHT_SPECULATIVE": "on",
            "PREFLIGHT_KV_CACHE_TYPE": "fp8",
        },
        ("--enable-prefix-caching", "--max-num-batched-tokens", "4096"),
        True,
    ),
    (
        "bf16 tensor parallel with a draft",
        "2xa100-80gb",
        {
            "PREFLIGHT_MODEL": "qwen3-32b@bf16",
            "PREFLIGHT_SPECULATIVE": "on",
            "PREFLIGHT_PARALLEL": "4",
        },
        (),
        False,
    ),
    (
        "bf16 pinned context, VLLM_MODEL",
        "l40s",
        {"VLLM_MODEL": "Qwen/Qwen2.5-7B-Instruct", "VLLM_MAX_MODEL_LEN": "16384"},
        (),
        True,
    ),
]


@pytest.fixture(scope="module")
def vllm_results(tmp_path_factory):
    if not VENV_PY.exists():
        pytest.skip("vLLM environment not built: run `make vllm` (.ci/vllm.sh)")
    tmp = tmp_path_factory.mktemp("vllm")
    plans = {}
    cases = []
    repos: set[str] = set()
    for name, hw, env, args, full in CASES:
        p = run_plan(hw, env, args)
        assert p.verdict == "ship" and p.engine == "vllm", (name, p.reasons)
        plans[name] = p
        cases.append({"argv": list(p.argv), "engine_config": full})
        repos.add(p.model.repo)
        if p.draft:
            repos.add(p.draft.repo)
    # Negative controls: the check must be able to fail.
    good = list(plans["bf16 with a draft model"].argv)
    cases.append({"argv": [*good, "--no-such-flag", "1"], "engine_config": False})
    ctx = good.index("--max-model-len") + 1
    too_long = [*good[:ctx], "1000000", *good[ctx + 1 :]]
    cases.append({"argv": too_long, "engine_config": True})
    results = check_argvs(cases, repos, tmp)
    return plans, results


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_vllm_accepts_the_planned_argv(vllm_results, index):
    plans, results = vllm_results
    name, _, _, _, full = CASES[index]
    p, res = plans[name], results[index]
    assert res["ok"], (p.argv, res)
    assert res["max_model_len"] == p.context
    assert res["max_num_seqs"] == p.parallel
    assert round(res["gpu_memory_utilization"], 2) == float(
        p.argv[p.argv.index("--gpu-memory-utilization") + 1]
    )
    if "--tensor-parallel-size" in p.argv:
        tp = int(p.argv[p.argv.index("--tensor-parallel-size") + 1])
        assert res["tensor_parallel_size"] == tp > 1
    if p.draft is not None:
        assert res["speculative_config"]["model"] == p.draft.repo
    if full:
        assert res["stage"] == "engine_config"
        assert res["resolved_max_model_len"] == p.context
        if p.draft is not None:
            assert res["speculative_method"] == "draft_model" and res["draft_tokens"] == 3


def test_vllm_rejects_what_it_should(vllm_results):
    _, results = vllm_results
    unknown, too_long = results[len(CASES)], results[len(CASES) + 1]
    assert not unknown["ok"] and "--no-such-flag" in unknown["error"]
    assert not too_long["ok"] and "max_model_len" in too_long["error"].lower().replace("-", "_")
