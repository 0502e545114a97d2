"""Read a Hugging Face model directory: config.json plus the safetensors headers (exact bytes).

Tensor shapes and dtypes come from the ``safetensors`` package's ``safe_open`` (metadata only, the
tensor data is never read). Multimodal configs keep the language model under ``text_config``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from gpu_preflight.boundedio import FileInputError, NumberRule, check_regular, read_json, shorten
from gpu_preflight.models.errors import ModelFileError
from gpu_preflight.models.layout import (
    ARCH_RULES,
    HF_MODEL_TYPES,
    MAX_LAYERS,
    check_arch,
    count_params,
    unknown_architecture,
)
from gpu_preflight.models.types import Artifact, ModelArch, ModelSpec, WeightLayout

# transformers' Gemma3TextConfig.sliding_window_pattern: every Nth layer is global (N >= 1).
SWA_PATTERN_RULE = NumberRule(1, MAX_LAYERS)
DTYPE_BYTES = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
_LAYER = re.compile(r"\.layers\.([0-9]+)\.")
_EXPERT = re.compile(r"\.experts\.")
# The vision tower and projector of a multimodal checkpoint (Gemma 3, Mistral 3 / Pixtral, LLaVA:
# vision_tower.* and multi_modal_projector.*; Qwen2.5-VL: visual.*; newer transformers layouts
# put them under model.). vLLM loads them with the language model, so they are weights too.
_VISION = re.compile(
    r"^(model\.)?(vision_tower|visual|multi_modal_projector|vision_model|mm_projector|"
    r"vision_embed_tokens|embed_vision)\."
)
# MLA configs: DeepSeek-V2/V3 (transformers DeepseekV3Config; vLLM deepseek_v2.py reads the same
# keys). The KV is the latent plus the rope key whatever num_key_value_heads says.
_MLA_TYPES = ("deepseek_v2", "deepseek_v3")
# Models whose checkpoints carry MTP blocks vLLM does not load: DeepSeek-V3 and GLM-4.5 store
# them as layers num_hidden_layers.. (vllm/model_executor/models/utils.py
# get_spec_layer_idx_from_weight_name / skip_spec_layers), Qwen3-Next under mtp.
# (qwen3_next.py hf_to_vllm_mapper {"mtp.": None}).
_MTP_PREFIX = {"qwen3_next": "mtp."}


MAX_SHARDS = 4096  # safetensors shards in one checkpoint (the largest real ones have ~160)


def _config(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    try:
        doc = read_json(cfg, "config")
    except FileInputError as exc:
        hint = "" if exc.accepted else " Accepted: a Hugging Face config.json."
        raise ModelFileError(f"{exc}{hint}") from exc
    if not isinstance(doc, dict):
        raise ModelFileError(f"{cfg}: expected a JSON object, got {type(doc).__name__}")
    text = doc.get("text_config")
    return {**doc, **text} if isinstance(text, dict) else doc


def arch_from_config(c: dict[str, Any], where: str) -> ModelArch:
    """The architecture from a config.json, every field typed and bounded (layout.ARCH_RULES)."""

    def value(field: str, keys: tuple[str, ...], default: int | None) -> int | None:
        # The first key present and not null wins; 0 means "absent" where transformers treats
        # it so (num_key_value_heads: 0 -> MHA); a wrong type or range names the key.
        rule = ARCH_RULES[field]
        for k in keys:
            v = c.get(k)
            if v is None:
                continue
            if v == 0 and not isinstance(v, bool) and rule.minimum >= 1:
                return default
            try:
                return int(rule.check(v, where, k))
            except FileInputError as exc:
                raise ModelFileError(str(exc)) from exc
        return default

    def need(field: str, *keys: str) -> int:
        v = value(field, keys, None)
        if v is None:
            raise ModelFileError(
                f"{where}: lacks {keys[0]!r}. Accepted: {ARCH_RULES[field].accepted}."
            )
        return v

    n_layers = need("n_layers", "num_hidden_layers", "n_layer")
    hidden = need("hidden_size", "hidden_size", "n_embd")
    heads = need("n_heads", "num_attention_heads", "n_head")
    kv = value("n_kv_heads", ("num_key_value_heads",), heads) or heads
    if hidden // heads < 1 and c.get("head_dim") is None:
        raise ModelFileError(
            f"{where}: num_attention_heads {heads} exceeds hidden_size {hidden} and no head_dim "
            "says the head size"
        )
    head_dim = value("head_dim", ("head_dim",), hidden // heads) or hidden // heads
    model_type = c.get("model_type", "unknown")
    if not isinstance(model_type, str) or len(model_type) > 64:
        raise ModelFileError(
            f"{where}: model_type: {shorten(model_type)}. Accepted: a string of at most 64 characters."
        )
    if model_type not in HF_MODEL_TYPES:
        raise ModelFileError(unknown_architecture("model_type", model_type, where))
    head_dim_v: int | None = None
    kv_lora = rope = q_lora = None
    if model_type in _MLA_TYPES:
        kv_lora = need("kv_lora_rank", "kv_lora_rank")
        rope = need("qk_rope_head_dim", "qk_rope_head_dim")
        nope = need("head_dim", "qk_nope_head_dim")
        head_dim = nope + rope
        head_dim_v = need("head_dim_v", "v_head_dim")
        q_lora = value("q_lora_rank", ("q_lora_rank",), None)  # null in DeepSeek-V2-Lite
    _only_one(c, where, "moe_layer_freq", 1)
    if model_type == "qwen3_next":
        _only_one(c, where, "decoder_sparse_step", 1)
        if c.get("mlp_only_layers"):
            raise ModelFileError(
                f"{where}: mlp_only_layers: {shorten(c.get('mlp_only_layers'))}. Accepted: [] "
                "(every layer MoE, as Qwen3-Next ships)."
            )
    recurrent: tuple[int, ...] = ()
    linear: dict[str, int | None] = {}
    if model_type == "qwen3_next":
        recurrent = _linear_layers(c, n_layers, where)
        for field, key in (
            ("linear_conv_kernel", "linear_conv_kernel_dim"),
            ("linear_k_heads", "linear_num_key_heads"),
            ("linear_v_heads", "linear_num_value_heads"),
            ("linear_k_head_dim", "linear_key_head_dim"),
            ("linear_v_head_dim", "linear_value_head_dim"),
        ):
            linear[field] = need(field, key)
    use_sw = c.get("use_sliding_window", True) is not False
    sw = value("sliding_window", ("sliding_window",), None) if use_sw else None
    layer_types = c.get("layer_types")
    swa_layers: tuple[int, ...] = ()
    if sw:
        if isinstance(layer_types, list):
            if len(layer_types) > n_layers:
                raise ModelFileError(
                    f"{where}: layer_types lists {len(layer_types)} layers. Accepted: at most "
                    f"num_hidden_layers ({n_layers})."
                )
            swa_layers = tuple(i for i, t in enumerate(layer_types) if t == "sliding_attention")
        elif model_type.startswith("gemma2"):
            swa_layers = tuple(range(0, n_layers, 2))
        elif model_type.startswith("gemma3"):
            # transformers' Gemma3TextConfig: every sliding_window_pattern-th layer is global.
            raw = c.get("sliding_window_pattern", 6)
            try:
                p = int(SWA_PATTERN_RULE.check(raw, where, "sliding_window_pattern"))
            except FileInputError as exc:
                raise ModelFileError(str(exc)) from exc
            swa_layers = tuple(i for i in range(n_layers) if (i + 1) % p != 0)
        else:
            swa_layers = tuple(range(n_layers))  # Mistral-style: every layer windowed
    n_experts = value("n_experts", ("num_local_experts", "num_experts", "n_routed_experts"), None)
    inter = value("intermediate_size", ("intermediate_size",), 0) or 0
    # DeepSeek-V2/V3 and GLM-4.5: the first first_k_dense_replace layers keep a dense MLP of
    # intermediate_size (vLLM deepseek_v2.py / glm4_moe.py DecoderLayer: layer_idx >=
    # first_k_dense_replace is MoE).
    n_dense = (value("n_dense_layers", ("first_k_dense_replace",), 0) or 0) if n_experts else 0
    shared = value("n_shared_experts", ("n_shared_experts",), None) or None
    shared_width = value(
        "shared_expert_intermediate_size", ("shared_expert_intermediate_size",), None
    )
    if shared is None and shared_width:
        shared = 1  # Qwen3-Next / Qwen2-MoE: one shared expert of that width
    arch = ModelArch(
        architecture=HF_MODEL_TYPES[model_type],
        n_layers=n_layers,
        hidden_size=hidden,
        n_heads=heads,
        n_kv_heads=kv,
        head_dim=head_dim,
        head_dim_v=head_dim_v if head_dim_v is not None and head_dim_v != head_dim else None,
        intermediate_size=inter if not n_experts or n_dense else 0,
        vocab_size=need("vocab_size", "vocab_size"),
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
        max_position_embeddings=value("max_position_embeddings", ("max_position_embeddings",), 4096)
        or 4096,
        sliding_window=sw if sw and swa_layers else None,
        sliding_window_layers=swa_layers,
        n_experts=n_experts,
        n_experts_per_token=value(
            "n_experts_per_token", ("num_experts_per_tok", "experts_per_token"), None
        ),
        expert_intermediate_size=value("expert_intermediate_size", ("moe_intermediate_size",), None)
        or ((inter or None) if n_experts else None),
        n_shared_experts=shared,
        shared_expert_intermediate_size=shared_width,
        n_dense_layers=n_dense,
        kv_lora_rank=kv_lora,
        qk_rope_head_dim=rope,
        q_lora_rank=q_lora,
        recurrent_layers=recurrent,
        has_vision=isinstance(c.get("vision_config"), dict),
        linear_conv_kernel=linear.get("linear_conv_kernel"),
        linear_k_heads=linear.get("linear_k_heads"),
        linear_v_heads=linear.get("linear_v_heads"),
        linear_k_head_dim=linear.get("linear_k_head_dim"),
        linear_v_head_dim=linear.get("linear_v_head_dim"),
    )
    return check_arch(arch, where)


def _only_one(c: dict[str, Any], where: str, key: str, accepted: int) -> None:
    """A layout key the memory model supports only at its usual value (every real config)."""
    v = c.get(key)
    if v is not None and v != accepted:
        raise ModelFileError(f"{where}: {key}: {shorten(v)}. Accepted: {accepted}.")


def _linear_layers(c: dict[str, Any], n_layers: int, where: str) -> tuple[int, ...]:
    """Qwen3-Next's gated DeltaNet layers: layer_types "linear_attention", or where absent every
    layer but each full_attention_interval-th (transformers Qwen3NextConfig builds layer_types
    so; vLLM qwen3_next.py reads config.layer_types)."""
    types = c.get("layer_types")
    if isinstance(types, list):
        if len(types) != n_layers or not all(
            t in ("linear_attention", "full_attention") for t in types
        ):
            raise ModelFileError(
                f"{where}: layer_types: {shorten(types)}. Accepted: num_hidden_layers "
                f'({n_layers}) entries, each "linear_attention" or "full_attention".'
            )
        return tuple(i for i, t in enumerate(types) if t == "linear_attention")
    raw = c.get("full_attention_interval", 4)
    try:
        interval = int(SWA_PATTERN_RULE.check(raw, where, "full_attention_interval"))
    except FileInputError as exc:
        raise ModelFileError(str(exc)) from exc
    return tuple(i for i in range(n_layers) if (i + 1) % interval != 0)


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if os.path.lexists(index):  # any kind of file there is read (and a FIFO refused), not skipped
        try:
            doc = read_json(index, "safetensors-index")
        except FileInputError as exc:
            hint = "" if exc.accepted else " Accepted: a safetensors index JSON file."
            raise ModelFileError(f"{exc}{hint}") from exc
        wmap = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
            raise ModelFileError(
                f"{index}: weight_map: not an object of tensor name to file name. Accepted: a "
                'safetensors index ({"weight_map": {"tensor": "model-00001-of-00002.safetensors"}}).'
            )
        names = sorted(set(wmap.values()))
        if len(names) > MAX_SHARDS:
            raise ModelFileError(
                f"{index}: weight_map names {len(names)} files. Accepted: at most {MAX_SHARDS}."
            )
        bad = [n for n in names if not n or "/" in n or "\\" in n or n in (".", "..")]
        if bad:
            raise ModelFileError(
                f"{index}: weight_map names {shorten(bad[0])}. Accepted: file names inside {path}."
            )
        files = [path / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelFileError(
                f"{index}: lists shards that are missing: {', '.join(shorten(m) for m in missing[:3])}"
            )
        return files
    files = sorted(path.glob("*.safetensors"))
    if len(files) > MAX_SHARDS:
        raise ModelFileError(
            f"{path}: {len(files)} .safetensors files. Accepted: at most {MAX_SHARDS}."
        )
    return files


def read_hf_dir(path: Path) -> tuple[ModelArch, Artifact]:
    from safetensors import SafetensorError, safe_open

    cfg = _config(path)
    arch = arch_from_config(cfg, str(path / "config.json"))
    files = _safetensors_files(path)
    if not files:
        raise ModelFileError(
            f"{path}: no .safetensors files (only safetensors checkpoints are read)"
        )
    per_layer = [0] * arch.n_layers
    per_expert = [0] * arch.n_layers
    tok = out = other = vision = skipped = 0
    model_type = str(cfg.get("model_type", ""))
    mtp_prefix = _MTP_PREFIX.get(model_type)
    mtp_layers = isinstance(cfg.get("num_nextn_predict_layers"), int) and bool(
        cfg.get("num_nextn_predict_layers")
    )
    for f in files:
        try:
            check_regular(f)  # safe_open on a FIFO would block
        except FileInputError as exc:
            hint = "" if exc.accepted else " Accepted: a readable .safetensors file."
            raise ModelFileError(f"{exc}{hint}") from exc
        try:
            with safe_open(str(f), framework="numpy") as st:
                for name in st.keys():  # noqa: SIM118 - safe_open is not a dict
                    sl = st.get_slice(name)
                    dtype = sl.get_dtype()
                    nb = math.prod(sl.get_shape()) * DTYPE_BYTES.get(dtype, 1)
                    m = _LAYER.search(name)
                    if _VISION.match(name):
                        vision += nb
                        other += nb
                    elif mtp_prefix and name.startswith(mtp_prefix):
                        skipped += nb
                    elif m and len(m.group(1)) < 10 and int(m.group(1)) < arch.n_layers:
                        per_layer[int(m.group(1))] += nb
                        if _EXPERT.search(name):
                            per_expert[int(m.group(1))] += nb
                    elif m and mtp_layers:
                        skipped += nb  # an MTP block (layer >= num_hidden_layers)
                    elif "embed_tokens" in name or name.endswith("wte.weight"):
                        tok += nb
                    elif "lm_head" in name:
                        out += nb
                    else:
                        other += nb
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise ModelFileError(
                f"{f}: malformed safetensors header ({shorten(str(exc), 200)})"
            ) from exc
    total = tok + out + other + sum(per_layer)
    q = cfg.get("quantization_config")
    quant = (
        str(q.get("quant_method", "unknown"))[:64].lower()
        if isinstance(q, dict)
        else str(cfg.get("torch_dtype") or cfg.get("dtype") or "bf16")[:64]
        .replace("bfloat16", "bf16")
        .replace("float16", "fp16")
    )
    layout = WeightLayout(
        total,
        tok,
        out,
        tuple(per_layer),
        tuple(per_expert),
        other,
        exact=True,
        vision_bytes=vision,
        skipped_bytes=skipped,
    )
    art = Artifact(
        engine="vllm",
        repo=str(path),
        quant=quant,
        weight_bytes=total,
        path=str(path),
        source=f"config.json and safetensors headers in {path}",
        layout=layout,
    )
    return arch, art


def spec_from_hf_dir(path: Path) -> ModelSpec:
    arch, art = read_hf_dir(path)
    return ModelSpec(
        id=path.name.lower(),
        name=path.name,
        hf_id=path.name,
        params_b=round(count_params(arch).total / 1e9, 2),
        active_params_b=None,
        arch=arch,
        artifacts=(art,),
        source=art.source or str(path),
    )
