"""A recorded NVML: answers the pynvml calls the GPU probe makes from a scenario document.

This is the hardware edge and nothing more: values come from recorded device facts (scenario
files under tests/fixtures/nvml/, or a catalog card for --simulate), and failures are raised as
the *real* pynvml error classes, so the probe's error handling runs exactly as on a machine.
Scenario format: schemas/nvml-scenario.schema.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynvml

from gpu_preflight.boundedio import FileInputError, read_json, shorten
from gpu_preflight.errors import InvalidInput
from gpu_preflight.schemas import validate

MIB = 2**20
MAX_DEVICES = 64  # devices, and MIG devices per GPU (real: 16 GPUs per node, 7 MIG slices)
MAX_INT = 2**62  # any count or size; memory_mib at most MAX_MEMORY_MIB
MAX_MEMORY_MIB = 2**30  # 1 PiB per device


SCENARIO_ACCEPTED = "a recorded NVML scenario JSON file (schemas/nvml-scenario.schema.json)"


class ScenarioError(InvalidInput):
    """A scenario file that cannot be used; the message names the file and the problem."""


def _error(name: str) -> pynvml.NVMLError:
    cls = getattr(pynvml, f"NVMLError_{name}", None)
    if not isinstance(cls, type):
        raise ScenarioError(f"unknown NVML error name {name!r}")
    return cls()


@dataclass
class _Memory:
    total: int
    free: int
    used: int
    reserved: int | None = None
    version: int | None = None


@dataclass(frozen=True)
class _Handle:
    device: dict[str, Any]
    parent: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Process:
    pid: int
    usedGpuMemory: int


class FakeNvml:
    """Module-like: the subset of pynvml the probe uses, driven by a scenario dict."""

    SIMULATED = True
    NVMLError = pynvml.NVMLError
    nvmlMemory_v2 = pynvml.nvmlMemory_v2

    def __init__(self, scenario: dict[str, Any]) -> None:
        self.scenario = scenario
        self.initialised = 0
        for name in dir(pynvml):
            if name.startswith("NVMLError_"):
                setattr(self, name, getattr(pynvml, name))

    # -- library --------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        err = self.scenario.get("init_error")
        if err:
            raise _error(err)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    # The schema lets a scenario leave these out: the probe then sees what an old driver answers.
    def nvmlSystemGetDriverVersion(self) -> str:
        if "driver_version" not in self.scenario:
            raise _error("NotSupported")
        return str(self.scenario["driver_version"])

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        if "cuda_driver_version" not in self.scenario:
            raise _error("NotSupported")
        return int(self.scenario["cuda_driver_version"])

    def nvmlDeviceGetCount(self) -> int:
        return len(self.scenario["devices"])

    def nvmlDeviceGetHandleByIndex(self, i: int) -> _Handle:
        devices = self.scenario["devices"]
        if i >= len(devices):
            raise _error("InvalidArgument")
        dev = devices[i]
        if dev.get("handle_error"):
            raise _error(dev["handle_error"])
        return _Handle(dev)

    # -- per device -----------------------------------------------------------------------
    def _get(self, h: _Handle, key: str) -> Any:
        dev = h.device
        if dev.get("lost"):
            raise _error("GpuIsLost")
        errors = dev.get("errors", {})
        if key in errors:
            raise _error(errors[key])
        if key not in dev:
            raise _error("NotSupported")
        return dev[key]

    def nvmlDeviceGetUUID(self, h: _Handle) -> str:
        return str(self._get(h, "uuid"))

    def nvmlDeviceGetName(self, h: _Handle) -> str:
        return str(self._get(h, "name"))

    def nvmlDeviceGetMemoryInfo(self, h: _Handle, version: int | None = None) -> _Memory:
        mem = self._get(h, "memory_mib")
        if version is not None:
            if not self.scenario.get("memory_v2", True):
                raise _error("FunctionNotFound")
            # v2 reports `reserved` separately; `used` excludes it.
            return _Memory(
                mem["total"] * MIB,
                mem["free"] * MIB,
                mem["used"] * MIB,
                mem.get("reserved", 0) * MIB,
                version,
            )
        # v1 folds the driver's reservation into `used`.
        return _Memory(
            mem["total"] * MIB, mem["free"] * MIB, (mem["used"] + mem.get("reserved", 0)) * MIB
        )

    def nvmlDeviceGetCudaComputeCapability(self, h: _Handle) -> tuple[int, int]:
        cc = self._get(h, "compute_capability")
        return int(cc[0]), int(cc[1])

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: _Handle) -> int:
        return int(self._get(h, "pcie_gen_current"))

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: _Handle) -> int:
        return int(self._get(h, "pcie_gen_max"))

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: _Handle) -> int:
        return int(self._get(h, "pcie_width_current"))

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: _Handle) -> int:
        return int(self._get(h, "pcie_width_max"))

    def nvmlDeviceGetPowerManagementLimit(self, h: _Handle) -> int:
        return int(self._get(h, "power_limit_mw"))

    def nvmlDeviceGetMigMode(self, h: _Handle) -> tuple[int, int]:
        mode = self._get(h, "mig_mode")
        return int(mode[0]), int(mode[1])

    def nvmlDeviceGetMaxMigDeviceCount(self, h: _Handle) -> int:
        return int(self._get(h, "max_mig_devices"))

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: _Handle, j: int) -> _Handle:
        migs = self._get(h, "mig_devices")
        if j >= len(migs):
            raise _error("NotFound")
        return _Handle(migs[j], h.device)

    def nvmlDeviceGetGpuInstanceId(self, h: _Handle) -> int:
        return int(self._get(h, "gpu_instance_id"))

    def nvmlDeviceGetComputeInstanceId(self, h: _Handle) -> int:
        return int(self._get(h, "compute_instance_id"))

    # -- what a running engine uses (probe/usage.py) ------------------------------------
    def nvmlDeviceGetComputeRunningProcesses(self, h: _Handle) -> list[_Process]:
        return [_Process(int(p["pid"]), int(p["used_mib"]) * MIB) for p in self._get(h, "processes")]

    def nvmlDeviceGetTemperature(self, h: _Handle, sensor: int = 0) -> float:
        return float(self._get(h, "temperature_c"))

    def nvmlDeviceGetPowerUsage(self, h: _Handle) -> int:
        return int(self._get(h, "power_mw"))


def _check_bounds(doc: dict[str, Any], origin: str) -> None:
    """What the schema leaves open: device counts, integer sizes, NVML error names."""
    devices = doc["devices"]
    if len(devices) > MAX_DEVICES:
        raise ScenarioError(
            f"{origin}: devices: {len(devices)} devices. Accepted: at most {MAX_DEVICES}."
        )
    names: list[tuple[str, Any]] = [("init_error", doc.get("init_error"))]
    for i, dev in enumerate(devices):
        migs = dev.get("mig_devices", [])
        if len(migs) > MAX_DEVICES:
            raise ScenarioError(
                f"{origin}: devices[{i}].mig_devices: {len(migs)} MIG devices. Accepted: at most "
                f"{MAX_DEVICES}."
            )
        for where, d in [(f"devices[{i}]", dev)] + [
            (f"devices[{i}].mig_devices[{j}]", m) for j, m in enumerate(migs)
        ]:
            names.append((f"{where}.handle_error", d.get("handle_error")))
            names += [(f"{where}.errors.{k}", v) for k, v in d.get("errors", {}).items()]
            for k, v in d.get("memory_mib", {}).items():
                if v > MAX_MEMORY_MIB:
                    raise ScenarioError(
                        f"{origin}: {where}.memory_mib.{k}: {shorten(v)} is out of range. "
                        f"Accepted: 0 to {MAX_MEMORY_MIB} MiB."
                    )
    for where, name in names:
        if name and not isinstance(getattr(pynvml, f"NVMLError_{name}", None), type):
            raise ScenarioError(
                f"{origin}: {where}: {shorten(name)} is not an NVML error name. Accepted: a "
                "pynvml NVMLError_<Name> suffix, such as NotSupported, GpuIsLost, DriverNotLoaded."
            )
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(node))
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and abs(node) > MAX_INT:
            raise ScenarioError(
                f"{origin}: {where}: {shorten(node)} is out of range. Accepted: numbers of "
                "magnitude at most 2^62."
            )


def load_scenario(path: Path) -> dict[str, Any]:
    """A recorded scenario file, read with bounds: a FIFO or a device is refused unopened."""
    origin = str(path)
    try:
        doc = read_json(path, "scenario", origin)
    except FileInputError as exc:
        hint = "" if exc.accepted else f" Accepted: {SCENARIO_ACCEPTED}."
        raise ScenarioError(f"{exc}{hint}") from exc
    devices = doc.get("devices") if isinstance(doc, dict) else None
    if isinstance(devices, list) and len(devices) > MAX_DEVICES:  # before the (slow) schema check
        raise ScenarioError(
            f"{origin}: devices: {len(devices)} devices. Accepted: at most {MAX_DEVICES}."
        )
    try:
        validate("nvml-scenario", doc, origin)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from exc
    _check_bounds(doc, origin)
    return dict(doc)
