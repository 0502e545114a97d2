"""vLLM: its one settings record, the fit that chooses it, and the argv written from it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gpu_preflight.memory.types import Estimate
from gpu_preflight.memory.vllm import (
    VllmConfig,
    VllmConfigError,
    VllmDraft,
    choose_gpu_memory_utilization,
    estimate_vllm,
    max_model_len_that_fits,
)
from gpu_preflight.memory.vllm_pipeline import (
    Stage,
    estimate_vllm_pipeline,
    max_model_len_pipeline,
    partition_layers,
    pipeline_refusal,
)
from gpu_preflight.models.types import Artifact, ModelSpec
from gpu_preflight.plan.common import (
    CONTEXT_STEP,
    GIB,
    Draft,
    Fit,
    FitResult,
    Miss,
    Wants,
    context_range,
    gib,
    label,
    moe_read_fraction,
    round_ctx,
)
from gpu_preflight.plan.flags import canonical
from gpu_preflight.plan.forecast import DecodeForecast, forecast_decode
from gpu_preflight.plan.llamacpp import DEFAULT_HOST, DEFAULT_PORT, DraftSettings
from gpu_preflight.plan.overrides import Overrides
from gpu_preflight.plan.targets import MIN_COMPUTE_CAPABILITY_VLLM, GpuTarget
from gpu_preflight.plan.types import ModelChoice

# The image's vLLM (>= 0.21) counts the CUDA graph pool inside --gpu-memory-utilization.
VLLM_CUDAGRAPH_IN_BUDGET = True
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vllm/config/cache.py CacheConfig.gpu_memory_utilization


@dataclass(frozen=True)
class VllmSettings:
    max_model_len: int
    gpu_memory_utilization: float
    tensor_parallel_size: int
    max_num_seqs: int
    kv_cache_dtype: str  # auto | fp8 ...
    quantization: str | None  # only when the user asked for one; vLLM reads it from the config
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    enforce_eager: bool | None = None  # None: not set (vLLM's default, graphs on)
    draft: DraftSettings | None = None
    max_num_batched_tokens: int | None = None
    block_size: int | None = None
    dtype: str | None = None
    cpu_offload_gb: float | None = None
    kv_cache_memory_bytes: int | None = None
    speculative_config: Mapping[str, Any] | None = None  # the user's own, as given
    served_model_name: str | None = None  # None: the model's id
    revision: str | None = None  # the Hub commit the plan read the model at
    pipeline_parallel_size: int = 1
    # Layers per pipeline stage, carried to vLLM as VLLM_PP_LAYER_PARTITION (vllm_env); empty
    # with one stage.
    pp_layer_partition: tuple[int, ...] = ()
    # The cards vLLM must use when they are not CUDA0..n-1 of this process (one card of a mixed
    # pair, an identical group that skips a card): vLLM has no device flag, it takes cuda:0..
    # of what CUDA_VISIBLE_DEVICES shows it. UUIDs where known, else NVML indices.
    visible_devices: tuple[str, ...] = ()


def _settings_for(w: Wants, ctx: int, gmu: float, tp: int, kv_dtype: str) -> VllmSettings:
    """The settings every vLLM layout shares: the chosen context, budget, TP and KV type, and the
    user's own values carried as given."""
    return VllmSettings(
        max_model_len=ctx,
        gpu_memory_utilization=gmu,
        tensor_parallel_size=tp,
        max_num_seqs=w.parallel,
        kv_cache_dtype=kv_dtype,
        quantization=w.quantization,
        enforce_eager=w.enforce_eager,
        max_num_batched_tokens=w.max_num_batched_tokens,
        block_size=w.block_size,
        dtype=w.dtype,
        cpu_offload_gb=w.cpu_offload_gb,
        kv_cache_memory_bytes=w.kv_cache_memory_bytes,
    )


PP_PARTITION_ENV = "VLLM_PP_LAYER_PARTITION"  # vllm/envs.py; read by get_pp_indices


