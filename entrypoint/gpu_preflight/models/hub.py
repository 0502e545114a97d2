"""Resolve a model named by its Hugging Face id (``org/repo``, ``org/repo:QUANT``,
``org/repo/path/file.gguf``, ``org/repo@revision``) into an exact ModelSpec, without weights.

Where the facts come from, in order:

1. the local Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``; read-only, works with
   ``HF_HUB_OFFLINE=1``) when it holds the complete model, found by ``scan_cache_dir``;
2. this module's own header cache (``cache_dir``, the same layout): the sparse copies an earlier
   resolution wrote, so a restart does not ask the Hub again;
3. the Hub (``HF_ENDPOINT``) through ``huggingface_hub``: ``HfApi.model_info`` (file list with
   sizes, commit, gated status), then ranged reads on ``hf_hub_url`` through the library's session
   of ``config.json``, the safetensors index and the *headers* of the weight files.

Each header is written into a sparse local copy (the real header bytes, then the file truncated
to its real size, the tensor data a hole) and checked by the readers of record: the GGUF one in
``gguf_header`` and huggingface_hub's ``parse_local_safetensors_file_metadata``; the spec readers
(``gguf_file.spec_from_gguf``, ``hf_dir.spec_from_hf_dir``) then read the copy as they read a
download, and llama-fit-params dry-runs it.

What is ours, and why not ``get_safetensors_metadata`` / ``HfFileSystem`` / ``hf_hub_download``:
those read a response of whatever size the endpoint sends (``response.content``: an endpoint that
ignores ``Range`` sends a whole shard into memory), drop the raw header bytes the sparse copy needs,
spend extra requests (``file_exists`` HEADs, ``repo_info`` and tree listings) and write into the
user's Hugging Face cache. Here every read is a bounded stream: a GGUF header at most
``MAX_GGUF_HEADER`` bytes, a safetensors header at most ``MAX_SAFETENSORS_HEADER``, JSON at most
``MAX_JSON``, everything at most ``MAX_TOTAL``, each bound checked against the size the file list
declares before the bytes are asked for; every request has huggingface_hub's timeouts
(``HF_HUB_ETAG_TIMEOUT``, ``HF_HUB_DOWNLOAD_TIMEOUT``) and the whole resolution a deadline.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from gpu_preflight.models.hub_cache import (
    cached_snapshot,
    default_cache_dir,
    load_listing,
    repo_dir,
    save_listing,
)
from gpu_preflight.models.hub_errors import HubError, HubFileError, HubOffline
from gpu_preflight.models.hub_http import Fetch, settings
from gpu_preflight.models.hub_pick import (
    HubRef,
    Pick,
    all_st_parts,
    index_shards,
    parse_hub_ref,
    pick_files,
    safe_relpath,
)
from gpu_preflight.models.types import Artifact, Engine, ModelSpec

__all__ = ["HubResolution", "parse_hub_ref", "resolve_hub_model"]  # the errors: hub_errors

MIB = 2**20
MAX_GGUF_HEADER = 64 * MIB  # one GGUF file's header (real ones: 1-12 MB, the tokenizer dominates)
# safetensors' own bound on the header (safetensors/src/tensor.rs: MAX_HEADER_SIZE = 100_000_000).
MAX_SAFETENSORS_HEADER = 100_000_000
MAX_JSON = 32 * MIB  # config.json, model.safetensors.index.json (DeepSeek-V3's index is ~9 MB)
MAX_SIBLINGS = 100_000  # files in one repo
FIRST_GGUF_CHUNK = 2 * MIB  # first ranged read of a GGUF: most of a small model's header
GGUF_GROWTH = 2  # each further read doubles the prefix (an 8 B model's ~4 MB header: 2 reads)
FIRST_ST_CHUNK = 100_000  # first ranged read of a safetensors shard (as huggingface_hub: 100 kB)

Origin = Literal["hf-cache", "header-cache", "hub"]

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubResolution:
    """What resolve_hub_model found. ``spec.artifacts[0]`` is the artifact to plan: its ``repo``
    is the Hub id, ``file`` the GGUF (first part) inside the repo or None for vLLM, ``path`` None
    (the model is not a local path), ``weight_bytes`` and ``layout`` exact from the headers."""

    spec: (
        ModelSpec  # artifacts[0]: engine, repo (org/repo), file, quant, exact weight_bytes, layout
    )
    engine: Engine
    local_copy: Path  # the GGUF (first part) or the HF directory the spec was read from
    bytes_fetched: int  # bytes received from the endpoint by this call (0 from a cache)
    requests: int  # HTTP requests this call sent (0 from a cache)
    revision: str  # the commit the facts come from (40 hex digits when known)
    origin: Origin  # hf-cache: real files; header-cache / hub: sparse header-only copies
    files: tuple[str, ...] = ()  # repo paths of the files the spec was read from
    file_bytes: int = 0  # their real size in all (what the engine would download)


# -- caches --------------------------------------------------------------------------------------


def _from_cache(
    root: Path,
    origin: Origin,
    ref: HubRef,
    revision: str | None,
    engine: Engine | None,
    where: str,
    offline: bool,
) -> HubResolution | None:
    found = cached_snapshot(root, ref.repo, revision)
    if found is None:
        return None
    snap, commit, listing = found
    full = load_listing(root, ref.repo, commit)
    if full is not None:
        # The header cache kept the repo's whole file list: pick as on the Hub, then use the
        # copy only if it holds the picked files.
        pick = pick_files(ref.repo, full, ref, engine, where, complete=True)
        if pick is None or not all(f in listing for f in pick.files):
            return None
    else:
        pick = pick_files(ref.repo, listing, ref, engine, where, complete=False, lone_ok=offline)
    if pick is None:
        return None
    if pick.engine == "vllm" and not all_st_parts(pick.files):
        return None
    if pick.engine == "vllm" and "model.safetensors.index.json" in pick.files:
        try:
            shards = index_shards(
                (snap / "model.safetensors.index.json").read_bytes()[: MAX_JSON + 1], where
            )
        except (OSError, HubFileError):
            return None
        if not all(s in listing for s in shards):
            return None  # a partial download: ask the next source
    return _read_local(snap, pick, ref, commit, origin, 0, 0, None)


# -- reading from the Hub ------------------------------------------------------------------------


def _write_sparse(dest: Path, head: bytes, size: int, check: Callable[[Path], None]) -> None:
    """``head``, then a hole up to ``size`` (no disk, reads as zeros, never read by the readers),
    kept only once ``check`` accepts the copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with tmp.open("wb") as f:
            f.write(head)
            f.truncate(size)
        check(tmp)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def _gguf_to(fetch: Fetch, repo: str, commit: str, path: str, size: int, dest: Path) -> None:
    """The GGUF header's bytes, read until gguf_header (the one GGUF reader) parses them whole,
    then the sparse copy."""
    from gpu_preflight.models.gguf_header import read_header

    where = f"{fetch.where}: {repo}: {path}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = 0
    try:
        with part.open("wb") as f:
            while True:
                stop = min(MAX_GGUF_HEADER, max(FIRST_GGUF_CHUNK, GGUF_GROWTH * have))
                more = fetch.read(repo, commit, path, have, stop, size)
                if have == 0 and more[:4] != b"GGUF":
                    raise HubFileError(f"{where}: not a GGUF file (it starts {more[:4]!r}).")
                f.write(more)
                f.flush()
                have += len(more)
                # The prefix is a file of its own length: a header that runs past it is cut short
                # there (the reader refuses what the file cannot hold), never read from a hole.
                try:
                    read_header(part)
                    break
                except ValueError as exc:  # GGUFHeaderError
                    if have >= size:
                        raise HubFileError(f"{where}: malformed GGUF header ({exc}).") from None
                    if have >= MAX_GGUF_HEADER:
                        raise HubFileError(
                            f"{where}: its GGUF header is longer than {MAX_GGUF_HEADER} bytes "
                            f"({exc}). Accepted: a header of at most {MAX_GGUF_HEADER} bytes."
                        ) from None
            f.truncate(size)  # the tensor data: a hole
        part.replace(dest)
    finally:
        part.unlink(missing_ok=True)


