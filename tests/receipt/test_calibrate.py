"""Receipts calibrate the next plan: the decode band by the full key, the margin by the model on
the card. Plans are made exactly as `run` makes them (pipeline.plan_on) on simulated real cards."""

from __future__ import annotations

from dataclasses import replace

from gpu_preflight import pipeline
from gpu_preflight.plan.document import plan_from_dict, plan_to_dict
from gpu_preflight.plan.types import Plan
from gpu_preflight.receipt.calibrate import FLOOR_BYTES, SPREAD, calibrate, receipt_key, widening
from gpu_preflight.receipt.document import receipt_from_dict, receipt_to_dict
from gpu_preflight.receipt.types import (
    Decode,
    DeviceMemory,
    EngineFacts,
    Receipt,
    StreamResult,
)
from tests.plan.conftest import profile_for

MIB = 2**20
GIB = 2**30
ENV = {"PREFLIGHT_MODEL": "qwen3-8b", "PREFLIGHT_ENGINE": "llama.cpp"}


def _plan(env=ENV, spec="rtx-4090", history=()) -> Plan:
    inputs = pipeline.prepare(dict(env))
    p = pipeline.plan_on(inputs, profile_for(spec), ("vllm", "llama.cpp"), history=history)
    plan_from_dict(plan_to_dict(p))  # every calibrated plan still validates
    return p


def receipt_for(
    plan: Plan, tok_s: float, over: dict[str, int] | None = None, status="complete", at="1"
) -> Receipt:
    """A receipt of ``plan``: decode at ``tok_s``, each device at its prediction + ``over``."""
    assert plan.predicted is not None
    memory = []
    for d in plan.predicted.devices:
        extra = (over or {}).get(d.device, -64 * MIB)
        measured = d.total_bytes + extra
        memory.append(
            DeviceMemory(
                d.device, d.total_bytes, measured, "nvml-pid", extra,
                extra / d.total_bytes, extra > 0,
            )
        )  # fmt: skip
    single = StreamResult(1, 128, tok_s, tok_s, 1000.0, 60, "engine timings", 2.0)
    r = Receipt(
        schema_version=1,
        created_at=f"2026-12-01T10:00:0{at}.000000Z",
        status=status,
        key=receipt_key(plan),
        plan_file="/var/lib/gpu-preflight/plan.json",
        engine=EngineFacts("http://127.0.0.1:8080", 1, 3.0, plan.context, 1, None, None, None),
        memory=tuple(memory),
        decode=Decode(single, None, 1.0, 2.0, "roofline forecast", 1.0, False, True, 0.1),
        peaks=None,
    )
    return receipt_from_dict(receipt_to_dict(r))  # what a real one is: schema-valid


def test_the_key_ignores_host_and_port_but_not_the_settings():
    a = _plan()
    b = _plan({**ENV, "PREFLIGHT_PORT": "9000", "PREFLIGHT_HOST": "127.0.0.1"})
    c = _plan({**ENV, "PREFLIGHT_CONTEXT": "8192"})
    assert receipt_key(a).id == receipt_key(b).id
    assert receipt_key(a).id != receipt_key(c).id
    # The memory key is the model on the card, whatever the settings.
    assert receipt_key(a).memory_id == receipt_key(c).memory_id
    assert receipt_key(a).gpu == "NVIDIA GeForce RTX 4090"


def test_no_receipts_leave_the_plan_as_it_was():
    assert _plan(history=()) == _plan()


def test_decode_band_is_calibrated_from_same_key_receipts_and_says_how_many():
    base = _plan()
    one = _plan(history=(receipt_for(base, 80.0),))
    assert one.calibration is not None and one.calibration.decode_receipts == 1
    assert one.predicted is not None
    assert one.predicted.decode_tok_s_low == round(80 * (1 - SPREAD), 1)
    assert one.predicted.decode_tok_s_high == round(80 * (1 + SPREAD), 1)
    assert any("calibrated from 1 receipt " in n for n in one.predicted.notes)
    three = _plan(
        history=tuple(receipt_for(base, t, at=str(i)) for i, t in enumerate((70.0, 80.0, 90.0)))
    )
    assert three.calibration is not None and three.calibration.decode_receipts == 3
    assert three.predicted is not None
    assert three.predicted.decode_tok_s_low == round(70 * (1 - SPREAD), 1)
    assert three.predicted.decode_tok_s_high == round(90 * (1 + SPREAD), 1)
    assert any("calibrated from 3 receipts" in n for n in three.predicted.notes)
    # The band moved with the evidence: two starts in the same volume give different bands.
    assert (one.predicted.decode_tok_s_low, one.predicted.decode_tok_s_high) != (
        three.predicted.decode_tok_s_low,
        three.predicted.decode_tok_s_high,
    )


