"""Read a Hugging Face model directory: config.json plus the safetensors headers (exact bytes).

Tensor shapes and dtypes come from the ``safetensors`` package's ``safe_open`` (metadata only, the
tensor data is never read). Multimodal configs keep the language model under ``text_config``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from gpu_preflight.models.errors import ModelFileError
from gpu_preflight.models.layout import count_params
from gpu_preflight.models.types import Artifact, ModelArch, ModelSpec, WeightLayout

MAX_CONFIG_BYTES = 4 * 2**20
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
_TYPES = {
    "gpt_oss": "gpt-oss",
    "qwen3_moe": "qwen3moe",
    "gemma3_text": "gemma3",
    "mixtral": "llama",
    "mistral": "llama",
    "phi3": "phi3",
}


def _config(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    try:
        if cfg.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelFileError(f"{cfg}: larger than 4 MiB, not a model config")
        doc = json.loads(cfg.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelFileError(f"{cfg}: cannot read it ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{cfg}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise ModelFileError(f"{cfg}: expected a JSON object")
    text = doc.get("text_config")
    return {**doc, **text} if isinstance(text, dict) else doc


def arch_from_config(c: dict[str, Any], where: str) -> ModelArch:
    def need(key: str, *alts: str) -> int:
        for k in (key, *alts):
            v = c.get(k)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
        raise ModelFileError(f"{where}: config.json lacks a positive integer {key!r}")

    n_layers = need("num_hidden_layers", "n_layer")
    hidden = need("hidden_size", "n_embd")
    heads = need("num_attention_heads", "n_head")
    kv = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or hidden // heads
    model_type = str(c.get("model_type", "unknown"))
    sw = c.get("sliding_window") if c.get("use_sliding_window", True) is not False else None
    layer_types = c.get("layer_types")
    swa_layers: tuple[int, ...] = ()
    if isinstance(sw, int) and sw > 0:
        if isinstance(layer_types, list):
            swa_layers = tuple(i for i, t in enumerate(layer_types) if t == "sliding_attention")
        elif model_type.startswith("gemma2"):
            swa_layers = tuple(range(0, n_layers, 2))
        elif model_type.startswith("gemma3"):
            p = int(c.get("sliding_window_pattern", 6))
            swa_layers = tuple(i for i in range(n_layers) if (i + 1) % p != 0)
        else:
            swa_layers = tuple(range(n_layers))  # Mistral-style: every layer windowed
    n_experts = c.get("num_local_experts") or c.get("num_experts")
    return ModelArch(
        architecture=_TYPES.get(model_type, model_type),
        n_layers=n_layers,
        hidden_size=hidden,
        n_heads=heads,
        n_kv_heads=int(kv),
        head_dim=int(head_dim),
        intermediate_size=int(c.get("intermediate_size") or 0) if not n_experts else 0,
        vocab_size=need("vocab_size"),
        tied_embeddings=bool(c.get("tie_word_embeddings", False)),
        max_position_embeddings=int(c.get("max_position_embeddings") or 4096),
        sliding_window=int(sw) if isinstance(sw, int) and sw > 0 and swa_layers else None,
        sliding_window_layers=swa_layers,
        n_experts=int(n_experts) if n_experts else None,
        n_experts_per_token=c.get("num_experts_per_tok") or c.get("experts_per_token"),
        expert_intermediate_size=c.get("moe_intermediate_size")
        or (c.get("intermediate_size") if n_experts else None),
        n_shared_experts=c.get("n_shared_experts") or None,
    )


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            doc = json.loads(index.read_text(encoding="utf-8"))
            names = sorted(set(doc["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelFileError(f"{index}: not a valid safetensors index ({exc})") from exc
        files = [path / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelFileError(
                f"{index}: lists shards that are missing: {', '.join(missing[:3])}"
            )
        return files
    return sorted(path.glob("*.safetensors"))


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
    tok = out = other = 0
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as st:
                for name in st.keys():  # noqa: SIM118 - safe_open is not a dict
                    sl = st.get_slice(name)
                    dtype = sl.get_dtype()
                    nb = math.prod(sl.get_shape()) * DTYPE_BYTES.get(dtype, 1)
                    m = _LAYER.search(name)
                    if m and int(m.group(1)) < arch.n_layers:
                        per_layer[int(m.group(1))] += nb
                        if _EXPERT.search(name):
                            per_expert[int(m.group(1))] += nb
                    elif "embed_tokens" in name or name.endswith("wte.weight"):
                        tok += nb
                    elif "lm_head" in name:
                        out += nb
                    else:
                        other += nb
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelFileError(f"{f}: malformed safetensors header ({exc})") from exc
    total = tok + out + other + sum(per_layer)
    q = cfg.get("quantization_config")
    quant = (
        str(q.get("quant_method", "unknown")).lower()
        if isinstance(q, dict)
        else str(cfg.get("torch_dtype") or cfg.get("dtype") or "bf16")
        .replace("bfloat16", "bf16")
        .replace("float16", "fp16")
    )
    layout = WeightLayout(total, tok, out, tuple(per_layer), tuple(per_expert), other, exact=True)
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
