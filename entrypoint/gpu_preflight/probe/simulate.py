"""--simulate: the GPU report as if on other hardware, through the same probe code as a real run.

A spec is a catalog id (``rtx-4090``), N of them (``2xa100-80gb``), a MIG layout
(``a100-80gb:1g.10gb`` or ``a100-80gb:3x2g.20gb``), or a path to a recorded NVML scenario file.
Catalog specs are turned into a scenario and run through ``probe_gpus`` with the recorded-NVML
fake, so a simulated profile cannot drift from a real one.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_preflight.errors import InvalidInput
from gpu_preflight.gpu_catalog import GpuCatalog, GpuSpec, load_gpu_catalog
from gpu_preflight.probe.fake_nvml import FakeNvml, ScenarioError, load_scenario
from gpu_preflight.probe.gpu import probe_gpus
from gpu_preflight.profile_types import GpuReport, HostMemory, PlatformInfo
from gpu_preflight.serde import DecodeError, from_dict

_SPEC = re.compile(
    r"^(?:(?P<n>[0-9]+)x)?(?P<name>[a-z0-9-]+)(?::(?:(?P<k>[0-9]+)x)?(?P<mig>[0-9]g\.[0-9]+gb))?$"
)
SIM_DRIVER = "570.133.20"  # a real R570 production driver; CUDA 12.8
SIM_CUDA = 12080
MAX_GPUS = 16


class SimulateError(InvalidInput):
    """An unknown or malformed --simulate value; the message suggests the closest names."""


@dataclass(frozen=True)
class Simulation:
    gpus: GpuReport
    platform: PlatformInfo | None
    memory: HostMemory | None


def _uuid(tag: str) -> str:
    # Deterministic, real-shaped UUIDs so simulated profiles are reproducible.
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"gpu-preflight-sim/{tag}"))


def scenario_for(card: GpuSpec, count: int, mig: str | None, mig_count: int) -> dict[str, Any]:
    devices = []
    for i in range(count):
        used = card.memory_idle_used_mib
        reserved = card.memory_reserved_mib
        dev: dict[str, Any] = {
            "uuid": f"GPU-{_uuid(f'{card.id}/{i}')}",
            "name": card.nvml_name,
            "memory_mib": {
                "total": card.memory_total_mib,
                "used": used,
                "reserved": reserved,
                "free": card.memory_total_mib - used - reserved,
            },
            "compute_capability": [int(x) for x in card.compute_capability.split(".")],
            "pcie_gen_current": card.pcie_gen,
            "pcie_gen_max": card.pcie_gen,
            "pcie_width_current": card.pcie_width,
            "pcie_width_max": card.pcie_width,
            "power_limit_mw": int(card.power_limit_w * 1000),
            "mig_mode": [0, 0],
        }
        if not card.mig_profiles:
            dev.pop("mig_mode")  # GeForce answers NotSupported
        if mig is not None:
            profile = card.mig(mig)
            assert profile is not None
            dev["mig_mode"] = [1, 1]
            dev["max_mig_devices"] = 7
            dev["mig_devices"] = [
                {
                    "uuid": f"MIG-{_uuid(f'{card.id}/{i}/{mig}/{j}')}",
                    "name": f"{card.nvml_name} MIG {profile.name}",
                    "memory_mib": {
                        "total": profile.memory_mib,
                        "used": 13,
                        "free": profile.memory_mib - 13,
                    },
                    "gpu_instance_id": j + 1,
                    "compute_instance_id": 0,
                }
                for j in range(mig_count)
            ]
        devices.append(dev)
    return {
        "description": f"simulated {count}x {card.id}" + (f" MIG {mig_count}x{mig}" if mig else ""),
        "source": card.source,
        "driver_version": SIM_DRIVER,
        "cuda_driver_version": SIM_CUDA,
        "memory_v2": True,
        "devices": devices,
    }


def parse_spec(spec: str, catalog: GpuCatalog) -> dict[str, Any]:
    m = _SPEC.match(spec.strip().lower())
    if not m:
        raise SimulateError(
            f"{spec!r} is not NAME, NxNAME, NAME:MIG or a scenario file path; "
            "see `gpu-preflight gpus`"
        )
    card = catalog.find(m["name"])
    if card is None:
        close = catalog.suggest(m["name"])
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SimulateError(f"unknown GPU {m['name']!r}{hint} (`gpu-preflight gpus` lists them)")
    count = int(m["n"] or 1)
    if not 1 <= count <= MAX_GPUS:
        raise SimulateError(f"{count} GPUs: simulate 1 to {MAX_GPUS}")
    mig, k = m["mig"], int(m["k"] or 1)
    if mig is not None:
        profile = card.mig(mig)
        if profile is None:
            names = ", ".join(p.name for p in card.mig_profiles) or "none (this card has no MIG)"
            raise SimulateError(f"{card.id} has no MIG profile {mig!r}; it has: {names}")
        if not 1 <= k <= profile.max_count:
            raise SimulateError(f"{card.id} fits at most {profile.max_count} x {mig}, not {k}")
    return scenario_for(card, count, mig, k)


def parse_device_set(spec: str, catalog: GpuCatalog) -> dict[str, Any]:
    """Mixed cards: "rtx-4090,rtx-3060" or "2xa100-80gb,l4" -> one machine, in the listed order."""
    parts = [p.strip() for p in spec.split(",")]
    if any(not p for p in parts):
        raise SimulateError(f"{spec!r}: an empty entry between commas")
    devices: list[dict[str, Any]] = []
    for part in parts:
        for dev in parse_spec(part, catalog)["devices"]:
            # Each GPU of the machine has its own UUID, however often its model is listed.
            dev["uuid"] = f"GPU-{_uuid(f'{spec}/{len(devices)}')}"
            for j, mig in enumerate(dev.get("mig_devices", [])):
                mig["uuid"] = f"MIG-{_uuid(f'{spec}/{len(devices)}/{j}')}"
            devices.append(dev)
    if len(devices) > MAX_GPUS:
        raise SimulateError(f"{len(devices)} GPUs: simulate 1 to {MAX_GPUS}")
    return {
        "description": f"simulated {spec}",
        "source": "gpu-preflight's GPU catalog (data/gpus.json)",
        "driver_version": SIM_DRIVER,
        "cuda_driver_version": SIM_CUDA,
        "memory_v2": True,
        "devices": devices,
    }


def _exists(path: Path, regular: bool) -> bool:
    """Whether to read ``path`` as a scenario file: a regular file, or (for a value that cannot be
    a catalog spec) anything at all, so that load_scenario names a FIFO or a device as such."""
    try:
        return path.is_file() if regular else (path.exists() or path.is_symlink())
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


def simulate(spec: str, catalog: GpuCatalog | None = None) -> Simulation:
    catalog = catalog or load_gpu_catalog()
    path = Path(spec)
    # A path is read as a scenario file (load_scenario refuses FIFOs and devices unopened);
    # anything that looks like a catalog spec and is not an existing path is a catalog spec.
    catalog_like = _SPEC.match(spec.strip().lower()) is not None
    if spec.endswith(".json") or _exists(path, regular=catalog_like):
        try:
            scenario = load_scenario(path)
        except ScenarioError as exc:
            raise SimulateError(str(exc)) from exc
    elif "," in spec:
        scenario = parse_device_set(spec, catalog)
    else:
        scenario = parse_spec(spec, catalog)
    report = probe_gpus({}, lib=FakeNvml(scenario), catalog=catalog)
    try:
        platform = from_dict(PlatformInfo, scenario["platform"]) if "platform" in scenario else None
        memory = from_dict(HostMemory, scenario["memory"]) if "memory" in scenario else None
    except DecodeError as exc:
        raise SimulateError(f"{spec}: {exc}") from exc
    return Simulation(report, platform, memory)
