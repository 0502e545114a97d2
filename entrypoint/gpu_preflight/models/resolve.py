"""Turn a user's model value into a ModelSpec: catalog id, Hugging Face id, or a path on disk.

A file beats the catalog: a GGUF header (or an HF directory's config.json and safetensors headers)
gives the exact architecture and bytes. When the file is a known model (same architecture and
shape as a catalog entry), the catalog's id, name and draft model are kept.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Protocol

from gpu_preflight.models.catalog import same_architecture
from gpu_preflight.models.errors import ModelError
from gpu_preflight.models.types import ModelSpec

PATH_MAX = 4096

ACCEPTED = (
    "a catalog id (see `gpu-preflight matrix` or data/models.json), a Hugging Face id in the "
    "catalog, or a path to a .gguf file or a Hugging Face model directory"
)


class CatalogLike(Protocol):
    @property
    def models(self) -> tuple[ModelSpec, ...]: ...


def known_model(spec: ModelSpec, catalog: CatalogLike) -> ModelSpec:
    """A model read from a file or the Hub, with the catalog's id, name and draft when its
    architecture and shape are a catalog entry's (its own artifact is kept)."""
    return _known(spec, catalog)


def _known(spec: ModelSpec, catalog: CatalogLike) -> ModelSpec:
    # Matched on the full architecture (catalog.same_architecture): a dense Mistral-7B
    # directory is not Mixtral-8x7B, whose depth, widths, heads and vocabulary are the same.
    for m in catalog.models:
        if same_architecture(spec.arch, m.arch):
            return replace(spec, id=m.id, name=m.name, hf_id=m.hf_id, draft=m.draft)
    return spec


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def resolve_model(value: str, catalog: CatalogLike, var_name: str) -> ModelSpec:
    text = value.strip()
    if len(text) > PATH_MAX or "\x00" in text:
        raise ModelError(
            f"{var_name}={_shown(value)}: {len(text)} characters (or a NUL byte). "
            f"Accepted: {ACCEPTED}, at most {PATH_MAX} characters."
        )
    try:
        path = Path(text)
        looks_like_path = text.startswith(("/", "./", "../", "~")) or text.endswith(".gguf")
        if looks_like_path or path.exists() or path.is_symlink():
            path = path.expanduser()
            if not (path.exists() or path.is_symlink()):
                raise ModelError(
                    f"{var_name}={_shown(value)}: no such file or directory. Accepted: {ACCEPTED}."
                )
            if not path.is_dir():
                # A file, or anything that is not a directory (a FIFO, a device, a link to one):
                # the GGUF reader refuses what is not a regular file before opening it.
                from gpu_preflight.models.gguf_file import spec_from_gguf

                return _known(spec_from_gguf(path), catalog)
            if (path / "config.json").is_file():
                from gpu_preflight.models.hf_dir import spec_from_hf_dir

                return _known(spec_from_hf_dir(path), catalog)
            raise ModelError(
                f"{var_name}={_shown(value)}: a directory without config.json. "
                f"Accepted: {ACCEPTED}."
            )
    except (OSError, RuntimeError, ValueError) as exc:
        if isinstance(exc, ModelError):
            raise
        # ~nosuchuser (RuntimeError), a name too long for the filesystem (OSError) ...
        raise ModelError(
            f"{var_name}={_shown(value)}: cannot be read as a path ({exc}). Accepted: {ACCEPTED}."
        ) from None
    key = text.lower()
    for m in catalog.models:
        if m.id == key:
            return m
    for m in catalog.models:
        if m.hf_id.lower() == key or any(a.repo.lower() == key for a in m.artifacts):
            return m
    import difflib

    names = [m.id for m in catalog.models] + [m.hf_id for m in catalog.models]
    close = difflib.get_close_matches(text, names, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ModelError(
        f"{var_name}={_shown(value)} is not a known model.{hint} Accepted: {ACCEPTED}."
    )
