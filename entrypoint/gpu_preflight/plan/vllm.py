"""vLLM: its one settings record, the fit that chooses it, and the argv written from it."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from gpu_preflight.inputs.flags import canonical, mm_count
from gpu_preflight.inputs.model_request import Draft
from gpu_preflight.inputs.overrides import Overrides
from gpu_preflight.memory.types import Estimate
from gpu_preflight.memory.vllm import (
    VllmConfig,
    VllmConfigError,
    VllmDraft,
    batch_limits,
    budget,
    choose_gpu_memory_utilization,
    default_batch_limits,
    estimate_vllm,
    max_model_len_that_fits,
    min_kv_bytes_needed,
)
from gpu_preflight.memory.vllm_pipeline import (
    PP_NON_TORCH_BYTES,
    Stage,
    estimate_vllm_pipeline,
    max_model_len_pipeline,
    partition_layers,
    pipeline_refusal,
)
from gpu_preflight.models.types import Artifact, ModelArch, ModelSpec
from gpu_preflight.plan.common import (
    CONTEXT_STEP,
    GIB,
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
from gpu_preflight.plan.forecast import DecodeForecast, forecast_decode
from gpu_preflight.plan.settings import VllmSettings
from gpu_preflight.plan.targets import MIN_COMPUTE_CAPABILITY_VLLM, GpuTarget
from gpu_preflight.plan.types import ModelChoice

# The image's vLLM (>= 0.21) counts the CUDA graph pool inside --gpu-memory-utilization.
VLLM_CUDAGRAPH_IN_BUDGET = True
# vLLM 0.32: vllm/config/cache.py CacheConfig.gpu_memory_utilization Field(default=0.92) (0.9 up to
# 0.19: the llm-d gpt-oss-20b run without the flag logs "(0.9, ...)").
DEFAULT_GPU_MEMORY_UTILIZATION = 0.92


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
        limit_mm_per_prompt=w.limit_mm_per_prompt,
        language_model_only=w.language_model_only,
        skip_mm_profiling=w.skip_mm_profiling,
        mm_encoder_tp_mode=w.mm_encoder_tp_mode,
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


def attention_heads(a: ModelArch) -> int:
    """The attention heads vLLM's TP check divides (ModelConfig.verify_with_parallel_config reads
    model_arch_config.total_num_attention_heads): 0 for an attention-free model (Mamba-1/2 have
    no num_attention_heads; the reader's stand-in of 1 head is not vLLM's), which any TP divides."""
    if set(range(a.n_layers)) <= set(a.recurrent_layers) and not a.parallel_hybrid:
        return 0
    return a.n_heads


def tp_sizes(spec: ModelSpec, n: int) -> list[int]:
    """Tensor-parallel sizes vLLM accepts for this model on n identical GPUs, largest first."""
    heads, kv = attention_heads(spec.arch), spec.arch.n_kv_heads
    out = []
    tp = 1
    while tp <= n:
        if heads == 0 or (heads % tp == 0 and (kv % tp == 0 or tp % kv == 0)):
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
        # Typed without --max-num-seqs: vLLM's own default for the card (batch_limits).
        max_num_seqs=None if w.as_typed and not w.parallel_pinned else w.parallel,
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
        **mm_config(w),
    )


def mm_config(w: Wants) -> dict[str, Any]:
    """The memory model's multimodal fields from the user's settings (vLLM's defaults where
    unset: 999 items of every modality, the tower built and profiled, mm_encoder_tp_mode
    "weights"; vllm/config/multimodal.py MultiModalConfig)."""
    limits = w.limit_mm_per_prompt or {}
    counts = tuple((m, n) for m in sorted(limits) if (n := mm_count(limits, m)) is not None)
    return {
        "mm_limits": counts,
        "language_model_only": bool(w.language_model_only),
        "skip_mm_profiling": bool(w.skip_mm_profiling),
        "mm_encoder_tp_mode": w.mm_encoder_tp_mode or "weights",
    }


def typed_defaults(spec: ModelSpec, w: Wants) -> Wants:
    """``estimate``'s command as typed: what the user left open is vLLM 0.32's own default,
    never a value the planner chooses. --max-model-len: the model's derived length
    (vllm/config/model.py _get_and_verify_max_len); --gpu-memory-utilization 0.92
    (vllm/config/cache.py CacheConfig); tensor, pipeline and data parallel 1
    (vllm/config/parallel.py ParallelConfig); KV dtype auto; --max-num-seqs and
    --max-num-batched-tokens the card's defaults (EngineArgs.get_batch_defaults, in
    memory/vllm.py default_batch_limits)."""
    if not w.as_typed:
        return w
    ctx = w.target_context if w.fixed_context else spec.arch.max_position_embeddings
    return replace(
        w,
        gpu_memory_utilization=w.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION,
        tensor_parallel=w.tensor_parallel or 1,
        pipeline_parallel=w.pipeline_parallel or 1,
        data_parallel=w.data_parallel or 1,
        target_context=ctx,
        min_context=ctx,
        fixed_context=True,
    )


def vllm_rules(spec: ModelSpec, w: Wants, n_gpus: int) -> str | None:
    """What vLLM 0.32 refuses before it sizes any memory, in its words, or None.

    - vllm/config/model.py _get_and_verify_max_len: a --max-model-len above the model's derived
      length ("User-specified max_model_len (X) is greater than the derived max_model_len"),
      unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 (vllm/envs.py);
    - ModelConfig.verify_with_parallel_config: the attention heads must divide by the tensor
      parallel size, and the layers be at least the pipeline stages (get_pp_indices);
    - one GPU per rank of the world DP x TP x PP (vllm/config/parallel.py ParallelConfig
      world_size x data_parallel_size; the multiprocessing executor opens cuda:rank).
    """
    a = spec.arch
    model_max = a.max_position_embeddings
    if w.fixed_context and w.target_context > model_max and not w.allow_long_context:
        return (
            f"--max-model-len {w.target_context} is greater than the model's derived "
            f"max_model_len (max_position_embeddings={model_max}): vLLM refuses to start "
            "(vllm/config/model.py _get_and_verify_max_len). Accepted: --max-model-len "
            f"{model_max} or less, or VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 in its environment"
        )
    tp, pp, dp = w.tensor_parallel or 1, w.pipeline_parallel or 1, w.data_parallel or 1
    if attention_heads(a) % tp:
        return (
            f"--tensor-parallel-size {tp}: the total number of attention heads ({a.n_heads}) "
            "must be divisible by the tensor parallel size (vllm/config/model.py "
            "ModelConfig.verify_with_parallel_config)"
        )
    if pp > a.n_layers:
        return (
            f"--pipeline-parallel-size {pp} is more stages than the model's {a.n_layers} layers "
            "(vllm/distributed/utils.py get_pp_indices gives a stage no layer)"
        )
    world = dp * tp * pp
    given = [x for x in (w.data_parallel, w.tensor_parallel, w.pipeline_parallel) if x]
    if given and world > n_gpus:
        return (
            f"--data-parallel-size {dp} x --tensor-parallel-size {tp} x "
            f"--pipeline-parallel-size {pp} is a world of {world} GPUs (one per rank, "
            f"vllm/config/parallel.py ParallelConfig), {n_gpus} here"
        )
    return None


# Checkpoint dtypes that carry no quantization_config (config.json): vLLM reads no method.
_UNQUANTIZED = frozenset({"bf16", "fp16", "f16", "f32", "bfloat16", "float16", "float32", "auto"})
# What vLLM 0.32 itself resolves a checkpoint's method to, where the user may name it: the
# Marlin kernels are overrides (AWQMarlinConfig / GPTQMarlinConfig.override_quantization_method
# take "awq_marlin" / "gptq_marlin" for an awq / gptq checkpoint on a GPU that runs them), and
# gpt-oss's MXFP4 is also "gpt_oss_mxfp4" (the overrides list of _verify_quantization).
_SAME_METHOD = {
    "awq": frozenset({"awq", "awq_marlin", "auto_awq"}),
    "gptq": frozenset({"gptq", "gptq_marlin", "auto_gptq"}),
    "mxfp4": frozenset({"mxfp4", "gpt_oss_mxfp4"}),
}
# Methods vLLM applies at load to a checkpoint that carries none (online quantization): fp8
# (vllm/model_executor/model_loader/weight_utils.py get_quant_config: Fp8Config has no config
# file, "--quantization fp8 is deprecated for online quantization" -> fp8_per_tensor) and the
# online shorthands (vllm/config/quantization.py _ONLINE_SHORTHANDS). The plan keeps the
# checkpoint's own weight bytes for them (an over-prediction: the loaded weights are smaller).
_ONLINE = frozenset(
    {"fp8", "online", "fp8_per_tensor", "fp8_per_block", "fp8_per_channel", "mxfp8"}
)
# vLLM 0.32's methods (vllm/model_executor/layers/quantization/__init__.py QuantizationMethods);
# another name is "Unknown quantization method" (_verify_quantization), e.g. bitsandbytes and
# gguf, which 0.32 no longer has.
VLLM_QUANTIZATION_METHODS = frozenset(
    {
        "awq", "auto_awq", "fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4",
        "modelopt_mxfp8", "modelopt_mixed", "auto_gptq", "gptq", "gptq_marlin", "awq_marlin",
        "humming", "compressed-tensors", "experts_int8", "quark", "moe_wna16", "torchao", "inc",
        "mxfp4", "gpt_oss_mxfp4", "deepseek_v4_fp8", "online", "fp8_per_tensor",
        "fp8_per_block", "fp8_per_channel", "int8_per_channel_weight_only", "nvfp4_per_token",
        "mxfp8",
    }
)  # fmt: skip


# The catalog names a checkpoint's quantization by its weights (fp8); vLLM reads the method from
# config.json. The FP8 checkpoints of these organisations are llm-compressor exports, whose
# config.json says quant_method "compressed-tensors" (e.g. RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8).
_COMPRESSED_TENSORS_ORGS = ("redhatai/", "neuralmagic/", "nm-testing/")


def checkpoint_method(art: Artifact) -> str | None:
    """The quant_method vLLM reads from the checkpoint's config.json; None: it carries none."""
    q = art.quant.lower()
    if q in _UNQUANTIZED:
        return None
    if q == "fp8" and art.repo.lower().startswith(_COMPRESSED_TENSORS_ORGS):
        return "compressed-tensors"
    return q


