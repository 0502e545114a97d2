"""vLLM's memory (V1 engine), predicted the way vLLM sizes it at start-up (pure arithmetic).

What vLLM does, read from its source (vllm-project/vllm, the 0.10-0.2x line):

1. ``Worker.init_device`` (vllm/v1/worker/gpu_worker.py) takes a snapshot after its own CUDA
   context exists and refuses to start unless ``gpu_memory_utilization x total`` is FREE:
   "Free memory on device ... is less than desired GPU memory utilization". ``total`` is what
   ``cudaMemGetInfo`` reports, a few hundred MiB less than NVML's total.
2. ``determine_available_memory`` loads the weights ("Model loading took X GiB"), runs
   ``profile_run``: one forward pass of ``max_num_batched_tokens`` tokens and a dummy sampler
   pass over ``min(max_num_seqs, max_num_batched_tokens)`` rows of logits, and measures the torch
   peak increase and the non-torch increase (``memory_profiling`` in vllm/utils/mem_utils.py).
   KV memory = requested - weights - peak activation - non-torch ("Available KV cache memory").
   From v0.21 the CUDA graph pool is estimated too and taken out of the same budget
   (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS); before that, graphs are captured afterwards, on
   top of the budget.
3. ``get_kv_cache_configs`` (vllm/v1/core/kv_cache_utils.py) turns that memory into blocks of
   ``block_size`` tokens. A page is ``block_size x kv_heads_per_rank x (head_dim_k + head_dim_v)
   x dtype bytes`` per layer. All-full-attention models: one group of every layer,
   ``num_blocks = memory // page // n_layers``. Hybrid models (sliding window + full, e.g. Gemma
   2/3, gpt-oss) get the hybrid allocator: layers are split into groups of equal size, the blocks
   are shared by one layer of each group, ``num_blocks = memory // page // group_size``. It logs
   "GPU KV cache size: num_blocks // n_groups x block_size tokens" and "Maximum concurrency for L
   tokens per request", and refuses to start when one request of ``max_model_len`` does not fit:
   "To serve at least one request with the models's max seq len ...".

Everything except the activation peak, the non-torch increase and the CUDA graph pool is exact
arithmetic on the model config. Those three cannot be measured without a GPU; their constants
below are fitted to published start-up logs (bench/vllm_reference.json, checked by
bench/vllm_kv.py) and the plan keeps ``margin_bytes`` of KV memory unused on top, because
under-predicting them means vLLM refuses the context the plan promised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from gpu_preflight.memory.types import DeviceMemory, Estimate
from gpu_preflight.models.layout import derive_layout, scale_layout
from gpu_preflight.models.types import Artifact, ModelArch, ModelSpec

GIB = 2**30
MIB = 2**20
BLOCK_SIZE = 16
KV_DTYPE_BYTES: dict[str, int | None] = {"auto": None, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}
MODEL_DTYPE_BYTES = 2  # bf16/fp16 activations and "auto" KV; every catalog model runs in 16-bit
# NVML total minus the total cudaMemGetInfo reports: 407-479 MiB on H100s, 430 on an RTX 3090, 453
# on an RTX 5090, 768 on an A100 80GB (start-up logs cited in bench/vllm_reference.json and
# docs/memory-vllm.md). Used when the probe has no reserved figure; margin_bytes covers the rest.
DRIVER_RESERVED_BYTES = 512 * MIB
# The vLLM process's own CUDA context, created before its free-memory snapshot: outside the
# budget, but it must be free for the start-up check to pass (logged "700 MiB" for all
# processes on one A100; a torch context alone is 300-500 MiB).
CUDA_CONTEXT_BYTES = 640 * MIB
# Non-torch increase during profiling ("non-torch forward increase memory", vllm/v1/worker/
# gpu_worker.py determine_available_memory, measured by vllm/utils/mem_utils.py memory_profiling):
# cuBLAS/cuBLASLt workspaces, attention-backend buffers, and under tensor parallel NCCL's channel
# buffers and the custom all-reduce's IPC buffers (vllm/distributed/device_communicators/
# cuda_communicator.py CudaCommunicator: PyNccl + CustomAllreduce for the "tp" group).
# Keyed to llm-d-planner's vLLM 0.19.0 H100 logs (bench/gpu_logs.json, group llm-d): one GPU
# 0.24-0.27 GiB in 36 of 37 runs (0.46 for Granite 3.1), TP 2 2.06-2.11 GiB, TP 4 2.13-2.21 GiB
# per GPU. Between 0.19 and 0.32 the communicators the "tp" group builds are the same (PyNccl,
# custom all-reduce, symmetric memory off by default), so the figures carry over; no 0.32 log
# on a GPU was available to check them. The constants sit at the top of each range: 0.28 GiB,
# 2.15 GiB at TP 2, 2.25 GiB from TP 4 on (per GPU, the one-GPU part included). The old 0.56 GiB
# at TP 2 was under in 37 of 39 llm-d runs (issue 20).
NON_TORCH_BYTES = 288 * MIB
NON_TORCH_TP_BYTES = 2200 * MIB - NON_TORCH_BYTES
NON_TORCH_TP4_BYTES = 2304 * MIB - NON_TORCH_BYTES


def non_torch_tp_bytes(tensor_parallel_size: int) -> int:
    """Non-torch bytes tensor parallel adds per rank (NCCL, custom all-reduce)."""
    if tensor_parallel_size <= 1:
        return 0
    return NON_TORCH_TP_BYTES if tensor_parallel_size <= 2 else NON_TORCH_TP4_BYTES


# Activation peak = max(forward pass, dummy sampler pass) + a fixed allowance. The sampler pass
# dominates for the default max_num_seqs (1024 rows on an H100). vLLM 0.32's profile_run
# (vllm/v1/worker/gpu/model_runner.py, Model Runner V2) runs _dummy_sampler_run over one row per
# request (min(max_num_seqs, max_num_batched_tokens) rows): compute_logits, then the sampler,
# which during profiling skips top-k/top-p and logprobs ("the sampler may skip top_k, top_p, and
# logprobs"): fp32 logits, the temperature-scaled copy and the sampling buffers. llm-d-planner's
# vLLM 0.19.0 logs (the 0.17+ sampler; bench/gpu_logs.json group llm-d) show 14.8-16.0 bytes per
# logit (torch peak / (1024 x vocab): Llama-3.1-8B 1.89 GiB, Qwen2.5-7B 2.21 GiB, Gemma-2 3.62-
# 3.66 GiB); 16, the top of that range. The pre-0.17 logs (vLLM 0.11-0.13, 38-39 bytes: top-k/
# top-p sort values and int64 indices) no longer apply: the 39 used before charged a median
# +159 % of activation on the llm-d runs (issue 20).
SAMPLER_BYTES_PER_LOGIT = 16
# The sampler before 0.17 (top-k/top-p sort values and int64 indices in the profile pass): what
# the published 0.10-0.13 logs in bench/gpu_logs.json show. Only the benchmark asks for it, to
# compare those logs on their own version's terms; the planner plans for the pinned vLLM.
SAMPLER_BYTES_PER_LOGIT_PRE_017 = 39
SAMPLER_CHANGED_IN = (0, 17)
PINNED_VLLM = (0, 32)  # the image's vLLM (.ci/vllm.sh); every constant here is keyed to it
ACTIVATION_FIXED_BYTES = 128 * MIB
# CUDA graphs before v0.21: captured after the KV pool is sized (gpu_model_runner.py
# capture_model, "Graph capturing finished ... took X GiB"), on top of the budget: 0.23-1.03 GiB
# logged for 8B-120B models (decode sizes up to 512). The largest pool in bench/gpu_logs.json is
# gpt-oss-120b's 1.03 GiB next to 64.4 GiB of weights (llm-d-benchmark, H100), hence 1.6 % of a
# rank's weights as a floor, for every version. This allowance also stands in for 0.21+ when the
# caller does not give the architecture and the settings (cuda_graph_bytes without arch/cfg).
CUDA_GRAPH_BYTES = 1 * GIB
CUDA_GRAPH_WEIGHT_FRACTION = 0.016
# CUDA graphs from v0.21, keyed to the image's vLLM 0.32. Worker.determine_available_memory
# (vllm/v1/worker/gpu_worker.py) takes the model runner's profile_cudagraph_memory() estimate out
# of the KV budget ("Estimated CUDA graph memory: X GiB total"). With the default Model Runner V2
# (vllm/v1/worker/gpu/cudagraph_utils.py profile_cudagraph_memory) it captures every PIECEWISE
# graph against a throwaway KV cache and measures them, captures the two largest FULL graphs and
# extrapolates first + (n_full - 1) x second (_extrapolate_full_graph_memory, at least 1 MiB per
# graph). What it depends on: the number of captures (capture sizes below: max_num_seqs,
# max_num_batched_tokens, the speculative query length, the GPU), the activations of the largest
# capture (the pool the first capture allocates), tensor parallel, and for hybrid models with
# recurrent (GDN) layers a transient that grows with max_num_batched_tokens (vllm issues 50780,
# 52872). Not on the layer count: Qwen3-8B (36 layers) and a 64-layer hybrid both logged 0.52 GiB
# for the same 51 + 35 graphs, 6.2 MiB a graph. enforce_eager / cudagraph_mode NONE: no graphs.
#
# The published 0.21+ estimates (bench/gpu_logs.json, component cuda_graph; gpu-logs.md lists
# them) bound the constants, each set at or above every one of them:
# - per graph: 8 MiB at TP 1 (6.2 MiB logged, a 29 % margin); 12 MiB from TP 2 on, where the
#   custom all-reduce registers every graph's buffers ("Registering N cuda graph addresses").
#   The TP 2-4 logs found are all speculative-decoding runs whose figure includes the drafter's
#   graphs (13-27 MiB per target graph): the planner covers those with DRAFT_CUDA_GRAPH_BYTES.
# - a fixed 32 MiB and the largest capture's forward activations (forward_bytes), the first
#   capture's pool;
# - recurrent layers: 1 KiB per layer and batched token (a 64-layer hybrid on an RTX 5090, 48 GDN
#   layers: 0.52 -> 0.89 GiB going from 4096 to 8192 batched tokens, vllm issue 52872).
# Large MoE and DP/EP deployments log far more (118.65 GiB at DP 4 / EP, vllm issue 53013;
# 20.88 GiB with MTP in a fork); the planner serves neither.
CG_BASE_BYTES = 32 * MIB
CG_PER_GRAPH_BYTES = 8 * MIB
CG_PER_GRAPH_TP_BYTES = 12 * MIB
CG_RECURRENT_BYTES_PER_TOKEN = 1024
# VllmConfig._set_cudagraph_sizes: the default ceiling of the capture sizes, 1024 on data-centre
# Blackwell (device capability family 100: B200, B300, GB200, GB300), else 512.
CG_MAX_CAPTURE = 512
CG_MAX_CAPTURE_BLACKWELL = 1024


def cudagraph_capture_sizes(
    max_num_seqs: int,
    max_num_batched_tokens: int,
    *,
    decode_query_len: int = 1,
    max_capture: int = CG_MAX_CAPTURE,
    model_capture: int | None = None,
) -> tuple[int, ...]:
    """The token counts vLLM 0.32 captures graphs for when --cudagraph-capture-sizes is not given.

    vllm/config/vllm.py VllmConfig._set_cudagraph_sizes: ceiling min(max_num_seqs x
    decode_query_len x 2, 512 or 1024, max_num_batched_tokens); 1, 2, 4, multiples of 8 below 256,
    multiples of 16 from 256; max_num_batched_tokens when under the ceiling; the uniform decode
    sizes (max_num_seqs, or request counts x decode_query_len with speculative decoding).
    """
    seqs, q = max(1, max_num_seqs), max(1, decode_query_len)
    # A model's own max_cudagraph_capture_size (model_capture) replaces the default ceiling.
    top = model_capture if model_capture is not None else min(seqs * q * 2, max_capture)
    decode: list[int] = []
    if q > 1:
        reqs = min(seqs, max_capture)
        counts = [n for n in (1, 2, 4) if n <= reqs]
        counts += list(range(8, min(reqs + 1, 256), 8)) + list(range(256, reqs + 1, 16))
        decode = sorted({n * q for n in {*counts, reqs} if n * q <= top})
    elif seqs <= top:
        decode = [seqs]
    top = min(max_num_batched_tokens, top)
    sizes = [n for n in (1, 2, 4) if n <= top]
    if top >= 8:
        sizes += list(range(8, min(top + 1, 256), 8))
    if top >= 256:
        sizes += list(range(256, top + 1, 16))
    if max_num_batched_tokens <= top:
        sizes.append(max_num_batched_tokens)
    sizes += [n for n in decode if n <= max_num_batched_tokens]
    return tuple(sorted(set(sizes)))


def cudagraph_counts(
    sizes: tuple[int, ...], max_num_seqs: int, decode_query_len: int = 1
) -> tuple[int, int]:
    """(PIECEWISE, FULL) graphs of FULL_AND_PIECEWISE, 0.32's default cudagraph_mode.

    vllm/v1/worker/gpu/cudagraph_utils.py (CudaGraphManager): one PIECEWISE (mixed batch) graph
    per capture size; one FULL (uniform decode) graph per size rounded up to the query length
    that fits max_num_seqs requests and the largest capture size.
    """
    if not sizes:
        return 0, 0
    q = max(1, decode_query_len)
    full = {
        -(-s // q) * q
        for s in sizes
        if -(-s // q) * q <= min(sizes[-1], max_num_seqs * q) and -(-s // q) <= max_num_seqs
    }
    return len(sizes), len(full)


# vllm/model_executor/models/config.py GptOssForCausalLMConfig.verify_and_update_config: gpt-oss
# sets max_cudagraph_capture_size 1024 "for performance" (83 graphs instead of 67) unless the user
# set capture sizes; llm-d's vLLM 0.19 logs of gpt-oss-20b show 83 + 83 graphs up to 1024 tokens.
MODEL_CAPTURE_SIZE = {"gpt-oss": 1024}


def model_capture(arch: ModelArch) -> int | None:
    """The capture ceiling a model's own config hook sets (None: vLLM's default)."""
    return MODEL_CAPTURE_SIZE.get(arch.architecture)


def is_blackwell_datacenter(gpu_name: str | None) -> bool:
    name = (gpu_name or "").upper()
    return any(k in name for k in ("B200", "B300", "GB200", "GB300"))


def cuda_graph_estimate(
    arch: ModelArch,
    *,
    tensor_parallel_size: int,
    piecewise: int,
    full: int,
    largest_capture: int,
    max_num_batched_tokens: int,
) -> int:
    """profile_cudagraph_memory's estimate for given graph counts (see CG_PER_GRAPH_BYTES)."""
    tp = max(1, tensor_parallel_size)
    per_graph = CG_PER_GRAPH_TP_BYTES if tp > 1 else CG_PER_GRAPH_BYTES
    return (
        CG_BASE_BYTES
        + (piecewise + full) * per_graph
        + (forward_bytes(arch, largest_capture, tp) if largest_capture > 0 else 0)
        + len(arch.recurrent_layers) * max_num_batched_tokens * CG_RECURRENT_BYTES_PER_TOKEN
    )


