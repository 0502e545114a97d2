"""Receipt <-> its JSON document (schemas/receipt.schema.json), and the receipts kept in the profile
volume for calibration.

Layout in the profile directory:
- ``receipt.json``: the latest receipt, beside ``plan.json`` and ``profile.json``;
- ``receipts/<key id>/<created_at>.json``: every receipt, by key, at most ``KEEP_PER_KEY`` per key
  and ``MAX_KEYS`` keys read back (the oldest beyond that are left out of calibration, and
  removed by the writer), so a long-lived volume stays small and reading it stays bounded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_preflight.boundedio import read_json
from gpu_preflight.errors import InvalidInput
from gpu_preflight.receipt.types import Receipt
from gpu_preflight.schemas import SchemaError, validate
from gpu_preflight.serde import DecodeError, from_dict, to_dict

RECEIPT_FILE = "receipt.json"
HISTORY_DIR = "receipts"
KEEP_PER_KEY = 20
MAX_KEYS = 64


def receipt_to_dict(r: Receipt) -> dict[str, Any]:
    doc: dict[str, Any] = to_dict(r)
    validate("receipt", doc, "the receipt")
    return doc


def receipt_from_dict(doc: Any, origin: str = "receipt") -> Receipt:
    validate("receipt", doc, origin)
    return from_dict(Receipt, doc)


def history_name(r: Receipt) -> str:
    """A file name that sorts by time: 2026-12-01T22-40-05.123456Z.json."""
    return r.created_at.replace(":", "-") + ".json"


@dataclass(frozen=True)
class History:
    receipts: tuple[Receipt, ...]  # oldest first
    skipped: tuple[str, ...]  # files that could not be used, with why


def _newest(paths: list[Path], n: int) -> list[Path]:
    return sorted(paths, key=lambda p: p.name)[-n:]


def load_history(profile_dir: Path) -> History:
    """Every usable receipt kept in ``profile_dir`` (bounded); unusable files are named, not fatal."""
    root = profile_dir / HISTORY_DIR
    try:
        keys = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return History((), ())
    out: list[Receipt] = []
    skipped: list[str] = []
    keys = sorted(keys, key=_mtime)[-MAX_KEYS:]
    for k in keys:
        try:
            files = [p for p in k.iterdir() if p.suffix == ".json" and not p.name.startswith(".")]
        except OSError:
            continue
        for f in _newest(files, KEEP_PER_KEY):
            try:
                doc = read_json(f, "receipt")
                out.append(receipt_from_dict(doc, str(f)))
            except (InvalidInput, SchemaError, DecodeError, OSError) as exc:
                skipped.append(f"{f}: {str(exc).splitlines()[0][:160]}")
    out.sort(key=lambda r: r.created_at)
    return History(tuple(out), tuple(skipped))


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def stale_files(profile_dir: Path, key_id: str) -> list[Path]:
    """History files of one key beyond the newest ``KEEP_PER_KEY`` (for the writer to remove)."""
    d = profile_dir / HISTORY_DIR / key_id
    try:
        files = sorted(p for p in d.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except OSError:
        return []
    return files[: max(0, len(files) - KEEP_PER_KEY)]


def latest(profile_dir: Path) -> tuple[Receipt | None, str | None]:
    """The receipt.json beside the plan, or (None, why) - never an exception."""
    path = profile_dir / RECEIPT_FILE
    if not os.path.lexists(path):
        return None, None
    try:
        return receipt_from_dict(read_json(path, "receipt"), str(path)), None
    except (InvalidInput, SchemaError, DecodeError, OSError) as exc:
        return None, f"{path}: {str(exc).splitlines()[0][:160]}"
