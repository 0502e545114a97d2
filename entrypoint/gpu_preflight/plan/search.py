"""plan(): profile + catalog + tier table + overrides -> a Plan that ships, or one that refuses. Pure.

Selection, in order:
1. Devices: every GPU leaf (a MIG slice is its own device; a process can use one, so the largest is
   planned on). Usable = free - reserve (PREFLIGHT_RESERVE_GB) - margin.
2. Tier: the largest whose minimum the usable VRAM meets (or PREFLIGHT_TIER); CPU tier without GPU.
3. Candidates: the tier's model list (or the user's model). Pass 1 walks them, each with the tier's
   engines in order, wholly in VRAM; the first that fits at the tier's minimum context wins, with the
   largest context up to the target. Pass 2 allows llama.cpp offload (MoE experts first, then layers)
   when host RAM allows and the decode forecast meets PREFLIGHT_MIN_TOKS. Then the lower tiers.
4. A user's model, artifact, engine or context is never swapped for another: if it cannot fit, the
   plan refuses and lists what would fit instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from gpu_preflight.inputs.errors import OverrideError
from gpu_preflight.inputs.flags import knob
from gpu_preflight.inputs.model_request import ModelRequest
from gpu_preflight.inputs.overrides import Overrides
from gpu_preflight.memory.llamacpp import CACHE_TYPES
from gpu_preflight.models.types import Artifact, ModelSpec
from gpu_preflight.plan.common import Fit, FitResult, Miss, Wants, gib
from gpu_preflight.plan.draft import with_draft
from gpu_preflight.plan.llamacpp import fit_llamacpp
from gpu_preflight.plan.refusal import Situation, refusal
from gpu_preflight.plan.request import (
    Catalogue,
    artifacts,
    tier_candidates,
    wants_for,
)
from gpu_preflight.plan.ship import ship
from gpu_preflight.plan.targets import GpuTarget, Targets, build_targets
from gpu_preflight.plan.tiers import Tier, TierTable
from gpu_preflight.plan.types import Plan
from gpu_preflight.plan.vllm import fit_vllm
from gpu_preflight.profile_types import Profile


def planning_gpus(targets: Targets) -> tuple[GpuTarget, ...]:
    if not targets.gpus:
        return ()
    if any(g.mig for g in targets.gpus):
        return targets.gpus[:1]  # one MIG device per process: the largest leaf
    return targets.gpus


def fit_one(
    spec: ModelSpec,
    art: Artifact,
    gpus: tuple[GpuTarget, ...],
    targets: Targets,
    w: Wants,
    allow_offload: bool,
    request: ModelRequest | None = None,
) -> FitResult:
    """One artifact on these devices: the fit, or why not. The one code path every command uses."""
    draft = request.draft if request is not None else None
    if art.engine == "vllm":
        return fit_vllm(spec, art, gpus, w, draft=draft)
    return fit_llamacpp(spec, art, gpus, targets.host, w, allow_offload, draft=draft)


def _try(
    spec: ModelSpec,
    quant: str | None,
    engines: Sequence[str],
    gpus: tuple[GpuTarget, ...],
    targets: Targets,
    w: Wants,
    allow_offload: bool,
    request: ModelRequest | None = None,
) -> tuple[Fit | None, list[Miss]]:
    misses: list[Miss] = []
    pinned = request.artifact if request is not None else None
    for engine in engines:
        arts = [pinned] if pinned is not None and pinned.engine == engine else []
        if pinned is None:
            arts = artifacts(spec, engine, quant)
        if not arts:
            if pinned is not None:
                what = f"{pinned.repo}{'/' + pinned.file if pinned.file else ''}"
                why = f"{what} is a {pinned.engine} artifact, not {engine}"
            else:
                what = f" with quant {quant}" if quant else ""
                why = f"no {engine} artifact{what} in the catalog"
            misses.append(Miss(spec, None, engine, f"{spec.id}: {why}"))
            continue
        for art in arts:
            if engine == "vllm" and allow_offload:
                continue  # vLLM does not offload: pass 1 already tried it
            res = fit_one(spec, art, gpus, targets, w, allow_offload, request)
            if isinstance(res, Fit):
                return res, misses
            misses.append(res)
    return None, misses


def _engines(
    tier: Tier, o: Overrides, has_gpu: bool, available: frozenset[str], request: ModelRequest | None
) -> list[str]:
    if o.engine:
        return [o.engine.value]
    if request is not None and request.artifact is not None:
        return [request.artifact.engine]  # a named repo or file has one engine
    order = [e for e in tier.engines if has_gpu or e == "llama.cpp"]
    if not has_gpu and "llama.cpp" not in order:
        order.append("llama.cpp")
    present = [e for e in order if e in available]
    return present or order


def _fewer_slots(w: Wants, o: Overrides, tier: Tier) -> list[Wants]:
    """The request, then the same with the tier's slots halved down to 1 (unless pinned)."""
    if o.parallel is not None or w.ctx_total is not None:
        return [w]
    out = [w]
    p = w.parallel
    while p > 1:
        p //= 2
        out.append(replace(w, parallel=p))
    return out