def test_receipts_of_other_settings_do_not_calibrate_the_band():
    other = _plan({**ENV, "PREFLIGHT_CONTEXT": "8192"})
    p = _plan(history=(receipt_for(other, 80.0),))
    base = _plan()
    assert p.predicted is not None and base.predicted is not None
    assert p.predicted.decode_tok_s_low == base.predicted.decode_tok_s_low
    assert p.calibration is not None and p.calibration.decode_receipts == 0


def test_a_failed_receipt_is_no_evidence():
    base = _plan()
    p = _plan(history=(receipt_for(base, 80.0, {"CUDA0": 2 * GIB}, status="failed"),))
    assert p.predicted == replace(p.predicted, decode_tok_s_low=base.predicted.decode_tok_s_low)
    assert p.calibration is None or p.calibration.gpu_margin_added_bytes == 0


def test_an_under_prediction_widens_the_margin_at_once_and_the_plan_is_made_again():
    base = _plan()
    assert base.predicted is not None
    short = 700 * MIB
    r = receipt_for(base, 80.0, {"CUDA0": short})
    w = widening((r,), receipt_key(base).memory_id)
    assert w.gpu_bytes == short + FLOOR_BYTES and w.host_bytes == 0
    again = _plan(history=(r,))
    assert again.calibration is not None
    assert again.calibration.gpu_margin_added_bytes == short + FLOOR_BYTES
    assert again.predicted is not None
    assert again.predicted.margin_bytes >= base.predicted.margin_bytes + short + FLOOR_BYTES
    # The next prediction leaves room for what was measured plus the floor: the budget the plan
    # fits in shrank by the widening, and every device still fits in it.
    b0 = {d.device: d.budget_bytes for d in base.predicted.devices}
    for d in again.predicted.devices:
        if d.device != "CPU":
            assert d.budget_bytes <= b0[d.device] - short - FLOOR_BYTES
            assert d.total_bytes <= d.budget_bytes
    assert any("margin widened" in n for n in again.predicted.notes)
    assert any("under by 700 MiB" in n for n in again.predicted.notes)


def test_margins_never_tighten_on_over_prediction():
    base = _plan()
    r = receipt_for(base, 80.0, {"CUDA0": -4 * GIB})
    again = _plan(history=(r,))
    assert again.predicted is not None and base.predicted is not None
    assert again.predicted.margin_bytes == base.predicted.margin_bytes
    assert [d.budget_bytes for d in again.predicted.devices] == [
        d.budget_bytes for d in base.predicted.devices
    ]


def test_a_widening_that_no_longer_fits_gives_a_smaller_plan_or_a_refusal_not_the_old_one():
    pinned = {**ENV, "PREFLIGHT_MODEL": "qwen3-32b", "PREFLIGHT_CONTEXT": "32768"}
    base = _plan(pinned, spec="rtx-4090")
    if base.verdict != "ship":
        return
    r = receipt_for(base, 20.0, {"CUDA0": 20 * GIB})
    again = _plan(pinned, spec="rtx-4090", history=(r,))
    assert again != base
    if again.verdict == "ship":
        assert again.predicted is not None
        for d in again.predicted.devices:
            assert d.total_bytes <= d.budget_bytes


def test_calibrate_is_pure_and_keeps_a_refusal_as_it_is():
    refused = _plan({"PREFLIGHT_MODEL": "llama-3.1-70b-instruct"}, spec="rtx-3060")
    assert refused.verdict == "refuse"
    assert calibrate(refused, ()) is refused
