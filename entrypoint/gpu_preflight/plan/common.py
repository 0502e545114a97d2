"""What both engines' fits share: the request (Wants), the result (Fit or Miss), context search.

A ``Wants`` is what the caller asks of one fit: the tier's goals and every value the user pinned.
A ``Fit`` holds the engine's one settings record (``LlamaServerSettings`` or ``VllmSettings``),
from which the argv is written, and the prediction made with exactly those settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from gpu_preflight.inputs.flags import knob
from gpu_preflight.inputs.model_request import Draft
from gpu_preflight.memory.types import Estimate
from gpu_preflight.models.types import Artifact, ModelSpec
from gpu_preflight.plan.forecast import DecodeForecast
from gpu_preflight.plan.targets import GpuTarget

if TYPE_CHECKING:
    from gpu_preflight.plan.settings import LlamaServerSettings, VllmSettings

CONTEXT_STEP = 256
GIB = 2**30
Mode = Literal["gpu", "offload", "cpu"]


def gib(n: int | float) -> str:
    return f"{n / GIB:.1f} GiB"


@dataclass(frozen=True)
class Wants:
    """What the caller asks of a fit: context range, concurrency, and every value the user pinned.

    ``None`` means "not pinned": the fit chooses (or the engine default applies).
    """

    min_context: int
    target_context: int
    fixed_context: bool  # the user set it: fit exactly this or miss, never a quiet change
    parallel: int
    cache_type_k: str | None  # None: the engine's default
    cache_type_v: str | None
    flash_attn: str  # on | off | auto (llama.cpp)
    min_tok_s: float
    n_gpu_layers: int | None = None  # user pin (llama.cpp); -1 all
    n_cpu_moe: int | None = None
    gpu_memory_utilization: float | None = None  # user pin (vLLM)
    tensor_parallel: int | None = None
    pipeline_parallel: int | None = None  # user pin (vLLM -pp); None: the planner's
    pp_layer_partition: str | None = None  # user pin (VLLM_PP_LAYER_PARTITION)
    reserve_bytes: int = 0
    # llama-server's own -b / -ub defaults (the flag table's, cited: common.h common_params)
    n_batch: int = knob("batch").default("llama.cpp").value
    n_ubatch: int = knob("ubatch").default("llama.cpp").value
    # llama.cpp, as the user gave them:
    ctx_total: int | None = None  # -c exactly as given (the argv carries it unchanged)
    tensor_split: tuple[float, ...] | None = None
    split_mode: str | None = None
    main_gpu: int | None = None
    devices: str | None = None  # --device as given: the GPUs and their order ("none": no GPU)
    kv_unified: bool | None = None
    repack: bool | None = None
    fit: str | None = None  # --fit as given
    load_mode: str | None = None
    extra_gpu_bytes: int = 0  # --mmproj / --lora files, loaded on the main GPU
    cache_ram_mib: int | None = None  # llama-server's prompt cache in host RAM (--cache-ram)
    op_offload: bool | None = None  # --op-offload / --no-op-offload
    swa_full: bool = False  # --swa-full
    ctx_checkpoints: int | None = None  # --ctx-checkpoints (sliding-window models)
    # vLLM, as the user gave them:
    max_num_batched_tokens: int | None = None
    enforce_eager: bool | None = None
    block_size: int | None = None
    dtype: str | None = None
    cpu_offload_gb: float | None = None
    kv_cache_memory_bytes: int | None = None
    quantization: str | None = None
    data_parallel: int | None = None  # vLLM --data-parallel-size as given
    # vLLM's multimodal settings as given (None: not set, vLLM's default): --limit-mm-per-prompt
    # (the parsed JSON), --language-model-only, --skip-mm-profiling, --mm-encoder-tp-mode.
    limit_mm_per_prompt: Mapping[str, Any] | None = None
    language_model_only: bool | None = None
    skip_mm_profiling: bool | None = None
    mm_encoder_tp_mode: str | None = None
    allow_long_context: bool = False  # VLLM_ALLOW_LONG_MAX_MODEL_LEN=1
    # The user set the concurrency (--max-num-seqs / -np / PREFLIGHT_PARALLEL): vLLM's own rule
    # then admits a plan whose pool holds one request of max_model_len (issue 20).
    parallel_pinned: bool = False
    # `estimate`: plan exactly the typed command; an open value is the engine's default.
    as_typed: bool = False

    @property
    def cache_type(self) -> str | None:
        """ "k" when K and V agree, "k/v" when they differ; None when neither is pinned."""
        if self.cache_type_k is None and self.cache_type_v is None:
            return None
        k = self.cache_type_k or "f16"
        v = self.cache_type_v or "f16"
        return k if k == v else f"{k}/{v}"


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
    settings: LlamaServerSettings | VllmSettings  # what the argv is written from
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


def label(spec: ModelSpec, art: Artifact | None, engine: str) -> str:
    quant = f" {art.quant}" if art else ""
    return f"{spec.id}{quant} ({engine})"


def round_ctx(n: int) -> int:
    return max(CONTEXT_STEP, n // CONTEXT_STEP * CONTEXT_STEP)


def largest_context(lo: int, hi: int, fits: Callable[[int], bool]) -> int | None:
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


def context_range(spec: ModelSpec, w: Wants) -> tuple[int, int]:
    model_max = spec.arch.max_position_embeddings
    if w.fixed_context:
        return w.target_context, w.target_context
    hi = round_ctx(min(model_max, w.target_context))
    lo = min(round_ctx(w.min_context), hi)
    return lo, hi


def moe_read_fraction(art: Artifact, active: float) -> float:
    """Share of MoE weight bytes one token reads: dense parts fully, routed experts at k/n."""
    layout = art.layout
    if layout is None or layout.total_bytes == 0:
        return active
    experts = sum(layout.per_layer_expert_bytes)
    dense = layout.total_bytes - experts
    return (dense + experts * active) / layout.total_bytes


def with_context(w: Wants, context: int | None, fixed: bool) -> Wants:
    if context is None:
        return w
    return replace(
        w, target_context=context, min_context=min(w.min_context, context), fixed_context=fixed
    )
