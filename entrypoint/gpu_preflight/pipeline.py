"""The wiring of every command, in pipeline order: inputs, then probe, then plan, then launch.

``prepare`` parses and validates every input (overrides and engine arguments, the catalog, the tier
table and tier id, the model and the user's own draft, projector and adapter files) *before*
anything is probed, so a typo costs nothing. ``plan_on`` is the one planning path that ``plan``,
``run``, ``estimate`` and ``matrix`` share. ``run`` probes, plans, writes the record and execs.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from gpu_preflight import engine_check, launch, vllm_check
from gpu_preflight.errors import SetupError
from gpu_preflight.inputs.flags import FlagValueError, env_setting
from gpu_preflight.inputs.model_naming import refuse_unmodelled, resolve_request
from gpu_preflight.inputs.model_request import ModelRequest
from gpu_preflight.inputs.overrides import Overrides, parse_overrides
from gpu_preflight.models.catalog import Catalog, load_catalog
from gpu_preflight.models.layout import unlisted_gguf_architecture
from gpu_preflight.plan.document import plan_to_dict
from gpu_preflight.plan.reconcile import (
    fold_unlisted,
    reconcile,
    reconcile_totals,
    refuse_without_dry_run,
)
from gpu_preflight.plan.request import Catalogue
from gpu_preflight.plan.search import plan
from gpu_preflight.plan.tiers import TierTable, load_tiers
from gpu_preflight.plan.types import Plan
from gpu_preflight.probe.collect import collect_hardware
from gpu_preflight.profile import make_profile, profile_to_dict
from gpu_preflight.profile_types import Profile
from gpu_preflight.receipt.calibrate import calibrate, receipt_key, widening
from gpu_preflight.receipt.document import load_history
from gpu_preflight.receipt.types import Receipt


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
    path = env_setting(env, "PREFLIGHT_MODELS_FILE")  # its row's parser, the only one
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
    if overrides.tier is not None and tiers.get(overrides.tier.value) is None:
        raise FlagValueError(
            overrides.tier.where,
            str(overrides.tier.value),
            ", ".join(t.id for t in tiers.tiers),
        )
    model = resolve_request(overrides, catalog, env)
    refuse_unmodelled(overrides)
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
    band of a same-key plan is calibrated from them (receipt/calibrate.py).
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
        timeout_s=o.resolved("receipt_timeout").value,
        max_tokens=o.resolved("receipt_tokens").value,
    )


def start(env: Mapping[str, str], engine_argv: Sequence[str], dry_run: bool) -> Started:
    """run's pipeline up to the record: inputs, probe, profile, plan, the engines' own checks."""
    from gpu_preflight.cluster import lws
    from gpu_preflight.inputs.probe_options import flag, probe_options

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
    mode: str = inputs.overrides.resolved("vllm_dry_run").value
    result = vllm_check.check_vllm(result, engine_env(env, result), mode, here, dry)
    return Started(profile, result, pdir, dry, inputs.overrides)


def receipts_on(o: Overrides) -> bool:
    """PREFLIGHT_RECEIPT: on by default; off stops both the receipt and calibration from them."""
    return bool(o.resolved("receipt").value != "off")


def check_with_engine(inputs: Inputs, result: Plan, env: Mapping[str, str]) -> Plan:
    """llama.cpp's own dry run of the exact argv on this machine's devices, folded into the plan.

    It needs the model's file on local disk (a path, or the header's sparse copy): with -hf and
    no local file the closed form stands, and the plan says why. For an architecture gguf does
    not list (models/layout.py unlisted_gguf_architecture) the closed form alone never stands:
    without the dry run the plan is a refusal that says why.
    """
    mode: str = inputs.overrides.resolved("engine_check").value
    if result.verdict != "ship" or result.engine != "llama.cpp":
        return result
    unlisted = _unlisted(inputs)
    binary = _binary_or_plan(result, unlisted, mode, env, reconcile)
    if isinstance(binary, Plan):
        return binary
    assert result.model is not None
    copy = inputs.model.local_copy if inputs.model is not None else None
    if result.model.path is None and copy is None:
        why = (
            "the model is not on local disk before llama-server downloads it (-hf), and no "
            "header copy was read"
        )
        return _no_dry_run(result, unlisted, why, reconcile)
    check = engine_check.llama_dry_run(
        result.argv,
        engine_env(env, result),
        model_path=None if result.model.path else copy,
        binary=binary,
    )
    if isinstance(check, str):
        return _no_dry_run(result, unlisted, check, reconcile)
    folded = reconcile(result, check)
    return fold_unlisted(folded, unlisted) if unlisted else folded


def _binary_or_plan(
    result: Plan,
    unlisted: str | None,
    mode: str,
    env: Mapping[str, str],
    fold: Callable[[Plan, str], Plan],
) -> str | Plan:
    """llama-fit-params to run, or the plan as it stands without it (PREFLIGHT_ENGINE_CHECK off,
    or the binary missing under auto); ``on`` without the binary is a SetupError naming it."""
    if mode == "off":
        # switched off: the closed form stands, without a note (as before)
        return _no_dry_run(result, unlisted, f"{_CHECK_VAR}=off", lambda p, _: p)
    binary = shutil.which(engine_check.FIT_PARAMS, path=env.get("PATH"))
    if binary is not None:
        return binary
    if mode == "on":
        raise SetupError(
            f"{_CHECK_VAR}=on, but {engine_check.FIT_PARAMS} is not on PATH. Accepted: auto or "
            "off, or a PATH that has it (the image ships it; here `make llama-cpp`)."
        )
    return _no_dry_run(result, unlisted, f"{engine_check.FIT_PARAMS} is not on PATH", fold)


def _unlisted(inputs: Inputs) -> str | None:
    """Why the user's GGUF is planned only with llama.cpp's dry run (an architecture gguf does
    not list), or None. The catalog's models are all of listed architectures."""
    if inputs.model is None:
        return None
    return unlisted_gguf_architecture(inputs.model.spec.arch.architecture)


