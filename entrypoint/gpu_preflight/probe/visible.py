"""Which GPUs this process may use, and what CUDA calls them: ``NVIDIA_VISIBLE_DEVICES``, ``CUDA_VISIBLE_DEVICES``.

Two numberings, kept side by side (as nvitop's ``CudaDevice`` keeps ``nvml_index`` and
``cuda_index``, nvitop/api/device.py):

- the **NVML index** (``GpuDevice.index``): nvidia-smi's numbering, PCI bus order, counting every
  GPU NVML counts, *including one it cannot open* (lost, fallen off the bus): that GPU keeps its
  index and becomes a ``GpuError`` entry, so GPU 3 stays GPU 3 when GPU 2 is lost;
- the **CUDA ordinal** (``cuda_ordinal``): the number the engine's CUDA gives a device in a process
  with this ``CUDA_VISIBLE_DEVICES``: 0..n-1 in the selection's order. It is what ``cuDeviceGet``
  takes and what llama.cpp calls ``CUDA0``, ``CUDA1`` (``--device``, ``--main-gpu``, and the order
  of ``--tensor-split``); vLLM's ``cuda:N`` is the same number.

How the variables map NVML devices to CUDA ordinals:

- ``NVIDIA_VISIBLE_DEVICES`` is read by the NVIDIA Container Toolkit when the container starts: it
  mounts only those GPUs, and NVML inside then sees only them, renumbered from 0 in bus order (the
  list filters, it does not reorder). So index lists are applied only when NVML still sees more
  GPUs than were listed (a privileged container, or the host); UUIDs are always applied. ``all`` =
  everything, ``none`` = no GPU (driver libraries only), ``void`` or empty = no effect.
- ``CUDA_VISIBLE_DEVICES`` then filters *and reorders* what the process's CUDA sees. An index
  names a GPU by the NVML index of what is left (nvidia-smi's number, lost GPUs counted); a
  ``GPU-`` entry is a UUID prefix that must match one GPU; a ``MIG-`` entry is a MIG device's
  UUID. CUDA stops at the first entry that matches nothing and ignores the rest. Empty or ``-1``
  = no GPU. ``CUDA_VISIBLE_DEVICES=2`` on a machine whose GPU 2 is lost selects that lost GPU:
  no usable GPU, and a note says so; ``=3`` selects GPU 3, which is then CUDA ordinal 0.
- A selected GPU that answered an error keeps its place in CUDA's order (its ``GpuError`` carries
  the ordinal), so the GPUs after it are numbered after it. Whether a driver still enumerates a
  lost GPU is not documented; a note asks for UUIDs, which mean the same thing either way.
- MIG: CUDA enumerates a single MIG device per process (MIG user guide, "CUDA device
  enumeration"), and once one is visible no other GPU is (nvitop's _parse_cuda_visible_devices,
  datadog-agent pkg/gpu/cuda/env.go keepEitherFirstMIGOrAllDevices). The first ``MIG-`` entry
  wins; otherwise the first MIG-enabled GPU listed shows its first MIG device. That leaf gets
  ordinal 0, every other device None. CUDA also numbers MIG-enabled GPUs after all the others when
  it resolves an index (env.go adjustVisibleDevicesForMigDevices); this module does the same.
- Caveat, ``CUDA_DEVICE_ORDER``: CUDA numbers GPUs fastest first unless
  ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; NVML always numbers by PCI bus. The two agree on a machine of
  identical GPUs, and may not on mixed ones. The ordinals here assume bus order, and the GPU probe
  adds a note when mixed GPUs are visible and the variable is not ``PCI_BUS_ID``.

A malformed value raises ``VisibleDevicesError`` naming the variable, the value and the syntax.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from gpu_preflight.errors import InvalidInput

_INDEX = re.compile(r"^[0-9]+$")
_MIG_INDEX = re.compile(r"^[0-9]+:[0-9]+$")
_GPU_UUID = re.compile(r"^GPU-[0-9a-fA-F-]+$")
_MIG_UUID = re.compile(r"^MIG-(GPU-[0-9a-fA-F-]+/[0-9]+/[0-9]+|[0-9a-fA-F-]+)$")

ACCEPTED = (
    "'all', 'none', 'void', or a comma-separated list of GPU indexes (0,1), "
    "GPU UUIDs (GPU-8f6e...), MIG UUIDs (MIG-...) or MIG indexes (0:1)"
)


class VisibleDevicesError(InvalidInput):
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

    position: int  # 0-based position in the list being filtered (the NVML index, at first)
    uuid: str | None
    mig_uuids: tuple[str, ...]
    mig_enabled: bool = False


@dataclass(frozen=True)
class Pick:
    position: int
    mig_uuid: str | None  # set when a MIG device of that GPU was named
    mig_position: int | None = None


def cuda_index_order(devices: Sequence[DeviceKey]) -> list[DeviceKey]:
    """The order in which CUDA resolves an index: MIG-enabled GPUs last, those without MIG devices
    dropped (datadog-agent pkg/gpu/cuda/env.go adjustVisibleDevicesForMigDevices)."""
    plain = [d for d in devices if not d.mig_enabled]
    return plain + [d for d in devices if d.mig_enabled and d.mig_uuids]


def apply(sel: Selection, devices: list[DeviceKey]) -> list[Pick]:
    """The devices the selection keeps, in the order the process will see them."""
    if sel.kind == "all":
        return [Pick(d.position, None) for d in devices]
    if sel.kind == "none":
        return []
    if sel.variable == "NVIDIA_VISIBLE_DEVICES":
        indexes_only = all(_INDEX.match(e) or _MIG_INDEX.match(e) for e in sel.entries)
        if indexes_only and len(devices) <= len(sel.entries):
            # The runtime already mounted exactly these and NVML renumbered them from 0.
            return [Pick(d.position, None) for d in devices]
        hits = [p for p in (_match(e, devices, devices) for e in sel.entries) if p is not None]
        # The toolkit mounts device nodes; the driver inside still numbers them by bus order.
        return sorted(hits, key=lambda p: (p.position, p.mig_position or 0))
    by_index = cuda_index_order(devices)
    picks: list[Pick] = []
    for e in sel.entries:
        pick = _match(e, devices, by_index)
        if pick is None:
            break  # CUDA ignores everything from the first entry it cannot match
        picks.append(pick)
    return picks


def _match(entry: str, devices: Sequence[DeviceKey], by_index: Sequence[DeviceKey]) -> Pick | None:
    if _INDEX.match(entry):
        i = int(entry)
        return Pick(by_index[i].position, None) if i < len(by_index) else None
    if _MIG_INDEX.match(entry):
        gpu, mig = (int(x) for x in entry.split(":"))
        if gpu < len(devices) and mig < len(devices[gpu].mig_uuids):
            return Pick(devices[gpu].position, devices[gpu].mig_uuids[mig], mig)
        return None
    if entry.startswith("GPU-"):
        hits = [d for d in devices if d.uuid and d.uuid.lower().startswith(entry.lower())]
        return Pick(hits[0].position, None) if len(hits) == 1 else None
    for d in devices:
        for j, m in enumerate(d.mig_uuids):
            if m.lower() == entry.lower():
                return Pick(d.position, m, j)
    return None


@dataclass(frozen=True)
class Numbered:
    """A kept device with the CUDA ordinal it gets, and the MIG leaf that carries it."""

    position: int  # into the list that was numbered
    ordinal: int | None  # None: CUDA does not enumerate it in this process
    mig_uuid: str | None = None  # the MIG leaf that is the CUDA device (ordinal set)


def cuda_numbering(kept: Sequence[tuple[DeviceKey, str | None]]) -> list[Numbered]:
    """CUDA ordinals for the kept devices, given in the selection's order with any MIG leaf the
    selection named. One MIG device per process, and then nothing else (see the module notes)."""
    named = next((i for i, (_, mig) in enumerate(kept) if mig is not None), None)
    if named is None:
        named = next((i for i, (k, _) in enumerate(kept) if k.mig_enabled and k.mig_uuids), None)
    if named is not None:
        key, mig = kept[named]
        leaf = mig if mig is not None else key.mig_uuids[0]
        return [Numbered(i, 0, leaf) if i == named else Numbered(i, None) for i in range(len(kept))]
    out: list[Numbered] = []
    n = 0
    for i, (key, _) in enumerate(kept):
        if key.mig_enabled:  # MIG on, no MIG device: nothing CUDA can run on
            out.append(Numbered(i, None))
            continue
        out.append(Numbered(i, n))
        n += 1
    return out