def vllm_env(s: VllmSettings) -> dict[str, str]:
    """The variables the plan adds to vLLM's environment: the layer partition it planned with,
    and the cards it planned on where they are not this process's first ones."""
    out = {}
    if s.pipeline_parallel_size > 1 and s.pp_layer_partition:
        out[PP_PARTITION_ENV] = ",".join(str(n) for n in s.pp_layer_partition)
    if s.visible_devices:
        out["CUDA_VISIBLE_DEVICES"] = ",".join(s.visible_devices)
        if not all(v.startswith("GPU-") for v in s.visible_devices):
            # NVML indices are PCI bus order; CUDA's default order is fastest first.
            out["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return out


def visible_devices(used: tuple[GpuTarget, ...]) -> tuple[str, ...]:
    """CUDA_VISIBLE_DEVICES for vLLM on these cards, or () when they already are its cuda:0..
    (vLLM runs rank r on cuda:r, v1/executor/multiproc_executor.py)."""
    if [g.cuda_ordinal for g in used] == list(range(len(used))):
        return ()
    if all(g.uuid for g in used):
        return tuple(str(g.uuid) for g in used)
    return tuple(str(g.index) for g in used)


def by_ordinal(e: Estimate, used: tuple[GpuTarget, ...]) -> Estimate:
    """The estimate's devices named CUDA<ordinal> of this process (rank r is used[r]), so the plan,
    its budgets and the receipt name the cards the engine really runs on."""
    names = {f"CUDA{i}": f"CUDA{g.cuda_ordinal}" for i, g in enumerate(used)}
    devices = tuple(replace(d, device=names.get(d.device, d.device)) for d in e.devices)
    return replace(e, devices=devices)


def tp_sizes(spec: ModelSpec, n: int) -> list[int]:
    """Tensor-parallel sizes vLLM accepts for this model on n identical GPUs, largest first."""
    heads, kv = spec.arch.n_heads, spec.arch.n_kv_heads
    out = []
    tp = 1
    while tp <= n:
        if heads % tp == 0 and (kv % tp == 0 or tp % kv == 0):
            out.append(tp)
        tp *= 2
    return sorted(out, reverse=True)


def identical_group(gpus: tuple[GpuTarget, ...]) -> tuple[GpuTarget, ...]:
    """The largest set of identical, non-MIG GPUs (by aggregate usable memory)."""
    groups: dict[tuple[str, int], list[GpuTarget]] = {}
    for g in gpus:
        if g.mig:
            continue
        groups.setdefault((g.name, g.total_bytes), []).append(g)
    if not groups:
        return gpus[:1]
    best = max(groups.values(), key=lambda gs: (sum(g.usable_bytes for g in gs), len(gs)))
    return tuple(best)


def vllm_config(
    spec: ModelSpec, ref: GpuTarget, w: Wants, gmu: float, tp: int, ctx: int, draft: Draft | None
) -> VllmConfig:
    """The memory model's view of exactly the settings the argv will carry."""
    return VllmConfig(
        max_model_len=ctx,
        gpu_total_bytes=ref.total_bytes,
        gpu_memory_utilization=gmu,
        tensor_parallel_size=tp,
        max_num_seqs=w.parallel,
        max_num_batched_tokens=w.max_num_batched_tokens,
        kv_cache_dtype=w.cache_type_k or "auto",
        enforce_eager=bool(w.enforce_eager),
        block_size=w.block_size or 16,
        gpu_name=ref.name,
        gpu_reserved_bytes=ref.reserved_bytes,
        cudagraph_in_budget=VLLM_CUDAGRAPH_IN_BUDGET,
        draft=VllmDraft(draft.spec, draft.artifact, draft.tokens) if draft else None,
        cpu_offload_bytes=int((w.cpu_offload_gb or 0) * GIB),
        kv_cache_memory_bytes=w.kv_cache_memory_bytes,
    )


def fit_vllm(
    spec: ModelSpec,
    art: Artifact,
    gpus: tuple[GpuTarget, ...],
    w: Wants,
    draft: Draft | None = None,
) -> FitResult:
    """vLLM on these devices: the largest identical group (tensor parallel), or, on cards that
    differ, pipeline parallel over all of them where that gives the longer context. A user's
    ``-pp`` above 1 is planned as given: that many stages over the first cards."""
    if w.pipeline_parallel is not None and w.pipeline_parallel > 1:
        return fit_vllm_pipeline(spec, art, gpus, w, draft)
    group = _fit_group(spec, art, gpus, w, draft)
    if not _pipeline_eligible(gpus, w, draft):
        return group
    pp = fit_vllm_pipeline(spec, art, gpus, w, draft)
    if isinstance(pp, Fit) and (not isinstance(group, Fit) or pp.context > group.context):
        if isinstance(group, Fit):
            why = (
                f"it gives {pp.context} tokens x {pp.parallel}, against {group.context} on "
                f"{len(group.gpus)} identical GPU(s)"
            )
        else:
            why = f"the identical GPUs alone do not fit it ({_tail(group.reason)})"
        return replace(
            pp, notes=(*pp.notes, f"pipeline parallel over all {len(gpus)} cards: {why}")
        )
    if isinstance(group, Miss) and isinstance(pp, Miss):
        return replace(group, reason=f"{group.reason}; pipeline parallel: {_tail(pp.reason)}")
    if isinstance(group, Fit) and isinstance(pp, Fit):
        parts = pp.settings.pp_layer_partition if isinstance(pp.settings, VllmSettings) else ()
        partition = ",".join(map(str, parts))
        why = (
            f"pipeline parallel over all {len(gpus)} cards (VLLM_PP_LAYER_PARTITION={partition}) "
            f"gives {pp.context} tokens x {pp.parallel}, no longer than {group.context} on "
            f"{len(group.gpus)} identical GPU(s): not taken"
        )
        return replace(group, notes=(*group.notes, why))
    return group


def _tail(reason: str) -> str:
    """A miss reason without its leading "model quant (engine): " label."""
    return reason.split("): ", 1)[-1]


def _pipeline_eligible(gpus: tuple[GpuTarget, ...], w: Wants, draft: Draft | None) -> bool:
    if len(gpus) < 2 or any(g.mig for g in gpus):
        return False
    if w.pipeline_parallel is not None:
        return False  # the user's -pp 1
    return len({(g.name, g.total_bytes) for g in gpus}) > 1


def _user_partition(w: Wants) -> tuple[int, ...] | None:
    if w.pp_layer_partition is None:
        return None
    return tuple(int(x) for x in w.pp_layer_partition.split(","))


def pipeline_layouts(
    spec: ModelSpec, gpus: tuple[GpuTarget, ...], w: Wants, draft: Draft | None = None
) -> list[tuple[int, tuple[tuple[GpuTarget, ...], ...]]]:
    """(tensor parallel size, stages) over all these GPUs, largest tensor parallel first; with
    the user's ``-pp`` over the first pp x tp of them (vLLM's world size, cuda:0 upwards).

    vLLM runs rank pp_rank x tp + tp_rank on cuda:rank (multiproc_executor.py), so a stage is tp
    consecutive CUDA ordinals, and one tensor parallel size serves every stage: tensor parallel
    within groups of identical cards, pipeline parallel across them, where the order allows."""
    ordered = tuple(sorted(gpus, key=lambda g: g.cuda_ordinal))
    pp = w.pipeline_parallel if w.pipeline_parallel and w.pipeline_parallel > 1 else None
    n = len(ordered)
    sizes = [w.tensor_parallel] if w.tensor_parallel else tp_sizes(spec, n // pp if pp else n)
    if draft is not None:
        # vLLM runs the draft at the target's tensor parallel size: its heads must split too.
        sizes = [tp for tp in sizes if tp in tp_sizes(draft.spec, tp)]
    out = []
    for tp in sizes:
        stages_n = pp or (n // tp if tp >= 1 and n % tp == 0 else 0)
        if tp < 1 or stages_n * tp > n or not 2 <= stages_n <= spec.arch.n_layers:
            continue
        stages = tuple(ordered[i * tp : (i + 1) * tp] for i in range(stages_n))
        if all(len({(g.name, g.total_bytes) for g in st}) == 1 for st in stages):
            out.append((tp, stages))
    return out


def fit_vllm_pipeline(
    spec: ModelSpec,
    art: Artifact,
    gpus: tuple[GpuTarget, ...],
    w: Wants,
    draft: Draft | None = None,
) -> FitResult:
    """Pipeline parallel over every card (or the user's -pp over the first ones), each stage's
    layers sized to its card's room; a draft model on the last stage, where vLLM builds it."""
    name = label(spec, art, "vllm")
    if draft is not None:
        name += f" + draft {draft.spec.id} {draft.artifact.quant}"

    def miss(why: str) -> Miss:
        return Miss(spec, art, "vllm", f"{name}: {why}")

    layouts = pipeline_layouts(spec, gpus, w, draft)
    if not layouts:
        if w.pipeline_parallel and w.pipeline_parallel > 1:
            tp = w.tensor_parallel or 1
            return miss(
                f"--pipeline-parallel-size {w.pipeline_parallel} x tensor parallel {tp} needs "
                f"{w.pipeline_parallel * tp} GPUs, each stage of identical cards whose count "
                f"divides the attention heads, and at most one stage per layer "
                f"({spec.arch.n_layers}); {len(gpus)} usable GPU(s) here"
            )
        return miss(
            f"pipeline parallel over {len(gpus)} cards needs stages of identical consecutive "
            "cards whose count divides the attention heads"
        )
    kv_dtype = w.cache_type_k or "auto"
    lo, hi = context_range(spec, w)
    if draft is not None:
        hi = min(hi, draft.spec.arch.max_position_embeddings)
    last: Miss | None = None
    for tp, stages in layouts:
        ordered = tuple(g for st in stages for g in st)
        if any(
            g.compute_capability is not None and g.compute_capability < MIN_COMPUTE_CAPABILITY_VLLM
            for g in ordered
        ):
            return miss("vLLM needs compute capability 7.0+ on every card")
        # One --gpu-memory-utilization for every card: the fraction the tightest one allows.
        gmu = w.gpu_memory_utilization or min(
            choose_gpu_memory_utilization(
                g.total_bytes,
                g.free_bytes,
                w.reserve_bytes + g.margin_bytes,
                tensor_parallel_size=max(2, tp),  # NCCL between stages, before the snapshot
                enforce_eager=bool(w.enforce_eager),
                cudagraph_in_budget=VLLM_CUDAGRAPH_IN_BUDGET,
            )
            for g in ordered
        )
        if gmu <= 0:
            return miss("no memory left for vLLM on one of the cards")
        over = [g for g in ordered if gmu * g.total_bytes > g.free_bytes - w.reserve_bytes]
        if over:
            return miss(
                f"--gpu-memory-utilization {gmu:.2f} asks for {gib(gmu * over[0].total_bytes)} "
                f"but {gib(over[0].free_bytes - w.reserve_bytes)} is free on {over[0].label}"
            )
        cfg = vllm_config(spec, ordered[0], w, gmu, tp, hi, draft)
        cards = [Stage(st[0].total_bytes, 1, st[0].reserved_bytes) for st in stages]
        user = _user_partition(w)
        if user is not None and len(user) != len(stages):
            last = miss(
                f"VLLM_PP_LAYER_PARTITION={w.pp_layer_partition} has {len(user)} stages, "
                f"pipeline parallel {len(stages)} x tensor parallel {tp} over these cards needs "
                f"{len(stages)}"
            )
            continue
        try:
            # A fixed pool (--kv-cache-memory-bytes) is the same on every card, so the layers
            # still go by each card's room: partition as if vLLM sized the pool itself.
            parts = user or partition_layers(
                spec, art, replace(cfg, kv_cache_memory_bytes=None), cards
            )
            plan_stages = tuple(replace(c, layers=k) for c, k in zip(cards, parts, strict=True))
            best = max_model_len_pipeline(spec, art, cfg, plan_stages, w.parallel, hi)
        except VllmConfigError as err:
            return miss(str(err))
        ctx = (best if w.fixed_context else round_ctx(best)) if best >= CONTEXT_STEP else 0
        if ctx < lo or (w.fixed_context and ctx < hi):
            why = pipeline_refusal(
                spec, art, replace(cfg, max_model_len=lo), plan_stages, w.parallel
            )
            last = miss(
                f"pipeline parallel {len(stages)} x tensor parallel {tp} "
                f"(VLLM_PP_LAYER_PARTITION={','.join(map(str, parts))}, "
                f"--gpu-memory-utilization {gmu:.2f}): {why or 'no context fits'} "
                f"(KV {kv_dtype}, {w.parallel} x {lo} tokens needed)"
            )
            continue
        if w.fixed_context:
            ctx = hi
        e = estimate_vllm_pipeline(spec, art, replace(cfg, max_model_len=ctx), plan_stages)
        if w.kv_cache_memory_bytes is not None:
            # The pool is the user's; what each card then holds must be free there.
            for g, d in zip(ordered, e.devices, strict=True):
                if d.total_bytes > g.usable_bytes:
                    return miss(
                        f"--kv-cache-memory-bytes {w.kv_cache_memory_bytes} makes {g.label} hold "
                        f"{gib(d.total_bytes)}, but {gib(g.usable_bytes)} is usable there"
                    )
        settings = replace(
            _settings_for(w, ctx, gmu, tp, kv_dtype),
            pipeline_parallel_size=len(stages),
            pp_layer_partition=parts,
        )
        forecast = _pipeline_forecast(spec, art, e, ctx, ordered, tp)
        return _on_cards(spec, art, ctx, w, e, ordered, forecast, settings, draft, [])
    assert last is not None
    return last


def _pipeline_forecast(
    spec: ModelSpec, art: Artifact, e: Estimate, ctx: int, gpus: tuple[GpuTarget, ...], tp: int
) -> DecodeForecast | None:
    """A token passes the stages in turn, so their read times add up; the tp ranks of one stage
    read their shares at once, so a stage takes its slowest rank's time."""
    if any(not g.bandwidth_gb_s for g in gpus):
        return None
    share = 1.0
    if spec.arch.is_moe and spec.arch.n_experts and spec.arch.n_experts_per_token:
        share = moe_read_fraction(art, spec.arch.n_experts_per_token / spec.arch.n_experts)
    pool = max(1, e.kv_capacity_tokens or ctx)
    seconds, total = 0.0, 0
    for s in range(0, len(gpus), tp):
        reads = [
            int(d.weights_bytes * share) + d.kv_cache_bytes * min(ctx, pool) // pool
            for d in e.devices[s : s + tp]
        ]
        bws = [g.bandwidth_gb_s or 0.0 for g in gpus[s : s + tp]]
        seconds += max(r / (b * 1e9) for r, b in zip(reads, bws, strict=True))
        total += reads[0]
    if seconds <= 0:
        return None
    return forecast_decode(total, 0, total / seconds / 1e9, None)


def _fit_group(
    spec: ModelSpec,
    art: Artifact,
    gpus: tuple[GpuTarget, ...],
    w: Wants,
    draft: Draft | None = None,
) -> FitResult:
    name = label(spec, art, "vllm")
    if draft is not None:
        name += f" + draft {draft.spec.id} {draft.artifact.quant}"

    def miss(why: str) -> Miss:
        return Miss(spec, art, "vllm", f"{name}: {why}")

    if not gpus:
        return miss("vLLM needs a GPU and none is usable here")
    cc = gpus[0].compute_capability
    if cc is not None and cc < MIN_COMPUTE_CAPABILITY_VLLM:
        return miss(f"vLLM needs compute capability 7.0+, {gpus[0].name} has {cc[0]}.{cc[1]}")
    kv_dtype = w.cache_type_k or "auto"
    if kv_dtype not in ("auto", "fp8", "fp8_e4m3", "fp8_e5m2") or w.cache_type not in (
        None,
        kv_dtype,
    ):
        return miss(f"cache type {w.cache_type} is a llama.cpp KV type; vLLM takes auto or fp8")
    group = gpus[:1] if gpus[0].mig else identical_group(gpus)
    sizes = [w.tensor_parallel] if w.tensor_parallel else tp_sizes(spec, len(group))
    if draft is not None:
        # vLLM runs the draft at the target's tensor parallel size: its heads must split too.
        sizes = [tp for tp in sizes if tp in tp_sizes(draft.spec, tp)]
    if not sizes or sizes[0] > len(group):
        n = w.tensor_parallel or 1
        return miss(
            f"tensor parallel size {n} needs {n} identical GPUs whose count divides the "
            f"attention heads, {len(group)} here"
        )
    tp = sizes[0]
    used = group[:tp]
    ref = min(used, key=lambda g: g.usable_bytes)
    reserve = w.reserve_bytes + ref.margin_bytes
    gmu = w.gpu_memory_utilization or choose_gpu_memory_utilization(
        ref.total_bytes,
        ref.free_bytes,
        reserve,
        tensor_parallel_size=tp,
        enforce_eager=bool(w.enforce_eager),
        cudagraph_in_budget=VLLM_CUDAGRAPH_IN_BUDGET,
    )
    lo, hi = context_range(spec, w)
    if draft is not None:
        hi = min(hi, draft.spec.arch.max_position_embeddings)
    if gmu <= 0:
        return miss(
            f"no memory left for vLLM on {ref.label} ({gib(ref.free_bytes)} free, "
            f"{gib(reserve)} reserved and kept as margin)"
        )
    cfg = vllm_config(spec, ref, w, gmu, tp, hi, draft)
    try:
        e = estimate_vllm(spec, art, cfg)
        budget = int(gmu * ref.total_bytes)
        if w.kv_cache_memory_bytes is not None:
            budget = e.devices[0].total_bytes - e.devices[0].overhead_bytes
            # The pool is the user's, not a fraction: what the process then holds (its CUDA
            # context, non-torch memory and graphs included) must fit in the card's budget.
            held = e.devices[0].total_bytes
            if held > ref.usable_bytes:
                return miss(
                    f"--kv-cache-memory-bytes {w.kv_cache_memory_bytes} makes vLLM hold "
                    f"{gib(held)} but {gib(ref.usable_bytes)} is usable on {ref.label} (free "
                    "less the reserve and margin)"
                )
        elif budget > ref.free_bytes - w.reserve_bytes:
            return miss(
                f"--gpu-memory-utilization {gmu:.2f} asks for {gib(budget)} but "
                f"{gib(ref.free_bytes - w.reserve_bytes)} is free on {ref.label}"
            )
        # The KV pool, less the margin vLLM's own figures are kept under, must hold `parallel`
        # whole sequences of the context ("room for the configured concurrency").
        best = max_model_len_that_fits(spec, art, cfg, parallel=w.parallel, limit=hi)
    except VllmConfigError as err:
        return miss(str(err))
    ctx = (best if w.fixed_context else round_ctx(best)) if best >= CONTEXT_STEP else 0
    if ctx < lo or (w.fixed_context and ctx < hi):
        dev = e.devices[0]
        return miss(
            f"the KV pool left after {gib(dev.weights_bytes)} of weights and "
            f"{gib(dev.compute_bytes + dev.overhead_bytes)} of activations/overhead holds "
            f"{e.kv_capacity_tokens or 0} tokens on {ref.label} (budget {gib(budget)}, "
            f"{gib(e.margin_bytes)} of it kept as margin); {w.parallel} x {lo} tokens needed "
            f"(KV {kv_dtype}, tensor parallel {tp})"
        )
    if w.fixed_context:
        ctx = hi
    e = estimate_vllm(spec, art, replace(cfg, max_model_len=ctx))
    warns: list[str] = []
    if tp < len(group):
        warns.append(
            f"tensor parallel {tp} uses {tp} of {len(group)} identical GPUs "
            f"(attention heads {spec.arch.n_heads} must divide evenly)"
        )
    settings = _settings_for(w, ctx, gmu, tp, kv_dtype)
    forecast = _forecast(spec, art, e, ctx, used)
    return _on_cards(spec, art, ctx, w, e, used, forecast, settings, draft, warns)


def _on_cards(
    spec: ModelSpec,
    art: Artifact,
    ctx: int,
    w: Wants,
    e: Estimate,
    used: tuple[GpuTarget, ...],
    forecast: DecodeForecast | None,
    settings: VllmSettings,
    draft: Draft | None,
    warns: list[str],
) -> Fit:
    """The fit on these cards, in rank order: its devices named CUDA<ordinal> of this process
    and, where the cards are not its cuda:0.., vLLM pinned to them (every layout's last step)."""
    settings = replace(settings, visible_devices=visible_devices(used))
    if settings.visible_devices:
        warns = [
            *warns,
            f"vLLM is pinned to {', '.join(g.label for g in used)} with CUDA_VISIBLE_DEVICES="
            f"{','.join(settings.visible_devices)} (it runs on cuda:0.. of what it sees)",
        ]
    return Fit(
        spec=spec,
        artifact=art,
        engine="vllm",
        mode="gpu",
        context=ctx,
        parallel=w.parallel,
        estimate=by_ordinal(e, used),
        gpus=used,
        budgets={f"CUDA{g.cuda_ordinal}": g.usable_bytes for g in used},
        forecast=forecast,
        settings=settings,
        warnings=tuple(warns),
        draft=draft,
    )


def _forecast(
    spec: ModelSpec, art: Artifact, e: Estimate, ctx: int, gpus: tuple[GpuTarget, ...]
) -> DecodeForecast | None:
    weights = sum(d.weights_bytes for d in e.devices)
    if spec.arch.is_moe and spec.arch.n_experts and spec.arch.n_experts_per_token:
        weights = int(
            weights * moe_read_fraction(art, spec.arch.n_experts_per_token / spec.arch.n_experts)
        )
    per_gpu = (weights + e.kv_bytes_per_token * ctx) // max(1, len(gpus))
    bw = min((g.bandwidth_gb_s or 0.0) for g in gpus)
    return forecast_decode(per_gpu, 0, bw or None, None)


def _flag(knob: str) -> str:
    return canonical(knob, "vllm")


def vllm_argv(model: ModelChoice, s: VllmSettings, o: Overrides) -> tuple[str, ...]:
    """`vllm serve MODEL` with every planned value once, canonically spelled; the rest last."""
    argv: list[str] = ["vllm", "serve", model.path or model.repo]
    if s.revision is not None:
        argv += [_flag("revision"), s.revision]
    argv += [_flag("context"), str(s.max_model_len)]
    argv += [_flag("gpu_memory_utilization"), f"{s.gpu_memory_utilization:g}"]
    if s.tensor_parallel_size > 1 or o.get("tensor_parallel") is not None:
        argv += [_flag("tensor_parallel"), str(s.tensor_parallel_size)]
    if s.pipeline_parallel_size > 1 or o.get("pipeline_parallel") is not None:
        argv += [_flag("pipeline_parallel"), str(s.pipeline_parallel_size)]
    argv += [_flag("parallel"), str(s.max_num_seqs)]
    if s.kv_cache_dtype != "auto" or o.get("kv_cache_type") is not None:
        argv += [_flag("kv_cache_type"), s.kv_cache_dtype]
    if s.quantization:
        argv += [_flag("quantization"), s.quantization]
    if s.dtype is not None:
        argv += [_flag("dtype"), s.dtype]
    if s.max_num_batched_tokens is not None:
        argv += [_flag("max_num_batched_tokens"), str(s.max_num_batched_tokens)]
    if s.block_size is not None:
        argv += [_flag("block_size"), str(s.block_size)]
    if s.cpu_offload_gb is not None:
        argv += [_flag("cpu_offload_gb"), f"{s.cpu_offload_gb:g}"]
    if s.kv_cache_memory_bytes is not None:
        argv += [_flag("kv_cache_memory_bytes"), str(s.kv_cache_memory_bytes)]
    if s.enforce_eager is not None:
        argv.append(_flag("enforce_eager") if s.enforce_eager else "--no-enforce-eager")
    if s.speculative_config is not None:
        argv += [
            _flag("speculative_config"),
            json.dumps(s.speculative_config, separators=(",", ":")),
        ]
    elif s.draft is not None:
        spec = {
            "method": "draft_model",
            "model": s.draft.path or s.draft.repo,
            "num_speculative_tokens": s.draft.tokens,
            "draft_tensor_parallel_size": s.draft.tensor_parallel_size,
        }
        argv += [_flag("speculative_config"), json.dumps(spec, separators=(",", ":"))]
    argv += [_flag("host"), s.host, _flag("port"), str(s.port)]
    argv += [_flag("alias"), s.served_model_name or model.id]
    argv += list(o.passthrough)
    return tuple(argv)
