"""The receipt document: what the running engine really used and how fast it decoded, against the
plan. Serialises to schemas/receipt.schema.json (``receipt/document.py``).

Signs: every ``error`` is measured - predicted, so a positive memory error is an under-prediction
(the dangerous side), and a positive decode error means the engine was faster than forecast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Status = Literal["complete", "partial", "failed"]


@dataclass(frozen=True)
class ReceiptKey:
    """What a receipt is evidence about. ``memory_id`` leaves the settings out on purpose: an
    under-prediction on one context or slot count is evidence against the model on that card at
    any setting, so it widens every later plan of that model there (the safe direction)."""

    id: str  # sha256 over every field below (16 hex)
    memory_id: str  # sha256 over gpu, engine, model, quant (16 hex)
    gpu: str  # "NVIDIA H200" (every planned GPU's name, in device order), or "CPU"
    engine: str
    model: str
    quant: str
    settings: dict[str, str]  # context, parallel and the argv's other values (host/port left out)


@dataclass(frozen=True)
class Component:
    """One buffer as the plan predicted it and as the engine logged it at start (MiB precision)."""

    name: str  # weights, kv_cache, compute, output, recurrent_state
    predicted_bytes: int | None
    logged_bytes: int | None
    error_bytes: int | None


@dataclass(frozen=True)
class DeviceMemory:
    device: str  # CUDA0.. or CPU, as in the plan
    predicted_bytes: int  # the plan's total for the device (its components, without the margin)
    measured_bytes: int | None
    method: str  # nvml-pid, nvml-only-process, device-delta, rss-peak, unknown
    error_bytes: int | None  # measured - predicted: > 0 is an under-prediction
    error_fraction: float | None
    under: bool | None
    components: tuple[Component, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class EngineFacts:
    """The engine's own numbers, read from its API."""

    url: str
    pid: int | None
    healthy_after_s: float | None
    n_ctx: int | None  # llama-server /props: per-slot context; vLLM: max_model_len from /v1/models
    slots: int | None  # llama-server total_slots
    kv_capacity_tokens: int | None  # vLLM cache_config_info: num_gpu_blocks x block_size
    predicted_kv_capacity_tokens: int | None
    metrics_families: int | None  # how many metric families /metrics held (None: not read)


@dataclass(frozen=True)
class StreamResult:
    streams: int
    completion_tokens: int
    decode_tok_s: float | None  # per stream, mean over the streams
    aggregate_tok_s: float | None  # all streams together
    prefill_tok_s: float | None
    prompt_tokens: int
    source: str  # "engine timings" (llama-server's own) or "client clock"
    wall_s: float


@dataclass(frozen=True)
class Decode:
    single: StreamResult | None
    parallel: StreamResult | None
    band_low_tok_s: float | None
    band_high_tok_s: float | None
    band_source: str  # "roofline forecast" or "calibrated from N receipts"
    floor_tok_s: float | None
    within_band: bool | None
    cleared_floor: bool | None
    error_fraction: float | None  # single-stream measured vs the band's middle


@dataclass(frozen=True)
class Peaks:
    samples: int
    vram_used_bytes: dict[str, int]  # per planned GPU device, the device's used memory
    gpu_temperature_c: float | None
    gpu_power_w: float | None
    host_memory_percent: float | None
    host_available_min_bytes: int | None
    engine_rss_peak_bytes: int | None
    watcher_rss_bytes: int | None  # the receipt's own process, which the plan does not count


@dataclass(frozen=True)
class Receipt:
    schema_version: int
    created_at: str  # ISO 8601 UTC
    status: Status
    key: ReceiptKey
    plan_file: str
    engine: EngineFacts
    memory: tuple[DeviceMemory, ...]
    decode: Decode | None
    peaks: Peaks | None
    warnings: tuple[str, ...] = field(default=())
    duration_s: float = 0.0
