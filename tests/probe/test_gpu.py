"""GPU probe on recorded NVML scenarios: every failure level, MIG, v1/v2, visible devices."""

from __future__ import annotations

import pytest
from tests.conftest import scenario

from gpu_preflight.probe.command import CommandResult
from gpu_preflight.probe.gpu import probe_gpus
from gpu_preflight.probe.visible import VisibleDevicesError

MIB = 2**20


def test_rtx4090_fields_and_v2_memory():
    r = probe_gpus({}, lib=scenario("rtx4090"))
    assert (
        r.source == "simulated"
        and r.driver_version == "550.54.15"
        and r.cuda_driver_version == "12.4"
    )
    (d,) = r.devices
    assert d.name == "NVIDIA GeForce RTX 4090"
    assert d.total_bytes == 24564 * MIB
    assert d.reserved_bytes == 334 * MIB
    assert d.free_bytes == (24564 - 1043 - 334) * MIB
    assert d.memory_source == "nvml-v2"
    assert d.compute_capability == "8.9"
    assert (d.pcie_gen_current, d.pcie_gen_max, d.pcie_width_current) == (1, 4, 16)
    assert d.power_limit_watts == 450.0
    assert d.mig_enabled is False  # NotSupported on GeForce means "no MIG", not unknown
    assert d.memory_bandwidth_gb_s == 1008 and d.memory_bandwidth_source == "catalog"


def test_old_driver_falls_back_to_v1_with_a_note():
    (d,) = probe_gpus({}, lib=scenario("old_driver_no_v2")).devices
    assert d.memory_source == "nvml-v1"
    assert d.reserved_bytes is None
    assert d.total_bytes == 15109 * MIB
    assert any("v2 unavailable" in n for n in d.notes)


def test_mig_leaves_have_their_own_memory():
    (d,) = probe_gpus({}, lib=scenario("a100_mig")).devices
    assert d.mig_enabled is True
    assert len(d.mig_devices) == 3
    assert {m.total_bytes for m in d.mig_devices} == {19968 * MIB}
    assert all(m.uuid and m.uuid.startswith("MIG-") for m in d.mig_devices)
    assert [m.gpu_instance_id for m in d.mig_devices] == [3, 5, 7]


def test_lost_gpu_is_an_error_entry_and_the_others_report():
    r = probe_gpus({}, lib=scenario("one_gpu_lost"))
    assert [d.index for d in r.devices] == [0, 1, 3]
    (e,) = r.errors
    assert e.index == 2 and "lost" in e.error


def test_not_supported_fields_become_none_with_notes():
    (d,) = probe_gpus({}, lib=scenario("not_supported")).devices
    assert d.total_bytes is None and d.free_bytes is None and d.memory_source is None
    assert d.pcie_gen_current is None and d.power_limit_watts is None
    assert d.compute_capability == "8.7"
    assert any("power limit unknown: not supported" in n for n in d.notes)
    assert any("memory" in n for n in d.notes)


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("library_not_found", "--gpus all"),
        ("driver_not_loaded", "kernel driver is not loaded"),
        ("lib_driver_mismatch", "reboot"),
    ],
)
def test_fatal_init_failures_give_no_devices_and_an_actionable_note(name, hint):
    r = probe_gpus({}, lib=scenario(name))
    assert r.devices == () and r.errors == ()
    assert r.source is None
    assert any(hint in n for n in r.notes)


def test_library_missing_uses_nvidia_smi_when_present():
    out = (
        "0, GPU-4bd2a2e5-9cbc-3a4b-fb16-6d4e0bfc3d1b, NVIDIA GeForce RTX 4090, 24564, 1043, 23187, 334, "
        "550.54.15, 8.9, 1, 4, 16, 16, 450.00, [N/A]\n"
    )
    calls = []

    def runner(argv, timeout):
        calls.append(argv)
        return CommandResult(tuple(argv), 0, out, "", None)

    r = probe_gpus({}, lib=scenario("library_not_found"), smi_runner=runner)
    # Simulated libraries never fall back (a fake must not reach the real nvidia-smi).
    assert r.devices == ()
    from gpu_preflight.probe import gpu as gpu_mod
    from gpu_preflight.probe.nvml import LIBRARY_NOT_FOUND, NvmlFailure

    r = gpu_mod._fallback(
        {}, NvmlFailure(LIBRARY_NOT_FOUND, "lib missing"), runner, gpu_mod.load_gpu_catalog(), None
    )
    (d,) = r.devices
    assert r.source == "nvidia-smi" and d.memory_source == "nvidia-smi"
    assert (
        d.total_bytes == 24564 * MIB
        and d.free_bytes == 23187 * MIB
        and d.reserved_bytes == 334 * MIB
    )
    assert d.mig_enabled is None and d.power_limit_watts == 450.0
    assert calls[0][0] == "nvidia-smi" and "--format=csv,noheader,nounits" in calls[0]


