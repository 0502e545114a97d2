"""The tier table: which models to try for how much usable VRAM (data/tiers.json by default)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gpu_preflight.boundedio import PATH_SHOWN, FileInputError, NumberRule, read_json, shorten
from gpu_preflight.inputs.errors import TierTableError
from gpu_preflight.inputs.flags import env_setting
from gpu_preflight.schemas import SchemaError, validate
from gpu_preflight.serde import DecodeError, from_dict

GIB = 2**30
MAX_TIERS = 256  # the built-in table has 8
# Bounds the schema leaves open: a tier beyond them cannot describe a real machine, and planning
# with it would print absurd numbers. (Context: the longest real context, Llama 4 Scout's, is 10M.)
TIER_RULES = {
    "min_vram_gib": NumberRule(0, 65536, integer=False, unit="GiB"),
    "target_context": NumberRule(256, 2**27, unit="tokens"),
    "min_context": NumberRule(256, 2**27, unit="tokens"),
}


@dataclass(frozen=True)
class Tier:
    id: str
    min_vram_gib: float
    label: str
    short_label: str
    description: str
    models: tuple[str, ...]  # "catalog-id" or "catalog-id@QUANT"
    target_context: int
    min_context: int
    speculative: bool
    engines: tuple[str, ...]
    parallel: int
    # KV cache types the planner may fall back to, per engine and in order, when a named model
    # fits at no slot count with the engine's default type (issue 13, degrade step 3). A user's
    # own KV type is never replaced. Absent: no fallback (a user's older tier file keeps working).
    kv_cache_degrade: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def min_vram_bytes(self) -> int:
        return int(self.min_vram_gib * GIB)


@dataclass(frozen=True)
class TierTable:
    tiers: tuple[Tier, ...]  # ascending by min_vram_gib
    origin: str

    def get(self, tier_id: str) -> Tier | None:
        return next((t for t in self.tiers if t.id == tier_id), None)

    def for_vram(self, usable_bytes: int, has_gpu: bool) -> Tier:
        """The largest tier whose minimum the usable VRAM meets (the 0-GiB tier is CPU only)."""
        eligible = [t for t in self.tiers if (t.min_vram_gib > 0) == has_gpu]
        if has_gpu:
            eligible = [t for t in eligible if t.min_vram_bytes <= usable_bytes]
        if not eligible:
            return self.tiers[0]
        return max(eligible, key=lambda t: t.min_vram_gib)


def parse_tiers(doc: Any, origin: str, trusted: bool = False) -> TierTable:
    # The built-in table is validated by the test suite; a user's file is validated here.
    listed = doc.get("tiers") if isinstance(doc, dict) else None
    if isinstance(listed, list) and len(listed) > MAX_TIERS:  # before the (slow) schema check
        raise TierTableError(f"{origin}: {len(listed)} tiers. Accepted: at most {MAX_TIERS} tiers.")
    if not trusted:
        try:
            validate("tiers", doc, origin)
        except SchemaError as exc:
            raise TierTableError(str(exc)) from exc
    try:
        tiers = tuple(
            sorted((from_dict(Tier, t) for t in doc["tiers"]), key=lambda t: t.min_vram_gib)
        )
    except DecodeError as exc:
        raise TierTableError(f"{origin}: {exc}") from exc
    seen: set[str] = set()
    for t in tiers:
        for key, rule in TIER_RULES.items():
            try:
                rule.check(getattr(t, key), origin, f"tier {t.id!r} {key}")
            except FileInputError as exc:
                raise TierTableError(str(exc)) from exc
        if t.id in seen:
            raise TierTableError(f"{origin}: tier id {t.id!r} appears twice")
        seen.add(t.id)
        if t.min_context > t.target_context:
            raise TierTableError(
                f"{origin}: tier {t.id!r} has min_context {t.min_context} above target_context "
                f"{t.target_context}"
            )
    if not any(t.min_vram_gib == 0 for t in tiers):
        raise TierTableError(
            f"{origin}: needs a tier with min_vram_gib 0 for machines without a GPU"
        )
    return TierTable(tiers=tiers, origin=origin)


def builtin_tiers_text() -> str:
    return (resources.files("gpu_preflight") / "data" / "tiers.json").read_text(encoding="utf-8")


TIERS_ACCEPTED = (
    "a readable JSON file matching schemas/tiers.schema.json (what `gpu-preflight tiers --json` "
    "prints is one)"
)


def load_tiers(env: Mapping[str, str]) -> TierTable:
    """The built-in table, or the file PREFLIGHT_TIERS_FILE names (I/O: called by the CLI only).

    The file is read with bounds (``boundedio``): a FIFO, a device or a directory is refused before
    it is opened, and it may be at most ``LIMITS["tiers"]`` bytes.
    """
    path = env_setting(env, "PREFLIGHT_TIERS_FILE") or ""  # its row's parser, the only one
    if not path:
        return parse_tiers(json.loads(builtin_tiers_text()), "built-in tier table", trusted=True)
    origin = f"PREFLIGHT_TIERS_FILE={shorten(path, PATH_SHOWN)}"
    try:
        doc = read_json(Path(path), "tiers", origin)
    except FileInputError as exc:
        hint = "" if exc.accepted else f" Accepted: {TIERS_ACCEPTED}."
        raise TierTableError(f"{exc}{hint}") from exc
    return parse_tiers(doc, origin)
