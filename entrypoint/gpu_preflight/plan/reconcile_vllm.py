"""Fold vLLM's own dummy-weight dry run of the planned command into the plan (pure).

vLLM sizes its KV pool itself, after profiling a forward pass on the real devices
(vllm/v1/worker/gpu_worker.py ``Worker.determine_available_memory``, then
vllm/v1/core/kv_cache_utils.py ``get_kv_cache_configs`` and ``_report_kv_cache_config``), and the
pool it gets is the one it serves with. The closed form (memory/vllm.py) is an estimate of that
pool; the dry run is the pool. So the smaller of the two is what the plan promises: vLLM's figure
where it is smaller (something the profiler measured, activation, non-torch or graphs, took more
than modelled), the prediction where vLLM has more (the plan's margin stays unspent). vLLM's total
on a card is its budget (``gpu_memory_utilization x total``) whatever the split, so a smaller KV
pool moves the difference into the profiled components, never out of the total: the total per
device is not lowered (never under-predict).

vLLM refusing the exact command for memory (its own start-up errors, the same on the real start
a minute later) refuses the plan, with vLLM's words. A dry run that could not say (timed out,
crashed, not run) is a note and the closed form stands.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeVar

from gpu_preflight.plan.types import Plan, PlannedDevice

GIB = 2**30
_N = TypeVar("_N", int, float)
# The closed form's stated error on vLLM's KV pool (README, bench/results/vllm-kv.md): 1.77 %
# median over the published V1 start-ups, always on the safe side, 5 % the target. A larger gap
# is worth a note in either direction.
STATED_FRACTION = 0.05


@dataclass(frozen=True)
class VllmKvReport:
    """What vLLM printed about its KV pool on this machine's devices."""

    # "Available KV cache memory: X GiB" (gpu_worker.py), one per worker that printed it
    # (2 decimals of GiB, so +-5 MiB)
    available_kv_bytes: tuple[int, ...]
    kv_capacity_tokens: int | None  # "GPU KV cache size: N tokens" (kv_cache_utils.py)
    max_concurrency: float | None  # "Maximum concurrency for L tokens per request: Xx"
    request_tokens: int | None  # its L, vLLM's max_model_len
    seconds: float  # start to the report
    argv: tuple[str, ...]  # exactly what ran


@dataclass(frozen=True)
class VllmRefused:
    """vLLM refused the command for memory before serving (its own words)."""

    message: str
    seconds: float
    argv: tuple[str, ...]


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def _note(plan: Plan, text: str) -> Plan:
    assert plan.predicted is not None
    pred = plan.predicted
    return replace(plan, predicted=replace(pred, notes=(*pred.notes, text)))


def _ratio(plan: Plan, engine: VllmKvReport) -> tuple[float, str, str] | None:
    """vLLM's pool over the prediction's, and each side in words.

    By requests of max_model_len where both have them: vLLM's "Maximum concurrency" and the
    plan's max_concurrency are one definition, the pool's blocks over the blocks one request
    needs (kv_cache_utils.py get_max_concurrency_for_kv_cache_config; memory/vllm.py
    max_concurrency), so their ratio is the ratio of blocks. vLLM's token figure is
    int(concurrency x max_model_len), the more exact of its two. Else by the bytes vLLM reported
    against the smallest planned card."""
    assert plan.predicted is not None
    pred = plan.predicted
    ours_c, theirs_c = pred.max_concurrency, engine.max_concurrency
    if ours_c and theirs_c is not None:
        if engine.kv_capacity_tokens is not None and engine.request_tokens:
            theirs_c = engine.kv_capacity_tokens / engine.request_tokens
        theirs_t = f"{engine.kv_capacity_tokens:,} tokens" if engine.kv_capacity_tokens else ""
        ours_t = f"{pred.kv_capacity_tokens:,} tokens" if pred.kv_capacity_tokens else ""
        return (
            theirs_c / ours_c,
            f"{theirs_t} ({theirs_c:.2f} requests of {plan.context or 0:,})".strip(),
            f"{ours_t} ({ours_c:.2f} requests)".strip(),
        )
    gpus = [d.kv_cache_bytes for d in pred.devices if d.device != "CPU"]
    if engine.available_kv_bytes and gpus and min(gpus) > 0:
        theirs_b, ours_b = min(engine.available_kv_bytes), min(gpus)
        return theirs_b / ours_b, _gib(theirs_b), _gib(ours_b)
    return None


