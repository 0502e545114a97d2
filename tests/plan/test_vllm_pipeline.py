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
    nxt = CATALOG.get("qwen3-next-80b-a3b-instruct")
    nart = next(a for a in nxt.artifacts if a.engine == "vllm")
    n = nxt.arch.n_layers
    with pytest.raises(VllmConfigError, match="linear-attention"):
        pipeline_blocks(nxt, nart, cfg, [Stage(80 * GIB, n - 10), Stage(40 * GIB, 10)])


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


def test_a_users_pipeline_size_of_1_is_never_pipelined():
    p = run_plan("a100-80gb,a100-40gb", argv=("--pipeline-parallel-size", "1"))
    assert p.verdict == "ship" and "VLLM_PP_LAYER_PARTITION" not in p.env
    assert _flag(p.argv, "--pipeline-parallel-size") == "1"


def test_a_sliding_window_model_pipelines_over_uneven_cards():
    g = run_plan("a100-80gb,a100-40gb", {"PREFLIGHT_MODEL": "gemma-3-27b-it@bf16"})
    assert g.verdict == "ship", g.reasons
    parts = [int(x) for x in g.env["VLLM_PP_LAYER_PARTITION"].split(",")]
    assert sum(parts) == 62 and parts[0] > parts[1]
    assert _flag(g.argv, "--pipeline-parallel-size") == "2"


@pytest.mark.parametrize(
    ("machine", "pp", "extra", "gpus"),
    [
        ("2xa100-80gb", "2", (), 2),  # identical cards: still one stage per card
        ("4xa100-80gb", "2", (), 4),  # -pp 2 x the planner's -tp 2
        ("4xa100-80gb", "2", ("--tensor-parallel-size", "1"), 2),  # the first two cards only
        ("a100-80gb,a100-40gb", "2", (), 2),
        ("2xa100-80gb,2xa100-40gb", "4", (), 4),
    ],
)
def test_a_users_pipeline_size_is_planned_as_given(machine, pp, extra, gpus):
    p = run_plan(
        machine,
        {"PREFLIGHT_MODEL": "llama-3.1-70b-instruct@awq"},
        argv=("--pipeline-parallel-size", pp, *extra),
    )
    assert p.verdict == "ship", p.reasons
    assert _flag(p.argv, "--pipeline-parallel-size") == pp
    assert p.argv.count("--pipeline-parallel-size") == 1
    tp = int(_flag(p.argv, "--tensor-parallel-size") or 1)
    parts = [int(x) for x in p.env["VLLM_PP_LAYER_PARTITION"].split(",")]
    assert len(parts) == int(pp) and sum(parts) == 80
    assert int(pp) * tp == gpus == len([d for d in p.predicted.devices if d.device != "CPU"])


def test_a_users_pipeline_size_that_cannot_be_served_is_refused_naming_it():
    p = run_plan("2xa100-80gb", argv=("--pipeline-parallel-size", "4"))
    assert p.verdict == "refuse"
    assert any("--pipeline-parallel-size 4" in r for r in p.reasons), p.reasons
    nxt = run_plan(
        "2xa100-80gb",
        {"PREFLIGHT_MODEL": "qwen3-next-80b-a3b-instruct@fp8"},
        argv=("--pipeline-parallel-size", "2"),
    )
    assert nxt.verdict == "refuse"
    assert any("linear-attention" in r for r in nxt.reasons), nxt.reasons


def test_a_draft_model_sits_on_the_last_stage_with_its_kv_in_that_stages_block():
    env = {"PREFLIGHT_MODEL": "llama-3.1-70b-instruct@awq", "PREFLIGHT_SPECULATIVE": "on"}
    on = run_plan("2xa100-80gb", env, argv=("--pipeline-parallel-size", "2"))
    off = run_plan(
        "2xa100-80gb",
        {**env, "PREFLIGHT_SPECULATIVE": "off"},
        argv=("--pipeline-parallel-size", "2"),
    )
    assert on.verdict == "ship" and on.draft is not None, on.reasons
    assert "--speculative-config" in on.argv and "--speculative-config" not in off.argv
    a1 = [d for d in on.predicted.devices if d.device != "CPU"][-1]
    b1 = [d for d in off.predicted.devices if d.device != "CPU"][-1]
    assert a1.weights_bytes > b1.weights_bytes  # the drafter's weights, last stage only
    first_on = int(on.env["VLLM_PP_LAYER_PARTITION"].split(",")[0])
    assert first_on >= int(off.env["VLLM_PP_LAYER_PARTITION"].split(",")[0])  # layers move forward
    assert on.predicted.kv_capacity_tokens <= off.predicted.kv_capacity_tokens


