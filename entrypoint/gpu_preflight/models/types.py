"""What the planner knows about a model: its architecture and the artifacts each engine serves.

Shared by the catalog (data/models.json), the GGUF header reader and the HF directory reader,
so that a model on disk and a catalog entry look the same to the memory models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Engine = Literal["vllm", "llama.cpp"]


@dataclass(frozen=True)
class ModelArch:
    """Architecture facts, named as in the model's config.json (HF) / GGUF metadata."""

    architecture: (
        str  # HF model_type / GGUF general.architecture: llama, qwen2, qwen3moe, gemma2, gpt-oss
    )
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int  # K width per head; V width is the same unless head_dim_v says otherwise
    intermediate_size: int  # dense FFN size (0 when every layer is MoE)
    vocab_size: int
    tied_embeddings: bool
    max_position_embeddings: int
    head_dim_v: int | None = None
    # Sliding-window attention: layers listed here keep only `sliding_window` tokens of KV.
    sliding_window: int | None = None
    sliding_window_layers: tuple[int, ...] = ()
    # Mixture of experts (None/0 for dense models).
    n_experts: int | None = None
    n_experts_per_token: int | None = None
    expert_intermediate_size: int | None = None
    n_shared_experts: int | None = None

    @property
    def v_head_dim(self) -> int:
        return self.head_dim_v if self.head_dim_v is not None else self.head_dim

    @property
    def is_moe(self) -> bool:
        return bool(self.n_experts)


@dataclass(frozen=True)
class WeightLayout:
    """Where the weight bytes of one artifact sit: what offload and splitting planners need.

    Exact when read from a file (GGUF tensor table, safetensors headers); derived from the artifact
    size and the architecture otherwise (``exact`` says which).
    """

    total_bytes: int
    token_embd_bytes: (
        int  # input embedding table (stays on CPU in llama.cpp unless it is the output too)
    )
    output_bytes: int  # LM head; 0 when tied to the embeddings
    per_layer_bytes: tuple[int, ...]  # each repeating block, experts included
    per_layer_expert_bytes: tuple[int, ...]  # the routed-expert share of each block (0 for dense)
    other_bytes: int  # norms and anything outside the blocks
    exact: bool


@dataclass(frozen=True)
class Artifact:
    """One servable form of a model: an HF repo for vLLM, or a GGUF file for llama.cpp."""

    engine: Engine
    repo: str  # Hugging Face repo id
    quant: str  # bf16, fp8, awq, gptq, mxfp4 (vLLM); Q4_K_M, Q8_0, MXFP4, F16 ... (GGUF)
    weight_bytes: int  # bytes of weights as stored (GGUF: file size minus header)
    file: str | None = None  # GGUF file name inside the repo; None for vLLM
    path: str | None = None  # a local file or directory when the model was given by path
    source: str | None = None  # public page the size was taken from
    layout: WeightLayout | None = None


@dataclass(frozen=True)
class ModelSpec:
    id: str  # catalog id, e.g. "qwen2.5-7b-instruct"
    name: str  # human name
    hf_id: str  # canonical Hugging Face repo of the original weights
    params_b: float  # total parameters, billions
    active_params_b: float | None  # per token (MoE); None for dense
    arch: ModelArch
    artifacts: tuple[Artifact, ...]
    source: str  # public page the architecture facts were taken from (its config.json)
    draft: str | None = None  # catalog id of a speculative-decoding draft model, where one fits
