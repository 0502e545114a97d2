"""Fallback GPU probe through ``nvidia-smi --query-gpu`` when the NVML library cannot be loaded.

Values come back in MiB (``nounits``); ``[N/A]``/``[Not Supported]`` become None. Older
nvidia-smi releases reject ``memory.reserved``: the query is retried without it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

from gpu_preflight.gpu_catalog import GpuCatalog
from gpu_preflight.probe.command import CommandResult
from gpu_preflight.profile_types import GpuDevice, GpuReport

MIB = 2**20
FIELDS = (
    "index",
    "uuid",
    "name",
    "memory.total",
    "memory.used",
    "memory.free",
    "memory.reserved",
    "driver_version",
    "compute_cap",
    "pcie.link.gen.current",
    "pcie.link.gen.max",
    "pcie.link.width.current",
    "pcie.link.width.max",
    "power.limit",
    "mig.mode.current",
)
Runner = Callable[[list[str], float], CommandResult]


def _argv(fields: tuple[str, ...]) -> list[str]:
    return ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]


def _none(v: str) -> str | None:
    v = v.strip()
    return None if not v or v.startswith("[") or v in ("N/A", "Not Supported") else v


def _int(v: str | None) -> int | None:
    try:
        return int(float(v)) if v is not None else None
    except ValueError:
        return None


def parse_smi_csv(text: str, fields: tuple[str, ...], catalog: GpuCatalog) -> list[GpuDevice]:
    devices = []
    for row in csv.reader(io.StringIO(text)):
        if not row or not row[0].strip():
            continue
        values = dict(zip(fields, (_none(c) for c in row), strict=False))
        name = values.get("name")
        notes = [
            f"{f} unknown: nvidia-smi reports N/A"
            for f in ("power.limit", "compute_cap")
            if f in fields and values.get(f) is None
        ]
        mib = {
            k: _int(values.get(k))
            for k in ("memory.total", "memory.used", "memory.free", "memory.reserved")
        }
        power = values.get("power.limit")
        entry = catalog.by_nvml_name(name) if name else None
        mig = values.get("mig.mode.current")
        devices.append(
            GpuDevice(
                index=_int(values.get("index")) or 0,
                uuid=values.get("uuid"),
                name=name,
                total_bytes=mib["memory.total"] * MIB if mib["memory.total"] else None,
                free_bytes=mib["memory.free"] * MIB if mib["memory.free"] is not None else None,
                used_bytes=mib["memory.used"] * MIB if mib["memory.used"] is not None else None,
                reserved_bytes=mib["memory.reserved"] * MIB
                if mib["memory.reserved"] is not None
                else None,
                memory_source="nvidia-smi",
                compute_capability=values.get("compute_cap"),
                pcie_gen_current=_int(values.get("pcie.link.gen.current")),
                pcie_gen_max=_int(values.get("pcie.link.gen.max")),
                pcie_width_current=_int(values.get("pcie.link.width.current")),
                pcie_width_max=_int(values.get("pcie.link.width.max")),
                power_limit_watts=float(power) if power else None,
                mig_enabled=None if mig is None else mig.lower() == "enabled",
                memory_bandwidth_gb_s=entry.memory_bandwidth_gb_s if entry else None,
                memory_bandwidth_source="catalog" if entry else None,
                notes=tuple(notes)
                + (
                    ("MIG devices are not listed by the nvidia-smi fallback",)
                    if mig and mig.lower() == "enabled"
                    else ()
                ),
            )
        )
    return devices


def probe_with_smi(runner: Runner, catalog: GpuCatalog) -> GpuReport:
    fields: tuple[str, ...] = FIELDS
    res = runner(_argv(fields), 10.0)
    if res.returncode not in (0, None) and "memory.reserved" in (res.stdout + res.stderr):
        fields = tuple(f for f in FIELDS if f != "memory.reserved")
        res = runner(_argv(fields), 10.0)
    if res.returncode != 0:
        why = res.error or (res.stderr or res.stdout).strip().splitlines()[-1:] or ["failed"]
        return GpuReport(
            (),
            (),
            None,
            None,
            None,
            None,
            (f"nvidia-smi failed: {why if isinstance(why, str) else why[0]}",),
        )
    devices = parse_smi_csv(res.stdout, fields, catalog)
    driver = None
    if "driver_version" in fields:
        rows = list(csv.reader(io.StringIO(res.stdout)))
        if rows and rows[0]:
            driver = _none(rows[0][fields.index("driver_version")])
    return GpuReport(
        tuple(devices),
        (),
        driver,
        None,
        "nvidia-smi",
        None,
        ("CUDA driver version is not reported by the nvidia-smi query",),
    )
