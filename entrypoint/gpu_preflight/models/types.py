"""What the planner knows about a model: its architecture and the artifacts each engine serves.

Shared by the catalog (data/models.json), the GGUF header reader and the HF directory reader,
so that a model on disk and a catalog entry look the same to the memory models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Engine = Literal["vllm", "llama.cpp"]


@dataclass(frozen=True)
class VisionEncoder:
    """A multimodal checkpoint's tower as vLLM's encoder profiling pass sees it (memory/vllm.py
    encoder_bytes): the most language-model tokens one item becomes, the tower's sequence length
    for that item, and the tower's widths."""

    tokens_per_item: int  # vLLM's get_mm_max_tokens_per_item for images
    patches_per_token: int  # tower positions per language-model token (the spatial merge)
    hidden_size: int
    intermediate_size: int
    # Video fills the sequence: its largest item is max_model_len tokens (Qwen2-VL family,
    # qwen2_vl.py get_max_video_tokens / get_num_frames_with_most_features).
    video: bool = False
    source: str = ""  # the vLLM model file the per-item figure follows


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
    # The config's own names, kept so a catalog match is on the full architecture (a dense
    # Mistral-7B directory is not Mixtral) and notes can say what was read; "" from a catalog.
    hf_model_type: str = field(default="", compare=False)
    hf_architecture: str = field(default="", compare=False)
    # Per-layer K/V heads where they differ between layers (DeciLM / Nemotron-NAS, OpenELM);
    # () when every attention layer has n_kv_heads.
    layer_kv_heads: tuple[int, ...] = ()
    # Per-layer K (= V) head size where it differs between layers (Gemma-4 per_layer_config:
    # global layers 512, sliding 256); () when every layer has head_dim / head_dim_v.
    layer_head_dims: tuple[int, ...] = ()
    # Layers with neither a KV cache nor a recurrent state of their own: attention-free blocks
    # (DeciLM no_op attention) and layers reading another layer's cache (KV sharing).
    no_kv_layers: tuple[int, ...] = ()
    # Chunked local attention (Llama-4 attention_chunk_size): these layers keep one chunk.
    attention_chunk_size: int | None = None
    chunked_layers: tuple[int, ...] = ()
    # Recurrent layers other than gated DeltaNet (vllm/model_executor/layers/mamba/
    # mamba_utils.py MambaStateShapeCalculator): "mamba1", "mamba2", "short_conv",
    # "linear_attention"; None with recurrent_layers set is gated DeltaNet (linear_* fields).
    state_kind: str | None = None
    ssm_inner_size: int | None = None  # mamba intermediate_size / short-conv width
    ssm_state_size: int | None = None  # d_state
    ssm_conv_kernel: int | None = None
    ssm_n_groups: int | None = None
    ssm_n_heads: int | None = None
    ssm_head_dim: int | None = None
    ssm_state_fp32: bool = False  # the temporal state in float32 (mamba_ssm_cache_dtype)
    # DeepSeek sparse attention (DeepSeek-V3.2, GLM-5): each attention layer also caches the
    # indexer's key, bytes per token (vLLM deepseek_v2.py DeepseekV32IndexerCache: fp8 keys of
    # index_head_dim plus a float32 scale per 128); 0 without an indexer.
    indexer_bytes_per_token: int = 0
    # The vision tower's figures for vLLM's encoder profiling pass (None: text only, or a tower
    # whose per-item size the reader does not know).
    vision: VisionEncoder | None = field(default=None, compare=False)
    # What llama.cpp reads from a GGUF header beyond the fields above (models/gguf_file.py):
    # K/V head sizes of the sliding-window layers where they differ from head_dim/head_dim_v
    # ({arch}.attention.key_length_swa / value_length_swa; llama-hparams.cpp n_embd_head_k(il)).
    swa_head_dim: int | None = None
    swa_head_dim_v: int | None = None
    # (n_embd_r, n_embd_s): f32 elements of one sequence's state in each recurrent layer as
    # llama.cpp sizes it (llama-hparams.cpp n_embd_r()/n_embd_s(): Mamba/Mamba-2 conv + SSM state,
    # RWKV token shift + wkv state, LFM2 short-conv window); None: from the linear_* fields.
    recurrent_state_elems: tuple[int, int] | None = None
    # Every layer has an attention KV cache and a recurrent state side by side (Falcon-H1:
    # llama-model.cpp create_memory, both layer filters true).
    parallel_hybrid: bool = False

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
        recurrent = il in self.recurrent_layers and not self.parallel_hybrid
        return not recurrent and il not in self.no_kv_layers

    def kv_heads_of(self, il: int) -> int:
        """K/V heads of attention layer il (layer_kv_heads where the layers differ)."""
        return self.layer_kv_heads[il] if self.layer_kv_heads else self.n_kv_heads

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
    # Tensor-parallel sharding read from each tensor's name and shape (hf_dir.py), None where
    # unknown (catalog, GGUF): bytes every rank holds whole (norms, biases of row-parallel
    # layers, routers, MLA's low-rank "a" projections, vision towers vLLM does not shard), and
    # the K/V projections, which are replicated once tensor parallel exceeds the KV heads.
    replicated_bytes: int | None = None
    kv_proj_bytes: int = 0
    # Bytes vLLM holds beyond the checkpoint's (hf_dir.py, each citing vLLM's source): the
    # vocabulary padded to a multiple of 64 (split tp ways) and Mamba's A kept in float32 (split
    # when the checkpoint's A_log is 2-D, whole on every rank when 1-D: load_replicated_bytes).
    load_extra_bytes: int = 0
    load_replicated_bytes: int = 0
    # Elements in the headers (packed quantized tensors count their packed elements); 0 unknown.
    parameters: int = 0


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
