"""The profile document: build it from probe results, write it, read it back (validated both ways)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gpu_preflight import __version__
from gpu_preflight.boundedio import FileInputError, read_json, shorten
from gpu_preflight.errors import InvalidInput
from gpu_preflight.profile_types import Hardware, Profile
from gpu_preflight.schemas import SchemaError, validate
from gpu_preflight.serde import DecodeError, from_dict, to_dict

SCHEMA_VERSION = 1


class ProfileError(InvalidInput):
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
    _check_bounds(doc, origin)
    try:
        validate("profile", doc, origin)
    except SchemaError as exc:
        raise ProfileError(str(exc)) from exc
    try:
        return from_dict(Profile, doc)
    except DecodeError as exc:
        raise ProfileError(f"{origin}: {exc}") from exc


PROFILE_ACCEPTED = "a profile JSON file written by `gpu-preflight probe --json --out FILE`"
# No byte count, bandwidth or list in a real profile comes near these; a file beyond them is
# hostile or corrupt, and planning from it would print absurd numbers.
MAX_PROFILE_INT = 2**62
MAX_PROFILE_LIST = 4096
MAX_PROFILE_STRING = 64 * 1024


def _check_bounds(doc: Any, origin: str) -> None:
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        node, where = stack.pop()
        key = where.lstrip("/") or "(top level)"
        if isinstance(node, dict):
            stack.extend((v, f"{where}/{k}") for k, v in node.items())
        elif isinstance(node, list):
            if len(node) > MAX_PROFILE_LIST:
                raise ProfileError(
                    f"{origin}: {key}: a list of {len(node)} items. Accepted: at most "
                    f"{MAX_PROFILE_LIST} items."
                )
            stack.extend((v, f"{where}/{i}") for i, v in enumerate(node))
        elif (
            isinstance(node, (int, float))
            and not isinstance(node, bool)
            and abs(node) > MAX_PROFILE_INT
        ):
            raise ProfileError(
                f"{origin}: {key}: {shorten(node)} is out of range. Accepted: numbers of "
                "magnitude at most 2^62."
            )
        elif isinstance(node, str) and len(node) > MAX_PROFILE_STRING:
            raise ProfileError(
                f"{origin}: {key}: a string of {len(node)} characters. Accepted: at most "
                f"{MAX_PROFILE_STRING}."
            )


def read_profile(path: Path) -> Profile:
    """A saved profile, read with bounds (a FIFO or /dev/zero is refused before it is opened)."""
    try:
        doc = read_json(path, "profile", f"profile {path}")
    except FileInputError as exc:
        hint = "" if exc.accepted else f" Accepted: {PROFILE_ACCEPTED}."
        raise ProfileError(f"{exc}{hint}") from exc
    return profile_from_dict(doc, str(path))