def cuda_graph_bytes(
    weights_per_rank_bytes: int,
    *,
    arch: ModelArch | None = None,
    cfg: VllmConfig | None = None,
) -> int:
    """CUDA graph memory one rank holds (before v0.21) or reserves in the budget (0.21+).

    With the architecture and a config that counts graphs inside the budget (vLLM >= 0.21, the
    image's 0.32) this is profile_cudagraph_memory's estimate, from the capture sizes the settings
    give; otherwise the pre-0.21 allowance. Never below CUDA_GRAPH_WEIGHT_FRACTION of the weights.
    The drafter's graphs are not included (DRAFT_CUDA_GRAPH_BYTES), its query length is.
    """
    floor = math.ceil(weights_per_rank_bytes * CUDA_GRAPH_WEIGHT_FRACTION)
    if arch is None or cfg is None or not cfg.cudagraph_in_budget:
        return max(CUDA_GRAPH_BYTES, floor)
    tokens, seqs = batch_limits(cfg)
    q = 1 + (cfg.draft.num_speculative_tokens if cfg.draft is not None else 0)
    top = CG_MAX_CAPTURE_BLACKWELL if is_blackwell_datacenter(cfg.gpu_name) else CG_MAX_CAPTURE
    sizes = cudagraph_capture_sizes(
        seqs, tokens, decode_query_len=q, max_capture=top, model_capture=model_capture(arch)
    )
    pw, full = cudagraph_counts(sizes, seqs, q)
    est = cuda_graph_estimate(
        arch,
        tensor_parallel_size=cfg.tensor_parallel_size,
        piecewise=pw,
        full=full,
        largest_capture=sizes[-1] if sizes else 0,
        max_num_batched_tokens=tokens,
    )
    return max(est, floor)


# Bytes vLLM holds per byte of checkpoint. MXFP4 experts are re-laid out (padded, swizzled) on
# load: gpt-oss-20b 12.8 GiB on disk -> 13.72 GiB logged, gpt-oss-120b 60.7 -> 64.4-66.0 GiB.
LOAD_FACTOR: dict[str, float] = {"mxfp4": 1.09}
# Other formats load at their checkpoint size plus rotary caches and padding: +0.01-0.07 GiB
# logged (Llama-3.1-8B 14.96 -> 14.99, Qwen3-30B-A3B-FP8 29.02 -> 29.09, Qwen3-32B 61.02 -> 61.03).
WEIGHT_EXTRA_BYTES = 96 * MIB
# KV memory the plan keeps unused (margin_bytes): an eighth of the modelled activation and
# non-torch memory, 1% of the weights and a fixed 256 MiB. It covers the spread of the fitted
# constants (bench/results/vllm-kv.md) and a driver reserve larger than DRIVER_RESERVED_BYTES.
MARGIN_FIXED_BYTES = 256 * MIB
UTILIZATION_SAFETY_BYTES = 256 * MIB
UTILIZATION_CAP = 0.92
# Architectures whose replicated weights weights_per_rank counts on every rank (MLA low-rank
# projections, MoE routers).
_REPLICATED_ARCHS = ("deepseek2", "glm4moe", "qwen3next")
# The smallest kernel block of vLLM's CUDA attention backends (FlashAttention MultipleOf(16),
# FlashInfer 16/32/64, Triton MultipleOf(16): get_supported_kernel_block_sizes), which
# _align_hybrid_block_size rounds a hybrid model's block size to.
HYBRID_KERNEL_BLOCK = 16
# The drafter's own CUDA graphs (it captures decode graphs of its layers for every batch size).
# Not measured: half the target's allowance, on the high side for a draft a tenth the size.
DRAFT_CUDA_GRAPH_BYTES = 512 * MIB


