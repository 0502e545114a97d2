"""Plan fixtures: simulated profiles of real cards and the built-in catalog and tiers."""

from __future__ import annotations

import shlex
from collections.abc import Mapping

import pytest
from tests.conftest import NVML

from gpu_preflight import pipeline
from gpu_preflight.cli.estimate_cmd import run_estimate
from gpu_preflight.inputs.overrides import normalise_flag
from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.plan.document import plan_to_dict
from gpu_preflight.plan.select import Catalogue
from gpu_preflight.plan.tiers import load_tiers
from gpu_preflight.plan.types import Plan
from gpu_preflight.probe.collect import simulated_hardware
from gpu_preflight.profile import make_profile

GIB = 2**30
CATALOG = load_catalog()
CATALOGUE = Catalogue(models=CATALOG.models)
TIERS = load_tiers({})


# A simulated host: 64 GiB of RAM with a dual-channel DDR5 desktop's copy bandwidth.
HOST_BANDWIDTH_GB_S = 40.0


def profile_for(
    spec: str, host_ram_gib: float | None = 64, host_bw: float | None = HOST_BANDWIDTH_GB_S
):
    if spec.endswith(".json"):
        spec = str(NVML / spec)
    hw = simulated_hardware(spec, int(host_ram_gib * GIB) if host_ram_gib else None, host_bw)
    return make_profile(hw, simulated=spec)


def run_plan(
    spec: str,
    env: Mapping[str, str] | None = None,
    argv: tuple[str, ...] = (),
    host_ram_gib: float | None = 64,
    engines: tuple[str, ...] = ("vllm", "llama.cpp"),
    host_bw: float | None = HOST_BANDWIDTH_GB_S,
) -> Plan:
    """The pipeline exactly as `run` wires it: inputs checked first, then the simulated probe."""
    inputs = pipeline.prepare(dict(env or {}), argv)
    result = pipeline.plan_on(inputs, profile_for(spec, host_ram_gib, host_bw), engines)
    plan_to_dict(result)  # every plan, ship or refuse, must validate against the schema
    if result.verdict == "ship":
        assert result.predicted is not None
        for d in result.predicted.devices:
            assert d.total_bytes <= d.budget_bytes, (d, result.model)
        assert result.argv
    return result


@pytest.fixture
def plan_on():
    return run_plan


def estimate(gpu: str, command: str, env: Mapping[str, str] | None = None) -> Plan:
    """`gpu-preflight estimate --gpu GPU -- COMMAND`, as the CLI runs it."""
    return run_estimate(dict(env or {}), {}, tuple(shlex.split(command)), gpu, False, None)


def engine_flags(argv: tuple[str, ...]) -> dict[str, str | None]:
    """{flag: value} of an engine argv, spelling-normalised and order-free: after `vllm serve
    MODEL` or after `llama-server`."""
    out: dict[str, str | None] = {}
    args = list(argv[3:] if argv[:1] == ("vllm",) else argv[1:])
    i = 0
    while i < len(args):
        name, inline = normalise_flag(args[i])
        if inline is None and i + 1 < len(args) and not args[i + 1].startswith("-"):
            inline = args[i + 1]
            i += 1
        out[name] = inline
        i += 1
    return out
