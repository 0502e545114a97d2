"""Weight bytes from the architecture: parameter counts per tensor class, times each quant's size.

Used for catalog artifacts that have no file on disk (a file's header gives exact bytes, see
gguf_file.py and hf_dir.py). Counts follow the HF/GGUF tensor shapes: attention q/k/v/o, the
gated FFN (gate, up, down), routed experts and their router, norms, embeddings and the LM head.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version

from gguf import MODEL_ARCH_NAMES

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
    "shared_expert_intermediate_size": NumberRule(1, 2**20),
    "n_dense_layers": NumberRule(0, MAX_LAYERS),
    "kv_lora_rank": NumberRule(1, 2**16),
    "qk_rope_head_dim": NumberRule(1, 2**14),
    "q_lora_rank": NumberRule(1, 2**16),
    "n_nextn_layers": NumberRule(0, 16),
    "linear_conv_kernel": NumberRule(1, 64),
    "linear_k_heads": NumberRule(1, 2**14),
    "linear_v_heads": NumberRule(1, 2**14),
    "linear_k_head_dim": NumberRule(1, 2**14),
    "linear_v_head_dim": NumberRule(1, 2**14),
}
# The fields a hybrid model's recurrent (gated DeltaNet) layers are sized from.
LINEAR_FIELDS = (
    "linear_conv_kernel",
    "linear_k_heads",
    "linear_v_heads",
    "linear_k_head_dim",
    "linear_v_head_dim",
)


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
        for i in arch.recurrent_layers:
            layers.check(i, origin, "recurrent_layers[]")
        # a GGUF gives llama.cpp's state sizes directly (recurrent_state_elems)
        for i in (*arch.no_kv_layers, *arch.chunked_layers):
            layers.check(i, origin, "no_kv_layers[]")
        if arch.layer_kv_heads and len(arch.layer_kv_heads) != arch.n_layers:
            raise FileInputError(
                origin,
                f"lists K/V heads for {len(arch.layer_kv_heads)} layers",
                f"one entry per layer ({arch.n_layers})",
                key="layer_kv_heads",
            )
        # ssm_* sizes (state_kind, from a config.json) carry the other recurrent kinds
        if arch.recurrent_layers and arch.recurrent_state_elems is None and arch.state_kind is None:
            missing = [f for f in LINEAR_FIELDS if getattr(arch, f) is None]
            if missing:
                raise FileInputError(
                    origin,
                    f"has linear-attention layers but no {missing[0]}",
                    "the gated DeltaNet sizes (linear_conv_kernel_dim, linear_num_key_heads, "
                    "linear_num_value_heads, linear_key_head_dim, linear_value_head_dim)",
                    key=missing[0],
                )
        if arch.n_nextn_layers >= arch.n_layers:
            raise FileInputError(
                origin,
                f"{arch.n_nextn_layers} MTP layers of {arch.n_layers}",
                "fewer MTP (nextn) layers than layers",
                key="n_nextn_layers",
            )
        if arch.n_dense_layers > arch.n_layers:
            raise FileInputError(
                origin,
                f"{arch.n_dense_layers} leading dense layers of {arch.n_layers}",
                "at most n_layers",
                key="n_dense_layers",
            )
        if bool(arch.kv_lora_rank) != bool(arch.qk_rope_head_dim):
            raise FileInputError(
                origin,
                "has only one of kv_lora_rank and qk_rope_head_dim",
                "both (multi-head latent attention) or neither",
                key="kv_lora_rank",
            )
        if arch.qk_rope_head_dim and arch.qk_rope_head_dim >= arch.head_dim:
            raise FileInputError(
                origin,
                f"qk_rope_head_dim {arch.qk_rope_head_dim} is not below the q/k head size "
                f"{arch.head_dim}",
                "qk_nope_head_dim + qk_rope_head_dim with qk_nope_head_dim >= 1",
                key="qk_rope_head_dim",
            )
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
    # the legacy single-type ftypes (ggml.c block_q4_1 / block_q5_0 / block_q5_1: 20, 22 and 24
    # bytes per 32 weights); only their output is another type (Q6_K)
    "Q4_1": 5.0,
    "Q5_0": 5.5,
    "Q5_1": 6.0,
    "IQ4_XS": 4.25,
    "Q3_K_M": 3.91,
    "Q2_K": 3.35,
    "MXFP4": 4.25,
}
# token_embd and output follow llama.cpp's quantizer rule exactly (src/llama-quant.cpp,
# llama_tensor_get_type_impl and llama_ftype_get_default_type), so these are block sizes of one
# ggml type each (ggml.c type_traits: bytes per block x 8 / weights per block), not averages:
# - token_embd (untied) keeps the mixture's default type: Q4_K (4.5) in Q4_K_M/S, Q5_K (5.5) in
#   Q5_K_M/S, Q3_K (3.4375) in Q3_K_M, Q2_K (2.625) in Q2_K, IQ4_XS (4.25); Q8_0 in MXFP4_MOE
#   files (every non-expert tensor is Q8_0 there).
# - output (and a tied token_embd: "for arches that share the same tensor between the token
#   embeddings and the output, we quantize the token embeddings with the quantization of the
#   output tensor") is Q6_K unless the default type is Q8_0 (then Q8_0); Q8_0 in MXFP4_MOE files
#   and when the row (n_embd) is not a multiple of the type's block (QK_K = 256 for k-quants).
# Checked on published model buffers (bench/gpu_logs.json, no GGUF header read): Pythia-2.8B's
# token_embd 40.30 / 52.77 / 69.08 / 100.74 MiB in Q2_K / Q3_K / Q4_0 / Q6_K files, Command-R's
# tied token_embd 1640.62 MiB = 256000 x 8192 x 6.5625 / 8.
GGUF_EMBD_BPW = {
    "Q4_K_M": 4.5,
    "Q4_K_S": 4.5,
    "Q5_K_M": 5.5,
    "Q5_K_S": 5.5,
    "Q3_K_M": 3.4375,
    "Q2_K": 2.625,
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
    "Q4_0": 6.5625,
    "Q4_1": 6.5625,
    "Q5_0": 6.5625,
    "Q5_1": 6.5625,
    "Q6_K": 6.5625,
    "MXFP4": 8.5,
}
# Mixtures whose default type has 256-weight blocks, with the type an untied token_embd falls back
# to when n_embd is not a multiple of 256 (llama-quant.cpp tensor_type_fallback: Q4_K -> Q5_0,
# Q5_K -> Q5_1, Q3_K / Q2_K -> Q4_0, IQ4_XS -> IQ4_NL, Q6_K -> Q8_0); the output goes to Q8_0.
QK_K = 256
GGUF_EMBD_FALLBACK_BPW = {
    "Q4_K_M": 5.5,
    "Q4_K_S": 5.5,
    "Q5_K_M": 6.0,
    "Q5_K_S": 6.0,
    "Q3_K_M": 4.5,
    "Q2_K": 4.5,
    "IQ4_XS": 4.5,
    "Q6_K": 8.5,
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
    skipped_layers: int = 0  # trailing MTP blocks: not loaded, no norms either

    @property
    def total(self) -> int:
        return (
            self.embed
            + self.output
            + sum(self.attn_per_layer)
            + sum(self.dense_ffn_per_layer)
            + sum(self.expert_per_layer)
            + self.norms_per_layer * (len(self.attn_per_layer) - self.skipped_layers)
            + self.other
        )


def _attention_params(a: ModelArch) -> int:
    """q/k/v/o (and biases) of one full-attention layer."""
    h = a.hidden_size
    q = a.n_heads * a.head_dim
    if a.is_mla and a.kv_lora_rank and a.qk_rope_head_dim:
        # DeepSeek-V2/V3 (transformers modeling_deepseek_v3): q_a/q_b through q_lora_rank (or
        # one q_proj), kv_a_proj_with_mqa to the latent plus the rope key, kv_b back to every
        # head's nope key and value, the two low-rank norms, and o_proj.
        nope = a.head_dim - a.qk_rope_head_dim
        qp = (h + 1 + q) * a.q_lora_rank if a.q_lora_rank else h * q
        kv = h * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank
        kv += a.kv_lora_rank * a.n_heads * (nope + a.v_head_dim)
        return qp + kv + a.n_heads * a.v_head_dim * h
    kv = a.n_kv_heads * a.head_dim + a.n_kv_heads * a.v_head_dim
    if a.architecture == "qwen3next":
        q *= 2  # attn_output_gate: q_proj also produces the output gate
    attn = h * q + h * kv + a.n_heads * a.head_dim * h
    if a.architecture in ("qwen2", "gpt-oss", "glm4moe"):
        attn += q + kv  # q/k/v biases (GLM-4.5 attention_bias)
    if a.architecture == "gpt-oss":
        attn += h + a.n_heads  # o bias and attention sinks
    if a.architecture == "qwen3next":
        attn += 2 * a.head_dim  # q/k norms
    return attn


def _linear_attention_params(a: ModelArch) -> int:
    """One gated DeltaNet layer (transformers modeling_qwen3_next Qwen3NextGatedDeltaNet)."""
    h = a.hidden_size
    kd = (a.linear_k_heads or 0) * (a.linear_k_head_dim or 0)
    vd = (a.linear_v_heads or 0) * (a.linear_v_head_dim or 0)
    nv = a.linear_v_heads or 0
    conv_dim = 2 * kd + vd
    return (
        h * (2 * kd + 2 * vd)  # in_proj_qkvz
        + h * 2 * nv  # in_proj_ba
        + conv_dim * (a.linear_conv_kernel or 0)  # conv1d (no bias)
        + 2 * nv  # A_log, dt_bias
        + (a.linear_v_head_dim or 0)  # gated RMSNorm
        + vd * h  # out_proj
    )


def count_params(a: ModelArch) -> ParamCounts:
    h = a.hidden_size
    attn = _attention_params(a)
    linear = _linear_attention_params(a) if a.recurrent_layers else 0
    recurrent = set(a.recurrent_layers)
    dense_ffn = 3 * h * a.intermediate_size
    moe_dense = 0
    experts = 0
    if a.is_moe and a.n_experts and a.expert_intermediate_size:
        experts = a.n_experts * 3 * h * a.expert_intermediate_size + h * a.n_experts  # + router
        if a.n_shared_experts:
            width = a.shared_expert_intermediate_size or a.expert_intermediate_size
            moe_dense += a.n_shared_experts * 3 * h * width
            if a.architecture == "qwen3next":
                moe_dense += h  # shared_expert_gate
        if a.architecture == "gpt-oss":
            experts += a.n_experts * (2 * a.expert_intermediate_size + h) + a.n_experts  # biases
        if a.architecture in ("deepseek2", "glm4moe"):
            experts += a.n_experts  # e_score_correction_bias
    norms = 2 * h + (
        2 * a.head_dim if a.architecture in ("qwen3", "qwen3moe", "gemma3", "glm4moe") else 0
    )
    if a.architecture in ("gemma2", "gemma3"):
        norms += 2 * h  # pre- and post-FFN norms
    n = a.n_layers
    trunk = n - a.n_nextn_layers
    attn_l, dense_l, exp_l = [], [], []
    for il in range(n):
        if il >= trunk:  # MTP blocks: not loaded
            attn_l.append(0)
            dense_l.append(0)
            exp_l.append(0)
            continue
        attn_l.append(linear if il in recurrent else attn)
        if not a.is_moe or il < a.n_dense_layers:
            dense_l.append(dense_ffn)
            exp_l.append(0)
        else:
            dense_l.append(moe_dense)
            exp_l.append(experts)
    return ParamCounts(
        embed=a.vocab_size * h,
        output=0 if a.tied_embeddings else a.vocab_size * h,
        attn_per_layer=tuple(attn_l),
        dense_ffn_per_layer=tuple(dense_l),
        expert_per_layer=tuple(exp_l),
        norms_per_layer=norms,
        other=h,
        skipped_layers=a.n_nextn_layers,
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
        untied_embd_bpw = GGUF_EMBD_BPW.get(key, bpw)
        if key in GGUF_EMBD_FALLBACK_BPW and arch.hidden_size % QK_K:
            # rows of n_embd weights that no 256-block divides (Qwen2.5-0.5B: 896)
            out_bpw = 8.5
            untied_embd_bpw = GGUF_EMBD_FALLBACK_BPW[key]
        # A tied token_embd is quantized with the output's type (llama-quant.cpp
        # llama_tensor_get_type_impl: "for arches that share the same tensor between the token
        # embeddings and the output ..."), e.g. Q6_K in a Q4_K_M file.
        embd_bpw = out_bpw if arch.tied_embeddings else untied_embd_bpw
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
    trunk = arch.n_layers - arch.n_nextn_layers
    for il, (attn, dense, exp) in enumerate(
        zip(c.attn_per_layer, c.dense_ffn_per_layer, c.expert_per_layer, strict=True)
    ):
        e = _bytes(exp, expert_bpw)
        norms = _bytes(c.norms_per_layer, norm_bpw) if il < trunk else 0
        per_layer.append(_bytes(attn + dense, bpw) + e + norms)
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
    """Fit a derived layout to a listed artifact size, no part below what it can hold.

    ``layout`` is derive_layout's: token_embd and output sized by llama.cpp's own type rule
    (GGUF_EMBD_BPW / GGUF_OUTPUT_BPW; 16-bit in vLLM checkpoints), the repeating layers by the
    mixture's average bits per weight, which is what the listed size corrects. Scaling every part
    by ``f = listed / derived`` (as this did before) shrank token_embd below its real size when
    f < 1, and token_embd is the host's weight buffer once layers are offloaded (Command-R 1531
    MiB against 1640.62 printed, 1640.6 by the rule).

    The listed size says how many bytes there are, not where the difference from the derived
    total lies: in the layers' mixture (then token_embd/output are at their rule size) or in a
    file whose token_embd/output depart from the rule (--token-embedding-type,
    --output-tensor-type, hand-made mixtures). Each part is therefore sized as if the difference
    were its own, so neither the host nor a GPU is under-predicted either way:

    - token_embd, output: the larger of the rule size and the scaled share;
    - layers (their expert share alike) and norms: the larger of the scaled share and what the
      listed size leaves them after token_embd and output at their rule size.

    Decision: the total is NOT held to the listed size; the excess, ``|1 - f| x (token_embd +
    output)`` bytes, is kept as over-prediction (the safe side): with f < 1 on the output's
    device (Command-R +109 MiB of 20.9 GiB, gemma-2-9B +50 MiB), with f > 1 on the host (Pythia
    Q4_K +2.6 MiB). ``total_bytes`` of the result is the sum of its parts, at least the listed
    size.
    """
    if layout.total_bytes <= 0:
        return layout
    f = total_bytes / layout.total_bytes
    layers = sum(layout.per_layer_bytes)
    other = int(layout.other_bytes * f)
    left = total_bytes - layout.token_embd_bytes - layout.output_bytes - other
    g = max(f, left / layers) if layers > 0 else f
    per_layer = tuple(int(x * g) for x in layout.per_layer_bytes)
    per_expert = tuple(int(x * g) for x in layout.per_layer_expert_bytes)
    embd = max(layout.token_embd_bytes, int(layout.token_embd_bytes * f))
    out = max(layout.output_bytes, int(layout.output_bytes * f))
    # the int() roundings go to the norms, so the parts never sum below the listed size
    other = max(other, total_bytes - embd - out - sum(per_layer))
    return WeightLayout(
        embd + out + sum(per_layer) + other,
        embd,
        out,
        per_layer,
        per_expert,
        other,
        layout.exact,
        int(layout.vision_bytes * f),
        layout.skipped_bytes,
    )


# HF config.json model_type -> the family name the memory models use for it (the GGUF
# general.architecture of the same family, llama.cpp's LLM_ARCH_NAMES), for the families whose
# parameters count_params counts from the architecture (the catalog's). Which model_types are
# planned is no longer this list: any architecture the pinned vLLM's registry serves
# (data/vllm_registry.json, models/registry.py) is read generically by models/hf_config.py,
# whose ROWS name the exceptions with their reason; a model_type not here keeps its own name.
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
    "deepseek_v2": "deepseek2",
    "deepseek_v3": "deepseek2",
    "glm4_moe": "glm4moe",
    "qwen3_next": "qwen3next",
}
# GGUF general.architecture: every architecture llama.cpp names (gguf-py's MODEL_ARCH_NAMES, kept in
# step with llama.cpp's src/llama-arch.cpp LLM_ARCH_NAMES) is planned generically from its header
# (models/gguf_file.py), except those llama-server cannot serve as a model of its own, refused
# here with the reason.
GGUF_REFUSED: dict[str, str] = {
    "clip": (
        "a vision/audio projector: llama-server loads it beside a language model with --mmproj "
        "(src/llama-model.cpp loads no hparams for it and builds no graph)"
    ),
    "wavtokenizer-dec": (
        "an audio decoder (text-to-speech vocoder, src/models/wavtokenizer-dec.cpp): it makes "
        "audio from codes, llama-server serves it only as the second model of a TTS pipeline"
    ),
    "gptj": (
        "named by llama.cpp but not implemented: its loader refuses it (src/llama-model.cpp: "
        "unsupported model architecture)"
    ),
    "t5": (
        "an encoder-decoder model: llama-server never runs the encoder (tools/server calls "
        "llama_decode only, never llama_encode), so it cannot serve it"
    ),
}
GGUF_ARCHITECTURES = frozenset(set(MODEL_ARCH_NAMES.values()) - set(GGUF_REFUSED))
# The installed gguf package whose MODEL_ARCH_NAMES is the list above (0.19.0 as pinned). The
# llama.cpp the image serves with (vendored in llama-cpp-python 0.3.36, src/llama-arch.cpp
# LLM_ARCH_NAMES) knows more architectures than it lists (deepseek4, kimi-k3, qwen4exp ...).
GGUF_VERSION = version("gguf")
UNLISTED_NOTE = f"not in gguf {GGUF_VERSION}'s list: figures from llama.cpp's own dry run"


def unlisted_gguf_architecture(name: str) -> str | None:
    """Why a GGUF's architecture is planned only with llama.cpp's own dry run folded in, or None.

    An architecture outside gguf's MODEL_ARCH_NAMES (and not refused by name, GGUF_REFUSED) is
    read by the generic header reader (its {arch}.* keys and its tensor list), but no rule here
    was checked against it: its weights and KV are llama-fit-params' (plan/reconcile.py), and
    where that dry run cannot be had the plan is a refusal (pipeline.py check_on_cpu,
    check_with_engine), never the closed form alone.
    """
    if name in GGUF_ARCHITECTURES or name in GGUF_REFUSED:
        return None
    return f"general.architecture {name!r} is not in gguf {GGUF_VERSION}'s list of architectures"


def unknown_architecture(kind: str, name: str, origin: str) -> str:
    """The refusal text for an architecture the memory model does not know."""
    known = sorted(HF_MODEL_TYPES) if kind == "model_type" else sorted(GGUF_ARCHITECTURES)
    if kind != "model_type" and name in GGUF_REFUSED:
        return (
            f"{origin}: {kind} {name!r} is {GGUF_REFUSED[name]}, so it is not planned as a model. "
            f"Accepted: a GGUF of a language model ({len(known)} llama.cpp architectures)."
        )
    return (
        f"{origin}: {kind} {name!r} is not an architecture the memory model knows, so its memory "
        f"cannot be planned. Accepted: {', '.join(known)}."
    )
