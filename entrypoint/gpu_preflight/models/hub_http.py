"""The Hub's side of resolving a model by Hugging Face id: the settings huggingface_hub reads
(taken from the caller's ``env``, validated, exit 2 naming the variable), and every request,
sent through huggingface_hub's client and session, bounded in bytes and time and counted, its
failures mapped to HubErrors that say what to do (a token is never shown)."""

from __future__ import annotations

import importlib
import math
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from gpu_preflight.models.hub_errors import (
    HubError,
    HubFileError,
    HubGatedRepo,
    HubOffline,
    HubQuantNotFound,
    HubRepoNotFound,
    HubUnreachable,
)

MIB = 2**20
MAX_INFO = 64 * MIB  # the model_info answer (siblings of the largest repos: a few MB)
MAX_TOTAL = 100 * MIB  # everything one resolution fetches
DEADLINE_S = 120.0  # the whole resolution, however many requests
# huggingface_hub's defaults (constants.DEFAULT_ETAG_TIMEOUT / DEFAULT_DOWNLOAD_TIMEOUT).
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_ENDPOINT = "https://huggingface.co"
_ENV_TRUE = ("1", "on", "yes", "true")


@dataclass(frozen=True)
class Settings:
    endpoint: str
    token: str | None = field(repr=False)  # a secret: never in a message or a repr
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


def _token(env: Mapping[str, str]) -> str | None:
    # The caller's environment first, in huggingface_hub's order (utils/_auth.py
    # _get_token_from_environment), then the library's own lookup (get_token: OIDC, the token
    # file `hf auth login` saved).
    v = (env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or "").strip()
    if v:
        return v
    from huggingface_hub import get_token

    return get_token()


