"""Issue 20 item 3/4: with VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 the longer --max-model-len is planned,
and what vLLM 0.32 does with rope scaling there is accounted: nothing. It only warns
(vllm/config/model.py _get_and_verify_max_len), scales no rope, and sizes the rotary cos/sin
cache by the config's max_position_embeddings (rotary_embedding/base.py _compute_cos_sin_cache),
so the memory differs from the model's own length only by the KV of the longer one."""

from __future__ import annotations

import shlex

from gpu_preflight.cli.estimate_cmd import run_estimate

CMD = "vllm serve google/gemma-2-2b-it --max-model-len {n} --gpu-memory-utilization 0.5"


def _plan(n: int, env: dict[str, str]):
    return run_estimate(env, {}, tuple(shlex.split(CMD.format(n=n))), "h100-sxm", False, None)


def test_the_longer_context_is_planned_and_costs_only_its_kv():
    allow = {"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"}
    at_model = _plan(8192, allow)
    longer = _plan(16384, allow)
    assert at_model.verdict == longer.verdict == "ship", (at_model.reasons, longer.reasons)
    assert longer.context == 16384
    assert longer.predicted is not None and at_model.predicted is not None
    assert any("scales no rope" in n for n in longer.predicted.notes)
    assert not any("scales no rope" in n for n in at_model.predicted.notes)
    a, b = at_model.predicted.devices[0], longer.predicted.devices[0]
    assert a.weights_bytes == b.weights_bytes and a.overhead_bytes == b.overhead_bytes
    # vLLM's pool is the budget left: the same; the longer length needs twice a request's KV.
    assert b.kv_cache_bytes == a.kv_cache_bytes
    assert longer.predicted.max_concurrency is not None
    assert at_model.predicted.max_concurrency is not None
    assert longer.predicted.max_concurrency < at_model.predicted.max_concurrency
    # Without the variable vLLM refuses it, and so does the plan.
    assert _plan(16384, {}).verdict == "refuse"
