"""vLLM's memory (V1 engine), predicted the way vLLM budgets it at start-up (pure arithmetic).

What vLLM does (vllm/v1/worker/gpu_worker.py, vllm/utils mem profiling):
1. At start it requires ``gpu_memory_utilization x TOTAL`` to be free, else it refuses ("Free
   memory on device ... is less than desired GPU memory utilization").
2. It loads the weights, runs a profiling forward pass of ``max_num_batched_tokens`` tokens (and a
   dummy sampler pass of ``max_num_seqs`` rows of logits), and measures the peak activation and the
   non-torch memory (CUDA context, cuBLAS workspace, NCCL buffers under tensor parallel).
3. KV cache = budget - weights - peak activation - non-torch. It logs the pool as "GPU KV cache
   size: N tokens" and "Maximum concurrency for L tokens per request: X".
4. CUDA graphs are captured afterwards, in memory on top of that budget (unless --enforce-eager).
So the process occupies about ``budget + CUDA graphs``; the plan must leave room for the graphs
outside the budget, which is why ``choose_gpu_memory_utilization`` subtracts them.

The activation and overhead terms cannot be measured without a GPU; the coefficients below are
set from published start-up logs (bench/vllm_reference.json) and kept on the high side, because
under-predicting activations means a smaller KV pool than planned, while over-predicting only
wastes a little.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpu_preflight.memory.types import DeviceMemory, Estimate
from gpu_preflight.models.types import Artifact, ModelSpec

GIB = 2**30
MIB = 2**20
BLOCK_SIZE = 16
NON_TORCH = 640 * MIB  # CUDA context + cuBLAS/cuBLASLt workspaces on one GPU
NCCL_PER_RANK = 512 * MIB  # NCCL buffers and the custom all-reduce under tensor parallel
CUDA_GRAPHS = 1 * GIB  # captured decode graphs (67 batch sizes by default); logged 0.3-1.3 GiB
UTILIZATION_CAP = 0.92
UTILIZATION_SAFETY = 256 * MIB
KV_DTYPE_BYTES = {"auto": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}


@dataclass(frozen=True)
class VllmConfig:
    max_model_len: int
    gpu_total_bytes: int  # per GPU, NVML total
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # None: vLLM's default for the OpenAI server
    kv_cache_dtype: str = "auto"
    enforce_eager: bool = False
    block_size: int = BLOCK_SIZE


def default_max_num_batched_tokens(max_model_len: int) -> int:
    # V1 with chunked prefill: 8192 for the OpenAI API server (vllm/engine/arg_utils.py).
    return 8192 if max_model_len >= 8192 else max(2048, max_model_len)


def kv_heads_per_rank(n_kv_heads: int, tp: int) -> int:
    # KV heads are split across ranks; with more ranks than heads each rank keeps one replica.
    return max(1, math.ceil(n_kv_heads / tp))


def kv_bytes_per_token(spec: ModelSpec, kv_cache_dtype: str = "auto", tp: int = 1) -> int:
    """K+V bytes per token on one rank, over all attention layers."""
    a = spec.arch
    dtype = KV_DTYPE_BYTES.get(kv_cache_dtype)
    if dtype is None:
        raise ValueError(
            f"unknown vLLM kv_cache_dtype {kv_cache_dtype!r}; known: {', '.join(KV_DTYPE_BYTES)}"
        )
    heads = kv_heads_per_rank(a.n_kv_heads, tp)
    return a.n_layers * heads * (a.head_dim + a.v_head_dim) * dtype


def activation_peak(spec: ModelSpec, cfg: VllmConfig) -> int:
    """Peak torch activation of the profiling run, per rank."""
    a = spec.arch
    t = cfg.max_num_batched_tokens or default_max_num_batched_tokens(cfg.max_model_len)
    tp = cfg.tensor_parallel_size
    ff = a.intermediate_size
    if a.is_moe:
        ff = max(
            (a.n_experts_per_token or 1) * (a.expert_intermediate_size or 0), a.intermediate_size
        )
    q = a.n_heads * a.head_dim
    kv = 2 * a.n_kv_heads * a.head_dim
    # bf16 hidden states (a few live copies), the fused QKV output and the gate/up output, per rank.
    layer = t * 2 * (4 * a.hidden_size + (q + kv) // tp + 2 * (2 * ff) // tp)
    # Logits of the sampled rows in fp32 (the dummy sampler pass), plus softmax/sort copies.
    sampler = (
        cfg.max_num_seqs * a.vocab_size * 4 * 3 // tp
        if tp > 1
        else cfg.max_num_seqs * a.vocab_size * 4 * 3
    )
    return int(layer + sampler)


def weights_per_rank(art: Artifact, tp: int) -> int:
    return math.ceil(art.weight_bytes / tp)


def estimate_vllm(spec: ModelSpec, art: Artifact, cfg: VllmConfig) -> Estimate:
    tp = cfg.tensor_parallel_size
    budget = int(cfg.gpu_memory_utilization * cfg.gpu_total_bytes)
    weights = weights_per_rank(art, tp)
    act = activation_peak(spec, cfg)
    non_torch = NON_TORCH + (NCCL_PER_RANK if tp > 1 else 0)
    graphs = 0 if cfg.enforce_eager else CUDA_GRAPHS
    kv_mem = max(0, budget - weights - act - non_torch)
    per_token = kv_bytes_per_token(spec, cfg.kv_cache_dtype, tp)
    page = per_token * cfg.block_size
    blocks = kv_mem // page if page else 0
    capacity = blocks * cfg.block_size
    devices = tuple(
        DeviceMemory(
            f"CUDA{i}",
            weights,
            blocks * page,
            act,
            non_torch + graphs,
            weights + blocks * page + act + non_torch + graphs,
        )
        for i in range(tp)
    )
    notes = [
        f"budget {cfg.gpu_memory_utilization:.2f} x {cfg.gpu_total_bytes / GIB:.1f} GiB = {budget / GIB:.2f} GiB "
        f"per GPU; CUDA graphs ({graphs / GIB:.1f} GiB) come on top of it",
        f"profiling run of {cfg.max_num_batched_tokens or default_max_num_batched_tokens(cfg.max_model_len)} "
        f"tokens and {cfg.max_num_seqs} sampled rows: {act / GIB:.2f} GiB activation peak (modelled)",
    ]
    return Estimate(
        engine="vllm",
        context=cfg.max_model_len,
        parallel=cfg.max_num_seqs,
        devices=devices,
        kv_bytes_per_token=per_token,
        kv_capacity_tokens=capacity,
        max_concurrency=round(capacity / cfg.max_model_len, 2) if cfg.max_model_len else None,
        notes=tuple(notes),
    )


def choose_gpu_memory_utilization(
    total_bytes: int, free_bytes: int, reserve_bytes: int, enforce_eager: bool = False
) -> float:
    """A fraction of TOTAL memory that vLLM's start-up check against FREE memory will accept.

    What is free, minus the reserve for co-resident services, minus the CUDA graphs vLLM captures
    outside its budget, minus a safety allowance; rounded down to 0.01 and capped at 0.92.
    """
    graphs = 0 if enforce_eager else CUDA_GRAPHS
    room = free_bytes - reserve_bytes - graphs - UTILIZATION_SAFETY
    if room <= 0 or total_bytes <= 0:
        return 0.0
    return min(UTILIZATION_CAP, math.floor(room / total_bytes * 100) / 100)
