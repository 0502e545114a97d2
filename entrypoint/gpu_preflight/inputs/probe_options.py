"""Which probes run: --bench/--no-bench, PREFLIGHT_BENCH, PREFLIGHT_BENCH_DIR, PREFLIGHT_PINNED_CAP_GB.

Each variable is parsed by its row of the flag table (inputs/flags.py env_setting), the one parser
of it, so what is accepted here is what docs/flags.md says.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gpu_preflight.inputs.errors import InvalidInput
from gpu_preflight.inputs.flags import env_setting
from gpu_preflight.probe.collect import DEFAULT_PINNED_CAP, ProbeOptions
from gpu_preflight.probe.storage import check_bench_dir

DEFAULT_BENCH_DIR = "/bench"
GIB = 2**30


def flag(env: Mapping[str, str], name: str) -> bool:
    """A boolean variable (PREFLIGHT_DRY_RUN) through its row's Switch parser; unset is False."""
    value = env_setting(env, name)
    assert value is None or isinstance(value, bool), f"{name} is not a Switch row"
    return bool(value)


def probe_options(
    env: Mapping[str, str], bench_flag: bool | None, bench_dir: Path | None, cache_dir: Path | None
) -> ProbeOptions:
    """Decide whether the fio pass runs: --bench/--no-bench, else PREFLIGHT_BENCH (default auto)."""
    raw = str(env_setting(env, "PREFLIGHT_BENCH") or "auto")
    mode = raw if bench_flag is None else ("on" if bench_flag else "off")
    named = env_setting(env, "PREFLIGHT_BENCH_DIR")
    explicit = bench_dir is not None or named is not None
    directory = bench_dir or Path(str(named or DEFAULT_BENCH_DIR))
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
    cap_gib = env_setting(env, "PREFLIGHT_PINNED_CAP_GB")
    cap = DEFAULT_PINNED_CAP if cap_gib is None else int(float(cap_gib) * GIB)
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
