"""`gpu-preflight run`: the pipeline's start, the summary, the record, then exec or refuse."""

from __future__ import annotations

from collections.abc import Mapping

import click

from gpu_preflight import launch, pipeline
from gpu_preflight.errors import PreflightError
from gpu_preflight.inputs.secrets import secret_values

EXIT_OK, EXIT_INVALID, EXIT_REFUSE = 0, 2, 3


def run_preflight(env: Mapping[str, str], engine_argv: tuple[str, ...], dry_run: bool) -> int:
    from rich.console import Console

    from gpu_preflight.cli import render

    console = Console(stderr=False, highlight=False)
    err = Console(stderr=True, highlight=False)
    try:
        started = pipeline.start(env, engine_argv, dry_run)
        if started.profile_dir.warning:
            err.print(
                f"gpu-preflight: warning: {started.profile_dir.warning}",
                soft_wrap=True,
                markup=False,
            )
        written = pipeline.record(started, secret_values(env, engine_argv))
    except PreflightError as exc:
        click.echo(f"gpu-preflight: error: {launch.scrub(str(exc), env)}", err=True)
        return exc.exit_code
    result = started.plan
    render.render_plan(console, result)
    if written.committed:
        console.print(written.message, markup=False)
    else:
        err.print(f"gpu-preflight: warning: {written.message}", markup=False)
    if result.verdict == "refuse":
        return EXIT_REFUSE
    if started.dry_run:
        return EXIT_OK
    assert result.engine is not None
    try:
        launch.find_engine(result.engine, env)
    except PreflightError as exc:
        click.echo(f"gpu-preflight: error: {launch.scrub(str(exc), env)}", err=True)
        return exc.exit_code
    launch.exec_engine(
        result.argv, pipeline.engine_env(env, result), receipt=pipeline.receipt_job(started)
    )
    return EXIT_OK  # not reached: exec replaced this process
