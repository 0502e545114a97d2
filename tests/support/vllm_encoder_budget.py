"""Run inside the vLLM venv: vLLM 0.32's own encoder budget and item count for the profiling pass.

For each case, SchedulerConfig (vllm/config/scheduler.py: encoder_cache_size and
max_num_encoder_input_tokens = max_num_batched_tokens), compute_mm_encoder_budget
(vllm/v1/core/encoder_cache_manager.py) and MultiModalBudget._get_max_items
(vllm/multimodal/encoder_budget.py) on those figures. The budget object is made without its
processor (object.__new__ and the attributes __init__ would set): building a processor needs the
model's Hub files and torchvision, neither of which is here; the arithmetic is vLLM's own.

Input: argv[1] a JSON file [{"max_num_batched_tokens", "max_num_seqs", "max_model_len",
"tokens_per_item", "limit"}, ...]. Output: one "RESULT {json}" line each: {"ok", "error",
"budget", "items"}.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")


def one(case: dict[str, Any]) -> dict[str, Any]:
    from vllm.config import SchedulerConfig
    from vllm.multimodal.encoder_budget import MultiModalBudget
    from vllm.v1.core.encoder_cache_manager import compute_mm_encoder_budget

    sc = SchedulerConfig(
        max_num_batched_tokens=case["max_num_batched_tokens"],
        max_num_seqs=case["max_num_seqs"],
        max_model_len=case["max_model_len"],
        is_encoder_decoder=False,
    )
    compute, cache = compute_mm_encoder_budget(sc, {"image": case["tokens_per_item"]})
    b = object.__new__(MultiModalBudget)
    b.scheduler_config = sc
    b.max_model_len = case["max_model_len"]
    b.max_num_reqs = case["max_num_seqs"]
    b.mm_limits = {"image": case["limit"]}
    b.encoder_compute_budget = compute
    b.encoder_cache_size = cache
    _, items = b._get_max_items("image", case["tokens_per_item"])
    return {"budget": b.get_encoder_budget(), "items": items}


def main() -> None:
    for case in json.loads(Path(sys.argv[1]).read_text()):
        out: dict[str, Any] = {"ok": False, "error": ""}
        try:
            out.update(one(case))
            out["ok"] = True
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
