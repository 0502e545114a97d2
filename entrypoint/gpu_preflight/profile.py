"""The profile document: build it from probe results, write it, read it back (validated both ways)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gpu_preflight import __version__
from gpu_preflight.probe.types import Hardware, Profile
from gpu_preflight.schemas import SchemaError, validate
from gpu_preflight.serde import DecodeError, from_dict, to_dict

SCHEMA_VERSION = 1


class ProfileError(ValueError):
    """A profile file cannot be used; the message says which file, why, and what to do."""


def make_profile(
    hardware: Hardware,
    simulated: str | None = None,
    notes: tuple[str, ...] = (),
    now: datetime | None = None,
) -> Profile:
    created = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return Profile(
        schema_version=SCHEMA_VERSION,
        tool_version=__version__,
        created_at=created.isoformat(timespec="seconds").replace("+00:00", "Z"),
        simulated=simulated,
        hardware=hardware,
        notes=notes,
    )


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    doc: dict[str, Any] = to_dict(profile)
    validate("profile", doc, "the profile")
    return doc


def profile_to_json(profile: Profile) -> str:
    return json.dumps(profile_to_dict(profile), indent=2) + "\n"


def profile_from_dict(doc: Any, origin: str = "profile") -> Profile:
    if not isinstance(doc, dict):
        raise ProfileError(f"{origin}: a profile is a JSON object, got {type(doc).__name__}")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise ProfileError(
                f"{origin}: profile schema_version {version} is newer than this gpu-preflight "
                f"({__version__}) understands (version {SCHEMA_VERSION}); upgrade gpu-preflight "
                "or re-run `gpu-preflight probe --json --out FILE` with this version."
            )
        raise ProfileError(
            f"{origin}: profile schema_version {version!r} is not supported (this gpu-preflight "
            f"reads version {SCHEMA_VERSION}); re-create it with `gpu-preflight probe --json --out FILE`."
        )
    try:
        validate("profile", doc, origin)
        return from_dict(Profile, doc)
    except (SchemaError, DecodeError) as exc:
        raise ProfileError(str(exc)) from exc


def read_profile(path: Path) -> Profile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path} is not JSON: {exc}") from exc
    return profile_from_dict(doc, str(path))
