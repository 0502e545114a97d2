"""Pinnable-memory probe: how much host memory the CUDA driver will page-lock before it refuses.

llama.cpp stages host-resident weights through pinned buffers when it offloads; on WSL2 the
pinnable amount can be far below free RAM. The probe allocates ``chunk_bytes`` at a time up to
``cap_bytes``, records the ceiling and the time taken, and frees everything (also on error).
Without CUDA: ceiling None and the reason. Page-locked memory is host memory, so any visible
device's context will do; the caller passes a CUDA ordinal (0 = the first device this process's
CUDA_VISIBLE_DEVICES leaves), never an NVML index.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from gpu_preflight.probe.cuda import CudaDevice, open_cuda
from gpu_preflight.profile_types import PinnedMemory

Opener = Callable[[int], AbstractContextManager[CudaDevice | str]]


def probe_pinned(
    cap_bytes: int,
    chunk_bytes: int = 256 * 2**20,
    opener: Opener | None = None,
    cuda_ordinal: int = 0,
) -> PinnedMemory:
    opener = opener or open_cuda
    with opener(cuda_ordinal) as cuda:
        if isinstance(cuda, str):
            return PinnedMemory(None, cap_bytes, None, chunk_bytes, None, None, (cuda,))
        held: list[int] = []
        t0 = time.perf_counter()
        capped = True
        try:
            while len(held) * chunk_bytes + chunk_bytes <= cap_bytes:
                ptr = cuda.host_alloc(chunk_bytes)
                if ptr is None:
                    capped = False
                    break
                held.append(ptr)
        finally:
            for ptr in held:
                cuda.host_free(ptr)
        seconds = time.perf_counter() - t0
    ceiling = len(held) * chunk_bytes
    notes = (
        (
            f"stopped at the probe's cap of {cap_bytes / 2**30:.1f} GiB: the machine may pin more "
            "(PREFLIGHT_PINNED_CAP_GB)",
        )
        if capped
        else ()
    )
    return PinnedMemory(
        ceiling, cap_bytes, capped, chunk_bytes, round(seconds, 3), "cuda-driver", notes
    )
