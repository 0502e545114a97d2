"""Run inside a vLLM virtual environment: does real `vllm serve` accept these argv lists?

Each argv goes through vLLM's own CLI entry point (vllm.entrypoints.cli.main: argument parser,
subcommand validation), then EngineArgs.from_cli_args and, where asked, create_engine_config,
which resolves the model's and the draft's config.json (from an offline HF cache) and validates
max_model_len, tensor parallel and the speculative config. The server itself is not started: the
serve command's dispatch is replaced by the check. The CPU platform is selected because argument
parsing needs one and this machine has no GPU.

Input: a JSON file [{"argv": [...], "engine_config": bool, "env": {...}}, ...] ("env": what the
plan adds to the engine's environment, set for that case only). Output: one "RESULT {json}"
line per entry with "ok", "stage" and "error".
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

import vllm.entrypoints.cli.serve as serve
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.cli.main import main

state: dict[str, object] = {}


def _check(args: object) -> None:
    if getattr(args, "model_tag", None):
        args.model = args.model_tag  # type: ignore[attr-defined]
    ea = AsyncEngineArgs.from_cli_args(args)  # type: ignore[arg-type]
    state.update(
        stage="engine_args",
        max_model_len=ea.max_model_len,
        gpu_memory_utilization=ea.gpu_memory_utilization,
        tensor_parallel_size=ea.tensor_parallel_size,
        max_num_seqs=ea.max_num_seqs,
        speculative_config=ea.speculative_config,
        served_model_name=ea.served_model_name,
        pipeline_parallel_size=ea.pipeline_parallel_size,
        kv_cache_dtype=ea.kv_cache_dtype,
        quantization=ea.quantization,
        enforce_eager=ea.enforce_eager,
        max_num_batched_tokens=ea.max_num_batched_tokens,
        block_size=ea.block_size,
        dtype=ea.dtype,
        cpu_offload_gb=ea.cpu_offload_gb,
        kv_cache_memory_bytes=ea.kv_cache_memory_bytes,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
    )
    if ea.pipeline_parallel_size > 1:
        # The layers each stage builds, as vLLM computes them (VLLM_PP_LAYER_PARTITION read by
        # get_pp_indices; a partition of the wrong length or sum is its ValueError).
        import vllm.envs as envs
        from vllm.distributed.utils import get_pp_indices

        n = ea.create_model_config().hf_config.num_hidden_layers
        pp = ea.pipeline_parallel_size
        state.update(
            stage="pp_indices",
            pp_partition_env=envs.VLLM_PP_LAYER_PARTITION,
            pp_indices=[list(get_pp_indices(n, r, pp)) for r in range(pp)],
        )
    if state.get("want_engine_config"):
        cfg = ea.create_engine_config()
        spec = cfg.speculative_config
        state.update(
            stage="engine_config",
            resolved_max_model_len=cfg.model_config.max_model_len,
            speculative_method=spec.method if spec else None,
            draft_tokens=spec.num_speculative_tokens if spec else None,
        )


serve.ServeSubcommand.cmd = staticmethod(_check)  # type: ignore[method-assign]

with open(sys.argv[1]) as f:
    cases = json.load(f)
added: list[str] = []
for case in cases:
    state.clear()
    state["want_engine_config"] = bool(case.get("engine_config"))
    sys.argv = list(case["argv"])
    # The variables the plan adds to the engine's environment (plan.json "env"), for this case only.
    for key in added:
        os.environ.pop(key, None)
    added = list(case.get("env", {}))
    os.environ.update(case.get("env", {}))
    err = io.StringIO()
    result: dict[str, object]
    try:
        with contextlib.redirect_stderr(err):
            main()
        result = {"ok": True}
    except SystemExit as e:  # argparse rejects with exit 2 and a message on stderr
        result = {"ok": False, "error": f"exit {e.code}: {err.getvalue()[-800:]}"}
    except Exception as e:  # every vLLM validation error is a finding
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"[:800]}
    result.update({k: v for k, v in state.items() if k != "want_engine_config"})
    print("RESULT " + json.dumps(result, default=str), flush=True)
