"""Weight bytes from the architecture: parameter counts per tensor class, times each quant's size.

Used for catalog artifacts that have no file on disk (a file's header gives exact bytes, see
gguf_file.py and hf_dir.py). Counts follow the HF/GGUF tensor shapes: attention q/k/v/o, the
gated FFN (gate, up, down), routed experts and their router, norms, embeddings and the LM head.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpu_preflight.boundedio import FileInputError, NumberRule
from gpu_preflight.models.errors import ModelFileError
from gpu_preflight.models.types import ModelArch, WeightLayout

# Bounds on an architecture, whichever file it came from (GGUF, config.json, a catalog). Each is
# well above every published model (the deepest, Llama-3.1-405B, has 126 layers and hidden size
# 16384; the largest vocabulary is 262k; the most experts, 512) and low enough that per-layer
# tables and byte counts stay small: a file declaring 10^8 layers is refused before any per-layer
# list is built.
MAX_LAYERS = 1024
ARCH_RULES: dict[str, NumberRule] = {
    "n_layers": NumberRule(1, MAX_LAYERS),
    "hidden_size": NumberRule(1, 2**18),
    "n_heads": NumberRule(1, 2**14),
    "n_kv_heads": NumberRule(1, 2**14),
    "head_dim": NumberRule(1, 2**14),
    "head_dim_v": NumberRule(1, 2**14),
    "intermediate_size": NumberRule(0, 2**20),
    "vocab_size": NumberRule(1, 2**24),
    "max_position_embeddings": NumberRule(1, 2**30),
    "sliding_window": NumberRule(1, 2**30),
    "n_experts": NumberRule(1, 2**14),
    "n_experts_per_token": NumberRule(1, 2**14),
    "expert_intermediate_size": NumberRule(1, 2**20),
    "n_shared_experts": NumberRule(0, 2**10),
}


def check_arch(arch: ModelArch, origin: str) -> ModelArch:
    """Refuse an architecture outside ``ARCH_RULES`` (a ``ModelFileError`` naming the field)."""
    try:
        for name, rule in ARCH_RULES.items():
            value = getattr(arch, name)
            if value is not None:
                rule.check(value, origin, name)
        layers = NumberRule(0, arch.n_layers - 1)
        if len(arch.sliding_window_layers) > arch.n_layers:
            raise FileInputError(
                origin,
                f"lists {len(arch.sliding_window_layers)} sliding-window layers",
                f"at most n_layers ({arch.n_layers})",
                key="sliding_window_layers",
            )
        for i in arch.sliding_window_layers:
            layers.check(i, origin, "sliding_window_layers[]")
        if (
            arch.n_experts_per_token
            and arch.n_experts
            and arch.n_experts_per_token > arch.n_experts
        ):
            raise FileInputError(
                origin,
                f"{arch.n_experts_per_token} experts per token but only {arch.n_experts} experts",
                "at most n_experts",
                key="n_experts_per_token",
            )
    except FileInputError as exc:
        raise ModelFileError(str(exc)) from exc
    return arch


# Bits per weight of each quant for the big matrices, and for embeddings/LM head where the
# quantizer keeps them wider. GGUF k-quant mixtures (Q4_K_M ...) use their measured average over
# real files: e.g. Llama-3.1-8B Q4_K_M is 4.92 GB for 8.03 B weights = 4.90 bits.
GGUF_BPW = {
    "F32": 32.0,
    "F16": 16.0,
    "BF16": 16.0,
    "Q8_0": 8.5,
    "Q6_K": 6.5625,
    "Q5_K_M": 5.69,
    "Q5_K_S": 5.54,
    "Q4_K_M": 4.89,
    "Q4_K_S": 4.58,
    "Q4_0": 4.5,
    "IQ4_XS": 4.25,
    "Q3_K_M": 3.91,
    "Q2_K": 3.35,
    "MXFP4": 4.25,
}
# Token embeddings in k-quant files are stored at a lower type than the mixture's big tensors
# (Q4_K_M keeps token_embd at Q4_K, output at Q6_K).
GGUF_EMBD_BPW = {
    "Q4_K_M": 4.5,
    "Q4_K_S": 4.5,
    "Q5_K_M": 5.5,
    "Q5_K_S": 5.5,
    "Q3_K_M": 3.44,
    "Q2_K": 3.35,
    "IQ4_XS": 4.25,
    "MXFP4": 8.5,
}
GGUF_OUTPUT_BPW = {
    "Q4_K_M": 6.5625,
    "Q4_K_S": 6.5625,
    "Q5_K_M": 6.5625,
    "Q5_K_S": 6.5625,
    "Q3_K_M": 6.5625,
    "Q2_K": 6.5625,
    "IQ4_XS": 6.5625,
    "MXFP4": 8.5,
}
# vLLM checkpoints: linear layers quantized, embeddings/LM head/norms kept in bf16.
# AWQ/GPTQ int4 with group size 128: 4 bits + a 16-bit scale and a 4-bit zero per 128 weights.
VLLM_LINEAR_BPW = {
    "bf16": 16.0,
    "fp16": 16.0,
    "fp8": 8.0,
    "awq": 4.15625,
    "gptq": 4.15625,
    "mxfp4": 16.0,
    "int8": 8.0,
}


@dataclass(frozen=True)
class ParamCounts:
    embed: int
    output: int  # 0 when tied
    attn_per_layer: tuple[int, ...]
    dense_ffn_per_layer: tuple[int, ...]  # shared experts included
    expert_per_layer: tuple[int, ...]  # routed experts (all of them)
    norms_per_layer: int
    other: int  # final norm

    @property
    def total(self) -> int:
        return (
            self.embed
            + self.output
            + sum(self.attn_per_layer)
            + sum(self.dense_ffn_per_layer)
            + sum(self.expert_per_layer)
            + self.norms_per_layer * len(self.attn_per_layer)
            + self.other
        )


def count_params(a: ModelArch) -> ParamCounts:
    h = a.hidden_size
    q = a.n_heads * a.head_dim
    kv = a.n_kv_heads * a.head_dim + a.n_kv_heads * a.v_head_dim
    attn = h * q + h * kv + q * h
    if a.architecture in ("qwen2", "gpt-oss"):
        attn += q + kv  # q/k/v biases
    if a.architecture == "gpt-oss":
        attn += h + a.n_heads  # o bias and attention sinks
    dense = 3 * h * a.intermediate_size if not a.is_moe else 0
    experts = 0
    if a.is_moe and a.n_experts and a.expert_intermediate_size:
        experts = a.n_experts * 3 * h * a.expert_intermediate_size + h * a.n_experts  # + router
        if a.n_shared_experts:
            dense += a.n_shared_experts * 3 * h * a.expert_intermediate_size
        if a.architecture == "gpt-oss":
            experts += a.n_experts * (2 * a.expert_intermediate_size + h) + a.n_experts  # biases
    norms = 2 * h + (2 * a.head_dim if a.architecture in ("qwen3", "qwen3moe", "gemma3") else 0)
    if a.architecture in ("gemma2", "gemma3"):
        norms += 2 * h  # pre- and post-FFN norms
    n = a.n_layers
    return ParamCounts(
        embed=a.vocab_size * h,
        output=0 if a.tied_embeddings else a.vocab_size * h,
        attn_per_layer=(attn,) * n,
        dense_ffn_per_layer=(dense,) * n,
        expert_per_layer=(experts,) * n,
        norms_per_layer=norms,
        other=h,
    )


def _bytes(params: int, bpw: float) -> int:
    return int(params * bpw / 8)


def derive_layout(arch: ModelArch, quant: str, engine: str) -> WeightLayout:
    """Weight bytes per place for one artifact, from the architecture (exact=False)."""
    c = count_params(arch)
    if engine == "llama.cpp":
        key = quant.upper()
        if key not in GGUF_BPW:
            raise ValueError(f"no size rule for GGUF quant {quant!r}; known: {', '.join(GGUF_BPW)}")
        bpw = GGUF_BPW[key]
        expert_bpw = bpw
        if key == "MXFP4":
            bpw = 8.5  # gpt-oss GGUFs keep attention in Q8_0; only the experts are MXFP4
        out_bpw = GGUF_OUTPUT_BPW.get(key, bpw)
        # A tied token_embd is quantized with the output's type (llama-quant.cpp
        # llama_tensor_get_type_impl: "for arches that share the same tensor between the token
        # embeddings and the output ..."), e.g. Q6_K in a Q4_K_M file.
        embd_bpw = out_bpw if arch.tied_embeddings else GGUF_EMBD_BPW.get(key, bpw)
        norm_bpw = 32.0
    else:
        key = quant.lower()
        if key not in VLLM_LINEAR_BPW:
            raise ValueError(
                f"no size rule for vLLM quantization {quant!r}; known: {', '.join(VLLM_LINEAR_BPW)}"
            )
        bpw = VLLM_LINEAR_BPW[key]
        expert_bpw = 4.25 if key == "mxfp4" else bpw
        embd_bpw = out_bpw = norm_bpw = 16.0
    per_layer = []
    per_expert = []
    for attn, dense, exp in zip(
        c.attn_per_layer, c.dense_ffn_per_layer, c.expert_per_layer, strict=True
    ):
        e = _bytes(exp, expert_bpw)
        per_layer.append(_bytes(attn + dense, bpw) + e + _bytes(c.norms_per_layer, norm_bpw))
        per_expert.append(e)
    embd = _bytes(c.embed, embd_bpw)
    out = _bytes(c.output, out_bpw)
    other = _bytes(c.other, norm_bpw)
    return WeightLayout(
        total_bytes=embd + out + sum(per_layer) + other,
        token_embd_bytes=embd,
        output_bytes=out,
        per_layer_bytes=tuple(per_layer),
        per_layer_expert_bytes=tuple(per_expert),
        other_bytes=other,
        exact=False,
    )


def scale_layout(layout: WeightLayout, total_bytes: int) -> WeightLayout:
    """Scale a derived layout so it sums to a listed artifact size (keeps the proportions)."""
    if layout.total_bytes <= 0:
        return layout
    f = total_bytes / layout.total_bytes
    per_layer = tuple(int(x * f) for x in layout.per_layer_bytes)
    per_expert = tuple(int(x * f) for x in layout.per_layer_expert_bytes)
    embd, out = int(layout.token_embd_bytes * f), int(layout.output_bytes * f)
    other = total_bytes - embd - out - sum(per_layer)
    return WeightLayout(total_bytes, embd, out, per_layer, per_expert, max(0, other), layout.exact)


# The architectures the memory models know: a KV of layers x KV heads x head size (with sliding
# windows and routed experts where the family has them). Anything else is refused by name, never
# planned as a look-alike: MLA (deepseek_v2/v3), hybrid linear-attention or SSM layers (qwen3_next,
# Mamba hybrids) and glm4_moe need their own KV formulas. HF config.json model_type -> our name.
HF_MODEL_TYPES = {
    "llama": "llama",
    "mistral": "llama",
    "mixtral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3moe",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
    "phi3": "phi3",
    "gpt_oss": "gpt-oss",
}
# GGUF general.architecture values (llama.cpp's LLM_ARCH_NAMES) of the same families.
GGUF_ARCHITECTURES = frozenset(
    {"llama", "qwen2", "qwen3", "qwen3moe", "gemma2", "gemma3", "phi3", "gpt-oss"}
)


def unknown_architecture(kind: str, name: str, origin: str) -> str:
    """The refusal text for an architecture the memory model does not know."""
    known = sorted(HF_MODEL_TYPES) if kind == "model_type" else sorted(GGUF_ARCHITECTURES)
    return (
        f"{origin}: {kind} {name!r} is not an architecture the memory model knows, so its memory "
        f"cannot be planned. Accepted: {', '.join(known)}."
    )
