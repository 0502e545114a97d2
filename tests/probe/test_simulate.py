"""--simulate: every catalog GPU gives a valid profile; specs and errors."""

from __future__ import annotations

import pytest

from gpu_preflight.gpu_catalog import load_gpu_catalog
from gpu_preflight.probe.collect import simulated_hardware
from gpu_preflight.probe.simulate import SimulateError, simulate
from gpu_preflight.profile import make_profile, profile_from_dict, profile_to_dict

CATALOG = load_gpu_catalog()
MIB = 2**20


@pytest.mark.parametrize("gpu", [g.id for g in CATALOG.gpus])
def test_every_catalog_gpu_simulates_to_a_valid_profile(gpu):
    card = CATALOG.find(gpu)
    assert card is not None
    hw = simulated_hardware(gpu, 64 * 2**30)
    doc = profile_to_dict(make_profile(hw, simulated=gpu))  # validates against the schema
    (d,) = hw.gpus.devices
    assert d.name == card.nvml_name
    assert d.total_bytes == card.memory_total_mib * MIB
    assert (
        d.free_bytes
        == (card.memory_total_mib - card.memory_reserved_mib - card.memory_idle_used_mib) * MIB
    )
    assert d.compute_capability == card.compute_capability
    assert profile_from_dict(doc).hardware == hw


def test_round_trip_is_lossless():
    hw = simulated_hardware("a100-80gb:3x2g.20gb", 128 * 2**30)
    p = make_profile(hw, simulated="x")
    assert profile_from_dict(profile_to_dict(p)) == p


def test_multi_gpu_and_mig_specs():
    assert len(simulate("4xl4").gpus.devices) == 4
    (d,) = simulate("a100-80gb:3x2g.20gb").gpus.devices
    assert d.mig_enabled and len(d.mig_devices) == 3
    assert simulate("h100:1g.10gb").gpus.devices[0].mig_devices[0].total_bytes == 9984 * MIB


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("rtx-4900", "did you mean rtx-4090"),
        ("rtx-4090:1g.10gb", "has no MIG profile"),
        ("a100-80gb:8x1g.10gb", "at most 7"),
        ("0xa100", "1 to 16"),
        ("not a spec!", "not NAME"),
        ("/nonexistent/scenario.json", "cannot read"),
    ],
)
def test_bad_specs_are_explained(spec, fragment):
    with pytest.raises(SimulateError, match=fragment):
        simulate(spec)


def test_scenario_file_with_platform_and_memory(nvml_fixtures):
    sim = simulate(str(nvml_fixtures / "wsl2_laptop.json"))
    assert sim.platform is not None and sim.platform.wsl2 is True
    assert sim.memory is not None and sim.memory.total_bytes == 16 * 2**30


def test_malformed_scenario_is_rejected(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{"description": "x", "source": "y", "devices": [{"memory_mib": {"total": -1}}]}'
    )
    with pytest.raises(SimulateError, match="nvml-scenario"):
        simulate(str(bad))


def test_scenario_may_leave_out_the_driver_versions(tmp_path, nvml_fixtures):
    import json

    doc = json.loads((nvml_fixtures / "rtx4090.json").read_text())
    doc.pop("driver_version", None)
    doc.pop("cuda_driver_version", None)
    p = tmp_path / "s.json"
    p.write_text(json.dumps(doc))
    sim = simulate(str(p))
    assert sim.gpus.devices and sim.gpus.driver_version is None


def test_scenario_that_is_a_fifo_is_refused_unopened(tmp_path):
    import os

    p = tmp_path / "s.json"
    os.mkfifo(p)
    with pytest.raises(SimulateError, match="FIFO"):
        simulate(str(p))
