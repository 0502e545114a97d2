"""Alternatives are plans: every alternative every refusal in these tables offers ships, when its
env is applied, with the memory it claimed; the refused configuration itself is never offered."""

from __future__ import annotations

import pytest
from tests.plan.conftest import run_plan

from gpu_preflight.plan.refusal import ALTERNATIVE_REPLACES

REFUSALS = [
    ("rtx-3060", {"PREFLIGHT_MODEL": "llama-3.1-70b-instruct"}, 64),
    ("2xrtx-3090", {"PREFLIGHT_MODEL": "llama-3.1-70b-instruct", "PREFLIGHT_PARALLEL": "4"}, 16),
    ("rtx-4090", {"PREFLIGHT_MODEL": "qwen3-32b@bf16"}, 64),
    ("rtx-4090", {"VLLM_MODEL": "Qwen/Qwen3-32B"}, 64),
    ("t4", {"PREFLIGHT_MODEL": "qwen3-32b@Q8_0", "PREFLIGHT_CONTEXT": "32768"}, 16),
    ("a100-40gb", {"PREFLIGHT_MODEL": "qwen2.5-72b-instruct", "PREFLIGHT_ENGINE": "vllm"}, 64),
    ("rtx-4060", {"PREFLIGHT_MODEL": "gpt-oss-120b"}, 32),
]


def _gpu_total(p) -> int:
    gpu = sum(d.total_bytes for d in p.predicted.devices if d.device != "CPU")
    return gpu or sum(d.total_bytes for d in p.predicted.devices)


@pytest.mark.parametrize(
    ("gpu", "env", "ram"), REFUSALS, ids=[f"{g}-{i}" for i, (g, _, _) in enumerate(REFUSALS)]
)
def test_every_alternative_ships_with_the_memory_it_claimed(gpu, env, ram):
    refused = run_plan(gpu, env, host_ram_gib=ram)
    assert refused.verdict == "refuse", (gpu, env)
    assert refused.alternatives, refused.reasons
    seen = [(a.model, a.quant, a.engine, a.context) for a in refused.alternatives]
    assert len(set(seen)) == len(seen)  # each alternative once
    for alt in refused.alternatives:
        assert alt.env, alt
        new_env = {k: v for k, v in env.items() if k not in ALTERNATIVE_REPLACES}
        p = run_plan(gpu, {**new_env, **alt.env}, host_ram_gib=ram)
        assert p.verdict == "ship", (alt, p.reasons)
        assert (p.model.id, p.model.quant, p.engine, p.context) == (
            alt.model,
            alt.quant,
            alt.engine,
            alt.context,
        ), alt
        assert _gpu_total(p) == alt.total_bytes, (alt, _gpu_total(p))


def test_smaller_quant_means_fewer_bytes_of_weights_than_what_was_refused():
    for gpu, env, ram in REFUSALS:
        refused = run_plan(gpu, env, host_ram_gib=ram)
        asked = refused.model
        for alt in refused.alternatives:
            if alt.kind == "smaller-quant" and asked is not None and alt.model == asked.id:
                p = run_plan(gpu, alt.env, host_ram_gib=ram)
                assert p.model.weight_bytes < asked.weight_bytes, (alt, asked)
