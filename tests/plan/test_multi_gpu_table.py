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
    "8xa100-80gb",
    "a100-80gb:3x2g.20gb",
    "h100-sxm:1g.10gb",
]


def _size(p) -> tuple[float, int]:
    spec = CATALOG.get(p.model.id)
    return (spec.params_b if spec else 0.0, p.context or 0)


def _layout(p) -> str:
    gpus = [d for d in p.predicted.devices if d.device != "CPU"]
    a = p.argv
    if p.engine == "vllm" and "--tensor-parallel-size" in a:
        return f"vllm tp {a[a.index('--tensor-parallel-size') + 1]}"
    if "--tensor-split" in a:
        return f"llama.cpp split {a[a.index('--tensor-split') + 1]}"
    return f"{p.engine} on {len(gpus)} GPU(s)"


@pytest.mark.parametrize("machine", MACHINES)
def test_several_gpus_never_worse_than_the_best_single_card(machine):
    p = run_plan(machine)
    assert p.verdict == "ship", p.reasons
    cards = machine.split(",") if "," in machine else [machine.split("x", 1)[-1].split(":")[0]]
    if ":" in machine:
        cards = [machine]  # a MIG mix is planned on its largest leaf either way
    singles = [run_plan(c) for c in cards]
    best = max((s for s in singles if s.verdict == "ship"), key=_size)
    print(
        f"{machine}: {_layout(p)}: {p.model.id} {p.model.quant} x{p.parallel} at {p.context} "
        f"tokens | best single card {best.model.id} {best.model.quant} at {best.context}"
    )
    assert _size(p) >= _size(best) or p.model.id == best.model.id


def test_mixed_cards_say_which_layout_was_taken_and_why_with_both_figures():
    p = run_plan("rtx-4090,rtx-3060")
    note = next(n for n in p.predicted.notes if "alone" in n)
    assert "beats one server over all 2 cards" in note and "gpu-preflight compose" in note
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
