"""llama.cpp over uneven GPUs: which card is the last device, and so holds the output layer and
the logits' compute buffer (issue 13).

In layer split mode llama.cpp puts the output layer on the last device of the model's list
(src/llama-model.cpp load_tensors: dev_output = get_layer_buft_list(n_layer)), and --device
CUDAa,CUDAb makes that list in the order given (common/arg.cpp parse_device_list, src/llama.cpp
llama_prepare_model_devices); --tensor-split follows it. The planner tries each card as the last
device and keeps the order that plans the most, writing --device only when that is not the CUDA
order. Checked on recorded card pairs (simulate specs), each pair both ways round: the plan must not
depend on which card happens to be CUDA0.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from tests.plan.conftest import CATALOG, profile_for, run_plan

from gpu_preflight.errors import InvalidInput
from gpu_preflight.plan.common import Wants
from gpu_preflight.plan.llamacpp import device_orders
from gpu_preflight.plan.reconcile import reconcile
from gpu_preflight.plan.targets import build_targets
from gpu_preflight.plan.types import Plan
from gpu_preflight.receipt.take import _gpu_map

MIB = 2**20


def flag(argv: tuple[str, ...], name: str) -> str | None:
    assert argv.count(name) <= 1, argv  # every value once
    return argv[argv.index(name) + 1] if name in argv else None


def devices_of(p: Plan) -> list[str]:
    """The GPUs as the plan lists them (the model's device order)."""
    assert p.predicted is not None
    return [d.device for d in p.predicted.devices if d.device != "CPU"]


def output_device(p: Plan) -> str:
    """The device llama.cpp gives the output layer for this argv, by src/llama-model.cpp
    load_tensors: the split points are the cumulative -ts shares over the device list (--device,
    or CUDA0.. by ordinal), the output is layer index n_layer, i_gpu_start = n_layer + 1 - ngl,
    and its device is the first split point above (n_layer - i_gpu_start) / act_gpu_layers."""
    assert p.model is not None
    spec = CATALOG.get(p.model.id)
    assert spec is not None
    n_layer = spec.arch.n_layers
    names = (flag(p.argv, "--device") or "").split(",") if "--device" in p.argv else None
    gpus = devices_of(p)
    names = names or [f"CUDA{i}" for i in range(len(gpus))]
    ngl_text = flag(p.argv, "--n-gpu-layers") or "all"
    ngl = n_layer + 1 if ngl_text == "all" else int(ngl_text)
    ts = [float(x) for x in (flag(p.argv, "--tensor-split") or "").split(",") if x]
    ts = ts or [1.0] * len(names)
    act = min(ngl, n_layer + 1)
    start = max(n_layer + 1 - ngl, 0)
    pos = (n_layer - start) / act
    acc = 0.0
    for name, share in zip(names, ts, strict=True):
        acc += share / sum(ts)
        if pos < acc:
            return name
    return names[-1]


def label_of(p: Plan, device: str) -> str:
    assert p.predicted is not None
    return next(d.description for d in p.predicted.devices if d.device == device)


def check_names(p: Plan) -> None:
    """Every GPU row is the physical GPU llama.cpp calls by that name: CUDA<n> is the card of
    CUDA ordinal n (in a simulated profile, NVML index n), with that card's budget."""
    assert p.predicted is not None
    for d in p.predicted.devices:
        if d.device != "CPU":
            assert d.description.endswith(f"(GPU {int(d.device[4:])})"), d
            assert d.total_bytes <= d.budget_bytes, d


@dataclass(frozen=True)
class Pair:
    id: str
    cards: tuple[str, str]
    model: str
    parallel: int
    output_on: str  # the card that holds the output layer, whichever is CUDA0
    context: int  # what the chosen order gives (the closed form's figure when this was written)
    other: str  # the other order's figure, as the plan note says it


PAIRS = [
    # MoE experts offloaded: with the 3060 first, the layers whose experts stay in host RAM sit on
    # the small card and the 4090 takes the output: 7 more layers' experts on the GPUs.
    Pair(
        "4090+3060-gpt-oss-120b",
        ("rtx-4090", "rtx-3060"),
        "gpt-oss-120b@MXFP4",
        4,
        "RTX 4090",
        32768,
        "--n-cpu-moe 31",
    ),
    Pair(
        "3090+4060-qwen3-30b-a3b-q8",
        ("rtx-3090", "rtx-4060"),
        "qwen3-30b-a3b@Q8_0",
        4,
        "RTX 3090",
        32768,
        "--n-cpu-moe 43",
    ),
    # All on the GPUs: here the small card with the output leaves the longer context, 29440
    # against 27648 tokens. Not because of the output itself: _room_split sizes the shares at the
    # tier's minimum context, and with the 4090 last the 3060 gets 14 of the 40 layers, whose KV
    # outgrows it first while the 4090 keeps 2.4 GiB; with the 3060 last it gets 11 and the
    # output. The order search takes whichever plans more.
    Pair(
        "4090+3060-mistral-small-24b",
        ("rtx-4090", "rtx-3060"),
        "mistral-small-24b-instruct@Q4_K_M",
        4,
        "RTX 3060",
        29440,
        "27648 tokens x 4",
    ),
]


def _plan(cards: tuple[str, str], model: str, parallel: int, argv: tuple[str, ...] = ()) -> Plan:
    env = {
        "PREFLIGHT_ENGINE": "llama.cpp",
        "PREFLIGHT_MODEL": model,
        "PREFLIGHT_PARALLEL": str(parallel),
    }
    return run_plan(",".join(cards), env, argv=argv)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda c: c.id)