def _shrink(d: PlannedDevice, ratio: float) -> PlannedDevice:
    """A card's KV at vLLM's pool (blocks are uniform across ranks, so bytes scale with them);
    the rest of the same total is the profiled part vLLM found larger."""
    if d.device == "CPU" or ratio >= 1:
        return d
    kv = int(d.kv_cache_bytes * ratio)
    return replace(d, kv_cache_bytes=kv, compute_bytes=d.compute_bytes + d.kv_cache_bytes - kv)


def _smaller(ours: _N | None, theirs: _N | None, ratio: float) -> _N | None:
    if theirs is None:
        return None if ours is None else type(ours)(ours * ratio)
    return theirs if ours is None else min(ours, theirs)


def reconcile_vllm(plan: Plan, engine: VllmKvReport | VllmRefused | str) -> Plan:
    """The plan with vLLM's own KV pool folded in, refused with vLLM's words, or a note."""
    if plan.verdict != "ship" or plan.predicted is None or plan.engine != "vllm":
        return plan
    if isinstance(engine, str):
        return _note(plan, f"vLLM's own dry run was not used: {engine}; the closed form stands")
    if isinstance(engine, VllmRefused):
        return replace(
            plan,
            verdict="refuse",
            argv=(),
            env_unset=(),
            reasons=(
                "vLLM's own dry run of the planned command (--load-format dummy, "
                f"{engine.seconds:.0f} s on this machine's devices) refused it: {engine.message}",
                *plan.reasons,
            ),
        )
    pred = plan.predicted
    found = _ratio(plan, engine)
    if found is None:
        return _note(plan, "vLLM's own dry run reported no KV cache figure; the closed form stands")
    ratio, theirs, ours = found
    kept = "vLLM's" if ratio < 1 else "the prediction"
    notes = [
        f"vLLM's own dry run of this command (--load-format dummy: random weights from the "
        f"config, nothing downloaded; {engine.seconds:.1f} s to its KV report on this machine's "
        f"devices): KV cache {theirs}, predicted {ours}; kept the smaller ({kept})"
    ]
    if abs(ratio - 1) > STATED_FRACTION:
        notes.append(
            f"vLLM's KV pool and the closed form disagree by {100 * (ratio - 1):+.1f} %, beyond "
            f"its stated {100 * STATED_FRACTION:.0f} %: vLLM {theirs}, closed form {ours}"
        )
    if ratio >= 1:
        return replace(plan, predicted=replace(pred, notes=(*pred.notes, *notes)))
    # vLLM's own figures where it printed them (what the receipt will compare), else the
    # prediction's scaled to its pool; never above the prediction.
    tokens = _smaller(pred.kv_capacity_tokens, engine.kv_capacity_tokens, ratio)
    conc = _smaller(pred.max_concurrency, engine.max_concurrency, ratio)
    if conc is not None:
        conc = round(conc, 2)
    warnings = plan.warnings
    if conc is not None and plan.parallel is not None and conc < plan.parallel:
        warnings = (
            *warnings,
            f"vLLM's own KV pool holds {conc:.2f} requests of {plan.context} tokens, fewer than "
            f"the {plan.parallel} planned: the rest wait or are preempted",
        )
    new_pred = replace(
        pred,
        devices=tuple(_shrink(d, ratio) for d in pred.devices),
        kv_capacity_tokens=tokens,
        max_concurrency=conc,
        notes=(*pred.notes, *notes),
    )
    return replace(plan, predicted=new_pred, warnings=warnings)


__all__ = ["STATED_FRACTION", "VllmKvReport", "VllmRefused", "reconcile_vllm"]
