"""Shared fixtures: recorded NVML scenarios and simulated profiles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpu_preflight.probe.fake_nvml import FakeNvml, load_scenario

FIXTURES = Path(__file__).parent / "fixtures"
NVML = FIXTURES / "nvml"


def scenario(name: str) -> FakeNvml:
    return FakeNvml(load_scenario(NVML / f"{name}.json"))


@pytest.fixture
def nvml_fixtures() -> Path:
    return NVML


# Markers of tests that need an engine, binary, venv or service the test command builds. Under
# CI=true (.ci/run) a missing one is a failure, never a skip: a green CI must mean they ran.
NEEDS_BUILT = ("docker", "fio", "llamacpp", "vllm", "vllm_cpu", "vulkan")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if (
        report.skipped
        and os.environ.get("CI", "").lower() == "true"
        and any(item.get_closest_marker(m) for m in NEEDS_BUILT)
        and not hasattr(report, "wasxfail")
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"CI=true: a test that needs a built engine/venv/service skipped: {reason}"
    return None
