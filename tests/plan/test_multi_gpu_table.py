"""Plan table for several GPUs: mixed pairs, 4x and 8x identical cards, MIG mixes.

No device may exceed its budget (run_plan asserts it for every ship). For each machine the table
records the layout chosen and the model and context it gave, against the best single-card plan,
and the multi-card plan must not be worse than the best single card.
"""

from __future__ import annotations

import pytest
from tests.plan.conftest import CATALOG, run_plan

MACHINES = [
    "rtx-4090,rtx-3060",
    "rtx-3090,rtx-4060",
    "a100-80gb,a100-40gb",
    "h100-sxm,l4",
    "4xl4",
    "4xrtx-4090",
    "8xh100-sxm",
    "2xa100-80gb,2xa100-40gb",
    "8xa100-80gb",
    "a100-80gb:3x2g.20gb",
    "h100-sxm:1g.10gb",
]


def _cards(machine: str) -> list[str]:
    """Each kind of card of a machine, alone ("2xa100-80gb,l4" -> a100-80gb, l4); a MIG mix is
    planned on its largest leaf either way, so it is its own single."""
    if ":" in machine:
        return [machine]
    return [c.split("x", 1)[1] if c[0].isdigit() else c for c in machine.split(",")]


def _size(p) -> tuple[float, int]:
    spec = CATALOG.get(p.model.id)
    return (spec.params_b if spec else 0.0, p.context or 0)


def _layout(p) -> str:
    gpus = [d for d in p.predicted.devices if d.device != "CPU"]
    a = p.argv
    if p.engine == "vllm" and "--pipeline-parallel-size" in a and p.env:
        tp = a[a.index("--tensor-parallel-size") + 1] if "--tensor-parallel-size" in a else "1"
        pp = a[a.index("--pipeline-parallel-size") + 1]
        return f"vllm pp {pp} x tp {tp} (layers {p.env['VLLM_PP_LAYER_PARTITION']})"
    if p.engine == "vllm" and "--tensor-parallel-size" in a:
        return f"vllm tp {a[a.index('--tensor-parallel-size') + 1]}"
    if "--tensor-split" in a:
        return f"llama.cpp split {a[a.index('--tensor-split') + 1]}"
    return f"{p.engine} on {len(gpus)} GPU(s)"


@pytest.mark.parametrize("machine", MACHINES)
def test_several_gpus_never_worse_than_the_best_single_card(machine):
    p = run_plan(machine)
    assert p.verdict == "ship", p.reasons
    singles = [run_plan(c) for c in _cards(machine)]
    best = max((s for s in singles if s.verdict == "ship"), key=_size)
    print(
        f"{machine}: {_layout(p)}: {p.model.id} {p.model.quant} x{p.parallel} at {p.context} "
        f"tokens | best single card {best.model.id} {best.model.quant} at {best.context}"
    )
    assert _size(p) >= _size(best) or p.model.id == best.model.id


# vLLM on the pairs and mixes: pipeline parallel over unequal cards where it gives a longer
# context (or a model the identical cards cannot hold), each card its own layer share.
VLLM_ENTRIES = [
    ("rtx-4090,rtx-3060", {"PREFLIGHT_MODEL": "qwen3-14b@awq"}),
    ("rtx-3090,rtx-4060", {"PREFLIGHT_MODEL": "qwen3-14b@awq"}),
    ("rtx-4090,rtx-3060", {"PREFLIGHT_MODEL": "qwen3-32b@awq", "PREFLIGHT_CONTEXT": "20480"}),
    ("a100-80gb,a100-40gb", {}),
    ("a100-80gb,a100-40gb", {"PREFLIGHT_MODEL": "llama-3.1-70b-instruct@fp8"}),
    ("h100-sxm,l4", {}),
    ("h100-sxm,l4", {"PREFLIGHT_MODEL": "qwen3-32b@fp8"}),
    ("2xa100-80gb,2xa100-40gb", {}),
    ("2xh100-sxm,2xl4", {}),
    ("4xl4", {}),
    ("8xh100-sxm", {}),
    ("a100-80gb:3x2g.20gb", {"PREFLIGHT_MODEL": "qwen3-8b@fp8"}),
    # sliding-window models (each stage's KV block from vLLM's global groups) and a draft model
    # on the last stage
    ("a100-80gb,a100-40gb", {"PREFLIGHT_MODEL": "gemma-3-27b-it@bf16"}),
    ("h100-sxm,l4", {"PREFLIGHT_MODEL": "gpt-oss-120b@mxfp4"}),
    ("rtx-4090,rtx-3060", {"PREFLIGHT_MODEL": "gpt-oss-20b@mxfp4"}),
    ("a100-80gb,a100-40gb", {"PREFLIGHT_MODEL": "llama-3.1-70b-instruct@fp8", "PREFLIGHT_SPECULATIVE": "on"}),
]
# Where the table shows pipeline parallel chosen: a model or a context the best card alone cannot
# give. (4090+3060 with a 32B AWQ: the 4090 alone refuses 20k tokens; it holds 16k since the
# vLLM 0.32 CUDA graph estimate replaced the 1 GiB allowance.)
PIPELINED = {0: False, 1: False, 2: True, 3: True, 4: True, 5: True, 6: True, 7: True, 8: True}


