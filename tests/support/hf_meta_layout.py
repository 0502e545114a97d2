"""Run inside the vLLM venv (torch + transformers): real checkpoint layouts without weights.

For each architecture asked for, transformers' own config class gives the default config (a
small variant where the default is huge: ``SHRINK``), transformers' own model class is built on
the meta device (no memory), and its state dict's names, shapes and dtypes are written as a
safetensors header over a sparse hole (the file has the checkpoint's length, the disk holds only
the header), next to the config.json. That is what a downloaded checkpoint looks like to a reader
of headers, for any architecture transformers defines.

Input: argv[1] a JSON file [{"architecture": ..., "model_type": ..., "dir": ...}, ...].
Output: one "RESULT {json}" line per entry: {"architecture", "ok", "error", "header_bytes",
"tensors"}.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
# Local directories only: no Hub lookups (a machine without network waits on each one).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

ST_DTYPES = {
    "torch.float32": "F32",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.int64": "I64",
    "torch.int32": "I32",
    "torch.int8": "I8",
    "torch.uint8": "U8",
    "torch.bool": "BOOL",
    "torch.float8_e4m3fn": "F8_E4M3",
}
ST_BYTES = {
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
}
# Keep the tensor count (and the test's time) small: at most this many layers and experts,
# where the config's own layout rules allow it (hybrid patterns are kept whole).
MAX_LAYERS = 8
MAX_EXPERTS = 8
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
# Configs whose layer pattern is a per-layer list or string sized by the layer count.
PATTERN_KEYS = ("hybrid_override_pattern", "layers_block_type", "block_types")


# Keys the published checkpoints carry that transformers' default config lacks and vLLM's model
# file reads. lfm2: LiquidAI's LFM2 config.json files (LFM2-350M/700M/1.2B) set conv_dim and
# block_dim to hidden_size (vllm/model_executor/models/lfm2.py reads config.conv_dim and
# config.block_dim; transformers' Lfm2Config drops them) and interleave short-conv and attention
# layers (LFM2-1.2B: 16 layers, full_attn_idxs [2, 5, 8, 10, 12, 14]), where transformers'
# default makes every layer attention.
PUBLISHED: dict[str, dict[str, Any]] = {
    "lfm2": {"num_hidden_layers": 16, "full_attn_idxs": [2, 5, 8, 10, 12, 14]},
}
# The same, set from the config's own hidden_size.
PUBLISHED_AS_HIDDEN: dict[str, tuple[str, ...]] = {"lfm2": ("conv_dim", "block_dim")}


def _kimi_linear(cfg: Any) -> None:
    """moonshotai's Kimi-Linear config.json describes the KDA layers in linear_attn_config
    (kda_layers / full_attn_layers numbered from 1, num_heads, head_dim,
    short_conv_kernel_size), which vLLM's own KimiLinearConfig (vllm/transformers_utils/configs/
    kimi_linear.py is_kda_layer) and KimiLinearForCausalLM.get_mamba_state_shape_from_config
    read; transformers' KimiLinearConfig spells the same as layer_types and linear_*."""
    types = list(cfg.layer_types)
    cfg.linear_attn_config = {
        "kda_layers": [i + 1 for i, t in enumerate(types) if t == "linear_attention"],
        "full_attn_layers": [i + 1 for i, t in enumerate(types) if t != "linear_attention"],
        "num_heads": cfg.linear_num_heads,
        "head_dim": cfg.linear_head_dim,
        "short_conv_kernel_size": cfg.linear_conv_kernel_dim,
    }


def shrink(model_type: str) -> Any:
    from transformers import AutoConfig

    if model_type in PUBLISHED:
        cfg = AutoConfig.for_model(model_type, **PUBLISHED[model_type])
        for k in PUBLISHED_AS_HIDDEN.get(model_type, ()):
            setattr(cfg, k, cfg.hidden_size)
        return cfg
    base = AutoConfig.for_model(model_type)
    kw: dict[str, Any] = {}
    text = getattr(base, "text_config", None)
    target = text if text is not None and hasattr(text, "to_dict") else base
    d = target.to_dict()
    if not any(k in d for k in PATTERN_KEYS) and not isinstance(d.get("layer_types"), list):
        for k in LAYER_KEYS:
            if isinstance(d.get(k), int) and d[k] > MAX_LAYERS:
                kw[k] = MAX_LAYERS
    for k in EXPERT_KEYS:
        if isinstance(d.get(k), int) and d[k] > MAX_EXPERTS:
            kw[k] = MAX_EXPERTS
            top = d.get("num_experts_per_tok")
            if isinstance(top, int) and top > MAX_EXPERTS // 2:
                kw["num_experts_per_tok"] = MAX_EXPERTS // 2
            groups = d.get("n_group")
            if isinstance(groups, int) and groups > 1:
                kw["n_group"] = 1
                kw["topk_group"] = 1
    if isinstance(d.get("first_k_dense_replace"), int) and "num_hidden_layers" in kw:
        kw["first_k_dense_replace"] = min(d["first_k_dense_replace"], 1)
    if text is not None and kw:
        for k, v in kw.items():
            setattr(text, k, v)
        if hasattr(text, "layer_types") and "num_hidden_layers" in kw:
            lt = getattr(text, "layer_types", None)
            if isinstance(lt, list):
                text.layer_types = lt[: kw["num_hidden_layers"]]
        return base
    return AutoConfig.for_model(model_type, **kw) if kw else base


def write_checkpoint(
    d: Path, config: dict[str, Any], tensors: list[tuple[str, list[int], str]]
) -> int:
    """config.json + model.safetensors: the header, then a sparse hole of the data's length."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config, indent=1, default=str))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape, dtype in tensors:
        n = math.prod(shape) * ST_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(d / "model.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        f.truncate(8 + len(raw) + off)
    return off


def build(arch: str, model_type: str, d: Path) -> dict[str, Any]:
    import torch
    import transformers

    cfg = shrink(model_type)
    if model_type == "kimi_linear":
        _kimi_linear(cfg)
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise LookupError(f"transformers has no class {arch}")
    with torch.device("meta"):
        model = cls._from_config(cfg, torch_dtype=torch.bfloat16)
    tied = set()
    if getattr(cfg, "tie_word_embeddings", False) or getattr(
        getattr(cfg, "text_config", None), "tie_word_embeddings", False
    ):
        tied = {k for k in model.state_dict() if k.endswith("lm_head.weight")}
    tensors = []
    for name, t in model.state_dict().items():
        if name in tied:
            continue
        tensors.append((name, list(t.shape), ST_DTYPES[str(t.dtype)]))
    doc = cfg.to_dict()
    doc["architectures"] = [arch]
    doc["torch_dtype"] = "bfloat16"
    total = write_checkpoint(d, doc, tensors)
    return {"header_bytes": total, "tensors": len(tensors)}


def main() -> None:
    for case in json.loads(Path(sys.argv[1]).read_text()):
        out: dict[str, Any] = {"architecture": case["architecture"], "ok": False, "error": ""}
        try:
            out.update(build(case["architecture"], case["model_type"], Path(case["dir"])))
            out["ok"] = True
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
