"""The one place the probes run external programs (nvidia-smi, fio, the engines' dry runs).
Errors come back as values."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


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


# ---------------------------------------------------------------------------------------------
# A long-running program watched line by line and stopped on a sign (vLLM's dummy-weight dry run,
# gpu_preflight/vllm_check.py): it runs in its own session, so its children (vLLM's engine core
# and workers are multiprocessing children) are one process group, stopped together.

# SIGTERM to SIGKILL. vLLM's CPU build stopped in its start-up did not exit on SIGTERM within 20 s
# on a loaded 2-core machine (its worker kept computing for 12 s, then the engine core ran on);
# nothing of a dry run needs a clean shutdown, and the devices are free once the processes are gone.
STOP_GRACE_S = 5.0
MAX_KEPT = 256 * 1024  # the output kept for the caller: the end of it, where the error is


@dataclass(frozen=True)
class WatchResult:
    argv: tuple[str, ...]
    returncode: int | None  # None: still running when stopped (sign seen, or timed out)
    output: str  # stdout and stderr together, at most MAX_KEPT characters (the end)
    matched: bool  # the sign was seen
    timed_out: bool
    seconds: float  # start to the sign, the exit or the timeout
    error: str | None  # could not start, in words
    left_running: int  # processes of its group still alive after SIGKILL (0 is the goal)


def _group_members(pgid: int) -> int:
    """Live (not zombie) processes of a process group, from /proc; -1 where /proc is absent."""
    proc = Path("/proc")
    if not proc.is_dir():
        return -1
    n = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            n += 1
    return n


def _stop_group(proc: subprocess.Popen[bytes], grace_s: float) -> int:
    """SIGTERM the whole group, SIGKILL what is left after grace_s; live members left after."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    # After SIGKILL, a process that holds a GPU exits only once the driver has torn its context
    # down (seconds for a large one): wait for that, so the real start finds the memory free.
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None and _group_members(pgid) <= 0:
                break
            time.sleep(0.1)
        if proc.poll() is not None and _group_members(pgid) <= 0:
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)
    return max(0, _group_members(pgid))


def watch_command(
    argv: list[str],
    env: dict[str, str],
    timeout_s: float,
    sign: Callable[[str], bool],
    grace_s: float = STOP_GRACE_S,
) -> WatchResult:
    """Run argv (no shell) in a new session until a line of its output satisfies ``sign``, it
    exits, or ``timeout_s`` passes; then stop its whole process group (SIGTERM, then SIGKILL).
    Never raises for the program's sake; errors come back as values."""
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return WatchResult(tuple(argv), None, "", False, False, 0.0, f"could not start: {exc}", 0)
    lines: queue.Queue[bytes | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    kept: list[str] = []
    size = 0
    matched = timed_out = eof = False
    while not (matched or eof):
        left = timeout_s - (time.monotonic() - t0)
        if left <= 0:
            timed_out = True
            break
        try:
            raw = lines.get(timeout=min(left, 0.5))
        except queue.Empty:
            continue
        if raw is None:
            eof = True
            break
        line = raw.decode(errors="replace")
        kept.append(line)
        size += len(line)
        while size > MAX_KEPT and len(kept) > 1:
            size -= len(kept.pop(0))
        matched = sign(line)
    seconds = round(time.monotonic() - t0, 3)
    if eof:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    code = proc.poll()
    left_running = _stop_group(proc, grace_s)
    reader.join(timeout=1.0)
    return WatchResult(
        tuple(argv),
        code if not (matched or timed_out) else None,
        "".join(kept)[-MAX_KEPT:],
        matched,
        timed_out,
        seconds,
        None,
        left_running,
    )
