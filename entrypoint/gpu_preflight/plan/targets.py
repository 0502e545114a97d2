"""What the plan can place memory on: GPU leaves (MIG slices count as their own device) and host RAM."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpu_preflight.profile_types import GpuDevice, GpuError, Profile

MIB = 2**20
GIB = 2**30
# Kept free on every GPU on top of the predicted components: allocator fragmentation and the
# driver's own growth during the first requests. 2% of the card, at least 512 MiB.
GPU_MARGIN_FRACTION = 0.02
GPU_MARGIN_MIN = 512 * MIB
# Host RAM kept for the OS, the page cache of the model file and the server process itself.
HOST_MARGIN_FRACTION = 0.05
HOST_MARGIN_MIN = 1 * GIB
MIN_COMPUTE_CAPABILITY_VLLM = (7, 0)  # vLLM's CUDA kernels need Volta or newer


@dataclass(frozen=True)
class GpuTarget:
    label: str  # "NVIDIA GeForce RTX 4090 (GPU 0)"
    name: str
    index: int
    total_bytes: int
    free_bytes: int
    usable_bytes: int  # free - reserve - margin (never below 0)
    margin_bytes: int
    bandwidth_gb_s: float | None
    compute_capability: tuple[int, int] | None
    mig: bool
    reserved_bytes: int | None = None  # NVML v2 "reserved": driver memory outside free and used
    # The engine's device number (llama.cpp's CUDA<n>, cuDeviceGet's ordinal): the position in
    # the CUDA_VISIBLE_DEVICES order, which differs from the NVML index when it reorders or a
    # GPU is lost (probe/visible.py).
    cuda_ordinal: int = 0
    uuid: str | None = None  # NVML's GPU-... UUID (None when not probed)


@dataclass(frozen=True)
class HostTarget:
    usable_bytes: int | None  # None: RAM unknown
    pinned_ceiling_bytes: int | None
    bandwidth_gb_s: float | None
    wsl2: bool
    uvm_oversubscription: bool | None
    # CUDA devices this process enumerates (planned or not: a GPU whose memory is unknown, one
    # that answered an error): more than the plan uses means llama.cpp must be told which
    # (--device), since it spreads over every device it sees.
    cuda_devices: int = 0


@dataclass(frozen=True)
class Targets:
    gpus: tuple[GpuTarget, ...]  # every usable leaf, largest usable first
    host: HostTarget
    notes: tuple[str, ...]


def gpu_margin(total_bytes: int) -> int:
    return max(GPU_MARGIN_MIN, int(total_bytes * GPU_MARGIN_FRACTION))


def _cc(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    major, _, minor = text.partition(".")
    return (int(major), int(minor or 0))


def _leaves(
    dev: GpuDevice, reserve: int, position: int | None, extra_margin: int = 0
) -> tuple[list[GpuTarget], list[str]]:
    """The device's plannable leaves. ``position``: the ordinal to assume for a profile written
    before ordinals were recorded (None: use the recorded ones)."""
    notes: list[str] = []
    name = dev.name or f"GPU {dev.index}"
    if dev.mig_enabled and dev.mig_devices:
        out = []
        for mig in dev.mig_devices:
            ordinal = mig.cuda_ordinal if position is None else position
            if ordinal is None:
                notes.append(
                    f"MIG device {mig.mig_index} on GPU {dev.index}: not visible to CUDA in this "
                    "process (a CUDA process sees one MIG device; name its MIG- UUID in "
                    "CUDA_VISIBLE_DEVICES to use it), not planned on"
                )
                continue
            if mig.total_bytes is None or mig.free_bytes is None:
                notes.append(
                    f"MIG device {mig.mig_index} on GPU {dev.index}: memory unknown, skipped"
                )
                continue
            bw = None
            if dev.memory_bandwidth_gb_s and dev.total_bytes:
                # A MIG slice gets the memory controllers of its memory slices: bandwidth ~ its share.
                bw = dev.memory_bandwidth_gb_s * mig.total_bytes / dev.total_bytes
            margin = gpu_margin(mig.total_bytes) + extra_margin
            out.append(
                GpuTarget(
                    label=f"{mig.name or 'MIG device'} on {name} (GPU {dev.index}, MIG {mig.mig_index})",
                    name=mig.name or "MIG",
                    index=dev.index,
                    total_bytes=mig.total_bytes,
                    free_bytes=mig.free_bytes,
                    usable_bytes=max(0, mig.free_bytes - reserve - margin),
                    margin_bytes=margin,
                    bandwidth_gb_s=bw,
                    compute_capability=_cc(dev.compute_capability),
                    mig=True,
                    cuda_ordinal=ordinal,
                )
            )
        return out, notes
    if dev.mig_enabled:
        notes.append(
            f"GPU {dev.index} ({name}) has MIG enabled but no MIG device is visible: nothing can run "
            "on it until a GPU instance is created (nvidia-smi mig -cgi ... -C)"
        )
        return [], notes
    if dev.total_bytes is None or dev.free_bytes is None:
        notes.append(f"GPU {dev.index} ({name}): memory size unknown, not planned on")
        return [], notes
    ordinal = dev.cuda_ordinal if position is None else position
    if ordinal is None:
        notes.append(
            f"GPU {dev.index} ({name}): not visible to CUDA in this process, not planned on"
        )
        return [], notes
    margin = gpu_margin(dev.total_bytes) + extra_margin
    target = GpuTarget(
        label=f"{name} (GPU {dev.index})",
        name=name,
        index=dev.index,
        total_bytes=dev.total_bytes,
        free_bytes=dev.free_bytes,
        usable_bytes=max(0, dev.free_bytes - reserve - margin),
        margin_bytes=margin,
        bandwidth_gb_s=dev.memory_bandwidth_gb_s,
        compute_capability=_cc(dev.compute_capability),
        mig=False,
        reserved_bytes=dev.reserved_bytes,
        cuda_ordinal=ordinal,
        uuid=dev.uuid,
    )
    return [target], notes


def build_targets(
    profile: Profile,
    reserve_bytes: int,
    extra_gpu_margin: int = 0,
    extra_host_margin: int = 0,
    on: frozenset[int] | None = None,
) -> Targets:
    """``extra_*_margin``: kept free on top of the fixed margins because a receipt measured more
    than its plan predicted (receipt/calibrate.py ``widening``). ``on``: the NVML indices of the
    GPUs this plan may use (None: all); the others stay in the CUDA count, since this process
    still sees them (an engine not told which devices to use opens them too)."""
    hw = profile.hardware
    gpus: list[GpuTarget] = []
    notes: list[str] = []
    # A profile from before ordinals were recorded has none anywhere: its devices are in the
    # order the engine numbers them (the behaviour of that version).
    legacy = bool(hw.gpus.devices) and all(
        d.cuda_ordinal is None and all(m.cuda_ordinal is None for m in d.mig_devices)
        for d in hw.gpus.devices
    )
    if legacy:
        notes.append("the profile records no CUDA ordinals: devices taken in their listed order")
    for pos, dev in enumerate(hw.gpus.devices):
        if on is not None and dev.index not in on:
            notes.append(
                f"GPU {dev.index} ({dev.name or 'unknown'}) is not planned on: this plan is for "
                f"GPU {', '.join(str(i) for i in sorted(on))} alone"
            )
            continue
        leaves, why = _leaves(dev, reserve_bytes, pos if legacy else None, extra_gpu_margin)
        gpus += leaves
        notes += why
    for err in hw.gpus.errors:
        notes.append(f"GPU {err.index} answered an error and is not planned on: {err.error}")
    gpus.sort(key=lambda g: (-g.usable_bytes, g.index))

    mem = hw.memory
    avail = mem.effective_available_bytes
    host_usable = None
    if avail is not None:
        total = mem.effective_total_bytes or avail
        host_margin = max(HOST_MARGIN_MIN, int(total * HOST_MARGIN_FRACTION)) + extra_host_margin
        host_usable = max(0, avail - host_margin)
    host = HostTarget(
        usable_bytes=host_usable,
        pinned_ceiling_bytes=hw.pinned.ceiling_bytes,
        bandwidth_gb_s=mem.cpu_memory_bandwidth_gb_s,
        wsl2=bool(hw.platform.wsl2),
        uvm_oversubscription=hw.platform.uvm_oversubscription,
        cuda_devices=_cuda_devices(hw.gpus.devices, hw.gpus.errors),
    )
    return Targets(gpus=tuple(gpus), host=host, notes=tuple(notes))


def _cuda_devices(devices: Sequence[GpuDevice], errors: Sequence[GpuError]) -> int:
    """How many devices this process's CUDA numbers: one past the highest ordinal (a MIG device
    is the only one when visible, probe/visible.py)."""
    ordinals = [d.cuda_ordinal for d in devices if d.cuda_ordinal is not None]
    ordinals += [
        m.cuda_ordinal for d in devices for m in d.mig_devices if m.cuda_ordinal is not None
    ]
    ordinals += [e.cuda_ordinal for e in errors if e.cuda_ordinal is not None]
    return max(ordinals) + 1 if ordinals else 0