class VllmConfigError(ValueError):
    """A vLLM setting the memory model cannot apply; the message names it and what is accepted."""


@dataclass(frozen=True)
class VllmDraft:
    """A draft model for speculative decoding (``--speculative-config`` method "draft_model").

    vLLM loads it on every rank next to the target (draft TP = target TP) and gives its attention
    layers pages in the same KV cache: a token costs the target's K/V plus the draft's.
    """

    spec: ModelSpec
    artifact: Artifact
    num_speculative_tokens: int = 3


@dataclass(frozen=True)
class VllmConfig:
    """The vLLM settings that decide its memory, named after its CLI flags."""

    max_model_len: int
    gpu_total_bytes: int  # per GPU, NVML total
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    max_num_seqs: int | None = None  # None: vLLM's default for the GPU (256, or 1024 on >=70 GiB)
    max_num_batched_tokens: int | None = None  # None: vLLM's OpenAI-server default for the GPU
    kv_cache_dtype: str = "auto"
    enforce_eager: bool = False
    block_size: int = BLOCK_SIZE
    gpu_name: str | None = None  # NVML name: vLLM's defaults treat A100s apart
    # NVML total - CUDA total when the probe knows it (NVML v2 "reserved"); None: the default.
    gpu_reserved_bytes: int | None = None
    # vLLM >= 0.21 estimates the CUDA graph pool inside the budget (the planner passes True for
    # the image's 0.32); older releases capture graphs afterwards, on top of it.
    cudagraph_in_budget: bool = False
    hybrid_kv_cache: bool = True  # False: --disable-hybrid-kv-cache-manager (or vLLM < 0.10)
    # False only for the V0 engine: it profiles a whole max_model_len prompt at once.
    chunked_prefill: bool = True
    draft: VllmDraft | None = None
    # --cpu-offload-gb: this many bytes of each rank's weights stay in host RAM (UVA, read over
    # PCIe); vllm/model_executor/models/utils.py maybe_offload_to_cpu.
    cpu_offload_bytes: int = 0
    # --kv-cache-memory-bytes: the KV pool is exactly this, and gpu_memory_utilization is not
    # used for it (vllm/v1/worker/gpu_worker.py determine_available_memory).
    kv_cache_memory_bytes: int | None = None
    # vLLM's default for generative models, hybrids included (ModelConfig
    # is_prefix_caching_supported); for those it sets mamba_cache_mode "align" (models/config.py
    # MambaModelConfig), which keeps 2 state blocks per request and recurrent layer group.
    prefix_caching: bool = True
    # The vLLM release whose constants apply (the planner: the pinned one; the benchmark: a
    # published log's own, where a constant changed between releases).
    vllm_version: tuple[int, int] = PINNED_VLLM
    # --limit-mm-per-prompt: (modality, items per prompt) for the modalities it names; a modality
    # not named takes vLLM's 999 (vllm/config/multimodal.py MultiModalConfig.get_limit_per_prompt).
    mm_limits: tuple[tuple[str, int], ...] = ()
    # --language-model-only: every modality's limit is 0 (get_limit_per_prompt returns 0).
    language_model_only: bool = False
    # --skip-mm-profiling: profile_run skips the encoder pass (vllm/v1/worker/gpu/model_runner.py
    # profile_run: "if mm_config is not None and not mm_config.skip_mm_profiling").
    skip_mm_profiling: bool = False
    # --mm-encoder-tp-mode: "weights" (vLLM's default) or "data".
    mm_encoder_tp_mode: str = "weights"


@dataclass(frozen=True)
class KvLayout:
    """How vLLM groups the attention layers of one rank into KV cache groups."""

    page_bytes: int  # one block of one layer
    block_size: int
    full_layers: int
    sliding_layers: int
    sliding_window: int | None
    group_size: int  # layers per group: blocks are shared by one layer of each group
    full_groups: int
    sliding_groups: int
    # Hybrid linear-attention models: recurrent (gated DeltaNet) layers, whose state page is
    # padded to page_bytes, in state_groups groups; each holds state_blocks of them per request.
    state_layers: int = 0
    state_groups: int = 0
    state_blocks: int = 0

    @property
    def n_groups(self) -> int:
        return self.full_groups + self.sliding_groups + self.state_groups


@dataclass(frozen=True)
class VllmBudget:
    """One GPU's memory as vLLM's profiler splits it, in bytes."""

    cuda_total_bytes: int
    budget_bytes: int  # gpu_memory_utilization x CUDA total
    weights_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    cuda_graph_bytes: int
    cuda_graph_in_budget: bool
    available_kv_bytes: int  # what vLLM logs as "Available KV cache memory" (may be negative)
    margin_bytes: int
    notes: tuple[str, ...] = field(default=())


def is_a100(gpu_name: str | None) -> bool:
    return gpu_name is not None and "a100" in gpu_name.lower()


