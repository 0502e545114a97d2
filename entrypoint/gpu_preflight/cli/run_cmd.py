"""`gpu-preflight run`: probe, plan, record, then exec the engine or refuse. Also the shared
probe-option and planning plumbing the other commands use."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import click

from gpu_preflight import launch
from gpu_preflight.cli.probe_opts import flag, probe_options
from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.resolve import resolve_model
from gpu_preflight.plan.document import plan_to_dict
from gpu_preflight.plan.errors import PreflightError
from gpu_preflight.plan.overrides import Overrides, parse_overrides
from gpu_preflight.plan.select import Catalogue, ModelRequest, plan
from gpu_preflight.plan.tiers import load_tiers
from gpu_preflight.plan.types import Plan
from gpu_preflight.probe.collect import collect_hardware
from gpu_preflight.probe.types import Profile
from gpu_preflight.profile import make_profile, profile_to_dict

EXIT_OK, EXIT_INVALID, EXIT_REFUSE = 0, 2, 3


def model_request(
    env: Mapping[str, str], overrides: Overrides, catalog: Catalogue
) -> ModelRequest | None:
    if overrides.model is None:
        return None
    value = str(overrides.model.value)
    source = overrides.model.source
    var = source.split(":", 1)[1]
    quant = str(overrides.quantization.value) if overrides.quantization else None
    base, at, q = value.rpartition("@")
    if at and base and "/" not in q and not Path(value).exists():
        value, quant = base, q
    spec = resolve_model(value, catalog_obj(env), var)
    return ModelRequest(spec=spec, quant=quant, source=source)


def catalog_obj(env: Mapping[str, str]):  # type: ignore[no-untyped-def]
    path = env.get("PREFLIGHT_MODELS_FILE", "").strip() or None
    return load_catalog(Path(path) if path else None)


def plan_for(
    env: Mapping[str, str],
    profile: Profile,
    overrides: Overrides,
    engines_available: tuple[str, ...],
) -> Plan:
    cat = catalog_obj(env)
    catalogue = Catalogue(models=tuple(cat.models))
    request = model_request(env, overrides, catalogue)
    return plan(profile, catalogue, load_tiers(env), overrides, request, engines_available)


def run_preflight(env: Mapping[str, str], engine_argv: tuple[str, ...], dry_run: bool) -> int:
    from rich.console import Console

    from gpu_preflight.cli import render

    console = Console(stderr=False, highlight=False)
    err = Console(stderr=True, highlight=False)
    try:
        dry = dry_run or flag(env, "PREFLIGHT_DRY_RUN")
        overrides = parse_overrides(env, engine_argv)
        pdir = launch.choose_profile_dir(env)
        if pdir.warning:
            err.print(f"gpu-preflight: warning: {pdir.warning}", soft_wrap=True, markup=False)
        opts = probe_options(env, None, None, pdir.path)
        hardware = collect_hardware(env, opts)
        profile = make_profile(hardware)
        result = plan_for(env, profile, overrides, launch.available_engines(env))
        profile_doc = profile_to_dict(profile)
        plan_doc = plan_to_dict(result)
    except PreflightError as exc:
        click.echo(f"gpu-preflight: error: {launch.scrub(str(exc), env)}", err=True)
        return exc.exit_code
    except ValueError as exc:
        click.echo(f"gpu-preflight: error: {launch.scrub(str(exc), env)}", err=True)
        return EXIT_INVALID
    try:
        launch.write_json_atomic(pdir.path / "profile.json", profile_doc)
        launch.write_json_atomic(pdir.path / "plan.json", plan_doc)
    except OSError as exc:
        err.print(
            f"gpu-preflight: warning: could not write the profile to {pdir.path}: {exc}",
            markup=False,
        )
    render.render_plan(console, result)
    console.print(f"profile and plan written to {pdir.path}", markup=False)
    if result.verdict == "refuse":
        return EXIT_REFUSE
    if dry:
        return EXIT_OK
    assert result.engine is not None
    try:
        launch.find_engine(result.engine, env)
    except PreflightError as exc:
        click.echo(f"gpu-preflight: error: {exc}", err=True)
        return exc.exit_code
    launch.exec_engine(result.argv, launch.engine_environment(env, result.env))
    return EXIT_OK  # not reached: exec replaced this process
