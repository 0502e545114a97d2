"""The wiring of every command, in pipeline order: inputs, then probe, then plan, then launch.

``prepare`` parses and validates every input (overrides and engine arguments, the catalog, the tier
table and tier id, the model and the user's own draft, projector and adapter files) *before*
anything is probed, so a typo costs nothing. ``plan_on`` is the one planning path that ``plan``,
``run``, ``estimate`` and ``matrix`` share. ``run`` probes, plans, writes the record and execs.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gpu_preflight import engine_check, launch, vllm_check
from gpu_preflight.errors import SetupError
from gpu_preflight.models.catalog import Catalog, load_catalog
from gpu_preflight.models.errors import ModelError, ModelFileError
from gpu_preflight.models.gguf_file import mmproj_bytes, mmproj_compute_bytes
from gpu_preflight.models.hub import parse_hub_ref, resolve_hub_model
from gpu_preflight.models.resolve import known_model, resolve_model
from gpu_preflight.models.types import Artifact, ModelSpec
from gpu_preflight.plan.calibrate import calibrate, receipt_key, widening
from gpu_preflight.plan.common import DRAFT_TOKENS, Draft
from gpu_preflight.plan.document import plan_to_dict
from gpu_preflight.plan.flags import FlagValueError
from gpu_preflight.plan.overrides import Overrides, Sourced, parse_overrides
from gpu_preflight.plan.reconcile import reconcile
from gpu_preflight.plan.request import Catalogue, ModelRequest
from gpu_preflight.plan.search import plan
from gpu_preflight.plan.tiers import TierTable, load_tiers
from gpu_preflight.plan.types import Plan
from gpu_preflight.probe.collect import collect_hardware
from gpu_preflight.probe.types import Profile
from gpu_preflight.profile import make_profile, profile_to_dict
from gpu_preflight.receipt.document import load_history
from gpu_preflight.receipt.types import Receipt

# llama-server's default file for `-hf org/repo` without a tag (common/download.cpp: "latest",
# which the Hub resolves to Q4_K_M when the repo has it).
DEFAULT_HF_QUANT = "Q4_K_M"
_NO_MEMORY_SPEC_METHODS = ("ngram", "ngram_gpu", "suffix")  # vLLM methods without a model
_NO_MEMORY_SPEC_TYPES = ("ngram-cache", "ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod")


@dataclass(frozen=True)
class Inputs:
    """Every user input, parsed and checked: what planning needs besides the profile."""

    env: Mapping[str, str]
    overrides: Overrides
    catalog: Catalog
    tiers: TierTable
    model: ModelRequest | None

    @property
    def catalogue(self) -> Catalogue:
        return Catalogue(models=tuple(self.catalog.models))


def load_user_catalog(env: Mapping[str, str]) -> Catalog:
    path = env.get("PREFLIGHT_MODELS_FILE", "").strip() or None
    return load_catalog(Path(path) if path else None)


def prepare(
    env: Mapping[str, str],
    engine_argv: Sequence[str] = (),
    options: Mapping[str, str | None] | None = None,
) -> Inputs:
    """Parse and validate every input; raise InvalidInput (exit 2) naming the first bad one."""
    overrides = parse_overrides(env, engine_argv, options)
    catalog = load_user_catalog(env)
    tiers = load_tiers(env)
    if overrides.tier is not None and tiers.get(str(overrides.tier.value).lower()) is None:
        raise FlagValueError(
            overrides.tier.where,
            str(overrides.tier.value),
            ", ".join(t.id for t in tiers.tiers),
        )
    model = resolve_request(overrides, catalog, env)
    _refuse_unmodelled(overrides)
    return Inputs(env=env, overrides=overrides, catalog=catalog, tiers=tiers, model=model)


def plan_on(
    inputs: Inputs,
    profile: Profile,
    engines_available: Sequence[str],
    all_devices: bool = False,
    history: Sequence[Receipt] = (),
) -> Plan:
    """The one planning path (pure): plan, run, estimate and matrix all come through here.

    ``all_devices``: exactly these devices together (estimate's command), never one card of them.
    ``history``: the receipts kept in the profile volume (``run``): a shortfall they measured for
    the chosen model on this GPU widens the margin and the plan is made again with it; the decode
    band of a same-key plan is calibrated from them (plan/calibrate.py).
    """

    def once(widen: tuple[int, int]) -> Plan:
        return plan(
            profile,
            inputs.catalogue,
            inputs.tiers,
            inputs.overrides,
            inputs.model,
            tuple(engines_available),
            all_devices,
            widen,
        )

    result = once((0, 0))
    if not history or result.verdict != "ship":
        return result
    widened = widening(history, receipt_key(result).memory_id)
    if widened.any:
        again = once((widened.gpu_bytes, widened.host_bytes))
        if again.verdict != "ship" or receipt_key(again).memory_id != receipt_key(result).memory_id:
            # With the wider margin the model no longer fits as chosen: that is the plan now
            # (smaller, or refused with the reason), never the one the receipt disproved.
            return calibrate(again, history, widened) if again.verdict == "ship" else again
        result = again
    return calibrate(result, history, widened)


@dataclass(frozen=True)
class Started:
    """What `run` has before it records and execs: the profile, the final plan, and where to write."""

    profile: Profile
    plan: Plan
    profile_dir: launch.ProfileDir
    dry_run: bool
    overrides: Overrides | None = None


def _argv_value(argv: Sequence[str], *names: str) -> str | None:
    for i, tok in enumerate(argv):
        for n in names:
            if tok == n and i + 1 < len(argv):
                return argv[i + 1]
            if tok.startswith(n + "="):
                return tok.split("=", 1)[1]
    return None


def engine_url(plan: Plan) -> str:
    """Where the planned engine answers, from this machine (its --host / --port, or the defaults)."""
    argv = plan.argv
    host = _argv_value(argv, "--host") or "127.0.0.1"
    port = _argv_value(argv, "--port") or ("8080" if plan.engine == "llama.cpp" else "8000")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # the server listens everywhere; ask it on loopback
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def receipt_job(started: Started) -> launch.ReceiptJob | None:
    """The receipt watcher's job for a shipped plan (None with PREFLIGHT_RECEIPT=off)."""
    o = started.overrides
    if o is None or not receipts_on(o) or started.plan.verdict != "ship":
        return None
    return launch.ReceiptJob(
        base_url=engine_url(started.plan),
        plan=started.plan,
        profile=started.profile,
        profile_dir=started.profile_dir.path,
        timeout_s=float(o.value("receipt_timeout", 1800.0)),
        max_tokens=int(o.value("receipt_tokens", 128)),
    )


def start(env: Mapping[str, str], engine_argv: Sequence[str], dry_run: bool) -> Started:
    """run's pipeline up to the record: inputs, probe, profile, plan, the engines' own checks."""
    from gpu_preflight.cli.probe_opts import flag, probe_options
    from gpu_preflight.cluster import lws

    dry = dry_run or flag(env, "PREFLIGHT_DRY_RUN")
    # Every input is checked before the probe: a typo must not cost a fio pass.
    inputs = prepare(env, engine_argv)
    rank = lws.rank_env(env)  # a LeaderWorkerSet pod's LWS_* (cluster/lws.py), checked first
    pdir = launch.choose_profile_dir(env)
    opts = probe_options(env, None, None, pdir.path)
    profile = make_profile(collect_hardware(env, opts))
    history = load_history(pdir.path) if receipts_on(inputs.overrides) else None
    result = plan_on(
        inputs,
        lws.group_profile(rank, profile),  # a group of nodes plans as one machine
        launch.available_engines(env),
        history=history.receipts if history else (),
    )
    if history is not None and history.skipped:
        result = replace(
            result,
            warnings=(
                *result.warnings,
                *(f"receipt left out of calibration: {s}" for s in history.skipped[:5]),
            ),
        )
    result = check_with_engine(inputs, result, env)
    result = lws.pinned_rank(env, rank, profile, result)  # the pool's pin; this rank's argv
    # vLLM's own dummy-weight start before the download (vllm_check.py); one node's GPUs only
    here = profile.simulated is None and bool(profile.hardware.gpus.devices) and rank.size <= 1
    mode = str(inputs.overrides.value("vllm_dry_run", "auto"))
    result = vllm_check.check_vllm(result, engine_env(env, result), mode, here, dry)
    return Started(profile, result, pdir, dry, inputs.overrides)


def receipts_on(o: Overrides) -> bool:
    """PREFLIGHT_RECEIPT: on by default; off stops both the receipt and calibration from them."""
    return str(o.value("receipt", "on")) != "off"


def check_with_engine(inputs: Inputs, result: Plan, env: Mapping[str, str]) -> Plan:
    """llama.cpp's own dry run of the exact argv on this machine's devices, folded into the plan.

    It needs the model's file on local disk (a path, or the header's sparse copy): with -hf and
    no local file the closed form stands, and the plan says why.
    """
    mode = str(inputs.overrides.value("engine_check", "auto"))
    if mode == "off" or result.verdict != "ship" or result.engine != "llama.cpp":
        return result
    binary = shutil.which(engine_check.FIT_PARAMS, path=env.get("PATH"))
    if binary is None:
        if mode == "on":
            raise SetupError(
                f"PREFLIGHT_ENGINE_CHECK=on, but {engine_check.FIT_PARAMS} is not on PATH in "
                "this image. Accepted: auto or off, or an image that ships it."
            )
        return reconcile(result, f"{engine_check.FIT_PARAMS} is not on PATH in this image")
    assert result.model is not None
    copy = inputs.model.local_copy if inputs.model is not None else None
    if result.model.path is None and copy is None:
        return reconcile(
            result,
            "the model is not on local disk before llama-server downloads it (-hf), and no "
            "header copy was read",
        )
    check = engine_check.llama_dry_run(
        result.argv, engine_env(env, result), model_path=None if result.model.path else copy
    )
    return reconcile(result, check)


def engine_env(env: Mapping[str, str], result: Plan) -> dict[str, str]:
    """The engine's environment: ours, less the variables the argv now carries, plus the plan's."""
    kept = {k: v for k, v in env.items() if k not in result.env_unset}
    return launch.engine_environment(kept, result.env)


def record(started: Started) -> launch.WriteResult:
    """profile.json and plan.json, written as one set (or the previous set kept)."""
    docs = {
        "profile.json": profile_to_dict(started.profile),
        "plan.json": plan_to_dict(started.plan),
    }
    return launch.write_set(started.profile_dir.path, docs)


# ---------------------------------------------------------------------------------------------
# The model, as the user named it


@dataclass(frozen=True)
class _Named:
    spec: ModelSpec
    artifact: Artifact | None  # the exact artifact named; None: the model, any artifact
    quant: str | None
    source: Sourced
    local_copy: str | None = None  # the Hub header's sparse copy (for llama.cpp's dry run)
    revision: str | None = None  # the commit the facts were read at (a model named on the Hub)


def _split_quant(text: str) -> tuple[str, str | None]:
    """ "id@Q8_0" or "org/repo:Q4_K_M" -> (base, quant); a path keeps its ':' and '@'."""
    if text.startswith(("/", "./", "../", "~")) or text.endswith(".gguf"):
        return text, None
    base, at, q = text.rpartition("@")
    if at and base and "/" not in base and "/" not in q and not _exists(text):
        return base, q  # catalog-id@QUANT (an org/repo@X is a Hub revision)
    base, colon, q = text.rpartition(":")
    if colon and base.count("/") == 1 and q and "/" not in q:
        return base, q
    return text, None


def _by_repo(catalog: Catalog, repo: str) -> list[tuple[ModelSpec, Artifact]]:
    key = repo.strip().lower()
    return [(m, a) for m in catalog.models for a in m.artifacts if a.repo.lower() == key]


def _name_one(
    knob: str, s: Sourced, catalog: Catalog, hf_file: str | None, ctx: _HubContext
) -> _Named:
    text = str(s.value).strip()
    where = s.where
    base, quant = _split_quant(text)
    repo_hits = _by_repo(catalog, base)
    if repo_hits:
        spec = repo_hits[0][0]
        arts = [a for _, a in repo_hits]
        if hf_file is not None:
            arts = [a for a in arts if (a.file or "").lower() == hf_file.lower()]
            if not arts:
                have = ", ".join(a.file or "" for _, a in repo_hits)
                raise ModelError(
                    f"LLAMA_ARG_HF_FILE / --hf-file {hf_file!r} is not a file of {base} the "
                    f"planner knows. Accepted: {have}."
                )
        elif quant is not None:
            arts = [a for a in arts if a.quant.lower() == quant.lower()]
            if not arts:
                have = ", ".join(a.quant for _, a in repo_hits)
                raise ModelError(
                    f"{where}={text!r}: {base} has no quant {quant}. Accepted: {have}."
                )
        elif len(arts) > 1:
            arts = [a for a in arts if a.quant == DEFAULT_HF_QUANT] or arts[:1]
        return _Named(spec, arts[0], quant, s)
    if parse_hub_ref(text) is not None and not _exists(text):
        # Any model on the Hub (or in the local HF cache): its exact facts, no weights fetched.
        named_rev = parse_hub_ref(text).revision  # type: ignore[union-attr]
        if named_rev and ctx.revision and named_rev != ctx.revision:
            raise FlagValueError(
                "engine argument --revision",
                ctx.revision,
                f"the revision named in {where}={text!r}, or only one of the two set",
                "it disagrees with the model's name",
            )
        res = resolve_hub_model(
            text,
            ctx.env,
            ctx.cache_dir,
            revision=ctx.revision,
            file=hf_file,
            engine="llama.cpp" if knob == "hf_repo" else ctx.engine,  # type: ignore[arg-type]
            known=[m.id for m in catalog.models] + [m.hf_id for m in catalog.models],
            var_name=where,
        )
        spec = known_model(res.spec, catalog)
        revision = named_rev or ctx.revision
        if revision and res.engine == "llama.cpp":
            raise FlagValueError(
                where,
                text,
                "a GGUF repo without @REVISION: llama-server's -hf downloads the default branch "
                "and cannot pin one (download the file and pass its path to pin it)",
                "a revision llama-server cannot serve",
            )
        return _Named(
            spec,
            spec.artifacts[0],
            None,
            s,
            local_copy=str(res.local_copy) if res.engine == "llama.cpp" else None,
            revision=res.revision if revision else None,
        )
    spec = resolve_model(base, catalog, where)
    art = None
    if spec.artifacts and spec.artifacts[0].path is not None:
        art = spec.artifacts[0]  # a file or directory on disk: exactly that
    return _Named(spec, art, quant, s)


@dataclass(frozen=True)
class _HubContext:
    env: Mapping[str, str]
    cache_dir: Path | None
    engine: str | None
    revision: str | None  # vLLM's --revision, when given


def _exists(text: str) -> bool:
    try:
        return Path(text).expanduser().exists()
    except (OSError, RuntimeError, ValueError):
        return False


def hub_cache_dir(env: Mapping[str, str]) -> Path | None:
    """Header copies live in the profile volume, so a restart does not ask the Hub again."""
    pdir = Path(env.get("PREFLIGHT_PROFILE_DIR", "").strip() or launch.DEFAULT_PROFILE_DIR)
    try:
        if pdir.is_dir() and os.access(pdir, os.W_OK):
            return pdir / "hub-headers"
    except OSError:
        pass
    return None  # hub.default_cache_dir: PREFLIGHT_HUB_HEADERS or a temporary directory


def _same_model(a: _Named, b: _Named) -> bool:
    if a.spec.id != b.spec.id:
        return False
    if a.artifact is not None and b.artifact is not None:
        return (a.artifact.repo, a.artifact.file, a.artifact.path) == (
            b.artifact.repo,
            b.artifact.file,
            b.artifact.path,
        )
    return a.quant is None or b.quant is None or a.quant.lower() == b.quant.lower()


def resolve_request(
    o: Overrides, catalog: Catalog, env: Mapping[str, str] | None = None
) -> ModelRequest | None:
    """Every place that named a model must name the same one; the most exact name wins."""
    if not o.model_refs:
        for knob in ("draft_model", "draft_hf", "speculative_config"):
            d = o.get(knob)
            if d is not None:
                raise FlagValueError(
                    d.where,
                    str(d.value)[:200],
                    "a draft together with the model it drafts for (PREFLIGHT_MODEL or the "
                    "engine's model flag), so both can be planned",
                    "no model is named",
                )
        # A projector or adapter belongs to one model: with the model left to auto-selection
        # its bytes would be planned against whichever model is chosen, so it is refused.
        for knob in ("mmproj", "lora", "lora_scaled"):
            d = o.get(knob)
            if d is not None:
                raise FlagValueError(
                    d.where,
                    str(d.value)[:200],
                    "a projector or adapter together with the model it belongs to "
                    "(PREFLIGHT_MODEL or the engine's model flag)",
                    "no model is named",
                )
        return None
    hf_file = o.value("hf_file")
    env = env or {}
    engine = o.engine.value if o.engine is not None else None
    rev = o.get("revision")
    ctx = _HubContext(
        env, hub_cache_dir(env), str(engine) if engine else None, rev.value if rev else None
    )
    named = [_name_one(knob, s, catalog, hf_file, ctx) for knob, s in o.model_refs]
    first = named[0]
    for other in named[1:]:
        if not _same_model(first, other):
            a, b = first.source, other.source
            raise FlagValueError(
                b.where,
                str(b.value),
                f"the same model as {a.where}={a.value!r}, or only one of the two set",
                f"it names a different model from {a.where}",
            )
    best = next((n for n in named if n.artifact is not None), first)
    quant = best.quant
    q = o.get("quantization")
    if q is not None:
        # A vLLM checkpoint named with a --quantization it does not carry is vLLM's to refuse:
        # the plan refuses it naming vLLM's rule (plan/vllm.py quantization_rule), exit 3.
        vllm_art = best.artifact is not None and best.artifact.engine == "vllm"
        if (
            best.artifact is not None
            and not vllm_art
            and _quant_name(q.value) != best.artifact.quant.lower()
        ):
            raise FlagValueError(
                q.where,
                str(q.value),
                f"{best.artifact.quant}, the quantization of {best.artifact.repo} "
                f"({best.source.where}), or leave it unset",
                "it disagrees with the model named",
            )
        quant = quant or str(q.value)
    extra = _extra_files(o)
    return ModelRequest(
        spec=best.spec,
        quant=quant,
        source=best.source.source,
        artifact=best.artifact,
        draft=resolve_draft(o, catalog),
        extra_gpu_bytes=extra,
        local_copy=best.local_copy,
        revision=best.revision,
    )


def _quant_name(q: Any) -> str:
    return {"awq_marlin": "awq", "gptq_marlin": "gptq", "none": "bf16"}.get(str(q), str(q))


def resolve_draft(o: Overrides, catalog: Catalog) -> Draft | None:
    """The user's own draft model, resolved like the target, or None (none, or costs nothing)."""
    cfg = o.get("speculative_config")
    if cfg is not None:
        doc = cfg.value
        method = str(doc.get("method", "draft_model" if "model" in doc else ""))
        if method in _NO_MEMORY_SPEC_METHODS:
            return None
        model = doc.get("model")
        if method != "draft_model" or not isinstance(model, str):
            raise FlagValueError(
                cfg.where,
                str(cfg.value)[:200],
                "method draft_model with a catalog model, or ngram / suffix (no draft memory); "
                f"{method or 'this method'} is not modelled by the planner",
            )
        tokens = doc.get("num_speculative_tokens", DRAFT_TOKENS)
        return _draft_from_repo(
            model, "vllm", catalog, cfg, int(tokens) if isinstance(tokens, int) else DRAFT_TOKENS
        )
    hf, md = o.get("draft_hf"), o.get("draft_model")
    n_max = o.value("draft_n_max", DRAFT_TOKENS)
    if hf is not None:
        d = _draft_from_repo(str(hf.value), "llama.cpp", catalog, hf, int(n_max))
        if md is not None and d.artifact.file != Path(str(md.value)).name:
            raise FlagValueError(
                md.where, str(md.value), f"{d.artifact.file}, the file of {hf.value}"
            )
        return d
    if md is not None:
        spec = resolve_model(str(md.value), catalog, md.where)
        return Draft(spec, spec.artifacts[0], tokens=int(n_max), user=md.source)
    st = o.get("spec_type")
    if st is not None and all(t in _NO_MEMORY_SPEC_TYPES for t in str(st.value).split(",")):
        return None
    return None


def _draft_from_repo(
    repo: str, engine: str, catalog: Catalog, s: Sourced, tokens: int = DRAFT_TOKENS
) -> Draft:
    base, quant = _split_quant(repo)
    hits = [(m, a) for m, a in _by_repo(catalog, base) if a.engine == engine]
    if quant:
        hits = [(m, a) for m, a in hits if a.quant.lower() == quant.lower()]
    if not hits:
        raise FlagValueError(
            s.where,
            repo,
            f"a draft model repo from the catalog ({engine}), so its memory can be planned",
            "not a draft the planner knows",
        )
    m, a = hits[0]
    return Draft(m, a, tokens=tokens, user=s.source)


def _file_bytes(s: Sourced, text: str) -> int:
    path = Path(text).expanduser()
    try:
        st = os.stat(path)
    except OSError as exc:
        raise FlagValueError(s.where, text, "a readable local file", exc.strerror) from None
    if not stat.S_ISREG(st.st_mode):
        raise FlagValueError(s.where, text, "a regular file", "not a regular file")
    return st.st_size


def _extra_files(o: Overrides) -> int:
    """Bytes of the user's --mmproj / --lora files: weights the engine loads besides the model."""
    total = 0
    mm = o.get("mmproj")
    if mm is not None:
        # The projector's own tensors (a clip GGUF, refused otherwise) and the compute buffer
        # clip.cpp reserves for its warmup image, both on the projector's device.
        _file_bytes(mm, str(mm.value))
        try:
            path = Path(str(mm.value)).expanduser()
            total += mmproj_bytes(path) + mmproj_compute_bytes(path)
        except ModelFileError as exc:
            raise FlagValueError(mm.where, str(mm.value), "a projector GGUF", str(exc)) from None
    lora = o.get("lora")
    if lora is not None:
        for part in str(lora.value).split(","):
            total += _file_bytes(lora, part.strip())
    scaled = o.get("lora_scaled")
    if scaled is not None:
        for part in str(scaled.value).split(","):
            total += _file_bytes(scaled, part.rsplit(":", 1)[0].strip())
    return total


def _refuse_unmodelled(o: Overrides) -> None:
    """Values whose memory the planner cannot predict: refused now, before any probe."""
    for knob, accepted in (
        ("mmproj_url", "a local file in --mmproj instead (the projector's size must be known)"),
        ("override_tensor", "--n-cpu-moe or --n-gpu-layers (tensor overrides are not modelled)"),
    ):
        s = o.get(knob)
        if s is not None:
            raise FlagValueError(s.where, str(s.value), accepted, "its memory cannot be planned")
    s = o.get("mmproj_auto")
    if s is not None and s.value is True:
        raise FlagValueError(
            s.where,
            "on",
            "--no-mmproj, or a local --mmproj FILE (the repo's projector size is not known)",
            "its memory cannot be planned",
        )
    if o.get("draft_model") is None and o.get("draft_hf") is None:
        st = o.get("spec_type")
        if st is not None and not all(t in _NO_MEMORY_SPEC_TYPES for t in str(st.value).split(",")):
            raise FlagValueError(
                st.where,
                str(st.value),
                "an ngram type (" + ", ".join(_NO_MEMORY_SPEC_TYPES) + "), or a draft model with "
                "--spec-draft-hf / --spec-draft-model",
                "a draft type without a draft model",
            )
