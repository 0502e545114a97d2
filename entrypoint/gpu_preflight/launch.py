"""The only side effects: write the profile and plan atomically, then become the engine.

``exec_engine`` is the one place that calls ``os.execvpe``; tests patch that one name.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_preflight.plan.errors import EngineMissing
from gpu_preflight.plan.overrides import is_secret

DEFAULT_PROFILE_DIR = "/var/lib/gpu-preflight"
ENGINE_BINARIES = {"llama.cpp": "llama-server", "vllm": "vllm"}
IMAGE_VARIANT = {
    "llama.cpp": "the `llamacpp` or `both` target of the gpu-preflight image",
    "vllm": "the `vllm` or `both` target of the gpu-preflight image",
}


@dataclass(frozen=True)
class ProfileDir:
    path: Path
    warning: str | None  # set when the requested directory was unusable and a temp dir is used


def _writable(path: Path) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def choose_profile_dir(env: Mapping[str, str]) -> ProfileDir:
    """PREFLIGHT_PROFILE_DIR (or the image default); an unwritable one falls back to a temp dir.

    A read-only volume must not stop the server from starting: the profile is a record, not a
    prerequisite, so the fallback is a warning.
    """
    wanted = Path(env.get("PREFLIGHT_PROFILE_DIR", "").strip() or DEFAULT_PROFILE_DIR)
    problem = _writable(wanted)
    if problem is None:
        return ProfileDir(wanted, None)
    fallback = Path(tempfile.mkdtemp(prefix="gpu-preflight-"))
    return ProfileDir(
        fallback,
        f"profile directory {wanted} is not writable ({problem}); writing to {fallback} instead "
        "(set PREFLIGHT_PROFILE_DIR or mount a writable volume there to keep the record)",
    )


def write_atomic(path: Path, text: str) -> None:
    """Write text to path so readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, doc: Any) -> None:
    write_atomic(path, json.dumps(doc, indent=2) + "\n")


def find_engine(engine: str, env: Mapping[str, str]) -> str:
    """The engine binary's path, or EngineMissing naming it and the image variant that has it."""
    binary = ENGINE_BINARIES[engine]
    found = shutil.which(binary, path=env.get("PATH"))
    if found is None:
        raise EngineMissing(
            f"the plan needs {engine}, but `{binary}` is not on PATH in this image. Use "
            f"{IMAGE_VARIANT[engine]}, or set PREFLIGHT_ENGINE to an engine this image has."
        )
    return found


def available_engines(env: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(e for e, b in ENGINE_BINARIES.items() if shutil.which(b, path=env.get("PATH")))


def engine_environment(env: Mapping[str, str], additions: Mapping[str, str]) -> dict[str, str]:
    """The engine's environment: ours plus the plan's additions. Secrets pass through here only."""
    out = dict(env)
    out.update(additions)
    return out


def scrub(text: str, env: Mapping[str, str]) -> str:
    """Remove the values of secret-named variables from text meant for a log or a file."""
    for name, value in env.items():
        if is_secret(name) and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def exec_engine(argv: tuple[str, ...], env: Mapping[str, str]) -> None:
    """Replace this process with the engine, so it receives the container's signals directly."""
    # exec discards Python's buffers: what the summary printed must be out before it.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], list(argv), dict(env))
