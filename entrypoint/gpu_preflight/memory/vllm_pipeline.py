"""vLLM pipeline parallel over cards that differ: each stage's memory with its own layers. Pure.

What vLLM 0.32 does, read from its source:

1. Layers. ``get_pp_indices`` (vllm/distributed/utils.py) gives stage s the layers
   ``[sum(p[:s]), sum(p[:s]) + p[s])`` of the partition ``p`` read from ``VLLM_PP_LAYER_PARTITION``
   (comma-separated, one entry per stage, summing to ``num_hidden_layers``, else a ValueError),
   and without it an even split. The plan always sets it: an even split overflows the small card.
2. Ranks. Rank ``pp_rank x tp + tp_rank`` runs on local device ``cuda:rank``
   (vllm/v1/executor/multiproc_executor.py), so stage s holds CUDA ordinals s*tp .. s*tp+tp-1.
3. What else a stage holds. The first builds ``embed_tokens`` (VocabParallelEmbedding, split tp
   ways); the last builds the final norm and ``lm_head`` (ParallelLMHead), and with tied
   embeddings ``embed_tokens`` too (models/llama.py, qwen2.py, qwen3.py: ``is_first_rank or
   (tie_word_embeddings and is_last_rank)``). The other stages hold PPMissingLayer placeholders.
4. Budget. Every worker applies the one ``--gpu-memory-utilization`` to its own card's total and
   profiles its own peak (v1/worker/gpu_worker.py ``determine_available_memory``); the dummy
   sampler pass runs on the last rank only (v1/worker/gpu_model_runner.py ``profile_run``:
   ``if get_pp_group().is_last_rank``), so the large logits peak is the last stage's alone.
5. KV. A worker's block covers its own layers: ``num_blocks = available // page // layers``.
   ``get_kv_cache_configs`` (v1/core/kv_cache_utils.py) then re-plans every rank with exactly
   the smallest rank's block count ("Change the num_blocks of each rank to the smallest among all
   ranks"): the engine's pool is the poorest stage's, and a stage with room to spare leaves it
   unallocated.

So the partition that gives the longest context makes the stages' block counts equal: each layer
costs the same on every stage (its weights over tp, plus its KV), so the layers go in proportion
to the room each stage has after its own fixed costs. ``partition_layers`` water-fills them.

Modelled for full-attention models without a draft; anything else is refused by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from gpu_preflight.memory.types import DeviceMemory, Estimate
from gpu_preflight.memory.vllm import (
    ACTIVATION_FIXED_BYTES,
    CUDA_CONTEXT_BYTES,
    CUDA_GRAPH_BYTES,
    GIB,
    LOAD_FACTOR,
    MARGIN_FIXED_BYTES,
    NON_TORCH_BYTES,
    NON_TORCH_TP_BYTES,
    WEIGHT_EXTRA_BYTES,
    VllmConfig,
    VllmConfigError,
    batch_limits,
    cuda_total_bytes,
    forward_bytes,
    kv_bytes_per_token,
    kv_layout,
    non_torch_tp_bytes,
    request_blocks,
    sampler_bytes,
    validate_config,
    weights_per_rank,
)
from gpu_preflight.models.layout import derive_layout, scale_layout
from gpu_preflight.models.types import Artifact, ModelSpec, WeightLayout

# NCCL send/recv between neighbouring stages (its channel buffers per peer). Not measured without
# a GPU: the tensor-parallel-2 figure, which covers one peer's NCCL buffers, on every stage.
PP_NON_TORCH_BYTES = NON_TORCH_TP_BYTES


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: the card its ranks run on (all tp of them alike) and its layers."""

    gpu_total_bytes: int  # NVML total of each of its cards
    layers: int
    gpu_reserved_bytes: int | None = None  # NVML total - CUDA total, when the probe knows it


@dataclass(frozen=True)
class StageBudget:
    """One stage's rank as vLLM's profiler splits it, in bytes."""

    budget_bytes: int  # gpu_memory_utilization x this card's CUDA total
    weights_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    cuda_graph_bytes: int
    available_kv_bytes: int  # "Available KV cache memory" on this rank (may be negative)
    margin_bytes: int
    blocks: int  # what this rank alone could hold: available less margin // page // layers


def _layout(spec: ModelSpec, art: Artifact) -> WeightLayout:
    if art.layout is not None:
        return art.layout
    return scale_layout(derive_layout(spec.arch, art.quant, "vllm"), art.weight_bytes)


def check_pipeline(spec: ModelSpec, cfg: VllmConfig, stages: Sequence[Stage]) -> None:
    """The settings this model covers, or VllmConfigError naming what it does not."""
    validate_config(cfg)
    arch = spec.arch
    if len(stages) < 2:
        raise VllmConfigError(f"pipeline parallel needs 2 or more stages, got {len(stages)}")
    if any(s.layers < 1 for s in stages) or sum(s.layers for s in stages) != arch.n_layers:
        raise VllmConfigError(
            f"VLLM_PP_LAYER_PARTITION {','.join(str(s.layers) for s in stages)} must give every "
            f"stage a layer and sum to the model's {arch.n_layers} (get_pp_indices)"
        )
    if (arch.sliding_window and arch.sliding_window_layers) or arch.recurrent_layers:
        raise VllmConfigError(
            "pipeline parallel is modelled for full-attention models only (a sliding-window "
            "or linear-attention model's KV groups differ between stages)"
        )
    if cfg.draft is not None or cfg.cpu_offload_bytes or cfg.kv_cache_memory_bytes is not None:
        raise VllmConfigError(
            "pipeline parallel is modelled without a draft model, --cpu-offload-gb or "
            "--kv-cache-memory-bytes"
        )


