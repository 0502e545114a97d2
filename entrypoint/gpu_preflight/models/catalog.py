"""The model catalog (data/models.json, or PREFLIGHT_MODELS_FILE): architecture + artifacts per model."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gpu_preflight.boundedio import PATH_SHOWN, FileInputError, NumberRule, read_json, shorten
from gpu_preflight.models.errors import CatalogError, ModelFileError
from gpu_preflight.models.layout import check_arch, count_params, derive_layout, scale_layout
from gpu_preflight.models.types import Artifact, ModelArch, ModelSpec
from gpu_preflight.schemas import SchemaError, validate
from gpu_preflight.serde import DecodeError, from_dict

MAX_MODELS = 1024  # the built-in catalog has a few dozen
MAX_ARTIFACTS = 64
# A listed artifact size: at least one byte, at most 64 TiB (the largest public checkpoints are ~1.5 TB).
LISTED_BYTES = NumberRule(1, 2**46, unit="bytes")
ACTIVE_PARAMS_B = NumberRule(0, 100_000, integer=False, unit="billion")


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


def architecture_key(a: ModelArch) -> tuple[object, ...]:
    """The facts that make a model the model it is, for matching a file to a catalog entry.

    The full architecture, not a few shape numbers: Mistral-7B and Mixtral-8x7B share family,
    depth, widths, heads and vocabulary and differ only in their experts (issue 19), so the
    expert count, width and routing are part of the key, and so are MLA's latent, the dense FFN
    width and the recurrent layers. Left out: what one source states and another derives
    (sliding-window bookkeeping, context length, tying, provenance names).
    """
    moe = bool(a.n_experts)
    return (
        a.architecture,
        a.n_layers,
        a.hidden_size,
        a.n_heads,
        a.n_kv_heads,
        a.head_dim,
        a.v_head_dim,
        a.vocab_size,
        a.n_experts or 0,
        a.n_experts_per_token if moe else None,
        a.expert_intermediate_size if moe else a.intermediate_size,
        (a.n_shared_experts or 0) if moe else 0,
        a.n_dense_layers if moe else 0,
        a.kv_lora_rank,
        a.qk_rope_head_dim,
        len(a.recurrent_layers),
    )


def same_architecture(a: ModelArch, b: ModelArch) -> bool:
    """Whether two architectures are one model's (architecture_key equal, and the config's own
    model_type equal where both sides know it)."""
    if a.hf_model_type and b.hf_model_type and a.hf_model_type != b.hf_model_type:
        return False
    return architecture_key(a) == architecture_key(b)


def _artifact(arch: ModelArch, raw: dict[str, Any], where: str) -> Artifact:
    layout = derive_layout(arch, raw["quant"], raw["engine"])
    listed = raw.get("listed_bytes")
    if listed is not None:
        layout = scale_layout(layout, LISTED_BYTES.check(listed, where, "listed_bytes"))
    return Artifact(
        engine=raw["engine"],
        repo=raw["repo"],
        quant=raw["quant"],
        weight_bytes=layout.total_bytes,
        file=raw.get("file"),
        source=raw["source"],
        layout=layout,
    )


def _check_sizes(doc: Any, origin: str) -> None:
    listed = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(listed, list):
        return  # the schema check names it
    if len(listed) > MAX_MODELS:
        raise CatalogError(
            f"{origin}: {len(listed)} models. Accepted: at most {MAX_MODELS} models."
        )
    for i, raw in enumerate(listed):
        arts = raw.get("artifacts") if isinstance(raw, dict) else None
        if isinstance(arts, list) and len(arts) > MAX_ARTIFACTS:
            raise CatalogError(
                f"{origin}: models[{i}]: {len(arts)} artifacts. Accepted: at most {MAX_ARTIFACTS}."
            )


def parse_catalog(doc: Any, origin: str, trusted: bool = False) -> Catalog:
    # The built-in catalog is validated by the test suite; a user's file is validated here.
    _check_sizes(doc, origin)  # before the schema check, whose time grows with the entries
    if not trusted:
        try:
            validate("models", doc, origin)
        except SchemaError as exc:
            raise CatalogError(str(exc)) from exc
    models = []
    seen: set[str] = set()
    for i, raw in enumerate(doc["models"]):
        where = f"{origin}: models[{i}] ({shorten(raw['id'])})"
        if raw["id"] in seen:
            raise CatalogError(f"{where}: id appears twice")
        seen.add(raw["id"])
        try:
            arch = check_arch(from_dict(ModelArch, raw["arch"]), f"{where}: arch")
            arts = tuple(
                _artifact(arch, a, f"{where}: artifacts[{j}]")
                for j, a in enumerate(raw["artifacts"])
            )
        except ModelFileError as exc:
            raise CatalogError(str(exc)) from exc
        except FileInputError as exc:
            raise CatalogError(str(exc)) from exc
        except (DecodeError, ValueError) as exc:
            raise CatalogError(f"{where}: {exc}") from exc
        active = raw.get("active_params_b")
        if active is not None:
            try:
                ACTIVE_PARAMS_B.check(active, where, "active_params_b")
            except FileInputError as exc:
                raise CatalogError(str(exc)) from exc
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
    origin = f"PREFLIGHT_MODELS_FILE={shorten(str(path), PATH_SHOWN)}"
    try:
        doc = read_json(path, "models", origin)
    except FileInputError as exc:
        hint = "" if exc.accepted else " Accepted: a JSON file matching schemas/models.schema.json."
        raise CatalogError(f"{exc}{hint}") from exc
    return parse_catalog(doc, origin)
