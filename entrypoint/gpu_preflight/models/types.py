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
    # Shared-expert FFN width where it differs from expert_intermediate_size (qwen3_next's
    # shared_expert_intermediate_size); None: expert_intermediate_size.
    shared_expert_intermediate_size: int | None = None
    # MoE models whose first layers keep a dense FFN of intermediate_size (DeepSeek-V2/V3 and
    # GLM-4.5 first_k_dense_replace; GGUF {arch}.leading_dense_block_count).
    n_dense_layers: int = 0
    # Multi-head latent attention (deepseek_v2/v3): the cache holds one latent of kv_lora_rank
    # plus the shared rope key of qk_rope_head_dim per token and layer, not heads x head_dim.
    # head_dim / head_dim_v stay the per-head q/k (nope + rope) and v widths of the config.
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    q_lora_rank: int | None = None
    # Multi-token-prediction blocks stored after the trunk (GGUF {arch}.nextn_predict_layers):
    # the last n_nextn_layers of n_layers. Neither engine loads them by default nor gives them
    # KV (llama-model.cpp: TENSOR_SKIP unless load_mtp; the KV filter il < n_layer()). HF
    # configs count only the trunk in num_hidden_layers, so there it is 0.
    n_nextn_layers: int = 0
    # Hybrid linear attention (qwen3_next gated DeltaNet): these layers keep a fixed-size
    # recurrent state per sequence (a conv state and an ssm state) instead of a KV cache.
    recurrent_layers: tuple[int, ...] = ()
    linear_conv_kernel: int | None = None
    linear_k_heads: int | None = None
    linear_v_heads: int | None = None
    linear_k_head_dim: int | None = None
    linear_v_head_dim: int | None = None
    # A vision tower (config.json vision_config) whose weights the checkpoint holds.
    has_vision: bool = False

    @property
    def v_head_dim(self) -> int:
        return self.head_dim_v if self.head_dim_v is not None else self.head_dim

    @property
    def is_mla(self) -> bool:
        return bool(self.kv_lora_rank)

    def has_kv(self, il: int) -> bool:
        """Whether layer il has an attention KV cache (not an MTP block, not recurrent)."""
        if il >= self.n_layers - self.n_nextn_layers:
            return False
        return il not in self.recurrent_layers

    @property
    def kv_layer_count(self) -> int:
        return sum(1 for il in range(self.n_layers) if self.has_kv(il))

    @property
    def recurrent_layer_count(self) -> int:
        return len(self.recurrent_layers)

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
    # Of other_bytes: the vision tower and projector a multimodal checkpoint holds (vLLM loads
    # them); 0 for text-only models.
    vision_bytes: int = 0
    # Bytes in the files that the engine does not load (MTP blocks), left out of total_bytes.
    skipped_bytes: int = 0


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