def stage_weights(spec: ModelSpec, art: Artifact, tp: int, stages: Sequence[Stage], i: int) -> int:
    """Weight bytes one rank of stage i holds: its layers, and the embeddings / LM head / final
    norm where vLLM builds them, split tp ways (the same rules as ``weights_per_rank``)."""
    lay = _layout(spec, art)
    start = sum(s.layers for s in stages[:i])
    n = stages[i].layers
    raw = sum(lay.per_layer_bytes[start : start + n])
    first, last = i == 0, i == len(stages) - 1
    if first or (last and spec.arch.tied_embeddings):
        raw += lay.token_embd_bytes
    if last:
        raw += lay.output_bytes + lay.other_bytes
    factor = LOAD_FACTOR.get(art.quant.lower(), 1.0)
    whole = weights_per_rank(spec, art, tp) - WEIGHT_EXTRA_BYTES
    split = art.weight_bytes * factor / tp
    # K/V heads replicated past tp > n_kv_heads: the same per-layer excess on each layer
    replicated = max(0.0, whole - split) * n / spec.arch.n_layers
    return math.ceil(raw * factor / tp + replicated) + WEIGHT_EXTRA_BYTES


def stage_budget(
    spec: ModelSpec, art: Artifact, cfg: VllmConfig, stages: Sequence[Stage], i: int
) -> StageBudget:
    """Stage i's profiler split. ``cfg`` holds the settings every rank shares; the batch limits
    are the first card's (EngineArgs resolves them once, on cuda:0)."""
    s = stages[i]
    tp = cfg.tensor_parallel_size
    tokens, seqs = batch_limits(cfg)
    total = cuda_total_bytes(
        replace(cfg, gpu_total_bytes=s.gpu_total_bytes, gpu_reserved_bytes=s.gpu_reserved_bytes)
    )
    requested = int(cfg.gpu_memory_utilization * total)
    weights = stage_weights(spec, art, tp, stages, i)
    act = forward_bytes(spec.arch, tokens, tp)
    if i == len(stages) - 1:
        act = max(act, sampler_bytes(spec.arch, min(seqs, tokens)))
    act += ACTIVATION_FIXED_BYTES
    non_torch = NON_TORCH_BYTES + non_torch_tp_bytes(tp) + PP_NON_TORCH_BYTES
    graphs = 0 if cfg.enforce_eager else CUDA_GRAPH_BYTES
    inside = graphs if cfg.cudagraph_in_budget else 0
    available = requested - weights - act - non_torch - inside
    margin = (act + non_torch) // 8 + weights // 100 + MARGIN_FIXED_BYTES
    page = kv_layout(spec.arch, cfg).page_bytes
    blocks = max(0, available - margin) // page // s.layers
    return StageBudget(requested, weights, act, non_torch, graphs, available, margin, blocks)


def pipeline_blocks(
    spec: ModelSpec, art: Artifact, cfg: VllmConfig, stages: Sequence[Stage]
) -> tuple[int, tuple[StageBudget, ...]]:
    """The engine's pool in blocks (the smallest stage's, get_kv_cache_configs) and each stage."""
    check_pipeline(spec, cfg, stages)
    budgets = tuple(stage_budget(spec, art, cfg, stages, i) for i in range(len(stages)))
    return min(b.blocks for b in budgets), budgets


def pipeline_refusal(
    spec: ModelSpec, art: Artifact, cfg: VllmConfig, stages: Sequence[Stage], parallel: int = 1
) -> str | None:
    """Why vLLM would refuse these settings (or its pool would not hold ``parallel`` requests of
    max_model_len), judged with each stage's margin kept; None when it starts with room."""
    blocks, budgets = pipeline_blocks(spec, art, cfg, stages)
    for i, b in enumerate(budgets):
        if b.available_kv_bytes <= 0:
            return (
                f"No available memory for the cache blocks on pipeline stage {i}: "
                f"{b.weights_bytes / GIB:.2f} GiB of weights ({stages[i].layers} layers) and "
                f"{(b.activation_bytes + b.non_torch_bytes) / GIB:.2f} GiB of activation/overhead "
                f"exceed its {b.budget_bytes / GIB:.2f} GiB budget"
            )
    tokens, _ = batch_limits(cfg)
    need = parallel * request_blocks(kv_layout(spec.arch, cfg), cfg.max_model_len, tokens)
    if blocks < need:
        poorest = min(range(len(budgets)), key=lambda i: budgets[i].blocks)
        return (
            f"the KV pool, the poorest stage's (stage {poorest}: {stages[poorest].layers} layers), "
            f"holds {blocks * cfg.block_size} tokens with its margin kept; {parallel} x "
            f"{cfg.max_model_len} tokens needed"
        )
    return None


