"""PCIe bandwidth probe: pinned host-to-device and device-to-host copies, measured separately.

Best of a few synchronous copies of ``bytes_per_copy`` (a transfer can only be slowed by other
traffic, never sped up). None without a GPU or CUDA.

Each GPU is opened by its CUDA ordinal (``cuda_ordinal``, or its visible MIG leaf's), never by
its NVML index: this process has the same ``CUDA_VISIBLE_DEVICES`` as the engine, so
``cuDeviceGet(NVML index)`` would measure another GPU, or none (probe/visible.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from functools import partial

from gpu_preflight.probe.cuda import CudaDevice, open_cuda
from gpu_preflight.profile_types import GpuDevice, PcieBandwidth, PcieReport

Opener = Callable[[int], AbstractContextManager[CudaDevice | str]]
REPEATS = 3


def _best(copy: Callable[[], None], nbytes: int) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        copy()
        best = min(best, time.perf_counter() - t0)
    return round(nbytes / best / 1e9, 2)


def cuda_ordinal_of(device: GpuDevice) -> int | None:
    """The CUDA device this GPU is in this process: itself, or its visible MIG leaf."""
    if device.cuda_ordinal is not None:
        return device.cuda_ordinal
    return next((m.cuda_ordinal for m in device.mig_devices if m.cuda_ordinal is not None), None)


def probe_pcie(
    devices: Sequence[GpuDevice], bytes_per_copy: int = 256 * 2**20, opener: Opener | None = None
) -> PcieReport:
    opener = opener or open_cuda
    out: list[PcieBandwidth] = []
    notes: list[str] = []
    for d in devices:
        i, ordinal = d.index, cuda_ordinal_of(d)
        if ordinal is None:
            why = "not visible to CUDA in this process (see the GPU notes): not measured"
            out.append(PcieBandwidth(i, None, None, bytes_per_copy, (why,)))
            continue
        with opener(ordinal) as cuda:
            if isinstance(cuda, str):
                notes.append(f"GPU {i} (CUDA{ordinal}): {cuda}")
                out.append(PcieBandwidth(i, None, None, bytes_per_copy, (cuda,), ordinal))
                continue
            host = cuda.host_alloc(bytes_per_copy)
            dev = cuda.device_alloc(bytes_per_copy)
            try:
                if host is None or dev is None:
                    why = "could not allocate the copy buffers"
                    out.append(PcieBandwidth(i, None, None, bytes_per_copy, (why,), ordinal))
                    continue
                h2d = _best(partial(cuda.copy_h2d, dev, host, bytes_per_copy), bytes_per_copy)
                d2h = _best(partial(cuda.copy_d2h, host, dev, bytes_per_copy), bytes_per_copy)
                out.append(PcieBandwidth(i, h2d, d2h, bytes_per_copy, (), ordinal))
            finally:
                if host is not None:
                    cuda.host_free(host)
                if dev is not None:
                    cuda.device_free(dev)
    measured = any(d.host_to_device_gb_s is not None for d in out)
    return PcieReport(tuple(out), "cuda-driver" if measured else None, tuple(dict.fromkeys(notes)))
