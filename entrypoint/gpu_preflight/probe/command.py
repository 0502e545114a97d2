"""The one place the probes run external programs (nvidia-smi, fio). Errors come back as values."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int | None  # None: could not start, or timed out
    stdout: str
    stderr: str
    error: str | None  # why it did not run to completion, in words


def which(name: str) -> str | None:
    return shutil.which(name)


def run_command(
    argv: list[str], timeout_s: float, env: dict[str, str] | None = None
) -> CommandResult:
    """Run argv (never through a shell), capture text output, never raise."""
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except FileNotFoundError:
        return CommandResult(tuple(argv), None, "", "", f"{argv[0]} not found")
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        return CommandResult(
            tuple(argv), None, out, "", f"{argv[0]} timed out after {timeout_s:g} s"
        )
    except OSError as exc:
        return CommandResult(tuple(argv), None, "", "", f"{argv[0]} could not start: {exc}")
    return CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr, None)