def test_nvidia_smi_without_memory_reserved_is_retried():
    fields_seen = []

    def runner(argv, timeout):
        fields_seen.append(argv[1])
        if "memory.reserved" in argv[1]:
            return CommandResult(
                tuple(argv), 2, "", 'Field "memory.reserved" is not a valid field to query.', None
            )
        return CommandResult(
            tuple(argv),
            0,
            "0, GPU-x, Tesla T4, 15109, 0, 15109, 470.1, 7.5, 3, 3, 16, 16, 70.00, Disabled\n",
            "",
            None,
        )

    from gpu_preflight.gpu_catalog import load_gpu_catalog
    from gpu_preflight.probe.smi import probe_with_smi

    r = probe_with_smi(runner, load_gpu_catalog())
    assert len(fields_seen) == 2 and "memory.reserved" not in fields_seen[1]
    (d,) = r.devices
    assert d.reserved_bytes is None and d.total_bytes == 15109 * MIB and d.mig_enabled is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CUDA_VISIBLE_DEVICES": "1"}, [1]),
        ({"CUDA_VISIBLE_DEVICES": "3,0"}, [3, 0]),
        ({"CUDA_VISIBLE_DEVICES": ""}, []),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, []),
        ({"CUDA_VISIBLE_DEVICES": "GPU-9a8b7c6d-5e4f-3a2b-1c0d-e9f8a7b6c5d2"}, [2]),
        ({"CUDA_VISIBLE_DEVICES": "GPU-9a8b7c6d-5e4f-3a2b-1c0d-e9f8a7b6c5d1,0"}, [1, 0]),
        ({"CUDA_VISIBLE_DEVICES": "0,7,1"}, [0]),  # CUDA stops at the first entry it cannot match
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, [0, 1, 2, 3]),
        ({"NVIDIA_VISIBLE_DEVICES": "void"}, [0, 1, 2, 3]),
        ({"NVIDIA_VISIBLE_DEVICES": "none"}, []),
        ({"NVIDIA_VISIBLE_DEVICES": "1,2"}, [1, 2]),  # NVML still sees 4: the host or privileged
        ({"NVIDIA_VISIBLE_DEVICES": "0,1,2,3,4,5"}, [0, 1, 2, 3]),  # runtime already applied it
        ({"NVIDIA_VISIBLE_DEVICES": "1,2", "CUDA_VISIBLE_DEVICES": "1"}, [2]),
    ],
)
def test_visible_devices_select_and_reorder(env, expected):
    r = probe_gpus(env, lib=scenario("4x_l4"))
    assert [d.index for d in r.devices] == expected
    # The CUDA ordinal is the position in the process's own order (tests/probe/test_ordinals.py).
    assert [d.cuda_ordinal for d in r.devices] == list(range(len(expected)))


def test_mig_uuid_selects_one_leaf():
    lib = scenario("a100_mig")
    uuid = "MIG-a1b2c3d4-e5f6-5a7b-8c9d-0e1f2a3b4c51"
    (d,) = probe_gpus({"CUDA_VISIBLE_DEVICES": uuid}, lib=lib).devices
    assert [m.uuid for m in d.mig_devices] == [uuid]


@pytest.mark.parametrize("value", ["0,,1", "gpu0", "GPU-", "1.5", "0,0", "MIG-zz/1"])
def test_malformed_visible_devices_is_invalid_input(value):
    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        with pytest.raises(VisibleDevicesError) as info:
            probe_gpus({var: value}, lib=scenario("4x_l4"))
        assert (
            var in str(info.value)
            and repr(value) in str(info.value)
            and "Accepted" in str(info.value)
        )


def test_probe_is_balanced_on_nvml_init_and_shutdown():
    lib = scenario("2x_a100_80gb")
    probe_gpus({}, lib=lib)
    assert lib.initialised == 0