@pytest.mark.parametrize("flipped", [False, True], ids=["as-listed", "flipped"])
def test_the_output_goes_to_the_card_that_plans_the_most_whichever_is_cuda0(
    pair: Pair, flipped: bool
) -> None:
    cards = pair.cards[::-1] if flipped else pair.cards
    p = _plan(cards, pair.model, pair.parallel)
    assert p.verdict == "ship", p.reasons
    check_names(p)
    assert len(devices_of(p)) == 2
    out = output_device(p)
    assert pair.output_on in label_of(p, out), (out, p.argv)
    # the output's card is the last of the list llama.cpp makes, and the plan lists that order
    assert out == devices_of(p)[-1]
    device = flag(p.argv, "--device")
    if out == "CUDA1":
        assert device is None, "the CUDA order is llama.cpp's own: no --device"
    else:
        assert device == ",".join(devices_of(p)) == "CUDA1,CUDA0"
    assert p.context == pair.context and p.parallel == pair.parallel
    assert p.predicted is not None
    note = next(n for n in p.predicted.notes if n.startswith("device order"))
    print(f"{','.join(cards)} {pair.model}: {p.argv[p.argv.index('--n-gpu-layers') :][:12]}")
    print(f"  {note}")
    assert "src/llama-model.cpp load_tensors" in note and pair.other in note
    assert f"{pair.context} tokens x {pair.parallel}" in note


def test_the_same_plan_both_ways_round() -> None:
    """Flipping which card is CUDA0 changes the names, never the plan."""
    for pair in PAIRS:
        a = _plan(pair.cards, pair.model, pair.parallel)
        b = _plan(pair.cards[::-1], pair.model, pair.parallel)
        assert a.context == b.context and a.parallel == b.parallel
        assert (
            label_of(a, output_device(a)).split(" (GPU")[0]
            == label_of(b, output_device(b)).split(" (GPU")[0]
        )
        assert (flag(a.argv, "--device") is None) != (flag(b.argv, "--device") is None)
        ts_a = flag(a.argv, "--tensor-split")
        ts_b = flag(b.argv, "--tensor-split")
        assert ts_a == ts_b, "the tensor split follows the device order, so it is the same"
        assert a.predicted is not None and b.predicted is not None
        # the same bytes on the same card (by card, not by name)
        by_card_a = {d.description.split(" (GPU")[0]: d.total_bytes for d in a.predicted.devices}
        by_card_b = {d.description.split(" (GPU")[0]: d.total_bytes for d in b.predicted.devices}
        assert by_card_a == by_card_b