# vLLM's fp8 KV cache is a fallback only where the GPU has fp8 units (Ada, Hopper and newer):
# vLLM 0.32's Triton attention refuses it below SM 8.9 ("native FP8 (fp8e4nv) requires SM89+",
# v1/attention/backends/triton_attn.py TritonAttentionImpl), FlashAttention takes it on SM 9.0
# and 10.0 only (fa_utils.py flash_attn_supports_kv_cache_dtype), and the fallback must never
# turn a plan into one that does not start.
FP8_KV_MIN_CC = (8, 9)
# Each engine's own KV type when unset: the flag table's defaults (inputs/flags.py KNOBS, cited).
ENGINE_DEFAULT_KV = {
    "llama.cpp": knob("cache_type_k").default("llama.cpp").value,
    "vllm": knob("kv_cache_type").default("vllm").value,
}


@dataclass(frozen=True)
class Step:
    """One attempt of the degrade ladder: these engines, asked for these wants."""

    engines: tuple[str, ...]
    wants: Wants
    kv: str | None = None  # the KV type this step fell back to (None: the engine's default)


def _kv_fallbacks(
    spec: ModelSpec,
    tier: Tier,
    o: Overrides,
    engines: Sequence[str],
    gpus: Sequence[GpuTarget],
    w: Wants,
) -> list[tuple[str, str]]:
    """(engine, KV type) the tier lets a named model fall back to, in order; none when pinned."""
    if any(o.is_set(k) for k in ("kv_cache_type", "cache_type_k", "cache_type_v")):
        return []
    out = []
    for engine in engines:
        for kv in tier.kv_cache_degrade.get(engine, ()):
            block = CACHE_TYPES.get(kv, (1, 0))[0] if engine == "llama.cpp" else 1
            if spec.arch.head_dim % block or spec.arch.v_head_dim % block:
                continue  # a quantized row is whole blocks (ggml_row_size): this model's are not
            if engine == "vllm":
                ccs = [g.compute_capability for g in gpus]
                if not ccs or any(cc is None or cc < FP8_KV_MIN_CC for cc in ccs):
                    continue
            if engine == "llama.cpp" and w.flash_attn == "off" and kv != "bf16":
                continue  # a quantized V cache needs flash attention (llama-context.cpp)
            out.append((engine, kv))
    return out


def _ladder(
    spec: ModelSpec,
    w: Wants,
    o: Overrides,
    tier: Tier,
    engines: Sequence[str],
    gpus: Sequence[GpuTarget],
) -> list[Step]:
    """The documented degrade order for a named model (docs/configuration.md): the tier's slots
    halved down to 1, each fitted at the largest context down to the tier's minimum; then each
    KV cache type the tier allows, with the slots tried again from the tier's count down. Offload
    (step 4) is the caller's outer loop. A pinned value is never stepped."""
    if o.as_typed:
        return [Step(tuple(engines), w)]  # estimate: the command as typed, nothing stepped
    steps = [Step(tuple(engines), tw) for tw in _fewer_slots(w, o, tier)]
    for engine, kv in _kv_fallbacks(spec, tier, o, engines, gpus, w):
        kw = replace(w, cache_type_k=kv, cache_type_v=kv)
        steps += [Step((engine,), tw, kv) for tw in _fewer_slots(kw, o, tier)]
    return steps


