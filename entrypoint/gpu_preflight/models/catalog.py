"""The model catalog (data/models.json, or PREFLIGHT_MODELS_FILE): architecture + artifacts per model."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gpu_preflight.models.errors import CatalogError
from gpu_preflight.models.layout import count_params, derive_layout, scale_layout
from gpu_preflight.models.types import Artifact, ModelArch, ModelSpec
from gpu_preflight.schemas import SchemaError, validate
from gpu_preflight.serde import DecodeError, from_dict

MAX_CATALOG_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Catalog:
    models: tuple[ModelSpec, ...]
    origin: str

    def get(self, model_id: str) -> ModelSpec | None:
        key = model_id.strip().lower()
        return next((m for m in self.models if m.id == key), None)

    def by_hf_id(self, hf_id: str) -> ModelSpec | None:
        key = hf_id.strip().lower()
        for m in self.models:
            if m.hf_id.lower() == key or any(a.repo.lower() == key for a in m.artifacts):
                return m
        return None

    def suggest(self, value: str, n: int = 3) -> list[str]:
        names = [m.id for m in self.models] + [m.hf_id for m in self.models]
        return difflib.get_close_matches(value.strip(), names, n=n, cutoff=0.4)


def _artifact(arch: ModelArch, raw: dict[str, Any]) -> Artifact:
    layout = derive_layout(arch, raw["quant"], raw["engine"])
    listed = raw.get("listed_bytes")
    if listed:
        layout = scale_layout(layout, int(listed))
    return Artifact(
        engine=raw["engine"],
        repo=raw["repo"],
        quant=raw["quant"],
        weight_bytes=layout.total_bytes,
        file=raw.get("file"),
        source=raw["source"],
        layout=layout,
    )


def parse_catalog(doc: Any, origin: str, trusted: bool = False) -> Catalog:
    # The built-in catalog is validated by the test suite; a user's file is validated here.
    if not trusted:
        try:
            validate("models", doc, origin)
        except SchemaError as exc:
            raise CatalogError(str(exc)) from exc
    models = []
    seen: set[str] = set()
    for i, raw in enumerate(doc["models"]):
        where = f"{origin}: models[{i}] ({raw['id']})"
        if raw["id"] in seen:
            raise CatalogError(f"{where}: id appears twice")
        seen.add(raw["id"])
        try:
            arch = from_dict(ModelArch, raw["arch"])
            arts = tuple(_artifact(arch, a) for a in raw["artifacts"])
        except (DecodeError, ValueError) as exc:
            raise CatalogError(f"{where}: {exc}") from exc
        counts = count_params(arch)
        models.append(
            ModelSpec(
                id=raw["id"],
                name=raw["name"],
                hf_id=raw["hf_id"],
                params_b=round(counts.total / 1e9, 2),
                active_params_b=raw.get("active_params_b"),
                arch=arch,
                artifacts=arts,
                source=raw["source"],
                draft=raw.get("draft"),
            )
        )
    ids = {m.id for m in models}
    for m in models:
        if m.draft and m.draft not in ids:
            raise CatalogError(
                f"{origin}: {m.id} names draft model {m.draft!r}, which is not in the catalog"
            )
    return Catalog(models=tuple(models), origin=origin)


def load_catalog(path: Path | None = None) -> Catalog:
    """The built-in catalog, or a user's (PREFLIGHT_MODELS_FILE) - I/O, so called by the CLI."""
    if path is None:
        text = (resources.files("gpu_preflight") / "data" / "models.json").read_text("utf-8")
        return parse_catalog(json.loads(text), "built-in model catalog", trusted=True)
    origin = f"PREFLIGHT_MODELS_FILE={path}"
    try:
        if path.stat().st_size > MAX_CATALOG_BYTES:
            raise CatalogError(f"{origin}: larger than 16 MiB; not a model catalog")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"{origin}: cannot read it ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{origin}: not valid JSON ({exc})") from exc
    return parse_catalog(doc, origin)
