"""A plan that refuses: why, with numbers, and the nearest configurations that would ship."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from gpu_preflight.models.types import Artifact, ModelSpec
from gpu_preflight.plan.common import Fit, Miss, Wants, gib
from gpu_preflight.plan.llamacpp import LlamaServerSettings, fit_llamacpp
from gpu_preflight.plan.overrides import Overrides
from gpu_preflight.plan.request import Catalogue, ModelRequest, artifacts, tier_candidates
from gpu_preflight.plan.ship import PLAN_SCHEMA_VERSION, model_choice
from gpu_preflight.plan.targets import GpuTarget, Targets
from gpu_preflight.plan.tiers import Tier, TierTable
from gpu_preflight.plan.types import Alternative, Plan
from gpu_preflight.plan.vllm import fit_vllm
from gpu_preflight.probe.types import Profile

MAX_ALTERNATIVES = 4
MAX_REASONS = 8


def _ngl(fit: Fit) -> int:
    return fit.settings.n_gpu_layers if isinstance(fit.settings, LlamaServerSettings) else 0


def _ncmoe(fit: Fit) -> int:
    return fit.settings.n_cpu_moe if isinstance(fit.settings, LlamaServerSettings) else 0


@dataclass(frozen=True)
class Situation:
    """What a refusal is about: the machine, the tier, and everything the user asked for."""

    profile: Profile
    targets: Targets
    gpus: tuple[GpuTarget, ...]  # the devices planned on
    tier: Tier
    overrides: Overrides
    wants: Wants
    catalog: Catalogue
    tiers: TierTable
    model: ModelRequest | None


def refusal(sit: Situation, reasons: list[str], misses: Sequence[Miss] = ()) -> Plan:
    targets, tier, model, gpus = sit.targets, sit.tier, sit.model, sit.gpus
    alts = _alternatives(sit, misses)
    head = []
    if gpus:
        head.append(
            "usable GPU memory: "
            + "; ".join(
                f"{gib(g.usable_bytes)} on {g.label} (free {gib(g.free_bytes)})" for g in gpus
            )
        )
    elif targets.host.usable_bytes is not None:
        head.append(f"no usable GPU; {gib(targets.host.usable_bytes)} of host RAM usable")
    return Plan(
        schema_version=PLAN_SCHEMA_VERSION,
        verdict="refuse",
        engine=None,
        model=model_choice(model.spec, model.artifact or model.spec.artifacts[0])
        if model and model.spec.artifacts
        else None,
        context=None,
        parallel=None,
        argv=(),
        env={},
        predicted=None,
        tier=tier.id,
        tier_label=tier.label,
        targets=tuple(g.label for g in gpus) or ("CPU (host RAM)",),
        sources={"model": model.source} if model else {},
        warnings=tuple(targets.notes),
        reasons=tuple(reasons[:MAX_REASONS]) + tuple(head),
        alternatives=tuple(alts),
    )


# The variables an alternative's env takes the place of: drop these from the environment, set the
# alternative's, and the next plan is the alternative.
ALTERNATIVE_REPLACES = (
    "PREFLIGHT_MODEL",
    "VLLM_MODEL",
    "PREFLIGHT_ENGINE",
    "PREFLIGHT_CONTEXT",
    "VLLM_MAX_MODEL_LEN",
    "PREFLIGHT_PARALLEL",
    "PREFLIGHT_KV_CACHE_TYPE",
    "PREFLIGHT_MIN_TOKS",
    "PREFLIGHT_SPECULATIVE",
    "VLLM_QUANTIZATION",
    "LLAMA_ARG_MODEL",
    "LLAMA_ARG_HF_REPO",
    "LLAMA_ARG_HF_FILE",
    "LLAMA_ARG_CTX_SIZE",
    "LLAMA_ARG_N_PARALLEL",
    "LLAMA_ARG_N_GPU_LAYERS",
    "LLAMA_ARG_N_CPU_MOE",
    "LLAMA_ARG_CACHE_TYPE_K",
    "LLAMA_ARG_CACHE_TYPE_V",
)


def _alt_env(fit: Fit) -> dict[str, str]:
    """The overrides that reproduce this fit exactly."""
    art = fit.artifact
    model = art.path or f"{fit.spec.id}@{art.quant}"
    env = {
        "PREFLIGHT_MODEL": model,
        "PREFLIGHT_ENGINE": fit.engine,
        "PREFLIGHT_CONTEXT": str(fit.context),
        "PREFLIGHT_PARALLEL": str(fit.parallel),
        "PREFLIGHT_SPECULATIVE": "off",  # the alternative was measured without a draft
    }
    s = fit.settings
    if isinstance(s, LlamaServerSettings):
        if s.cache_type_k != "f16" or s.cache_type_v != "f16":
            env["LLAMA_ARG_CACHE_TYPE_K"], env["LLAMA_ARG_CACHE_TYPE_V"] = (
                s.cache_type_k,
                s.cache_type_v,
            )
        if fit.mode == "offload":
            env["LLAMA_ARG_N_GPU_LAYERS"] = "all" if s.n_gpu_layers < 0 else str(s.n_gpu_layers)
            env["LLAMA_ARG_N_CPU_MOE"] = str(s.n_cpu_moe)
        if fit.forecast is not None and fit.mode != "gpu":
            # Its own speed, as the floor: an offload the user accepts at that speed.
            env["PREFLIGHT_MIN_TOKS"] = f"{max(0.01, int(fit.forecast.low_tok_s * 100) / 100):g}"
    elif s.kv_cache_dtype != "auto":
        env["PREFLIGHT_KV_CACHE_TYPE"] = s.kv_cache_dtype
    return env


def _alt_from_fit(kind: str, fit: Fit, description: str) -> Alternative:
    gpu_total = sum(d.total_bytes for d in fit.estimate.devices if d.device != "CPU")
    total = gpu_total or sum(d.total_bytes for d in fit.estimate.devices)
    budget = (
        sum(v for k, v in fit.budgets.items() if k != "CPU")
        if gpu_total
        else fit.budgets.get("CPU", 0)
    )
    return Alternative(
        kind=kind,  # type: ignore[arg-type]
        description=description,
        model=fit.spec.id,
        quant=fit.artifact.quant,
        engine=fit.engine,
        context=fit.context,
        total_bytes=total,
        budget_bytes=budget,
        decode_tok_s=round(fit.forecast.low_tok_s, 1) if fit.forecast else None,
        env=_alt_env(fit),
    )


def _alternatives(sit: Situation, misses: Sequence[Miss]) -> list[Alternative]:
    targets, w, catalog, tiers, model, gpus = (
        sit.targets,
        sit.wants,
        sit.catalog,
        sit.tiers,
        sit.model,
        sit.gpus,
    )
    has_gpu = bool(gpus)
    out: list[Alternative] = []
    engines = ["vllm", "llama.cpp"] if has_gpu else ["llama.cpp"]
    loose = replace(
        w,
        fixed_context=False,
        min_context=min(w.min_context, 2048),
        target_context=w.target_context,
    )

    def first_fit(
        spec: ModelSpec, arts: Iterable[Artifact], ww: Wants, offload: bool
    ) -> Fit | None:
        for art in arts:
            r = (
                fit_vllm(spec, art, gpus, ww)
                if art.engine == "vllm"
                else fit_llamacpp(spec, art, gpus, targets.host, ww, offload)
            )
            if isinstance(r, Fit):
                return r
        return None

    if model is not None:
        spec = model.spec
        # A shorter context of the same artifact (when the user pinned one that does not fit).
        if w.fixed_context:
            arts = [a for e in engines for a in artifacts(spec, e, model.quant)]
            f = first_fit(spec, arts, replace(loose, target_context=w.target_context), False)
            if f:
                out.append(
                    _alt_from_fit(
                        "shorter-context",
                        f,
                        f"{spec.id} {f.artifact.quant} at "
                        f"{f.context} tokens instead of {w.target_context}",
                    )
                )
        # A smaller quant of the same model: fewer bytes of weights than the smallest artifact the
        # request allowed (a named artifact or quant, or any), never the refused one again.
        asked = (
            [model.artifact]
            if model.artifact is not None
            else [a for e in engines for a in artifacts(spec, e, model.quant)]
            or list(spec.artifacts)
        )
        floor = min(a.weight_bytes for a in asked)
        smaller = sorted(
            (a for a in spec.artifacts if a.engine in engines and a.weight_bytes < floor),
            key=lambda a: a.weight_bytes,
        )
        f = first_fit(spec, smaller, loose, False)
        if f and not any(a.model == spec.id and a.quant == f.artifact.quant for a in out):
            out.append(
                _alt_from_fit(
                    "smaller-quant",
                    f,
                    f"{spec.id} as {f.artifact.quant} "
                    f"({gib(f.artifact.weight_bytes)} of weights) with {f.engine}",
                )
            )
    # llama.cpp offload that failed only the speed floor: say how slow it would be.
    near = next((m.near for m in misses if m.near is not None), None)
    if near is not None:
        fc = near.forecast
        out.append(
            _alt_from_fit(
                "offload",
                near,
                f"{near.spec.id} {near.artifact.quant} with "
                f"llama.cpp offload (--n-gpu-layers {_ngl(near)}, --n-cpu-moe "
                f"{_ncmoe(near)}) at {fc.low_tok_s:.1f}-{fc.high_tok_s:.1f} tok/s"
                if fc
                else f"{near.spec.id} with llama.cpp offload",
            )
        )
    elif has_gpu and model is not None:
        f = first_fit(
            model.spec,
            artifacts(model.spec, "llama.cpp", None),
            replace(loose, min_tok_s=0.0),
            True,
        )
        if f and f.mode == "offload":
            fc = f.forecast
            speed = f" at {fc.low_tok_s:.1f}-{fc.high_tok_s:.1f} tok/s" if fc else ""
            out.append(
                _alt_from_fit(
                    "offload",
                    f,
                    f"{f.spec.id} {f.artifact.quant} with llama.cpp offload to host RAM{speed}",
                )
            )
    # Other models: the biggest that fit wholly on the devices, from every tier's list.
    seen = {model.spec.id} if model else set()
    ordered: list[tuple[ModelSpec, str | None]] = []
    for t in sorted(tiers.tiers, key=lambda t: -t.min_vram_gib):
        for spec, quant in tier_candidates(t, catalog):
            if spec.id not in seen:
                seen.add(spec.id)
                ordered.append((spec, quant))
    if model is not None:
        # Closest to what was asked first: the same size class (parameters), then the bigger.
        size = model.spec.params_b
        ordered.sort(key=lambda sq: (abs(sq[0].params_b - size) / max(size, 0.1), -sq[0].params_b))
    for spec, quant in ordered:
        if len(out) >= MAX_ALTERNATIVES:
            break
        arts = [a for e in engines for a in artifacts(spec, e, quant)]
        f = first_fit(spec, arts, loose, not has_gpu)
        if f:
            out.append(
                _alt_from_fit(
                    "other-model",
                    f,
                    f"{spec.name} ({f.artifact.quant}, {f.engine}) at {f.context} tokens",
                )
            )
    return out[:MAX_ALTERNATIVES]