def _safetensors_to(fetch: Fetch, repo: str, commit: str, path: str, size: int, dest: Path) -> None:
    """The shard's header bytes, checked by huggingface_hub's own safetensors parser."""
    from huggingface_hub import parse_local_safetensors_file_metadata
    from huggingface_hub.errors import SafetensorsParsingError

    where = f"{fetch.where}: {repo}: {path}"
    if size < 8:
        raise HubFileError(f"{where} is {size} bytes: too short for a safetensors file.")
    head = fetch.read(repo, commit, path, 0, FIRST_ST_CHUNK, size)
    (n,) = struct.unpack_from("<Q", head)
    if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
        raise HubFileError(
            f"{where}: its header declares {n} bytes but the file has {size}. Accepted: a header "
            f"of at most {min(MAX_SAFETENSORS_HEADER, max(size - 8, 0))} bytes."
        )
    if 8 + n > len(head):
        head += fetch.read(repo, commit, path, len(head), 8 + n, size)

    def check(copy: Path) -> None:
        try:
            meta = parse_local_safetensors_file_metadata(copy)
            end = max((int(t.data_offsets[1]) for t in meta.tensors.values()), default=0)
        except (SafetensorsParsingError, ValueError, TypeError, IndexError) as exc:
            raise HubFileError(f"{where}: its header is not safetensors JSON ({exc}).") from None
        if 8 + n + end != size:
            raise HubFileError(
                f"{where}: its header describes {8 + n + end} bytes but the file has {size} "
                "(a lying or truncated header)."
            )

    _write_sparse(dest, head[: 8 + n], size, check)


