"""Run inside a vLLM virtual environment: what vLLM 0.32 makes of an argv's multimodal settings.

Each argv (after ``vllm serve MODEL``) goes through vLLM's own argument parser and
EngineArgs.from_cli_args, then into vLLM's own MultiModalConfig (vllm/config/multimodal.py, the
record ModelConfig builds for a multimodal model from the same EngineArgs fields), which
validates the values. create_engine_config cannot build a multimodal model here: the venvs have
no torchvision (.ci/vllm.sh removes it), without which vLLM cannot inspect the model class.

Input: a JSON file [{"argv": [...]}, ...]. Output: one "RESULT {json}" line per entry with "ok",
"error", and vLLM's limit per modality, skip_mm_profiling, mm_encoder_tp_mode and
language_model_only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

from vllm.config.multimodal import MultiModalConfig
from vllm.engine.arg_utils import EngineArgs
from vllm.utils.argparse_utils import FlexibleArgumentParser

with open(sys.argv[1]) as f:
    cases = json.load(f)
for case in cases:
    argv = list(case["argv"])
    if argv[:2] == ["vllm", "serve"]:
        argv = ["--model", argv[2], *argv[3:]]
    err = io.StringIO()
    result: dict[str, object]
    try:
        parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
        with contextlib.redirect_stderr(err):
            args, _ = parser.parse_known_args(argv)
        ea = EngineArgs.from_cli_args(args)
        mm = MultiModalConfig(
            language_model_only=ea.language_model_only,
            limit_per_prompt=ea.limit_mm_per_prompt,
            skip_mm_profiling=bool(ea.skip_mm_profiling),
            mm_encoder_tp_mode=ea.mm_encoder_tp_mode,
        )
        result = {
            "ok": True,
            "limits": {m: mm.get_limit_per_prompt(m) for m in ("image", "video", "audio")},
            "skip_mm_profiling": mm.skip_mm_profiling,
            "mm_encoder_tp_mode": mm.mm_encoder_tp_mode,
            "language_model_only": mm.language_model_only,
        }
    except SystemExit as e:  # argparse rejects with exit 2 and a message on stderr
        result = {"ok": False, "error": f"exit {e.code}: {err.getvalue()[-800:]}"}
    except Exception as e:  # every vLLM validation error is a finding
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"[:800]}
    print("RESULT " + json.dumps(result, default=str), flush=True)
