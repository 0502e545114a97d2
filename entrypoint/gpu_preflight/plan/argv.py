"""Build each engine's argv as data (pure). The user's own engine arguments always win.

A flag the user gave after ``--`` (or, for llama-server, through its ``LLAMA_ARG_*`` variable) is
not emitted by us: llama-server lets a command-line flag override its environment, so emitting
ours would silently replace the user's value. Their arguments are appended verbatim at the end.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from gpu_preflight.plan.overrides import LLAMA_ENV_FOR_FLAG, Overrides
from gpu_preflight.plan.types import ModelChoice

DEFAULT_HOST = "0.0.0.0"  # inside a container: reachable through the published port
DEFAULT_PORT = 8080  # llama-server's default; vLLM's is 8000, we use one port for both images


@dataclass(frozen=True)
class DraftSettings:
    """A speculative-decoding draft model: where the engine loads it from and how much it drafts."""

    repo: str  # HF repo (vLLM: the model; llama.cpp: the GGUF repo)
    file: str | None  # GGUF file inside the repo (llama.cpp)
    path: str | None  # local file or directory
    tokens: int  # tokens drafted per step
    tensor_parallel_size: int = 1  # vLLM: must equal the target's


@dataclass(frozen=True)
class LlamaServerSettings:
    n_ctx_total: int  # llama-server -c: the whole KV, shared by the parallel slots
    parallel: int
    n_gpu_layers: int  # -1: all
    n_cpu_moe: int
    flash_attn: str  # on | off | auto
    cache_type_k: str
    cache_type_v: str
    n_batch: int
    n_ubatch: int
    tensor_split: tuple[float, ...]  # empty: one GPU or none
    host: str
    port: int
    draft: DraftSettings | None = None


@dataclass(frozen=True)
class VllmSettings:
    max_model_len: int
    gpu_memory_utilization: float
    tensor_parallel_size: int
    max_num_seqs: int
    kv_cache_dtype: str  # auto | fp8 ...
    quantization: str | None  # only when the user asked for one; vLLM reads it from the config
    host: str
    port: int
    enforce_eager: bool = False
    draft: DraftSettings | None = None


def _user_has(o: Overrides, flag: str, llama: bool) -> bool:
    if flag in o.engine_args.values:
        return True
    return llama and LLAMA_ENV_FOR_FLAG.get(flag, "") in o.llama_env


def _emit(out: list[str], o: Overrides, flag: str, value: str | None, llama: bool) -> None:
    if value is not None and not _user_has(o, flag, llama):
        out += [flag, value]


def llama_server_argv(model: ModelChoice, s: LlamaServerSettings, o: Overrides) -> tuple[str, ...]:
    argv: list[str] = ["llama-server"]
    user_gave_model = any(_user_has(o, f, True) for f in ("--model", "--hf-repo"))
    if not user_gave_model:
        if model.path:
            argv += ["--model", model.path]
        else:
            argv += ["--hf-repo", model.repo]
            if model.file:
                argv += ["--hf-file", model.file]
    # llama-server's own --fit (on by default) would re-size what we planned; the plan is the fit.
    _emit(argv, o, "--fit", "off", True)
    _emit(argv, o, "--ctx-size", str(s.n_ctx_total), True)
    _emit(argv, o, "--parallel", str(s.parallel), True)
    _emit(argv, o, "--n-gpu-layers", "all" if s.n_gpu_layers < 0 else str(s.n_gpu_layers), True)
    if s.n_cpu_moe:
        _emit(argv, o, "--n-cpu-moe", str(s.n_cpu_moe), True)
    _emit(argv, o, "--flash-attn", s.flash_attn, True)
    _emit(argv, o, "--cache-type-k", s.cache_type_k, True)
    _emit(argv, o, "--cache-type-v", s.cache_type_v, True)
    _emit(argv, o, "--batch-size", str(s.n_batch), True)
    _emit(argv, o, "--ubatch-size", str(s.n_ubatch), True)
    if s.tensor_split:
        _emit(argv, o, "--tensor-split", ",".join(f"{x:g}" for x in s.tensor_split), True)
    if s.draft is not None:
        d = s.draft
        # Without --spec-type, llama-server (2026) loads the draft but never drafts with it.
        argv += ["--spec-type", "draft-simple"]
        if d.path:
            argv += ["--spec-draft-model", d.path]
        else:
            argv += ["--spec-draft-hf", d.repo]
            if d.file:
                # With --spec-draft-hf, --spec-draft-model names the file inside the repo.
                argv += ["--spec-draft-model", d.file]
        argv += ["--spec-draft-ngl", "all" if s.n_gpu_layers != 0 else "0"]
        argv += ["--spec-draft-type-k", s.cache_type_k, "--spec-draft-type-v", s.cache_type_v]
        argv += ["--spec-draft-n-max", str(d.tokens)]
    _emit(argv, o, "--host", s.host, True)
    _emit(argv, o, "--port", str(s.port), True)
    argv += ["--alias", model.id]
    argv += list(o.engine_args.argv)
    return tuple(argv)


def vllm_argv(model: ModelChoice, s: VllmSettings, o: Overrides) -> tuple[str, ...]:
    argv: list[str] = ["vllm", "serve"]
    if "--model" not in o.engine_args.values:
        argv.append(model.path or model.repo)
    _emit(argv, o, "--max-model-len", str(s.max_model_len), False)
    _emit(argv, o, "--gpu-memory-utilization", f"{s.gpu_memory_utilization:.2f}", False)
    if s.tensor_parallel_size > 1:
        _emit(argv, o, "--tensor-parallel-size", str(s.tensor_parallel_size), False)
    _emit(argv, o, "--max-num-seqs", str(s.max_num_seqs), False)
    if s.kv_cache_dtype != "auto":
        _emit(argv, o, "--kv-cache-dtype", s.kv_cache_dtype, False)
    if s.quantization:
        _emit(argv, o, "--quantization", s.quantization, False)
    if s.enforce_eager and "--enforce-eager" not in o.engine_args.values:
        argv.append("--enforce-eager")
    if s.draft is not None:
        spec = {
            "method": "draft_model",
            "model": s.draft.path or s.draft.repo,
            "num_speculative_tokens": s.draft.tokens,
            "draft_tensor_parallel_size": s.draft.tensor_parallel_size,
        }
        argv += ["--speculative-config", json.dumps(spec, separators=(",", ":"))]
    _emit(argv, o, "--host", s.host, False)
    _emit(argv, o, "--port", str(s.port), False)
    if "--served-model-name" not in o.engine_args.argv:
        argv += ["--served-model-name", model.id]
    argv += list(o.engine_args.argv)
    return tuple(argv)


def redact(argv: Sequence[str], secrets: Sequence[str]) -> tuple[str, ...]:
    """Replace any secret value that slipped into argv (it never should) before it is shown."""
    hidden = [s for s in secrets if len(s) >= 4]
    out = []
    for arg in argv:
        clean = arg
        for s in hidden:
            clean = clean.replace(s, "***")
        out.append(clean)
    return tuple(out)
