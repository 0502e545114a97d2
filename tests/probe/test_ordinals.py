"""NVML index vs CUDA ordinal: CUDA_VISIBLE_DEVICES mapped through the NVML list (lost GPUs kept).

The rules are in probe/visible.py. NVML index = nvidia-smi's number; CUDA ordinal = what
cuDeviceGet and llama.cpp's CUDA<n> mean in a process with the same CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from tests.conftest import scenario

from gpu_preflight.gpu_catalog import load_gpu_catalog
from gpu_preflight.probe import collect as collect_mod
from gpu_preflight.probe.collect import ProbeOptions, collect_hardware
from gpu_preflight.probe.command import CommandResult
from gpu_preflight.probe.gpu import _fallback, probe_gpus
from gpu_preflight.probe.nvml import LIBRARY_NOT_FOUND, NvmlFailure
from gpu_preflight.probe.pcie import probe_pcie
from gpu_preflight.probe.simulate import simulate
from gpu_preflight.profile import make_profile, profile_from_dict, profile_to_dict
from gpu_preflight.profile_types import GpuReport

LOST_UUID = "GPU-1111aaaa-2222-3333-4444-555566667773"  # one_gpu_lost's NVML GPU 3
MIG_MIXED_L4 = "GPU-9a8b7c6d-5e4f-3a2b-1c0d-e9f8a7b6c5e1"
MIG_MIXED_LEAF1 = "MIG-a1b2c3d4-e5f6-5a7b-8c9d-0e1f2a3b4ca1"


def lost(env: dict[str, str]) -> GpuReport:
    return probe_gpus(env, lib=scenario("one_gpu_lost"))


def pairs(r: GpuReport) -> list[tuple[int, int | None]]:
    return [(d.index, d.cuda_ordinal) for d in r.devices]


# -- the lost-GPU scenario: GPU 2 of 4 answers GpuIsLost -----------------------------------------


def test_lost_gpu_index_3_is_nvml_gpu_3_and_cuda_0():
    r = lost({"CUDA_VISIBLE_DEVICES": "3"})
    assert pairs(r) == [(3, 0)]
    assert r.devices[0].uuid == LOST_UUID
    assert r.errors == ()  # GPU 2 is not selected: its error is not this process's concern


def test_lost_gpu_index_2_selects_the_lost_gpu_and_nothing_usable():
    r = lost({"CUDA_VISIBLE_DEVICES": "2"})
    assert r.devices == ()
    (e,) = r.errors
    assert e.index == 2 and e.cuda_ordinal == 0 and "lost" in e.error
    assert any("GPU 2 is selected" in n and "no engine can use it" in n for n in r.notes)
    assert any("no usable GPU" in n for n in r.notes)


def test_lost_gpu_reordered_3_then_1():
    r = lost({"CUDA_VISIBLE_DEVICES": "3,1"})
    assert pairs(r) == [(3, 0), (1, 1)]
    assert any("GPU 3 = CUDA0, GPU 1 = CUDA1" in n for n in r.notes)


def test_lost_gpu_unselected_keeps_its_place_in_the_numbering():
    r = lost({})
    assert pairs(r) == [(0, 0), (1, 1), (3, 3)]
    (e,) = r.errors
    assert (e.index, e.cuda_ordinal) == (2, 2)
    # The advice names the working GPUs by UUID, which mean the same GPUs either way.
    (note,) = [n for n in r.notes if "keeps its place" in n]
    assert LOST_UUID in note and "CUDA3" in note


def test_lost_gpu_listed_first_pushes_the_next_one_to_cuda_1():
    r = lost({"CUDA_VISIBLE_DEVICES": "2,3"})
    assert pairs(r) == [(3, 1)]
    assert [(e.index, e.cuda_ordinal) for e in r.errors] == [(2, 0)]
    assert any(LOST_UUID in n for n in r.notes)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"{LOST_UUID},GPU-1111aaaa-2222-3333-4444-555566667770", [(3, 0), (0, 1)]),
        ("GPU-1111aaaa-2222-3333-4444-555566667773", [(3, 0)]),
        ("GPU-1111aaaa-2222-3333-4444-55556666777", []),  # a prefix of four UUIDs: no match
        ("3,7,1", [(3, 0)]),  # CUDA stops at the first entry that matches nothing
        ("1,3", [(1, 0), (3, 1)]),
        ("-1", []),
    ],
)
def test_lost_gpu_uuid_and_index_selections(value, expected):
    assert pairs(lost({"CUDA_VISIBLE_DEVICES": value})) == expected


def test_nvidia_visible_devices_filters_in_bus_order_then_cuda_indexes_the_rest():
    # A privileged container (NVML still sees all 4): the toolkit's list filters, never reorders.
    assert pairs(lost({"NVIDIA_VISIBLE_DEVICES": "3,1"})) == [(1, 0), (3, 1)]
    # CUDA_VISIBLE_DEVICES then counts what is left: 0 = GPU 1, 1 = GPU 3.
    r = lost({"NVIDIA_VISIBLE_DEVICES": "3,1", "CUDA_VISIBLE_DEVICES": "1"})
    assert pairs(r) == [(3, 0)]


def test_the_nvidia_smi_fallback_maps_the_same_way():
    out = (
        "0, GPU-aaaa0000-0000-0000-0000-000000000000, NVIDIA L4, 23034, 0, 22700, 334, "
        "550.54.15, 8.9, 4, 4, 16, 16, 72.00, [N/A]\n"
        "1, GPU-aaaa0000-0000-0000-0000-000000000001, NVIDIA L4, 23034, 0, 22700, 334, "
        "550.54.15, 8.9, 4, 4, 16, 16, 72.00, [N/A]\n"
    )

    def runner(argv, timeout):
        return CommandResult(tuple(argv), 0, out, "", None)

    r = _fallback(
        {"CUDA_VISIBLE_DEVICES": "1"},
        NvmlFailure(LIBRARY_NOT_FOUND, "lib missing"),
        runner,
        load_gpu_catalog(),
        "1",
    )
    assert pairs(r) == [(1, 0)]


# -- MIG: one MIG device per CUDA process --------------------------------------------------------


def test_mig_gpu_without_a_selection_shows_its_first_leaf_as_cuda_0():
    r = probe_gpus({}, lib=scenario("a100_mig"))
    (d,) = r.devices
    assert d.cuda_ordinal is None  # the parent is not a CUDA device once MIG is on
    assert [m.cuda_ordinal for m in d.mig_devices] == [0, None, None]
    assert any("one MIG device per process" in n for n in r.notes)


def test_mig_uuid_selects_that_leaf_as_cuda_0():
    uuid = "MIG-a1b2c3d4-e5f6-5a7b-8c9d-0e1f2a3b4c52"
    (d,) = probe_gpus({"CUDA_VISIBLE_DEVICES": uuid}, lib=scenario("a100_mig")).devices
    assert [(m.uuid, m.cuda_ordinal) for m in d.mig_devices] == [(uuid, 0)]


def test_mig_mixed_host_no_selection_hides_the_other_gpus():
    r = probe_gpus({}, lib=scenario("mig_mixed"))
    assert [(d.index, d.cuda_ordinal) for d in r.devices] == [(0, None), (1, None), (2, None)]
    assert [m.cuda_ordinal for m in r.devices[0].mig_devices] == [0, None]
    assert any("GPU 1, GPU 2 not visible to CUDA" in n for n in r.notes)


@pytest.mark.parametrize(
    ("value", "gpu", "ordinal", "leaves"),
    [
        ("0", 1, 0, []),  # CUDA counts MIG-enabled GPUs last: index 0 is the L4 (GPU 1)
        ("1", 0, None, [0, None]),  # index 1 is the MIG GPU: its first leaf
        (MIG_MIXED_L4, 1, 0, []),
        (MIG_MIXED_LEAF1, 0, None, [0]),
    ],
)
def test_mig_mixed_host_selections(value, gpu, ordinal, leaves):
    r = probe_gpus({"CUDA_VISIBLE_DEVICES": value}, lib=scenario("mig_mixed"))
    (d,) = r.devices
    assert (d.index, d.cuda_ordinal) == (gpu, ordinal)
    assert [m.cuda_ordinal for m in d.mig_devices] == leaves


def test_mig_enabled_gpu_without_mig_devices_has_no_ordinal_and_no_index():
    # GPU 2 has MIG on and no instance: CUDA does not enumerate it, so index 2 matches nothing.
    assert probe_gpus({"CUDA_VISIBLE_DEVICES": "2"}, lib=scenario("mig_mixed")).devices == ()
    r = probe_gpus(
        {"CUDA_VISIBLE_DEVICES": f"{MIG_MIXED_L4},GPU-5c6d7e8f-9a0b-1c2d-3e4f-5a6b7c8d9e1b"},
        lib=scenario("mig_mixed"),
    )
    assert [(d.index, d.cuda_ordinal) for d in r.devices] == [(1, 0), (2, None)]


# -- CUDA_DEVICE_ORDER ----------------------------------------------------------------------------


def test_mixed_gpus_warn_unless_cuda_device_order_is_pci_bus_id():
    r = probe_gpus({}, lib=scenario("mixed_4090_3060"))
    assert any("CUDA_DEVICE_ORDER" in n for n in r.notes)
    r = probe_gpus({"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, lib=scenario("mixed_4090_3060"))
    assert not any("CUDA_DEVICE_ORDER" in n for n in r.notes)
    r = probe_gpus({}, lib=scenario("4x_l4"))  # identical cards: the orders agree
    assert not any("CUDA_DEVICE_ORDER" in n for n in r.notes)


# -- the CUDA probes are handed ordinals, never NVML indexes ------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.opened: list[int] = []

    @contextmanager
    def __call__(self, ordinal):
        self.opened.append(ordinal)
        yield "recorded only"


@pytest.mark.parametrize(
    ("name", "env", "opened", "indexes"),
    [
        ("one_gpu_lost", {"CUDA_VISIBLE_DEVICES": "3,1"}, [0, 1], [3, 1]),
        ("one_gpu_lost", {"CUDA_VISIBLE_DEVICES": "3"}, [0], [3]),
        ("one_gpu_lost", {}, [0, 1, 3], [0, 1, 3]),
        ("a100_mig", {}, [0], [0]),
        ("mig_mixed", {"CUDA_VISIBLE_DEVICES": "0"}, [0], [1]),
    ],
)
def test_probe_pcie_opens_cuda_ordinals(name, env, opened, indexes):
    rec = Recorder()
    r = probe_pcie(probe_gpus(env, lib=scenario(name)).devices, opener=rec)
    assert rec.opened == opened
    assert [p.index for p in r.devices] == indexes
    assert [p.cuda_ordinal for p in r.devices] == opened


def test_probe_pcie_skips_a_gpu_cuda_cannot_see():
    rec = Recorder()
    r = probe_pcie(probe_gpus({}, lib=scenario("mig_mixed")).devices, opener=rec)
    assert rec.opened == [0]  # the one visible MIG leaf
    assert [p.cuda_ordinal for p in r.devices] == [0, None, None]
    assert "not visible to CUDA" in r.devices[1].notes[0]


def test_collect_hands_ordinals_to_both_cuda_probes(monkeypatch):
    env = {"CUDA_VISIBLE_DEVICES": "3,1"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    seen: dict[str, object] = {}
    monkeypatch.setattr(collect_mod, "probe_gpus", lambda e: lost(dict(e)))

    def pinned(**kw):
        seen["pinned"] = kw["cuda_ordinal"]
        return collect_mod._no_pinned(kw["cap_bytes"], "recorded")

    rec = Recorder()
    monkeypatch.setattr(collect_mod, "probe_pinned", pinned)
    monkeypatch.setattr(collect_mod, "probe_pcie", lambda devs: probe_pcie(devs, opener=rec))
    opts = ProbeOptions(
        bench=False, bench_dir=None, force_bench=False, cache_dir=None, measure_cpu_bandwidth=False
    )
    hw = collect_hardware(env, opts)
    assert seen["pinned"] == 0 and rec.opened == [0, 1]
    assert [p.index for p in hw.pcie.devices] == [3, 1]
    assert not any("differs" in n for n in hw.pcie.notes)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # the probe's own CUDA would see another GPU
    assert any("differs" in n for n in collect_hardware(env, opts).pcie.notes)


# -- the profile carries it -----------------------------------------------------------------------


def test_profile_serialises_cuda_ordinal_and_reads_old_profiles_without_it():
    hw = collect_mod.simulated_hardware("a100-80gb:2x3g.40gb", None)
    doc = profile_to_dict(make_profile(hw, simulated="a100-80gb:2x3g.40gb"))
    gpu = doc["hardware"]["gpus"]["devices"][0]
    assert gpu["cuda_ordinal"] is None
    assert [m["cuda_ordinal"] for m in gpu["mig_devices"]] == [0, None]
    assert profile_from_dict(doc).hardware.gpus.devices[0].mig_devices[0].cuda_ordinal == 0
    # A profile written before the field existed still reads (cuda_ordinal then None).
    del gpu["cuda_ordinal"]
    for m in gpu["mig_devices"]:
        del m["cuda_ordinal"]
    old = profile_from_dict(doc)
    assert old.hardware.gpus.devices[0].mig_devices[0].cuda_ordinal is None


def test_simulated_cards_are_numbered_in_order():
    r = simulate("4xl4").gpus
    assert [(d.index, d.cuda_ordinal) for d in r.devices] == [(i, i) for i in range(4)]
