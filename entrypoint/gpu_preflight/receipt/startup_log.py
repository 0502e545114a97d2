"""The per-buffer memory lines llama.cpp prints while it starts, read from its captured stderr.

The lines (llama.cpp 0.3.36-era source):
- src/llama-model.cpp ``load_tensors``: ``%12s model buffer size = %8.2f MiB``
- src/llama-kv-cache.cpp ``llama_kv_cache``: ``%10s KV buffer size = %8.2f MiB``
- src/llama-memory-recurrent.cpp: ``%10s RS buffer size = %8.2f MiB`` (recurrent state)
- src/llama-context.cpp ``llama_context``: ``%10s  output buffer size`` and
  ``%10s compute buffer size = %8.2f MiB``
The buffer name is the backend buffer type: ``CUDA0``.. for a GPU, and ``CPU``, ``CPU_Mapped``
(the mmap'ed file), ``CPU_REPACK``, ``CUDA_Host`` (pinned host memory) for host RAM.

Every buffer of the log is summed: a draft model's buffers are part of the plan's prediction too.
The plans written here pass ``--fit off``, so llama-server makes no fitting pass of its own that
would print a second, unallocated set (common/fit.cpp).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# After llama-server's own prefix ("0.00.018.994 I "), or none (other tools).
_LINE = re.compile(
    r"(?:^|\s)(?P<func>[A-Za-z_][\w:]*):\s+(?P<buf>[A-Za-z][\w]*)\s+"
    r"(?P<kind>model|KV|RS|output|compute)\s+buffer size\s*=\s*(?P<mib>[0-9]+(?:\.[0-9]+)?)\s*MiB"
)
_GPU = re.compile(r"^(CUDA|ROCm|Vulkan|SYCL|Metal)(\d+)$")
KIND_NAMES = {
    "model": "weights",
    "KV": "kv_cache",
    "RS": "recurrent_state",
    "output": "output",
    "compute": "compute",
}
MIB = 2**20


@dataclass(frozen=True)
class LoggedBuffers:
    by_device: dict[str, dict[str, int]]  # CUDA0 / CPU -> component -> bytes
    lines: int


def device_of(buffer: str) -> str:
    m = _GPU.match(buffer)
    if m:
        return f"CUDA{m.group(2)}" if m.group(1) == "CUDA" else f"{m.group(1)}{m.group(2)}"
    return "CPU"  # CPU, CPU_Mapped, CPU_REPACK, CUDA_Host, ...: host RAM


def parse(text: str) -> LoggedBuffers:
    """Sum the buffers per device and component."""
    out: dict[str, dict[str, int]] = {}
    n = 0
    for raw in text.splitlines():
        m = _LINE.search(raw)
        if not m:
            continue
        kind = KIND_NAMES[m.group("kind")]
        dev = device_of(m.group("buf"))
        comp = out.setdefault(dev, {})
        comp[kind] = comp.get(kind, 0) + round(float(m.group("mib")) * MIB)
        n += 1
    return LoggedBuffers(out, n)
