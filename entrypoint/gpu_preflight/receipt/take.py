"""Take one receipt: wait for the engine, read its own numbers, measure memory and decode speed
against the plan, and return the document (writing it is launch's job).

Bounded: the health wait by ``timeout_s`` (PREFLIGHT_RECEIPT_TIMEOUT), each stream by
``max_tokens`` (PREFLIGHT_RECEIPT_TOKENS) and ``workload_timeout_s``, every HTTP call by its own
timeout and size cap. Nothing here raises for something the engine or the machine answered: every
unreadable value becomes ``None`` plus a warning, and the status says complete, partial or failed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from gpu_preflight.plan.types import Plan, PlannedDevice
from gpu_preflight.probe import usage
from gpu_preflight.profile_types import Profile
from gpu_preflight.receipt import engine_api, startup_log
from gpu_preflight.receipt.calibrate import receipt_key
from gpu_preflight.receipt.types import (
    Component,
    Decode,
    DeviceMemory,
    EngineFacts,
    Peaks,
    Receipt,
    Status,
    StreamResult,
)
from gpu_preflight.receipt.workload import run_streams

RECEIPT_SCHEMA_VERSION = 1
DEFAULT_TIMEOUT_S = 1800.0  # a 70B model read from a network disk can take many minutes
DEFAULT_TOKENS = 128
SAMPLE_EVERY_S = 0.5
MIB = 2**20


@dataclass(frozen=True)
class Request:
    base_url: str  # http://127.0.0.1:8080
    plan: Plan
    plan_file: str
    profile: Profile | None = None
    pid: int | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_tokens: int = DEFAULT_TOKENS
    workload_timeout_s: float = 300.0
    # llama.cpp's start-up text, where the caller has it; read once the engine is healthy (the
    # buffers are printed while it loads).
    startup_log: Callable[[], str] | None = None
    nvml: Any = None  # an NVML module (a recorded fake in tests); None: the real one
    alive: Callable[[], bool] | None = None
    watcher_pid: int | None = None
    started_at: float | None = None  # time.monotonic() when the engine was started (the fork)


@dataclass
class _Sampler:
    """Peaks while the receipt runs, sampled on a thread (bounded by the receipt's own run)."""

    pid: int | None
    indices: Sequence[int]
    nvml: Any
    used_before: Mapping[int, int]
    samples: int = 0
    vram: dict[int, int] = field(default_factory=dict)
    process: dict[int, tuple[int, str, str | None]] = field(default_factory=dict)
    temp: float | None = None
    power: float | None = None
    host_pct: float | None = None
    host_min: int | None = None
    nvml_problem: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        if self.pid is not None and self.indices and self.nvml_problem is None:
            readings, why = usage.gpu_usage(self.pid, self.indices, self.used_before, self.nvml)
            if why:
                self.nvml_problem = why
            for g in readings:
                if g.device_used_bytes is not None:
                    self.vram[g.index] = max(self.vram.get(g.index, 0), g.device_used_bytes)
                if g.process_bytes is not None:
                    best = self.process.get(g.index)
                    if best is None or g.process_bytes > best[0]:
                        self.process[g.index] = (g.process_bytes, g.process_method, g.note)
                if g.temperature_c is not None:
                    self.temp = max(self.temp or g.temperature_c, g.temperature_c)
                if g.power_w is not None:
                    self.power = max(self.power or g.power_w, g.power_w)
        host = usage.host_memory()
        if host.used_percent is not None:
            self.host_pct = max(self.host_pct or 0.0, host.used_percent)
        if host.available_bytes is not None:
            self.host_min = (
                host.available_bytes
                if self.host_min is None
                else min(self.host_min, host.available_bytes)
            )
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # a sampler must never take the receipt down
                self.nvml_problem = self.nvml_problem or "a sample failed"
            self._stop.wait(SAMPLE_EVERY_S)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sample()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _gpu_map(plan: Plan, profile: Profile | None) -> dict[str, int]:
    """CUDA<n> in the plan -> the NVML index of that GPU (by the profile's CUDA ordinals)."""
    if plan.predicted is None:
        return {}
    out: dict[str, int] = {}
    devices = profile.hardware.gpus.devices if profile is not None else ()
    for d in plan.predicted.devices:
        if not d.device.startswith("CUDA"):
            continue
        n = int(d.device[4:])
        match = [g.index for g in devices if g.cuda_ordinal == n]
        if match:
            out[d.device] = match[0]
        elif " (GPU " in d.description:
            tail = d.description.rsplit(" (GPU ", 1)[1].rstrip(")")
            if tail.isdigit():
                out[d.device] = int(tail)
    return out


def _used_before(profile: Profile | None) -> dict[int, int]:
    if profile is None:
        return {}
    return {
        g.index: g.used_bytes for g in profile.hardware.gpus.devices if g.used_bytes is not None
    }


def _components(d: PlannedDevice, logged: Mapping[str, int] | None) -> tuple[Component, ...]:
    if not logged:
        return ()
    predicted = {"weights": d.weights_bytes, "kv_cache": d.kv_cache_bytes, "compute": d.compute_bytes}
    out = []
    for name in ("weights", "kv_cache", "compute", "output", "recurrent_state"):
        p, g = predicted.get(name), logged.get(name)
        if p is None and g is None:
            continue
        out.append(Component(name, p, g, (g - p) if p is not None and g is not None else None))
    return tuple(out)


def _device(
    d: PlannedDevice,
    measured: int | None,
    method: str,
    note: str | None,
    logged: Mapping[str, int] | None,
) -> DeviceMemory:
    err = measured - d.total_bytes if measured is not None else None
    frac = round(err / d.total_bytes, 4) if err is not None and d.total_bytes else None
    return DeviceMemory(
        device=d.device,
        predicted_bytes=d.total_bytes,
        measured_bytes=measured,
        method=method if measured is not None else "unknown",
        error_bytes=err,
        error_fraction=frac,
        under=(err > 0) if err is not None else None,
        components=_components(d, logged),
        note=note,
    )


def _decode(
    plan: Plan, single: StreamResult | None, parallel: StreamResult | None
) -> Decode:
    p = plan.predicted
    low = p.decode_tok_s_low if p else None
    high = p.decode_tok_s_high if p else None
    floor = p.decode_floor_tok_s if p else None
    n = plan.calibration.decode_receipts if plan.calibration else 0
    source = f"calibrated from {n} receipt{'s' if n != 1 else ''}" if n else "roofline forecast"
    got = single.decode_tok_s if single else None
    within = (low <= got <= high) if got is not None and low is not None and high else None
    cleared = (got >= floor) if got is not None and floor is not None else None
    frac = None
    if got is not None and low is not None and high:
        mid = (low + high) / 2
        frac = round((got - mid) / mid, 4) if mid else None
    return Decode(single, parallel, low, high, source, floor, within, cleared, frac)


def take(req: Request) -> Receipt:
    t0 = time.monotonic()
    plan = req.plan
    key = receipt_key(plan)
    warnings: list[str] = []
    pid = req.pid
    alive = req.alive or (
        (lambda: usage.engine_pid_alive(pid)) if pid is not None else (lambda: True)
    )
    base = req.base_url.rstrip("/")

    def done(
        status: Status,
        facts: EngineFacts,
        memory: tuple[DeviceMemory, ...] = (),
        decode: Decode | None = None,
        peaks: Peaks | None = None,
    ) -> Receipt:
        return Receipt(
            schema_version=RECEIPT_SCHEMA_VERSION,
            created_at=_now(),
            status=status,
            key=key,
            plan_file=req.plan_file,
            engine=facts,
            memory=memory,
            decode=decode,
            peaks=peaks,
            warnings=tuple(warnings),
            duration_s=round(time.monotonic() - t0, 3),
        )

    empty = EngineFacts(
        base, req.pid, None, None, None, None,
        plan.predicted.kv_capacity_tokens if plan.predicted else None, None,
    )  # fmt: skip
    if plan.verdict != "ship" or plan.predicted is None or plan.engine is None:
        warnings.append("the plan did not ship an engine: there is nothing to measure")
        return done("failed", empty)
    healthy_after, why = engine_api.wait_healthy(base, req.timeout_s, alive)
    if healthy_after is not None and req.started_at is not None:
        healthy_after += max(0.0, t0 - req.started_at)  # the watcher's own start-up time
    if healthy_after is None:
        warnings.append(why or "the engine never became healthy")
        return done("failed", empty)

    # -- the engine's own numbers -------------------------------------------------------
    n_ctx = slots = kv_tokens = families = None
    model_id = plan.model.id if plan.model else "default"
    if plan.engine == "llama.cpp":
        props, why = engine_api.get_json(f"{base}/props")
        if why:
            warnings.append(why)
        elif isinstance(props, dict):
            gen = props.get("default_generation_settings")
            if isinstance(gen, dict) and isinstance(gen.get("n_ctx"), int):
                n_ctx = gen["n_ctx"]
            if isinstance(props.get("total_slots"), int):
                slots = props["total_slots"]
        listed, why = engine_api.get_json(f"{base}/slots")
        if isinstance(listed, list):
            per_slot = {s.get("n_ctx") for s in listed if isinstance(s, dict)}
            slots = slots if slots is not None else len(listed)
            if len(listed) != slots or (per_slot and per_slot != {n_ctx}):
                warnings.append(
                    f"/slots lists {len(listed)} slots with n_ctx {sorted(map(str, per_slot))}, "
                    f"/props says {slots} x {n_ctx}"
                )
        elif why and "HTTP 501" not in why:  # 501: started with --no-slots
            warnings.append(why)
        if "--metrics" in plan.argv:
            fams, why = engine_api.read_metrics(base)
            if why:
                warnings.append(why)
            families = len(fams) if fams is not None else None
    else:
        fams, why = engine_api.read_metrics(base)
        if why:
            warnings.append(why)
        else:
            assert fams is not None
            families = len(fams)
            kv_tokens, why = engine_api.vllm_kv_tokens(fams)
            if why:
                warnings.append(why)
    models, why = engine_api.get_json(f"{base}/v1/models")
    if isinstance(models, dict) and isinstance(models.get("data"), list) and models["data"]:
        first = models["data"][0]
        if isinstance(first, dict) and isinstance(first.get("id"), str):
            model_id = first["id"][:512]
            if plan.engine == "vllm" and isinstance(first.get("max_model_len"), int):
                n_ctx = first["max_model_len"]
    elif why:
        warnings.append(why)
    facts = EngineFacts(
        base, req.pid, round(healthy_after, 2), n_ctx, slots, kv_tokens,
        plan.predicted.kv_capacity_tokens, families,
    )  # fmt: skip
    if n_ctx is not None and plan.context is not None and n_ctx != plan.context:
        warnings.append(
            f"the engine runs with a context of {n_ctx} tokens, the plan predicted with "
            f"{plan.context}: the plan is not what runs"
        )

    # -- memory and the workload, with a sampler for the peaks --------------------------
    gmap = _gpu_map(plan, req.profile)
    sampler = _Sampler(req.pid, sorted(set(gmap.values())), req.nvml, _used_before(req.profile))
    sampler.start()
    single, why = run_streams(base, model_id, 1, req.max_tokens, req.workload_timeout_s)
    if why:
        warnings.append(f"single stream: {why}")
    parallel = None
    streams = max(1, plan.parallel or 1)
    if streams > 1:
        parallel, why = run_streams(base, model_id, streams, req.max_tokens, req.workload_timeout_s)
        if why:
            warnings.append(f"{streams} streams: {why}")
    sampler.stop()
    if sampler.nvml_problem and gmap:
        warnings.append(f"GPU readings: {sampler.nvml_problem}")

    logged = startup_log.parse(req.startup_log()).by_device if req.startup_log else {}
    memory: list[DeviceMemory] = []
    proc = usage.process_memory(req.pid) if req.pid is not None else None
    for d in plan.predicted.devices:
        if d.device == "CPU":
            peak = proc.peak_rss_bytes if proc else None
            note = proc.note if proc else "no engine PID to read /proc from"
            if proc and proc.anon_bytes is not None and proc.file_bytes is not None:
                # With mmap, the model file's pages a repack read stay resident as clean page
                # cache (RssFile): reclaimable, but counted by a cgroup's memory.current.
                note = (
                    f"now: RssAnon {proc.anon_bytes / MIB:.0f} MiB + RssFile "
                    f"{proc.file_bytes / MIB:.0f} MiB (mapped model file pages, clean and "
                    "reclaimable)"
                )
            memory.append(_device(d, peak, "rss-peak", note, logged.get("CPU")))
        else:
            idx = gmap.get(d.device)
            got = sampler.process.get(idx) if idx is not None else None
            if got is None:
                memory.append(_device(d, None, "unknown", "no NVML reading", logged.get(d.device)))
            else:
                memory.append(_device(d, got[0], got[1], got[2], logged.get(d.device)))
    under = [m for m in memory if m.under]
    for m in under:
        warnings.append(
            f"{m.device}: measured {m.measured_bytes} bytes, predicted {m.predicted_bytes}: "
            "under-predicted; the next start widens the margin"
        )
    watcher = usage.process_memory(req.watcher_pid) if req.watcher_pid else None
    peaks = Peaks(
        samples=sampler.samples,
        vram_used_bytes={dev: sampler.vram[i] for dev, i in gmap.items() if i in sampler.vram},
        gpu_temperature_c=sampler.temp,
        gpu_power_w=sampler.power,
        host_memory_percent=sampler.host_pct,
        host_available_min_bytes=sampler.host_min,
        engine_rss_peak_bytes=proc.peak_rss_bytes if proc else None,
        watcher_rss_bytes=watcher.rss_bytes if watcher else None,
    )
    decode = _decode(plan, single, parallel)
    complete = (
        single is not None
        and (streams == 1 or parallel is not None)
        and all(m.measured_bytes is not None for m in memory)
    )
    return done("complete" if complete else "partial", facts, tuple(memory), decode, peaks)
