"""Run inside a vLLM 0.32 virtual environment: does real `vllm serve` accept every rank's argv, and
what does its engine config resolve? Also: which architectures vLLM's registry says support
pipeline parallel.

Each argv goes through vLLM's own CLI (vllm.entrypoints.cli.main: the parser and the serve
subcommand's validation, --headless included), then AsyncEngineArgs.from_cli_args and
create_engine_config, which builds ParallelConfig (world size, nnodes, node rank, master) and
checks the model's config.json (from an offline HF cache) against tensor and pipeline parallel.
The server is not started: the serve command's dispatch is replaced by the check.

Input: a JSON file {"argvs": [{"argv": [...], "env": {...}}], "archs": ["LlamaForCausalLM"...]}.
Output: one "RESULT {json}" line per argv, then one "PP {json}" line.
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
from vllm.model_executor.models.registry import ModelRegistry

state: dict[str, object] = {}


def _check(args: object) -> None:
    if getattr(args, "model_tag", None):
        args.model = args.model_tag  # type: ignore[attr-defined]
    state["headless"] = bool(getattr(args, "headless", False))
    state["host"] = getattr(args, "host", None)
    state["port"] = getattr(args, "port", None)
    ea = AsyncEngineArgs.from_cli_args(args)  # type: ignore[arg-type]
    state["stage"] = "engine_args"
    cfg = ea.create_engine_config()
    pc = cfg.parallel_config
    state.update(
        stage="engine_config",
        world_size=pc.world_size,
        tensor_parallel_size=pc.tensor_parallel_size,
        pipeline_parallel_size=pc.pipeline_parallel_size,
        nnodes=pc.nnodes,
        node_rank=pc.node_rank,
        master_addr=pc.master_addr,
        master_port=pc.master_port,
        local_world_size=pc.local_world_size,
        node_rank_within_dp=pc.node_rank_within_dp,
        max_model_len=cfg.model_config.max_model_len,
    )


serve.ServeSubcommand.cmd = staticmethod(_check)  # type: ignore[method-assign]

with open(sys.argv[1]) as f:
    doc = json.load(f)
for case in doc["argvs"]:
    state.clear()
    sys.argv = list(case["argv"])
    env_before = dict(os.environ)
    os.environ.update(case.get("env", {}))
    err = io.StringIO()
    result: dict[str, object]
    try:
        with contextlib.redirect_stderr(err):
            main()
        result = {"ok": True}
    except SystemExit as e:
        result = {"ok": False, "error": f"exit {e.code}: {err.getvalue()[-800:]}"}
    except Exception as e:
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"[:800]}
    os.environ.clear()
    os.environ.update(env_before)
    result.update(state)
    print("RESULT " + json.dumps(result, default=str), flush=True)

pp = {}
for arch in doc.get("archs", []):
    info = ModelRegistry._try_inspect_model_cls(arch)
    pp[arch] = None if info is None else bool(info.supports_pp)
print("PP " + json.dumps(pp), flush=True)
