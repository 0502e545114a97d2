"""A fit that ships: the plan document, its argv written from the fit's settings, its sources."""

from __future__ import annotations

from dataclasses import replace

from gpu_preflight.inputs.model_request import ModelRequest
from gpu_preflight.inputs.overrides import Overrides
from gpu_preflight.inputs.settings import value_of
from gpu_preflight.memory.types import Estimate
from gpu_preflight.models.types import Artifact, ModelSpec
from gpu_preflight.plan.common import Fit, gib
from gpu_preflight.plan.llamacpp import llama_server_argv
from gpu_preflight.plan.settings import DraftSettings, LlamaServerSettings, VllmSettings
from gpu_preflight.plan.targets import GpuTarget, Targets
from gpu_preflight.plan.tiers import Tier
from gpu_preflight.plan.types import DraftChoice, ModelChoice, Plan, PlannedDevice, Prediction
from gpu_preflight.plan.vllm import vllm_argv, vllm_env
from gpu_preflight.profile_types import Profile

PLAN_SCHEMA_VERSION = 1


def model_choice(spec: ModelSpec, art: Artifact) -> ModelChoice:
    return ModelChoice(
        id=spec.id,
        name=spec.name,
        hf_id=spec.hf_id,
        repo=art.repo,
        file=art.file,
        path=art.path,
        quant=art.quant,
        weight_bytes=art.weight_bytes,
        from_file=art.path is not None,
    )


def _draft_choice(fit: Fit) -> DraftChoice | None:
    if fit.draft is None:
        return None
    c = model_choice(fit.draft.spec, fit.draft.artifact)
    return DraftChoice(
        id=c.id,
        repo=c.repo,
        file=c.file,
        path=c.path,
        quant=c.quant,
        weight_bytes=c.weight_bytes,
        tokens=fit.draft.tokens,
    )


def _floor(o: Overrides) -> float | None:
    floor: float = o.resolved("min_tok_s").value
    return floor if floor > 0 else None


def prediction(fit: Fit, gpus: tuple[GpuTarget, ...]) -> Prediction:
    e: Estimate = fit.estimate
    devices = []
    for d in e.devices:
        if d.device == "CPU":
            desc = "host RAM"
        elif fit.engine in ("llama.cpp", "vllm"):
            # Both engines' devices are named CUDA<ordinal> of this process (llama.cpp in
            # --device order, plan/llamacpp.py; vLLM by rank, plan/vllm.py by_ordinal)
            desc = next(
                (g.label for g in fit.gpus if f"CUDA{g.cuda_ordinal}" == d.device), d.device
            )
        else:
            i = int(d.device[4:])
            desc = fit.gpus[i].label if i < len(fit.gpus) else d.device
        devices.append(
            PlannedDevice(
                device=d.device,
                description=desc,
                weights_bytes=d.weights_bytes,
                kv_cache_bytes=d.kv_cache_bytes,
                compute_bytes=d.compute_bytes,
                overhead_bytes=d.overhead_bytes,
                total_bytes=d.total_bytes,
                budget_bytes=fit.budgets.get(d.device, d.budget_bytes or 0),
            )
        )
    margin = max((g.margin_bytes for g in fit.gpus), default=0)
    notes = list(e.notes) + list(fit.notes)
    notes.append(
        f"margin: {gib(margin)} kept free on every GPU beyond the prediction "
        "(2% of the card, at least 512 MiB), because under-predicting means an OOM at start-up"
    )
    return Prediction(
        devices=tuple(devices),
        margin_bytes=margin + e.margin_bytes,
        kv_bytes_per_token=e.kv_bytes_per_token,
        kv_capacity_tokens=e.kv_capacity_tokens,
        max_concurrency=e.max_concurrency,
        decode_tok_s_low=round(fit.forecast.low_tok_s, 1) if fit.forecast else None,
        decode_tok_s_high=round(fit.forecast.high_tok_s, 1) if fit.forecast else None,
        notes=tuple(notes),
    )


