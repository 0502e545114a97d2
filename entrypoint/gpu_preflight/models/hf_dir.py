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

from gpu_preflight.boundedio import FileInputError, check_regular, read_json, shorten
from gpu_preflight.models.errors import ModelFileError
from gpu_preflight.models.hf_config import arch_from_config
from gpu_preflight.models.layout import HF_MODEL_TYPES, count_params
from gpu_preflight.models.types import Artifact, ModelArch, ModelSpec, WeightLayout

__all__ = ["arch_from_config", "read_hf_dir", "spec_from_hf_dir"]
# The families whose parameters layout.count_params counts from the architecture (the catalog's;
# its counts are checked against published ones); any other's come from the headers.
_COUNTED = frozenset(HF_MODEL_TYPES.values())
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
    "F8_E8M0": 1,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
# A decoder block's index: model.layers.N (Llama and most), transformer.h.N (GPT-2, Falcon,
# BLOOM), transformer.blocks.N (MPT, DBRX), backbone.layers.N (Mamba), gpt_neox.layers.N.
_LAYER = re.compile(r"\.(?:layers|h|blocks|block|decoder_layers)\.([0-9]+)\.")
_EXPERT = re.compile(r"\.experts\.")
# The vision tower and projector of a multimodal checkpoint (Gemma 3, Mistral 3 / Pixtral, LLaVA:
# vision_tower.* and multi_modal_projector.*; Qwen2.5-VL: visual.*; newer transformers layouts
# put them under model.). vLLM loads them with the language model, so they are weights too.
_VISION = re.compile(
    r"^(model\.)?(vision_tower|visual|multi_modal_projector|vision_model|mm_projector|"
    r"vision_embed_tokens|embed_vision)\."
)
_EMBED = re.compile(
    r"(embed_tokens|wte|word_embeddings|tok_embeddings|embed_in|embeddings)\.weight$"
)
_OUTPUT = re.compile(r"(^|\.)(lm_head|embed_out|output)\.weight$")
# Tensor-parallel sharding read from a tensor's name and shape (vLLM's linear layers):
# - held whole by every rank: 1-D tensors (norms; biases counted whole, the safe side), MoE
#   routers (GateLinear / ReplicatedLinear: mlp.gate, router, gate of n_experts rows), MLA's
#   low-rank "a" projections (deepseek_v2.py DeepSeekV2FusedQkvAProjLinear disable_tp=True,
#   kv_a_proj_with_mqa ReplicatedLinear), and the vision tower and projector (counted whole:
#   encoders that run data parallel, mm_encoder_tp_mode "data", replicate them);
# - K/V projections: QKVParallelLinear replicates K/V heads once tensor parallel exceeds them;
# - everything else (column, row and expert parallel): split tp ways.
_ROUTER = re.compile(r"(\.mlp\.gate|\.router|\.gate|\.block_sparse_moe\.gate|\.moe\.gate)\.weight$")
_LOWRANK = re.compile(r"\.(q_a_proj|kv_a_proj_with_mqa|q_a_layernorm|kv_a_layernorm)\.")
_KV_PROJ = re.compile(r"\.(k_proj|v_proj)\.")
# Fused Q/K/V checkpoints (GPT-2 / GPT-BigCode c_attn, Falcon / GPT-NeoX / BLOOM
# query_key_value, MPT / DBRX Wqkv, Phi-3 qkv_proj): vLLM loads each into one QKVParallelLinear
# (vllm/model_executor/layers/linear.py), whose rank holds num_heads / tp query heads and
# max(1, num_kv_heads / tp) K/V heads (num_kv_head_replicas = tp / total_num_kv_heads once tensor
# parallel exceeds the K/V heads). So the K/V share of the tensor is counted with the K/V
# projections, the query share with the split tensors: a multi-query model (Falcon-7B,
# GPT-BigCode, one K/V head) keeps its whole K/V rows on every rank.
_QKV_FUSED = re.compile(r"\.(c_attn|query_key_value|Wqkv|qkv_proj)\.weight$")
# Learned absolute position embeddings: a plain nn.Embedding in vLLM, whole on every rank
# (gpt2.py GPT2Model.__init__ and gpt_bigcode.py GPTBigCodeModel.__init__: self.wpe).
_POSITION = re.compile(r"(^|\.)(wpe|embed_positions)\.weight$")
# More tensors vLLM holds whole on every rank, whatever their shape:
# - a shared expert's one-row gate (qwen2_moe.py / qwen3_next.py: shared_expert_gate is a
#   ReplicatedLinear);
# - the experts' down-projection bias of a fused-experts checkpoint (gpt-oss
#   mlp.experts.down_proj_bias, experts x hidden): fused_moe/unquantized_fused_moe_method.py
#   create_weights makes w2_bias (num_experts, hidden_size), not split.
_REPLICATED_NAMES = re.compile(r"(\.shared_expert_gate\.weight|\.experts\.down_proj_bias)$")
# Mamba's A (checkpoint A_log): vLLM keeps it in float32 whatever the checkpoint's dtype
# (mamba/mamba_mixer.py MambaMixer: A (intermediate / tp, d_state); mamba_mixer2.py MambaMixer2:
# A (heads / tp); gdn/qwen_gdn_linear_attn.py: A_log (value heads / tp)).
_A_LOG = re.compile(r"\.A_log$")
# A Mamba-2 mixer's input projection and conv1d with one group: vLLM gives every rank the
# group's B and C rows whole (mamba/mamba_mixer2.py MambaMixer2.__init__: n_groups raised to tp
# by extra_groups_for_head_shards, in_proj / conv1d a ColumnParallelLinear of intermediate +
# 2 x n_groups x d_state (+ heads) rows split tp ways).
_MAMBA2_MIXED = re.compile(r"\.(mixer|mamba)\.(in_proj|conv1d)\.weight$")
# vLLM pads the vocabulary of its embedding and LM head to a multiple of 64 rows before
# splitting it (layers/vocab_parallel_embedding.py DEFAULT_VOCAB_PADDING_SIZE, pad_vocab_size).
VOCAB_PADDING = 64
# Architectures vLLM serves through its Transformers backend whose transformers config has no
# base_model_tp_plan (transformers 5.19, the pinned vLLM's): vllm/model_executor/models/
# transformers/base.py recursive_replace makes every nn.Linear the plan does not name a
# ReplicatedLinear ("replicate"); only the vocabulary embedding (VocabParallelEmbedding) and the
# attention projections its AttentionFuser fuses (QKVParallelLinear in, row-parallel out) are
# split. tests/models/test_vllm_tp.py checks this set against transformers and the GPT-BigCode
# rule against vLLM's own ranks.
NO_TP_PLAN = frozenset({"gpt_bigcode", "hunyuan_v1_dense", "hunyuan_v1_moe"})
_FUSED_ATTENTION = re.compile(
    r"\.(attn|self_attn|attention)\.(c_attn|c_proj|q_proj|k_proj|v_proj|o_proj|qkv_proj|"
    r"query_key_value|dense)\."
)
# Models whose checkpoints carry MTP blocks vLLM does not load: DeepSeek-V3 and GLM-4.5 store
# them as layers num_hidden_layers.. (vllm/model_executor/models/utils.py
# get_spec_layer_idx_from_weight_name / skip_spec_layers), Qwen3-Next under mtp.
# (qwen3_next.py hf_to_vllm_mapper {"mtp.": None}).
_MTP_PREFIX = {"qwen3_next": "mtp."}