def settings(env: Mapping[str, str]) -> Settings:
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
    # huggingface_hub's cache folder (constants.py: HF_HUB_CACHE, else HF_HOME/hub, else
    # XDG_CACHE_HOME/huggingface/hub), read from `env` rather than this process's environment.
    home = env.get("HF_HOME") or str(Path(env.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface")
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    offline = (
        _truthy(env.get("HF_HUB_OFFLINE"))
        or _truthy(env.get("TRANSFORMERS_OFFLINE"))
        or constants.is_offline_mode()  # the library itself refuses every request then
    )
    return Settings(
        endpoint=endpoint,
        token=None if offline else _token(env),
        offline=offline,
        hub_cache=Path(cache or Path(home) / "hub").expanduser(),
        meta_timeout=_timeout(env, "HF_HUB_ETAG_TIMEOUT"),
        read_timeout=_timeout(env, "HF_HUB_DOWNLOAD_TIMEOUT"),
    )


def _net() -> ModuleType:
    """The HTTP library under huggingface_hub's session (httpx for 1.x, httpx2 for 2.x; a client
    from ``set_client_factory`` subclasses one): its timeout and transport exceptions are what
    the library lets through."""
    from huggingface_hub import get_session

    for cls in type(get_session()).__mro__:
        mod = importlib.import_module(cls.__module__.partition(".")[0])
        if hasattr(mod, "TimeoutException") and hasattr(mod, "TooManyRedirects"):
            return mod
    raise TypeError(f"huggingface_hub's session {type(get_session())} is not an httpx client")


class Fetch:
    """Bounded, counted requests through huggingface_hub's client and session."""

    def __init__(self, s: Settings, where: str, revision: str | None, suggest: str) -> None:
        self.s, self.where = s, where
        self.revision = revision  # for "no such revision"
        self.suggest = suggest  # " (did you mean ...?)" or ""
        self.bytes = 0
        self.requests = 0
        self.deadline = time.monotonic() + DEADLINE_S

    @contextmanager
    def errors(self, repo: str, what: str) -> Iterator[None]:
        """Every transport or HTTP failure becomes a HubError naming the value and a way out."""
        from huggingface_hub import errors as hfe

        net = _net()
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
        except net.TooManyRedirects:
            raise HubUnreachable(
                f"{self.where}: {repo}: {self.s.endpoint} redirected {what} in a loop. {way_out}, "
                "or fix HF_ENDPOINT."
            ) from None
        except net.TimeoutException:
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
        except (net.HTTPError, OSError) as exc:
            raise HubUnreachable(
                f"{self.where}: {repo}: cannot reach {self.s.endpoint} ({type(exc).__name__}). "
                f"{way_out}."
            ) from None

    def model_info(self, repo: str, revision: str | None) -> Any:
        """``HfApi.model_info`` with the files' sizes; the answer's declared length is checked
        (a response hook on the library's session) before its body is read."""
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
                    files_metadata=True,  # siblings[].size: the bounds are checked before reads
                    token=self.s.token or False,
                    timeout=self.s.meta_timeout,
                )
        finally:
            client.event_hooks = hooks

    def size(self, repo: str, commit: str, path: str, listed: int | None) -> int:
        """A file's size: from the file list, else huggingface_hub's HEAD (X-Linked-Size)."""
        if listed is not None:
            return listed
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        url = hf_hub_url(repo, path, revision=commit, endpoint=self.s.endpoint)
        with self.errors(repo, path):
            self.requests += 1
            meta = get_hf_file_metadata(
                url, token=self.s.token or False, timeout=self.s.meta_timeout
            )
        if meta.size is None:
            raise HubFileError(f"{self.where}: {repo}: the endpoint gives no size for {path}.")
        return int(meta.size)

    def read(self, repo: str, commit: str, path: str, start: int, stop: int, size: int) -> bytes:
        """Bytes [start, min(stop, size)) of a repo file of ``size`` bytes: one ranged GET on the
        library's session, read as a stream and cut at the bound."""
        from huggingface_hub import get_session, hf_hub_url, hf_raise_for_status

        # Public (huggingface_hub.utils.__all__); its lazy import hides the re-export from mypy.
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        stop = min(stop, size)
        want = stop - start
        if want <= 0:
            return b""
        if self.bytes + want > MAX_TOTAL:
            raise HubFileError(
                f"{self.where}: reading {path} would fetch {self.bytes + want} bytes in all. "
                f"Accepted: at most {MAX_TOTAL} bytes of headers per model."
            )
        if time.monotonic() > self.deadline:
            raise HubUnreachable(
                f"{self.where}: {repo}: resolving took more than {DEADLINE_S:g} s; stopped."
            )
        url = hf_hub_url(repo, path, revision=commit, endpoint=self.s.endpoint)
        headers = build_hf_headers(token=self.s.token or False, library_name="gpu-preflight")
        headers["Range"] = f"bytes={start}-{stop - 1}"
        headers["Accept-Encoding"] = "identity"  # sizes and offsets are of the stored bytes
        timeout = _net().Timeout(self.s.read_timeout, connect=self.s.meta_timeout)
        data = bytearray()
        with self.errors(repo, path):
            self.requests += 1
            with get_session().stream("GET", url, headers=headers, timeout=timeout) as r:
                if r.status_code >= 400:
                    n = r.headers.get("content-length") or ""
                    if n.isdigit() and int(n) < 65536:
                        r.read()  # the error text, for huggingface_hub's message
                    hf_raise_for_status(r)
                # The range asked for, of a file of the listed size; or the whole file.
                cr = r.headers.get("content-range") or ""
                if not (
                    (r.status_code == 206 and re.fullmatch(rf"bytes {start}-[0-9]+/{size}", cr))
                    or (r.status_code == 200 and start == 0 and stop == size)
                ):
                    raise HubFileError(
                        f"{self.where}: {repo}: {path}: the endpoint answered HTTP {r.status_code} "
                        f"with Content-Range {cr[:80]!r} to a read of bytes {start}-{stop - 1} of "
                        f"{size}; refusing to download more. Accepted: an endpoint that serves "
                        "byte ranges of the files it lists, as the Hub does."
                    )
                for chunk in r.iter_raw():
                    data += chunk[: want - len(data)]
                    if len(data) >= want:
                        break
                    if time.monotonic() > self.deadline:
                        raise HubUnreachable(
                            f"{self.where}: {repo}: {path} trickles in too slowly (over "
                            f"{DEADLINE_S:g} s); stopped."
                        )
        self.bytes += len(data)
        if len(data) < want:
            raise HubFileError(
                f"{self.where}: {repo}: {path}: the endpoint sent {len(data)} of the {want} "
                f"bytes asked for (bytes {start}-{stop - 1})."
            )
        return bytes(data)