def _no_dry_run(
    result: Plan, unlisted: str | None, why: str, fold: Callable[[Plan, str], Plan]
) -> Plan:
    """No dry run of llama.cpp here: the closed form stands with a note (``fold``), or, for an
    architecture gguf does not list, the plan is a refusal saying why."""
    if unlisted is not None:
        return refuse_without_dry_run(result, unlisted, why)
    return fold(result, why)


# A CPU dry run's answer per (model file, llama-fit-params arguments): `matrix` plans one file
# for many devices, and where the arguments come out the same the run is not repeated.
DryRuns = dict[tuple[str, ...], engine_check.EngineBreakdown | str]
_CHECK_VAR = "PREFLIGHT_ENGINE_CHECK"


def check_on_cpu(
    inputs: Inputs, result: Plan, env: Mapping[str, str], cache: DryRuns | None = None
) -> Plan:
    """llama.cpp's own dry run of the plan's argv on this machine's CPU, folded into the plan's
    weight and KV totals (plan/reconcile.py reconcile_totals): ``plan``, ``estimate`` and
    ``matrix``, whose devices are often simulated. ``plan_on`` stays pure; ``run`` keeps its
    check on the real devices (check_with_engine).

    PREFLIGHT_ENGINE_CHECK governs it as for ``run``. ``estimate`` and ``matrix`` plan without
    the shell's PREFLIGHT_* (they are not part of the command), but this one says how the answer
    is checked, so it is read from ``env`` where the inputs do not carry it.
    """
    shell = env_setting(env, _CHECK_VAR) if inputs.overrides.engine_check is None else None
    # the user's value, else the shell's, else the flag table's default
    mode: str = shell or inputs.overrides.resolved("engine_check").value
    if result.verdict != "ship" or result.engine != "llama.cpp":
        return result
    unlisted = _unlisted(inputs)
    binary = _binary_or_plan(result, unlisted, mode, env, reconcile_totals)
    if isinstance(binary, Plan):
        return binary
    assert result.model is not None
    copy = inputs.model.local_copy if inputs.model is not None else None
    if result.model.path is None and copy is None:
        copy = engine_check.cached_gguf(result.model.repo, result.model.file, env)
    if result.model.path is None and copy is None:
        why = (
            f"no GGUF header of {result.model.repo} is on local disk (not a local path, not in "
            "the Hugging Face cache, not read from the Hub here)"
        )
        return _no_dry_run(result, unlisted, why, reconcile_totals)
    local = None if result.model.path else copy
    # The engine's environment as `run` would give it (llama-fit-params reads LLAMA_ARG_* as
    # llama-server does), less the shell's LLAMA_ARG_* that were not the planner's input:
    # `estimate` and `matrix` plan without them (not part of the command).
    run_env = {
        k: v
        for k, v in engine_env(env, result).items()
        if not k.startswith("LLAMA_ARG_") or k in result.env or k in inputs.env
    }
    key = (
        result.model.path or str(copy),
        *engine_check.cpu_fit_params_args(result.argv, local)[0],
    )
    check = cache.get(key) if cache is not None else None
    if check is None:
        check = engine_check.llama_cpu_dry_run(result.argv, run_env, local, binary)
        if cache is not None:
            cache[key] = check
    if isinstance(check, str):
        return _no_dry_run(result, unlisted, check, reconcile_totals)
    folded = reconcile_totals(result, check, always_fold_kv=bool(unlisted))
    return fold_unlisted(folded, unlisted) if unlisted else folded


def engine_env(env: Mapping[str, str], result: Plan) -> dict[str, str]:
    """The engine's environment: ours, less the variables the argv now carries, plus the plan's."""
    kept = {k: v for k, v in env.items() if k not in result.env_unset}
    return launch.engine_environment(kept, result.env)


def record(started: Started, secrets: Sequence[str] = ()) -> launch.WriteResult:
    """profile.json and plan.json, written as one set (or the previous set kept); ``secrets``
    masked in them (inputs/secrets.py): the files are output, the exec'd argv keeps the values."""
    docs = {
        "profile.json": profile_to_dict(started.profile),
        "plan.json": plan_to_dict(started.plan),
    }
    return launch.write_set(started.profile_dir.path, docs, secrets)
