"""Run every probe (or the simulation) and gather the results into one Hardware record.

Only reads the machine. The fio pass and the pinned-memory probe are the two slow ones; the
caller decides whether they run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from gpu_preflight.probe.gpu import probe_gpus
from gpu_preflight.probe.memory import probe_host_memory
from gpu_preflight.probe.pcie import cuda_ordinal_of, probe_pcie
from gpu_preflight.probe.pinned import probe_pinned
from gpu_preflight.probe.platform import probe_platform
from gpu_preflight.probe.simulate import Simulation, simulate
from gpu_preflight.probe.storage import probe_storage
from gpu_preflight.profile_types import (
    GpuReport,
    Hardware,
    HostMemory,
    PcieReport,
    PinnedMemory,
    PlatformInfo,
    StorageBench,
)

GIB = 2**30
DEFAULT_PINNED_CAP = (
    16 * GIB
)  # page-locking is ~seconds per 10 GiB: enough to answer "can we offload"
PINNED_CHUNK = 256 * 2**20


@dataclass(frozen=True)
class ProbeOptions:
    bench: bool  # run the fio pass
    bench_dir: Path | None
    force_bench: bool  # ignore a cached fio result
    cache_dir: Path | None  # where the fio result is cached (next to the profile)
    pinned_cap_bytes: int = DEFAULT_PINNED_CAP
    measure_cpu_bandwidth: bool = True
    bench_skip_reason: str = "storage benchmark skipped (--no-bench / PREFLIGHT_BENCH=off)"


def _storage_skipped(why: str) -> StorageBench:
    return StorageBench(None, None, None, None, None, None, None, (why,))


def _no_pinned(cap: int, why: str) -> PinnedMemory:
    return PinnedMemory(None, cap, None, PINNED_CHUNK, None, None, (why,))


def collect_hardware(env: Mapping[str, str], opts: ProbeOptions) -> Hardware:
    gpus: GpuReport = probe_gpus(env)
    platform: PlatformInfo = probe_platform(env=env)
    memory: HostMemory = probe_host_memory(measure_bandwidth=opts.measure_cpu_bandwidth)
    ordinals = [o for o in map(cuda_ordinal_of, gpus.devices) if o is not None]
    if ordinals:
        cap = opts.pinned_cap_bytes
        if memory.effective_available_bytes is not None:
            cap = min(cap, memory.effective_available_bytes // 2)
        # The CUDA probes run in this process: its own CUDA_VISIBLE_DEVICES decides what
        # cuDeviceGet(n) opens. The ordinals were computed from `env`; they hold only if both agree.
        mismatch = env.get("CUDA_VISIBLE_DEVICES") != os.environ.get("CUDA_VISIBLE_DEVICES")
        pinned = probe_pinned(cap_bytes=cap, chunk_bytes=PINNED_CHUNK, cuda_ordinal=min(ordinals))
        pcie = probe_pcie(gpus.devices)
        if mismatch:
            why = (
                "CUDA_VISIBLE_DEVICES given to the probe differs from this process's: "
                "PCIe figures may belong to other GPUs"
            )
            pcie = replace(pcie, notes=(*pcie.notes, why))
    else:
        why = "no GPU visible, so no CUDA device to page-lock memory for"
        pinned = _no_pinned(opts.pinned_cap_bytes, why)
        pcie = PcieReport((), None, ("no GPU visible: PCIe bandwidth not measured",))
    if not opts.bench:
        storage = _storage_skipped(opts.bench_skip_reason)
    elif opts.bench_dir is None:
        storage = _storage_skipped("no bench directory: mount one at /bench or pass --bench-dir")
    else:
        storage = probe_storage(opts.bench_dir, force=opts.force_bench, cache_dir=opts.cache_dir)
    return Hardware(
        gpus=gpus, platform=platform, memory=memory, pinned=pinned, pcie=pcie, storage=storage
    )


def simulated_hardware(
    spec: str,
    host_ram_bytes: int | None,
    host_bandwidth_gb_s: float | None = None,
    sim: Simulation | None = None,
) -> Hardware:
    """The hardware as if on a machine described by ``spec`` (catalog name, NxNAME, MIG, file);
    ``sim``: an already simulated GPU report that ``spec`` only names (cluster/inventory.py, a
    GPU that is not in the catalog, described by its node labels)."""
    sim = sim if sim is not None else simulate(spec)
    note = f"simulated from {spec!r}: not measured"
    platform = sim.platform or PlatformInfo(
        in_container=None,
        container_runtime=None,
        nvidia_runtime=None,
        wsl2=False,
        kernel_release=None,
        dxg_present=None,
        wsl_lib_present=None,
        uvm_oversubscription=None,
        notes=(f"{note}; assumed native Linux (not WSL2)",),
    )
    if sim.memory is not None:
        memory = sim.memory
    elif host_ram_bytes is not None:
        memory = HostMemory(
            total_bytes=host_ram_bytes,
            available_bytes=host_ram_bytes,
            memory_source="simulated",
            cgroup_version=None,
            cgroup_limit_bytes=None,
            cgroup_usage_bytes=None,
            effective_total_bytes=host_ram_bytes,
            effective_available_bytes=host_ram_bytes,
            swap_total_bytes=None,
            swap_free_bytes=None,
            cpu_count=None,
            cpu_quota_cores=None,
            cpu_memory_bandwidth_gb_s=host_bandwidth_gb_s,
            cpu_bandwidth_source="simulated" if host_bandwidth_gb_s else None,
            notes=(
                f"{note}; host RAM from --host-ram"
                + ("" if host_bandwidth_gb_s else "; host bandwidth unknown (--host-bandwidth)"),
            ),
        )
    else:
        memory = HostMemory(
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            (f"{note}; host RAM unknown (pass --host-ram GIB to plan offload)",),
        )
    return Hardware(
        gpus=sim.gpus,
        platform=platform,
        memory=memory,
        pinned=_no_pinned(DEFAULT_PINNED_CAP, f"{note}: pinned memory not measured"),
        pcie=PcieReport((), None, (f"{note}: PCIe bandwidth not measured",)),
        storage=_storage_skipped(f"{note}: storage not measured"),
    )
