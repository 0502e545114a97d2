"""The fuzz suite's shared checks: every generated case goes through ``expect_clean``.

The properties asserted for each case (issue 10): it ends in success or in an ``InvalidInput``
(exit 2) whose message names the file; it takes under ``CASE_SECONDS``; nothing hangs (a timer
interrupts a case after ``HANG_SECONDS``). Memory per case is measured in a subprocess by
test_bounds.py. The number of cases run is printed at the end of the session.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from gpu_preflight.inputs.errors import InvalidInput

CASE_SECONDS = 2.0
HANG_SECONDS = 10
CASES: Counter[str] = Counter()

settings.register_profile(
    "fuzz",
    deadline=None,  # the per-case bound is asserted by expect_clean, with a clearer message
    derandomize=True,  # the same cases on every run: a CI failure reproduces locally
    database=None,  # nothing written into the checkout (.hypothesis/)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
FUZZ = settings.get_profile("fuzz")


class Hung(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise Hung(f"a case ran past {HANG_SECONDS} s")


def expect_clean(
    group: str,
    call: Callable[[], Any],
    names: str | Path | None = None,
    allowed: tuple[type[BaseException], ...] = (InvalidInput,),
) -> BaseException | Any:
    """Run one case: success, or an allowed exception naming ``names``; never slow, never hung."""
    CASES[group] += 1
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_SECONDS)
    start = time.monotonic()
    try:
        out = call()
    except allowed as exc:
        out = exc
        msg = str(exc)
        assert "Traceback" not in msg
        if names is not None:
            assert str(names) in msg, f"message does not name {names}: {msg}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    elapsed = time.monotonic() - start
    assert elapsed < CASE_SECONDS, f"{group}: one case took {elapsed:.2f} s"
    return out


@pytest.fixture(scope="session")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz")


_seq = iter(range(10**9))


def fresh(base: Path, name: str) -> Path:
    """A new empty directory under ``base`` (hypothesis reuses function fixtures across cases)."""
    d = base / f"case{next(_seq)}"
    d.mkdir()
    return d / name if name else d


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if CASES:
        total = sum(CASES.values())
        parts = ", ".join(f"{k} {v}" for k, v in sorted(CASES.items()))
        terminalreporter.write_line(f"fuzz cases run: {total} ({parts})")
