"""`gpu-preflight estimate`: one configuration's memory, no selection (a VRAM calculator)."""

from __future__ import annotations

import os

from gpu_preflight.gpu_catalog import load_gpu_catalog
from gpu_preflight.memory.llamacpp import LlamaCppConfig, estimate_llamacpp
from gpu_preflight.memory.types import Estimate
from gpu_preflight.memory.vllm import VllmConfig, estimate_vllm
from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.resolve import resolve_model
from gpu_preflight.models.types import Artifact, ModelSpec
from gpu_preflight.plan.errors import InvalidInput
from gpu_preflight.plan.overrides import (
    LLAMACPP_CACHE_TYPES,
    MAX_CONTEXT,
    MIN_CONTEXT,
    VLLM_CACHE_TYPES,
    _int,
)

MIB = 2**20


def pick_artifact(spec: ModelSpec, engine: str, quant: str | None) -> Artifact:
    arts = [a for a in spec.artifacts if a.engine == engine]
    if quant:
        arts = [a for a in arts if a.quant.lower() == quant.lower()]
    if not arts:
        have = ", ".join(f"{a.engine}:{a.quant}" for a in spec.artifacts)
        raise InvalidInput(
            f"--model {spec.id}: no {engine} artifact{' ' + quant if quant else ''}; it has {have}"
        )
    return arts[0]


def run_estimate(
    model: str,
    engine: str,
    context: str,
    parallel: int,
    cache_type: str | None,
    flash_attn: str,
    gpu: str | None,
    cpu: bool,
    gpu_memory_utilization: float,
) -> tuple[Estimate, str]:
    ctx = _int(
        "--context",
        context,
        MIN_CONTEXT,
        MAX_CONTEXT,
        f"a whole number of tokens from {MIN_CONTEXT} to {MAX_CONTEXT}, e.g. 8192 or 32k",
        True,
    )
    env_file = os.environ.get("PREFLIGHT_MODELS_FILE", "").strip()
    catalog = load_catalog(None if not env_file else __import__("pathlib").Path(env_file))
    base, at, quant = model.rpartition("@")
    value, q = (base, quant) if at and base and "/" not in quant else (model, None)
    spec = resolve_model(value, catalog, "--model")
    art = pick_artifact(spec, engine, q)
    card = None
    if gpu:
        card = load_gpu_catalog().find(gpu)
        if card is None:
            close = load_gpu_catalog().suggest(gpu)
            raise InvalidInput(
                f"--gpu {gpu!r} is not a known GPU"
                + (f"; did you mean {', '.join(close)}?" if close else "")
                + " (see `gpu-preflight gpus`)"
            )
    if engine == "llama.cpp":
        ct = (cache_type or "f16").lower()
        if ct not in LLAMACPP_CACHE_TYPES:
            raise InvalidInput(
                f"--cache-type {cache_type!r} is not a llama.cpp KV type. Accepted: {', '.join(LLAMACPP_CACHE_TYPES)}"
            )
        if flash_attn == "off" and ct not in ("f16", "f32", "bf16"):
            raise InvalidInput(f"--cache-type {ct} needs flash attention; use --flash-attn on")
        cfg = LlamaCppConfig(
            context=ctx * parallel,
            parallel=parallel,
            cache_type_k=ct,
            cache_type_v=ct,
            flash_attn=flash_attn != "off",
            n_gpu_layers=0 if cpu else -1,
        )
        e = estimate_llamacpp(spec, art, cfg, gpu_count=0 if cpu else 1)
        where = "CPU" if cpu else f"one {card.nvml_name if card else gpu}"
    else:
        if cpu:
            raise InvalidInput(
                "--engine vllm needs a GPU: use --gpu NAME (vLLM has no CPU path here)"
            )
        assert card is not None
        ct = (cache_type or "auto").lower()
        if ct not in VLLM_CACHE_TYPES:
            raise InvalidInput(
                f"--cache-type {cache_type!r} is not a vLLM KV type. Accepted: {', '.join(VLLM_CACHE_TYPES)}"
            )
        e = estimate_vllm(
            spec,
            art,
            VllmConfig(
                max_model_len=ctx,
                gpu_total_bytes=card.memory_total_mib * MIB,
                gpu_memory_utilization=gpu_memory_utilization,
                max_num_seqs=parallel,
                kv_cache_dtype=ct,
            ),
        )
        where = f"one {card.nvml_name}"
    title = f"{spec.name} {art.quant} with {engine} at {ctx} tokens x {parallel} on {where}"
    return e, title
