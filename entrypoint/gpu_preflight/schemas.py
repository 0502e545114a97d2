"""Find and apply the JSON Schemas in ``schemas/`` (the contract between the pipeline's stages)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator


class SchemaError(ValueError):
    """A document does not validate against its schema. The message names the path and the rule."""


def _schema_dir() -> Path:
    # Installed wheel: schemas/ is force-included into the package. Editable checkout: the repo's own.
    packaged = Path(str(resources.files("gpu_preflight"))) / "schemas"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "schemas"


@cache
def load_schema(name: str) -> dict[str, Any]:
    path = _schema_dir() / f"{name}.schema.json"
    # The schemas themselves are checked against the metaschema by the test suite
    # (tests/test_schemas.py); doing it on every start would cost ~50 ms each.
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


@cache
def _validator(name: str) -> Draft202012Validator:
    # Imported here: jsonschema costs ~0.1 s to import, and plans that write nothing never need it.
    from jsonschema import Draft202012Validator, FormatChecker

    return Draft202012Validator(load_schema(name), format_checker=FormatChecker())


def validate(name: str, document: Any, what: str | None = None) -> None:
    """Raise SchemaError listing every violation (up to 10) of ``document`` against ``name``."""
    errors = sorted(_validator(name).iter_errors(document), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    label = what or f"{name} document"
    lines = [
        f"  at {'/'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}"
        for e in errors[:10]
    ]
    more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
    raise SchemaError(
        f"{label} does not match schemas/{name}.schema.json:\n" + "\n".join(lines) + more
    )