def test_a_tie_keeps_the_cuda_order() -> None:
    """A100 80 GB + 40 GB, a 72B at 8 slots: both orders give 28416 tokens, so no --device is
    written either way round, and the output stays on CUDA1."""
    for cards in (("a100-80gb", "a100-40gb"), ("a100-40gb", "a100-80gb")):
        p = _plan(cards, "qwen2.5-72b-instruct@Q4_K_M", 8)
        assert p.verdict == "ship", p.reasons
        check_names(p)
        assert "--device" not in p.argv and output_device(p) == "CUDA1"
        assert p.predicted is not None
        note = next(n for n in p.predicted.notes if n.startswith("device order"))
        assert "kept the CUDA order (no --device)" in note and "28416 tokens x 8" in note


def test_the_whole_target_on_the_gpus_needs_no_other_order() -> None:
    p = _plan(("rtx-3090", "rtx-4060"), "qwen3-32b@Q4_K_M", 1)
    assert p.verdict == "ship" and "--device" not in p.argv
    assert p.predicted is not None
    assert any("already gives the whole target" in n for n in p.predicted.notes)


def test_a_users_device_list_is_a_pin() -> None:
    pair = PAIRS[2]  # the planner alone would write --device CUDA1,CUDA0 on 3060+4090
    cards = pair.cards[::-1]
    for argv, env in (
        (("--device", "CUDA0,CUDA1"), {}),
        (("-dev", "CUDA0,CUDA1"), {}),
        ((), {"LLAMA_ARG_DEVICE": "CUDA0,CUDA1"}),
    ):
        p = run_plan(
            ",".join(cards),
            {
                "PREFLIGHT_ENGINE": "llama.cpp",
                "PREFLIGHT_MODEL": pair.model,
                "PREFLIGHT_PARALLEL": "4",
                **env,
            },
            argv=argv,
        )
        assert p.verdict == "ship", p.reasons
        check_names(p)
        assert flag(p.argv, "--device") == "CUDA0,CUDA1" and "-dev" not in p.argv
        assert devices_of(p) == ["CUDA0", "CUDA1"] and output_device(p) == "CUDA1"
        assert p.context == 27648  # the CUDA order's figure, not the planner's better one
        assert p.predicted is not None
        assert not any(n.startswith("device order") for n in p.predicted.notes)
        if env:
            assert "LLAMA_ARG_DEVICE" in p.env_unset


def test_a_users_reversed_list_orders_the_split_and_the_budgets() -> None:
    p = _plan(
        ("rtx-4090", "rtx-3060"),
        "mistral-small-24b-instruct@Q4_K_M",
        4,
        ("--device", "CUDA1,CUDA0"),
    )
    assert p.verdict == "ship", p.reasons
    check_names(p)
    assert devices_of(p) == ["CUDA1", "CUDA0"] and output_device(p) == "CUDA0"
    ts = [float(x) for x in (flag(p.argv, "--tensor-split") or "").split(",")]
    assert ts[0] < ts[1], "the first share is the 3060's (CUDA1), the smaller"


def test_a_users_single_device_and_split_pins() -> None:
    one = _plan(("rtx-4090", "rtx-3060"), "qwen3-8b@Q4_K_M", 1, ("--device", "CUDA1"))
    assert one.verdict == "ship", one.reasons
    check_names(one)
    assert devices_of(one) == ["CUDA1"] and "RTX 3060" in label_of(one, "CUDA1")
    assert flag(one.argv, "--device") == "CUDA1" and "--tensor-split" not in one.argv
    ts = _plan(("rtx-3060", "rtx-4090"), PAIRS[2].model, 4, ("-ts", "1,1"))
    assert ts.verdict == "ship", ts.reasons
    assert flag(ts.argv, "--tensor-split") == "1,1" and "--device" not in ts.argv
    mg = _plan(("rtx-3060", "rtx-4090"), PAIRS[2].model, 4, ("-mg", "0"))
    assert mg.verdict == "ship" and "--device" not in mg.argv
    # --split-mode none: one device, named as llama.cpp names it, and llama.cpp's own list as
    # --device, which --main-gpu indexes as it would without one (only the main GPU is opened:
    # tests/plan/test_llamacpp_opened_devices.py)
    none = _plan(("rtx-3060", "rtx-4090"), "qwen3-8b@Q4_K_M", 1, ("-sm", "none", "-mg", "1"))
    assert none.verdict == "ship", none.reasons
    check_names(none)
    assert devices_of(none) == ["CUDA1"] and "RTX 4090" in label_of(none, "CUDA1")
    assert flag(none.argv, "--device") == "CUDA0,CUDA1"


