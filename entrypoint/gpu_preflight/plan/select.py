"""plan(): profile + catalog + tier table + overrides -> a Plan that ships, or one that refuses. Pure.

Selection, in order:
1. Devices: every GPU leaf (a MIG slice is its own device; a process can use one, so the largest is
   planned on). Usable = free - reserve (PREFLIGHT_RESERVE_GB) - margin.
2. Tier: the largest whose minimum the usable VRAM meets (or PREFLIGHT_TIER); CPU tier without GPU.
3. Candidates: the tier's model list (or the user's model). Pass 1 walks them, each with the tier's
   engines in order, wholly in VRAM; the first that fits at the tier's minimum context wins, with the
   largest context up to the target. Pass 2 allows llama.cpp offload (MoE experts first, then layers)
   when host RAM allows and the decode forecast meets PREFLIGHT_MIN_TOKS. Then the lower tiers.
4. A user's model, engine or context is never swapped for another: if it cannot fit, the plan refuses
   and lists what would fit instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from gpu_preflight.memory.types import Estimate
from gpu_preflight.models.types import Artifact, ModelSpec
from gpu_preflight.plan.argv import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DraftSettings,
    LlamaServerSettings,
    VllmSettings,
    llama_server_argv,
    vllm_argv,
)
from gpu_preflight.plan.errors import OverrideError, TierTableError
from gpu_preflight.plan.fit import (
    Draft,
    Fit,
    FitResult,
    Miss,
    Wants,
    fit_llamacpp,
    fit_vllm,
    gib,
)
from gpu_preflight.plan.overrides import Overrides
from gpu_preflight.plan.targets import GpuTarget, Targets, build_targets
from gpu_preflight.plan.tiers import Tier, TierTable
from gpu_preflight.plan.types import (
    Alternative,
    DraftChoice,
    ModelChoice,
    Plan,
    PlannedDevice,
    Prediction,
)
from gpu_preflight.probe.types import Profile

PLAN_SCHEMA_VERSION = 1
DEFAULT_MIN_TOK_S = 1.0
MAX_ALTERNATIVES = 4
MAX_REASONS = 8

_TOTAL_CONTEXT_SOURCES = ("arg:--ctx-size", "env:LLAMA_ARG_CTX_SIZE")
_VLLM_QUANT_ALIASES = {"awq_marlin": "awq", "gptq_marlin": "gptq", "none": "bf16"}


@dataclass(frozen=True)
class ModelRequest:
    """The user's model, resolved (by the CLI, which may read a file) before planning."""

    spec: ModelSpec
    quant: str | None  # "id@Q8_0" or VLLM_QUANTIZATION: pick that artifact
    source: str  # env:PREFLIGHT_MODEL, arg:--model, ...


@dataclass(frozen=True)
class Catalogue:
    """The models the planner may choose from (the catalog, loaded by the caller)."""

    models: tuple[ModelSpec, ...]

    def get(self, model_id: str) -> ModelSpec | None:
        return next((m for m in self.models if m.id == model_id), None)


def _artifacts(spec: ModelSpec, engine: str, quant: str | None) -> list[Artifact]:
    arts = [a for a in spec.artifacts if a.engine == engine]
    if quant:
        q = _VLLM_QUANT_ALIASES.get(quant.lower(), quant.lower())
        arts = [a for a in arts if a.quant.lower() == q]
    return arts


def _tier_candidates(tier: Tier, catalog: Catalogue) -> list[tuple[ModelSpec, str | None]]:
    out = []
    for entry in tier.models:
        model_id, _, quant = entry.partition("@")
        spec = catalog.get(model_id)
        if spec is None or (quant and not any(a.quant == quant for a in spec.artifacts)):
            raise TierTableError(
                f"tier {tier.id!r} lists {entry!r}, which is not in the model catalog "
                "(a catalog id, optionally @QUANT of one of its artifacts)"
            )
        out.append((spec, quant or None))
    return out


