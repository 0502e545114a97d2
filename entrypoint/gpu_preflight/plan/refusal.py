"""A plan that refuses: why, with numbers, and the nearest configurations that would ship."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from gpu_preflight.inputs.flags import Owner, canonical, rows_for
from gpu_preflight.inputs.model_request import ModelRequest
from gpu_preflight.inputs.overrides import Overrides, normalise_flag
from gpu_preflight.memory.llamacpp import CACHE_TYPES
from gpu_preflight.memory.vllm import default_batch_limits
from gpu_preflight.models.types import Artifact, ModelSpec
from gpu_preflight.plan.common import CONTEXT_STEP, Fit, Miss, Wants, gib
from gpu_preflight.plan.llamacpp import fit_llamacpp, typed_defaults_llama
from gpu_preflight.plan.request import Catalogue, artifacts, tier_candidates
from gpu_preflight.plan.settings import LlamaServerSettings
from gpu_preflight.plan.ship import PLAN_SCHEMA_VERSION, model_choice
from gpu_preflight.plan.targets import GpuTarget, Targets
from gpu_preflight.plan.tiers import Tier, TierTable
from gpu_preflight.plan.types import Alternative, Plan
from gpu_preflight.plan.vllm import fit_vllm, tp_sizes, typed_defaults
from gpu_preflight.profile_types import Profile

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
    typed = sit.overrides.as_typed and model is not None and bool(sit.overrides.user_args)
    alts = typed_alternatives(sit) if typed else _alternatives(sit, misses)
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


# ---------------------------------------------------------------------------------------------
# `estimate`: the typed command does not fit. The nearest single changes that make it fit, each
# the typed argv with that one flag set (vLLM; the other values stay as typed).

FP8_KV_MIN_CC = (8, 9)  # plan/search.py: vLLM's fp8 KV cache needs SM 8.9+


def set_flag(argv: Sequence[str], knob: str, value: str, engine: Owner = "vllm") -> tuple[str, ...]:
    """The argv with every spelling of one knob of the engine removed and its canonical
    spelling set."""
    spellings = {sp for f in rows_for(knob, engine) for sp in f.spellings}
    out: list[str] = []
    skip = False
    for tok in argv:
        if skip:
            skip = False
            continue
        name, inline = normalise_flag(tok)
        if name in spellings:
            skip = inline is None
            continue
        out.append(tok)
    return (*out, canonical(knob, engine), value)


def _typed_wants(sit: Situation, spec: ModelSpec) -> Wants:
    """The typed command with every vLLM default written out (so a fit may vary one value)."""
    w = typed_defaults(spec, sit.wants)
    seqs = w.parallel
    if not w.parallel_pinned and sit.gpus:
        g = sit.gpus[0]
        seqs = default_batch_limits(g.total_bytes, g.name)[1]
    return replace(w, as_typed=False, parallel_pinned=True, parallel=seqs)


def typed_alternatives(sit: Situation) -> list[Alternative]:
    model, gpus, o = sit.model, sit.gpus, sit.overrides
    assert model is not None
    spec = model.spec
    if model.artifact is not None and model.artifact.engine == "llama.cpp":
        return _llama_typed_alternatives(sit, model.artifact)
    arts = [model.artifact] if model.artifact is not None else artifacts(spec, "vllm", model.quant)
    if not arts or arts[0].engine != "vllm" or not gpus:
        return []
    art = arts[0]
    base = _typed_wants(sit, spec)
    argv = o.user_args
    out: list[Alternative] = []

    def fit(ww: Wants) -> Fit | None:
        r = fit_vllm(spec, art, gpus, ww, draft=model.draft)
        return r if isinstance(r, Fit) else None

    def add(kind: str, knob: str, value: str, f: Fit, what: str) -> None:
        alt = _alt_from_fit(kind, f, f"{what}: {shlex.join(set_flag(argv, knob, value))}")
        out.append(replace(alt, env={}, argv=set_flag(argv, knob, value)))

    # A shorter --max-model-len: the largest that fits.
    f = fit(replace(base, fixed_context=False, min_context=CONTEXT_STEP))
    if f is not None and f.context < base.target_context:
        add("shorter-context", "context", str(f.context), f, f"--max-model-len {f.context}")
    # A larger --gpu-memory-utilization: the smallest that fits and that the free memory allows.
    gmu = base.gpu_memory_utilization or 0.9
    step = round(gmu + 0.01, 2)
    while step <= 0.99:
        f = fit(replace(base, gpu_memory_utilization=step))
        if f is not None:
            add(
                "other-setting",
                "gpu_memory_utilization",
                f"{step:g}",
                f,
                f"--gpu-memory-utilization {step:g}",
            )
            break
        step = round(step + 0.01, 2)
    # A smaller --max-num-seqs: a smaller profiling run (sampler rows), the largest that fits.
    seqs = base.parallel // 2
    while seqs >= 1:
        f = fit(replace(base, parallel=seqs))
        if f is not None:
            add("other-setting", "parallel", str(seqs), f, f"--max-num-seqs {seqs}")
            break
        seqs //= 2
    # An fp8 KV cache, where the cards take it and the user did not set a KV dtype.
    ccs = [g.compute_capability for g in gpus]
    if o.kv_cache_type is None and all(c is not None and c >= FP8_KV_MIN_CC for c in ccs):
        f = fit(replace(base, cache_type_k="fp8", cache_type_v="fp8"))
        if f is not None:
            add("other-setting", "kv_cache_type", "fp8", f, "--kv-cache-dtype fp8")
    # More tensor parallel ranks, where there are cards for them.
    tp = base.tensor_parallel or 1
    for n in sorted(t for t in tp_sizes(spec, len(gpus)) if t > tp):
        f = fit(replace(base, tensor_parallel=n))
        if f is not None:
            add("other-setting", "tensor_parallel", str(n), f, f"--tensor-parallel-size {n}")
            break
    return out[: MAX_ALTERNATIVES + 1]


def _llama_typed_alternatives(sit: Situation, art: Artifact) -> list[Alternative]:
    """A llama-server command as typed does not fit: the nearest single changes that make it
    fit, each the typed argv with that one setting written (-ctk/-ctv together), and each
    checked by planning that argv as typed (the same fit ``estimate`` makes of it)."""
    model, o = sit.model, sit.overrides
    assert model is not None
    spec, argv = model.spec, o.user_args
    base = typed_defaults_llama(spec, sit.wants)
    out: list[Alternative] = []

    def typed_fit(ww: Wants) -> Fit | None:
        # As estimate plans it: offload only where llama-server's own --fit would do it
        # (typed_defaults_llama pins every layer on the GPUs otherwise).
        r = fit_llamacpp(spec, art, sit.gpus, sit.targets.host, ww, True, draft=model.draft)
        return r if isinstance(r, Fit) else None

    def add(what: str, changes: Sequence[tuple[str, str]], ww: Wants) -> None:
        f = typed_fit(ww)
        if f is None:
            return
        new = tuple(argv)
        for knob, value in changes:
            new = set_flag(new, knob, value, "llama.cpp")
        alt = _alt_from_fit("other-setting", f, f"{what}: {shlex.join(new)}")
        out.append(replace(alt, env={}, argv=new))

    # A shorter -c: the most cells that fit with every other value as typed: what fits wholly
    # on the GPUs, and the halvings of the command's -c (down to 1024), largest first.
    start = base.ctx_total or spec.arch.max_position_embeddings * (
        1 if base.kv_unified else base.parallel
    )
    totals = {start >> k for k in range(1, 8) if start >> k >= 1024}
    probe = replace(
        base,
        as_typed=False,
        ctx_total=None,
        fixed_context=False,
        min_context=CONTEXT_STEP,
        n_gpu_layers=base.n_gpu_layers if base.n_gpu_layers is not None else -1,
    )
    r = fit_llamacpp(spec, art, sit.gpus, sit.targets.host, probe, False, draft=model.draft)
    if isinstance(r, Fit) and isinstance(r.settings, LlamaServerSettings):
        totals.add(r.settings.n_ctx_total)
    for total in sorted((t for t in totals if t < start), reverse=True):
        before = len(out)
        add(f"-c {total}", [("ctx_total", str(total))], replace(sit.wants, ctx_total=total))
        if len(out) > before:
            break
    # --fit on, where the command turned llama-server's own fit off (it lowers -c, then offloads).
    if base.fit == "off" and o.ctx_total is None and o.n_gpu_layers is None:
        add("--fit on", [("fit", "on")], replace(sit.wants, fit="on"))
    # A quantized KV cache (q8_0), where the user set none and flash attention is not off.
    block = CACHE_TYPES.get("q8_0", (1, 0))[0]
    kv_pins = ("cache_type_k", "cache_type_v", "kv_cache_type")
    if (
        not any(o.is_set(k) for k in kv_pins)
        and base.flash_attn != "off"
        and not spec.arch.head_dim % block
        and not spec.arch.v_head_dim % block
    ):
        q8 = replace(sit.wants, cache_type_k="q8_0", cache_type_v="q8_0")
        add("-ctk q8_0 -ctv q8_0", [("cache_type_k", "q8_0"), ("cache_type_v", "q8_0")], q8)
    # Fewer slots (a split KV holds -c for each, with -c from the model), the most that fit.
    n = base.parallel // 2
    while n >= 1:
        before = len(out)
        add(
            f"-np {n}", [("parallel", str(n))], replace(sit.wants, parallel=n, parallel_pinned=True)
        )
        if len(out) > before:
            break
        n //= 2
    # A smaller prompt cache in host RAM (--cache-ram, 8192 MiB by default), the largest that fits.
    for mib in (4096, 1024, 0):
        if mib >= (base.cache_ram_mib or 0):
            continue
        before = len(out)
        add(f"--cache-ram {mib}", [("cache_ram", str(mib))], replace(sit.wants, cache_ram_mib=mib))
        if len(out) > before:
            break
    # Fewer layers on the GPUs (-ngl), where llama-server's own fit does not choose them (--fit
    # off, or -ngl typed).
    if (base.fit == "off" or o.n_gpu_layers is not None) and sit.gpus:
        probe = replace(base, as_typed=False, n_gpu_layers=None)
        r = fit_llamacpp(spec, art, sit.gpus, sit.targets.host, probe, True, draft=model.draft)
        if isinstance(r, Fit) and isinstance(r.settings, LlamaServerSettings):
            s = r.settings
            if s.n_cpu_moe == 0 and s.n_gpu_layers >= 0:
                ngl = s.n_gpu_layers
                add(
                    f"-ngl {ngl}",
                    [("n_gpu_layers", str(ngl))],
                    replace(sit.wants, n_gpu_layers=ngl),
                )
    return out[: MAX_ALTERNATIVES + 1]