def test_a_device_list_the_planner_cannot_use() -> None:
    p = _plan(("rtx-4090", "rtx-3060"), "qwen3-8b@Q4_K_M", 1, ("--device", "CUDA0,CUDA5"))
    assert p.verdict == "refuse"
    assert any("--device CUDA0,CUDA5 names CUDA5" in r for r in p.reasons), p.reasons
    p = _plan(("rtx-4090", "rtx-3060"), "qwen3-8b@Q4_K_M", 1, ("--device", "CUDA0,CUDA0"))
    assert p.verdict == "refuse" and any("twice" in r for r in p.reasons), p.reasons
    with pytest.raises(InvalidInput) as info:
        _plan(("rtx-4090", "rtx-3060"), "qwen3-8b@Q4_K_M", 1, ("--device", "CUDA0;CUDA1"))
    assert "device names separated by commas" in str(info.value)


def test_device_none_plans_the_host() -> None:
    p = _plan(("rtx-4090", "rtx-3060"), "qwen3-0.6b@Q8_0", 1, ("--device", "none"))
    assert p.verdict == "ship", p.reasons
    assert devices_of(p) == [] and flag(p.argv, "--device") == "none"


def test_orders_tried_once_per_distinct_layout() -> None:
    """Each card as the last device, the others by ordinal; orders whose budgets are the same
    position by position plan the same and are tried once."""
    w = Wants(
        min_context=8192,
        target_context=8192,
        fixed_context=False,
        parallel=1,
        cache_type_k=None,
        cache_type_v=None,
        flash_attn="on",
        min_tok_s=0.0,
    )

    def orders(spec: str) -> list[list[int]] | None:
        got = device_orders(build_targets(profile_for(spec), 0).gpus, w)
        return None if got is None else [[g.cuda_ordinal for g in o] for o in got]

    assert orders("rtx-4090,rtx-3060") == [[0, 1], [1, 0]]
    assert orders("2xa100-80gb,2xa100-40gb") == [[0, 1, 2, 3], [1, 2, 3, 0]]
    assert orders("4xrtx-4090") is None
    assert orders("rtx-4090") is None


@dataclass(frozen=True)
class Row:
    name: str
    model_bytes: int
    context_bytes: int
    compute_bytes: int


@dataclass(frozen=True)
class Breakdown:
    devices: tuple[Row, ...]
    seconds: float = 0.5
    dropped: tuple[str, ...] = ()

    @property
    def gpus(self) -> tuple[Row, ...]:
        return tuple(d for d in self.devices if d.name != "Host")

    @property
    def host(self) -> Row | None:
        return next((d for d in self.devices if d.name == "Host"), None)


def test_llama_cpps_rows_are_paired_by_device_name() -> None:
    """llama-fit-params lists the devices in --device order with their names
    (common/fit.cpp common_memory_breakdown_print): CUDA1's row is CUDA1's, whatever its place."""
    p = _plan(PAIRS[2].cards[::-1], PAIRS[2].model, 4)
    assert flag(p.argv, "--device") == "CUDA1,CUDA0" and p.predicted is not None
    ours = {d.device: d for d in p.predicted.devices}
    rows = [
        Row(n, ours[n].weights_bytes + extra, ours[n].kv_cache_bytes, ours[n].compute_bytes)
        for n, extra in (("CUDA1", 200 * MIB), ("CUDA0", 0))
    ]
    rows.append(Row("Host", 0, 0, 0))
    r = reconcile(p, Breakdown(tuple(rows)))
    assert r.predicted is not None
    got = {d.device: d for d in r.predicted.devices}
    assert got["CUDA1"].weights_bytes == ours["CUDA1"].weights_bytes + 200 * MIB
    assert got["CUDA0"].weights_bytes == ours["CUDA0"].weights_bytes


def test_the_receipt_maps_each_name_to_its_physical_gpu() -> None:
    spec = ",".join(PAIRS[2].cards[::-1])
    p = _plan(PAIRS[2].cards[::-1], PAIRS[2].model, 4)
    assert flag(p.argv, "--device") == "CUDA1,CUDA0"
    assert _gpu_map(p, profile_for(spec)) == {"CUDA1": 1, "CUDA0": 0}