def _wants(tier: Tier, o: Overrides, gpus: bool) -> Wants:
    ctx = o.context.value if o.context else None
    assert ctx is None or isinstance(ctx, int)
    parallel = int(o.parallel.value) if o.parallel else tier.parallel
    if ctx is not None and o.context is not None and o.context.source in _TOTAL_CONTEXT_SOURCES:
        # llama-server's -c / LLAMA_ARG_CTX_SIZE is the KV of all slots together, not per sequence.
        ctx = max(256, ctx // parallel)
    fa = str(o.flash_attn.value) if o.flash_attn else "on"
    return Wants(
        min_context=min(tier.min_context, ctx) if ctx else tier.min_context,
        target_context=ctx or tier.target_context,
        fixed_context=ctx is not None,
        parallel=parallel,
        cache_type=str(o.kv_cache_type.value) if o.kv_cache_type else None,
        flash_attn=fa,
        min_tok_s=float(o.min_tok_s.value) if o.min_tok_s else DEFAULT_MIN_TOK_S,
        n_gpu_layers=int(o.n_gpu_layers.value) if o.n_gpu_layers and gpus else None,
        n_cpu_moe=int(o.n_cpu_moe.value) if o.n_cpu_moe else None,
        gpu_memory_utilization=float(o.gpu_memory_utilization.value)
        if o.gpu_memory_utilization
        else None,
        tensor_parallel=int(o.tensor_parallel.value) if o.tensor_parallel else None,
        reserve_bytes=int(o.reserve_bytes.value) if o.reserve_bytes else 0,
        n_batch=int(o.engine_args.values.get("--batch-size", 2048)),
        n_ubatch=int(o.engine_args.values.get("--ubatch-size", 512)),
    )


def _planning_gpus(targets: Targets) -> tuple[GpuTarget, ...]:
    if not targets.gpus:
        return ()
    if any(g.mig for g in targets.gpus):
        return targets.gpus[:1]  # one MIG device per process: the largest leaf
    return targets.gpus


def _try(
    spec: ModelSpec,
    quant: str | None,
    engines: Sequence[str],
    gpus: tuple[GpuTarget, ...],
    targets: Targets,
    w: Wants,
    allow_offload: bool,
) -> tuple[Fit | None, list[Miss]]:
    misses: list[Miss] = []
    for engine in engines:
        arts = _artifacts(spec, engine, quant)
        if not arts:
            what = f" with quant {quant}" if quant else ""
            misses.append(
                Miss(spec, None, engine, f"{spec.id}: no {engine} artifact{what} in the catalog")
            )
            continue
        for art in arts:
            res: FitResult
            if engine == "vllm":
                if allow_offload:
                    continue  # vLLM does not offload: pass 1 already tried it
                res = fit_vllm(spec, art, gpus, w)
            else:
                res = fit_llamacpp(spec, art, gpus, targets.host, w, allow_offload)
            if isinstance(res, Fit):
                return res, misses
            misses.append(res)
    return None, misses


def _engines(tier: Tier, o: Overrides, has_gpu: bool, available: frozenset[str]) -> list[str]:
    if o.engine:
        return [str(o.engine.value)]
    order = [e for e in tier.engines if has_gpu or e == "llama.cpp"]
    if not has_gpu and "llama.cpp" not in order:
        order.append("llama.cpp")
    present = [e for e in order if e in available]
    return present or order


def plan(
    profile: Profile,
    catalog: Catalogue,
    tiers: TierTable,
    overrides: Overrides,
    model: ModelRequest | None = None,
    engines_available: Iterable[str] = ("vllm", "llama.cpp"),
) -> Plan:
    available = frozenset(engines_available)
    reserve = int(overrides.reserve_bytes.value) if overrides.reserve_bytes else 0
    targets = build_targets(profile, reserve)
    gpus = _planning_gpus(targets)
    has_gpu = bool(gpus)
    usable = sum(g.usable_bytes for g in gpus)

    if overrides.tier:
        tier = tiers.get(str(overrides.tier.value))
        if tier is None:
            raise OverrideError(
                "PREFLIGHT_TIER", str(overrides.tier.value), ", ".join(t.id for t in tiers.tiers)
            )
        tier_src = overrides.tier.source
    else:
        tier = tiers.for_vram(usable, has_gpu)
        tier_src = f"usable VRAM {gib(usable)}" if has_gpu else "no usable GPU"
    w = _wants(tier, overrides, has_gpu)
    engines = _engines(tier, overrides, has_gpu, available)

    def refuse(t: Tier, reasons: list[str], misses: Sequence[Miss] = ()) -> Plan:
        return _refusal(
            profile, targets, t, overrides, w, catalog, tiers, model, reasons, has_gpu, gpus, misses
        )

    if overrides.engine and overrides.engine.value == "vllm" and not has_gpu:
        return refuse(
            tier, [f"vLLM needs a GPU and none is usable here ({_why_no_gpu(profile, targets)})"]
        )

    misses: list[Miss] = []
    fit: Fit | None = None
    if model is not None:
        for allow_offload in (False, True):
            fit, m = _try(model.spec, model.quant, engines, gpus, targets, w, allow_offload)
            misses += m
            if fit or not has_gpu:
                break
    else:
        lower = [
            t
            for t in tiers.tiers
            if (t.min_vram_gib > 0) == has_gpu and t.min_vram_gib < tier.min_vram_gib
        ]
        for t in [tier, *sorted(lower, key=lambda t: -t.min_vram_gib)]:
            tw = w if t is tier else _wants(t, overrides, has_gpu)
            te = engines if t is tier else _engines(t, overrides, has_gpu, available)
            for allow_offload in (False, True) if has_gpu else (False,):
                for spec, quant in _tier_candidates(t, catalog):
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

    if fit is not None:
        fit, why_not = _with_draft(fit, tier, overrides, catalog, targets, w)
        if why_not and overrides.speculative and overrides.speculative.value == "on":
            # The user asked for speculative decoding: serving without it would be a quiet change.
            return refuse(
                tier, [f"speculative decoding was asked for (PREFLIGHT_SPECULATIVE=on): {why_not}"]
            )
        if why_not:
            # Asked by the tier, not the user: the plan says why, but it is not a problem.
            fit = replace(fit, notes=(*fit.notes, f"speculative decoding: {why_not}"))

    if fit is None:
        return refuse(tier, _dedupe([m.reason for m in misses]), misses)
    return _ship(profile, targets, tier, tier_src, overrides, fit, model)


# Draft artifacts in order of preference: small drafts lose acceptance rate to 4-bit rounding.
_DRAFT_QUANTS = {"llama.cpp": ("Q8_0", "Q4_K_M"), "vllm": ("bf16", "fp8", "awq")}


def _with_draft(
    fit: Fit, tier: Tier, o: Overrides, catalog: Catalogue, targets: Targets, w: Wants
) -> tuple[Fit, str | None]:
    """Add the model's speculative-decoding draft when asked for and it costs no context.

    Returns the fit (with or without a draft) and, when a draft was asked for but not added, why.
    The draft is tried at the context and concurrency already chosen: a draft that would shorten
    the context is not worth it, so it is dropped rather than the context cut.
    """
    asked = o.speculative.value if o.speculative else ("on" if tier.speculative else "off")
    if asked == "off":
        return fit, None
    if o.user_draft is not None:
        return replace(
            fit,
            warnings=(
                *fit.warnings,
                f"speculative decoding set by the user ({o.user_draft.source}): its draft is not "
                "in the memory prediction",
            ),
        ), None
    who = f"{fit.spec.id} {fit.artifact.quant}"
    if fit.spec.draft is None:
        return fit, f"no draft model: the catalog pairs none with {fit.spec.id}"
    if fit.artifact.path is not None:
        return fit, (
            f"no draft model: {who} was given as a local file, and its catalog draft would "
            "have to be downloaded"
        )
    if fit.mode != "gpu":
        return fit, f"no draft model: {who} does not fit wholly on the GPU ({fit.mode})"
    dspec = catalog.get(fit.spec.draft)
    if dspec is None:
        return fit, f"no draft model: {fit.spec.draft} is not in the catalog"
    arts = [
        a
        for q in _DRAFT_QUANTS.get(fit.engine, ())
        for a in dspec.artifacts
        if a.engine == fit.engine and a.quant == q
    ]
    if not arts:
        return fit, f"no draft model: {dspec.id} has no {fit.engine} artifact"
    if fit.engine == "vllm" and dspec.arch.vocab_size != fit.spec.arch.vocab_size:
        return fit, (
            f"no draft model: vLLM's draft_model method needs equal vocabularies, "
            f"{fit.spec.id} has {fit.spec.arch.vocab_size} and {dspec.id} {dspec.arch.vocab_size}"
        )
    # The tier's draft must cost no context. A user who asked for one (PREFLIGHT_SPECULATIVE=on)
    # gets it down to the tier's minimum context, unless they pinned the context too.
    user_asked = o.speculative is not None and not w.fixed_context
    same = replace(
        w,
        target_context=fit.context,
        min_context=min(w.min_context, fit.context) if user_asked else fit.context,
        fixed_context=not user_asked,
        parallel=fit.parallel,
        tensor_parallel=fit.tensor_parallel if fit.engine == "vllm" else w.tensor_parallel,
        gpu_memory_utilization=fit.gpu_memory_utilization if fit.engine == "vllm" else None,
        n_gpu_layers=None,
        n_cpu_moe=None,
    )
    reasons = []
    for art in arts:
        d = Draft(dspec, art)
        res = (
            fit_vllm(fit.spec, fit.artifact, fit.gpus, same, draft=d)
            if fit.engine == "vllm"
            else fit_llamacpp(fit.spec, fit.artifact, fit.gpus, targets.host, same, False, draft=d)
        )
        if isinstance(res, Fit):
            warns = fit.warnings
            if res.context < fit.context:
                warns = (
                    *warns,
                    f"the draft model {dspec.id} costs context: {res.context} tokens per "
                    f"sequence instead of {fit.context} without it (PREFLIGHT_SPECULATIVE=on)",
                )
            return replace(res, warnings=warns, notes=fit.notes), None
        reasons.append(res.reason)
    return fit, (
        f"draft {dspec.id} not added: it would not fit next to {who} at {fit.context} tokens "
        f"x {fit.parallel} ({reasons[0]})"
    )


def _why_no_gpu(profile: Profile, targets: Targets) -> str:
    notes = list(profile.hardware.gpus.notes) + list(targets.notes)
    return notes[0] if notes else "no GPU was found"


def _dedupe(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in items:
        seen.setdefault(i, None)
    return list(seen)


def _choice(spec: ModelSpec, art: Artifact) -> ModelChoice:
    return ModelChoice(
        id=spec.id,
        name=spec.name,
        hf_id=spec.hf_id,
        repo=art.repo,
        file=art.file,
        path=art.path,
        quant=art.quant,
        weight_bytes=art.weight_bytes,
        from_file=art.path is not None,
    )


def _draft_choice(fit: Fit) -> DraftChoice | None:
    if fit.draft is None:
        return None
    c = _choice(fit.draft.spec, fit.draft.artifact)
    return DraftChoice(
        id=c.id,
        repo=c.repo,
        file=c.file,
        path=c.path,
        quant=c.quant,
        weight_bytes=c.weight_bytes,
        tokens=fit.draft.tokens,
    )


def _prediction(fit: Fit, gpus: tuple[GpuTarget, ...]) -> Prediction:
    e: Estimate = fit.estimate
    devices = []
    for d in e.devices:
        if d.device == "CPU":
            desc = "host RAM"
        else:
            i = int(d.device[4:])
            desc = fit.gpus[i].label if i < len(fit.gpus) else d.device
        devices.append(
            PlannedDevice(
                device=d.device,
                description=desc,
                weights_bytes=d.weights_bytes,
                kv_cache_bytes=d.kv_cache_bytes,
                compute_bytes=d.compute_bytes,
                overhead_bytes=d.overhead_bytes,
                total_bytes=d.total_bytes,
                budget_bytes=fit.budgets.get(d.device, d.budget_bytes or 0),
            )
        )
    margin = max((g.margin_bytes for g in fit.gpus), default=0)
    notes = list(e.notes) + list(fit.notes)
    notes.append(
        f"margin: {gib(margin)} kept free on every GPU beyond the prediction "
        "(2% of the card, at least 512 MiB), because under-predicting means an OOM at start-up"
    )
    return Prediction(
        devices=tuple(devices),
        margin_bytes=margin + e.margin_bytes,
        kv_bytes_per_token=e.kv_bytes_per_token,
        kv_capacity_tokens=e.kv_capacity_tokens,
        max_concurrency=e.max_concurrency,
        decode_tok_s_low=round(fit.forecast.low_tok_s, 1) if fit.forecast else None,
        decode_tok_s_high=round(fit.forecast.high_tok_s, 1) if fit.forecast else None,
        notes=tuple(notes),
    )


def _ship(
    profile: Profile,
    targets: Targets,
    tier: Tier,
    tier_src: str,
    o: Overrides,
    fit: Fit,
    model: ModelRequest | None,
) -> Plan:
    choice = _choice(fit.spec, fit.artifact)
    host = str(o.host.value) if o.host else DEFAULT_HOST
    port = int(o.port.value) if o.port else DEFAULT_PORT
    draft = (
        DraftSettings(
            repo=fit.draft.artifact.repo,
            file=fit.draft.artifact.file,
            path=fit.draft.artifact.path,
            tokens=fit.draft.tokens,
            tensor_parallel_size=fit.tensor_parallel,
        )
        if fit.draft
        else None
    )
    if fit.engine == "llama.cpp":
        argv = llama_server_argv(
            choice,
            LlamaServerSettings(
                n_ctx_total=fit.context * fit.parallel,
                parallel=fit.parallel,
                n_gpu_layers=fit.n_gpu_layers if fit.gpus else 0,
                n_cpu_moe=fit.n_cpu_moe,
                flash_attn=fit.flash_attn,
                cache_type_k=fit.cache_type_k,
                cache_type_v=fit.cache_type_v,
                n_batch=int(o.engine_args.values.get("--batch-size", 2048)),
                n_ubatch=int(o.engine_args.values.get("--ubatch-size", 512)),
                tensor_split=fit.tensor_split,
                host=host,
                port=port,
                draft=draft,
            ),
            o,
        )
    else:
        argv = vllm_argv(
            choice,
            VllmSettings(
                max_model_len=fit.context,
                gpu_memory_utilization=fit.gpu_memory_utilization or 0.9,
                tensor_parallel_size=fit.tensor_parallel,
                max_num_seqs=fit.parallel,
                kv_cache_dtype=fit.cache_type_k,
                quantization=str(o.quantization.value) if o.quantization else None,
                host=host,
                port=port,
                draft=draft,
            ),
            o,
        )
    src = {
        "model": model.source if model else f"tier:{tier.id}",
        "engine": o.engine.source if o.engine else f"tier:{tier.id}",
        "context": o.context.source
        if o.context
        else f"fit (tier {tier.id} target {tier.target_context})",
        "parallel": o.parallel.source if o.parallel else f"tier:{tier.id}",
        "tier": tier_src if not o.tier else o.tier.source,
        "kv_cache_type": o.kv_cache_type.source if o.kv_cache_type else "default",
        "reserve": o.reserve_bytes.source if o.reserve_bytes else "default (0)",
        "min_tok_s": o.min_tok_s.source if o.min_tok_s else f"default ({DEFAULT_MIN_TOK_S:g})",
        "host": o.host.source if o.host else "default",
        "port": o.port.source if o.port else "default",
    }
    if fit.draft is not None:
        src["draft"] = (
            o.speculative.source if o.speculative else f"tier:{tier.id} (speculative)"
        ) + f", catalog pairing {fit.spec.id} -> {fit.draft.spec.id}"
    if fit.engine == "llama.cpp":
        src["flash_attn"] = o.flash_attn.source if o.flash_attn else "default"
        src["n_gpu_layers"] = o.n_gpu_layers.source if o.n_gpu_layers else f"fit ({fit.mode})"
        if fit.n_cpu_moe:
            src["n_cpu_moe"] = o.n_cpu_moe.source if o.n_cpu_moe else "fit (offload)"
    else:
        src["gpu_memory_utilization"] = (
            o.gpu_memory_utilization.source if o.gpu_memory_utilization else "fit (free memory)"
        )
    warnings = list(targets.notes) + list(fit.warnings)
    if fit.forecast is None and fit.mode != "gpu":
        warnings.append("decode speed could not be forecast (a memory bandwidth is unknown)")
    if fit.mode == "offload":
        cpu = fit.estimate.device("CPU")
        warnings.append(
            f"offload: {gib(cpu.weights_bytes if cpu else 0)} of weights run from host RAM "
            f"(--n-gpu-layers {fit.n_gpu_layers}, --n-cpu-moe {fit.n_cpu_moe}); decode is bound by "
            "host memory bandwidth"
        )
    gpu_count = len(profile.hardware.gpus.devices)
    if fit.gpus and gpu_count > len({g.index for g in fit.gpus}) and fit.engine == "vllm":
        warnings.append(
            f"{gpu_count - len(fit.gpus)} GPU(s) not used by this server: run one container per GPU "
            "(see compose/mixed-gpus.yaml) to use them"
        )
    return Plan(
        schema_version=PLAN_SCHEMA_VERSION,
        verdict="ship",
        engine=fit.engine,
        model=choice,
        draft=_draft_choice(fit),
        context=fit.context,
        parallel=fit.parallel,
        argv=argv,
        env={},
        predicted=_prediction(fit, fit.gpus),
        tier=tier.id,
        tier_label=tier.label,
        targets=tuple(g.label for g in fit.gpus) or ("CPU (host RAM)",),
        sources=src,
        warnings=tuple(_dedupe(warnings)),
    )


def _refusal(
    profile: Profile,
    targets: Targets,
    tier: Tier,
    o: Overrides,
    w: Wants,
    catalog: Catalogue,
    tiers: TierTable,
    model: ModelRequest | None,
    reasons: list[str],
    has_gpu: bool,
    gpus: tuple[GpuTarget, ...],
    misses: Sequence[Miss] = (),
) -> Plan:
    alts = _alternatives(targets, tier, o, w, catalog, tiers, model, has_gpu, gpus, misses)
    head = []
    if gpus:
        head.append(
            "usable GPU memory: "
            + "; ".join(
                f"{gib(g.usable_bytes)} on {g.label} (free {gib(g.free_bytes)})" for g in gpus
            )
        )
    elif targets.host.usable_bytes is not None:
        head.append(f"no usable GPU; {gib(targets.host.usable_bytes)} of host RAM usable")
    return Plan(
        schema_version=PLAN_SCHEMA_VERSION,
        verdict="refuse",
        engine=None,
        model=_choice(model.spec, model.spec.artifacts[0])
        if model and model.spec.artifacts
        else None,
        context=None,
        parallel=None,
        argv=(),
        env={},
        predicted=None,
        tier=tier.id,
        tier_label=tier.label,
        targets=tuple(g.label for g in gpus) or ("CPU (host RAM)",),
        sources={"model": model.source} if model else {},
        warnings=tuple(targets.notes),
        reasons=tuple(reasons[:MAX_REASONS]) + tuple(head),
        alternatives=tuple(alts),
    )


def _alt_from_fit(kind: str, fit: Fit, description: str) -> Alternative:
    gpu_total = sum(d.total_bytes for d in fit.estimate.devices if d.device != "CPU")
    total = gpu_total or sum(d.total_bytes for d in fit.estimate.devices)
    budget = (
        sum(v for k, v in fit.budgets.items() if k != "CPU")
        if gpu_total
        else fit.budgets.get("CPU", 0)
    )
    return Alternative(
        kind=kind,  # type: ignore[arg-type]
        description=description,
        model=fit.spec.id,
        quant=fit.artifact.quant,
        engine=fit.engine,
        context=fit.context,
        total_bytes=total,
        budget_bytes=budget,
        decode_tok_s=round(fit.forecast.low_tok_s, 1) if fit.forecast else None,
    )


def _alternatives(
    targets: Targets,
    tier: Tier,
    o: Overrides,
    w: Wants,
    catalog: Catalogue,
    tiers: TierTable,
    model: ModelRequest | None,
    has_gpu: bool,
    gpus: tuple[GpuTarget, ...],
    misses: Sequence[Miss],
) -> list[Alternative]:
    out: list[Alternative] = []
    engines = ["vllm", "llama.cpp"] if has_gpu else ["llama.cpp"]
    loose = replace(
        w,
        fixed_context=False,
        min_context=min(w.min_context, 2048),
        target_context=w.target_context,
    )

    def first_fit(
        spec: ModelSpec, arts: Iterable[Artifact], ww: Wants, offload: bool
    ) -> Fit | None:
        for art in arts:
            r = (
                fit_vllm(spec, art, gpus, ww)
                if art.engine == "vllm"
                else fit_llamacpp(spec, art, gpus, targets.host, ww, offload)
            )
            if isinstance(r, Fit):
                return r
        return None

    if model is not None:
        spec = model.spec
        # A shorter context of the same artifact (when the user pinned one that does not fit).
        if w.fixed_context:
            arts = [a for e in engines for a in _artifacts(spec, e, model.quant)]
            f = first_fit(spec, arts, replace(loose, target_context=w.target_context), False)
            if f:
                out.append(
                    _alt_from_fit(
                        "shorter-context",
                        f,
                        f"{spec.id} {f.artifact.quant} at "
                        f"{f.context} tokens instead of {w.target_context}",
                    )
                )
        # A smaller quant of the same model.
        smaller = sorted(
            (a for a in spec.artifacts if a.engine in engines), key=lambda a: a.weight_bytes
        )
        f = first_fit(spec, smaller, loose, False)
        if f and not any(a.model == spec.id and a.quant == f.artifact.quant for a in out):
            out.append(
                _alt_from_fit(
                    "smaller-quant",
                    f,
                    f"{spec.id} as {f.artifact.quant} "
                    f"({gib(f.artifact.weight_bytes)} of weights) with {f.engine}",
                )
            )
    # llama.cpp offload that failed only the speed floor: say how slow it would be.
    near = next((m.near for m in misses if m.near is not None), None)
    if near is not None:
        fc = near.forecast
        out.append(
            _alt_from_fit(
                "offload",
                near,
                f"{near.spec.id} {near.artifact.quant} with "
                f"llama.cpp offload (--n-gpu-layers {near.n_gpu_layers}, --n-cpu-moe "
                f"{near.n_cpu_moe}) at {fc.low_tok_s:.1f}-{fc.high_tok_s:.1f} tok/s"
                if fc
                else f"{near.spec.id} with llama.cpp offload",
            )
        )
    elif has_gpu and model is not None:
        f = first_fit(
            model.spec,
            _artifacts(model.spec, "llama.cpp", None),
            replace(loose, min_tok_s=0.0),
            True,
        )
        if f and f.mode == "offload":
            fc = f.forecast
            speed = f" at {fc.low_tok_s:.1f}-{fc.high_tok_s:.1f} tok/s" if fc else ""
            out.append(
                _alt_from_fit(
                    "offload",
                    f,
                    f"{f.spec.id} {f.artifact.quant} with llama.cpp offload to host RAM{speed}",
                )
            )
    # Other models: the biggest that fit wholly on the devices, from every tier's list.
    seen = {model.spec.id} if model else set()
    ordered: list[tuple[ModelSpec, str | None]] = []
    for t in sorted(tiers.tiers, key=lambda t: -t.min_vram_gib):
        for spec, quant in _tier_candidates(t, catalog):
            if spec.id not in seen:
                seen.add(spec.id)
                ordered.append((spec, quant))
    for spec, quant in ordered:
        if len(out) >= MAX_ALTERNATIVES:
            break
        arts = [a for e in engines for a in _artifacts(spec, e, quant)]
        f = first_fit(spec, arts, loose, not has_gpu)
        if f:
            out.append(
                _alt_from_fit(
                    "other-model",
                    f,
                    f"{spec.name} ({f.artifact.quant}, {f.engine}) at {f.context} tokens",
                )
            )
    return out[:MAX_ALTERNATIVES]