def _from_hub(
    fetch: Fetch,
    ref: HubRef,
    revision: str | None,
    engine: Engine | None,
    root: Path,
    where: str,
) -> HubResolution:
    info = fetch.model_info(ref.repo, revision)
    commit = str(getattr(info, "sha", "") or "")
    if not _COMMIT.match(commit):
        raise HubFileError(
            f"{where}: {ref.repo}: the endpoint gave no commit sha ({commit[:50]!r})."
        )
    siblings = list(getattr(info, "siblings", None) or [])
    if len(siblings) > MAX_SIBLINGS:
        raise HubFileError(
            f"{where}: {ref.repo} lists {len(siblings)} files. Accepted: at most {MAX_SIBLINGS}."
        )
    listed = {str(s.rfilename): s.size for s in siblings if safe_relpath(str(s.rfilename))}
    listing = set(listed)
    pick = pick_files(ref.repo, listing, ref, engine, where, complete=True)
    assert pick is not None
    snap = repo_dir(root, ref.repo) / "snapshots" / commit
    total = 0
    files = list(pick.files)
    for p in files:  # the index appends its shards to `files`
        size = fetch.size(ref.repo, commit, p, listed[p])
        if p.endswith(".json"):
            if size > MAX_JSON:
                raise HubFileError(
                    f"{where}: {ref.repo}: {p} is {size} bytes. Accepted: at most {MAX_JSON}."
                )
            raw = fetch.read(ref.repo, commit, p, 0, size, size)
            (snap / p).parent.mkdir(parents=True, exist_ok=True)
            (snap / p).write_bytes(raw)
            if p == "model.safetensors.index.json":
                shards = index_shards(raw, where)
                missing = [s for s in shards if s not in listing]
                if missing:
                    raise HubFileError(
                        f"{where}: {ref.repo}: the safetensors index names shards the repo "
                        f"lacks: {', '.join(missing[:3])}."
                    )
                files += shards
            continue
        total += size
        to = _gguf_to if pick.engine == "llama.cpp" else _safetensors_to
        to(fetch, ref.repo, commit, p, size, snap / p)
    # Record the repo's file list and the revision asked for, so a restart (or offline) picks
    # the same files from this copy.
    save_listing(root, ref.repo, commit, listing, revision)
    return _read_local(
        snap, pick, ref, commit, "hub", fetch.bytes, fetch.requests, total, tuple(files)
    )


def _read_local(
    snap: Path,
    pick: Pick,
    ref: HubRef,
    commit: str,
    origin: Origin,
    fetched: int,
    requests: int,
    total: int | None,
    files: tuple[str, ...] | None = None,
) -> HubResolution:
    if pick.engine == "llama.cpp":
        from gpu_preflight.models.gguf_file import spec_from_gguf

        local = snap / pick.files[0]
        spec = spec_from_gguf(local)
        file = pick.files[0]
    else:
        from gpu_preflight.models.hf_dir import spec_from_hf_dir

        local = snap
        spec = spec_from_hf_dir(snap)
        file = None
    if files is None:
        files = pick.files
        if pick.engine == "vllm" and "model.safetensors.index.json" in files:
            shards = index_shards((snap / "model.safetensors.index.json").read_bytes(), str(snap))
            files = (*files, *shards)
    if total is None:
        total = sum((snap / f).stat().st_size for f in files if not f.endswith(".json"))
    art0 = spec.artifacts[0]
    how = {
        "hf-cache": "the local Hugging Face cache",
        "header-cache": "headers cached by an earlier resolution",
        "hub": "the Hub (headers only, ranged requests)",
    }[origin]
    art = replace(
        art0,
        repo=ref.repo,
        file=file,
        path=None,
        source=f"{ref.repo}@{commit}: {art0.source} (from {how})",
    )
    art_final: Artifact = art
    name = ref.repo.rpartition("/")[2]
    spec = replace(
        spec,
        id=ref.repo.lower() + (f":{pick.quant.lower()}" if pick.quant else ""),
        name=name + (f" {pick.quant}" if pick.quant else ""),
        hf_id=ref.repo,
        artifacts=(art_final,),
        source=art_final.source or ref.repo,
    )
    return HubResolution(
        spec=spec,
        engine=pick.engine,
        local_copy=local,
        bytes_fetched=fetched,
        requests=requests,
        revision=commit,
        origin=origin,
        files=files,
        file_bytes=total,
    )


