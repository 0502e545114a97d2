"""Which GPUs this process may use: ``NVIDIA_VISIBLE_DEVICES`` and ``CUDA_VISIBLE_DEVICES``.

- ``NVIDIA_VISIBLE_DEVICES`` is read by the NVIDIA Container Toolkit when the container starts: it
  mounts only those GPUs, and NVML inside then sees only them, renumbered from 0. So index lists
  are applied only when NVML still sees more GPUs than were listed (a privileged container, or the
  host); UUIDs are always applied. ``all`` = everything, ``none`` = no GPU (driver libraries only),
  ``void`` or empty = the variable has no effect.
- ``CUDA_VISIBLE_DEVICES`` then filters *and reorders* what the process's CUDA sees: indexes
  (relative to what is visible), ``GPU-`` UUID prefixes, ``MIG-`` UUIDs. Empty or ``-1`` = no GPU.
  Note: CUDA numbers GPUs fastest-first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; NVML numbers by
  PCI bus. Indexes here follow NVML's order, as nvidia-smi shows them.

A malformed value raises ``VisibleDevicesError`` naming the variable, the value and the syntax.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

_INDEX = re.compile(r"^[0-9]+$")
_MIG_INDEX = re.compile(r"^[0-9]+:[0-9]+$")
_GPU_UUID = re.compile(r"^GPU-[0-9a-fA-F-]+$")
_MIG_UUID = re.compile(r"^MIG-(GPU-[0-9a-fA-F-]+/[0-9]+/[0-9]+|[0-9a-fA-F-]+)$")

ACCEPTED = (
    "'all', 'none', 'void', or a comma-separated list of GPU indexes (0,1), "
    "GPU UUIDs (GPU-8f6e...), MIG UUIDs (MIG-...) or MIG indexes (0:1)"
)


class VisibleDevicesError(ValueError):
    def __init__(self, variable: str, value: str, why: str) -> None:
        self.variable = variable
        self.value = value
        super().__init__(f"{variable}={value!r} is not valid: {why}. Accepted: {ACCEPTED}.")


@dataclass(frozen=True)
class Selection:
    variable: str
    raw: str
    kind: Literal["all", "none", "list"]
    entries: tuple[str, ...] = ()


def parse_selection(variable: str, raw: str) -> Selection | None:
    """None when the variable has no effect (unset for NVIDIA_VISIBLE_DEVICES's 'void')."""
    text = raw.strip()
    low = text.lower()
    if variable == "NVIDIA_VISIBLE_DEVICES" and low in ("", "void"):
        return None
    if low == "all":
        return Selection(variable, raw, "all")
    if low == "none" or (variable == "CUDA_VISIBLE_DEVICES" and low in ("", "-1")):
        return Selection(variable, raw, "none")
    entries = tuple(e.strip() for e in text.split(","))
    for e in entries:
        if not e:
            raise VisibleDevicesError(variable, raw, "an empty entry between commas")
        if not (_INDEX.match(e) or _MIG_INDEX.match(e) or _GPU_UUID.match(e) or _MIG_UUID.match(e)):
            raise VisibleDevicesError(variable, raw, f"{e!r} is not an index, GPU- or MIG- UUID")
    if len(set(entries)) != len(entries):
        raise VisibleDevicesError(variable, raw, "a device is listed twice")
    return Selection(variable, raw, "list", entries)


def selections(env: Mapping[str, str]) -> tuple[Selection, ...]:
    out = []
    for var in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        if var in env:
            sel = parse_selection(var, env[var])
            if sel is not None:
                out.append(sel)
    return tuple(out)


@dataclass(frozen=True)
class DeviceKey:
    """What a selection can match a GPU by."""

    position: int  # 0-based position in the list being filtered
    uuid: str | None
    mig_uuids: tuple[str, ...]


@dataclass(frozen=True)
class Pick:
    position: int
    mig_uuid: str | None  # set when a MIG device of that GPU was named
    mig_position: int | None = None


def apply(sel: Selection, devices: list[DeviceKey]) -> list[Pick]:
    """The devices the selection keeps, in the selection's order (CUDA reorders)."""
    if sel.kind == "all":
        return [Pick(d.position, None) for d in devices]
    if sel.kind == "none":
        return []
    if (
        sel.variable == "NVIDIA_VISIBLE_DEVICES"
        and all(_INDEX.match(e) or _MIG_INDEX.match(e) for e in sel.entries)
        and len(devices) <= len(sel.entries)
    ):
        # The runtime already mounted exactly these and NVML renumbered them from 0.
        return [Pick(d.position, None) for d in devices]
    picks: list[Pick] = []
    for e in sel.entries:
        pick = _match(e, devices)
        if pick is None:
            if sel.variable == "CUDA_VISIBLE_DEVICES":
                break  # CUDA ignores everything from the first entry it cannot match
            continue
        picks.append(pick)
    return picks


def _match(entry: str, devices: list[DeviceKey]) -> Pick | None:
    if _INDEX.match(entry):
        i = int(entry)
        return Pick(i, None) if i < len(devices) else None
    if _MIG_INDEX.match(entry):
        gpu, mig = (int(x) for x in entry.split(":"))
        if gpu < len(devices) and mig < len(devices[gpu].mig_uuids):
            return Pick(gpu, devices[gpu].mig_uuids[mig], mig)
        return None
    if entry.startswith("GPU-"):
        hits = [d for d in devices if d.uuid and d.uuid.lower().startswith(entry.lower())]
        return Pick(hits[0].position, None) if len(hits) == 1 else None
    for d in devices:
        for j, m in enumerate(d.mig_uuids):
            if m.lower() == entry.lower():
                return Pick(d.position, m, j)
    return None
