"""Shared fixtures: recorded NVML scenarios and simulated profiles."""

from __future__ import annotations

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
