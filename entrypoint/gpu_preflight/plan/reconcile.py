"""Fold llama.cpp's own dry run of the planned command into the plan (pure).

``reconcile`` (``run``, on the real devices): per device and component (weights, KV, compute), the
plan keeps the larger of its closed-form prediction and llama.cpp's figure, because
under-predicting is an OOM; overhead (CUDA context, cuBLAS, pools), which llama.cpp does not
report, stays the closed form's. Where the two disagree by more than the closed form's stated
error, the notes say so. If a device then exceeds its budget, the plan refuses with the engine's
numbers.

``reconcile_totals`` (``plan``, ``estimate``, ``matrix``: the same dry run on this machine's CPU,
engine_check.llama_cpu_dry_run): llama.cpp's model and context bytes are the whole model's
weights and KV wherever they sit, so they are compared with the plan's totals over all its
devices, and an excess is spread over the devices in proportion to what each already holds.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from gpu_preflight.inputs.flags import rows_for
from gpu_preflight.plan.common import gib
from gpu_preflight.plan.types import Plan, PlannedDevice

MIB = 2**20
# The closed form's stated error on the CPU (README, bench/results/llamacpp-memory.md): never
# under, at most a few percent over. A larger gap is worth a note.
STATED_FRACTION = 0.03
STATED_FIXED = 64 * MIB
# What the CPU dry run puts in place of the plan's placement (engine_check.CPU_ARGS; plan/ does
# not import the module that runs it).
CPU_PLACEMENT_NOTE = ("--n-gpu-layers", "0", "--device", "none")


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


def _rows_of(engine: Breakdown) -> tuple[EngineRow, ...]:
    return (*engine.gpus, *((engine.host,) if engine.host is not None else ()))


def _figures(engine: Breakdown) -> str:
    """llama.cpp's totals over its rows, in the whole MiB it prints."""
    rows = _rows_of(engine)
    m = sum(r.model_bytes for r in rows) // MIB
    c = sum(r.context_bytes for r in rows) // MIB
    k = sum(r.compute_bytes for r in rows) // MIB
    return f"model {m} MiB, context {c} MiB, compute {k} MiB"


def _over_budget(d: PlannedDevice, total: int) -> bool:
    # Host RAM the planner could not size (a simulated machine without --host-ram) has budget
    # 0 in the document: the planner did not check it (plan/llamacpp.py LlamaFit.over), and
    # neither does the fold.
    if d.device == "CPU" and d.budget_bytes <= 0:
        return False
    return total > d.budget_bytes


def kv_measured(engine: Breakdown) -> bool:
    """Whether llama.cpp's context figure is the planned cache's: ``--kv-unified`` is
    server-only (common/arg.cpp: llama-fit-params refuses it, so fit_params_args drops it), and
    without it llama.cpp sizes a stream per slot, each padded to 256 cells and, for a
    sliding-window model, each with its own window plus a ubatch
    (src/llama-kv-cache-iswa.cpp), more than the unified cache the plan ships."""
    unified = {s for r in rows_for("kv_unified", "llama.cpp") for s in r.spellings}
    return not any(d in unified for d in engine.dropped)


def reconcile(
    plan: Plan,
    engine: Breakdown | str,
    fold_kv: bool = True,
    where: str = "this machine's devices",
) -> Plan:
    """The plan with llama.cpp's own breakdown folded in, or a note saying why there is none.
    ``fold_kv`` False: llama.cpp's context figure is not the planned cache's (kv_measured)."""
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
        kv = max(d.kv_cache_bytes, e.context_bytes) if fold_kv else d.kv_cache_bytes
        cp = max(d.compute_bytes, e.compute_bytes)
        compared = (
            ("weights", d.weights_bytes, e.model_bytes),
            *((("KV", d.kv_cache_bytes, e.context_bytes),) if fold_kv else ()),
            ("compute", d.compute_bytes, e.compute_bytes),
        )
        for what, ours, theirs in compared:
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
        if _over_budget(d, total):
            over.append(f"{gib(total)} on {d.description}, {gib(d.budget_bytes)} usable")
    summary = (
        f"llama.cpp's own dry run of this command ({engine.seconds:.2f} s, llama-fit-params on "
        f"{where}; {_figures(engine)}): each component is the larger of its figure and the "
        "closed form"
    )
    return _folded(
        plan,
        devices,
        summary,
        notes,
        over,
        "llama.cpp's own dry run of the planned command",
        engine,
        fold_kv,
    )