MAX_SHARDS = 4096  # safetensors shards in one checkpoint (the largest real ones have ~160)


def _config(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    try:
        doc = read_json(cfg, "config", constants=True)
    except FileInputError as exc:
        hint = "" if exc.accepted else " Accepted: a Hugging Face config.json."
        raise ModelFileError(f"{exc}{hint}") from exc
    if not isinstance(doc, dict):
        raise ModelFileError(f"{cfg}: expected a JSON object, got {type(doc).__name__}")
    _finite_except_limits(doc, cfg)
    # Multimodal checkpoints keep the language model under text_config (Llama-4, Gemma 3,
    # Qwen2.5-VL in newer transformers; older Qwen2-VL configs keep it at the top level). The
    # text keys win; the outer model_type and architectures stay what vLLM's registry is asked.
    text = doc.get("text_config")
    if not isinstance(text, dict):
        return doc
    merged = {**doc, **text, "architectures": doc.get("architectures")}
    merged["_outer_model_type"] = doc.get("model_type")
    if "model_type" not in text:
        merged["model_type"] = doc.get("model_type")
    return merged


# Keys whose value transformers writes as Infinity (Python's json) in real configs: the Mamba-2
# family's time_step_limit (Mamba2Config, NemotronHConfig, BambaConfig, FalconH1Config,
# GraniteMoeHybridConfig default (0.0, inf)). Infinity anywhere else is refused.
_INFINITE_OK = frozenset({"time_step_limit", "time_step_max", "time_step_floor"})


def _finite_except_limits(doc: dict[str, Any], where: Path) -> None:
    stack: list[tuple[str, Any]] = list(doc.items())
    while stack:
        key, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v) and key not in _INFINITE_OK:
            raise ModelFileError(
                f"{where}: {key}: non-finite numbers are not JSON (got {v!r}). Accepted: JSON "
                "with finite numbers (Infinity only in a time_step_limit)."
            )
        if isinstance(v, dict):
            stack.extend(v.items())
        elif isinstance(v, list):
            stack.extend((key, x) for x in v)


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