def quantization_rule(art: Artifact, w: Wants) -> str | None:
    """A --quantization the checkpoint does not carry, in vLLM 0.32's words, or None.

    - The checkpoint carries a method M (its quant): vllm/config/model.py
      ModelConfig._verify_quantization raises "Quantization method specified in the model
      config (M) does not match the quantization method specified in the `quantization`
      argument (X)" unless X is M or an override of it (_SAME_METHOD);
    - it carries none (bf16/fp16 weights): a method that needs the checkpoint's own quantization
      config file is refused while vLLM builds its config (vllm/config/vllm.py
      VllmConfig._get_quantization_config -> vllm/model_executor/model_loader/weight_utils.py
      get_quant_config: "Cannot find the config file for X"); fp8 quantizes at load (_ONLINE);
    - a name vLLM 0.32 does not have: "Unknown quantization method" (_verify_quantization).
    """
    x = (w.quantization or "").strip().lower()
    if not x or x == "none":
        return None
    if x not in VLLM_QUANTIZATION_METHODS:
        return (
            f'--quantization {x}: not a quantization method of vLLM 0.32 ("Unknown '
            'quantization method", vllm/config/model.py ModelConfig._verify_quantization). '
            f"Accepted: {', '.join(sorted(VLLM_QUANTIZATION_METHODS))}, or leave it unset"
        )
    carried = checkpoint_method(art)
    if carried is None:
        if x in _ONLINE:
            return None
        return (
            f"--quantization {x}: {art.repo} carries no quantization_config ({art.quant} "
            f"weights), and {x} reads its settings from the checkpoint: vLLM refuses to start "
            f'("Cannot find the config file for {x}", vllm/config/vllm.py '
            "VllmConfig._get_quantization_config -> vllm/model_executor/model_loader/"
            "weight_utils.py get_quant_config). Accepted: leave --quantization unset, or "
            "fp8 (quantized at load)"
        )
    same = _SAME_METHOD.get(carried, frozenset({carried}))
    if x in same:
        return None
    return (
        f"--quantization {x}: {art.repo} carries quantization_config quant_method "
        f'{carried}, and vLLM refuses a different method ("Quantization method specified in '
        f"the model config ({carried}) does not match the quantization method specified in "
        f'the `quantization` argument ({x})", vllm/config/model.py '
        f"ModelConfig._verify_quantization). Accepted: {' / '.join(sorted(same))}, or leave "
        "it unset"
    )