def _folded(
    plan: Plan,
    devices: list[PlannedDevice],
    summary: str,
    notes: list[str],
    over: list[str],
    who: str,
    engine: Breakdown,
    fold_kv: bool,
) -> Plan:
    """The plan with the folded devices and the dry run's notes; a refusal naming ``who`` (the
    dry run and its figures) where a device went over its budget."""
    assert plan.predicted is not None
    pred = plan.predicted
    if not fold_kv:
        summary += (
            "; KV kept as predicted: --kv-unified is server-only, so llama.cpp sized a stream "
            "per slot instead"
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
            reasons=(f"{who} needs " + "; ".join(over), *plan.reasons),
        )
    return replace(plan, predicted=new_pred)


def _spread(excess: int, held: list[int], fallback: list[int]) -> list[int]:
    """``excess`` split over the devices in proportion to ``held`` (what each holds of the
    component), or to ``fallback`` where none holds any; the rounding goes to the largest, so the
    parts add up to ``excess`` exactly."""
    base = held if sum(held) > 0 else fallback if sum(fallback) > 0 else [1] + [0] * (len(held) - 1)
    whole = sum(base)
    parts = [excess * b // whole for b in base]
    parts[max(range(len(base)), key=base.__getitem__)] += excess - sum(parts)
    return parts


def reconcile_totals(plan: Plan, engine: Breakdown | str, always_fold_kv: bool = False) -> Plan:
    """The plan with llama.cpp's own dry run on this machine's CPU folded into its totals, or a
    note saying why there is none (the closed form stands).

    llama.cpp's model bytes are every weight of the model and its context bytes every layer's KV
    and recurrent state (src/llama-model.cpp, src/llama-kv-cache.cpp: their sizes follow the
    tensors and the cache types, not the device that holds them), so they are compared with the
    plan's weights and KV summed over all its devices, host included. Where llama.cpp's total is
    larger, the excess is added to the devices in proportion to what each already holds of that
    component (never under-predict); a device then over its budget refuses the plan, naming
    llama.cpp's numbers.

    The compute buffer is not folded for GPUs: on the CPU it is the CPU backend's graph and
    buffer (ggml-cpu's scheduler splits, its own op support, no flash-attention kernel choices of
    CUDA), not what the GPUs' backend allocates, so it says nothing about a GPU's compute
    buffer. Where the plan itself is CPU-only, the CPU run is the real thing and ``reconcile``
    folds every component per device, compute included.
    """
    if plan.verdict != "ship" or plan.predicted is None:
        return plan
    pred = plan.predicted
    if isinstance(engine, str):
        note = f"llama.cpp's own dry run on the CPU was not used: {engine}; the closed form stands"
        return replace(plan, predicted=replace(pred, notes=(*pred.notes, note)))
    # ``always_fold_kv``: an architecture gguf does not list, whose closed-form KV is not trusted;
    # llama.cpp's per-slot streams (more than the unified cache, see kv_measured) are then the
    # safe side.
    fold_kv = always_fold_kv or kv_measured(engine)
    if all(d.device == "CPU" for d in pred.devices):
        return reconcile(plan, engine, fold_kv, "this machine's CPU")
    rows = _rows_of(engine)
    model = sum(r.model_bytes for r in rows)
    context = sum(r.context_bytes for r in rows)
    compute = sum(r.compute_bytes for r in rows)
    devs = list(pred.devices)
    weights = [d.weights_bytes for d in devs]
    kvs = [d.kv_cache_bytes for d in devs]
    add_w = _spread(max(0, model - sum(weights)), weights, [1] * len(devs))
    add_kv = _spread(max(0, context - sum(kvs)), kvs, weights) if fold_kv else [0] * len(devs)
    notes: list[str] = []
    compared = (
        ("weights", sum(weights), model, add_w),
        *((("KV", sum(kvs), context, add_kv),) if fold_kv else ()),
    )
    for what, ours, theirs, added in compared:
        if _far(ours, theirs):
            kept = "llama.cpp's" if theirs > ours else "the prediction"
            notes.append(
                f"{what}: llama.cpp says {theirs // MIB} MiB, the closed form {ours // MIB} MiB "
                f"over all devices; kept the larger ({kept})"
            )
        if sum(added):
            shares = ", ".join(
                f"{d.device} +{a // MIB} MiB" for d, a in zip(devs, added, strict=True) if a
            )
            notes.append(
                f"{what} raised to llama.cpp's {theirs // MIB} MiB, the excess spread over the "
                f"devices by what each holds: {shares}"
            )
    devices: list[PlannedDevice] = []
    over: list[str] = []
    for d, aw, ak in zip(devs, add_w, add_kv, strict=True):
        total = d.total_bytes + aw + ak
        devices.append(
            replace(
                d,
                weights_bytes=d.weights_bytes + aw,
                kv_cache_bytes=d.kv_cache_bytes + ak,
                total_bytes=total,
            )
        )
        if (aw or ak) and _over_budget(d, total):
            over.append(f"{gib(total)} on {d.description}, {gib(d.budget_bytes)} usable")
    summary = (
        f"llama.cpp's own dry run of this command on this machine's CPU ({engine.seconds:.2f} s, "
        f"llama-fit-params with {' '.join(CPU_PLACEMENT_NOTE)}): model {model // MIB} MiB, "
        f"context {context // MIB} MiB; the plan's weights {sum(weights) // MIB} MiB and KV "
        f"{sum(kvs) // MIB} MiB over all devices, each total kept the larger; its CPU compute "
        f"buffer ({compute // MIB} MiB) is the CPU backend's, not the GPUs', and is not folded"
    )
    who = (
        f"llama.cpp's own dry run of the planned command on the CPU (model {model // MIB} MiB, "
        f"context {context // MIB} MiB)"
    )
    return _folded(plan, devices, summary, notes, over, who, engine, fold_kv)


# -- architectures outside gguf's list (models/layout.py unlisted_gguf_architecture) -------------

UNTRUSTED = "the closed form alone is not trusted for an architecture outside gguf's list"


def refuse_without_dry_run(plan: Plan, unlisted: str, why: str) -> Plan:
    """A refusal for a model whose architecture gguf does not list when llama.cpp's own dry run
    cannot be had (``why``: no llama-fit-params, no local header, the check switched off, or
    llama-fit-params could not load the file): no rule here was checked against it."""
    if plan.verdict != "ship":
        return plan
    return replace(
        plan,
        verdict="refuse",
        argv=(),
        env_unset=(),
        reasons=(
            f"{unlisted}, and llama.cpp's own dry run cannot be had here: {why}; {UNTRUSTED}. "
            "Accepted: llama-fit-params on PATH (the image, `make llama-cpp`), the GGUF on local "
            "disk, PREFLIGHT_ENGINE_CHECK=auto or on",
            *plan.reasons,
        ),
    )


def _compute_margin(compute: int) -> int:
    return max(STATED_FIXED, int(compute * STATED_FRACTION))


def fold_unlisted(plan: Plan, unlisted: str) -> Plan:
    """After llama.cpp's dry run was folded in (``reconcile`` / ``reconcile_totals``): weights
    and KV are llama.cpp's figures (each total kept the larger); compute, which the CPU run does
    not measure for the GPUs, is the generic closed form plus the closed form's stated error
    (STATED_FRACTION, at least STATED_FIXED) on every device that has a compute buffer. A device
    then over its budget refuses the plan with the numbers."""
    if plan.verdict != "ship" or plan.predicted is None:
        return plan
    pred = plan.predicted
    devices: list[PlannedDevice] = []
    over: list[str] = []
    added = 0
    for d in pred.devices:
        extra = _compute_margin(d.compute_bytes) if d.compute_bytes > 0 else 0
        added += extra
        total = d.total_bytes + extra
        devices.append(replace(d, compute_bytes=d.compute_bytes + extra, total_bytes=total))
        if extra and _over_budget(d, total):
            over.append(f"{gib(total)} on {d.description}, {gib(d.budget_bytes)} usable")
    note = (
        f"{unlisted}: weights and KV are llama.cpp's own dry run's (above); compute is the "
        f"generic closed form plus its stated error ({int(STATED_FRACTION * 100)} %, at least "
        f"{STATED_FIXED // MIB} MiB per device: +{added // MIB} MiB in all)"
    )
    new_pred = replace(pred, devices=tuple(devices), notes=(*pred.notes, note))
    if over:
        return replace(
            plan,
            verdict="refuse",
            argv=(),
            env_unset=(),
            predicted=new_pred,
            reasons=(
                f"{unlisted}; with compute's stated margin it needs " + "; ".join(over),
                *plan.reasons,
            ),
        )
    return replace(plan, predicted=new_pred)
