"""`gpu-preflight run`: inputs checked, probe, plan, record, then exec the engine or refuse."""

from __future__ import annotations

from collections.abc import Mapping

import click

from gpu_preflight import launch, pipeline
from gpu_preflight.cli.probe_opts import flag, probe_options
from gpu_preflight.errors import PreflightError
from gpu_preflight.plan.document import plan_to_dict
from gpu_preflight.probe.collect import collect_hardware
from gpu_preflight.profile import make_profile, profile_to_dict

EXIT_OK, EXIT_INVALID, EXIT_REFUSE = 0, 2, 3


def run_preflight(env: Mapping[str, str], engine_argv: tuple[str, ...], dry_run: bool) -> int:
    from rich.console import Console

    from gpu_preflight.cli import render

    console = Console(stderr=False, highlight=False)
    err = Console(stderr=True, highlight=False)
    try:
        dry = dry_run or flag(env, "PREFLIGHT_DRY_RUN")
        # Every input is checked before the probe: a typo must not cost a fio pass.
        inputs = pipeline.prepare(env, engine_argv)
        pdir = launch.choose_profile_dir(env)
        opts = probe_options(env, None, None, pdir.path)
        if pdir.warning:
            err.print(f"gpu-preflight: warning: {pdir.warning}", soft_wrap=True, markup=False)
        hardware = collect_hardware(env, opts)
        profile = make_profile(hardware)
        result = pipeline.plan_on(inputs, profile, launch.available_engines(env))
        profile_doc = profile_to_dict(profile)
        plan_doc = plan_to_dict(result)
    except PreflightError as exc:
        click.echo(f"gpu-preflight: error: {launch.scrub(str(exc), env)}", err=True)
        return exc.exit_code
    written = launch.write_set(pdir.path, {"profile.json": profile_doc, "plan.json": plan_doc})
    render.render_plan(console, result)
    if written.committed:
        console.print(written.message, markup=False)
    else:
        err.print(f"gpu-preflight: warning: {written.message}", markup=False)
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
    engine_env = {k: v for k, v in env.items() if k not in result.env_unset}
    launch.exec_engine(result.argv, launch.engine_environment(engine_env, result.env))
    return EXIT_OK  # not reached: exec replaced this process
