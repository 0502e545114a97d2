"""From the user's values and a tier to one ``Wants``: what every fit of this plan is asked for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpu_preflight.inputs.errors import TierTableError
from gpu_preflight.inputs.model_request import ModelRequest
from gpu_preflight.inputs.overrides import NGL_AUTO, Overrides, per_slot_context
from gpu_preflight.models.types import Artifact, ModelSpec
from gpu_preflight.plan.common import Wants
from gpu_preflight.plan.tiers import Tier

DEFAULT_MIN_TOK_S = 1.0
_AUTO_SLOTS = 4  # llama-server with -np -1 (auto): 4 slots and a unified KV (server.cpp main)


@dataclass(frozen=True)
class Catalogue:
    """The models the planner may choose from (the catalog, loaded by the caller)."""

    models: tuple[ModelSpec, ...]

    def get(self, model_id: str) -> ModelSpec | None:
        return next((m for m in self.models if m.id == model_id), None)


def _int(o: Overrides, knob: str) -> int | None:
    v = o.value(knob)
    return None if v is None else int(v)


def wants_for(tier: Tier, o: Overrides, gpus: bool, request: ModelRequest | None = None) -> Wants:
    """The request every fit of a plan gets: the tier's goals, with every user pin applied."""
    par = _int(o, "parallel")
    unified = o.value("kv_unified")
    if par == -1:
        par, unified = _AUTO_SLOTS, True if unified is None else unified
    parallel = par or tier.parallel
    ctx = _int(o, "context")
    total = _int(o, "ctx_total")
    if total is not None and total > 0 and ctx is None:
        ctx = per_slot_context(total, parallel, bool(unified))
    if total == 0:
        total = None  # -c 0: the model's trained length, which the fit takes as its target
        if ctx is None and request is not None:
            trained = request.spec.arch.max_position_embeddings
            # estimate: llama-server's --fit (on by default) reads a typed -c 0 as the trained
            # context per stream (plan/llamacpp.py typed_defaults_llama, also for --fit off)
            ctx = trained if o.as_typed else trained // (1 if unified else parallel)
    kv = o.value("kv_cache_type")
    ck, cv = o.value("cache_type_k"), o.value("cache_type_v")
    ngl = _int(o, "n_gpu_layers")
    if ngl == NGL_AUTO:
        ngl = None  # llama.cpp's "auto": the planner fits it and the argv carries the number
    ncmoe = _int(o, "n_cpu_moe")
    if o.value("cpu_moe"):
        ncmoe = 100_000  # --cpu-moe: every layer's experts (clamped to n_layer by the model)
    # llama-server's own default is auto (common.h LLAMA_FLASH_ATTN_TYPE_AUTO): a command as
    # typed (estimate) takes it; plan and run choose on.
    fa = str(o.value("flash_attn", "auto" if o.as_typed else "on"))
    reserve = o.value("reserve_gib")
    return Wants(
        min_context=min(tier.min_context, ctx) if ctx else tier.min_context,
        target_context=ctx or tier.target_context,
        fixed_context=ctx is not None,
        parallel=parallel,
        cache_type_k=ck or kv,
        cache_type_v=cv or kv,
        flash_attn=fa,
        min_tok_s=float(o.value("min_tok_s", DEFAULT_MIN_TOK_S)),
        n_gpu_layers=ngl if gpus else None,
        n_cpu_moe=ncmoe,
        gpu_memory_utilization=o.value("gpu_memory_utilization"),
        tensor_parallel=_int(o, "tensor_parallel"),
        pipeline_parallel=_int(o, "pipeline_parallel"),
        pp_layer_partition=o.value("pp_layer_partition"),
        reserve_bytes=int(float(reserve) * 2**30) if reserve is not None else 0,
        n_batch=_int(o, "batch") or 2048,
        n_ubatch=_int(o, "ubatch") or 512,
        ctx_total=total,
        tensor_split=o.value("tensor_split"),
        split_mode=o.value("split_mode"),
        main_gpu=_int(o, "main_gpu"),
        devices=o.value("device"),
        kv_unified=unified,
        repack=o.value("repack"),
        fit=o.value("fit"),
        load_mode=o.value("load_mode"),
        extra_gpu_bytes=request.extra_gpu_bytes if request else 0,
        cache_ram_mib=_int(o, "cache_ram"),
        op_offload=o.value("op_offload"),
        ctx_checkpoints=_int(o, "ctx_checkpoints"),
        max_num_batched_tokens=_int(o, "max_num_batched_tokens"),
        enforce_eager=o.value("enforce_eager"),
        block_size=int(o.value("block_size")) if o.value("block_size") else None,
        dtype=o.value("dtype"),
        cpu_offload_gb=o.value("cpu_offload_gb"),
        kv_cache_memory_bytes=_int(o, "kv_cache_memory_bytes"),
        quantization=o.value("quantization"),
        data_parallel=_int(o, "data_parallel"),
        allow_long_context=str(o.value("allow_long_context", "0")) in ("1", "true"),
        parallel_pinned=o.get("parallel") is not None,
        as_typed=o.as_typed,
    )


def pinned_engines(o: Overrides) -> Sequence[str] | None:
    e = o.engine
    return [str(e.value)] if e is not None else None


_VLLM_QUANT_ALIASES = {"awq_marlin": "awq", "gptq_marlin": "gptq", "none": "bf16"}


def artifacts(spec: ModelSpec, engine: str, quant: str | None) -> list[Artifact]:
    arts = [a for a in spec.artifacts if a.engine == engine]
    if quant:
        q = _VLLM_QUANT_ALIASES.get(quant.lower(), quant.lower())
        arts = [a for a in arts if a.quant.lower() == q]
    return arts


def tier_candidates(tier: Tier, catalog: Catalogue) -> list[tuple[ModelSpec, str | None]]:
    out = []
    for entry in tier.models:
        model_id, _, quant = entry.partition("@")
        spec = catalog.get(model_id)
        if spec is None or (quant and not any(a.quant == quant for a in spec.artifacts)):
            raise TierTableError(
                f"tier {tier.id!r} lists {entry!r}, which is not in the model catalog "
                "(a catalog id, optionally @QUANT of one of its artifacts)"
            )
        out.append((spec, quant or None))
    return out