@pytest.mark.parametrize("i", range(len(VLLM_ENTRIES)))
def test_vllm_entries_show_their_layout_against_the_best_single_card(i):
    machine, env = VLLM_ENTRIES[i]
    p = run_plan(machine, {"PREFLIGHT_ENGINE": "vllm", **env})  # no device over its budget
    assert p.verdict == "ship", p.reasons
    singles = [run_plan(c, {"PREFLIGHT_ENGINE": "vllm", **env}) for c in _cards(machine)]
    shipped = [s for s in singles if s.verdict == "ship"]
    best = max(shipped, key=_size) if shipped else None
    said = f"{best.model.id} {best.model.quant} at {best.context}" if best else "refused"
    print(
        f"{machine} {env}: {_layout(p)}: {p.model.id} {p.model.quant} x{p.parallel} at "
        f"{p.context} tokens | best single card {said}"
    )
    pipelined = "VLLM_PP_LAYER_PARTITION" in p.env
    if i in PIPELINED:
        assert pipelined == PIPELINED[i], _layout(p)
    if pipelined:
        assert best is None or _size(p) > _size(best) or p.model.id != best.model.id
        for d in p.predicted.devices:
            assert d.total_bytes <= d.budget_bytes, d
    assert best is None or _size(p) >= _size(best) or p.model.id == best.model.id


def test_mixed_cards_say_which_layout_was_taken_and_why_with_both_figures():
    p = run_plan("rtx-4090,rtx-3060")
    note = next(n for n in p.predicted.notes if "GPU 0 alone" in n)
    # Both layouts with their figures. (Since vLLM 0.32's sampler is charged 16 bytes per logit,
    # issue 20, a 32B AWQ over both cards with pipeline parallel beats the 4090 alone here.)
    assert "one server over all 2 cards (" in note and "GPU 0 alone (" in note
    q = run_plan("rtx-3090,rtx-4060")
    assert any("one server over all 2 cards" in n for n in q.predicted.notes)


def test_estimate_keeps_every_device_it_was_given():
    from click.testing import CliRunner

    from gpu_preflight.cli.main import main

    r = CliRunner().invoke(
        main,
        [
            "estimate",
            "--gpu",
            "rtx-4090,rtx-3060",
            "--model",
            "qwen3-32b@Q4_K_M",
            "--context",
            "8192",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert '"CUDA1"' in r.output


def test_a_llama_cpp_split_writes_no_main_gpu_and_keeps_the_users():
    """In layer split mode -mg moves neither the output layer nor a compute buffer (llama.cpp
    load_tensors; tests/memory/test_vulkan_main_gpu.py): the last card holds them, and its share
    is what is left of its room after them."""
    p = run_plan("rtx-3090,rtx-4060")
    assert "--tensor-split" in p.argv and "--main-gpu" not in p.argv
    last = next(d for d in p.predicted.devices if d.device == "CUDA1")
    assert last.total_bytes <= last.budget_bytes
    q = run_plan("rtx-3090,rtx-4060", {"PREFLIGHT_ENGINE": "llama.cpp"}, argv=("-mg", "1"))
    assert q.argv.count("--main-gpu") == 1 and q.argv[q.argv.index("--main-gpu") + 1] == "1"
