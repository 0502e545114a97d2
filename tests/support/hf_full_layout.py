"""Run inside the vLLM venv: a published model's checkpoint layout at its full size, no weights.

Like hf_meta_layout.py (whose header writer it uses), but from the given config kwargs
(hf_real_configs.py) and without shrinking: the meta device holds no memory, so a 109B model's
state dict is names and shapes only.

Input: argv[1] a JSON file [{"architecture", "model_type", "config": {...}, "dir"}, ...].
Output: one "RESULT {json}" line per entry: {"architecture", "ok", "error", "header_bytes",
"tensors"}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_meta_layout import ST_DTYPES, write_checkpoint


def build(arch: str, model_type: str, kw: dict[str, Any], d: Path) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(model_type, **kw)
    cls = getattr(transformers, arch)
    with torch.device("meta"):
        model = cls._from_config(cfg, torch_dtype=torch.bfloat16)
    text = getattr(cfg, "text_config", None)
    tied = bool(getattr(cfg, "tie_word_embeddings", False)) or bool(
        getattr(text, "tie_word_embeddings", False)
    )
    tensors = [
        (name, list(t.shape), ST_DTYPES[str(t.dtype)])
        for name, t in model.state_dict().items()
        if not (tied and name.endswith("lm_head.weight"))
    ]
    doc = cfg.to_dict()
    doc["architectures"] = [arch]
    doc["torch_dtype"] = "bfloat16"
    return {"header_bytes": write_checkpoint(d, doc, tensors), "tensors": len(tensors)}


def main() -> None:
    for case in json.loads(Path(sys.argv[1]).read_text()):
        out: dict[str, Any] = {"architecture": case["architecture"], "ok": False, "error": ""}
        try:
            out.update(
                build(case["architecture"], case["model_type"], case["config"], Path(case["dir"]))
            )
            out["ok"] = True
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