def _fit_data_parallel(
    spec: ModelSpec,
    art: Artifact,
    gpus: tuple[GpuTarget, ...],
    w: Wants,
    draft: Draft | None,
) -> FitResult:
    """--data-parallel-size N: N engines, each its own weights and KV pool on tp (x pp) cards of
    its own, ranks on consecutive CUDA ordinals (DP rank r on cuda:r*tp.., vllm/v1/engine
    core_client.py / multiproc_executor.py). Planned on the first rank's cards; every other
    rank's cards must be the same model of card with the same room."""
    name = label(spec, art, "vllm")
    dp = w.data_parallel or 1
    if (w.pipeline_parallel or 1) > 1:
        return Miss(
            spec,
            art,
            "vllm",
            f"{name}: --data-parallel-size {dp} with pipeline parallel is not modelled; "
            "accepted: --data-parallel-size with tensor parallel only",
        )
    ordered = tuple(sorted(gpus, key=lambda g: g.cuda_ordinal))
    if len({(g.name, g.total_bytes) for g in ordered}) > 1 or any(g.mig for g in ordered):
        return Miss(
            spec,
            art,
            "vllm",
            f"{name}: --data-parallel-size {dp} needs identical, whole GPUs (each rank plans the "
            "same memory split)",
        )
    block = ordered[: len(ordered) // dp]
    one = _fit_group(spec, art, block, replace(w, data_parallel=1), draft)
    if isinstance(one, Miss):
        return replace(one, reason=f"{one.reason} (one of {dp} data parallel ranks)")
    tp = len(one.gpus)
    used = ordered[: dp * tp]
    need = one.estimate.devices[0].total_bytes
    tight = [g for g in used if g.usable_bytes < need]
    if tight:
        g = tight[0]
        return Miss(
            spec,
            art,
            "vllm",
            f"{name}: data parallel rank on {g.label} needs {gib(need)}, {gib(g.usable_bytes)} "
            "is usable there",
        )
    devices = tuple(
        replace(d, device=f"CUDA{r * tp + i}")
        for r in range(dp)
        for i, d in enumerate(one.estimate.devices)
    )
    assert isinstance(one.settings, VllmSettings)
    settings = replace(one.settings, data_parallel_size=dp)
    why = f"data parallel {dp}: {dp} engines of tensor parallel {tp}, each its own weights and KV pool"
    fit = _on_cards(
        spec,
        art,
        one.context,
        w,
        replace(one.estimate, devices=devices),
        used,
        one.forecast,
        settings,
        draft,
        [*one.warnings, why],
    )
    return replace(fit, parallel=one.parallel, notes=one.notes)


def fit_vllm(
    spec: ModelSpec,
    art: Artifact,
    gpus: tuple[GpuTarget, ...],
    w: Wants,
    draft: Draft | None = None,
) -> FitResult:
    """vLLM on these devices: the largest identical group (tensor parallel), or, on cards that
    differ, pipeline parallel over all of them where that gives the longer context. A user's
    ``-pp`` above 1 is planned as given: that many stages over the first cards. What vLLM itself
    refuses at start is a miss naming its rule; ``--data-parallel-size`` is planned, not passed."""
    w = typed_defaults(spec, w)
    refused = vllm_rules(spec, w, len(gpus)) or quantization_rule(art, w)
    if refused is not None:
        name = label(spec, art, "vllm")
        return Miss(spec, art, "vllm", f"{name}: {refused}")
    res = _fit_vllm(spec, art, gpus, w, draft)
    notes = _rule_notes(spec, art, w)
    return replace(res, notes=(*res.notes, *notes)) if notes and isinstance(res, Fit) else res


def _rule_notes(spec: ModelSpec, art: Artifact, w: Wants) -> tuple[str, ...]:
    """What vLLM lets through with a warning, and how the plan accounts for it."""
    out = []
    model_max = spec.arch.max_position_embeddings
    if w.allow_long_context and w.fixed_context and w.target_context > model_max:
        out.append(
            f"VLLM_ALLOW_LONG_MAX_MODEL_LEN=1: planned at --max-model-len {w.target_context}, "
            f"beyond the model's derived {model_max}. vLLM 0.32 only warns (vllm/config/model.py "
            "_get_and_verify_max_len: positions past it may give NaN with RoPE) and scales "
            "no rope: the rotary cos/sin cache stays sized by max_position_embeddings "
            "(vllm/model_executor/layers/rotary_embedding/base.py _compute_cos_sin_cache; "
            "get_rope(max_position=config.max_position_embeddings) in the model files), so "
            "memory differs only by the KV of the longer length, which is planned"
        )
    x = (w.quantization or "").lower()
    if x in _ONLINE and checkpoint_method(art) is None:
        out.append(
            f"--quantization {x} on {art.quant} weights: vLLM quantizes them at load (online, "
            "vllm/model_executor/model_loader/weight_utils.py get_quant_config); planned at the "
            f"checkpoint's {art.quant} weight bytes, an over-prediction"
        )
    return tuple(out)


def _fit_vllm(
    spec: ModelSpec,
    art: Artifact,
    gpus: tuple[GpuTarget, ...],
    w: Wants,
    draft: Draft | None,
) -> FitResult:
    if (w.data_parallel or 1) > 1:
        return _fit_data_parallel(spec, art, gpus, w, draft)
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
    if w.pipeline_parallel is not None or w.as_typed:
        return False  # the user's -pp 1, or the command as typed (vLLM's default -pp 1)
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
                # The pp group's NCCL communicator exists before the snapshot: its allowance.
                w.reserve_bytes + g.margin_bytes + PP_NON_TORCH_BYTES,
                tensor_parallel_size=tp,
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
            best = max_model_len_pipeline(spec, art, cfg, plan_stages, admission(w), hi)
        except VllmConfigError as err:
            return miss(str(err))
        ctx = (best if w.fixed_context else round_ctx(best)) if best >= CONTEXT_STEP else 0
        if ctx < lo or (w.fixed_context and ctx < hi):
            why = pipeline_refusal(
                spec, art, replace(cfg, max_model_len=lo), plan_stages, admission(w)
            )
            last = miss(
                f"pipeline parallel {len(stages)} x tensor parallel {tp} "
                f"(VLLM_PP_LAYER_PARTITION={','.join(map(str, parts))}, "
                f"--gpu-memory-utilization {gmu:.2f}): {why or 'no context fits'} "
                f"(KV {kv_dtype}, {admission(w)} x {lo} tokens needed)"
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
        # The KV pool, less the margin vLLM's own figures are kept under, must hold `admit`
        # whole requests of the context (admission(): vLLM's one, or the tier's concurrency).
        best = max_model_len_that_fits(spec, art, cfg, parallel=admission(w), limit=hi)
    except VllmConfigError as err:
        return miss(str(err))
    ctx = (best if w.fixed_context else round_ctx(best)) if best >= CONTEXT_STEP else 0
    if ctx < lo or (w.fixed_context and ctx < hi):
        dev = e.devices[0]
        return miss(
            f"the KV pool left after {gib(dev.weights_bytes)} of weights and "
            f"{gib(dev.compute_bytes + dev.overhead_bytes)} of activations/overhead holds "
            f"{e.kv_capacity_tokens or 0} tokens on {ref.label} (budget {gib(budget)}, "
            f"{gib(e.margin_bytes)} of it kept as margin); {admission(w)} x {lo} tokens needed "
            f"(KV {kv_dtype}, tensor parallel {tp}){_shortfall(spec, art, cfg, lo, used)}"
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
    _, seqs = batch_limits(replace(cfg, max_model_len=ctx))
    settings = replace(settings, max_num_seqs=seqs)
    forecast = _forecast(spec, art, e, ctx, used)
    fit = _on_cards(spec, art, ctx, w, e, used, forecast, settings, draft, warns)
    return replace(fit, parallel=seqs, notes=(*fit.notes, *_concurrency_notes(w, e, ref, seqs)))


def admission(w: Wants) -> int:
    """Whole requests of max_model_len the KV pool must hold for the plan to ship.

    vLLM's own rule is one (vllm/v1/core/kv_cache_utils.py check_enough_kv_cache_memory: "To
    serve at least one request with the models's max seq len"); --max-num-seqs then only shapes
    the profiling run and caps concurrency. That is the rule wherever the user set the
    concurrency, and for a command as typed. Where the planner chooses --max-num-seqs (the
    tier's concurrency) it also sizes the context so that many requests fit at once: its own
    goal, stricter than vLLM's."""
    return 1 if w.parallel_pinned or w.as_typed else w.parallel


def _shortfall(
    spec: ModelSpec, art: Artifact, cfg: VllmConfig, ctx: int, used: tuple[GpuTarget, ...]
) -> str:
    """ "; short by X GiB on each of CUDA0, CUDA1": KV one request of ctx needs, less the pool."""
    try:
        b = budget(spec, art, replace(cfg, max_model_len=ctx))
        need = min_kv_bytes_needed(spec, replace(cfg, max_model_len=ctx))
    except VllmConfigError:
        return ""
    short = need - (b.available_kv_bytes - b.margin_bytes)
    if short <= 0:
        return ""
    names = ", ".join(f"CUDA{g.cuda_ordinal}" for g in used)
    return f"; short by {gib(short)} of KV memory on each of {names}"


def _concurrency_notes(w: Wants, e: Estimate, ref: GpuTarget, seqs: int) -> tuple[str, ...]:
    """What the pool gives, and a --max-num-seqs the planner chose in place of vLLM's default."""
    notes = []
    if e.max_concurrency is not None:
        notes.append(
            f"the KV pool holds {e.max_concurrency:g} requests of max_model_len at once; vLLM "
            f"admits up to --max-num-seqs {seqs} and queues the rest"
        )
    default = default_batch_limits(ref.total_bytes, ref.name)[1]
    if not w.parallel_pinned and not w.as_typed and seqs < default:
        notes.append(
            f"--max-num-seqs {seqs} chosen by the planner (the tier's concurrency) in place of "
            f"vLLM's default {default}: the profiling run's sampler pass then holds {seqs} rows "
            f"of logits instead of {default}, which buys KV memory (set --max-num-seqs to pin it)"
        )
    return tuple(notes)


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
    """`vllm serve MODEL` with every planned value once, canonically spelled; the rest last.

    ``estimate`` (``o.as_typed``): the command exactly as typed; the plan's settings are its
    values and vLLM's defaults, which the argv leaves to vLLM."""
    if o.as_typed and o.user_args:
        return tuple(o.user_args)
    argv: list[str] = ["vllm", "serve", model.path or model.repo]
    if s.revision is not None:
        argv += [_flag("revision"), s.revision]
    argv += [_flag("context"), str(s.max_model_len)]
    argv += [_flag("gpu_memory_utilization"), f"{s.gpu_memory_utilization:g}"]
    if s.tensor_parallel_size > 1 or o.tensor_parallel is not None:
        argv += [_flag("tensor_parallel"), str(s.tensor_parallel_size)]
    if s.pipeline_parallel_size > 1 or o.pipeline_parallel is not None:
        argv += [_flag("pipeline_parallel"), str(s.pipeline_parallel_size)]
    if s.data_parallel_size > 1 or o.data_parallel is not None:
        argv += [_flag("data_parallel"), str(s.data_parallel_size)]
    argv += [_flag("parallel"), str(s.max_num_seqs)]
    if s.kv_cache_dtype != "auto" or o.kv_cache_type is not None:
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
    if s.limit_mm_per_prompt is not None:
        argv += [
            _flag("limit_mm_per_prompt"),
            json.dumps(s.limit_mm_per_prompt, separators=(",", ":"), sort_keys=True),
        ]
    if s.language_model_only is not None:
        argv.append(
            _flag("language_model_only") if s.language_model_only else "--no-language-model-only"
        )
    if s.skip_mm_profiling is not None:
        argv.append(_flag("skip_mm_profiling") if s.skip_mm_profiling else "--no-skip-mm-profiling")
    if s.mm_encoder_tp_mode is not None:
        argv += [_flag("mm_encoder_tp_mode"), s.mm_encoder_tp_mode]
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
