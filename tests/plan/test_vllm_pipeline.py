"""vLLM on uneven cards, one server (issue 13): pipeline parallel with each card's own layer share.

The stage model (memory/vllm_pipeline.py) against vLLM's rules: the partition sums to the layers,
a bigger card gets more of them, the pool is the poorest stage's, no device over its budget. The
plan carries VLLM_PP_LAYER_PARTITION in the engine env it execs with, and the real vLLM 0.32
parser, EngineArgs and get_pp_indices resolve the shipped argv + env to the planned stages.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.plan.conftest import CATALOG, GIB, run_plan
from tests.support.vllm_run import VENV_PY, check_argvs

from gpu_preflight import pipeline
from gpu_preflight.errors import InvalidInput
from gpu_preflight.memory.vllm import VllmConfig, VllmConfigError
from gpu_preflight.memory.vllm_pipeline import (
    Stage,
    estimate_vllm_pipeline,
    partition_layers,
    pipeline_blocks,
    stage_weights,
)

PAIRS = ["a100-80gb,a100-40gb", "h100-sxm,l4", "2xa100-80gb,2xa100-40gb", "2xh100-sxm,2xl4"]


def _spec_art(model: str, quant: str):
    spec = CATALOG.get(model)
    art = next(a for a in spec.artifacts if a.engine == "vllm" and a.quant == quant)
    return spec, art


def _flag(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


def test_stage_weights_add_up_to_the_model_with_the_embeddings_and_head_where_vllm_builds_them():
    spec, art = _spec_art("llama-3.1-70b-instruct", "awq")
    stages = [Stage(80 * GIB, 50), Stage(40 * GIB, 30)]
    w = [stage_weights(spec, art, 1, stages, i) for i in range(2)]
    lay = art.layout
    # everything once, plus the fixed extra per rank
    assert abs(sum(w) - art.weight_bytes) <= 2 * 96 * 2**20 + 2
    assert w[0] > sum(lay.per_layer_bytes[:50]) + lay.token_embd_bytes - 1
    assert w[1] > sum(lay.per_layer_bytes[50:]) + lay.output_bytes - 1


def test_a_tied_model_builds_the_embeddings_on_the_last_stage_too():
    spec = next(m for m in CATALOG.models if m.arch.tied_embeddings and not m.arch.sliding_window)
    art = next(a for a in spec.artifacts if a.engine == "vllm")
    n = spec.arch.n_layers
    stages = [Stage(24 * GIB, n // 2), Stage(24 * GIB, n - n // 2)]
    w = [stage_weights(spec, art, 1, stages, i) for i in range(2)]
    assert sum(w) > art.weight_bytes + art.layout.token_embd_bytes * 0.99


def test_the_bigger_card_gets_more_layers_and_the_pool_is_the_poorest_stages():
    spec, art = _spec_art("llama-3.1-70b-instruct", "awq")
    cfg = VllmConfig(max_model_len=8192, gpu_total_bytes=80 * GIB, gpu_memory_utilization=0.9)
    cards = [Stage(80 * GIB, 1), Stage(40 * GIB, 1)]
    parts = partition_layers(spec, art, cfg, cards)
    assert sum(parts) == spec.arch.n_layers and parts[0] > parts[1] > 0
    stages = [replace(c, layers=k) for c, k in zip(cards, parts, strict=True)]
    blocks, each = pipeline_blocks(spec, art, cfg, stages)
    assert blocks == min(b.blocks for b in each)
    # water-filling: moving one layer either way leaves a smaller pool
    for d in (-1, 1):
        moved = [replace(stages[0], layers=parts[0] + d), replace(stages[1], layers=parts[1] - d)]
        assert pipeline_blocks(spec, art, cfg, moved)[0] <= blocks
    e = estimate_vllm_pipeline(spec, art, cfg, stages)
    assert [d.device for d in e.devices] == ["CUDA0", "CUDA1"]
    assert e.kv_capacity_tokens == blocks * 16


def test_partitions_vllm_would_refuse_are_refused_by_name():
    spec, art = _spec_art("llama-3.1-70b-instruct", "awq")
    cfg = VllmConfig(max_model_len=8192, gpu_total_bytes=80 * GIB)
    with pytest.raises(VllmConfigError, match="sum to the model's 80"):
        pipeline_blocks(spec, art, cfg, [Stage(80 * GIB, 40), Stage(40 * GIB, 30)])
    gemma = CATALOG.get("gemma-3-27b-it")
    gart = next(a for a in gemma.artifacts if a.engine == "vllm")
    n = gemma.arch.n_layers
    with pytest.raises(VllmConfigError, match="full-attention"):
        pipeline_blocks(gemma, gart, cfg, [Stage(80 * GIB, n - 10), Stage(40 * GIB, 10)])


@pytest.mark.parametrize("machine", PAIRS)
def test_uneven_cards_get_one_pipeline_server_with_the_partition_in_its_env(machine):
    p = run_plan(machine)  # run_plan: no device over its budget
    assert p.verdict == "ship" and p.engine == "vllm", p.reasons
    pp = int(_flag(p.argv, "--pipeline-parallel-size"))
    tp = int(_flag(p.argv, "--tensor-parallel-size") or 1)
    parts = [int(x) for x in p.env["VLLM_PP_LAYER_PARTITION"].split(",")]
    assert len(parts) == pp >= 2 and sum(parts) == CATALOG.get(p.model.id).arch.n_layers
    assert parts[0] > parts[-1]  # the bigger cards come first in these machines
    assert len([d for d in p.predicted.devices if d.device != "CPU"]) == pp * tp
    assert any("pipeline parallel over all" in n for n in p.predicted.notes)
    # the engine's environment is the plan's: the partition reaches vLLM
    env = pipeline.engine_env({"PATH": "/usr/bin"}, p)
    assert env["VLLM_PP_LAYER_PARTITION"] == p.env["VLLM_PP_LAYER_PARTITION"]


def test_pipeline_only_where_it_beats_the_identical_cards():
    p = run_plan(
        "rtx-3090,rtx-4060", {"PREFLIGHT_ENGINE": "vllm", "PREFLIGHT_MODEL": "qwen3-14b@awq"}
    )
    assert p.verdict == "ship" and "VLLM_PP_LAYER_PARTITION" not in p.env
    assert any("not taken" in n and "pipeline parallel" in n for n in p.predicted.notes)


def test_a_users_pipeline_size_and_a_sliding_window_model_are_not_pipelined():
    p = run_plan("a100-80gb,a100-40gb", argv=("--pipeline-parallel-size", "1"))
    assert p.verdict == "ship" and "VLLM_PP_LAYER_PARTITION" not in p.env
    assert _flag(p.argv, "--pipeline-parallel-size") == "1"
    g = run_plan("a100-80gb,a100-40gb", {"PREFLIGHT_MODEL": "gemma-3-27b-it@bf16"})
    assert "VLLM_PP_LAYER_PARTITION" not in g.env


@pytest.mark.vllm
def test_real_vllm_resolves_the_pipeline_plans(tmp_path):
    if not VENV_PY.exists():
        pytest.skip("vLLM environment not built: run `make vllm` (.ci/vllm.sh)")
    plans = [run_plan(m) for m in PAIRS]
    plans.append(
        run_plan("h100-sxm,l4", {"PREFLIGHT_MODEL": "qwen3-32b@fp8", "PREFLIGHT_CONTEXT": "32768"})
    )
    plans = [p for p in plans if "VLLM_PP_LAYER_PARTITION" in p.env]
    assert len(plans) >= len(PAIRS)
    cases = [{"argv": list(p.argv), "engine_config": True, "env": p.env} for p in plans]
    # The check can fail: vLLM refuses a partition that does not sum to the layers.
    wrong = {"argv": list(plans[0].argv), "engine_config": False, "env": {**plans[0].env}}
    wrong["env"]["VLLM_PP_LAYER_PARTITION"] = "40,30"
    *results, refused = check_argvs([*cases, wrong], {p.model.repo for p in plans}, tmp_path)
    assert not refused["ok"] and "does not match num_hidden_layers" in refused["error"], refused
    for p, res in zip(plans, results, strict=True):
        assert res["ok"], (p.argv, p.env, res)
        pp = int(_flag(p.argv, "--pipeline-parallel-size"))
        assert res["pipeline_parallel_size"] == pp
        assert res["tensor_parallel_size"] == int(_flag(p.argv, "--tensor-parallel-size") or 1)
        assert res["max_model_len"] == p.context and res["max_num_seqs"] == p.parallel
        assert res["resolved_max_model_len"] == p.context  # create_engine_config accepted it
        assert res["gpu_memory_utilization"] == float(_flag(p.argv, "--gpu-memory-utilization"))
        assert res["pp_partition_env"] == p.env["VLLM_PP_LAYER_PARTITION"]
        parts = [int(x) for x in p.env["VLLM_PP_LAYER_PARTITION"].split(",")]
        starts = [sum(parts[:i]) for i in range(pp)]
        assert res["pp_indices"] == [[s, s + k] for s, k in zip(starts, parts, strict=True)]
        print(f"{p.targets}: -pp {pp} {p.env}: vLLM stages {res['pp_indices']}")


def test_a_users_partition_is_planned_with_as_given_or_not_pipelined():
    p = run_plan("a100-80gb,a100-40gb", {"VLLM_PP_LAYER_PARTITION": "70,10"})
    assert p.env == {"VLLM_PP_LAYER_PARTITION": "70,10"} and p.verdict == "ship"
    auto = run_plan("a100-80gb,a100-40gb")
    assert auto.env["VLLM_PP_LAYER_PARTITION"] != "70,10" and auto.context >= p.context
    # three stages asked for on two cards: never pipelined with another partition
    q = run_plan("a100-80gb,a100-40gb", {"VLLM_PP_LAYER_PARTITION": "30,30,20"})
    assert q.env == {}
    with pytest.raises(InvalidInput, match="VLLM_PP_LAYER_PARTITION"):
        run_plan("a100-80gb,a100-40gb", {"VLLM_PP_LAYER_PARTITION": "50;30"})
