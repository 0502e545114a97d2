"""The facts every probe returns: frozen dataclasses that serialise 1:1 to schemas/profile.schema.json.

Conventions (shared by every probe):
- Units are in the field name (``total_bytes``, ``seq_read_mib_s``); no bare numbers.
- Unknown is ``None`` and a sentence in ``notes`` says why, in words a user can act on.
- ``source``/``*_source`` says where a measured value came from (one of ``Source``).
- Probes never raise: a failure becomes ``None`` plus a note, or an error entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: Where a value came from. Kept in sync with the ``source`` enum in schemas/profile.schema.json.
Source = Literal[
    "nvml-v2",
    "nvml-v1",
    "nvml",
    "nvidia-smi",
    "psutil",
    "procfs",
    "cgroup-v1",
    "cgroup-v2",
    "fio",
    "cuda-driver",
    "measured",
    "catalog",
    "simulated",
    "cache",
]


@dataclass(frozen=True)
class MigDevice:
    """One MIG leaf device (a GPU instance + compute instance) with its own memory."""

    uuid: str | None
    name: str | None
    parent_index: int
    mig_index: int
    gpu_instance_id: int | None
    compute_instance_id: int | None
    total_bytes: int | None
    free_bytes: int | None
    used_bytes: int | None
    memory_source: Source | None
    notes: tuple[str, ...] = ()
    # What cuDeviceGet and llama.cpp's CUDA<n> call this leaf in a process with this
    # CUDA_VISIBLE_DEVICES; None when CUDA would not enumerate it (one MIG device per process).
    cuda_ordinal: int | None = None


@dataclass(frozen=True)
class GpuDevice:
    """One physical GPU as NVML (or nvidia-smi) reports it.

    ``index`` is NVML's index (nvidia-smi's numbering, PCI bus order); ``cuda_ordinal`` is the
    number CUDA gives it in a process with the same ``CUDA_VISIBLE_DEVICES`` (cuDeviceGet's
    argument, llama.cpp's ``CUDA<n>``). They differ as soon as the selection skips or reorders
    GPUs. See probe/visible.py for how one is mapped to the other.
    """

    index: int
    uuid: str | None
    name: str | None
    total_bytes: int | None
    free_bytes: int | None
    used_bytes: int | None
    reserved_bytes: int | None
    memory_source: Source | None
    compute_capability: str | None  # "8.9"
    pcie_gen_current: int | None
    pcie_gen_max: int | None
    pcie_width_current: int | None
    pcie_width_max: int | None
    power_limit_watts: float | None
    mig_enabled: bool | None
    mig_devices: tuple[MigDevice, ...] = ()
    # Not readable through NVML: filled from the GPU catalog by name, source "catalog".
    memory_bandwidth_gb_s: float | None = None
    memory_bandwidth_source: Source | None = None
    notes: tuple[str, ...] = ()
    # None: CUDA would not enumerate this GPU here (MIG enabled: its MIG leaf carries the
    # ordinal instead; or hidden because a MIG device is visible), or not probed (simulated file).
    cuda_ordinal: int | None = None


@dataclass(frozen=True)
class GpuError:
    """A GPU that exists but answered an error (lost, fallen off the bus, ...)."""

    index: int
    error: str
    uuid: str | None = None
    # The CUDA number this GPU takes in CUDA_VISIBLE_DEVICES's order when it is selected: it
    # keeps its place, so the GPUs after it are numbered after it (see probe/visible.py).
    cuda_ordinal: int | None = None


@dataclass(frozen=True)
class GpuReport:
    devices: tuple[GpuDevice, ...]
    errors: tuple[GpuError, ...]
    driver_version: str | None
    cuda_driver_version: str | None  # "12.4": the highest CUDA the driver supports
    source: Source | None  # nvml / nvidia-smi / simulated; None when nothing answered
    # The raw selection from CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES, None when unset.
    visible_devices: str | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlatformInfo:
    in_container: bool | None
    container_runtime: str | None  # docker, podman, containerd, kubernetes, lxc, ...
    nvidia_runtime: bool | None  # NVIDIA Container Toolkit wired the driver in
    wsl2: bool | None
    kernel_release: str | None
    dxg_present: bool | None  # /dev/dxg: the WSL2 GPU paravirtualisation device
    wsl_lib_present: bool | None  # /usr/lib/wsl/lib: the Windows driver's user-space libraries
    # CUDA unified memory may exceed VRAM (native Linux with nvidia-uvm); False on WSL2.
    uvm_oversubscription: bool | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostMemory:
    total_bytes: int | None  # the machine's RAM
    available_bytes: int | None
    memory_source: Source | None
    cgroup_version: int | None
    cgroup_limit_bytes: int | None  # None: no limit set (or unknown: see notes)
    cgroup_usage_bytes: int | None
    # What a process here may really use: the cgroup limit wins over the host figure.
    effective_total_bytes: int | None
    effective_available_bytes: int | None
    swap_total_bytes: int | None
    swap_free_bytes: int | None
    cpu_count: int | None
    cpu_quota_cores: float | None  # cgroup CPU quota; None: no quota
    cpu_memory_bandwidth_gb_s: float | None  # a short measured copy bandwidth
    cpu_bandwidth_source: Source | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PinnedMemory:
    """How much host memory the CUDA driver would page-lock (cuMemHostAlloc) before failing."""

    ceiling_bytes: int | None
    cap_bytes: int  # the probe never tries past this
    capped: bool | None  # True: the cap stopped the probe, not the machine
    chunk_bytes: int
    seconds: float | None
    source: Source | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PcieBandwidth:
    index: int  # NVML index, as GpuDevice.index
    host_to_device_gb_s: float | None
    device_to_host_gb_s: float | None
    bytes_per_copy: int
    notes: tuple[str, ...] = ()
    cuda_ordinal: int | None = None  # the CUDA device the copies ran on (cuDeviceGet)


@dataclass(frozen=True)
class PcieReport:
    devices: tuple[PcieBandwidth, ...]
    source: Source | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class StorageBench:
    path: str | None
    filesystem: str | None
    seq_read_mib_s: float | None  # 256 KiB blocks, QD64, O_DIRECT
    rand_read_4k_iops: float | None  # 4 KiB, QD1, O_DIRECT
    rand_read_4k_mib_s: float | None
    runtime_s: float | None
    source: Source | None  # fio, or cache when a previous pass on the same hardware was reused
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hardware:
    gpus: GpuReport
    platform: PlatformInfo
    memory: HostMemory
    pinned: PinnedMemory
    pcie: PcieReport
    storage: StorageBench


@dataclass(frozen=True)
class Profile:
    schema_version: int
    tool_version: str
    created_at: str  # RFC 3339, UTC
    simulated: str | None  # what --simulate was given; None for a real probe
    hardware: Hardware
    notes: tuple[str, ...] = field(default=())
