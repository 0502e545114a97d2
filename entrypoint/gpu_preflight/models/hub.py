"""Resolve a model named by its Hugging Face id (``org/repo``, ``org/repo:QUANT``,
``org/repo/path/file.gguf``, ``org/repo@revision``) into an exact ModelSpec, without weights.

Where the facts come from, in order:

1. the local Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``; read-only, works with
   ``HF_HUB_OFFLINE=1``) when it holds the complete model: its real files are read in place;
2. this module's own header cache (``cache_dir``): the sparse copies an earlier resolution wrote,
   so a restart does not ask the Hub again;
3. the Hub (``HF_ENDPOINT``) through ``huggingface_hub``: ``HfApi.model_info`` for the file list,
   the commit and the gated status, then ranged GETs on ``hf_hub_url`` through the library's own
   HTTP session for ``config.json``, the safetensors index and the *headers* of the weight files.

The headers are written into a sparse local copy - the real header bytes, then the file truncated
to its real size, so the tensor data is a hole - and the existing readers
(``gguf_file.spec_from_gguf``, ``hf_dir.spec_from_hf_dir``) read that copy exactly as they read a
downloaded model. The weights themselves are never downloaded.

Why ranged GETs of our own rather than ``get_safetensors_metadata`` / ``hf_hub_download``: those
discard the raw header bytes and the file size (both needed for the sparse copy), spend two extra
HEAD requests per repo, print progress bars, and read a response of whatever size the server
sends. Here every response is read in a bounded stream: a GGUF header at most
``MAX_GGUF_HEADER`` bytes, a safetensors header at most ``MAX_SAFETENSORS_HEADER``, JSON files at
most ``MAX_JSON``, everything together at most ``MAX_TOTAL``; each bound is checked against the
*declared* size before the bytes are requested. Every request has a timeout
(``HF_HUB_ETAG_TIMEOUT`` for metadata, ``HF_HUB_DOWNLOAD_TIMEOUT`` for file reads, huggingface_hub's
own variables and defaults) and the whole resolution has a deadline (``DEADLINE_S``).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from gpu_preflight.models.errors import ModelError, ModelFileError
from gpu_preflight.models.gguf_header import (
    MAX_ARRAY,
    MAX_KV,
    MAX_NESTING,
    MAX_STRING,
    MAX_TENSORS,
    MAX_WORK,
)
from gpu_preflight.models.types import Artifact, Engine, ModelSpec

MIB = 2**20
MAX_GGUF_HEADER = 64 * MIB  # one GGUF file's header (real ones: 1-12 MB, the tokenizer dominates)
# safetensors' own bound on the header (safetensors/src/tensor.rs: MAX_HEADER_SIZE = 100_000_000).
MAX_SAFETENSORS_HEADER = 100_000_000
MAX_JSON = 32 * MIB  # config.json, model.safetensors.index.json (DeepSeek-V3's index is ~9 MB)
MAX_INFO = 64 * MIB  # the model_info answer (siblings of the largest repos: a few MB)
MAX_TOTAL = 100 * MIB  # everything one resolution fetches
MAX_SIBLINGS = 100_000  # files in one repo
MAX_PARTS = 1024  # parts of one split GGUF (as gguf_file.MAX_SPLITS)
MAX_SHARDS = 4096  # safetensors shards (as hf_dir.MAX_SHARDS)
FIRST_GGUF_CHUNK = 2 * MIB  # first ranged read of a GGUF: most of a small model's header
FIRST_ST_CHUNK = 100_000  # first ranged read of a safetensors shard (as huggingface_hub: 100 kB)
DEADLINE_S = 120.0  # the whole resolution, however many requests
# huggingface_hub's defaults (constants.DEFAULT_ETAG_TIMEOUT / DEFAULT_DOWNLOAD_TIMEOUT).
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_ENDPOINT = "https://huggingface.co"
# llama-server's file for `-hf org/repo` without a tag (common/download.cpp asks the Hub for
# "latest", which it resolves to Q4_K_M when the repo has one).
DEFAULT_GGUF_QUANT = "Q4_K_M"

Origin = Literal["hf-cache", "header-cache", "hub"]

_PART = re.compile(r"^(?P<stem>.+)-(?P<i>[0-9]{5})-of-(?P<n>[0-9]{5})\.gguf$")
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_REPO = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")
_REV = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_QUANT_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# The quant tag at the end of a GGUF file name: Qwen3-8B-Q4_K_M, llama-2-7b.Q4_K_M, x-UD-Q4_K_XL,
# gpt-oss-20b-mxfp4, model-f16, model-bf16, x-IQ4_XS, x-TQ1_0.
_TAG_IN_NAME = re.compile(
    r"(?i)[-.](?P<tag>(?:UD-)?(?:I?Q[0-9][A-Z0-9_]*|TQ[0-9][A-Z0-9_]*|B?F(?:16|32)|MXFP4[A-Z0-9_]*))$"
)
_ENV_TRUE = ("1", "on", "yes", "true")


class HubError(ModelError):
    """A model named by Hugging Face id cannot be resolved (exit 2)."""


class HubUnreachable(HubError):
    """The Hub (HF_ENDPOINT) did not answer in time, answered an error, or redirected in a loop."""


class HubOffline(HubError):
    """HF_HUB_OFFLINE is set (or the library is offline) and no cache holds the model."""


class HubRepoNotFound(HubError):
    """No such repo (or revision) on the endpoint."""


class HubGatedRepo(HubError):
    """The repo is gated and HF_TOKEN is missing or has no access."""


class HubQuantNotFound(HubError):
    """The repo has no GGUF file with that quant tag (or no such file)."""


class HubNotAModel(HubError):
    """The repo holds neither config.json + safetensors nor GGUF files."""


class HubFileError(HubError, ModelFileError):
    """A remote file is malformed, lies about its size, or exceeds a bound."""


@dataclass(frozen=True)
class HubRef:
    """A parsed model reference: ``org/repo[@revision][:QUANT | /path/file.gguf]``."""

    repo: str
    revision: str | None = None
    quant: str | None = None
    file: str | None = None  # a path inside the repo (a .gguf file)


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


def parse_hub_ref(text: str) -> HubRef | None:
    """``org/repo[@rev][:QUANT]`` or ``org/repo[@rev]/path/file.gguf``; None when ``text`` is not
    of that form (a catalog id, a local path). A revision cannot contain '/' here: pass
    ``revision=`` to resolve_hub_model for ``refs/pr/1``."""
    t = text.strip()
    if not t or t.startswith(("/", "./", "../", "~")) or len(t) > 1024 or "\\" in t:
        return None
    t = t.removeprefix("hf.co/").removeprefix("huggingface.co/")
    parts = t.split("/")
    if len(parts) < 2:
        return None
    org, rest = parts[0], parts[1]
    path = "/".join(parts[2:]) or None
    quant = None
    if path is None:
        rest, colon, q = rest.partition(":")
        if colon:
            if not _QUANT_TAG.match(q):
                return None
            quant = q
    name, at, rev = rest.partition("@")
    if at and not _REV.match(rev):
        return None
    repo = f"{org}/{name}"
    if not _REPO.match(repo) or ".." in repo or "--" in repo:
        return None
    if path is not None and (not path.lower().endswith(".gguf") or not _safe_relpath(path)):
        return None
    return HubRef(repo=repo, revision=rev or None, quant=quant, file=path)


# -- settings from the environment -----------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    endpoint: str
    token: str | None
    offline: bool
    hub_cache: Path
    meta_timeout: float
    read_timeout: float


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in _ENV_TRUE


def _timeout(env: Mapping[str, str], name: str) -> float:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return DEFAULT_TIMEOUT_S
    try:
        v = float(raw)
    except ValueError:
        raise HubError(
            f"{name}={raw[:40]!r} is not a number of seconds. Accepted: a number from 0.1 to 600."
        ) from None
    if not 0.1 <= v <= 600 or math.isnan(v):
        raise HubError(f"{name}={raw[:40]!r}: accepted: a number of seconds from 0.1 to 600.")
    return v


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HF_HOME")
    if home:
        return Path(home).expanduser()
    xdg = env.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path("~/.cache").expanduser()) / "huggingface"


def _token(env: Mapping[str, str]) -> str | None:
    # huggingface_hub's order (utils/_auth.py get_token): HF_TOKEN, then the saved token file.
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        v = (env.get(name) or "").strip()
        if v:
            return v
    path = Path(env.get("HF_TOKEN_PATH") or (_home(env) / "token")).expanduser()
    try:
        if path.is_file() and path.stat().st_size <= 4096:
            return path.read_text(encoding="utf-8", errors="replace").strip() or None
    except OSError:
        return None
    return None


def _settings(env: Mapping[str, str]) -> _Settings:
    from huggingface_hub import constants

    # llama-server downloads from MODEL_ENDPOINT before HF_ENDPOINT (common/common.cpp
    # common_get_model_endpoint): the planner must read the facts where the engine will fetch
    # the file, so the two spellings agree, or the start is refused naming both.
    hf = (env.get("HF_ENDPOINT") or "").strip().rstrip("/")
    model_ep = (env.get("MODEL_ENDPOINT") or "").strip().rstrip("/")
    if hf and model_ep and hf != model_ep:
        raise HubError(
            f"HF_ENDPOINT={hf[:80]!r} and MODEL_ENDPOINT={model_ep[:80]!r} name different Hub "
            "endpoints: llama-server downloads from MODEL_ENDPOINT, huggingface_hub (and the "
            "plan) reads HF_ENDPOINT. Accepted: set one of them, or both to the same URL."
        )
    name = "HF_ENDPOINT" if hf else "MODEL_ENDPOINT"
    endpoint = hf or model_ep or DEFAULT_ENDPOINT
    if not re.match(r"^https?://[^\s/]+(/[^\s]*)?$", endpoint):
        raise HubError(
            f"{name}={endpoint[:80]!r} is not an http(s) URL. Accepted: e.g. "
            f"{DEFAULT_ENDPOINT} or http://127.0.0.1:8080."
        )
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    hub_cache = Path(cache).expanduser() if cache else _home(env) / "hub"
    offline = (
        _truthy(env.get("HF_HUB_OFFLINE"))
        or _truthy(env.get("TRANSFORMERS_OFFLINE"))
        or constants.is_offline_mode()  # the library itself refuses every request then
    )
    return _Settings(
        endpoint=endpoint,
        token=_token(env),
        offline=offline,
        hub_cache=hub_cache,
        meta_timeout=_timeout(env, "HF_HUB_ETAG_TIMEOUT"),
        read_timeout=_timeout(env, "HF_HUB_DOWNLOAD_TIMEOUT"),
    )


# -- paths ---------------------------------------------------------------------------------------


def _safe_relpath(p: str) -> bool:
    if not p or len(p) > 1024 or p.startswith("/") or "\\" in p or "\0" in p:
        return False
    return all(c not in ("", ".", "..") and len(c) <= 255 for c in p.split("/"))


def _repo_folder(repo: str) -> str:
    # huggingface_hub's layout (file_download.repo_folder_name): models--org--name
    return "models--" + repo.replace("/", "--")


def _parts_of(path: str, listing: set[str]) -> list[str] | None:
    """All parts of a split GGUF (``-00001-of-0000N.gguf``) in repo order, or [path]; None when a
    part is missing from ``listing``."""
    d, _, name = path.rpartition("/")
    m = _PART.match(name)
    if not m:
        return [path]
    n = int(m["n"])
    if not 1 <= n <= MAX_PARTS or not 1 <= int(m["i"]) <= n:
        return None
    prefix = f"{d}/" if d else ""
    parts = [f"{prefix}{m['stem']}-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]
    return parts if all(p in listing for p in parts) else None


def _tag_of(path: str) -> str:
    name = path.rpartition("/")[2]
    m = _PART.match(name)
    stem = m["stem"] if m else name[: -len(".gguf")]
    t = _TAG_IN_NAME.search(stem)
    return t["tag"] if t else stem


def _has_tag(path: str, quant: str) -> bool:
    name = path.rpartition("/")[2]
    m = _PART.match(name)
    stem = m["stem"] if m else name[: -len(".gguf")]
    # The tag is a whole name component: Q4_K matches "x-Q4_K.gguf" but not "x-Q4_K_M.gguf".
    pat = rf"(?i)(?:^|[-._/]){re.escape(quant)}(?:$|[-.])"
    return re.search(pat, stem) is not None or _tag_of(path).lower() == quant.lower()


def _is_weight_gguf(path: str) -> bool:
    name = path.rpartition("/")[2].lower()
    # Multimodal projectors (llama.cpp --mmproj) are GGUFs too, but not the model.
    return name.endswith(".gguf") and not name.startswith("mmproj") and "mmproj-" not in name


# -- picking the files of a repo -----------------------------------------------------------------


@dataclass(frozen=True)
class _Pick:
    engine: Engine
    files: tuple[str, ...]  # GGUF parts in order, or config.json + index + shards
    quant: str | None


def _pick(
    repo: str,
    listing: set[str],
    ref: HubRef,
    engine: Engine | None,
    where: str,
    complete: bool,
    lone_ok: bool = False,
) -> _Pick | None:
    """Which files to read. ``complete`` is False for a cache (a partial listing): a miss is
    None there (try the next source), an error on the Hub. Without a tag, a partial listing
    names the file llama.cpp would take only if it has Q4_K_M, or (``lone_ok``: offline) one
    quant alone."""
    ggufs = sorted(p for p in listing if _is_weight_gguf(p))
    if ref.file is not None:
        if ref.file not in listing:
            if not complete:
                return None
            raise HubQuantNotFound(
                f"{where}: {repo} has no file {ref.file!r}. Accepted: "
                + (", ".join(ggufs[:12]) if ggufs else "(the repo has no GGUF files)")
                + "."
            )
        parts = _parts_of(ref.file, listing)
        if parts is None:
            if not complete:
                return None
            raise HubQuantNotFound(f"{where}: {repo}: split GGUF {ref.file!r} lacks some parts.")
        return _Pick("llama.cpp", tuple(parts), _tag_of(ref.file))
    st = sorted(p for p in listing if p.endswith(".safetensors") and "/" not in p)
    has_config = "config.json" in listing
    want_gguf = ref.quant is not None or engine == "llama.cpp" or (ggufs and not st)
    if engine == "vllm":
        if ref.quant is not None:
            raise HubQuantNotFound(
                f"{where}: a :{ref.quant} tag names a GGUF file, which llama.cpp serves, not vLLM. "
                "Accepted: org/repo (safetensors) for vLLM."
            )
        want_gguf = False
    if want_gguf:
        if not ggufs:
            if not complete:
                return None
            if engine == "llama.cpp" and st:
                raise HubNotAModel(
                    f"{where}: {repo} has safetensors weights but no GGUF file for llama.cpp. "
                    "Accepted: a GGUF repo (org/repo-GGUF:QUANT), or serve this repo with vLLM."
                )
            raise HubQuantNotFound(
                f"{where}: {repo} has no GGUF files"
                + (
                    " (it is a safetensors repo: drop the :QUANT tag to serve it with vLLM)."
                    if st
                    else "."
                )
            )
        quant = ref.quant
        if quant is None:
            by_default = [p for p in ggufs if _has_tag(p, DEFAULT_GGUF_QUANT)]
            tags = sorted({_tag_of(p) for p in ggufs})
            if by_default:
                quant = DEFAULT_GGUF_QUANT
            elif len(tags) == 1 and (complete or lone_ok):
                quant = tags[0]
            else:
                if not complete:
                    return None
                raise HubQuantNotFound(
                    f"{where}: {repo} has several GGUF quants and no {DEFAULT_GGUF_QUANT}. "
                    f"Accepted: {repo}:TAG with TAG one of {', '.join(tags[:24])}."
                )
        hits = [p for p in ggufs if _has_tag(p, quant)]
        for first in hits:
            parts = _parts_of(first, listing)
            if parts is not None and parts[0] == first:
                return _Pick("llama.cpp", tuple(parts), _tag_of(first))
        if not complete:
            return None
        tags = sorted({_tag_of(p) for p in ggufs})
        raise HubQuantNotFound(
            f"{where}: {repo} has no GGUF file with quant {quant!r}. Accepted: "
            f"{', '.join(f'{repo}:{t}' for t in tags[:24])}."
        )
    if st and has_config:
        index = "model.safetensors.index.json"
        files = ["config.json"]
        if index in listing:
            files.append(index)  # the shards come from its weight_map
        else:
            files += st
        return _Pick("vllm", tuple(files), None)
    if not complete:
        return None
    what = ", ".join(sorted(listing)[:8]) if listing else "no files"
    raise HubNotAModel(
        f"{where}: {repo} is not a model repo the planner can read (it has {what}). Accepted: a "
        "repo with config.json and .safetensors weights (vLLM) or .gguf files (llama.cpp)."
    )


# -- caches --------------------------------------------------------------------------------------


def _snapshot(root: Path, repo: str, revision: str | None) -> tuple[Path, str] | None:
    folder = root / _repo_folder(repo)
    rev = revision or "main"
    commit = rev
    if not _COMMIT.match(rev):
        ref = folder / "refs" / rev
        try:
            commit = ref.read_text(encoding="ascii", errors="replace").strip()[:64]
        except OSError:
            return None
    snap = folder / "snapshots" / commit
    return (snap, commit) if _COMMIT.match(commit) and snap.is_dir() else None


def _listing(snap: Path) -> set[str]:
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(snap):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            full = Path(dirpath) / f
            if full.is_file():  # follows the snapshot's symlinks into blobs/
                out.add(full.relative_to(snap).as_posix())
            if len(out) > MAX_SIBLINGS:
                return out
    return out


def _from_cache(
    root: Path,
    origin: Origin,
    ref: HubRef,
    revision: str | None,
    engine: Engine | None,
    where: str,
    offline: bool,
) -> HubResolution | None:
    found = _snapshot(root, ref.repo, revision)
    if found is None:
        return None
    snap, commit = found
    listing = _listing(snap)
    full = _load_listing(root, ref.repo, commit)
    if full is not None:
        # The header cache kept the repo's whole file list: pick as on the Hub, then use the
        # copy only if it holds the picked files.
        pick = _pick(ref.repo, full, ref, engine, where, complete=True)
        if pick is None or not all(f in listing for f in pick.files):
            return None
    else:
        pick = _pick(ref.repo, listing, ref, engine, where, complete=False, lone_ok=offline)
    if pick is None:
        return None
    if pick.engine == "vllm" and not _all_st_parts(pick.files):
        return None
    if pick.engine == "vllm" and "model.safetensors.index.json" in pick.files:
        try:
            shards = _index_shards(
                (snap / "model.safetensors.index.json").read_bytes()[: MAX_JSON + 1], where
            )
        except (OSError, HubFileError):
            return None
        if not all(s in listing for s in shards):
            return None  # a partial download: ask the next source
    return _read_local(snap, pick, ref, commit, origin, 0, 0, None)


def _load_listing(root: Path, repo: str, commit: str) -> set[str] | None:
    f = root / _repo_folder(repo) / "listings" / f"{commit}.json"
    try:
        if f.stat().st_size > MAX_INFO:
            return None
        doc = json.loads(f.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(doc, list) or not all(isinstance(x, str) for x in doc):
        return None
    return {x for x in doc if _safe_relpath(x)}


_ST_PART = re.compile(r"-([0-9]{5})-of-([0-9]{5})\.safetensors$")


def _all_st_parts(files: Sequence[str]) -> bool:
    """Without an index, shards named model-0000i-of-0000N must all be there."""
    have: dict[str, set[int]] = {}
    for f in files:
        m = _ST_PART.search(f)
        if m:
            have.setdefault(f[: m.start()] + f"/{m[2]}", set()).add(int(m[1]))
    return all(len(v) == int(k.rpartition("/")[2]) for k, v in have.items())


# -- HTTP ---------------------------------------------------------------------------------------


class _Fetch:
    """Bounded, counted requests through huggingface_hub's HTTP session."""

    def __init__(self, s: _Settings, where: str, revision: str | None, suggest: str) -> None:
        self.s, self.where = s, where
        self.revision = revision  # for "no such revision"
        self.suggest = suggest  # " (did you mean ...?)" or ""
        self.bytes = 0
        self.requests = 0
        self.deadline = time.monotonic() + DEADLINE_S

    def headers(self) -> dict[str, str]:
        from huggingface_hub.utils._headers import build_hf_headers

        return build_hf_headers(token=self.s.token or False, library_name="gpu-preflight")

    def budget(self, n: int, what: str) -> None:
        if self.bytes + n > MAX_TOTAL:
            raise HubFileError(
                f"{self.where}: reading {what} would fetch {self.bytes + n} bytes in all. "
                f"Accepted: at most {MAX_TOTAL} bytes of headers per model."
            )

    @contextmanager
    def errors(self, repo: str, what: str) -> Iterator[None]:
        """Every transport or HTTP failure becomes a HubError naming the value and a way out."""
        import httpx2
        from huggingface_hub import errors as hfe

        way_out = (
            "Mount a Hugging Face cache that holds the model (HF_HOME / HF_HUB_CACHE) and set "
            "HF_HUB_OFFLINE=1, or pass a local path"
        )
        try:
            yield
        except hfe.OfflineModeIsEnabled:
            raise HubOffline(
                f"{self.where}: {repo}: offline mode is on (HF_HUB_OFFLINE) and no cache holds "
                f"the model. {way_out}."
            ) from None
        except httpx2.TooManyRedirects:
            raise HubUnreachable(
                f"{self.where}: {repo}: {self.s.endpoint} redirected {what} in a loop. {way_out}, "
                "or fix HF_ENDPOINT."
            ) from None
        except httpx2.TimeoutException:
            raise HubUnreachable(
                f"{self.where}: {repo}: {self.s.endpoint} did not answer {what} in time "
                f"(HF_HUB_ETAG_TIMEOUT={self.s.meta_timeout:g} s for metadata and connections, "
                f"HF_HUB_DOWNLOAD_TIMEOUT={self.s.read_timeout:g} s per read). {way_out}."
            ) from None
        except hfe.GatedRepoError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            page = f"{self.s.endpoint}/{repo}"
            if self.s.token:
                raise HubGatedRepo(
                    f"{self.where}: {repo} is gated and the account of HF_TOKEN has no access to "
                    f"it (HTTP {status}). Request access on {page}, or set HF_TOKEN to a token "
                    "of an account that has it."
                ) from None
            raise HubGatedRepo(
                f"{self.where}: {repo} is gated: reading {what} needs a token (HTTP {status}). "
                f"Accept its terms on {page} and set HF_TOKEN to a read token of that account."
            ) from None
        except hfe.RevisionNotFoundError:
            raise HubRepoNotFound(
                f"{self.where}: {repo} has no revision {self.revision!r} on {self.s.endpoint}. "
                "Accepted: a branch, tag or commit of the repo (org/repo@REVISION)."
            ) from None
        except hfe.RemoteEntryNotFoundError:
            raise HubQuantNotFound(
                f"{self.where}: {repo} lists {what} but the endpoint has no such file."
            ) from None
        except hfe.RepositoryNotFoundError:
            hint = ", set HF_TOKEN" if not self.s.token else ""
            raise HubRepoNotFound(
                f"{self.where}: no model repo {repo!r} on {self.s.endpoint}{self.suggest}. If it "
                f"is private{hint}; otherwise check the name."
            ) from None
        except hfe.HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            raise HubUnreachable(
                f"{self.where}: {repo}: {self.s.endpoint} answered HTTP {status} for {what}. "
                f"{way_out}."
            ) from None
        except (httpx2.HTTPError, OSError) as exc:
            raise HubUnreachable(
                f"{self.where}: {repo}: cannot reach {self.s.endpoint} ({type(exc).__name__}). "
                f"{way_out}."
            ) from None

    def model_info(self, repo: str, revision: str | None) -> Any:
        from huggingface_hub import HfApi, get_session

        def count(response: Any) -> None:
            self.requests += 1
            n = int(response.headers.get("content-length") or 0)
            if n > MAX_INFO:
                raise HubFileError(
                    f"{self.where}: {repo}: the model info is {n} bytes. Accepted: at most "
                    f"{MAX_INFO}."
                )
            self.bytes += n

        client = get_session()
        hooks = client.event_hooks
        client.event_hooks = {**hooks, "response": [*hooks.get("response", []), count]}
        try:
            with self.errors(repo, "the model info"):
                return HfApi(endpoint=self.s.endpoint, library_name="gpu-preflight").model_info(
                    repo,
                    revision=revision,
                    expand=["sha", "siblings", "gated", "config", "safetensors", "gguf"],
                    token=self.s.token or False,
                    timeout=self.s.meta_timeout,
                )
        finally:
            client.event_hooks = hooks

    def get(self, repo: str, commit: str, path: str, start: int, stop: int) -> tuple[bytes, int]:
        """Bytes [start, stop) of a repo file and the file's size (a ranged GET)."""
        import httpx2
        from huggingface_hub import get_session, hf_hub_url, hf_raise_for_status

        want = stop - start
        self.budget(want, path)
        if time.monotonic() > self.deadline:
            raise HubUnreachable(
                f"{self.where}: {repo}: resolving took more than {DEADLINE_S:g} s; stopped."
            )
        url = hf_hub_url(repo, path, revision=commit, endpoint=self.s.endpoint)
        headers = {**self.headers(), "Range": f"bytes={start}-{stop - 1}"}
        headers["Accept-Encoding"] = "identity"  # sizes and offsets are of the stored bytes
        timeout = httpx2.Timeout(self.s.read_timeout, connect=self.s.meta_timeout)
        with self.errors(repo, path):
            self.requests += 1
            with get_session().stream("GET", url, headers=headers, timeout=timeout) as r:
                if r.status_code >= 400:
                    n = r.headers.get("content-length") or ""
                    if n.isdigit() and int(n) < 65536:
                        r.read()  # the error text, for huggingface_hub's message
                    hf_raise_for_status(r)
                size = self._size(r, repo, path, start)
                chunks: list[bytes] = []
                got = 0
                for chunk in r.iter_raw():
                    chunks.append(chunk[: want - got])
                    got += len(chunks[-1])
                    if got >= want:
                        break
                    if time.monotonic() > self.deadline:
                        raise HubUnreachable(
                            f"{self.where}: {repo}: {path} trickles in too slowly (over "
                            f"{DEADLINE_S:g} s); stopped."
                        )
        data = b"".join(chunks)
        self.bytes += len(data)
        if len(data) < min(want, size - start):
            raise HubFileError(
                f"{self.where}: {repo}: {path}: the endpoint sent {len(data)} of the "
                f"{min(want, size - start)} bytes asked for (bytes {start}-{stop - 1})."
            )
        return data, size

    def _size(self, r: Any, repo: str, path: str, start: int) -> int:
        cr = r.headers.get("content-range")
        if r.status_code == 206 and cr:
            m = re.match(r"^bytes ([0-9]+)-([0-9]+)/([0-9]+)$", cr.strip())
            if not m or int(m[1]) != start or len(m[3]) > 16:
                raise HubFileError(
                    f"{self.where}: {repo}: {path}: unusable Content-Range {cr[:80]!r} for a read "
                    f"from byte {start}."
                )
            return int(m[3])
        if r.status_code == 200 and start == 0:
            n = r.headers.get("content-length")
            if n is not None and n.isdigit() and len(n) <= 16:
                return int(n)
        raise HubFileError(
            f"{self.where}: {repo}: {path}: the endpoint ignored the Range request (HTTP "
            f"{r.status_code}, no usable Content-Range); refusing to download the whole file. "
            "Accepted: an endpoint that serves byte ranges, as the Hub does."
        )

    def small(self, repo: str, commit: str, path: str, cap: int) -> bytes:
        """A whole small file (JSON), at most ``cap`` bytes."""
        window = min(cap + 1, MAX_TOTAL - self.bytes)
        self.budget(max(window, 1), path)
        data, size = self.get(repo, commit, path, 0, window)
        if size > window:
            self.budget(size, path)
        if size > cap:
            raise HubFileError(
                f"{self.where}: {repo}: {path} is {size} bytes. Accepted: at most {cap}."
            )
        return data


