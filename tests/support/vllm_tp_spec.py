"""Run inside the vLLM venv: vLLM's own per-rank KV cache spec and weights at tensor parallel N.

The tensor-parallel counterpart of vllm_kv_spec.py (issue 19 item 4). Two steps, one process
tree:

1. Layouts: for each case, transformers' own model class on the meta device written as a
   checkpoint layout (tests/support/hf_meta_layout.py build: config.json + a safetensors header
   over a sparse hole), from transformers' default config for the model_type with the case's
   ``overrides`` set on it (head counts that divide the TP sizes asked for, a layer pattern).
2. Ranks: for each TP size N, N processes (multiprocessing "spawn"), one per rank, each
   ``init_distributed_environment(world_size=N, rank=r, file://..., backend="gloo")`` and
   ``initialize_model_parallel(N, 1)``, then builds vLLM's model class on the meta device exactly
   as vllm_kv_spec.py does (EngineArgs(..., tensor_parallel_size=N).create_engine_config(),
   initialize_model under set_current_vllm_config) and reports, for that rank:
   - attention_bytes_per_token: every attention layer's spec page_size_bytes / block_size
     (real_page_size_bytes where the spec pads), as gpu_model_runner.get_kv_cache_spec asks;
   - state_bytes: one sequence's recurrent state over the Mamba-like layers (MambaSpec shapes);
   - param_bytes: numel x element_size of every parameter of the built model (named_parameters,
     tied ones once): the weights vLLM loads into that rank;
   - buffer_bytes: the same over its buffers (rotary cos/sin caches and the like, which vLLM
     computes at construction instead of loading).
   The parallel groups are made per model (which exist depends on it: the expert-parallel group
   only for MoE models), so every rank walks the cases in the same order, each with its own
   rendezvous file.

Input: argv[1] a JSON file [{"architecture", "model_type", "dir", "overrides", "tp": [2, 4]},
...]; a case without "tp" is step 1 only. [{"tp_plan_of": model_type}, ...] instead: one
{"model_type", "plan"} each, whether transformers' config has a base_model_tp_plan. Output: one "RESULT {json}" line per case:
{"architecture", "ok", "error", "header_bytes", "tp": {"2": {"ok", "error", "ranks": [{...}]}}}.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
warnings.filterwarnings("ignore")

# A rank that does not answer within this long (a collective that never completes because
# another rank failed differently) fails its case and the rest of that TP size.
CASE_TIMEOUT_S = 300


def _layout(case: dict[str, Any]) -> dict[str, Any]:
    """hf_meta_layout.build with the case's overrides set on transformers' default config."""
    import hf_meta_layout

    over = case.get("overrides") or {}
    shrink = hf_meta_layout.shrink

    def shrink_and_set(model_type: str) -> Any:
        cfg = shrink(model_type)
        text = getattr(cfg, "text_config", None)
        target = text if text is not None and hasattr(text, "to_dict") else cfg
        for k, v in over.items():
            setattr(target, k, v)
        return cfg

    hf_meta_layout.shrink = shrink_and_set
    try:
        return hf_meta_layout.build(case["architecture"], case["model_type"], Path(case["dir"]))
    finally:
        hf_meta_layout.shrink = shrink


def _engine_config(d: Path, tp: int) -> Any:
    from vllm.engine.arg_utils import EngineArgs

    def config(**kw: Any) -> Any:
        return EngineArgs(
            model=str(d),
            skip_tokenizer_init=True,
            load_format="dummy",
            enforce_eager=True,
            dtype="bfloat16",
            tensor_parallel_size=tp,
            distributed_executor_backend="mp",
            **kw,
        ).create_engine_config()

    try:
        return config()
    except ValueError as exc:
        if "--mamba-block-size can only be set" not in str(exc):
            raise
        # vllm_kv_spec.spec_of: an MLA hybrid on the CPU platform, asked without prefix caching.
        return config(enable_prefix_caching=False)


def _rank_figures(d: Path, tp: int, rank: int, rendezvous: str) -> dict[str, Any]:
    import torch
    from vllm.config import get_layers_from_vllm_config, set_current_vllm_config
    from vllm.distributed import (
        destroy_distributed_environment,
        destroy_model_parallel,
        init_distributed_environment,
        initialize_model_parallel,
    )
    from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
    from vllm.model_executor.model_loader.utils import initialize_model
    from vllm.utils.torch_utils import set_default_torch_dtype

    vc = _engine_config(d, tp)
    # vllm/v1/worker/cpu_worker.py CPUWorker.init_device: the CPU communicator's shared-memory
    # group name comes from the rendezvous file's name.
    os.environ["VLLM_DIST_IDENT"] = os.path.basename(rendezvous)
    with set_current_vllm_config(vc):
        init_distributed_environment(
            world_size=tp,
            rank=rank,
            distributed_init_method=f"file://{rendezvous}",
            local_rank=rank,
            backend="gloo",
        )
        initialize_model_parallel(tp, 1)
    try:
        # vllm/model_executor/model_loader/base_loader.py BaseModelLoader.load_model: the model
        # is made under the model dtype (parameters vLLM makes without a dtype take it).
        with (
            set_current_vllm_config(vc),
            set_default_torch_dtype(vc.model_config.dtype),
            torch.device("meta"),
        ):
            model = initialize_model(vllm_config=vc)
            layers = get_layers_from_vllm_config(vc, AttentionLayerBase)  # type: ignore[type-abstract]
            specs = [
                layer.get_kv_cache_spec(vc)
                for layer in layers.values()
                if getattr(layer, "kv_sharing_target_layer_name", None) is None
            ]
    finally:
        destroy_model_parallel()
        destroy_distributed_environment()
    import vllm_kv_spec

    attn, state, kinds, heads = vllm_kv_spec.spec_figures(specs)
    kinds.pop("none", None)  # this file's figures count the layers with a cache only
    # named_parameters / named_buffers list a tied tensor once (remove_duplicate).
    params = sum(p.numel() * p.element_size() for _, p in model.named_parameters())
    buffers = sum(b.numel() * b.element_size() for _, b in model.named_buffers())
    return {
        "attention_bytes_per_token": int(attn),
        "state_bytes": state,
        "param_bytes": params,
        "buffer_bytes": buffers,
        "kv_heads": sorted(heads),
        "layers": kinds,
    }


def _rank_worker(tp: int, rank: int, jobs: list[tuple[int, str]], base: str, out: Any) -> None:
    """One rank: every case of this TP size in order, one result each on the queue."""
    import vllm_kv_spec

    vllm_kv_spec._as_on_a_gpu()
    vllm_kv_spec._text_only_torchvision()
    for i, d in jobs:
        try:
            res: dict[str, Any] = {"ok": True, **_rank_figures(Path(d), tp, rank, f"{base}/pg-{i}")}
        except Exception as exc:
            last = traceback.extract_tb(exc.__traceback__)[-1]
            res = {
                "ok": False,
                "error": f"{type(exc).__name__}: {str(exc)[:300]} ({last.filename}:{last.lineno})",
            }
        out.put((i, rank, res))


def _ranks(tp: int, jobs: list[tuple[int, str]]) -> dict[int, dict[str, Any]]:
    """{case index: {"ok", "error", "ranks": [per-rank figures]}} for one TP size."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    base = tempfile.mkdtemp(prefix=f"vllm-tp{tp}-")
    procs = [
        ctx.Process(target=_rank_worker, args=(tp, r, jobs, base, out), daemon=True)
        for r in range(tp)
    ]
    for p in procs:
        p.start()
    got: dict[int, list[dict[str, Any] | None]] = {i: [None] * tp for i, _ in jobs}
    error = ""
    for _ in range(len(jobs) * tp):
        try:
            i, rank, res = out.get(timeout=CASE_TIMEOUT_S)
        except queue.Empty:
            error = f"a rank gave no answer within {CASE_TIMEOUT_S} s"
            break
        got[i][rank] = res
    for p in procs:
        if error:
            p.kill()
        p.join(timeout=30)
    results: dict[int, dict[str, Any]] = {}
    for i, ranks in got.items():
        bad = [r for r in ranks if r is None or not r["ok"]]
        if bad:
            first = bad[0]
            results[i] = {"ok": False, "error": first["error"] if first else error, "ranks": []}
        else:
            results[i] = {"ok": True, "error": "", "ranks": ranks}
    return results


def _tp_plan(model_type: str) -> dict[str, Any]:
    """Whether transformers' config for model_type names a tensor-parallel plan
    (base_model_tp_plan, on the text config of a composite one)."""
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(model_type)
    text = getattr(cfg, "text_config", None) or cfg
    return {"model_type": model_type, "plan": bool(getattr(text, "base_model_tp_plan", None))}


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    if cases and all("tp_plan_of" in c for c in cases):
        for c in cases:
            print("RESULT " + json.dumps(_tp_plan(c["tp_plan_of"])), flush=True)
        return
    outs: list[dict[str, Any]] = []
    for case in cases:
        out: dict[str, Any] = {"architecture": case["architecture"], "ok": False, "error": ""}
        try:
            out.update(_layout(case))
            out["ok"] = True
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        out["tp"] = {}
        outs.append(out)
    for n in sorted({n for c in cases for n in c.get("tp", ())}):
        jobs = [
            (i, c["dir"]) for i, c in enumerate(cases) if n in c.get("tp", ()) and outs[i]["ok"]
        ]
        for i, res in _ranks(n, jobs).items():
            outs[i]["tp"][str(n)] = res
    for out in outs:
        print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
