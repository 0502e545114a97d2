"""Both engines' settings records: what an argv is written from, and what a fit predicted with.

``LlamaServerSettings`` (llama-server) and ``VllmSettings`` (vLLM) sit in one module so that
``plan/common.py`` (the ``Fit`` holding either) and each engine's fit import them without importing
each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_HOST = "0.0.0.0"  # inside a container: reachable through the published port
DEFAULT_PORT = 8080  # llama-server's default; vLLM's is 8000, we use one port for both images


@dataclass(frozen=True)
class DraftSettings:
    """A speculative-decoding draft model: where the engine loads it from and how much it drafts."""

    repo: str  # HF repo (vLLM: the model; llama.cpp: the GGUF repo)
    file: str | None  # GGUF file inside the repo (llama.cpp)
    path: str | None  # local file or directory
    tokens: int  # tokens drafted per step
    tensor_parallel_size: int = 1  # vLLM: must equal the target's


@dataclass(frozen=True)
class LlamaServerSettings:
    n_ctx_total: int  # llama-server -c: the whole KV, shared by the parallel slots
    parallel: int
    n_gpu_layers: int  # -1: all
    n_cpu_moe: int
    flash_attn: str  # on | off | auto
    cache_type_k: str
    cache_type_v: str
    n_batch: int
    n_ubatch: int
    tensor_split: tuple[float, ...]  # empty: one GPU or none
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    draft: DraftSettings | None = None
    split_mode: str | None = None  # only when the user set it
    main_gpu: int | None = None
    devices: str | None = None  # --device: the user's, or the planner's order; None: not written
    kv_unified: bool | None = None
    repack: bool | None = None
    load_mode: str | None = None
    fit: str = "off"  # llama-server's own --fit would re-size the plan; the plan is the fit
    alias: str | None = None  # None: the model's id
    no_mmproj: bool = False  # -hf downloads and loads a repo's projector unless told not to
    spec_type: str | None = None  # the user's own --spec-type
    extra: tuple[tuple[str, str], ...] = ()  # the user's modelled file flags (--mmproj F, --lora F)
    cache_ram_mib: int = 0  # --cache-ram: the prompt cache's host RAM
    ctx_checkpoints: int | None = None  # --ctx-checkpoints: written for sliding-window models
    op_offload: bool | None = None  # only when the user set it
    swa_full: bool = False  # --swa-full: only when the user set it


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
    # vLLM's multimodal settings, each only when the user set it (plan/vllm.py vllm_argv).
    limit_mm_per_prompt: Mapping[str, Any] | None = None
    language_model_only: bool | None = None
    skip_mm_profiling: bool | None = None
    mm_encoder_tp_mode: str | None = None
    served_model_name: str | None = None  # None: the model's id
    revision: str | None = None  # the Hub commit the plan read the model at
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1  # --data-parallel-size: ranks of tp x pp cards each
    # Layers per pipeline stage, carried to vLLM as VLLM_PP_LAYER_PARTITION (vllm_env); empty
    # with one stage.
    pp_layer_partition: tuple[int, ...] = ()
    # The cards vLLM must use when they are not CUDA0..n-1 of this process (one card of a mixed
    # pair, an identical group that skips a card): vLLM has no device flag, it takes cuda:0..
    # of what CUDA_VISIBLE_DEVICES shows it. UUIDs where known, else NVML indices.
    visible_devices: tuple[str, ...] = ()