def _fused_kv_bytes(arch: ModelArch, nb: int) -> int:
    """The K/V rows' bytes of a fused Q/K/V tensor of nb bytes: QKVParallelLinear's output is
    num_heads x head_size query rows then num_kv_heads x (head_size + v_head_size) K/V rows
    (vllm/model_executor/layers/linear.py QKVParallelLinear.__init__ output_sizes)."""
    q = arch.n_heads * arch.head_dim
    kv = arch.n_kv_heads * (arch.head_dim + arch.v_head_dim)
    return nb * kv // (q + kv) if q + kv > 0 else 0


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
    tok = out = other = vision = skipped = replicated = kv_proj = elements = 0
    load_extra = load_whole = 0
    model_type = str(cfg.get("model_type", ""))
    no_plan = model_type in NO_TP_PLAN
    one_group = arch.state_kind == "mamba2" and (arch.ssm_n_groups or 1) == 1
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
                    shape = sl.get_shape()
                    n = math.prod(shape)
                    nb = n * DTYPE_BYTES.get(dtype, 1)
                    m = _LAYER.search(name)
                    if mtp_prefix and name.startswith(mtp_prefix):
                        skipped += nb
                        continue
                    if (
                        m
                        and mtp_layers
                        and not _VISION.match(name)
                        and (len(m.group(1)) >= 10 or int(m.group(1)) >= arch.n_layers)
                    ):
                        skipped += nb  # an MTP block (layer >= num_hidden_layers)
                        continue
                    elements += n
                    if _VISION.match(name):
                        vision += nb
                        other += nb
                        replicated += nb
                        continue
                    vocab = bool(_EMBED.search(name) or _OUTPUT.search(name))
                    if (
                        len(shape) <= 1
                        or _LOWRANK.search(name)
                        or _POSITION.search(name)
                        or _REPLICATED_NAMES.search(name)
                        or (_ROUTER.search(name) and shape[0] == (arch.n_experts or -1))
                        or (no_plan and not vocab and not _FUSED_ATTENTION.search(name))
                    ):
                        replicated += nb
                    elif _KV_PROJ.search(name):
                        kv_proj += nb
                    elif _QKV_FUSED.search(name) and not arch.is_mla:
                        kv_proj += _fused_kv_bytes(arch, nb)
                    elif one_group and _MAMBA2_MIXED.search(name) and shape[0] > 0:
                        replicated += nb * 2 * (arch.ssm_state_size or 0) // shape[0]
                    if _A_LOG.search(name) and DTYPE_BYTES.get(dtype, 4) < 4:
                        up = n * (4 - DTYPE_BYTES.get(dtype, 4))
                        load_extra += up
                        load_whole += up if len(shape) <= 1 else 0
                    if vocab and len(shape) == 2:
                        rows = -shape[0] % VOCAB_PADDING
                        load_extra += rows * shape[1] * DTYPE_BYTES.get(dtype, 1)
                    if m and len(m.group(1)) < 10 and int(m.group(1)) < arch.n_layers:
                        per_layer[int(m.group(1))] += nb
                        if _EXPERT.search(name):
                            per_expert[int(m.group(1))] += nb
                    elif _EMBED.search(name) and not tok:
                        tok += nb
                    elif _OUTPUT.search(name):
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
        replicated_bytes=replicated,
        kv_proj_bytes=kv_proj,
        load_extra_bytes=load_extra,
        load_replicated_bytes=load_whole,
        parameters=elements,
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
    layout = art.layout
    params = (
        count_params(arch).total
        if arch.architecture in _COUNTED or layout is None
        else layout.parameters
    )
    return ModelSpec(
        id=path.name.lower(),
        name=path.name,
        hf_id=path.name,
        params_b=round(params / 1e9, 2),
        active_params_b=None,
        arch=arch,
        artifacts=(art,),
        source=art.source or str(path),
    )
