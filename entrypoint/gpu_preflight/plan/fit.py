"""Does one model artifact fit on these devices with this engine, and at what context? (pure)

Each ``fit_*`` returns a ``Fit`` (a configuration that fits, with its prediction) or a ``Miss``
(why not, with the numbers). Contexts are searched in steps of ``CONTEXT_STEP`` tokens: llama.cpp
pads its KV to 256 cells anyway, and round numbers read better in a plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from gpu_preflight.memory.llamacpp import (
    LlamaCppConfig,
    draft_config,
    estimate_llamacpp,
    with_draft,
)
from gpu_preflight.memory.types import Estimate
from gpu_preflight.memory.vllm import (
    VllmConfig,
    VllmConfigError,
    VllmDraft,
    choose_gpu_memory_utilization,
    estimate_vllm,
    max_model_len_that_fits,
)
from gpu_preflight.models.types import Artifact, ModelSpec
from gpu_preflight.plan.forecast import DecodeForecast, forecast_decode
from gpu_preflight.plan.targets import MIN_COMPUTE_CAPABILITY_VLLM, GpuTarget, HostTarget

CONTEXT_STEP = 256
GIB = 2**30
# Tokens drafted per step: llama-server's default (--spec-draft-n-max 3), and the same for vLLM's
# num_speculative_tokens so both engines verify the same amount of speculation per step.
DRAFT_TOKENS = 3
# The image's vLLM (>= 0.21) counts the CUDA graph pool inside --gpu-memory-utilization.
VLLM_CUDAGRAPH_IN_BUDGET = True
Mode = Literal["gpu", "offload", "cpu"]


def gib(n: int | float) -> str:
    return f"{n / GIB:.1f} GiB"


@dataclass(frozen=True)
class Wants:
    """What the caller asks of a fit: context range, concurrency, cache type and the user's pins."""

    min_context: int
    target_context: int
    fixed_context: bool  # the user set it: fit exactly this or miss, never a quiet change
    parallel: int
    cache_type: str | None  # None: the engine's default
    flash_attn: str  # on | off | auto (llama.cpp)
    min_tok_s: float
    n_gpu_layers: int | None = None  # user pin (llama.cpp)
    n_cpu_moe: int | None = None
    gpu_memory_utilization: float | None = None  # user pin (vLLM)
    tensor_parallel: int | None = None
    reserve_bytes: int = 0
    n_batch: int = 2048
    n_ubatch: int = 512


@dataclass(frozen=True)
class Draft:
    """A speculative-decoding draft model served next to the target, in the same process."""

    spec: ModelSpec
    artifact: Artifact
    tokens: int = DRAFT_TOKENS


@dataclass(frozen=True)
class Fit:
    spec: ModelSpec
    artifact: Artifact
    engine: str
    mode: Mode
    context: int  # per sequence
    parallel: int
    estimate: Estimate
    gpus: tuple[GpuTarget, ...]
    budgets: dict[str, int]
    forecast: DecodeForecast | None
    # Engine settings the argv is built from.
    n_gpu_layers: int = -1
    n_cpu_moe: int = 0
    tensor_split: tuple[float, ...] = ()
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: str = "on"
    gpu_memory_utilization: float | None = None
    tensor_parallel: int = 1
    warnings: tuple[str, ...] = ()
    draft: Draft | None = None
    notes: tuple[str, ...] = ()  # for the plan's prediction notes (informational)


@dataclass(frozen=True)
class Miss:
    spec: ModelSpec
    artifact: Artifact | None
    engine: str
    reason: str
    forecast: DecodeForecast | None = None
    near: Fit | None = None  # a fit that failed only the speed floor (an offload alternative)


FitResult = Fit | Miss


def _label(spec: ModelSpec, art: Artifact | None, engine: str) -> str:
    quant = f" {art.quant}" if art else ""
    return f"{spec.id}{quant} ({engine})"


