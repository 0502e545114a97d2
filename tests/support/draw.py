"""Hypothesis examples as a list, for property tests that batch their cases into one run of a
real engine (one vLLM process, one llama-fit-params per case): derandomized, so CI runs the same
cases every time, and without the example database."""

from __future__ import annotations

from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

T = TypeVar("T")


def drawn(strategy: st.SearchStrategy[T], n: int) -> list[T]:
    out: list[Any] = []

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(case: T) -> None:
        out.append(case)

    collect()
    return out
