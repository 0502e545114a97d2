"""From the user's values and a tier to one ``Wants``: what every fit of this plan is asked for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpu_preflight.inputs.errors import TierTableError
from gpu_preflight.inputs.model_request import ModelRequest
from gpu_preflight.inputs.overrides import NGL_AUTO, Overrides, per_slot_context
from gpu_preflight.inputs.settings import value_of
from gpu_preflight.models.types import Artifact, ModelSpec
from gpu_preflight.plan.common import Wants
from gpu_preflight.plan.tiers import Tier

_AUTO_SLOTS = 4  # llama-server with -np -1 (auto): 4 slots and a unified KV (server.cpp main)


@dataclass(frozen=True)
class Catalogue:
    """The models the planner may choose from (the catalog, loaded by the caller)."""

    models: tuple[ModelSpec, ...]

    def get(self, model_id: str) -> ModelSpec | None:
        return next((m for m in self.models if m.id == model_id), None)


def wants_for(tier: Tier, o: Overrides, gpus: bool, request: ModelRequest | None = None) -> Wants:
    """The request every fit of a plan gets: the tier's goals, with every user pin applied.

    Built from the typed record only; what the user left open is None ("the fit chooses") or the
    table's default (inputs/flags.py KNOBS), never a default written here."""
    par = value_of(o.parallel)
    unified = value_of(o.kv_unified)
    if par == -1:
        par, unified = _AUTO_SLOTS, True if unified is None else unified
    parallel = par or tier.parallel
    ctx = value_of(o.context)
    total = value_of(o.ctx_total)
    if total is not None and total > 0 and ctx is None:
        ctx = per_slot_context(total, parallel, bool(unified))
    if total == 0:
        total = None  # -c 0: the model's trained length, which the fit takes as its target
        if ctx is None and request is not None:
            trained = request.spec.arch.max_position_embeddings
            # estimate: llama-server's --fit (on by default) reads a typed -c 0 as the trained
            # context per stream (plan/llamacpp.py typed_defaults_llama, also for --fit off)
            ctx = trained if o.as_typed else trained // (1 if unified else parallel)
    kv = value_of(o.kv_cache_type)
    ck, cv = value_of(o.cache_type_k), value_of(o.cache_type_v)
    ngl = value_of(o.n_gpu_layers)
    if ngl == NGL_AUTO:
        ngl = None  # llama.cpp's "auto": the planner fits it and the argv carries the number
    ncmoe = value_of(o.n_cpu_moe)
    if value_of(o.cpu_moe):
        ncmoe = 100_000  # --cpu-moe: every layer's experts (clamped to n_layer by the model)
    # llama-server's own default is auto (the table: common.h LLAMA_FLASH_ATTN_TYPE_AUTO): a
    # command as typed (estimate) takes it; plan and run choose on.
    fa: str = o.resolved("flash_attn", "llama.cpp").value if o.as_typed else "on"
    fa = o.flash_attn.value if o.flash_attn is not None else fa
    reserve = value_of(o.reserve_gib)
    min_tok_s: float = o.resolved("min_tok_s").value
    return Wants(
        min_context=min(tier.min_context, ctx) if ctx else tier.min_context,
        target_context=ctx or tier.target_context,
        fixed_context=ctx is not None,
        parallel=parallel,
        cache_type_k=ck or kv,
        cache_type_v=cv or kv,
        flash_attn=fa,
        min_tok_s=min_tok_s,
        n_gpu_layers=ngl if gpus else None,
        n_cpu_moe=ncmoe,
        gpu_memory_utilization=value_of(o.gpu_memory_utilization),
        tensor_parallel=value_of(o.tensor_parallel),
        pipeline_parallel=value_of(o.pipeline_parallel),
        pp_layer_partition=value_of(o.pp_layer_partition),
        reserve_bytes=int(reserve * 2**30) if reserve is not None else 0,
        n_batch=value_of(o.batch) or o.resolved("batch", "llama.cpp").value,
        n_ubatch=value_of(o.ubatch) or o.resolved("ubatch", "llama.cpp").value,
        ctx_total=total,
        tensor_split=value_of(o.tensor_split),
        split_mode=value_of(o.split_mode),
        main_gpu=value_of(o.main_gpu),
        devices=value_of(o.device),
        kv_unified=unified,
        repack=value_of(o.repack),
        fit=value_of(o.fit),
        load_mode=value_of(o.load_mode),
        extra_gpu_bytes=request.extra_gpu_bytes if request else 0,
        cache_ram_mib=value_of(o.cache_ram),
        op_offload=value_of(o.op_offload),
        swa_full=value_of(o.swa_full) is True,
        ctx_checkpoints=value_of(o.ctx_checkpoints),
        max_num_batched_tokens=value_of(o.max_num_batched_tokens),
        enforce_eager=value_of(o.enforce_eager),
        block_size=value_of(o.block_size),
        dtype=value_of(o.dtype),
        cpu_offload_gb=value_of(o.cpu_offload_gb),
        kv_cache_memory_bytes=value_of(o.kv_cache_memory_bytes),
        quantization=value_of(o.quantization),
        data_parallel=value_of(o.data_parallel),
        limit_mm_per_prompt=value_of(o.limit_mm_per_prompt),
        language_model_only=value_of(o.language_model_only),
        skip_mm_profiling=value_of(o.skip_mm_profiling),
        mm_encoder_tp_mode=value_of(o.mm_encoder_tp_mode),
        allow_long_context=o.resolved("allow_long_context").value,
        parallel_pinned=o.parallel is not None,
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