def _round_ctx(n: int) -> int:
    return max(CONTEXT_STEP, n // CONTEXT_STEP * CONTEXT_STEP)


def _largest_context(lo: int, hi: int, fits: Callable[[int], bool]) -> int | None:
    """Largest context in [lo, hi] (multiples of CONTEXT_STEP) for which fits() holds; monotone."""
    if hi < lo:
        return None
    if fits(hi):
        return hi
    if not fits(lo):
        return None
    a, b = lo // CONTEXT_STEP, hi // CONTEXT_STEP  # fits(a*step), not fits(b*step)
    while b - a > 1:
        mid = (a + b) // 2
        if fits(mid * CONTEXT_STEP):
            a = mid
        else:
            b = mid
    return a * CONTEXT_STEP


def _context_range(spec: ModelSpec, w: Wants) -> tuple[int, int]:
    model_max = spec.arch.max_position_embeddings
    if w.fixed_context:
        return w.target_context, w.target_context
    hi = _round_ctx(min(model_max, w.target_context))
    lo = min(_round_ctx(w.min_context), hi)
    return lo, hi


# ---------------------------------------------------------------------------------------------
# llama.cpp


def _cache_types(w: Wants, engine: str) -> tuple[str, str] | str:
    """(k, v) for llama.cpp, or the reason the requested type does not apply to llama.cpp."""
    if w.cache_type is None:
        return ("f16", "f16")
    k, _, v = w.cache_type.partition("/")
    v = v or k
    if k.startswith("fp8") or k == "auto":
        return f"cache type {w.cache_type} is a vLLM KV type; {engine} takes f16, q8_0, q4_0, ..."
    return (k, v)


def _split(gpus: tuple[GpuTarget, ...]) -> tuple[float, ...]:
    if len(gpus) < 2:
        return ()
    total = sum(g.usable_bytes for g in gpus) or 1
    # Proportional to what each card has free: an even split would overflow the smaller card.
    return tuple(round(g.usable_bytes / total, 3) for g in gpus)


def _llama_bytes_per_token(
    spec: ModelSpec, art: Artifact, e: Estimate, context: int
) -> tuple[int, int]:
    """Bytes a decoded token reads on the GPUs and in host RAM: active weights + the KV it attends."""
    arch = spec.arch
    active = 1.0
    if arch.is_moe and arch.n_experts and arch.n_experts_per_token:
        active = arch.n_experts_per_token / arch.n_experts
    gpu_w = sum(d.weights_bytes for d in e.devices if d.device != "CPU")
    cpu_w = sum(d.weights_bytes for d in e.devices if d.device == "CPU")
    if active < 1.0:
        # Routed experts dominate MoE weights; a token reads only its experts' share of them.
        gpu_w = int(gpu_w * _moe_read_fraction(art, active))
        cpu_w = int(cpu_w * _moe_read_fraction(art, active))
    # Token embeddings are a row lookup, and norms are noise: neither is read whole per token.
    emb = (art.layout.token_embd_bytes + art.layout.other_bytes) if art.layout else 0
    cpu_w = max(0, cpu_w - emb)
    kv = e.kv_bytes_per_token * context
    gpu_kv = sum(d.kv_cache_bytes for d in e.devices if d.device != "CPU")
    cpu_kv = sum(d.kv_cache_bytes for d in e.devices if d.device == "CPU")
    total_kv = gpu_kv + cpu_kv or 1
    return gpu_w + kv * gpu_kv // total_kv, cpu_w + kv * cpu_kv // total_kv


def _moe_read_fraction(art: Artifact, active: float) -> float:
    """Share of MoE weight bytes one token reads: dense parts fully, routed experts at k/n."""
    layout = art.layout
    if layout is None or layout.total_bytes == 0:
        return active
    experts = sum(layout.per_layer_expert_bytes)
    dense = layout.total_bytes - experts
    return (dense + experts * active) / layout.total_bytes


def fit_llamacpp(
    spec: ModelSpec,
    art: Artifact,
    gpus: tuple[GpuTarget, ...],
    host: HostTarget,
    w: Wants,
    allow_offload: bool,
    draft: Draft | None = None,
) -> FitResult:
    label = _label(spec, art, "llama.cpp")
    if draft is not None:
        label += f" + draft {draft.spec.id} {draft.artifact.quant}"
    types = _cache_types(w, "llama.cpp")
    if isinstance(types, str):
        return Miss(spec, art, "llama.cpp", f"{label}: {types}")
    ck, cv = types
    fa_on = w.flash_attn != "off"
    if not fa_on and cv not in ("f16", "f32", "bf16"):
        return Miss(
            spec,
            art,
            "llama.cpp",
            f"{label}: a quantized V cache ({cv}) needs flash attention, which is set off",
        )
    split = _split(gpus)
    lo, hi = _context_range(spec, w)
    n_layers = spec.arch.n_layers

    def estimate(ctx: int, ngl: int, ncmoe: int, flash: bool) -> Estimate:
        cfg = LlamaCppConfig(
            context=ctx * w.parallel,
            parallel=w.parallel,
            cache_type_k=ck,
            cache_type_v=cv,
            flash_attn=flash,
            n_batch=w.n_batch,
            n_ubatch=w.n_ubatch,
            n_gpu_layers=ngl if gpus else 0,
            n_cpu_moe=ncmoe,
            tensor_split=split,
        )
        e = estimate_llamacpp(spec, art, cfg, gpu_count=len(gpus))
        if draft is None:
            return e
        # The draft's KV uses the target's cache types (passed as --spec-draft-type-k/-v).
        d = estimate_llamacpp(
            draft.spec, draft.artifact, draft_config(cfg, ck, cv), gpu_count=len(gpus)
        )
        return with_draft(e, d, f"{draft.spec.id} {draft.artifact.quant}")

    def worst(ctx: int, ngl: int, ncmoe: int) -> Estimate:
        # "auto" flash attention is decided by llama.cpp at load time: plan for the bigger case.
        if w.flash_attn == "auto":
            a, b = estimate(ctx, ngl, ncmoe, True), estimate(ctx, ngl, ncmoe, False)
            return a if a.gpu_total_bytes + _cpu(a) >= b.gpu_total_bytes + _cpu(b) else b
        return estimate(ctx, ngl, ncmoe, fa_on)

    def budgets() -> dict[str, int]:
        out = {f"CUDA{i}": g.usable_bytes for i, g in enumerate(gpus)}
        if host.usable_bytes is not None:
            out["CPU"] = host.usable_bytes
        return out

    def over(e: Estimate) -> list[str]:
        """Devices whose prediction exceeds their budget, in words (empty: fits)."""
        b = budgets()
        out = []
        for d in e.devices:
            limit = b.get(d.device)
            if limit is None:
                continue
            if d.total_bytes > limit:
                where = gpus[int(d.device[4:])].label if d.device != "CPU" else "host RAM"
                out.append(f"{gib(d.total_bytes)} on {where}, {gib(limit)} usable")
        return out

    def settle(ctx: int, ngl: int, ncmoe: int, mode: Mode, warns: tuple[str, ...] = ()) -> Fit:
        e = worst(ctx, ngl, ncmoe)
        gpu_bpt, cpu_bpt = _llama_bytes_per_token(spec, art, e, ctx)
        gbw = min((g.bandwidth_gb_s or 0.0) for g in gpus) if gpus else None
        fc = forecast_decode(gpu_bpt, cpu_bpt, gbw or None, host.bandwidth_gb_s)
        return Fit(
            spec=spec,
            artifact=art,
            engine="llama.cpp",
            mode=mode,
            context=ctx,
            parallel=w.parallel,
            estimate=e,
            gpus=gpus,
            budgets=budgets(),
            forecast=fc,
            n_gpu_layers=ngl,
            n_cpu_moe=ncmoe,
            tensor_split=split,
            cache_type_k=ck,
            cache_type_v=cv,
            flash_attn=w.flash_attn,
            warnings=warns,
            draft=draft,
        )

    def speed_ok(fit: Fit) -> Miss | None:
        if fit.forecast is None:
            return Miss(
                spec,
                art,
                "llama.cpp",
                f"{label}: {fit.mode} decode speed cannot be forecast (a memory bandwidth is unknown), "
                f"so the floor of {w.min_tok_s:g} tok/s (PREFLIGHT_MIN_TOKS) cannot be confirmed",
            )
        if fit.forecast.low_tok_s < w.min_tok_s:
            return Miss(
                spec,
                art,
                "llama.cpp",
                f"{label}: forecast {fit.forecast.low_tok_s:.1f}-{fit.forecast.high_tok_s:.1f} tok/s "
                f"({fit.mode}, {fit.context} tokens) is under the floor of {w.min_tok_s:g} tok/s "
                "(PREFLIGHT_MIN_TOKS)",
                fit.forecast,
                fit,
            )
        return None

    if not gpus:
        if host.usable_bytes is None:
            return Miss(spec, art, "llama.cpp", f"{label}: host RAM unknown, cannot plan a CPU run")
        ctx = _largest_context(lo, hi, lambda c: not over(worst(c, 0, 0)))
        if ctx is None:
            return Miss(
                spec,
                art,
                "llama.cpp",
                f"{label}: needs " + "; ".join(over(worst(lo, 0, 0))) + f" at {lo} tokens",
            )
        fit = settle(ctx, 0, 0, "cpu")
        return speed_ok(fit) or fit

    # Full offload first (or the user's own layer pins, checked as given).
    pinned = w.n_gpu_layers is not None or w.n_cpu_moe is not None
    ngl0 = w.n_gpu_layers if w.n_gpu_layers is not None else -1
    ncmoe0 = w.n_cpu_moe or 0
    ctx = _largest_context(lo, hi, lambda c: not over(worst(c, ngl0, ncmoe0)))
    if ctx is not None:
        fit = settle(ctx, ngl0, ncmoe0, "gpu" if ngl0 < 0 and ncmoe0 == 0 else "offload")
        if fit.mode == "gpu":
            return fit
        return speed_ok(fit) or fit
    first_miss = f"{label}: needs " + "; ".join(over(worst(lo, ngl0, ncmoe0))) + f" at {lo} tokens"
    if pinned or not allow_offload:
        return Miss(spec, art, "llama.cpp", first_miss)
    why_not = _offload_blocked(host)
    if why_not:
        return Miss(
            spec, art, "llama.cpp", f"{first_miss}; offload to host RAM not planned: {why_not}"
        )

    # Offload: routed experts to the CPU first (they are read least per token), then whole layers.
    best: Fit | None = None
    for c in sorted({hi, lo}, reverse=True):

        def fits_at(ngl: int, nc: int, ctx: int = c) -> bool:
            return not over(worst(ctx, ngl, nc))

        placement = _offload_placement(spec, n_layers, fits_at)
        if placement is None:
            continue
        ngl, nc = placement
        fit = settle(c, ngl, nc, "offload")
        pin_issue = _pinned_issue(fit, host)
        if pin_issue:
            return Miss(spec, art, "llama.cpp", f"{label}: {pin_issue}")
        if speed_ok(fit) is None:
            return fit
        best = best or fit
    if best is not None:
        miss = speed_ok(best)
        assert miss is not None
        return miss
    all_cpu = worst(lo, 0, n_layers if spec.arch.is_moe else 0).device("CPU")
    need = all_cpu.total_bytes if all_cpu else 0
    return Miss(
        spec,
        art,
        "llama.cpp",
        f"{first_miss}; offloading to host RAM needs up to {gib(need)} "
        f"there, {gib(host.usable_bytes or 0)} usable",
    )


def _cpu(e: Estimate) -> int:
    d = e.device("CPU")
    return d.total_bytes if d else 0


def _offload_blocked(host: HostTarget) -> str | None:
    if host.usable_bytes is None:
        return "host RAM is unknown"
    if host.wsl2 and host.pinned_ceiling_bytes is None:
        return (
            "on WSL2 the pinned-memory ceiling was not confirmed by the probe (CUDA driver API "
            "unavailable), and WSL2 cannot oversubscribe GPU memory"
        )
    return None


def _pinned_issue(fit: Fit, host: HostTarget) -> str | None:
    cpu = fit.estimate.device("CPU")
    if cpu is None or host.pinned_ceiling_bytes is None:
        return None
    # llama.cpp copies host-resident weights through pinned staging buffers; on a machine whose
    # page-lockable memory is smaller than what we park in host RAM, transfers fall back or fail.
    if cpu.weights_bytes > host.pinned_ceiling_bytes and host.wsl2:
        return (
            f"offload puts {gib(cpu.weights_bytes)} of weights in host RAM but only "
            f"{gib(host.pinned_ceiling_bytes)} could be pinned on this WSL2 machine"
        )
    return None


def _offload_placement(
    spec: ModelSpec, n_layers: int, fits: Callable[[int, int], bool]
) -> tuple[int, int] | None:
    """(n_gpu_layers, n_cpu_moe) keeping the most on the GPU; None if nothing fits."""
    if spec.arch.is_moe and fits(-1, n_layers):
        a, b = 0, n_layers  # not fits(-1, a) (full failed), fits(-1, b)
        while b - a > 1:
            mid = (a + b) // 2
            if fits(-1, mid):
                b = mid
            else:
                a = mid
        return -1, b
    ncmoe = n_layers if spec.arch.is_moe else 0
    if not fits(0, ncmoe):
        return None
    a, b = 0, n_layers + 1  # fits(a), not fits(b) (b = all layers + output)
    while b - a > 1:
        mid = (a + b) // 2
        if fits(mid, ncmoe):
            a = mid
        else:
            b = mid
    return a, ncmoe


# ---------------------------------------------------------------------------------------------
# vLLM


def _tp_sizes(spec: ModelSpec, n: int) -> list[int]:
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


def fit_vllm(
    spec: ModelSpec,
    art: Artifact,
    gpus: tuple[GpuTarget, ...],
    w: Wants,
    draft: Draft | None = None,
) -> FitResult:
    label = _label(spec, art, "vllm")
    if draft is not None:
        label += f" + draft {draft.spec.id} {draft.artifact.quant}"
    if not gpus:
        return Miss(spec, art, "vllm", f"{label}: vLLM needs a GPU and none is usable here")
    cc = gpus[0].compute_capability
    if cc is not None and cc < MIN_COMPUTE_CAPABILITY_VLLM:
        return Miss(
            spec,
            art,
            "vllm",
            f"{label}: vLLM needs compute capability 7.0+, {gpus[0].name} has {cc[0]}.{cc[1]}",
        )
    kv_dtype = w.cache_type or "auto"
    if kv_dtype not in ("auto", "fp8", "fp8_e4m3", "fp8_e5m2"):
        return Miss(
            spec,
            art,
            "vllm",
            f"{label}: cache type {kv_dtype} is a llama.cpp KV type; vLLM takes auto or fp8",
        )
    group = gpus[:1] if gpus[0].mig else identical_group(gpus)
    sizes = [w.tensor_parallel] if w.tensor_parallel else _tp_sizes(spec, len(group))
    if draft is not None:
        # vLLM runs the draft at the target's tensor parallel size: its heads must split too.
        sizes = [tp for tp in sizes if tp in _tp_sizes(draft.spec, tp)]
    if not sizes or sizes[0] > len(group):
        return Miss(
            spec,
            art,
            "vllm",
            f"{label}: tensor parallel size {w.tensor_parallel or 1} needs "
            f"{w.tensor_parallel or 1} identical GPUs whose count divides the attention heads, "
            f"{len(group)} here",
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
        cudagraph_in_budget=VLLM_CUDAGRAPH_IN_BUDGET,
    )
    lo, hi = _context_range(spec, w)
    if draft is not None:
        hi = min(hi, draft.spec.arch.max_position_embeddings)
    if gmu <= 0:
        return Miss(
            spec,
            art,
            "vllm",
            f"{label}: no memory left for vLLM on {ref.label} "
            f"({gib(ref.free_bytes)} free, {gib(reserve)} reserved and kept as margin)",
        )
    cfg = VllmConfig(
        max_model_len=hi,
        gpu_total_bytes=ref.total_bytes,
        gpu_memory_utilization=gmu,
        tensor_parallel_size=tp,
        max_num_seqs=w.parallel,
        kv_cache_dtype=kv_dtype,
        gpu_name=ref.name,
        gpu_reserved_bytes=ref.reserved_bytes,
        cudagraph_in_budget=VLLM_CUDAGRAPH_IN_BUDGET,
        draft=VllmDraft(draft.spec, draft.artifact, draft.tokens) if draft else None,
    )
    budget = int(gmu * ref.total_bytes)
    if budget > ref.free_bytes - w.reserve_bytes:
        return Miss(
            spec,
            art,
            "vllm",
            f"{label}: --gpu-memory-utilization {gmu:.2f} asks for "
            f"{gib(budget)} but {gib(ref.free_bytes - w.reserve_bytes)} is free on {ref.label}",
        )
    try:
        e = estimate_vllm(spec, art, cfg)
        # The KV pool, less the margin vLLM's own figures are kept under, must hold `parallel`
        # whole sequences of the context ("room for the configured concurrency").
        best = max_model_len_that_fits(spec, art, cfg, parallel=w.parallel, limit=hi)
    except VllmConfigError as err:
        return Miss(spec, art, "vllm", f"{label}: {err}")
    ctx = _round_ctx(best) if best >= CONTEXT_STEP else 0
    if ctx < lo or (w.fixed_context and ctx < hi):
        dev = e.devices[0]
        return Miss(
            spec,
            art,
            "vllm",
            f"{label}: the KV pool left after {gib(dev.weights_bytes)} of weights and "
            f"{gib(dev.compute_bytes + dev.overhead_bytes)} of activations/overhead holds "
            f"{e.kv_capacity_tokens or 0} tokens on {ref.label} (budget {gib(budget)}, "
            f"{gib(e.margin_bytes)} of it kept as margin); {w.parallel} x {lo} tokens needed",
        )
    e = estimate_vllm(spec, art, replace(cfg, max_model_len=ctx))
    warns: list[str] = []
    if tp < len(group):
        warns.append(
            f"tensor parallel {tp} uses {tp} of {len(group)} identical GPUs "
            f"(attention heads {spec.arch.n_heads} must divide evenly)"
        )
    return Fit(
        spec=spec,
        artifact=art,
        engine="vllm",
        mode="gpu",
        context=ctx,
        parallel=w.parallel,
        estimate=e,
        gpus=used,
        budgets={f"CUDA{i}": g.usable_bytes for i, g in enumerate(used)},
        forecast=_vllm_forecast(spec, art, e, ctx, used),
        gpu_memory_utilization=gmu,
        tensor_parallel=tp,
        cache_type_k=kv_dtype,
        cache_type_v=kv_dtype,
        warnings=tuple(warns),
        draft=draft,
    )


def _vllm_forecast(
    spec: ModelSpec, art: Artifact, e: Estimate, ctx: int, gpus: tuple[GpuTarget, ...]
) -> DecodeForecast | None:
    weights = sum(d.weights_bytes for d in e.devices)
    if spec.arch.is_moe and spec.arch.n_experts and spec.arch.n_experts_per_token:
        weights = int(
            weights * _moe_read_fraction(art, spec.arch.n_experts_per_token / spec.arch.n_experts)
        )
    per_gpu = (weights + e.kv_bytes_per_token * ctx) // max(1, len(gpus))
    bw = min((g.bandwidth_gb_s or 0.0) for g in gpus)
    return forecast_decode(per_gpu, 0, bw or None, None)


def with_context(w: Wants, context: int | None, fixed: bool) -> Wants:
    if context is None:
        return w
    return replace(
        w, target_context=context, min_context=min(w.min_context, context), fixed_context=fixed
    )
