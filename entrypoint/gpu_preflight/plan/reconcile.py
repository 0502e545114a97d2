"""Fold llama.cpp's own dry run of the planned command into the plan (pure).

Per device and component (weights, KV, compute), the plan keeps the larger of its closed-form
prediction and llama.cpp's figure, because under-predicting is an OOM; overhead (CUDA context,
cuBLAS, pools), which llama.cpp does not report, stays the closed form's. Where the two disagree by
more than the closed form's stated error, the notes say so. If a device then exceeds its budget, the
plan refuses with the engine's numbers.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from gpu_preflight.plan.common import gib
from gpu_preflight.plan.types import Plan, PlannedDevice

MIB = 2**20
# The closed form's stated error on the CPU (README, bench/results/llamacpp-memory.md): never
# under, at most a few percent over. A larger gap is worth a note.
STATED_FRACTION = 0.03
STATED_FIXED = 64 * MIB


class EngineRow(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def model_bytes(self) -> int: ...
    @property
    def context_bytes(self) -> int: ...
    @property
    def compute_bytes(self) -> int: ...


class Breakdown(Protocol):
    @property
    def gpus(self) -> tuple[EngineRow, ...]: ...
    @property
    def host(self) -> EngineRow | None: ...
    @property
    def seconds(self) -> float: ...
    @property
    def dropped(self) -> tuple[str, ...]: ...


def _pair(plan: Plan, engine: Breakdown) -> list[tuple[PlannedDevice, EngineRow | None]]:
    """Each planned device with llama.cpp's row for it. Both name a GPU as llama.cpp does
    (CUDA<ordinal>, plan/llamacpp.py device_name) and list them in the model's device order
    (--device's; common/fit.cpp common_memory_breakdown_print walks llama_model_get_device):
    by name where the names are the plan's, else (another backend's names, Vulkan0.. in the
    tests) by position in that order."""
    assert plan.predicted is not None
    gpus = list(engine.gpus)
    planned = [d for d in plan.predicted.devices if d.device != "CPU"]
    by_name = {r.name: r for r in gpus}
    named = {d.device for d in planned} == set(by_name)
    out: list[tuple[PlannedDevice, EngineRow | None]] = []
    for d in plan.predicted.devices:
        if d.device == "CPU":
            out.append((d, engine.host))
        elif named:
            out.append((d, by_name[d.device]))
        else:
            i = planned.index(d)
            out.append((d, gpus[i] if i < len(gpus) else None))
    return out


def _far(ours: int, theirs: int) -> bool:
    return abs(ours - theirs) > max(STATED_FIXED, int(theirs * STATED_FRACTION))


def reconcile(plan: Plan, engine: Breakdown | str) -> Plan:
    """The plan with llama.cpp's own breakdown folded in, or a note saying why there is none."""
    if plan.verdict != "ship" or plan.predicted is None:
        return plan
    pred = plan.predicted
    if isinstance(engine, str):
        note = f"llama.cpp's own dry run was not used: {engine}; the closed form stands"
        return replace(plan, predicted=replace(pred, notes=(*pred.notes, note)))
    devices: list[PlannedDevice] = []
    notes: list[str] = []
    over: list[str] = []
    for d, e in _pair(plan, engine):
        if e is None:
            devices.append(d)
            notes.append(f"llama.cpp's dry run reported no device for {d.device}")
            continue
        w = max(d.weights_bytes, e.model_bytes)
        kv = max(d.kv_cache_bytes, e.context_bytes)
        cp = max(d.compute_bytes, e.compute_bytes)
        for what, ours, theirs in (
            ("weights", d.weights_bytes, e.model_bytes),
            ("KV", d.kv_cache_bytes, e.context_bytes),
            ("compute", d.compute_bytes, e.compute_bytes),
        ):
            if _far(ours, theirs):
                kept = "llama.cpp's" if theirs > ours else "the prediction"
                notes.append(
                    f"{d.device} {what}: llama.cpp says {theirs // MIB} MiB, the closed form "
                    f"{ours // MIB} MiB; kept the larger ({kept})"
                )
        total = w + kv + cp + d.overhead_bytes
        devices.append(
            replace(d, weights_bytes=w, kv_cache_bytes=kv, compute_bytes=cp, total_bytes=total)
        )
        if total > d.budget_bytes:
            over.append(f"{gib(total)} on {d.description}, {gib(d.budget_bytes)} usable")
    summary = (
        f"llama.cpp's own dry run of this command ({engine.seconds:.2f} s, llama-fit-params on "
        "this machine's devices): each component is the larger of its figure and the closed form"
    )
    if engine.dropped:
        summary += f"; not passed to it (server-only): {' '.join(engine.dropped[:12])}"
    new_pred = replace(pred, devices=tuple(devices), notes=(*pred.notes, summary, *notes))
    if over:
        return replace(
            plan,
            verdict="refuse",
            argv=(),
            env_unset=(),
            predicted=new_pred,
            reasons=(
                "llama.cpp's own dry run of the planned command needs " + "; ".join(over),
                *plan.reasons,
            ),
        )
    return replace(plan, predicted=new_pred)
