"""Memory predictions: bytes, per component, per device. Shared by both engines' models."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceMemory:
    """Predicted resident bytes on one device ("CUDA0", "CUDA1", ..., or "CPU" for host RAM)."""

    device: str
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int  # compute/activation buffers (llama.cpp compute buffer, vLLM profiling peak)
    overhead_bytes: int  # CUDA context, cuBLAS workspace, CUDA graphs, NCCL, runtime
    total_bytes: int
    # What this device has for us (usable VRAM or host RAM); None when not planned against a budget.
    budget_bytes: int | None = None


@dataclass(frozen=True)
class Estimate:
    engine: str  # "vllm" | "llama.cpp"
    context: int  # tokens per sequence
    parallel: int  # sequences served at once (llama.cpp -np / vLLM max concurrency target)
    devices: tuple[DeviceMemory, ...]
    kv_bytes_per_token: int  # summed over all layers (sliding-window layers counted at full width)
    # vLLM: the KV pool its budget leaves, as vLLM logs it ("GPU KV cache size: N tokens").
    kv_capacity_tokens: int | None = None
    max_concurrency: float | None = None  # vLLM: kv_capacity_tokens / context
    margin_bytes: int = 0  # safety margin kept on top of the components, per GPU
    notes: tuple[str, ...] = ()

    def device(self, name: str) -> DeviceMemory | None:
        return next((d for d in self.devices if d.device == name), None)

    @property
    def gpu_total_bytes(self) -> int:
        return sum(d.total_bytes for d in self.devices if d.device != "CPU")