def default_batch_limits(gpu_total_bytes: int, gpu_name: str | None) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) that ``vllm serve`` picks when not given.

    EngineArgs.get_batch_defaults (vLLM 0.32, vllm/engine/arg_utils.py): 16384 / 1024 on GPUs
    with >= 160 GiB (B200/B300), 8192 / 1024 on GPUs with >= 70 GiB that are not A100s, else
    2048 / 256. vLLM compares the CUDA total, a little below NVML's, so at the thresholds this
    takes the larger defaults (the larger profiling pass). With the name unknown a large card
    gets the larger (safer) defaults.
    """
    if gpu_total_bytes >= 160 * GIB:
        return 16384, 1024
    if gpu_total_bytes >= 70 * GIB and not is_a100(gpu_name):
        return 8192, 1024
    return 2048, 256


def batch_limits(cfg: VllmConfig) -> tuple[int, int]:
    tokens, seqs = default_batch_limits(cfg.gpu_total_bytes, cfg.gpu_name)
    if cfg.max_num_batched_tokens is not None:
        tokens = cfg.max_num_batched_tokens
    elif not cfg.chunked_prefill:
        tokens = max(cfg.max_model_len, tokens)
    return tokens, cfg.max_num_seqs if cfg.max_num_seqs is not None else seqs


def kv_dtype_bytes(kv_cache_dtype: str) -> int:
    if kv_cache_dtype not in KV_DTYPE_BYTES:
        raise VllmConfigError(
            f"vLLM kv_cache_dtype {kv_cache_dtype!r} is not modelled; "
            f"accepted: {', '.join(KV_DTYPE_BYTES)}"
        )
    return KV_DTYPE_BYTES[kv_cache_dtype] or MODEL_DTYPE_BYTES


def kv_heads_per_rank(n_kv_heads: int, tp: int) -> int:
    """KV heads on one rank: split across ranks, one replicated head each when tp > heads."""
    if tp < 1:
        raise VllmConfigError(f"tensor_parallel_size must be >= 1, got {tp}")
    if tp <= n_kv_heads:
        if n_kv_heads % tp:
            raise VllmConfigError(
                f"tensor_parallel_size {tp} does not divide the model's {n_kv_heads} KV heads; "
                f"vLLM accepts a divisor of {n_kv_heads} or a multiple of it"
            )
        return n_kv_heads // tp
    if tp % n_kv_heads:
        raise VllmConfigError(
            f"tensor_parallel_size {tp} is neither a divisor nor a multiple of the model's "
            f"{n_kv_heads} KV heads"
        )
    return 1


def kv_bytes_per_token(
    spec: ModelSpec, kv_cache_dtype: str = "auto", tp: int = 1, draft: VllmDraft | None = None
) -> int:
    """K+V bytes one token takes on one rank, over the attention layers (sliding-window ones at
    full width; recurrent layers hold a per-sequence state instead, see state_bytes)."""
    archs = (spec.arch, draft.spec.arch) if draft else (spec.arch,)
    return sum(_layer_pages(a, 1, tp, kv_cache_dtype) for a in archs)


def _layer_pages(arch: ModelArch, block_size: int, tp: int, kv_cache_dtype: str) -> int:
    """One block of every attention layer with its own cache (per-layer K/V heads where the
    config gives them: DeciLM / Nemotron-NAS, OpenELM)."""
    if not arch.layer_kv_heads and not arch.layer_head_dims:
        return arch.kv_layer_count * _page_bytes(arch, block_size, tp, kv_cache_dtype)
    return sum(
        _page_bytes(arch, block_size, tp, kv_cache_dtype, arch.kv_heads_of(il), il)
        for il in range(arch.n_layers)
        if arch.has_kv(il)
    )


def _uniform_pages(arch: ModelArch) -> bool:
    kv = [il for il in range(arch.n_layers) if arch.has_kv(il)]
    heads = {arch.kv_heads_of(il) for il in kv}
    dims = {arch.layer_head_dims[il] for il in kv} if arch.layer_head_dims else set()
    return len(heads) <= 1 and len(dims) <= 1


def _page_bytes(
    arch: ModelArch,
    block_size: int,
    tp: int,
    kv_cache_dtype: str,
    kv_heads: int | None = None,
    layer: int | None = None,
) -> int:
    """One block of one layer on one rank: K and V of every token in the block.

    MLA (deepseek_v2/v3): vllm/model_executor/layers/attention/mla_attention.py
    MLAAttention.get_kv_cache_spec makes an MLAAttentionSpec of num_kv_heads=1 and
    max_tp_shards=1 (every rank holds it whole), head_size = kv_lora_rank + qk_rope_head_dim
    and head_size_v = 0 (vllm/v1/kv_cache_interface.py), so a token costs the latent plus the
    rope key once per layer, whatever the head count.
    """
    if arch.is_mla:
        assert arch.kv_lora_rank is not None and arch.qk_rope_head_dim is not None
        width = arch.kv_lora_rank + arch.qk_rope_head_dim
        # + DeepSeek sparse attention's indexer key cache (uint8, whatever the KV dtype)
        indexer = block_size * arch.indexer_bytes_per_token
        return block_size * width * kv_dtype_bytes(kv_cache_dtype) + indexer
    heads = kv_heads_per_rank(arch.n_kv_heads if kv_heads is None else kv_heads, tp)
    widths = arch.head_dim + arch.v_head_dim
    if layer is not None and arch.layer_head_dims:
        widths = 2 * arch.layer_head_dims[layer]  # Gemma-4 per_layer_config head_dim, K = V
    return block_size * heads * widths * kv_dtype_bytes(kv_cache_dtype)


def state_bytes(arch: ModelArch, tp: int) -> int:
    """One sequence's state in one gated DeltaNet layer on one rank (0 without such layers).

    vllm/model_executor/layers/mamba/mamba_utils.py MambaStateShapeCalculator.
    gated_delta_net_state_shape: a conv state of (conv_kernel - 1) x conv_dim / tp with
    conv_dim = 2 x key heads x key head size + value heads x value head size, and a temporal
    state of value heads / tp x value head size x key head size; both in the model dtype
    (gated_delta_net_state_dtype with mamba_cache_dtype / mamba_ssm_cache_dtype "auto").
    Kimi-Linear's KDA layers (kda_state_shape: the same shapes with equal key and value heads)
    keep the temporal state in float32 under "auto" (kda_state_dtype): ssm_state_fp32.
    """
    if not arch.recurrent_layers:
        return 0
    if arch.state_kind is not None:
        return _ssm_state_bytes(arch, tp)
    kh, vh = arch.linear_k_heads or 0, arch.linear_v_heads or 0
    kdim, vdim = arch.linear_k_head_dim or 0, arch.linear_v_head_dim or 0
    conv_dim = 2 * kh * kdim + vh * vdim
    if conv_dim % tp or vh % tp:
        raise VllmConfigError(
            f"tensor_parallel_size {tp} does not divide the model's {vh} linear-attention value "
            f"heads and conv width {conv_dim}; vLLM accepts a divisor of both"
        )
    conv = ((arch.linear_conv_kernel or 1) - 1) * conv_dim // tp
    temporal = vh // tp * vdim * kdim
    return conv * MODEL_DTYPE_BYTES + temporal * (4 if arch.ssm_state_fp32 else MODEL_DTYPE_BYTES)


def _split(value: int, tp: int, what: str) -> int:
    # vllm/distributed/utils.py divide: an exact split or an AssertionError at start-up
    if value % tp:
        raise VllmConfigError(
            f"tensor_parallel_size {tp} does not divide the model's {what} ({value}); vLLM "
            "accepts a divisor of it"
        )
    return value // tp


def _ssm_state_bytes(arch: ModelArch, tp: int) -> int:
    """One sequence's state in one Mamba / short-conv layer on one rank.

    vllm/model_executor/layers/mamba/mamba_utils.py MambaStateShapeCalculator:
    - mamba1_state_shape: conv (conv_kernel - 1) x intermediate / tp, temporal
      intermediate / tp x state_size;
    - mamba2_state_shape: n_groups raised to tp when tp does not divide it
      (extra_groups_for_head_shards), conv (conv_kernel - 1) x (intermediate + 2 x n_groups x
      state_size) / tp, temporal num_heads / tp x head_dim x state_size;
    - short_conv_state_shape: conv (conv_kernel - 1) x width / tp.
    Dtypes (MambaStateDtypeCalculator): the model dtype with mamba_cache_dtype "auto"; the
    temporal state float32 where the model sets mamba_ssm_cache_dtype (ssm_state_fp32).
    """
    kind = arch.state_kind
    k = (arch.ssm_conv_kernel or 1) - 1
    inner = arch.ssm_inner_size or 0
    state = arch.ssm_state_size or 0
    temporal_bytes = 4 if arch.ssm_state_fp32 else MODEL_DTYPE_BYTES
    if kind == "short_conv":
        return k * _split(inner, tp, "short-conv width") * MODEL_DTYPE_BYTES
    if kind == "mamba1":
        per_rank = _split(inner, tp, "Mamba intermediate size")
        return k * per_rank * MODEL_DTYPE_BYTES + per_rank * state * temporal_bytes
    if kind == "mamba2":
        groups = arch.ssm_n_groups or 1
        if groups % tp:
            groups = tp if groups < tp else groups + tp - groups % tp
        conv_dim = _split(inner + 2 * groups * state, tp, "Mamba-2 conv width")
        heads = _split(arch.ssm_n_heads or 0, tp, "Mamba-2 heads")
        temporal = heads * (arch.ssm_head_dim or 0) * state
        return k * conv_dim * MODEL_DTYPE_BYTES + temporal * temporal_bytes
    raise VllmConfigError(f"recurrent state kind {kind!r} is not modelled")


def hybrid_block_size(arch: ModelArch, cfg: VllmConfig) -> int:
    """The block size vLLM uses: raised for hybrid models until an attention page holds a
    recurrent state (vllm/platforms/interface.py Platform._align_hybrid_block_size:
    attn_block_size = align x cdiv(mamba_page, align x attention page of one token), align the
    backend's smallest kernel block, 16 for FlashAttention / FlashInfer / Triton), whatever
    --block-size says; the state page is then padded to the attention page."""
    state = state_bytes(arch, cfg.tensor_parallel_size)
    if not state:
        return cfg.block_size
    one = _page_bytes(arch, 1, cfg.tensor_parallel_size, cfg.kv_cache_dtype)
    align = max(HYBRID_KERNEL_BLOCK, cfg.block_size)
    need = align * math.ceil(state / (align * one))
    return max(cfg.block_size, need)


def kv_layout(arch: ModelArch, cfg: VllmConfig) -> KvLayout:
    """vLLM's KV cache groups for this model (kv_cache_utils.get_kv_cache_groups)."""
    if cfg.block_size < 1:
        raise VllmConfigError(f"block_size must be >= 1, got {cfg.block_size}")
    if arch.recurrent_layers:
        return _hybrid_state_layout(arch, cfg)
    page = _page_bytes(arch, cfg.block_size, cfg.tensor_parallel_size, cfg.kv_cache_dtype)
    n_kv = arch.kv_layer_count
    windowed = set(arch.sliding_window_layers) if arch.sliding_window else set()
    window = arch.sliding_window
    if arch.attention_chunk_size and arch.chunked_layers:
        # Chunked local attention (Llama-4): ChunkedLocalAttentionSpec, its own group type like
        # a sliding window; max_memory_usage_bytes min(chunk + batched tokens, max_model_len),
        # at or below the sliding-window rule used here (window - 1 + batched tokens, +1 block).
        windowed |= set(arch.chunked_layers)
        window = max(window or 0, arch.attention_chunk_size)
    windowed = {il for il in windowed if arch.has_kv(il)}
    sliding = len(windowed)
    full = n_kv - sliding
    if not _uniform_pages(arch):
        # Layers of different page sizes: one group whose page is the sum of every layer's page
        # (UniformTypeKVCacheSpecs in vllm/v1/kv_cache_interface.py for full attention). With
        # sliding-window layers among them every layer is counted as full here: never fewer
        # bytes than vLLM's grouping, the safe side.
        pages = _layer_pages(arch, cfg.block_size, cfg.tensor_parallel_size, cfg.kv_cache_dtype)
        return KvLayout(pages, cfg.block_size, n_kv, 0, None, 1, 1, 0)
    if cfg.draft is not None:
        # Target and draft layers of one attention type form one group whose page is the sum of
        # every layer's page (UniformTypeKVCacheSpecs in vllm/v1/kv_cache_interface.py).
        _check_draft(arch, cfg)
        d = cfg.draft.spec.arch
        d_page = _page_bytes(d, cfg.block_size, cfg.tensor_parallel_size, cfg.kv_cache_dtype)
        both = page * n_kv + d_page * d.kv_layer_count
        return KvLayout(both, cfg.block_size, n_kv + d.kv_layer_count, 0, None, 1, 1, 0)
    if sliding == 0 or not cfg.hybrid_kv_cache:
        # One group of every layer; with the hybrid manager off, sliding layers count as full.
        return KvLayout(page, cfg.block_size, n_kv, 0, None, n_kv, 1, 0)
    if full == 0:
        return KvLayout(page, cfg.block_size, 0, sliding, window, sliding, 0, 1)
    group = _group_size(full, sliding)
    return KvLayout(
        page,
        cfg.block_size,
        full,
        sliding,
        window,
        group,
        math.ceil(full / group),
        math.ceil(sliding / group),
    )


def _group_size(*counts: int) -> int:
    # _get_kv_cache_groups_uniform_page_size: the smaller type count is the group size, unless
    # the counts are within 1.5x of each other (gpt-oss 12 + 12), then the larger one is.
    group = min(counts)
    if max(counts) < group * 1.5:
        group = max(counts)
    return group


def _hybrid_state_layout(arch: ModelArch, cfg: VllmConfig) -> KvLayout:
    """Full-attention + gated DeltaNet layers (qwen3_next): both kinds in groups of equal size
    over pages of one size (the state page padded to the attention page), one block pool."""
    if cfg.draft is not None or not cfg.hybrid_kv_cache or arch.sliding_window_layers:
        raise VllmConfigError(
            "a hybrid linear-attention model with a draft model, sliding-window layers or "
            "--disable-hybrid-kv-cache-manager is not modelled; accepted: the hybrid KV cache "
            "manager, no draft model"
        )
    full = arch.kv_layer_count
    state = len(arch.recurrent_layers)
    if full == 0:
        # Attention-free (Mamba, Mamba-2): every page is one sequence's state, unpadded
        # (vllm/model_executor/models/config.py MambaModelConfig: the block is the whole
        # max_model_len, one state per request and layer).
        page = state_bytes(arch, cfg.tensor_parallel_size)
        blocks = 2 if cfg.prefix_caching else 1
        return KvLayout(
            page,
            cfg.block_size,
            0,
            0,
            None,
            state,
            0,
            0,
            state_layers=state,
            state_groups=1,
            state_blocks=blocks,
        )
    block = hybrid_block_size(arch, cfg)
    page = _page_bytes(arch, block, cfg.tensor_parallel_size, cfg.kv_cache_dtype)
    group = _group_size(full, state) if full else state
    # MambaSpec.max_memory_usage_bytes: 2 pages in "align" mode (prefix caching), else 1.
    blocks = 2 if cfg.prefix_caching else 1
    return KvLayout(
        page,
        block,
        full,
        0,
        None,
        group,
        math.ceil(full / group),
        0,
        state_layers=state,
        state_groups=math.ceil(state / group),
        state_blocks=blocks,
    )


def _check_draft(arch: ModelArch, cfg: VllmConfig) -> None:
    assert cfg.draft is not None
    d = cfg.draft.spec.arch
    if (arch.sliding_window and arch.sliding_window_layers) or (
        d.sliding_window and d.sliding_window_layers
    ):
        raise VllmConfigError(
            "a speculative draft next to sliding-window layers is not modelled "
            "(their KV groups would mix attention types); accepted: full-attention target and draft"
        )
    if d.vocab_size != arch.vocab_size:
        raise VllmConfigError(
            f"vLLM's draft_model method needs equal vocabulary sizes: target {arch.vocab_size}, "
            f"draft {cfg.draft.spec.id} {d.vocab_size}"
        )
    if cfg.draft.num_speculative_tokens < 1:
        raise VllmConfigError(
            f"num_speculative_tokens must be >= 1, got {cfg.draft.num_speculative_tokens}"
        )


def request_blocks(layout: KvLayout, max_model_len: int, max_num_batched_tokens: int) -> int:
    """Blocks (of one layer per group) one request of max_model_len needs, summed over groups."""
    bs = layout.block_size
    full = math.ceil(max_model_len / bs)
    if layout.state_groups:
        return full * layout.full_groups + layout.state_blocks * layout.state_groups
    if layout.sliding_window is None:
        return full * layout.full_groups
    # SlidingWindowSpec.max_memory_usage_bytes: window - 1 + one chunk of prefill, +1 block for
    # a window that does not start on a block boundary.
    window = min(layout.sliding_window - 1 + max_num_batched_tokens, max_model_len)
    sliding = math.ceil(window / bs) + 1
    return full * layout.full_groups + sliding * layout.sliding_groups


def min_kv_bytes_needed(spec: ModelSpec, cfg: VllmConfig) -> int:
    """KV memory one request of max_model_len needs, as vLLM checks it at start-up."""
    layout = kv_layout(spec.arch, cfg)
    tokens, _ = batch_limits(cfg)
    return layout.group_size * layout.page_bytes * request_blocks(layout, cfg.max_model_len, tokens)


def kv_pool(layout: KvLayout, available_bytes: int) -> int:
    """Blocks vLLM allocates from available_bytes (get_num_blocks)."""
    if available_bytes <= 0:
        return 0
    return available_bytes // layout.page_bytes // layout.group_size


def kv_capacity_tokens(layout: KvLayout, num_blocks: int) -> int:
    """The "GPU KV cache size: N tokens" figure (_report_kv_cache_config)."""
    return num_blocks // layout.n_groups * layout.block_size


def max_concurrency(layout: KvLayout, num_blocks: int, max_model_len: int, mnbt: int) -> float:
    """The "Maximum concurrency for L tokens per request: Xx" figure."""
    return num_blocks / request_blocks(layout, max_model_len, mnbt)


def buffer_allowance(arch: ModelArch) -> int:
    """Bytes a rank holds beside the weights: WEIGHT_EXTRA_BYTES, or vLLM's rotary cos/sin caches
    where they are larger (Gemma 3: two caches of 131072 x 256 positions x dims, 128 MiB).

    vllm/model_executor/layers/rotary_embedding/base.py RotaryEmbeddingBase.__init__: a
    cos_sin_cache buffer of max_position_embeddings x rotary_dim in the model dtype on every
    rank, one per distinct rope (get_rope caches them); counted twice for a model with
    sliding-window layers (Gemma 2/3's local rope_local_base_freq), at the full head size (the
    rotary dimension is at most that), plus 1 MiB for the other buffers (Gemma's embedding
    normalizer, under 1 KiB measured). Scaled ropes whose cache is longer than
    max_position_embeddings are not modelled here.
    """
    dim = (arch.qk_rope_head_dim or 0) if arch.is_mla else arch.head_dim
    ropes = 2 if arch.sliding_window_layers else 1
    rope = ropes * arch.max_position_embeddings * dim * MODEL_DTYPE_BYTES
    return max(WEIGHT_EXTRA_BYTES, rope + MIB)


def weights_per_rank(spec: ModelSpec, art: Artifact, tp: int) -> int:
    """Weight bytes vLLM holds on one rank: the checkpoint split tp ways, K/V heads replicated,
    plus what vLLM adds on loading (padded vocabulary, float32 Mamba A; models/hf_dir.py) and
    its buffers (buffer_allowance)."""
    total = art.weight_bytes * LOAD_FACTOR.get(art.quant.lower(), 1.0)
    a = spec.arch
    allowance = buffer_allowance(a)
    layout = art.layout
    extra = layout.load_extra_bytes if layout is not None else 0
    extra_whole = layout.load_replicated_bytes if layout is not None else 0
    per_rank = (total + extra - extra_whole) / tp + extra_whole + allowance
    if tp > 1 and layout is not None and layout.replicated_bytes is not None:
        # The sharding each tensor's name and shape gave (models/hf_dir.py): replicated tensors
        # whole on every rank; K/V projections split over at most n_kv_heads ranks
        # (QKVParallelLinear: num_kv_head_replicas = tp / total_num_kv_heads past that); the
        # rest (column, row, vocab and expert parallel) split tp ways.
        factor = total / art.weight_bytes if art.weight_bytes else 1.0
        whole = layout.replicated_bytes * factor + extra_whole
        kv = layout.kv_proj_bytes * factor
        split = max(0.0, total - layout.replicated_bytes * factor - kv) + extra - extra_whole
        per_kv = kv / min(tp, max(1, a.n_kv_heads)) if not a.is_mla else kv / tp
        return math.ceil(split / tp + whole + per_kv + allowance)
    if tp > a.n_kv_heads and spec.params_b > 0:
        bytes_per_param = total / (spec.params_b * 1e9)
        kv_proj = a.n_layers * a.hidden_size * a.n_kv_heads * (a.head_dim + a.v_head_dim)
        # Each rank keeps one whole K/V head instead of a 1/tp share of them.
        per_rank += kv_proj * bytes_per_param * (1 / a.n_kv_heads - 1 / tp)
    if tp > 1 and spec.params_b > 0 and a.architecture in _REPLICATED_ARCHS:
        # Every rank holds these whole instead of a 1/tp share: MLA's low-rank q/kv "a"
        # projections (deepseek_v2.py DeepSeekV2FusedQkvAProjLinear disable_tp=True,
        # kv_a_proj_with_mqa ReplicatedLinear) and the MoE routers (GateLinear, a
        # ReplicatedLinear, kept in the model dtype).
        bytes_per_param = total / (spec.params_b * 1e9)
        trunk = a.n_layers - a.n_nextn_layers
        lowrank = 0
        if a.is_mla and a.kv_lora_rank and a.qk_rope_head_dim:
            lowrank = (
                trunk * a.hidden_size * ((a.q_lora_rank or 0) + a.kv_lora_rank + a.qk_rope_head_dim)
            )
        routers = (trunk - a.n_dense_layers) * (a.n_experts or 0) * a.hidden_size
        replicated = lowrank * bytes_per_param + routers * MODEL_DTYPE_BYTES
        per_rank += replicated * (1 - 1 / tp)
    return math.ceil(per_rank)


# vllm/model_executor/layers/fused_moe/oracle/unquantized.py: on CUDA an unquantized MoE tries
# FlashInfer's TRT-LLM bf16 kernel first (_get_priority_backends; moved back on Hopper, SM90, and
# for gpt-oss's SWIGLUOAI activation), which runs on SM100-family GPUs only (experts/
# trtllm_bf16_moe.py _supports_current_device) and rounds each rank's expert intermediate size
# up to a multiple of 128 before allocating w13 / w2
# (unquantized_round_up_hidden_size_and_intermediate_size). The CPU build the TP reference is
# measured with (tests/models/test_vllm_tp.py) never pads.
TRTLLM_MOE_ALIGN = 128
_UNQUANTIZED = frozenset({"bf16", "fp16", "f16", "f32", "float32", "bfloat16", "float16", "auto"})


def moe_padding_bytes(spec: ModelSpec, art: Artifact, tp: int, gpu_name: str | None) -> int:
    """Expert bytes one rank holds beyond its 1/tp share where vLLM pads the experts' per-rank
    intermediate size (TRTLLM_MOE_ALIGN): unquantized MoE on a Blackwell datacenter GPU, the
    safe side where vLLM would pick another kernel."""
    a = spec.arch
    inter = a.expert_intermediate_size
    if (
        not a.is_moe
        or not inter
        or not is_blackwell_datacenter(gpu_name)
        or art.quant.lower() not in _UNQUANTIZED
        or a.architecture == "gpt-oss"
    ):
        return 0
    per = inter / max(1, tp)
    padded = math.ceil(per / TRTLLM_MOE_ALIGN) * TRTLLM_MOE_ALIGN
    if padded <= per:
        return 0
    layout = art.layout or scale_layout(derive_layout(a, art.quant, "vllm"), art.weight_bytes)
    experts = sum(layout.per_layer_expert_bytes)
    return math.ceil(experts / max(1, tp) * (padded - per) / per)


def forward_bytes(arch: ModelArch, tokens: int, tp: int) -> int:
    """Torch peak of one forward pass over `tokens` tokens, per rank (bf16 activations).

    The MLP dominates: the fused gate/up output and the activated half (3 x ff, sharded) plus
    a few hidden-size buffers. For MoE the fused-MoE caches hold top_k copies of the expert MLP
    and of the hidden state. Fitted to the V0 profile of Llama-3.1-8B at 20k and 29k tokens
    (2.07 and 2.99 GiB logged in vllm#10517): 53k bf16 values per token = 3 x ff + 2.5 x hidden.
    """
    h = arch.hidden_size
    if arch.is_moe:
        inter = arch.expert_intermediate_size or arch.intermediate_size
        k = arch.n_experts_per_token or 1
        per_token = 2.5 * h + k * (3 * inter / tp + h)
        if arch.n_shared_experts:
            per_token += 3 * arch.n_shared_experts * inter / tp
    else:
        per_token = 2.5 * h + 3 * arch.intermediate_size / tp
    q = arch.n_heads * arch.head_dim
    kv = arch.n_kv_heads * (arch.head_dim + arch.v_head_dim)
    attention = 2.5 * h + (2 * q + kv) / tp
    return int(tokens * MODEL_DTYPE_BYTES * max(per_token, attention))


def sampler_bytes(arch: ModelArch, rows: int, version: tuple[int, int] = PINNED_VLLM) -> int:
    # Logits are gathered to every rank, so tensor parallel does not shrink them.
    per_logit = (
        SAMPLER_BYTES_PER_LOGIT
        if version >= SAMPLER_CHANGED_IN
        else SAMPLER_BYTES_PER_LOGIT_PRE_017
    )
    return rows * arch.vocab_size * per_logit


@dataclass(frozen=True)
class EncoderProfile:
    """vLLM 0.32's encoder profiling pass for a multimodal model, per rank.

    profile_run (vllm/v1/worker/gpu/model_runner.py, Model Runner V2) first runs the tower:
    MultiModalBudget (vllm/multimodal/encoder_budget.py) takes the modality with the most tokens
    per item, the budget compute_mm_encoder_budget gives (vllm/v1/core/encoder_cache_manager.py:
    max(max_num_batched_tokens, the largest item's tokens), both for the compute budget and the
    encoder cache) and _get_max_items: max(1, min(budget // tokens_per_item, max_num_seqs x
    max(1, max_model_len // tokens_per_item))) items of the largest size.
    EncoderRunner.profile_encoder_cache (vllm/v1/worker/gpu/mm/encoder_runner.py) runs them in one
    execute_mm_encoder call and keeps the outputs in the encoder cache through the language
    model's dummy run and the sampler pass; reset_encoder_cache frees them at the end.
    """

    items: int
    tokens: int  # language-model tokens the items become (what the encoder cache holds)
    budget_tokens: int  # MultiModalBudget.get_encoder_budget()
    forward_bytes: int  # the tower's activation peak over items x tokens x patches_per_token
    cache_bytes: int  # the encoder outputs: tokens x the language model's hidden size, 16-bit


# vllm/config/multimodal.py BaseDummyOptions.count: a modality --limit-mm-per-prompt does not name.
MM_DEFAULT_LIMIT = 999
# Multimodal architectures whose vLLM 0.32 model class builds its tower (and projector) inside
# SupportsMultiModal._mark_tower_model (vllm/model_executor/models/interfaces.py), which skips
# them (StageMissingLayer, no weights loaded) when get_limit_per_prompt is 0 for every modality
# of the tower; with the modalities each class marks. Read from each class's __init__:
# qwen2_5_vl.py / qwen2_vl.py ({"image", "video"}: visual), mllama4.py ("image": vision_model,
# multi_modal_projector), gemma3_mm.py, mistral3.py and llava.py ("image": vision_tower,
# multi_modal_projector). Another architecture keeps its tower's weights in the plan (the larger
# figure) until its model file is read.
TOWER_MODALITIES: dict[str, tuple[str, ...]] = {
    "Qwen2_5_VLForConditionalGeneration": ("image", "video"),
    "Qwen2VLForConditionalGeneration": ("image", "video"),
    "Llama4ForConditionalGeneration": ("image",),
    "Gemma3ForConditionalGeneration": ("image",),
    "Mistral3ForConditionalGeneration": ("image",),
    "LlavaForConditionalGeneration": ("image",),
}
# Architectures whose class sets supports_encoder_tp_data = True (vLLM 0.32 qwen2_5_vl.py,
# qwen2_vl.py, mllama4.py): with --mm-encoder-tp-mode data their tower runs data parallel
# (vllm/model_executor/models/vision.py run_dp_sharded_vision_model /
# run_dp_sharded_mrope_vision_model: each rank encodes its share of the items with the whole
# tower, the outputs are all-gathered). For any other model vllm/config/model.py falls back to
# "weights" ("This model does not support `--mm-encoder-tp-mode data`").
ENCODER_TP_DATA = frozenset(
    {
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2VLForConditionalGeneration",
        "Llama4ForConditionalGeneration",
    }
)


def mm_limit(cfg: VllmConfig, modality: str) -> int:
    """MultiModalConfig.get_limit_per_prompt (vllm/config/multimodal.py)."""
    if cfg.language_model_only:
        return 0
    return dict(cfg.mm_limits).get(modality, MM_DEFAULT_LIMIT)


def tower_modalities(arch: ModelArch) -> tuple[str, ...]:
    """The modalities the tower takes: its class's (TOWER_MODALITIES), else image and video (a
    class not read may take video; a limit of 0 for image alone then leaves a video pass, sized
    as a sequence-long item in encoder_profile: the larger figure)."""
    return TOWER_MODALITIES.get(arch.hf_architecture, ("image", "video"))


def tower_dropped(arch: ModelArch, cfg: VllmConfig) -> bool:
    """vLLM builds no tower: every modality it takes has limit 0 and its class marks it."""
    return (
        arch.has_vision
        and arch.hf_architecture in TOWER_MODALITIES
        and all(mm_limit(cfg, m) == 0 for m in TOWER_MODALITIES[arch.hf_architecture])
    )


def tower_bytes_per_rank(art: Artifact, tp: int) -> int:
    """The tower's share of weights_per_rank: whole on every rank where the layout's sharding
    was read (models/hf_dir.py counts it replicated), else the 1/tp share weights_per_rank gave."""
    layout = art.layout
    if layout is None or not layout.vision_bytes:
        return 0
    if tp <= 1 or layout.replicated_bytes is not None:
        return layout.vision_bytes
    return layout.vision_bytes // tp


def encoder_profile(arch: ModelArch, cfg: VllmConfig) -> EncoderProfile | None:
    """The encoder pass of profile_run (see EncoderProfile); None for a text-only model, with
    --skip-mm-profiling, or where every modality's limit is 0 (compute_mm_encoder_budget then
    returns 0, 0: "Encoder cache will not be initialized", and get_dummy_encoder_profile_inputs
    returns no items)."""
    enc = arch.vision
    if enc is None or cfg.skip_mm_profiling:
        return None
    live = [m for m in tower_modalities(arch) if mm_limit(cfg, m) > 0]
    if not live:
        return None
    tokens, seqs = batch_limits(cfg)
    per_item = enc.tokens_per_item
    modality = "image"
    if enc.video and "video" in live:
        # Qwen2-VL's video item fills the sequence (qwen2_vl.py get_max_video_tokens: frames
        # of the largest image until seq_len); its tokens are merged patches like an image's.
        # MultiModalBudget.get_modality_with_max_tokens then profiles video.
        per_item = max(per_item, cfg.max_model_len)
        modality = "video"
    elif "image" not in live:
        # Only a modality whose item size the reader does not know (video of a tower read as
        # image-only): the image's size stands in, an item at least as large as the sequence.
        per_item = max(per_item, cfg.max_model_len)
        modality = live[0]
    budget_tokens = max(tokens, per_item)
    # MultiModalBudget._get_max_items: the user's limit caps the items of one prompt.
    per_prompt = max(1, min(mm_limit(cfg, modality), cfg.max_model_len // per_item))
    items = max(1, min(budget_tokens // per_item, seqs * per_prompt))
    held = items * per_item
    # The tower's sequence: patches_per_token positions a token. The same form as the language
    # model's forward (forward_bytes): the MLP's 3 x intermediate and 2.5 x hidden per position,
    # 16-bit; attention through the fused kernels holds no sequence x sequence matrix. With
    # mm_encoder_tp_mode "weights" (the default) not split over tensor parallel although the
    # tower's linear layers are sharded where its heads divide (vision.py is_vit_use_data_parallel
    # falls back to data parallel otherwise): which towers shard is not read, the larger figure.
    encoded = held
    tp = cfg.tensor_parallel_size
    if cfg.mm_encoder_tp_mode == "data" and tp > 1 and arch.hf_architecture in ENCODER_TP_DATA:
        # Data parallel encoder: each rank runs the whole tower over its share of the items
        # (run_dp_sharded_vision_model); the gathered outputs, all of them, stay in the cache.
        encoded = -(-items // tp) * per_item
    positions = encoded * enc.patches_per_token
    fwd = int(positions * MODEL_DTYPE_BYTES * (2.5 * enc.hidden_size + 3 * enc.intermediate_size))
    return EncoderProfile(
        items, held, budget_tokens, fwd, held * arch.hidden_size * MODEL_DTYPE_BYTES
    )


def activation_bytes(arch: ModelArch, cfg: VllmConfig) -> int:
    """Peak torch increase of profile_run, per rank."""
    tokens, seqs = batch_limits(cfg)
    rows = min(seqs, tokens)
    fwd = forward_bytes(arch, tokens, cfg.tensor_parallel_size)
    if cfg.draft is not None:
        # The drafter's dummy run follows the target's, after its activations are freed.
        fwd = max(fwd, forward_bytes(cfg.draft.spec.arch, tokens, cfg.tensor_parallel_size))
    # The forward activations are freed before the sampler runs: the peaks do not add up.
    peak = max(fwd, sampler_bytes(arch, rows, cfg.vllm_version))
    enc = encoder_profile(arch, cfg)
    if enc is not None:
        # The tower runs first; its outputs stay cached through the forward and sampler passes.
        peak = max(enc.forward_bytes, enc.cache_bytes + peak)
    return peak + ACTIVATION_FIXED_BYTES


def cuda_total_bytes(cfg: VllmConfig) -> int:
    reserved = DRIVER_RESERVED_BYTES if cfg.gpu_reserved_bytes is None else cfg.gpu_reserved_bytes
    return max(0, cfg.gpu_total_bytes - reserved)


def validate_config(cfg: VllmConfig) -> None:
    if cfg.max_model_len < 1:
        raise VllmConfigError(f"max_model_len must be >= 1 token, got {cfg.max_model_len}")
    if cfg.gpu_total_bytes <= 0:
        raise VllmConfigError(f"gpu_total_bytes must be > 0, got {cfg.gpu_total_bytes}")
    if not 0 < cfg.gpu_memory_utilization <= 1:
        raise VllmConfigError(
            f"gpu_memory_utilization must be in (0, 1], got {cfg.gpu_memory_utilization}"
        )
    for name in ("max_num_seqs", "max_num_batched_tokens"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise VllmConfigError(f"{name} must be >= 1 when given, got {value}")
    kv_dtype_bytes(cfg.kv_cache_dtype)


def profile_split(
    arch: ModelArch,
    cfg: VllmConfig,
    requested: int,
    weights: int,
    act: int,
    non_torch: int,
    with_draft: bool,
) -> tuple[int, int, int, int]:
    """(requested, CUDA graphs, available KV, margin) of one rank whose weights, activation peak
    and non-torch memory are known: the rest of determine_available_memory's arithmetic, shared
    by a whole-model rank (budget) and a pipeline stage's (vllm_pipeline.stage_budget).
    ``with_draft``: the drafter's graphs are on this rank."""
    graphs = 0 if cfg.enforce_eager else cuda_graph_bytes(weights, arch=arch, cfg=cfg)
    if graphs and with_draft:
        graphs += DRAFT_CUDA_GRAPH_BYTES
    inside = graphs if cfg.cudagraph_in_budget else 0
    available = requested - weights - act - non_torch - inside
    if cfg.kv_cache_memory_bytes is not None:
        # The pool is the user's size; what vLLM then holds is the sum, not the utilization.
        available = cfg.kv_cache_memory_bytes
        requested = weights + act + non_torch + inside + available
    margin = (act + non_torch) // 8 + weights // 100 + MARGIN_FIXED_BYTES
    return requested, graphs, available, margin


def _encoder_notes(arch: ModelArch, cfg: VllmConfig, outside: int) -> tuple[str, ...]:
    """What the plan says of the tower; ``outside``: the card's CUDA memory outside the budget."""
    if not arch.has_vision:
        return ()
    if tower_dropped(arch, cfg):
        why = "--language-model-only" if cfg.language_model_only else "--limit-mm-per-prompt"
        return (
            f"vision tower not built ({why}: every modality it takes is limited to 0; "
            "vllm/model_executor/models/interfaces.py _mark_tower_model): its weights and its "
            "encoder profiling pass are left out",
        )
    if cfg.language_model_only or not any(mm_limit(cfg, m) > 0 for m in tower_modalities(arch)):
        return (
            "no encoder profiling pass (every modality limited to 0: compute_mm_encoder_budget "
            "gives no budget); the tower's weights stay counted (its model class is not known "
            "to skip building it)",
        )
    if cfg.skip_mm_profiling:
        full = encoder_profile(arch, replace(cfg, skip_mm_profiling=False))
        need = (
            f"up to {max(full.forward_bytes, full.cache_bytes) / GIB:.2f} GiB here "
            f"({full.items} item(s) of {full.tokens // full.items} tokens)"
            if full is not None
            else "an amount this reader cannot size"
        )
        return (
            "--skip-mm-profiling: vLLM skips the encoder profiling pass (v1/worker/gpu/"
            "model_runner.py profile_run), so its KV pool is sized without the tower's "
            "activations and the encoder cache, as planned here; the first multimodal batch then "
            f"needs {need} beyond the budget, from the {outside / GIB:.2f} GiB the budget "
            "leaves outside it, or it fails out of memory. The plan keeps the tower's weights "
            "and no encoder memory",
        )
    enc = encoder_profile(arch, cfg)
    if enc is not None:
        return (
            f"encoder profiling pass: {enc.items} item(s) of {enc.tokens // enc.items} tokens "
            f"through the vision tower ({enc.forward_bytes / GIB:.2f} GiB peak, modelled) and "
            f"{enc.cache_bytes / GIB:.2f} GiB of encoder cache held through the forward pass",
        )
    if arch.has_vision:
        return (
            "vision tower: its weights are counted; its encoder profiling pass is not modelled "
            "(the config does not give the largest item's size)",
        )
    return ()


def budget(spec: ModelSpec, art: Artifact, cfg: VllmConfig) -> VllmBudget:
    """The split vLLM's profiler will make on each rank (all ranks are alike)."""
    validate_config(cfg)
    tp = cfg.tensor_parallel_size
    total = cuda_total_bytes(cfg)
    requested = int(cfg.gpu_memory_utilization * total)
    weights = weights_per_rank(spec, art, tp) + moe_padding_bytes(spec, art, tp, cfg.gpu_name)
    if tower_dropped(spec.arch, cfg):
        weights -= tower_bytes_per_rank(art, tp)
    if cfg.draft is not None:
        weights += weights_per_rank(cfg.draft.spec, cfg.draft.artifact, tp)
    weights = max(0, weights - cfg.cpu_offload_bytes)
    act = activation_bytes(spec.arch, cfg)
    non_torch = NON_TORCH_BYTES + non_torch_tp_bytes(tp)
    requested, graphs, available, margin = profile_split(
        spec.arch, cfg, requested, weights, act, non_torch, with_draft=cfg.draft is not None
    )
    tokens, seqs = batch_limits(cfg)
    notes = (
        f"budget {cfg.gpu_memory_utilization:.2f} x {total / GIB:.2f} GiB (CUDA total: NVML "
        f"{cfg.gpu_total_bytes / GIB:.2f} GiB less the driver's reserve) = {requested / GIB:.2f} GiB",
        f"profiling pass of {tokens} tokens and {min(seqs, tokens)} sampled rows: "
        f"{act / GIB:.2f} GiB activation peak (modelled)",
        *_encoder_notes(spec.arch, cfg, total - requested),
        (
            f"CUDA graphs ({graphs / GIB:.1f} GiB) "
            + ("inside the budget" if cfg.cudagraph_in_budget else "on top of the budget")
            if graphs
            else "enforce_eager: no CUDA graphs"
        ),
    )
    return VllmBudget(
        total,
        requested,
        weights,
        act,
        non_torch,
        graphs,
        cfg.cudagraph_in_budget,
        available,
        margin,
        notes,
    )


def vllm_refusal(spec: ModelSpec, art: Artifact, cfg: VllmConfig) -> str | None:
    """vLLM's own start-up error for these settings, or None when it would start.

    Judged on the modelled KV memory less margin_bytes, so a plan that passes has room to spare.
    """
    b = budget(spec, art, cfg)
    planned = b.available_kv_bytes - b.margin_bytes
    if b.available_kv_bytes <= 0:
        return (
            f"No available memory for the cache blocks: {b.weights_bytes / GIB:.2f} GiB of "
            f"weights and {(b.activation_bytes + b.non_torch_bytes) / GIB:.2f} GiB of "
            f"activation/overhead exceed the {b.budget_bytes / GIB:.2f} GiB budget "
            f"(gpu_memory_utilization {cfg.gpu_memory_utilization:.2f})"
        )
    needed = min_kv_bytes_needed(spec, cfg)
    if needed > planned:
        return (
            f"To serve at least one request with the model's max seq len ({cfg.max_model_len}), "
            f"{needed / GIB:.2f} GiB KV cache is needed, which is larger than the available KV "
            f"cache memory ({b.available_kv_bytes / GIB:.2f} GiB, "
            f"{b.margin_bytes / GIB:.2f} GiB of it kept as margin)"
        )
    return None


def fits(spec: ModelSpec, art: Artifact, cfg: VllmConfig, parallel: int = 1) -> bool:
    """Whether vLLM starts with these settings and its KV pool holds `parallel` full requests."""
    if vllm_refusal(spec, art, cfg) is not None:
        return False
    b = budget(spec, art, cfg)
    layout = kv_layout(spec.arch, cfg)
    tokens, _ = batch_limits(cfg)
    blocks = kv_pool(layout, b.available_kv_bytes - b.margin_bytes)
    return blocks >= parallel * request_blocks(layout, cfg.max_model_len, tokens)


def max_model_len_that_fits(
    spec: ModelSpec, art: Artifact, cfg: VllmConfig, parallel: int = 1, limit: int | None = None
) -> int:
    """The largest max_model_len (<= limit, default the model's own) that fits `parallel` times.

    0 when not even one token does: the weights and activations fill the budget. The activation
    peak does not depend on max_model_len with chunked prefill, so one budget serves every length.
    """
    top = limit if limit is not None else spec.arch.max_position_embeddings
    if top < 1 or parallel < 1:
        raise VllmConfigError(f"limit and parallel must be >= 1, got {top} and {parallel}")
    lo, hi, best = 1, top, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(spec, art, replace(cfg, max_model_len=mid), parallel):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def estimate_vllm(spec: ModelSpec, art: Artifact, cfg: VllmConfig) -> Estimate:
    """Per-GPU memory ("CUDA0".."CUDA{tp-1}") and the KV figures vLLM logs at start-up."""
    b = budget(spec, art, cfg)
    layout = kv_layout(spec.arch, cfg)
    tokens, seqs = batch_limits(cfg)
    blocks = kv_pool(layout, b.available_kv_bytes)
    kv_bytes = blocks * layout.page_bytes * layout.group_size
    # Outside the budget but resident: the CUDA context, and the graphs before vLLM 0.21.
    overhead = b.non_torch_bytes + b.cuda_graph_bytes + CUDA_CONTEXT_BYTES
    devices = tuple(
        DeviceMemory(
            f"CUDA{i}",
            b.weights_bytes,
            kv_bytes,
            b.activation_bytes,
            overhead,
            b.weights_bytes + kv_bytes + b.activation_bytes + overhead,
        )
        for i in range(cfg.tensor_parallel_size)
    )
    notes = list(b.notes)
    refusal = vllm_refusal(spec, art, cfg)
    if refusal:
        notes.append(f"vLLM would refuse to start: {refusal}")
    if cfg.draft is not None:
        notes.append(
            f"speculative decoding: draft {cfg.draft.spec.id} ({cfg.draft.artifact.quant}), "
            f"{cfg.draft.num_speculative_tokens} tokens per step; its weights, KV pages and "
            "graphs are included"
        )
    if layout.state_groups:
        notes.append(
            f"hybrid KV cache: {layout.full_layers} full-attention + {layout.state_layers} "
            f"linear-attention layers in {layout.n_groups} groups of {layout.group_size}, "
            f"block size {layout.block_size} (raised so a page holds one recurrent state of "
            f"{state_bytes(spec.arch, cfg.tensor_parallel_size)} bytes), "
            f"{layout.state_blocks} state block(s) per request and linear-attention group"
        )
    if layout.sliding_groups:
        notes.append(
            f"hybrid KV cache: {layout.full_layers} full + {layout.sliding_layers} sliding-window "
            f"layers in {layout.n_groups} groups of {layout.group_size}"
        )
    return Estimate(
        engine="vllm",
        context=cfg.max_model_len,
        parallel=seqs,
        devices=devices,
        kv_bytes_per_token=kv_bytes_per_token(
            spec, cfg.kv_cache_dtype, cfg.tensor_parallel_size, cfg.draft
        ),
        kv_capacity_tokens=kv_capacity_tokens(layout, blocks),
        max_concurrency=round(max_concurrency(layout, blocks, cfg.max_model_len, tokens), 2),
        margin_bytes=b.margin_bytes,
        notes=tuple(notes),
    )


def choose_gpu_memory_utilization(
    total_bytes: int,
    free_bytes: int,
    reserve_bytes: int,
    *,
    tensor_parallel_size: int = 1,
    enforce_eager: bool = False,
    cudagraph_in_budget: bool = False,
    cap: float = UTILIZATION_CAP,
) -> float:
    """A fraction of TOTAL memory that vLLM's start-up check against FREE memory accepts.

    vLLM checks ``utilization x CUDA total <= free`` after its own CUDA context (and, under
    tensor parallel, NCCL) exists; CUDA graphs then come on top unless the version counts them
    inside. So: free - reserve (co-resident services) - context - NCCL - graphs - 256 MiB, over
    the NVML total (the CUDA total is smaller, so this errs low), rounded down to 0.01, capped.
    0.0 when nothing is left.
    """
    if total_bytes <= 0:
        return 0.0
    room = free_bytes - reserve_bytes - CUDA_CONTEXT_BYTES - UTILIZATION_SAFETY_BYTES
    room -= non_torch_tp_bytes(tensor_parallel_size)
    if not enforce_eager and not cudagraph_in_budget:
        room -= CUDA_GRAPH_BYTES
    if room <= 0:
        return 0.0
    return min(cap, math.floor(room / total_bytes * 100) / 100)
