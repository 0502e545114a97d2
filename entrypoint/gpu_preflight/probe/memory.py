"""Host memory probe: RAM (psutil), cgroup v1/v2 limits (the container limit wins), swap, CPU
count and quota, and a short measured CPU memory-copy bandwidth (bounded well under 200 ms)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

from gpu_preflight.profile_types import HostMemory

_V1_UNLIMITED = 1 << 60  # cgroup v1 writes ~2^63 rounded to the page size for "no limit"
BANDWIDTH_BUFFER = 32 * 2**20
BANDWIDTH_BUDGET_S = 0.06


def _read_int(path: Path) -> int | str | None:
    """An int, None for 'max' (no limit), or a string saying why unreadable."""
    try:
        text = path.read_text().strip()
    except OSError as exc:
        return exc.strerror or str(exc)
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return f"unexpected content {text[:40]!r}"


def _cgroup_dir(root: Path) -> tuple[int | None, Path | None]:
    base = root / "sys/fs/cgroup"
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    if (base / "cgroup.controllers").exists():
        rel = next((ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")), "/")
        cand = base / rel.lstrip("/")
        # Inside a container the cgroup namespace makes our own cgroup the mount's root.
        return 2, cand if (cand / "memory.max").exists() else base
    if (base / "memory").is_dir():
        rel = next((ln.split(":", 2)[2] for ln in lines if ":memory:" in ln), "/")
        cand = base / "memory" / rel.lstrip("/")
        return 1, cand if (cand / "memory.limit_in_bytes").exists() else base / "memory"
    return None, None


def read_cgroup(root: Path) -> tuple[int | None, int | None, int | None, float | None, list[str]]:
    """(version, limit_bytes, usage_bytes, cpu_quota_cores, notes)."""
    notes: list[str] = []
    version, d = _cgroup_dir(root)
    if version is None or d is None:
        return (
            None,
            None,
            None,
            None,
            ["no cgroup memory controller found: container limits unknown"],
        )
    limit: int | None = None
    usage: int | None = None
    quota: float | None = None
    if version == 2:
        lim, use = _read_int(d / "memory.max"), _read_int(d / "memory.current")
        cpu = d / "cpu.max"
        try:
            q, period = cpu.read_text().split()
            quota = None if q == "max" else int(q) / int(period)
        except (OSError, ValueError):
            pass
    else:
        lim, use = _read_int(d / "memory.limit_in_bytes"), _read_int(d / "memory.usage_in_bytes")
        cpu_dir = root / "sys/fs/cgroup/cpu"
        q_raw, p_raw = (
            _read_int(cpu_dir / "cpu.cfs_quota_us"),
            _read_int(cpu_dir / "cpu.cfs_period_us"),
        )
        if isinstance(q_raw, int) and isinstance(p_raw, int) and q_raw > 0 and p_raw > 0:
            quota = q_raw / p_raw
    if isinstance(lim, str):
        notes.append(f"cgroup v{version} memory limit unreadable: {lim}")
    elif lim is not None and lim < _V1_UNLIMITED:
        limit = lim
    if isinstance(use, str):
        notes.append(f"cgroup v{version} memory usage unreadable: {use}")
    elif use is not None:
        usage = use
    return version, limit, usage, quota, notes


def measure_copy_bandwidth(
    buffer_bytes: int = BANDWIDTH_BUFFER, budget_s: float = BANDWIDTH_BUDGET_S
) -> float:
    """GB/s read from memory by large copies (memoryview slice assignment is a memcpy).

    A copy reads and writes each byte; decode reads weights, so the figure reported is bytes
    read per second (the best of the timed copies, as other load only slows a copy down).
    """
    src = bytearray(os.urandom(4096)) * (buffer_bytes // 4096)
    dst = bytearray(len(src))
    mv_dst, mv_src = memoryview(dst), memoryview(src)
    mv_dst[:] = mv_src  # fault the pages in before timing
    best = float("inf")
    deadline = time.perf_counter() + budget_s
    runs = 0
    while runs < 2 or (time.perf_counter() < deadline and runs < 8):
        t0 = time.perf_counter()
        mv_dst[:] = mv_src
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return round(len(src) / best / 1e9, 2)


def probe_host_memory(root: str | Path = "/", measure_bandwidth: bool = True) -> HostMemory:
    r = Path(root)
    notes: list[str] = []
    vm = psutil.virtual_memory()
    sw = psutil.swap_memory()
    version, limit, usage, quota, cg_notes = read_cgroup(r)
    notes += cg_notes
    total, avail = int(vm.total), int(vm.available)
    eff_total, eff_avail = total, avail
    if limit is not None and limit < total:
        eff_total = limit
        eff_avail = max(0, min(avail, limit - (usage or 0)))
        notes.append(
            f"cgroup v{version} limit {limit / 2**30:.1f} GiB is below host RAM "
            f"{total / 2**30:.1f} GiB: the container limit is what counts"
        )
    bw: float | None = None
    if measure_bandwidth:
        try:
            bw = measure_copy_bandwidth()
        except MemoryError:
            notes.append("CPU memory bandwidth not measured: no room for the 64 MiB test buffers")
    else:
        notes.append("CPU memory bandwidth not measured (disabled)")
    return HostMemory(
        total_bytes=total,
        available_bytes=avail,
        memory_source="psutil",
        cgroup_version=version,
        cgroup_limit_bytes=limit,
        cgroup_usage_bytes=usage,
        effective_total_bytes=eff_total,
        effective_available_bytes=eff_avail,
        swap_total_bytes=int(sw.total),
        swap_free_bytes=int(sw.free),
        cpu_count=os.cpu_count(),
        cpu_quota_cores=quota,
        cpu_memory_bandwidth_gb_s=bw,
        cpu_bandwidth_source="measured" if bw is not None else None,
        notes=tuple(notes),
    )
