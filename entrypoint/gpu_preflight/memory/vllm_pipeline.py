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

6. Hybrid (sliding-window + full) models. The KV cache groups are built once for the whole model
   (``get_kv_cache_configs`` merges every worker's specs, then ``get_kv_cache_groups``): per
   attention type, its layers in model order are dealt round-robin into ``cdiv(count, group)``
   groups (``_get_kv_cache_groups_uniform_page_size``: ``layers[i::num_groups]``, so each stage
   holds a share of every group), and ``_project_kv_cache_groups_to_worker`` keeps each worker's
   own layers of them. A worker's block is the largest projected group's pages
   (``_get_kv_cache_bytes_per_block``), so ``num_blocks = available // (page x the most layers
   one group has on this stage)``; the scheduler's pool and what one request needs follow the
   global groups.
7. ``--cpu-offload-gb`` is a per-process budget (``maybe_offload_to_cpu``): each rank moves up to
   that many bytes of its own stage's weights to host memory. ``--kv-cache-memory-bytes`` is each
   rank's pool as given (``determine_available_memory``).

So the partition that gives the longest context makes the stages' block counts equal: each layer
costs about the same on every stage (its weights over tp, plus its KV), so the layers go roughly
in proportion to the room each stage has after its own fixed costs. ``partition_layers``
water-fills them, then moves single layers across stage boundaries while the pool grows (a
hybrid model's per-stage block depends on which layer types a stage holds).

8. A draft model (``--speculative-config`` method "draft_model") is built on the last stage only,
   at the target's tensor parallel size, and its layers join that stage's KV block.

Modelled for full-attention and sliding-window models, and for a full-attention target with a
draft; linear-attention (recurrent) layers under pipeline parallel are refused by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from gpu_preflight.memory.types import DeviceMemory, Estimate
from gpu_preflight.memory.vllm import (
    ACTIVATION_FIXED_BYTES,
    CUDA_CONTEXT_BYTES,
    GIB,
    LOAD_FACTOR,
    MIB,
    NON_TORCH_BYTES,
    KvLayout,
    VllmConfig,
    VllmConfigError,
    _check_draft,
    _page_bytes,
    batch_limits,
    buffer_allowance,
    cuda_total_bytes,
    encoder_profile,
    forward_bytes,
    kv_bytes_per_token,
    kv_capacity_tokens,
    kv_layout,
    moe_padding_bytes,
    non_torch_tp_bytes,
    profile_split,
    request_blocks,
    sampler_bytes,
    validate_config,
    weights_per_rank,
)
from gpu_preflight.models.layout import derive_layout, scale_layout
from gpu_preflight.models.types import Artifact, ModelSpec, WeightLayout

# NCCL send/recv between neighbouring stages. vLLM 0.32's "pp" group gets a device communicator
# with PyNccl only: CudaCommunicator (device_communicators/cuda_communicator.py) turns the custom
# all-reduce and symmetric-memory buffers off for any group whose name is not "tp", and the world
# group has no device communicator at all (parallel_state.py init_world_group). So a stage pays
# one NCCL communicator's channel buffers, not the custom all-reduce's: llm-d-planner's vLLM 0.19.0
# logs of Llama-3.1-8B at pipeline parallel 2 and 4 on H100s show 0.07 GiB of non-torch increase per
# stage (bench/gpu_logs.json group llm-d), below one GPU's 0.24-0.27 GiB. A stage is charged one
# GPU's NON_TORCH_BYTES plus this allowance for the pp group's PyNccl buffers.
PP_NON_TORCH_BYTES = 128 * MIB


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
    if arch.recurrent_layers:
        raise VllmConfigError(
            "pipeline parallel is not modelled for linear-attention (recurrent) layers: their "
            "state groups per stage are not; accepted: full-attention and sliding-window models"
        )
    if cfg.draft is not None:
        _check_draft(arch, cfg)


def _type_lists(spec: ModelSpec, cfg: VllmConfig, layout: KvLayout) -> list[list[int]]:
    """The model's attention layers per KV cache spec, in model order, as vLLM buckets them:
    one list when the model has one attention type (or the hybrid manager is off)."""
    arch = spec.arch
    kv = [il for il in range(arch.n_layers) if arch.has_kv(il)]
    if not layout.sliding_groups or not layout.full_groups:
        return [kv]
    sliding = set(arch.sliding_window_layers)
    return [[il for il in kv if il not in sliding], [il for il in kv if il in sliding]]


def stage_block_layers(
    spec: ModelSpec, cfg: VllmConfig, stages: Sequence[Stage], i: int, layout: KvLayout
) -> int:
    """Pages one KV block of stage i spans: the most layers any global KV cache group has on
    this stage (``_project_kv_cache_groups_to_worker`` + ``_get_kv_cache_bytes_per_block``).

    Groups deal each type's layers round-robin (``layers[i::num_groups]``); a full-attention
    model has one group of every layer, so this is the stage's layer count."""
    start = sum(s.layers for s in stages[:i])
    end = start + stages[i].layers
    most = 0
    for layers in _type_lists(spec, cfg, layout):
        n_groups = max(1, math.ceil(len(layers) / layout.group_size))
        counts = [0] * n_groups
        for pos, il in enumerate(layers):
            if start <= il < end:
                counts[pos % n_groups] += 1
        most = max(most, *counts)
    return most


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
    allowance = buffer_allowance(spec.arch)
    whole = weights_per_rank(spec, art, tp) - allowance
    split = art.weight_bytes * factor / tp
    # K/V heads replicated past tp > n_kv_heads (and what vLLM adds on loading): the same
    # per-layer excess on each layer
    replicated = max(0.0, whole - split) * n / spec.arch.n_layers
    return math.ceil(raw * factor / tp + replicated) + allowance


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
    # --cpu-offload-gb: each rank's own budget, taken from its own stage's weights.
    weights = stage_weights(spec, art, tp, stages, i)
    # the expert padding of a Blackwell MoE (moe_padding_bytes), this stage's layer share; the
    # stages carry no card name, so the first card's (cfg.gpu_name) decides
    pad = moe_padding_bytes(spec, art, tp, cfg.gpu_name)
    weights += math.ceil(pad * s.layers / max(1, spec.arch.n_layers))
    last = i == len(stages) - 1
    if cfg.draft is not None and last:
        # vLLM 0.32 builds the drafter on the last pipeline rank only (v1/worker/
        # gpu_model_runner.py: ``if self.speculative_config and get_pp_group().is_last_rank``),
        # at the draft's tensor parallel size (the target's: create_draft_parallel_config, pp 1).
        weights += weights_per_rank(cfg.draft.spec, cfg.draft.artifact, tp)
    weights = max(0, weights - cfg.cpu_offload_bytes)
    act = forward_bytes(spec.arch, tokens, tp)
    if last:
        act = max(act, sampler_bytes(spec.arch, min(seqs, tokens), cfg.vllm_version))
    enc = encoder_profile(spec.arch, cfg) if i == 0 else None
    if enc is not None:
        # The encoder pass runs on the first pipeline rank only (gpu/model_runner.py profile_run:
        # ``self.supports_mm_inputs and self.is_first_pp_rank``); memory/vllm.py EncoderProfile.
        act = max(enc.forward_bytes, enc.cache_bytes + act)
    act += ACTIVATION_FIXED_BYTES
    non_torch = NON_TORCH_BYTES + non_torch_tp_bytes(tp) + PP_NON_TORCH_BYTES
    # The same split as one rank of the whole model (graphs sized by this stage's weights; a
    # --kv-cache-memory-bytes pool is each rank's own).
    requested, graphs, available, margin = profile_split(
        spec.arch,
        cfg,
        requested,
        weights,
        act,
        non_torch,
        with_draft=cfg.draft is not None and last,
    )
    blocks = max(0, available - margin) // stage_block_bytes(spec, cfg, stages, i)
    return StageBudget(requested, weights, act, non_torch, graphs, available, margin, blocks)


def stage_block_bytes(spec: ModelSpec, cfg: VllmConfig, stages: Sequence[Stage], i: int) -> int:
    """Bytes one KV block takes on a rank of stage i.

    With a draft model its layers join the last stage's cache (the drafter is built there only),
    and target and draft layers of one attention type form one group whose block is every
    layer's page (UniformTypeKVCacheSpecs), projected onto each worker's own layers."""
    layout = kv_layout(spec.arch, cfg)
    if cfg.draft is None:
        return layout.page_bytes * max(1, stage_block_layers(spec, cfg, stages, i, layout))
    tp, dtype = cfg.tensor_parallel_size, cfg.kv_cache_dtype
    start = sum(s.layers for s in stages[:i])
    own = sum(1 for il in range(start, start + stages[i].layers) if spec.arch.has_kv(il))
    block = _page_bytes(spec.arch, cfg.block_size, tp, dtype) * own
    if i == len(stages) - 1:
        d = cfg.draft.spec.arch
        block += _page_bytes(d, cfg.block_size, tp, dtype) * d.kv_layer_count
    return max(1, block)


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
            f"holds {kv_capacity_tokens(kv_layout(spec.arch, cfg), blocks)} tokens with its "
            f"margin kept; {parallel} x {cfg.max_model_len} tokens needed"
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
    """Layers per stage that make the engine's pool (the smallest stage's block count) as large
    as whole layers allow.

    ``cards`` gives each stage's card (its ``layers`` are ignored). Water-filling first: every
    stage starts with one layer; each further layer goes to the stage that keeps the most blocks
    after taking it, a layer costing its weights over tp plus a page per block. That is exact for
    a full-attention model whose layers weigh the same; then single layers move across stage
    boundaries while the smallest stage's blocks grow, which settles MoE/dense mixes and a hybrid
    model's per-stage block (``stage_block_layers``).
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
    return _settle(spec, art, cfg, cards, tuple(layers))


def _pool(
    spec: ModelSpec, art: Artifact, cfg: VllmConfig, cards: Sequence[Stage], parts: Sequence[int]
) -> tuple[int, int]:
    """(the engine's pool in blocks, the sum of every stage's own blocks) for this partition."""
    stages = [replace(c, layers=k) for c, k in zip(cards, parts, strict=True)]
    each = [stage_budget(spec, art, cfg, stages, i).blocks for i in range(len(stages))]
    return min(each), sum(each)


def _settle(
    spec: ModelSpec, art: Artifact, cfg: VllmConfig, cards: Sequence[Stage], parts: tuple[int, ...]
) -> tuple[int, ...]:
    """Move one layer at a time across a stage boundary while the pool (then the total) grows."""
    best = _pool(spec, art, cfg, cards, parts)
    for _ in range(spec.arch.n_layers * len(cards)):  # each move strictly improves: bounded
        moved = None
        for b in range(len(parts) - 1):
            for d in (1, -1):
                trial = list(parts)
                trial[b] += d
                trial[b + 1] -= d
                if min(trial) < 1:
                    continue
                got = _pool(spec, art, cfg, cards, trial)
                if got > best:
                    best, moved = got, tuple(trial)
        if moved is None:
            break
        parts = moved
    return parts


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
        kv = blocks * stage_block_bytes(spec, cfg, stages, i)
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
    sizing = (
        f"a KV pool of {cfg.kv_cache_memory_bytes / GIB:.2f} GiB per rank (--kv-cache-memory-bytes)"
        if cfg.kv_cache_memory_bytes is not None
        else f"budget {cfg.gpu_memory_utilization:.2f} of each card"
    )
    notes = [
        f"pipeline parallel {len(stages)} x tensor parallel {tp}: VLLM_PP_LAYER_PARTITION="
        f"{partition}; {sizing}",
        f"every stage keeps {blocks} KV blocks, the poorest stage's (vLLM sets each rank's "
        "count to the smallest, get_kv_cache_configs)",
        f"profiling pass of {tokens} tokens on every stage, {min(seqs, tokens)} sampled rows on the "
        "last (its logits peak)",
    ]
    if cfg.draft is not None:
        notes.append(
            f"draft {cfg.draft.spec.id} on the last stage (vLLM builds the drafter there), its "
            "KV layers in that stage's blocks"
        )
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
        kv_bytes_per_token=kv_bytes_per_token(spec, cfg.kv_cache_dtype, tp, cfg.draft),
        kv_capacity_tokens=kv_capacity_tokens(layout, blocks),
        max_concurrency=round(blocks / reqs, 2) if reqs else None,
        margin_bytes=max(b.margin_bytes for b in budgets),
        notes=tuple(notes),
    )
