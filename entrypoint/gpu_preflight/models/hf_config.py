"""A Hugging Face config.json read into a ModelArch, for any architecture vLLM's registry serves.

Order of the checks (issue 19): the model_type and architecture first (data/vllm_registry.json,
models/registry.py), so an architecture vLLM does not serve is named as such, not as a file that
lacks a key; then the keys, read generically the way vLLM's ModelConfig reads them
(vllm/config/model.py get_total_num_kv_heads, get_head_size, get_num_layers); then, where one
architecture spells a fact its own way, its row in ``ROWS`` (one per model_type, citing the vLLM
model file that reads it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpu_preflight.boundedio import FileInputError, NumberRule, shorten
from gpu_preflight.models.errors import ModelFileError
from gpu_preflight.models.layout import ARCH_RULES, HF_MODEL_TYPES, MAX_LAYERS, check_arch
from gpu_preflight.models.registry import Registry, load_registry
from gpu_preflight.models.types import ModelArch, VisionEncoder

# transformers' Gemma3TextConfig.sliding_window_pattern: every Nth layer is global (N >= 1).
SWA_PATTERN_RULE = NumberRule(1, MAX_LAYERS)
STATE_RULE = NumberRule(1, 2**20)

# The keys a config may spell a field with; the first present and not null wins. These are the
# attribute_map aliases of transformers' config classes (GPT2Config n_layer/n_embd/n_head,
# MptConfig n_layers/d_model/n_heads, ...), which vLLM reads through the config object.
ALIASES: dict[str, tuple[str, ...]] = {
    "n_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "hidden_size": ("hidden_size", "n_embd", "d_model", "model_dim"),
    "n_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "intermediate_size": ("intermediate_size", "ffn_hidden_size", "n_inner", "ffn_dim"),
    "vocab_size": ("vocab_size", "padded_vocab_size"),
    "max_position_embeddings": (
        "max_position_embeddings",
        "n_positions",
        "max_sequence_length",
        "seq_length",
        "max_seq_len",
    ),
}
# vllm/config/model.py ModelConfig.get_total_num_kv_heads: the first of these that is set, else
# the attention heads (multi-head attention).
KV_HEAD_KEYS = ("n_head_kv", "num_kv_heads", "num_key_value_heads", "multi_query_group_num")
# transformers' layer_types values that are attention with their own KV cache.
# vllm/config/model.py _ATTENTION_LAYER_TYPES: sparse (indexed) attention caches every token too.
_ATTENTION = (
    "full_attention",
    "attention",
    "global",
    "global_attention",
    "indexed_attention",
    "deepseek_sparse_attention",
    "qwen_sparse_attention",
)
_SLIDING = ("sliding_attention", "sliding_window", "local", "local_attention")
_CHUNKED = ("chunked_attention",)


@dataclass(frozen=True)
class Row:
    """How one model_type departs from the generic reading (the vLLM file that reads it).

    kind: "attention" (the generic K/V cache), "mla" (one latent + rope key per token),
    "gdn" (gated DeltaNet + attention, qwen3_next), "mamba1", "mamba2", "short_conv".
    layers: the hybrid or sliding-window pattern reader in ``LAYER_READERS`` ("" generic).
    keys: extra spellings per ModelArch field, tried before the generic ones.
    """

    source: str
    kind: str = "attention"
    layers: str = ""
    keys: tuple[tuple[str, tuple[str, ...]], ...] = ()
    refused: str = ""  # why this architecture is not planned (a layout not modelled)


M = "vllm/model_executor/models/"
# The Mamba-2 spellings of granitemoehybrid, bamba and falcon_h1's configs (their vLLM files
# read the same keys into MambaMixer2)
_MAMBA2_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ssm_n_heads", ("mamba_n_heads",)),
    ("ssm_head_dim", ("mamba_d_head",)),
    ("ssm_n_groups", ("mamba_n_groups",)),
    ("ssm_state_size", ("mamba_d_state",)),
    ("ssm_conv_kernel", ("mamba_d_conv",)),
)
# One row per model_type whose config needs reading of its own. Everything else is generic.
ROWS: dict[str, Row] = {
    "deepseek_v2": Row(M + "deepseek_v2.py DeepseekV2MLAAttention", "mla"),
    "deepseek_v3": Row(M + "deepseek_v2.py DeepseekV2MLAAttention", "mla"),
    "deepseek_v32": Row(
        M + "deepseek_v2.py DeepseekV2MLAAttention + Indexer (DeepseekV32IndexerCache)", "mla"
    ),
    "glm_moe_dsa": Row(M + "deepseek_v2.py (GLM-5: DeepSeek sparse attention)", "mla"),
    "hy_v4": Row(M + "hy_v4.py (MLA with an indexer)", "mla"),
    "kimi_k2": Row(M + "deepseek_v2.py (Kimi-K2 is DeepseekV3ForCausalLM)", "mla"),
    "longcat_flash": Row(M + "longcat_flash.py (MLA, two attention blocks per layer)", "mla"),
    "qwen3_next": Row(M + "qwen3_next.py Qwen3NextGatedDeltaNet", "gdn", "layer_types"),
    "gemma2": Row(M + "gemma2.py Gemma2Attention: even layers slide", layers="gemma2"),
    "gemma3": Row(
        M + "gemma3.py Gemma3Attention: layer_types / sliding_window_pattern", layers="gemma3"
    ),
    "gemma3_text": Row(M + "gemma3.py Gemma3Attention", layers="gemma3"),
    "cohere2": Row(
        M + "commandr.py CohereAttention: layer_types / sliding_window_pattern", layers="gemma3"
    ),
    "mamba": Row(
        M + "mamba.py MambaMixer (state_size, conv_kernel, intermediate_size)",
        "mamba1",
        "all_state",
    ),
    "falcon_mamba": Row(M + "mamba.py (FalconMambaForCausalLM is Mamba)", "mamba1", "all_state"),
    "mamba2": Row(M + "mamba2.py Mamba2ForCausalLM MambaMixer2", "mamba2", "all_state"),
    "jamba": Row(
        M + "jamba.py JambaForCausalLM: attn_layer_period / attn_layer_offset, MambaMixer",
        "mamba1",
        "jamba",
        keys=(
            ("ssm_state_size", ("mamba_d_state",)),
            ("ssm_conv_kernel", ("mamba_d_conv",)),
        ),
    ),
    "nemotron_h": Row(
        M + "nemotron_h.py NemotronHForCausalLM: hybrid_override_pattern M/*/-/E, MambaMixer2",
        "mamba2",
        "nemotron_h",
        keys=(
            ("ssm_n_heads", ("mamba_num_heads",)),
            ("ssm_head_dim", ("mamba_head_dim",)),
        ),
    ),
    "granitemoehybrid": Row(
        M + "granitemoehybrid.py: layer_types mamba/attention, MambaMixer2",
        "mamba2",
        "layer_types",
        keys=_MAMBA2_KEYS,
    ),
    "bamba": Row(
        M + "bamba.py BambaForCausalLM: attn_layer_indices, MambaMixer2",
        "mamba2",
        "bamba",
        keys=_MAMBA2_KEYS,
    ),
    "lfm2": Row(
        M + "lfm2.py Lfm2ShortConv: layer_types conv/full_attention", "short_conv", "layer_types"
    ),
    "lfm2_moe": Row(M + "lfm2_moe.py Lfm2MoeShortConv", "short_conv", "layer_types"),
    "falcon_h1": Row(
        M + "falcon_h1.py FalconH1ParallelHybrid: attention and MambaMixer2 in every layer",
        "mamba2",
        "parallel",
        keys=(("ssm_inner_size", ("mamba_d_ssm",)), *_MAMBA2_KEYS),
    ),
    "qwen3_5_text": Row(
        M + "qwen3_5.py: gated DeltaNet + attention by layer_types", "gdn", "layer_types"
    ),
    "qwen3_5_moe_text": Row(M + "qwen3_5.py (MoE)", "gdn", "layer_types"),
    "olmo_hybrid": Row(
        M + "olmo_hybrid.py: gated DeltaNet + attention by layer_types", "gdn", "layer_types"
    ),
    "gemma3n_text": Row(
        M + "gemma3n.py Gemma3nAttention: the last num_kv_shared_layers read an earlier cache",
        layers="kv_shared",
    ),
    "gemma3n": Row(M + "gemma3n.py", layers="kv_shared"),
    "deepseek_v4": Row(
        M + "deepseek_v4.py", refused="compressed attention caches are not modelled"
    ),
    "inkling_text": Row(
        M + "inkling.py", refused="hybrid sliding/short-conv layers are not modelled"
    ),
    "zamba2": Row(
        M + "zamba2.py Zamba2HybridLayer: a Mamba-2 mixer in every layer, plus the shared "
        "attention block (its own KV cache) in each of hybrid_layer_ids",
        "mamba2",
        "zamba2",
        keys=(
            ("head_dim", ("attention_head_dim",)),  # zamba2.py: attention over 2 x hidden
            ("ssm_n_heads", ("n_mamba_heads",)),
            ("ssm_head_dim", ("mamba_headdim",)),
            ("ssm_n_groups", ("mamba_ngroups",)),
            ("ssm_state_size", ("mamba_d_state",)),
            ("ssm_conv_kernel", ("mamba_d_conv",)),
        ),
    ),
    "minimax_text_01": Row(
        M + "minimax_text_01.py",
        refused="lightning (linear) attention state is not modelled",
    ),
    "kimi_linear": Row(
        # registry.py maps KimiLinearForCausalLM to vllm/models/kimi_k3/nvidia/model.py: KDA
        # layers (a gated-DeltaNet-like fixed state per sequence) where vLLM's KimiLinearConfig
        # is_kda_layer says (linear_attn_config kda_layers, numbered from 1), MLA elsewhere.
        "vllm/models/kimi_k3/nvidia/model.py KimiLinearForCausalLM",
        "gdn",
        "layer_types",
    ),
    "plamo2": Row(M + "plamo2.py", refused="PLaMo-2's Mamba layout is not modelled"),
}
# Multi-head latent attention but a regular K/V cache in vLLM: MiniCPM3 has kv_lora_rank, yet
# vllm/model_executor/models/minicpm3.py builds Attention(num_heads, qk_head_dim, num_kv_heads =
# num_heads) over the decompressed keys.
_NOT_MLA = ("minicpm3",)


class _Reader:
    """Typed, bounded reads of one config dict; errors name the model_type, then the key."""

    def __init__(self, c: dict[str, Any], where: str, model_type: str, row: Row) -> None:
        self.c = c
        self.where = where
        self.model_type = model_type
        self.extra = dict(row.keys)

    def fail(self, text: str) -> ModelFileError:
        return ModelFileError(f"{self.where}: model_type {self.model_type!r}: {text}")

    def value(self, field: str, keys: tuple[str, ...], default: int | None) -> int | None:
        # The first key present and not null wins; 0 means "absent" where transformers treats
        # it so (num_key_value_heads: 0 -> MHA); a wrong type or range names the key.
        rule = ARCH_RULES.get(field, STATE_RULE)
        for k in (*self.extra.get(field, ()), *keys):
            v = self.c.get(k)
            if v is None:
                continue
            if v == 0 and not isinstance(v, bool) and rule.minimum >= 1:
                return default
            try:
                return int(rule.check(v, self.where, k))
            except FileInputError as exc:
                raise self.fail(str(exc).removeprefix(f"{self.where}: ")) from exc
        return default

    def need(self, field: str, *keys: str) -> int:
        v = self.value(field, keys, None)
        if v is None:
            rule = ARCH_RULES.get(field, STATE_RULE)
            raise self.fail(
                f"lacks {(self.extra.get(field) or keys)[0]!r}. Accepted: {rule.accepted}."
            )
        return v


def model_type_of(c: dict[str, Any], where: str) -> str:
    model_type = c.get("model_type", "unknown")
    if not isinstance(model_type, str) or len(model_type) > 64:
        raise ModelFileError(
            f"{where}: model_type: {shorten(model_type)}. Accepted: a string of at most 64 characters."
        )
    return model_type


def _architectures(c: dict[str, Any]) -> tuple[str, ...]:
    raw = c.get("architectures")
    if isinstance(raw, list):
        return tuple(str(a)[:128] for a in raw[:8] if isinstance(a, str))
    return ()


def check_served(c: dict[str, Any], where: str, registry: Registry | None = None) -> str:
    """The architecture vLLM builds for this config, or a refusal naming the model_type."""
    reg = registry or load_registry()
    model_type = model_type_of(c, where)
    outer = c.get("_outer_model_type") or model_type
    arch, why = reg.resolve(_architectures(c), str(outer))
    if arch is None and str(outer) != model_type:
        arch, why2 = reg.resolve((), model_type)
        why = why if arch is None else why2
    if arch is None:
        raise ModelFileError(
            f"{where}: model_type {outer!r} is not an architecture vLLM {reg.vllm_version} "
            f"generates with: {why}, so its memory cannot be planned."
        )
    remote = isinstance(c.get("auto_map"), dict) and "AutoConfig" in c["auto_map"]
    if reg.config_model_types and not remote:
        for t in dict.fromkeys((str(outer), model_type)):
            if t not in reg.config_model_types:
                raise ModelFileError(
                    f"{where}: model_type {t!r} has no config class in transformers "
                    f"{reg.transformers_version} or vLLM {reg.vllm_version}, and config.json has "
                    "no auto_map naming the repo's own (vLLM could not read it, so its memory "
                    "cannot be planned). Accepted: a model_type transformers or vLLM defines, "
                    f"with an architecture vLLM serves (this one names {arch!r})."
                )
    row = ROWS.get(model_type)
    if row is not None and row.refused:
        raise ModelFileError(
            f"{where}: model_type {model_type!r} ({arch}) is served by vLLM but not planned: "
            f"{row.refused} ({row.source})."
        )
    return arch


def arch_from_config(c: dict[str, Any], where: str) -> ModelArch:
    """The architecture from a config.json (a multimodal one's text_config merged over it),
    every field typed and bounded (layout.ARCH_RULES)."""
    hf_arch = check_served(c, where)
    model_type = model_type_of(c, where)
    row = ROWS.get(model_type, Row("vllm/config/model.py ModelConfig (generic)"))
    r = _Reader(c, where, model_type, row)
    blocks = c.get("layers_block_type")
    n_layers = r.value("n_layers", ALIASES["n_layers"], None) or (
        len(blocks) if isinstance(blocks, list) and 0 < len(blocks) <= MAX_LAYERS else None
    )
    if n_layers is None:
        n_layers = r.need("n_layers", *ALIASES["n_layers"])
    hidden = r.need("hidden_size", *ALIASES["hidden_size"])
    state_only = row.layers == "all_state"
    heads = r.value("n_heads", ALIASES["n_heads"], None)
    if heads is None:
        if not state_only:
            r.need("n_heads", *ALIASES["n_heads"])
        heads = 1
    kv = _kv_heads(c, r, heads)
    head_dim = _head_dim(c, r, hidden, heads, state_only)
    head_dim_v: int | None = None
    kv_lora = rope = q_lora = None
    indexer = 0
    mla = row.kind == "mla" or (
        c.get("kv_lora_rank") is not None
        and c.get("qk_rope_head_dim") is not None
        and model_type not in _NOT_MLA
    )
    if mla:
        kv_lora = r.need("kv_lora_rank", "kv_lora_rank")
        rope = r.need("qk_rope_head_dim", "qk_rope_head_dim")
        nope = r.need("head_dim", "qk_nope_head_dim")
        head_dim = nope + rope
        head_dim_v = r.need("head_dim_v", "v_head_dim")
        q_lora = r.value("q_lora_rank", ("q_lora_rank",), None)  # null in DeepSeek-V2-Lite
        index_dim = r.value("head_dim", ("index_head_dim",), None)
        if index_dim:
            # DeepseekV32IndexerCache: fp8 keys + a float32 scale per quant_block_size (128)
            indexer = index_dim + index_dim // 128 * 4
    elif model_type in _NOT_MLA and c.get("qk_nope_head_dim") is not None:
        # V is cached at the q/k head size (Attention(num_heads, qk_head_dim, ...) with no
        # separate V size), so K and V are both nope + rope wide.
        head_dim = r.need("head_dim", "qk_nope_head_dim") + r.need(
            "qk_rope_head_dim", "qk_rope_head_dim"
        )
    _only_one(r, "moe_layer_freq", 1)
    if model_type == "qwen3_next":
        _only_one(r, "decoder_sparse_step", 1)
        if c.get("mlp_only_layers"):
            raise r.fail(
                f"mlp_only_layers: {shorten(c.get('mlp_only_layers'))}. Accepted: [] "
                "(every layer MoE, as Qwen3-Next ships)."
            )
    layout = _layer_layout(c, r, row, n_layers)
    linear: dict[str, int | None] = {}
    if model_type == "kimi_linear":
        # kda_state_shape (mamba_utils.py) with num_k_heads = num_heads, head_k_dim = head_dim
        # (get_mamba_state_shape_from_config passes neither): the gated DeltaNet shape with
        # equal key and value heads.
        lac = _kda(c, r)
        heads, dim = lac["num_heads"], lac["head_dim"]
        linear = {
            "linear_conv_kernel": lac["short_conv_kernel_size"],
            "linear_k_heads": heads,
            "linear_v_heads": heads,
            "linear_k_head_dim": dim,
            "linear_v_head_dim": dim,
        }
    elif row.kind == "gdn":
        for field, key in (
            ("linear_conv_kernel", "linear_conv_kernel_dim"),
            ("linear_k_heads", "linear_num_key_heads"),
            ("linear_v_heads", "linear_num_value_heads"),
            ("linear_k_head_dim", "linear_key_head_dim"),
            ("linear_v_head_dim", "linear_value_head_dim"),
        ):
            linear[field] = r.need(field, key)
    ssm = _ssm_fields(c, r, row, hidden) if row.kind in ("mamba1", "mamba2", "short_conv") else {}
    sw, swa_layers = _sliding(c, r, row, model_type, n_layers, layout)
    chunk = (
        r.value("attention_chunk_size", ("attention_chunk_size",), None) if layout.chunked else None
    )
    n_experts = r.value(
        "n_experts",
        ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"),
        None,
    )
    raw_inter = c.get("intermediate_size")
    if isinstance(raw_inter, list) and raw_inter and all(isinstance(x, int) for x in raw_inter):
        # per-layer FFN widths (Gemma-3n): the widest; the weights come from the headers
        inter = min(max(raw_inter), int(ARCH_RULES["intermediate_size"].maximum))
    else:
        inter = r.value("intermediate_size", ALIASES["intermediate_size"], 0) or 0
    # DeepSeek-V2/V3 and GLM-4.5: the first first_k_dense_replace layers keep a dense MLP of
    # intermediate_size (vLLM deepseek_v2.py / glm4_moe.py DecoderLayer: layer_idx >=
    # first_k_dense_replace is MoE).
    n_dense = (r.value("n_dense_layers", ("first_k_dense_replace",), 0) or 0) if n_experts else 0
    n_dense = min(n_dense, n_layers)
    shared = r.value("n_shared_experts", ("n_shared_experts",), None) or None
    shared_width = r.value(
        "shared_expert_intermediate_size", ("shared_expert_intermediate_size",), None
    )
    if shared is None and shared_width:
        shared = 1  # Qwen3-Next / Qwen2-MoE: one shared expert of that width
    per_token = r.value(
        "n_experts_per_token", ("num_experts_per_tok", "experts_per_token", "moe_topk"), None
    )
    if per_token and n_experts and per_token > n_experts:
        per_token = n_experts
    arch = ModelArch(
        architecture=HF_MODEL_TYPES.get(model_type, model_type),
        n_layers=n_layers,
        hidden_size=hidden,
        n_heads=heads,
        n_kv_heads=kv,
        head_dim=head_dim,
        head_dim_v=head_dim_v if head_dim_v is not None and head_dim_v != head_dim else None,
        intermediate_size=inter if not n_experts or n_dense else 0,
        vocab_size=r.need("vocab_size", *ALIASES["vocab_size"]),
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
        max_position_embeddings=r.value(
            "max_position_embeddings", ALIASES["max_position_embeddings"], 4096
        )
        or 4096,
        sliding_window=sw if sw and swa_layers else None,
        sliding_window_layers=swa_layers,
        n_experts=n_experts,
        n_experts_per_token=per_token,
        expert_intermediate_size=r.value(
            "expert_intermediate_size", ("moe_intermediate_size",), None
        )
        or ((inter or None) if n_experts else None),
        n_shared_experts=shared,
        shared_expert_intermediate_size=shared_width,
        n_dense_layers=n_dense,
        kv_lora_rank=kv_lora,
        qk_rope_head_dim=rope,
        q_lora_rank=q_lora,
        recurrent_layers=layout.state,
        has_vision=isinstance(c.get("vision_config"), dict),
        vision=vision_encoder(c, str(c.get("_outer_model_type") or model_type)),
        linear_conv_kernel=linear.get("linear_conv_kernel"),
        linear_k_heads=linear.get("linear_k_heads"),
        linear_v_heads=linear.get("linear_v_heads"),
        linear_k_head_dim=linear.get("linear_k_head_dim"),
        linear_v_head_dim=linear.get("linear_v_head_dim"),
        hf_model_type=str(c.get("_outer_model_type") or model_type),
        hf_architecture=hf_arch,
        no_kv_layers=layout.none,
        attention_chunk_size=chunk if chunk and layout.chunked else None,
        chunked_layers=layout.chunked if chunk else (),
        state_kind=row.kind if ssm else None,
        ssm_inner_size=ssm.get("inner"),
        ssm_state_size=ssm.get("state"),
        ssm_conv_kernel=ssm.get("conv"),
        ssm_n_groups=ssm.get("groups"),
        ssm_n_heads=ssm.get("heads"),
        ssm_head_dim=ssm.get("head_dim"),
        # kimi_linear: mamba_utils.py kda_state_dtype keeps the recurrent state in float32
        # under mamba_ssm_cache_dtype "auto".
        ssm_state_fp32=(bool(ssm) and _ssm_fp32(c, model_type)) or model_type == "kimi_linear",
        parallel_hybrid=row.layers in ("parallel", "zamba2"),
        layer_head_dims=_layer_head_dims(c, r, n_layers, head_dim),
        indexer_bytes_per_token=indexer,
    )
    return check_arch(arch, where)


def _kv_heads(c: dict[str, Any], r: _Reader, heads: int) -> int:
    """vllm/config/model.py ModelConfig.get_total_num_kv_heads."""
    falcon_new = r.model_type in ("falcon", "RefinedWeb", "RefinedWebModel") and bool(
        c.get("new_decoder_architecture")
    )
    if not falcon_new and c.get("multi_query") is True:
        return 1  # multi-query attention (Falcon-7B, GPT-BigCode): one K/V head
    attn = c.get("attn_config")
    if isinstance(attn, dict) and attn.get("kv_n_heads") is not None:  # MPT, DBRX
        sub = _Reader(attn, r.where, r.model_type, Row(""))
        return sub.need("n_kv_heads", "kv_n_heads")
    for k in KV_HEAD_KEYS:
        if c.get(k) is not None:
            return r.value("n_kv_heads", (k,), heads) or heads
    return heads


def _head_dim(c: dict[str, Any], r: _Reader, hidden: int, heads: int, state_only: bool) -> int:
    """vllm/config/model.py ModelConfig.get_head_size: head_dim (or kv_channels,
    attention_head_dim) when the config gives one, else hidden_size // num_attention_heads."""
    for key in (*r.extra.get("head_dim", ()), "head_dim", "kv_channels", "attention_head_dim"):
        if c.get(key) is not None:
            return r.need("head_dim", key)
    if hidden // heads < 1 and not state_only:
        raise r.fail(
            f"num_attention_heads {heads} exceeds hidden_size {hidden} and no head_dim says the "
            "head size"
        )
    return max(1, hidden // heads)


def _layer_head_dims(
    c: dict[str, Any], r: _Reader, n_layers: int, head_dim: int
) -> tuple[int, ...]:
    """per_layer_config {"05": {"head_dim": 512}, ...} (Gemma-4; vLLM gemma4.py reads
    config.per_layer_config[layer_idx].head_dim): every layer's head size, () when uniform."""
    per = c.get("per_layer_config")
    if not isinstance(per, dict) or not per:
        return ()
    dims = [head_dim] * n_layers
    for key, v in per.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < n_layers):
            raise r.fail(
                f"per_layer_config: key {shorten(key)}. Accepted: layer numbers below {n_layers}."
            )
        if isinstance(v, dict) and v.get("head_dim") is not None:
            sub = _Reader(v, r.where, r.model_type, Row(""))
            dims[int(key)] = sub.need("head_dim", "head_dim")
    return tuple(dims) if len(set(dims)) > 1 else ()


def _only_one(r: _Reader, key: str, accepted: int) -> None:
    """A layout key the memory model supports only at its usual value (every real config)."""
    v = r.c.get(key)
    if v is not None and v != accepted:
        raise r.fail(f"{key}: {shorten(v)}. Accepted: {accepted}.")


@dataclass(frozen=True)
class _Layers:
    """Which layers are what: recurrent state, no cache at all, sliding, chunked (() = none)."""

    state: tuple[int, ...] = ()
    none: tuple[int, ...] = ()
    sliding: tuple[int, ...] | None = None  # None: not said by the layout (use the window rule)
    chunked: tuple[int, ...] = ()


def _layer_types(r: _Reader, n_layers: int) -> list[str] | None:
    types = r.c.get("layer_types")
    if types is None:
        return None
    if (
        not isinstance(types, list)
        or not all(isinstance(t, str) for t in types)
        or len(types) < n_layers
    ):
        raise r.fail(
            f"layer_types: {shorten(types)}. Accepted: a list of num_hidden_layers ({n_layers}) "
            "layer type names."
        )
    return [t.lower() for t in types[:n_layers]]


def _from_types(types: list[str], r: _Reader, state_names: tuple[str, ...]) -> _Layers:
    state: list[int] = []
    none: list[int] = []
    sliding: list[int] = []
    chunked: list[int] = []
    for i, t in enumerate(types):
        if t in state_names:
            state.append(i)
        elif t in _SLIDING:
            sliding.append(i)
        elif t in _CHUNKED:
            chunked.append(i)
        elif t not in _ATTENTION:
            raise r.fail(
                f"layer_types[{i}]: {shorten(t)}. Accepted: "
                + ", ".join(sorted({*_ATTENTION, *_SLIDING, *_CHUNKED, *state_names}))
                + "."
            )
    return _Layers(tuple(state), tuple(none), tuple(sliding), tuple(chunked))


def _layer_layout(c: dict[str, Any], r: _Reader, row: Row, n_layers: int) -> _Layers:
    """The per-layer kinds (LAYER_READERS[row.layers], else the generic layer_types)."""
    reader = LAYER_READERS.get(row.layers)
    if reader is not None:
        return reader(c, r, n_layers)
    types = _layer_types(r, n_layers)
    if types is None:
        if r.c.get("no_rope_layers") is not None and r.c.get("attention_chunk_size"):
            # Llama-4 (transformers Llama4TextConfig): no_rope_layers[i] == 0 marks a global
            # (NoPE) layer; the rest attend within attention_chunk_size (vLLM llama4.py
            # Llama4Attention use_chunked_local_attn = not nope).
            flags = r.c.get("no_rope_layers")
            if isinstance(flags, list) and len(flags) >= n_layers:
                return _Layers(chunked=tuple(i for i in range(n_layers) if flags[i]))
        return _Layers()
    return _from_types(types, r, ())


def _all_state(c: dict[str, Any], r: _Reader, n_layers: int) -> _Layers:
    return _Layers(state=tuple(range(n_layers)))


def _kv_shared(c: dict[str, Any], r: _Reader, n_layers: int) -> _Layers:
    """Gemma-3n: layer_types for the windows; the last num_kv_shared_layers layers reuse the
    cache of an earlier layer of their type (vLLM gemma3n.py kv_sharing_target_layer_name), so
    they hold none of their own."""
    base = _gemma3(c, r, n_layers)
    shared = r.value("n_layers", ("num_kv_shared_layers",), 0) or 0
    none = tuple(range(n_layers - min(shared, n_layers - 1), n_layers)) if shared else ()
    return _Layers(base.state, none, base.sliding, base.chunked)


def _kda(c: dict[str, Any], r: _Reader) -> dict[str, Any]:
    """Kimi-Linear's linear_attn_config, the dict vLLM reads (vllm/transformers_utils/configs/
    kimi_linear.py KimiLinearConfig.is_kda_layer; KimiLinearForCausalLM.
    get_mamba_state_shape_from_config): num_heads, head_dim, short_conv_kernel_size and the
    1-based kda_layers."""
    lac = c.get("linear_attn_config")
    if not isinstance(lac, dict):
        raise r.fail(
            f"linear_attn_config: {shorten(lac)}. Accepted: an object with kda_layers, "
            "num_heads, head_dim and short_conv_kernel_size (as moonshotai's config.json has)."
        )
    sub = _Reader(lac, f"{r.where}: linear_attn_config", r.model_type, Row(""))
    out: dict[str, Any] = {
        "num_heads": sub.need("linear_v_heads", "num_heads"),
        "head_dim": sub.need("linear_v_head_dim", "head_dim"),
        "short_conv_kernel_size": sub.need("linear_conv_kernel", "short_conv_kernel_size"),
    }
    n_layers = r.need("n_layers", *ALIASES["n_layers"])
    kda = lac.get("kda_layers")
    if not isinstance(kda, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= n_layers for i in kda
    ):
        raise r.fail(
            f"linear_attn_config.kda_layers: {shorten(kda)}. Accepted: a list of layer "
            f"numbers from 1 to num_hidden_layers ({n_layers})."
        )
    out["kda_layers"] = tuple(sorted(set(kda)))
    return out


def _ssm_fp32(c: dict[str, Any], model_type: str) -> bool:
    """The temporal state in float32: the config's mamba_ssm_cache_dtype, or NemotronH's
    default (vllm/model_executor/models/config.py NemotronHForCausalLMConfig
    DEFAULT_MAMBA_SSM_CACHE_DTYPE "float32")."""
    raw = c.get("mamba_ssm_cache_dtype")
    if raw is None and model_type == "nemotron_h":
        return True
    return raw in ("float32", "fp32")


def _types_with_state(c: dict[str, Any], r: _Reader, n_layers: int) -> _Layers:
    """layer_types naming the recurrent layers: qwen3_next "linear_attention" (or every
    full_attention_interval-th layer full when absent, transformers Qwen3NextConfig),
    granitemoehybrid "mamba", lfm2 "conv"."""
    if r.model_type == "kimi_linear":
        return _Layers(state=tuple(i - 1 for i in _kda(c, r).get("kda_layers", ())))
    types = _layer_types(r, n_layers)
    if types is None:
        if r.model_type == "qwen3_next":
            raw = c.get("full_attention_interval", 4)
            try:
                interval = int(SWA_PATTERN_RULE.check(raw, r.where, "full_attention_interval"))
            except FileInputError as exc:
                raise ModelFileError(str(exc)) from exc
            return _Layers(state=tuple(i for i in range(n_layers) if (i + 1) % interval != 0))
        if r.model_type in ("lfm2", "lfm2_moe") and isinstance(c.get("full_attn_idxs"), list):
            full = {i for i in c["full_attn_idxs"] if isinstance(i, int)}
            return _Layers(state=tuple(i for i in range(n_layers) if i not in full))
        raise r.fail("lacks 'layer_types'. Accepted: a list of num_hidden_layers layer types.")
    if r.model_type == "qwen3_next" and (
        len(r.c["layer_types"]) != n_layers
        or not all(t in ("linear_attention", "full_attention") for t in types)
    ):
        raise r.fail(
            f"layer_types: {shorten(r.c['layer_types'])}. Accepted: num_hidden_layers "
            f'({n_layers}) entries, each "linear_attention" or "full_attention".'
        )
    return _from_types(types, r, ("linear_attention", "mamba", "conv"))


def _jamba(c: dict[str, Any], r: _Reader, n_layers: int) -> _Layers:
    """transformers JambaConfig.layers_block_type: attention where i % attn_layer_period ==
    attn_layer_offset (vLLM jamba.py ALL_DECODER_LAYER_TYPES by config.layers_block_type)."""
    period = r.need("n_layers", "attn_layer_period")
    offset = r.value("n_dense_layers", ("attn_layer_offset",), 0) or 0
    return _Layers(state=tuple(i for i in range(n_layers) if i % period != offset))


def _nemotron_h(c: dict[str, Any], r: _Reader, n_layers: int) -> _Layers:
    """hybrid_override_pattern: M Mamba-2, * attention, - MLP, E MoE (vLLM nemotron_h.py
    ALL_DECODER_LAYER_TYPES); MLP/MoE layers hold no cache. transformers 5 writes the same as
    layers_block_type: linear_attention (Mamba-2), full_attention, mlp, moe."""
    blocks = c.get("layers_block_type")
    if isinstance(blocks, list) and len(blocks) >= n_layers:
        kinds = [str(b).lower() for b in blocks[:n_layers]]
        state = tuple(i for i, k in enumerate(kinds) if k in ("linear_attention", "mamba"))
        none = tuple(i for i, k in enumerate(kinds) if k in ("mlp", "moe"))
        bad = [
            k for k in kinds if k not in ("linear_attention", "mamba", "mlp", "moe", *_ATTENTION)
        ]
        if bad:
            raise r.fail(
                f"layers_block_type: {shorten(bad[0])}. Accepted: linear_attention, mamba, "
                "full_attention, attention, mlp, moe."
            )
        return _Layers(state=state, none=none)
    pattern = c.get("hybrid_override_pattern")
    if not isinstance(pattern, str) or len(pattern) < n_layers:
        raise r.fail(
            f"hybrid_override_pattern: {shorten(pattern)}. Accepted: a string of "
            f"num_hidden_layers ({n_layers}) characters of M, *, - and E."
        )
    state = tuple(i for i, ch in enumerate(pattern[:n_layers]) if ch == "M")
    none = tuple(i for i, ch in enumerate(pattern[:n_layers]) if ch in "-E")
    return _Layers(state=state, none=none)


def _zamba2(c: dict[str, Any], r: _Reader, n_layers: int) -> _Layers:
    """Every layer keeps a Mamba-2 state; the hybrid_layer_ids layers also run the shared
    attention block with a KV cache of their own (vLLM zamba2.py), the rest have no KV."""
    idx = c.get("hybrid_layer_ids") or []
    if not isinstance(idx, list) or not all(isinstance(i, int) and 0 <= i < n_layers for i in idx):
        raise r.fail(f"hybrid_layer_ids: {shorten(idx)}. Accepted: layer indices below {n_layers}.")
    hybrid = set(idx)
    return _Layers(
        state=tuple(range(n_layers)), none=tuple(i for i in range(n_layers) if i not in hybrid)
    )


def _bamba(c: dict[str, Any], r: _Reader, n_layers: int) -> _Layers:
    """attn_layer_indices: the attention layers; the rest are Mamba-2 (vLLM bamba.py)."""
    idx = c.get("attn_layer_indices") or []
    if not isinstance(idx, list) or not all(isinstance(i, int) and 0 <= i < n_layers for i in idx):
        raise r.fail(
            f"attn_layer_indices: {shorten(idx)}. Accepted: layer indices below {n_layers}."
        )
    return _Layers(state=tuple(i for i in range(n_layers) if i not in set(idx)))


def _gemma2(c: dict[str, Any], r: _Reader, n_layers: int) -> _Layers:
    types = _layer_types(r, n_layers)
    if types is not None:
        return _from_types(types, r, ())
    return _Layers(sliding=tuple(range(0, n_layers, 2)))


def _gemma3(c: dict[str, Any], r: _Reader, n_layers: int) -> _Layers:
    types = _layer_types(r, n_layers)
    if types is not None:
        return _from_types(types, r, ())
    # transformers' Gemma3TextConfig / Cohere2Config: every sliding_window_pattern-th layer is
    # global.
    raw = c.get("sliding_window_pattern", 6 if r.model_type != "cohere2" else 4)
    try:
        p = int(SWA_PATTERN_RULE.check(raw, r.where, "sliding_window_pattern"))
    except FileInputError as exc:
        raise ModelFileError(str(exc)) from exc
    return _Layers(sliding=tuple(i for i in range(n_layers) if (i + 1) % p != 0))


LAYER_READERS: dict[str, Callable[[dict[str, Any], _Reader, int], _Layers]] = {
    "all_state": _all_state,
    "layer_types": _types_with_state,
    "jamba": _jamba,
    "nemotron_h": _nemotron_h,
    "bamba": _bamba,
    "gemma2": _gemma2,
    "gemma3": _gemma3,
    "kv_shared": _kv_shared,
    "parallel": _all_state,
    "zamba2": _zamba2,
}


def _sliding(
    c: dict[str, Any], r: _Reader, row: Row, model_type: str, n_layers: int, layout: _Layers
) -> tuple[int | None, tuple[int, ...]]:
    use_sw = c.get("use_sliding_window", True) is not False
    sw = r.value("sliding_window", ("sliding_window",), None) if use_sw else None
    if not sw:
        return None, ()
    if layout.sliding is not None:
        return sw, layout.sliding
    # No per-layer types: Mistral-style, every attention layer windowed.
    skip = set(layout.state) | set(layout.none)
    return sw, tuple(i for i in range(n_layers) if i not in skip)


def _ssm_fields(c: dict[str, Any], r: _Reader, row: Row, hidden: int) -> dict[str, int]:
    """The recurrent state sizes (vllm/model_executor/layers/mamba/mamba_utils.py
    MambaStateShapeCalculator.mamba1_state_shape / mamba2_state_shape / short_conv_state_shape,
    with the keys each model file passes it)."""
    if row.kind == "short_conv":
        # lfm2.py Lfm2ForCausalLM.get_mamba_state_shape_from_config: conv width conv_dim
        # (Lfm2ShortConvDecoderLayer builds ShortConv with dim=config.conv_dim; LiquidAI's
        # published configs set it to hidden_size), kernel conv_L_cache. lfm2_moe.py passes
        # hidden_size (its configs have no conv_dim).
        width = r.value("hidden_size", ("conv_dim",), hidden) if r.model_type == "lfm2" else hidden
        return {"inner": width or hidden, "conv": r.need("ssm_conv_kernel", "conv_L_cache")}
    expand = c.get("mamba_expand", c.get("expand", 2))
    if not isinstance(expand, (int, float)) or isinstance(expand, bool) or not 0 < expand <= 64:
        raise r.fail(f"expand: {shorten(expand)}. Accepted: a number from 1 to 64.")
    default_inner = int(expand * hidden)
    out = {
        "state": r.need("ssm_state_size", "state_size", "ssm_state_size", "d_state"),
        "conv": r.need("ssm_conv_kernel", "conv_kernel", "d_conv"),
    }
    if row.kind == "mamba1":
        inner = r.value("ssm_inner_size", ("intermediate_size",), None)
        if r.model_type == "jamba":
            inner = None  # jamba.py: mamba_expand x hidden_size; intermediate_size is the MLP
        out["inner"] = inner or default_inner
        return out
    out["heads"] = r.need("ssm_n_heads", "num_heads", "mamba_num_heads")
    out["head_dim"] = r.need("ssm_head_dim", "head_dim", "mamba_head_dim")
    out["groups"] = r.value("ssm_n_groups", ("n_groups", "ngroups"), 1) or 1
    # mamba2.py: intermediate_size, else expand x hidden; nemotron_h.py / bamba.py /
    # granitemoehybrid.py: heads x head_dim; falcon_h1.py: mamba_d_ssm, else expand x hidden;
    # zamba2.py: mamba_expand x hidden.
    if r.model_type == "mamba2":
        inner = r.value("ssm_inner_size", ("intermediate_size",), None) or default_inner
    elif r.model_type in ("falcon_h1", "zamba2"):
        inner = r.value("ssm_inner_size", (), None) or default_inner
    else:
        inner = out["heads"] * out["head_dim"]
    out["inner"] = inner
    return out


# Qwen2-VL's image processor bounds an image by max_pixels (12845056 = 16384 x 28 x 28; Qwen3-VL
# 16777216 = 16384 x 32 x 32): the largest image is 16384 merged tokens either way (vLLM
# qwen2_vl.py Qwen2VLProcessingInfo.get_max_image_tokens / get_image_size_with_most_features).
_QWEN_VL_IMAGE_TOKENS = 16384
_QWEN_VL = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
# Llama 4's image processor: up to 16 tiles plus the global view (transformers
# Llama4ImageProcessor max_patches 16; vLLM mllama4.py Mllama4ProcessingInfo
# get_max_num_tiles / get_image_size_with_most_features).
_LLAMA4_TILES = 16 + 1


def _pos(d: dict[str, Any], *keys: str) -> int | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 2**24:
            return v
    return None


def vision_encoder(c: dict[str, Any], model_type: str) -> VisionEncoder | None:
    """The tower's figures for vLLM's encoder profiling pass, from vision_config (None when the
    config has no tower, or its per-item size cannot be read: the encoder pass is then not
    modelled and memory/vllm.py says so)."""
    v = c.get("vision_config")
    if not isinstance(v, dict):
        return None
    hidden = _pos(v, "hidden_size", "embed_dim", "width")
    if model_type == "qwen2_vl":
        hidden = _pos(v, "embed_dim") or hidden  # Qwen2-VL: hidden_size is the output width
    inter = _pos(v, "intermediate_size")
    if inter is None and hidden is not None:
        inter = int(hidden * float(v.get("mlp_ratio", 4) or 4))
    if hidden is None or inter is None:
        return None
    merge = _pos(v, "spatial_merge_size") or _pos(c, "spatial_merge_size") or 1
    side = None
    image, patch = _pos(v, "image_size"), _pos(v, "patch_size")
    if image and patch:
        side = image // patch
    if model_type in _QWEN_VL:
        return VisionEncoder(
            _QWEN_VL_IMAGE_TOKENS,
            merge * merge,
            hidden,
            inter,
            video=True,
            source="vllm/model_executor/models/qwen2_vl.py Qwen2VLProcessingInfo",
        )
    if side is None:
        return None
    if model_type == "gemma3":
        # gemma3_mm.py Gemma3ProcessingInfo: mm_tokens_per_image per image (pan-and-scan is
        # off by default), the SigLIP tower over (image_size / patch_size)^2 patches.
        tokens = _pos(c, "mm_tokens_per_image") or 256
        return VisionEncoder(
            tokens,
            -(-side * side // tokens),
            hidden,
            inter,
            source="vllm/model_executor/models/gemma3_mm.py Gemma3ProcessingInfo",
        )
    if model_type == "llama4":
        # mllama4.py: each tile's (image_size / patch_size)^2 patches (+ the class token)
        # pixel-shuffled by pixel_shuffle_ratio^2 into tokens.
        ratio = float(v.get("pixel_shuffle_ratio", 0.5) or 0.5)
        per_tile = max(1, int(side * side * ratio * ratio))
        return VisionEncoder(
            _LLAMA4_TILES * per_tile,
            -(-(side * side + 1) // per_tile),
            hidden,
            inter,
            source="vllm/model_executor/models/mllama4.py Mllama4ProcessingInfo",
        )
    # Pixtral / Mistral 3, LLaVA and the rest: one token per merge x merge patches of the
    # largest image, plus a row-break token per row (pixtral.py / mistral3.py
    # get_num_image_tokens); the break tokens are counted for every tower (the safe side).
    rows = side // merge
    return VisionEncoder(
        rows * rows + rows,
        merge * merge,
        hidden,
        inter,
        source="vllm/model_executor/models/mistral3.py / llava.py get_num_image_tokens",
    )