def max_model_len_pipeline(
    spec: ModelSpec,
    art: Artifact,
    cfg: VllmConfig,
    stages: Sequence[Stage],
    parallel: int = 1,
    limit: int | None = None,
) -> int:
    """The largest max_model_len (<= limit) whose ``parallel`` requests the pool holds; 0: none."""
    top = limit if limit is not None else spec.arch.max_position_embeddings
    lo, hi, best = 1, top, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if pipeline_refusal(spec, art, replace(cfg, max_model_len=mid), stages, parallel) is None:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def partition_layers(
    spec: ModelSpec, art: Artifact, cfg: VllmConfig, cards: Sequence[Stage]
) -> tuple[int, ...]:
    """Layers per stage that make the stages' KV block counts as equal as whole layers allow.

    ``cards`` gives each stage's card (its ``layers`` are ignored). Water-filling: every stage
    starts with one layer; each further layer goes to the stage that keeps the most blocks after
    taking it. A layer costs the same everywhere (weights over tp plus a page of KV per block), so
    this maximises the smallest stage's blocks, which is the engine's pool.
    """
    n = spec.arch.n_layers
    if len(cards) > n:
        raise VllmConfigError(f"{len(cards)} pipeline stages for {n} layers")
    lay = _layout(spec, art)
    per_layer = max(lay.per_layer_bytes) if lay.per_layer_bytes else 0
    factor = LOAD_FACTOR.get(art.quant.lower(), 1.0)
    w = per_layer * factor / cfg.tensor_parallel_size * 1.01  # with the 1 % weight margin
    page = kv_layout(spec.arch, cfg).page_bytes
    # Each stage's room for layers: its budget with one layer, plus that layer back.
    layers = [1] * len(cards)
    trial = [replace(c, layers=1) for c in cards]
    trial[-1] = replace(trial[-1], layers=n - len(cards) + 1)
    room = []
    for i in range(len(cards)):
        b = stage_budget(spec, art, cfg, trial, i)
        # stage_budget counted trial[i].layers layers; take them back out
        room.append(b.available_kv_bytes - b.margin_bytes + w * trial[i].layers)

    def blocks_with(i: int, k: int) -> float:
        return (room[i] - w * k) / (page * k)

    for _ in range(n - len(cards)):
        best = max(range(len(cards)), key=lambda i: (blocks_with(i, layers[i] + 1), -i))
        layers[best] += 1
    return tuple(layers)


def estimate_vllm_pipeline(
    spec: ModelSpec, art: Artifact, cfg: VllmConfig, stages: Sequence[Stage]
) -> Estimate:
    """Per-GPU memory ("CUDA0".. in rank order, tp per stage) and the pool vLLM logs."""
    blocks, budgets = pipeline_blocks(spec, art, cfg, stages)
    layout = kv_layout(spec.arch, cfg)
    tokens, seqs = batch_limits(cfg)
    tp = cfg.tensor_parallel_size
    devices = []
    for i, b in enumerate(budgets):
        # The tensors are shrunk to the smallest stage's block count (get_kv_cache_configs).
        kv = blocks * layout.page_bytes * stages[i].layers
        overhead = b.non_torch_bytes + b.cuda_graph_bytes + CUDA_CONTEXT_BYTES
        for r in range(tp):
            devices.append(
                DeviceMemory(
                    f"CUDA{i * tp + r}",
                    b.weights_bytes,
                    kv,
                    b.activation_bytes,
                    overhead,
                    b.weights_bytes + kv + b.activation_bytes + overhead,
                )
            )
    partition = ",".join(str(s.layers) for s in stages)
    notes = [
        f"pipeline parallel {len(stages)} x tensor parallel {tp}: VLLM_PP_LAYER_PARTITION="
        f"{partition}; budget {cfg.gpu_memory_utilization:.2f} of each card",
        f"every stage keeps {blocks} KV blocks, the poorest stage's (vLLM sets each rank's "
        "count to the smallest, get_kv_cache_configs)",
        f"profiling pass of {tokens} tokens on every stage, {min(seqs, tokens)} sampled rows on the "
        "last (its logits peak)",
    ]
    refusal = pipeline_refusal(spec, art, cfg, stages)
    if refusal:
        notes.append(f"vLLM would refuse to start: {refusal}")
    reqs = request_blocks(layout, cfg.max_model_len, tokens)
    return Estimate(
        engine="vllm",
        context=cfg.max_model_len,
        parallel=seqs,
        devices=tuple(devices),
        # per rank, summed over the model's layers: the figure plan.json reports for TP too
        kv_bytes_per_token=kv_bytes_per_token(spec, cfg.kv_cache_dtype, tp),
        kv_capacity_tokens=blocks * layout.block_size,
        max_concurrency=round(blocks / reqs, 2) if reqs else None,
        margin_bytes=max(b.margin_bytes for b in budgets),
        notes=tuple(notes),
    )
