"""`gpu-preflight receipt`: measure a running engine against the plan it was started from."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import click

from gpu_preflight import launch, pipeline
from gpu_preflight.boundedio import read_json, read_text
from gpu_preflight.errors import InvalidInput
from gpu_preflight.inputs.secrets import mask, secret_values
from gpu_preflight.plan.document import plan_from_dict
from gpu_preflight.plan.types import Plan
from gpu_preflight.profile import profile_from_dict
from gpu_preflight.profile_types import Profile
from gpu_preflight.receipt.document import history_name, receipt_to_dict
from gpu_preflight.receipt.render import summary_lines
from gpu_preflight.receipt.take import Request, take
from gpu_preflight.schemas import SchemaError
from gpu_preflight.serde import DecodeError

EXIT_FAILED = 4
LOG_LIMIT = 16 * 2**20  # a start-up log; the memory lines are in its first few hundred KiB
PROC = Path("/proc")


def _load_plan(directory: Path) -> Plan:
    path = directory / "plan.json"
    try:
        return plan_from_dict(read_json(path, "plan", str(path)))
    except (SchemaError, DecodeError) as exc:
        raise InvalidInput(f"{path}: not a plan this version can read ({str(exc)[:200]})") from exc


def _load_profile(directory: Path) -> Profile | None:
    path = directory / "profile.json"
    if not path.exists():
        return None
    try:
        return profile_from_dict(read_json(path, "profile", str(path)), str(path))
    except (InvalidInput, SchemaError, DecodeError):
        return None  # the GPU mapping falls back to the plan's own device labels


def find_engine_pid(plan: Plan, proc: Path = PROC, secrets: Sequence[str] = ()) -> int | None:
    """The one process whose command line is the plan's argv (bounded scan of /proc).

    plan.json has the run's secret values masked (inputs/secrets.py), so each command line is
    compared masked the same way; the real one is longer by at most the masked values.
    """
    want = "\0".join(plan.argv).encode()
    extra = sum(len(s.encode()) for s in secrets) * max(1, len(plan.argv))
    found: list[int] = []
    try:
        entries = [p for p in proc.iterdir() if p.name.isdigit()][:65536]
    except OSError:
        return None
    for p in entries:
        try:
            with (p / "cmdline").open("rb") as f:
                cmd = f.read(len(want) + 2 + extra).rstrip(b"\0")
        except OSError:
            continue
        if secrets:
            cmd = mask(cmd.decode(errors="replace"), secrets).encode()
        if cmd == want:
            found.append(int(p.name))
    return found[0] if len(found) == 1 else None


def run_receipt(
    env: Mapping[str, str],
    url: str | None,
    pid: int | None,
    timeout_s: float,
    tokens: int,
    log: Path | None,
    as_json: bool,
    write: bool,
) -> int:
    pdir = launch.choose_profile_dir(env).path
    plan = _load_plan(pdir)
    profile = _load_profile(pdir)
    if plan.verdict != "ship":
        raise InvalidInput(
            f"{pdir / 'plan.json'} did not ship an engine: there is nothing to measure"
        )
    base = url or pipeline.engine_url(plan)
    if not base.startswith(("http://", "https://")):
        raise InvalidInput(f"--url {base!r}: accepted: an http:// or https:// URL")
    if log is not None:
        read_text(log, LOG_LIMIT, str(log))  # a bad --log is exit 2 before anything is asked

    def startup() -> str:
        assert log is not None
        return read_text(log, LOG_LIMIT, str(log))

    receipt = take(
        Request(
            base_url=base,
            plan=plan,
            plan_file=str(pdir / "plan.json"),
            profile=profile,
            pid=pid if pid is not None else find_engine_pid(plan, secrets=secret_values(env)),
            timeout_s=timeout_s,
            max_tokens=tokens,
            startup_log=startup if log is not None else None,
        )
    )
    doc = receipt_to_dict(receipt)
    message = None
    if write:
        written = launch.write_receipt(
            pdir, doc, receipt.key.id, history_name(receipt), secret_values(env)
        )
        message = written.message if written.committed else f"warning: {written.message}"
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        for line in summary_lines(receipt):
            click.echo(line)
        if message:
            click.echo(message)
    return EXIT_FAILED if receipt.status == "failed" else 0
