"""The GPU catalog (data/gpus.json): real cards for --simulate and the bandwidth NVML cannot read."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from gpu_preflight.serde import from_dict

MIB = 2**20


@dataclass(frozen=True)
class MigProfile:
    name: str  # "1g.10gb"
    memory_mib: int
    max_count: int


@dataclass(frozen=True)
class GpuSpec:
    id: str
    aliases: tuple[str, ...]
    nvml_name: str
    memory_total_mib: int
    memory_reserved_mib: int
    memory_idle_used_mib: int
    memory_bandwidth_gb_s: float
    compute_capability: str
    pcie_gen: int
    pcie_width: int
    power_limit_w: float
    mig_profiles: tuple[MigProfile, ...]
    source: str

    def mig(self, name: str) -> MigProfile | None:
        return next((m for m in self.mig_profiles if m.name == name.lower()), None)


@dataclass(frozen=True)
class GpuCatalog:
    gpus: tuple[GpuSpec, ...]

    def find(self, name: str) -> GpuSpec | None:
        key = name.strip().lower()
        for g in self.gpus:
            if key == g.id or key in g.aliases or key == g.nvml_name.lower():
                return g
        return None

    def by_nvml_name(self, nvml_name: str) -> GpuSpec | None:
        key = nvml_name.strip().lower()
        return next((g for g in self.gpus if g.nvml_name.lower() == key), None)

    def suggest(self, name: str, n: int = 3) -> list[str]:
        names = [g.id for g in self.gpus] + [a for g in self.gpus for a in g.aliases]
        return difflib.get_close_matches(name.strip().lower(), names, n=n, cutoff=0.4)


@cache
def load_gpu_catalog() -> GpuCatalog:
    # Built-in data: validated against schemas/gpus.schema.json by the test suite, not per start.
    doc = json.loads((resources.files("gpu_preflight") / "data" / "gpus.json").read_text("utf-8"))
    return GpuCatalog(gpus=tuple(from_dict(GpuSpec, g) for g in doc["gpus"]))