def _degrade_notes(fit: Fit, step: Step, w: Wants, tier: Tier) -> Fit:
    notes = []
    if step.wants.parallel != w.parallel:
        notes.append(
            f"parallel slots: {step.wants.parallel} instead of tier {tier.id}'s {w.parallel}, "
            "which did not fit (set PREFLIGHT_PARALLEL to pin it)"
        )
    if step.kv is not None:
        default = ENGINE_DEFAULT_KV.get(fit.engine, "the default")
        notes.append(
            f"KV cache type: {step.kv} instead of {fit.engine}'s default {default}, which did not "
            f"fit at any slot count down to 1 and context down to {w.min_context}; tier {tier.id} "
            "allows it (kv_cache_degrade; set PREFLIGHT_KV_CACHE_TYPE to pin a type)"
        )
    return replace(fit, notes=(*fit.notes, *notes)) if notes else fit


def _why_no_gpu(profile: Profile, targets: Targets) -> str:
    notes = list(profile.hardware.gpus.notes) + list(targets.notes)
    return notes[0] if notes else "no GPU was found"


def dedupe(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in items:
        seen.setdefault(i, None)
    return list(seen)


def plan(
    profile: Profile,
    catalog: Catalogue,
    tiers: TierTable,
    overrides: Overrides,
    model: ModelRequest | None = None,
    engines_available: Iterable[str] = ("vllm", "llama.cpp"),
    all_devices: bool = False,
    widen: tuple[int, int] = (0, 0),
    on: frozenset[int] | None = None,
) -> Plan:
    """``all_devices``: plan on exactly the devices given (estimate), never one card of them.
    ``widen``: (GPU, host) bytes kept free on top of the margins, from receipts (receipt/calibrate.py).
    ``on``: the NVML indices of the GPUs to plan on (None: all), the others still seen by this
    process (build_targets).
    """
    available = frozenset(engines_available)
    reserve_gib: float = overrides.resolved("reserve_gib").value
    reserve = int(reserve_gib * 2**30)
    targets = build_targets(profile, reserve, *widen, on=on)
    gpus = planning_gpus(targets)
    has_gpu = bool(gpus)
    usable = sum(g.usable_bytes for g in gpus)

    if overrides.tier:
        tier = tiers.get(overrides.tier.value)  # the row's parser lower-cases it
        if tier is None:
            raise OverrideError(
                "PREFLIGHT_TIER", overrides.tier.value, ", ".join(t.id for t in tiers.tiers)
            )
        tier_src = overrides.tier.source
    else:
        tier = tiers.for_vram(usable, has_gpu)
        tier_src = f"usable VRAM {gib(usable)}" if has_gpu else "no usable GPU"
    w = wants_for(tier, overrides, has_gpu, model)
    engines = _engines(tier, overrides, has_gpu, available, model)

    def refuse(t: Tier, reasons: list[str], misses: Sequence[Miss] = ()) -> Plan:
        sit = Situation(profile, targets, gpus, t, overrides, w, catalog, tiers, model)
        return refusal(sit, reasons, misses)

    if engines == ["vllm"] and not has_gpu:
        return refuse(
            tier, [f"vLLM needs a GPU and none is usable here ({_why_no_gpu(profile, targets)})"]
        )

    misses: list[Miss] = []
    fit: Fit | None = None
    kv_step: str | None = None
    if model is not None:
        # Degrade in a documented order before refusing (issue 13), never touching a pinned
        # value: the tier's parallel slots first, down to 1, then (inside each fit) the context
        # down to the tier's minimum, then the KV cache type where the tier allows it, then
        # offload to host RAM.
        for allow_offload in (False, True):
            for step in _ladder(model.spec, w, overrides, tier, engines, gpus):
                fit, m = _try(
                    model.spec,
                    model.quant,
                    step.engines,
                    gpus,
                    targets,
                    step.wants,
                    allow_offload,
                    model,
                )
                misses += m
                if fit:
                    fit = _degrade_notes(fit, step, w, tier)
                    kv_step = step.kv
                    break
            if fit or not has_gpu:
                break
    else:
        lower = [
            t
            for t in tiers.tiers
            if (t.min_vram_gib > 0) == has_gpu and t.min_vram_gib < tier.min_vram_gib
        ]
        for t in [tier, *sorted(lower, key=lambda t: -t.min_vram_gib)]:
            tw = w if t is tier else wants_for(t, overrides, has_gpu)
            te = engines if t is tier else _engines(t, overrides, has_gpu, available, None)
            for allow_offload in (False, True) if has_gpu else (False,):
                for spec, quant in tier_candidates(t, catalog):
                    fit, m = _try(spec, quant, te, gpus, targets, tw, allow_offload)
                    misses += m
                    if fit:
                        break
                if fit:
                    break
            if fit:
                if t is not tier:
                    fit = replace(
                        fit,
                        warnings=(
                            *fit.warnings,
                            f"nothing in tier {tier.id} fitted; planned from the lower tier {t.id}",
                        ),
                    )
                    tier = t
                break

    if fit is not None and (model is None or model.draft is None):
        fit, why_not = with_draft(fit, tier, overrides, catalog, targets, w)
        spec_on = overrides.speculative is not None and overrides.speculative.value == "on"
        if why_not and spec_on:
            # The user asked for speculative decoding: serving without it would be a quiet change.
            return refuse(
                tier, [f"speculative decoding was asked for (PREFLIGHT_SPECULATIVE=on): {why_not}"]
            )
        if why_not:
            # Asked by the tier, not the user: the plan says why, but it is not a problem.
            fit = replace(fit, notes=(*fit.notes, f"speculative decoding: {why_not}"))

    if fit is None:
        result = refuse(tier, dedupe([m.reason for m in misses]), misses)
    else:
        result = ship(profile, targets, tier, tier_src, overrides, fit, model)
        if kv_step is not None:
            sources = {**result.sources, "kv_cache_type": f"tier:{tier.id} (kv_cache_degrade)"}
            result = replace(result, sources=sources)
    if all_devices or any(
        overrides.is_set(k)
        for k in (
            "tensor_split",
            "split_mode",
            "main_gpu",
            "tensor_parallel",
            "pipeline_parallel",
            "pp_layer_partition",
            "device",
        )
    ):
        return result  # the user asked for these devices together
    return _against_one_card(result, profile, catalog, tiers, overrides, model, available)


def _size(p: Plan, catalog: Catalogue) -> tuple[float, int]:
    if p.verdict != "ship" or p.model is None:
        return (-1.0, 0)
    spec = catalog.get(p.model.id)
    return (spec.params_b if spec else p.model.weight_bytes / 1e9, p.context or 0)


def _against_one_card(
    result: Plan,
    profile: Profile,
    catalog: Catalogue,
    tiers: TierTable,
    overrides: Overrides,
    model: ModelRequest | None,
    available: frozenset[str],
) -> Plan:
    """On mixed cards, one server over all of them only when it gives a larger model or a longer
    context than the best card alone; otherwise that card alone. The plan says which and why."""
    gpus = [g for g in profile.hardware.gpus.devices if not g.mig_enabled]
    if len(gpus) < 2 or len({(g.name, g.total_bytes) for g in gpus}) < 2:
        return result
    biggest = max(gpus, key=lambda g: g.free_bytes or 0)
    # The card keeps its CUDA ordinal and the others stay in the count: this process sees every
    # card, so the plan must name and pin the one it uses (llama.cpp --device CUDA<n>, also when
    # that is CUDA0 of several; vLLM CUDA_VISIBLE_DEVICES).
    alone = plan(
        profile, catalog, tiers, overrides, model, available, True, on=frozenset({biggest.index})
    )
    a, b = _size(result, catalog), _size(alone, catalog)
    over = _over(result, len(gpus))
    if result.verdict == "ship" and a >= b:
        if len(result.targets) < len(gpus):
            why = (
                f"{over} ({_said(result)}); GPU {biggest.index} alone: {_said(alone)}; run one "
                "container per card to use the others (gpu-preflight compose writes that stack)"
            )
            return _with_note(result, why)
        better = "it gives a larger model or a longer context" if a > b else "it is no smaller"
        why = f"{over} ({_said(result)}), not GPU {biggest.index} alone ({_said(alone)}): {better}"
        return _with_note(result, why)
    if alone.verdict != "ship":
        return result
    why = (
        f"GPU {biggest.index} alone ({_said(alone)}) beats {over} ({_said(result)}); run one "
        "container per card to use the others (gpu-preflight compose writes that stack)"
    )
    return _with_note(replace(alone, warnings=(*alone.warnings, why)), why)


def _over(p: Plan, n: int) -> str:
    used = len(p.targets) if p.verdict == "ship" else n
    return f"one server over all {n} cards" if used >= n else f"one server on {used} of {n} cards"


def _said(p: Plan) -> str:
    if p.verdict != "ship" or p.model is None:
        return "refused"
    return f"{p.model.id} {p.model.quant} with {p.engine} at {p.context} tokens x {p.parallel}"


def _with_note(p: Plan, note: str) -> Plan:
    if p.predicted is None:
        return p
    return replace(p, predicted=replace(p.predicted, notes=(*p.predicted.notes, note)))