def test_the_stage_model_covers_cpu_offload_and_a_fixed_kv_pool():
    off = run_plan("a100-80gb,a100-40gb", argv=("--cpu-offload-gb", "4"))
    assert off.verdict == "ship", off.reasons
    assert "VLLM_PP_LAYER_PARTITION" in off.env and _flag(off.argv, "--cpu-offload-gb") == "4"
    base = run_plan("a100-80gb,a100-40gb")
    assert off.context >= base.context  # 4 GiB of each stage's weights left in host memory
    # 67.7 GiB of FP8 weights and an 8 GiB pool fit neither card alone
    kv = run_plan(
        "a100-80gb,a100-40gb",
        {"PREFLIGHT_MODEL": "llama-3.1-70b-instruct@fp8"},
        argv=("--kv-cache-memory-bytes", str(8 * GIB)),
    )
    assert kv.verdict == "ship", kv.reasons
    assert "VLLM_PP_LAYER_PARTITION" in kv.env
    assert _flag(kv.argv, "--kv-cache-memory-bytes") == str(8 * GIB)
    # every stage's pool is the user's 8 GiB, shrunk to the poorest stage's block count
    assert all(d.kv_cache_bytes <= 8 * GIB for d in kv.predicted.devices if d.device != "CPU")


@pytest.mark.vllm
def test_real_vllm_resolves_the_pipeline_plans(tmp_path):
    if not VENV_PY.exists():
        pytest.skip("vLLM environment not built: run `make vllm` (.ci/vllm.sh)")
    plans = [run_plan(m) for m in PAIRS]
    plans.append(
        run_plan("h100-sxm,l4", {"PREFLIGHT_MODEL": "qwen3-32b@fp8", "PREFLIGHT_CONTEXT": "32768"})
    )
    # a user's -pp, on identical cards and with the planner's -tp; a sliding-window model
    model = {"PREFLIGHT_MODEL": "llama-3.1-70b-instruct@awq"}
    plans.append(run_plan("2xa100-80gb", model, argv=("--pipeline-parallel-size", "2")))
    plans.append(run_plan("4xa100-80gb", model, argv=("-pp", "2")))
    plans.append(run_plan("a100-80gb,a100-40gb", {"PREFLIGHT_MODEL": "gemma-3-27b-it@bf16"}))
    plans.append(run_plan("a100-80gb,a100-40gb", {"PREFLIGHT_MODEL": "gemma-2-27b-it@bf16"}))
    spec_on = {"PREFLIGHT_MODEL": "llama-3.1-70b-instruct@awq", "PREFLIGHT_SPECULATIVE": "on"}
    plans.append(run_plan("2xa100-80gb", spec_on, argv=("-pp", "2")))
    plans = [p for p in plans if "VLLM_PP_LAYER_PARTITION" in p.env]
    assert len(plans) >= len(PAIRS) + 5
    cases = [{"argv": list(p.argv), "engine_config": True, "env": p.env} for p in plans]
    # The check can fail: vLLM refuses a partition that does not sum to the layers.
    wrong = {"argv": list(plans[0].argv), "engine_config": False, "env": {**plans[0].env}}
    wrong["env"]["VLLM_PP_LAYER_PARTITION"] = "40,30"
    repos = {p.model.repo for p in plans} | {p.draft.repo for p in plans if p.draft}
    *results, refused = check_argvs([*cases, wrong], repos, tmp_path)
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
