"""The catalog's speculative-decoding draft, added to a fit only when it costs no context."""

from __future__ import annotations

from dataclasses import replace

from gpu_preflight.inputs.model_request import Draft
from gpu_preflight.inputs.overrides import Overrides
from gpu_preflight.plan.common import Fit, Wants
from gpu_preflight.plan.llamacpp import fit_llamacpp
from gpu_preflight.plan.request import Catalogue
from gpu_preflight.plan.settings import VllmSettings
from gpu_preflight.plan.targets import Targets
from gpu_preflight.plan.tiers import Tier
from gpu_preflight.plan.vllm import fit_vllm

# Knobs by which a user sets up speculative decoding themselves (inputs/flags.py).
USER_SPECULATIVE = ("draft_model", "draft_hf", "spec_type", "speculative_config")


# Draft artifacts in order of preference: small drafts lose acceptance rate to 4-bit rounding.
_DRAFT_QUANTS = {"llama.cpp": ("Q8_0", "Q4_K_M"), "vllm": ("bf16", "fp8", "awq")}


def with_draft(
    fit: Fit, tier: Tier, o: Overrides, catalog: Catalogue, targets: Targets, w: Wants
) -> tuple[Fit, str | None]:
    """Add the model's speculative-decoding draft when asked for and it costs no context.

    Returns the fit (with or without a draft) and, when a draft was asked for but not added, why.
    The draft is tried at the context and concurrency already chosen: a draft that would shorten
    the context is not worth it, so it is dropped rather than the context cut.
    """
    asked = o.speculative.value if o.speculative else ("on" if tier.speculative else "off")
    if asked == "off":
        return fit, None
    if any(o.is_set(k) for k in USER_SPECULATIVE):
        # The user's own speculative settings are planned as given (inputs/model_naming.py
        # resolve_draft); the catalog's draft is not added next to them.
        return fit, None
    who = f"{fit.spec.id} {fit.artifact.quant}"
    if fit.spec.draft is None:
        return fit, f"no draft model: the catalog pairs none with {fit.spec.id}"
    if fit.artifact.path is not None:
        return fit, (
            f"no draft model: {who} was given as a local file, and its catalog draft would "
            "have to be downloaded"
        )
    if fit.mode != "gpu":
        return fit, f"no draft model: {who} does not fit wholly on the GPU ({fit.mode})"
    dspec = catalog.get(fit.spec.draft)
    if dspec is None:
        return fit, f"no draft model: {fit.spec.draft} is not in the catalog"
    arts = [
        a
        for q in _DRAFT_QUANTS.get(fit.engine, ())
        for a in dspec.artifacts
        if a.engine == fit.engine and a.quant == q
    ]
    if not arts:
        return fit, f"no draft model: {dspec.id} has no {fit.engine} artifact"
    if fit.engine == "vllm" and dspec.arch.vocab_size != fit.spec.arch.vocab_size:
        return fit, (
            f"no draft model: vLLM's draft_model method needs equal vocabularies, "
            f"{fit.spec.id} has {fit.spec.arch.vocab_size} and {dspec.id} {dspec.arch.vocab_size}"
        )
    # The tier's draft must cost no context. A user who asked for one (PREFLIGHT_SPECULATIVE=on)
    # gets it down to the tier's minimum context, unless they pinned the context too.
    user_asked = o.speculative is not None and not w.fixed_context
    same = replace(
        w,
        target_context=fit.context,
        min_context=min(w.min_context, fit.context) if user_asked else fit.context,
        fixed_context=not user_asked,
        parallel=fit.parallel,
        tensor_parallel=fit.settings.tensor_parallel_size
        if isinstance(fit.settings, VllmSettings)
        else w.tensor_parallel,
        gpu_memory_utilization=fit.settings.gpu_memory_utilization
        if isinstance(fit.settings, VllmSettings)
        else None,
        n_gpu_layers=None,
        n_cpu_moe=None,
    )
    reasons = []
    for art in arts:
        d = Draft(dspec, art)
        res = (
            fit_vllm(fit.spec, fit.artifact, fit.gpus, same, draft=d)
            if fit.engine == "vllm"
            else fit_llamacpp(fit.spec, fit.artifact, fit.gpus, targets.host, same, False, draft=d)
        )
        if isinstance(res, Fit):
            warns = fit.warnings
            if res.context < fit.context:
                warns = (
                    *warns,
                    f"the draft model {dspec.id} costs context: {res.context} tokens per "
                    f"sequence instead of {fit.context} without it (PREFLIGHT_SPECULATIVE=on)",
                )
            # The draft's own fit re-chose the host caches: its notes on them replace the target's.
            kept = tuple(n for n in fit.notes if not n.startswith("host RAM for"))
            return replace(res, warnings=warns, notes=(*res.notes, *kept)), None
        reasons.append(res.reason)
    return fit, (
        f"draft {dspec.id} not added: it would not fit next to {who} at {fit.context} tokens "
        f"x {fit.parallel} ({reasons[0]})"
    )