def _sources(
    tier: Tier, tier_src: str, o: Overrides, fit: Fit, model: ModelRequest | None
) -> dict[str, str]:
    def src(knob: str, default: str) -> str:
        s = o.sourced(knob)
        return s.source if s is not None else default

    out = {
        "model": model.source if model else f"tier:{tier.id}",
        "engine": o.engine.source if o.engine else f"tier:{tier.id}",
        "context": src("context", "")
        or src("ctx_total", f"fit (tier {tier.id} target {tier.target_context})"),
        "parallel": src("parallel", f"tier:{tier.id}"),
        "tier": tier_src if not o.tier else o.tier.source,
        "kv_cache_type": src("cache_type_k", src("kv_cache_type", "default")),
        "reserve": o.source_of("reserve_gib"),
        "min_tok_s": o.source_of("min_tok_s"),
        "host": o.source_of("host"),
        "port": o.source_of("port"),
    }
    if fit.draft is not None:
        out["draft"] = fit.draft.user or (
            (o.speculative.source if o.speculative else f"tier:{tier.id} (speculative)")
            + f", catalog pairing {fit.spec.id} -> {fit.draft.spec.id}"
        )
    s = fit.settings
    if isinstance(s, LlamaServerSettings):
        out["flash_attn"] = src("flash_attn", "default")
        out["n_gpu_layers"] = src("n_gpu_layers", f"fit ({fit.mode})")
        if s.n_cpu_moe:
            out["n_cpu_moe"] = src("n_cpu_moe", src("cpu_moe", "fit (offload)"))
        for knob in ("batch", "ubatch", "tensor_split", "ctx_total"):
            if o.is_set(knob):
                out[knob] = src(knob, "")
        if o.as_typed:
            # estimate: what the command left open is llama-server 0.3.36's own default (the
            # table's, cited), or what its own --fit resolves (plan/llamacpp.py
            # typed_defaults_llama).
            own = "llama-server 0.3.36 default"
            fitted = f"llama-server 0.3.36 --fit {s.fit}" if s.fit == "on" else own
            out["context"] = src("ctx_total", src("context", f"{fitted} (from the model)"))
            out["n_gpu_layers"] = src("n_gpu_layers", fitted)
            for knob in ("parallel", "flash_attn", "batch", "ubatch", "cache_ram", "fit"):
                out[knob] = o.source_of(knob, "llama.cpp")
            own_kv = o.source_of("cache_type_k", "llama.cpp")
            out["kv_cache_type"] = src("cache_type_k", src("kv_cache_type", own_kv))
    else:
        # Which values the user set and which were chosen: by the planner (plan, run), or left
        # to vLLM 0.32's own default (estimate, the command as typed: the table's, cited).
        typed = o.as_typed

        def vllm(knob: str, chosen: str) -> str:
            return o.source_of(knob, "vllm") if typed else src(knob, chosen)

        if typed:
            out["context"] = o.source_of("context", "vllm")
        out["parallel"] = vllm("parallel", f"tier:{tier.id}")
        out["gpu_memory_utilization"] = vllm("gpu_memory_utilization", "fit (free memory)")
        for knob in ("tensor_parallel", "pipeline_parallel", "data_parallel", "kv_cache_type"):
            out[knob] = vllm(knob, "planner (fit)")
        out["max_num_batched_tokens"] = o.source_of("max_num_batched_tokens", "vllm")
    return out


def ship(
    profile: Profile,
    targets: Targets,
    tier: Tier,
    tier_src: str,
    o: Overrides,
    fit: Fit,
    model: ModelRequest | None,
) -> Plan:
    choice = model_choice(fit.spec, fit.artifact)
    # gpu-preflight's own host and port (the table's, cited) unless the user set them.
    host: str = o.resolved("host").value
    port: int = o.resolved("port").value
    alias = value_of(o.alias)
    draft = (
        DraftSettings(
            repo=fit.draft.artifact.repo,
            file=fit.draft.artifact.file,
            path=fit.draft.artifact.path,
            tokens=fit.draft.tokens,
            tensor_parallel_size=fit.settings.tensor_parallel_size
            if isinstance(fit.settings, VllmSettings)
            else 1,
        )
        if fit.draft
        else None
    )
    s = fit.settings
    if isinstance(s, LlamaServerSettings):
        auto_mm = value_of(o.mmproj_auto)
        user_mm = o.mmproj is not None or auto_mm is True
        # -hf loads the repo's projector by default (--mmproj-auto): not planned unless asked.
        no_mmproj = auto_mm is False or (choice.path is None and not user_mm)
        extra = tuple(
            (flag, v.value)
            for v, flag in (
                (o.mmproj, "--mmproj"),
                (o.lora, "--lora"),
                (o.lora_scaled, "--lora-scaled"),
            )
            if v is not None
        )
        s = replace(
            s,
            host=host,
            port=port,
            alias=alias,
            draft=draft,
            no_mmproj=no_mmproj,
            spec_type=value_of(o.spec_type),
            extra=extra,
        )
        argv = llama_server_argv(choice, s, o)
    else:
        s = replace(
            s,
            host=host,
            port=port,
            served_model_name=alias,
            draft=draft if o.speculative_config is None else None,
            speculative_config=value_of(o.speculative_config),
            revision=model.revision if model is not None else None,
        )
        argv = vllm_argv(choice, s, o)
    warnings = list(targets.notes) + list(fit.warnings)
    if fit.forecast is None and fit.mode != "gpu":
        warnings.append("decode speed could not be forecast (a memory bandwidth is unknown)")
    if fit.mode == "offload" and isinstance(s, LlamaServerSettings):
        cpu = fit.estimate.device("CPU")
        warnings.append(
            f"offload: {gib(cpu.weights_bytes if cpu else 0)} of weights run from host RAM "
            f"(--n-gpu-layers {s.n_gpu_layers}, --n-cpu-moe {s.n_cpu_moe}); decode is bound by "
            "host memory bandwidth"
        )
    gpu_count = len(profile.hardware.gpus.devices)
    if fit.gpus and gpu_count > len({g.index for g in fit.gpus}) and fit.engine == "vllm":
        warnings.append(
            f"{gpu_count - len(fit.gpus)} GPU(s) not used by this server: run one container per GPU "
            "(see compose/mixed-gpus.yaml) to use them"
        )
    return Plan(
        schema_version=PLAN_SCHEMA_VERSION,
        verdict="ship",
        engine=fit.engine,
        model=choice,
        draft=_draft_choice(fit),
        context=fit.context,
        parallel=fit.parallel,
        argv=argv,
        env=vllm_env(s) if isinstance(s, VllmSettings) else {},
        env_unset=tuple(o.consumed_env) if fit.engine == "llama.cpp" else (),
        predicted=replace(prediction(fit, fit.gpus), decode_floor_tok_s=_floor(o)),
        tier=tier.id,
        tier_label=tier.label,
        targets=tuple(g.label for g in fit.gpus) or ("CPU (host RAM)",),
        sources=_sources(tier, tier_src, o, fit, model),
        warnings=tuple(dict.fromkeys(warnings)),
    )
