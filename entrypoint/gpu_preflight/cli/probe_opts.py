"""Which probes run: --bench/--no-bench, PREFLIGHT_BENCH, PREFLIGHT_BENCH_DIR, PREFLIGHT_PINNED_CAP_GB."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gpu_preflight.plan.errors import InvalidInput, OverrideError
from gpu_preflight.probe.collect import DEFAULT_PINNED_CAP, ProbeOptions
from gpu_preflight.probe.storage import check_bench_dir

BENCH_MODES = ("auto", "on", "off", "force")
DEFAULT_BENCH_DIR = "/bench"
GIB = 2**30
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise OverrideError(name, env[name], "1/true/yes/on or 0/false/no/off")


def probe_options(
    env: Mapping[str, str], bench_flag: bool | None, bench_dir: Path | None, cache_dir: Path | None
) -> ProbeOptions:
    """Decide whether the fio pass runs: --bench/--no-bench, else PREFLIGHT_BENCH (default auto)."""
    raw = env.get("PREFLIGHT_BENCH", "").strip().lower() or "auto"
    if raw not in BENCH_MODES:
        raise OverrideError("PREFLIGHT_BENCH", env["PREFLIGHT_BENCH"], ", ".join(BENCH_MODES))
    mode = raw if bench_flag is None else ("on" if bench_flag else "off")
    explicit = bench_dir is not None or bool(env.get("PREFLIGHT_BENCH_DIR", "").strip())
    directory = bench_dir or Path(env.get("PREFLIGHT_BENCH_DIR", "").strip() or DEFAULT_BENCH_DIR)
    run = mode in ("on", "force") or (mode == "auto" and (explicit or directory.is_dir()))
    if run:
        problem = check_bench_dir(directory)
        if problem:
            if mode == "auto" and not explicit:
                run = False
            else:
                name = "--bench-dir" if bench_dir is not None else "PREFLIGHT_BENCH_DIR"
                raise InvalidInput(
                    f"{name}={str(directory)!r}: {problem}. Accepted: a writable "
                    "directory on a local disk filesystem (ext4, xfs, btrfs), e.g. a "
                    "volume mounted at /bench"
                )
    cap = DEFAULT_PINNED_CAP
    if env.get("PREFLIGHT_PINNED_CAP_GB", "").strip():
        text = env["PREFLIGHT_PINNED_CAP_GB"].strip()
        try:
            cap_gib = float(text)
        except ValueError:
            cap_gib = -1.0
        if not 0 <= cap_gib <= 4096:
            raise OverrideError("PREFLIGHT_PINNED_CAP_GB", text, "GiB from 0 to 4096, e.g. 16")
        cap = int(cap_gib * GIB)
    skip = (
        f"storage benchmark skipped: PREFLIGHT_BENCH=auto and no {directory} directory "
        "(mount a local disk volume there, or set PREFLIGHT_BENCH_DIR)"
        if mode == "auto"
        else "storage benchmark skipped (--no-bench / PREFLIGHT_BENCH=off)"
    )
    return ProbeOptions(
        bench_skip_reason=skip,
        bench=run,
        bench_dir=directory if run else None,
        force_bench=mode == "force",
        cache_dir=cache_dir,
        pinned_cap_bytes=cap,
    )
