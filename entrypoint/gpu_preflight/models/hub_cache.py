"""The caches a model named by Hugging Face id is read from before the Hub: the Hugging Face
cache and this project's header cache, both in huggingface_hub's layout (``models--org--name/
refs``, ``snapshots/<commit>``), the header cache with the repo's whole file list beside
(``listings/<commit>.json``) so a restart picks the same files without the Hub."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from gpu_preflight.models.hub_pick import safe_relpath

MAX_LISTING = 64 * 2**20  # a saved file list (as the model info it came from)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def cached_snapshot(
    root: Path, repo: str, revision: str | None
) -> tuple[Path, str, set[str]] | None:
    """The snapshot of ``repo`` at ``revision`` (a branch, tag or commit; main by default) in a
    cache of huggingface_hub's layout, its commit and the files it holds; None if absent."""
    from huggingface_hub import CacheNotFound, scan_cache_dir

    rev = revision or "main"
    try:
        # A repo the scan finds broken (a ref to a missing snapshot, a dangling blob link) is
        # left out of ``repos`` (listed in ``warnings``): it is simply not cached.
        repos = scan_cache_dir(root).repos
    except (CacheNotFound, OSError, ValueError):
        return None
    for r in repos:
        if r.repo_type != "model" or r.repo_id != repo:
            continue
        for s in r.revisions:
            if _COMMIT.match(s.commit_hash) and (s.commit_hash == rev or rev in s.refs):
                names = {f.file_path.relative_to(s.snapshot_path).as_posix() for f in s.files}
                return s.snapshot_path, s.commit_hash, {n for n in names if safe_relpath(n)}
    return None


def repo_dir(root: Path, repo: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return root / repo_folder_name(repo_id=repo, repo_type="model")  # models--org--name


def load_listing(root: Path, repo: str, commit: str) -> set[str] | None:
    f = repo_dir(root, repo) / "listings" / f"{commit}.json"
    try:
        if f.stat().st_size > MAX_LISTING:
            return None
        doc = json.loads(f.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(doc, list) or not all(isinstance(x, str) for x in doc):
        return None
    return {x for x in doc if safe_relpath(x)}


def save_listing(
    root: Path, repo: str, commit: str, listing: set[str], revision: str | None
) -> None:
    """The repo's whole file list at ``commit``, and ``revision`` (a branch or tag) -> commit."""
    folder = repo_dir(root, repo)
    (folder / "listings").mkdir(parents=True, exist_ok=True)
    (folder / "listings" / f"{commit}.json").write_text(json.dumps(sorted(listing)), "utf-8")
    if not _COMMIT.match(revision or ""):
        ref = folder / "refs" / (revision or "main")
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit, encoding="ascii")


def default_cache_dir(env: Mapping[str, str]) -> Path:
    """Where header copies go when the caller names no folder (never the HF cache itself: the
    copies are sparse and must not be mistaken for downloaded weights)."""
    base = env.get("PREFLIGHT_HUB_HEADERS")
    if base:
        return Path(base).expanduser()
    return Path(tempfile.gettempdir()) / "gpu-preflight-hub-headers"