# -- the entry point -----------------------------------------------------------------------------


def resolve_hub_model(
    ref: str,
    env: Mapping[str, str],
    cache_dir: Path | None = None,
    *,
    revision: str | None = None,
    file: str | None = None,
    engine: Engine | None = None,
    known: Sequence[str] = (),
    var_name: str = "PREFLIGHT_MODEL",
) -> HubResolution:
    """The exact ModelSpec of a model named by Hugging Face id, without downloading weights.

    ``ref``: ``org/repo[@revision][:QUANT]`` or ``org/repo[@revision]/path/file.gguf``.
    ``revision`` / ``file`` (e.g. from ``--revision`` / ``LLAMA_ARG_HF_FILE``) override those parts.
    ``engine`` forces the artifact kind (llama.cpp -> a GGUF file, vllm -> safetensors).
    ``known``: names to suggest when the repo does not exist (catalog ids and repos).
    ``env``: HF_ENDPOINT, HF_TOKEN, HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE, HF_HUB_ETAG_TIMEOUT,
    HF_HUB_DOWNLOAD_TIMEOUT are read from it (not from os.environ).
    Raises a HubError (a ModelError: exit 2) naming ``var_name``, the value and what to do.
    """
    where = f"{var_name}={ref!r}"
    parsed = parse_hub_ref(ref)
    if parsed is None:
        raise HubError(
            f"{where} is not a Hugging Face model id. Accepted: org/repo, org/repo:QUANT, "
            "org/repo@REVISION, org/repo/path/file.gguf."
        )
    if file is not None:
        if not safe_relpath(file) or not file.lower().endswith(".gguf"):
            raise HubError(f"{where}: file {file[:200]!r}: accepted: a .gguf path inside the repo.")
        parsed = replace(parsed, file=file, quant=None)
    rev = revision if revision is not None else parsed.revision
    if rev is not None and (
        len(rev) > 256 or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", rev) or ".." in rev
    ):
        raise HubError(f"{where}: revision {rev[:80]!r}: accepted: a branch, tag or commit name.")
    if parsed.file is not None and engine == "vllm":
        raise HubError(f"{where}: a .gguf file is served by llama.cpp, not vLLM.")
    s = settings(env)
    root = (cache_dir or default_cache_dir(env)).expanduser()
    got = _from_cache(s.hub_cache, "hf-cache", parsed, rev, engine, where, s.offline)
    if got is None:
        got = _from_cache(root, "header-cache", parsed, rev, engine, where, s.offline)
    if got is not None:
        return got
    if s.offline:
        raise HubOffline(
            f"{where}: HF_HUB_OFFLINE is set and neither the Hugging Face cache ({s.hub_cache}) "
            f"nor the header cache ({root}) holds {parsed.repo}"
            + (f"@{rev}" if rev else "")
            + ". Mount a cache that holds it (HF_HOME / HF_HUB_CACHE), unset HF_HUB_OFFLINE, "
            "or pass a local path."
        )
    suggest = ""
    if known:
        import difflib

        by_lower = {k.lower(): k for k in known}
        close: list[str] = []
        for probe in (parsed.repo.lower(), parsed.repo.rpartition("/")[2].lower()):
            for k in difflib.get_close_matches(probe, list(by_lower), n=3, cutoff=0.5):
                if by_lower[k] not in close:
                    close.append(by_lower[k])
        suggest = f" (did you mean {', '.join(close[:3])}?)" if close else ""
    fetch = Fetch(s, where, rev, suggest)
    return _from_hub(fetch, parsed, rev, engine, root, where)
