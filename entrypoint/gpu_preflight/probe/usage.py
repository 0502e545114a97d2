"""What a running engine uses right now: per-GPU memory (the process's own and the device's), GPU
temperature and power, the process's resident memory, and the host's free memory.

A probe: it reads, never changes. Errors are values (``None`` with a note), because a receipt
taken while the engine serves must never fail for a field it could not read.

The engine's own memory on a GPU comes from NVML's per-process list
(``nvmlDeviceGetComputeRunningProcesses``), summed over the engine's PID and its descendants. Inside a container NVML reports the *host's* PIDs
(the driver knows nothing of PID namespaces; NVIDIA/nvidia-docker#179, NVIDIA/k8s-device-plugin
discussions), so our PID is often not in the list. Then, in order:
1. exactly one compute process on the device: it is ours (the container sees only its GPUs);
2. otherwise the device's used memory minus what was used before the engine started (the
   profile's ``used`` figure), marked ``device-delta``.
The method used is part of every reading, so a receipt never passes one off as another.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_preflight.probe.nvml import NvmlFailure, NvmlSession, load_pynvml, nvml_session

STATUS_LIMIT = 64 * 1024  # /proc/PID/status is ~1.5 KiB


@dataclass(frozen=True)
class GpuUsage:
    index: int  # NVML index
    name: str | None
    device_used_bytes: int | None
    device_total_bytes: int | None
    process_bytes: int | None  # the engine's own allocation on this device
    process_method: str  # "nvml-pid", "nvml-only-process", "device-delta", "unknown"
    temperature_c: float | None
    power_w: float | None
    note: str | None = None


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    rss_bytes: int | None  # VmRSS
    peak_rss_bytes: int | None  # VmHWM: the high-water mark since the process started
    anon_bytes: int | None  # RssAnon: what the process allocated
    file_bytes: int | None  # RssFile: mapped file pages resident now (an mmap'ed model)
    note: str | None = None


@dataclass(frozen=True)
class HostMemory:
    total_bytes: int | None
    available_bytes: int | None
    used_percent: float | None


def _status_kib(text: str, key: str) -> int | None:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def process_memory(pid: int, proc: Path = Path("/proc")) -> ProcessMemory:
    """The process's resident memory from /proc/PID/status (read bounded)."""
    path = proc / str(pid) / "status"
    try:
        with path.open("rb") as f:
            text = f.read(STATUS_LIMIT).decode("utf-8", errors="replace")
    except OSError as exc:
        return ProcessMemory(pid, None, None, None, None, f"{path}: {exc.strerror or exc}")
    return ProcessMemory(
        pid,
        _status_kib(text, "VmRSS"),
        _status_kib(text, "VmHWM"),
        _status_kib(text, "RssAnon"),
        _status_kib(text, "RssFile"),
    )


def host_memory(proc: Path = Path("/proc")) -> HostMemory:
    """MemTotal / MemAvailable from /proc/meminfo (the kernel's own estimate of what is free)."""
    try:
        with (proc / "meminfo").open("rb") as f:
            text = f.read(STATUS_LIMIT).decode("utf-8", errors="replace")
    except OSError:
        return HostMemory(None, None, None)
    total = _status_kib(text, "MemTotal")
    avail = _status_kib(text, "MemAvailable")
    pct = None
    if total and avail is not None:
        pct = round(100.0 * (total - avail) / total, 2)
    return HostMemory(total, avail, pct)


def family(pid: int, proc: Path = Path("/proc")) -> frozenset[int]:
    """The PID and all its descendants: vLLM's GPU memory is held by its EngineCore and worker
    processes (vllm/v1/engine/core_client.py starts them), not by the API server's own PID."""
    parents: dict[int, int] = {}
    try:
        entries = [d for d in proc.iterdir() if d.name.isdigit()][:65536]
    except OSError:
        return frozenset({pid})
    for d in entries:
        try:
            with (d / "stat").open("rb") as f:
                stat = f.read(4096).decode(errors="replace")
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 2 and fields[1].isdigit():
            parents[int(d.name)] = int(fields[1])
    out = {pid}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in out and child not in out:
                out.add(child)
                grew = True
    return frozenset(out)


def _process_bytes(
    s: NvmlSession, handle: Any, pids: frozenset[int], used: int | None, before: int | None
) -> tuple[int | None, str, str | None]:
    lib = s.lib
    procs = s.query("compute processes", lib.nvmlDeviceGetComputeRunningProcesses, handle)
    if procs is not None:
        ours = [
            int(p.usedGpuMemory)
            for p in procs
            if int(getattr(p, "pid", -1)) in pids and getattr(p, "usedGpuMemory", None) is not None
        ]
        if ours:
            return sum(ours), "nvml-pid", None
        if len(procs) == 1 and getattr(procs[0], "usedGpuMemory", None) is not None:
            return (
                int(procs[0].usedGpuMemory),
                "nvml-only-process",
                "the engine's PIDs are not in NVML's list (NVML reports host PIDs inside a "
                "container); "
                "the only compute process on the device was taken as the engine",
            )
    if used is not None and before is not None:
        return (
            max(0, used - before),
            "device-delta",
            f"the engine's own use is not readable per process ({len(procs or [])} compute "
            "processes listed); used now minus used before the engine started",
        )
    return None, "unknown", "neither NVML's process list nor a 'used before' figure is available"


def gpu_usage(
    pid: int,
    indices: Sequence[int],
    used_before: Mapping[int, int] | None = None,
    lib: Any = None,
) -> tuple[tuple[GpuUsage, ...], str | None]:
    """One reading per NVML index in ``indices``; (readings, why none) when NVML cannot start."""
    if not indices:
        return (), None
    if lib is None:
        loaded = load_pynvml()
        if isinstance(loaded, str):
            return (), loaded
        lib = loaded
    before = dict(used_before or {})
    pids = family(pid)
    out: list[GpuUsage] = []
    with nvml_session(lib) as s:
        if isinstance(s, NvmlFailure):
            return (), s.message
        for i in indices:
            handle = s.query(f"GPU {i}", lib.nvmlDeviceGetHandleByIndex, i)
            if handle is None:
                out.append(GpuUsage(i, None, None, None, None, "unknown", None, None, "no handle"))
                continue
            name = s.query("name", lib.nvmlDeviceGetName, handle)
            info, _ = s.memory_info(handle)
            used = int(info.used) if info is not None else None
            total = int(info.total) if info is not None else None
            proc_bytes, method, note = _process_bytes(s, handle, pids, used, before.get(i))
            temp = s.query(
                "temperature",
                lib.nvmlDeviceGetTemperature,
                handle,
                getattr(lib, "NVML_TEMPERATURE_GPU", 0),
            )
            mw = s.query("power", lib.nvmlDeviceGetPowerUsage, handle)
            out.append(
                GpuUsage(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else name,
                    device_used_bytes=used,
                    device_total_bytes=total,
                    process_bytes=proc_bytes,
                    process_method=method,
                    temperature_c=float(temp) if temp is not None else None,
                    power_w=round(float(mw) / 1000.0, 1) if mw is not None else None,
                    note=note,
                )
            )
    return tuple(out), None


def engine_pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