# -- GGUF: how long is the header? -----------------------------------------------------------------


class _NeedMore(Exception):
    def __init__(self, pos: int, estimate: int) -> None:
        super().__init__(pos)
        self.pos, self.estimate = pos, estimate


_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_header_end(buf: bytes, size: int) -> int:
    """Where a GGUF file's tensor data starts (the header's end, aligned), from its first bytes.

    Raises ``_NeedMore(pos, estimate)`` when ``buf`` ends before the header does (``estimate``:
    a guess of how many more bytes the header needs), ``ValueError`` for a malformed header. The
    same bounds as gguf_header.read_header hold, checked before anything is skipped or kept."""
    n_buf = len(buf)
    pos = 0

    def need(n: int, est: int = 0) -> None:
        if pos + n > size:
            raise ValueError(f"the header runs past the end of the file ({size} bytes)")
        if pos + n > n_buf:
            raise _NeedMore(pos + n, est)

    def u32() -> int:
        nonlocal pos
        need(4)
        v: int = struct.unpack_from("<I", buf, pos)[0]
        pos += 4
        return v

    def u64() -> int:
        nonlocal pos
        need(8)
        v: int = struct.unpack_from("<Q", buf, pos)[0]
        pos += 8
        return v

    def string(limit: int = MAX_STRING) -> int:
        nonlocal pos
        n = u64()
        if n > limit:
            raise ValueError(f"a string at byte {pos - 8} declares {n} bytes (at most {limit})")
        pos += n
        return n

    def value(vtype: int, depth: int, key: str) -> None:
        nonlocal pos
        if vtype in _SIZES:
            if key == "general.alignment" and vtype == 4:
                align[0] = u32()
                return
            need(_SIZES[vtype])
            pos += _SIZES[vtype]
        elif vtype == 8:
            string()
        elif vtype == 9:
            if depth >= MAX_NESTING:
                raise ValueError(f"arrays nested more than {MAX_NESTING} deep")
            etype, n = u32(), u64()
            if n > MAX_ARRAY:
                raise ValueError(f"an array at byte {pos - 8} declares {n} elements")
            work[0] += n
            if work[0] > MAX_WORK:
                raise ValueError(f"the header's arrays hold more than {MAX_WORK} elements")
            if etype in _SIZES:
                pos += n * _SIZES[etype]
            elif etype == 8:
                # Vocabularies: hundreds of thousands of strings, walked without copying them.
                start, p, unpack = pos, pos, struct.unpack_from
                for i in range(n):
                    if p + 8 > n_buf:
                        if p + 8 > size:
                            raise ValueError("a string array runs past the end of the file")
                        avg = (p - start) // i if i else 16
                        # The rest of this array, and as much again for what follows it
                        # (merges follow tokens and are about as long).
                        raise _NeedMore(p + 8, (n - i) * avg + n * avg)
                    ln = unpack("<Q", buf, p)[0]
                    if ln > MAX_STRING:
                        raise ValueError(f"a string at byte {p} declares {ln} bytes")
                    p += 8 + ln
                pos = p
            elif etype == 9:
                for _ in range(n):
                    value(9, depth + 1, key)
            else:
                raise ValueError(f"an array of unknown type {etype}")
        else:
            raise ValueError(f"unknown metadata value type {vtype}")

    align = [32]
    work = [0]
    need(24)
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError(f"not a GGUF file (starts with {bytes(buf[:4])!r})")
    pos = 4
    if u32() not in (2, 3):
        raise ValueError("GGUF version is not 2 or 3")
    n_tensors, n_kv = u64(), u64()
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV or n_kv * 12 + n_tensors * 24 > size:
        raise ValueError(f"{n_kv} metadata keys and {n_tensors} tensors are not believable")
    for _ in range(n_kv):
        kstart = pos
        klen = string(1 << 16)
        need(0)
        key = bytes(buf[kstart + 8 : kstart + 8 + klen]).decode("utf-8", "replace")
        value(u32(), 0, key)
    for _ in range(n_tensors):
        string(1 << 16)
        n_dims = u32()
        if n_dims > 8:
            raise ValueError(f"a tensor with {n_dims} dimensions")
        need(8 * n_dims + 12, n_tensors * 96)
        pos += 8 * n_dims + 12
    need(0)  # the last value's bytes are part of the header too
    a = align[0]
    if a <= 0 or a & (a - 1) or a > 1 << 20:
        raise ValueError(f"general.alignment {a} is not a power of two")
    return min(size, (pos + a - 1) // a * a)


# -- reading from the Hub ------------------------------------------------------------------------


def _index_shards(raw: bytes, where: str) -> list[str]:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise HubFileError(f"{where}: model.safetensors.index.json is not JSON ({exc})") from None
    wmap = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise HubFileError(
            f"{where}: model.safetensors.index.json has no weight_map of tensor -> file."
        )
    names = sorted(set(wmap.values()))
    if len(names) > MAX_SHARDS or not all(_safe_relpath(n) and "/" not in n for n in names):
        raise HubFileError(
            f"{where}: model.safetensors.index.json names {len(names)} shards, or a shard outside "
            f"the repo's top folder. Accepted: at most {MAX_SHARDS} file names."
        )
    return names


def _write_sparse(dest: Path, head: bytes, size: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    with tmp.open("wb") as f:
        f.write(head)
        f.truncate(size)  # the rest is a hole: no disk, reads as zeros, never read by the readers
    tmp.replace(dest)


def _gguf_to(fetch: _Fetch, repo: str, commit: str, path: str, dest: Path) -> int:
    buf, size = fetch.get(repo, commit, path, 0, FIRST_GGUF_CHUNK)
    while True:
        try:
            gguf_header_end(buf, size)
            break
        except _NeedMore as more:
            if more.pos > MAX_GGUF_HEADER:
                raise HubFileError(
                    f"{fetch.where}: {repo}: {path}: its GGUF header is longer than "
                    f"{MAX_GGUF_HEADER} bytes (it needs byte {more.pos} at least). Accepted: a "
                    f"header of at most {MAX_GGUF_HEADER} bytes."
                ) from None
            stop = min(size, MAX_GGUF_HEADER, max(2 * len(buf), more.pos + more.estimate + MIB))
            more_bytes, size2 = fetch.get(repo, commit, path, len(buf), stop)
            if size2 != size:
                raise HubFileError(
                    f"{fetch.where}: {repo}: {path} changed size between two reads "
                    f"({size} then {size2} bytes)."
                ) from None
            buf += more_bytes
        except ValueError as exc:
            raise HubFileError(
                f"{fetch.where}: {repo}: {path}: malformed GGUF header ({exc})."
            ) from None
    _write_sparse(dest, buf, size)
    return size


def _safetensors_to(fetch: _Fetch, repo: str, commit: str, path: str, dest: Path) -> int:
    head, size = fetch.get(repo, commit, path, 0, FIRST_ST_CHUNK)
    if len(head) < 8:
        raise HubFileError(f"{fetch.where}: {repo}: {path} is {size} bytes: too short.")
    (n,) = struct.unpack_from("<Q", head, 0)
    if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
        raise HubFileError(
            f"{fetch.where}: {repo}: {path}: its header declares {n} bytes but the file has "
            f"{size}. Accepted: a header of at most {min(MAX_SAFETENSORS_HEADER, max(size - 8, 0))}"
            " bytes."
        )
    if 8 + n > len(head):
        rest, _ = fetch.get(repo, commit, path, len(head), 8 + n)
        head += rest
    head = head[: 8 + n]
    try:
        doc = json.loads(head[8:])
        ends = [int(v["data_offsets"][1]) for k, v in doc.items() if k != "__metadata__"]
    except (ValueError, RecursionError, TypeError, KeyError, IndexError, AttributeError):
        raise HubFileError(
            f"{fetch.where}: {repo}: {path}: its header is not safetensors JSON."
        ) from None
    data = max(ends, default=0)
    if 8 + n + data != size:
        raise HubFileError(
            f"{fetch.where}: {repo}: {path}: its header describes {8 + n + data} bytes but the "
            f"file has {size} (a lying or truncated header)."
        )
    _write_sparse(dest, head, size)
    return size


def _from_hub(
    fetch: _Fetch,
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
    listing = {s.rfilename for s in siblings if _safe_relpath(str(s.rfilename))}
    pick = _pick(ref.repo, listing, ref, engine, where, complete=True)
    assert pick is not None
    folder = root / _repo_folder(ref.repo)
    snap = folder / "snapshots" / commit
    total = 0
    files = list(pick.files)
    if pick.engine == "llama.cpp":
        for p in files:
            total += _gguf_to(fetch, ref.repo, commit, p, snap / p)
    else:
        i = 0
        while i < len(files):  # the index appends its shards to `files`
            p = files[i]
            i += 1
            if p.endswith(".json"):
                raw = fetch.small(ref.repo, commit, p, MAX_JSON)
                (snap / p).parent.mkdir(parents=True, exist_ok=True)
                (snap / p).write_bytes(raw)
                if p == "model.safetensors.index.json":
                    shards = _index_shards(raw, where)
                    missing = [s for s in shards if s not in listing]
                    if missing:
                        raise HubFileError(
                            f"{where}: {ref.repo}: the safetensors index names shards the repo "
                            f"lacks: {', '.join(missing[:3])}."
                        )
                    files += shards
            else:
                total += _safetensors_to(fetch, ref.repo, commit, p, snap / p)
    # Record the repo's file list and the revision asked for, so a restart (or offline) picks
    # the same files from this copy.
    listings = folder / "listings"
    listings.mkdir(parents=True, exist_ok=True)
    (listings / f"{commit}.json").write_text(json.dumps(sorted(listing)), encoding="utf-8")
    refs = folder / "refs" / (revision or "main")
    if not _COMMIT.match(revision or ""):
        refs.parent.mkdir(parents=True, exist_ok=True)
        refs.write_text(commit, encoding="ascii")
    return _read_local(
        snap, pick, ref, commit, "hub", fetch.bytes, fetch.requests, total, tuple(files)
    )


def _read_local(
    snap: Path,
    pick: _Pick,
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
            shards = _index_shards((snap / "model.safetensors.index.json").read_bytes(), str(snap))
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


def default_cache_dir(env: Mapping[str, str]) -> Path:
    """Where header copies go when the caller names no folder (never the HF cache itself: the
    copies are sparse and must not be mistaken for downloaded weights)."""
    base = env.get("PREFLIGHT_HUB_HEADERS")
    if base:
        return Path(base).expanduser()
    return Path(tempfile.gettempdir()) / "gpu-preflight-hub-headers"


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
        if not _safe_relpath(file) or not file.lower().endswith(".gguf"):
            raise HubError(f"{where}: file {file[:200]!r}: accepted: a .gguf path inside the repo.")
        parsed = replace(parsed, file=file, quant=None)
    rev = revision if revision is not None else parsed.revision
    if rev is not None and (
        len(rev) > 256 or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", rev) or ".." in rev
    ):
        raise HubError(f"{where}: revision {rev[:80]!r}: accepted: a branch, tag or commit name.")
    if parsed.file is not None and engine == "vllm":
        raise HubError(f"{where}: a .gguf file is served by llama.cpp, not vLLM.")
    s = _settings(env)
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
    fetch = _Fetch(s, where, rev, suggest)
    return _from_hub(fetch, parsed, rev, engine, root, where)
