"""A small local Hugging Face Hub: the HTTP API parts that ``huggingface_hub`` calls.

What it speaks (checked against huggingface_hub 2.4's source: hf_api.py ``model_info``,
file_download.py ``hf_hub_url`` / ``get_hf_file_metadata`` / ``hf_hub_download``,
utils/_http.py ``hf_raise_for_status``):

- ``GET /api/models/{org}/{name}`` and ``.../revision/{rev}``: the model info (``id``, ``sha``,
  ``siblings``, ``gated``, and ``config`` / ``safetensors`` / ``gguf`` when ``expand`` asks;
  without ``expand`` everything; with ``blobs=true`` each sibling's ``size``, ``blobId`` and
  ``lfs``);
- ``HEAD`` and ``GET /{org}/{name}/resolve/{rev}/{path}``: the file, with ``Range: bytes=a-b``
  (206 + ``Content-Range``), ``ETag``, ``X-Repo-Commit``, ``X-Linked-Size``, ``X-Linked-Etag``,
  ``Content-Length``, ``Accept-Ranges``;
- ``GET /api/models/{org}/{name}/refs`` (``branches[].name`` / ``targetCommit``) and
  ``GET /api/models/{org}/{name}/tree/{rev}[/{path}]?recursive=true`` (``type``, ``path``,
  ``size``, ``oid`` and ``lfs.oid`` / ``lfs.size``): what llama.cpp's ``-hf`` downloader asks
  before it downloads (common/hf-cache.cpp ``get_repo_commit`` / ``get_repo_files`` in the
  llama.cpp that llama-cpp-python 0.3.36 vendors; huggingface_hub's ``list_repo_refs`` /
  ``list_repo_tree`` read the same). Every file is listed as an LFS file whose ``lfs.oid`` is
  the ``X-Linked-Etag`` its resolve answers, so llama.cpp (blob named by ``lfs.oid``) and
  huggingface_hub (blob named by that etag) write the same ``blobs/`` entry;
- errors the way the Hub sends them (the ``X-Error-Code`` header is what huggingface_hub maps to
  its exception classes): an unknown repo is 401 without a token and 404 with one
  (``RepoNotFound``), an unknown revision 404 ``RevisionNotFound``, an unknown file 404
  ``EntryNotFound``; a gated repo's files are 401 ``GatedRepo`` without a token and 403 with a
  token that has no access, while its model info and file list stay readable.

Hostile switches, per repo: ``redirect_loop`` (every file read redirects to itself), ``slow_s``
(every request for the repo sleeps that long first), ``sizes=False`` (the model info never lists
file sizes, as a mirror that ignores ``blobs``), ``ignore_range`` (every file read answers 200
with the whole file). Lying files are just files (see the builders below). Files are served from
disk, so sparse files (tensor data as a hole) cost nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from gpu_preflight.models.types import ModelArch


@dataclass
class Snapshot:
    sha: str
    files: dict[str, Path]  # repo path -> file on disk


@dataclass
class FakeRepo:
    repo_id: str
    revisions: dict[str, Snapshot]  # branch/tag name -> snapshot ("main" first)
    gated: bool = False
    redirect_loop: bool = False
    slow_s: float = 0.0
    sizes: bool = True  # False: the model info never lists file sizes (a mirror without blobs)
    ignore_range: bool = False  # True: every file read answers 200 with the whole file

    def snapshot(self, rev: str) -> Snapshot | None:
        if rev in self.revisions:
            return self.revisions[rev]
        return next((s for s in self.revisions.values() if s.sha == rev), None)


@dataclass
class Logged:
    method: str
    path: str
    range: str | None
    auth: bool


@dataclass
class FakeHub:
    """``with FakeHub() as hub: hub.add(...); env = {"HF_ENDPOINT": hub.url}``."""

    token: str = "hf_fake_good_token"  # the one token with access to gated repos
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    log: list[Logged] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def add(
        self,
        repo_id: str,
        files: dict[str, Path],
        *,
        revisions: dict[str, dict[str, Path]] | None = None,
        gated: bool = False,
        redirect_loop: bool = False,
        slow_s: float = 0.0,
        sizes: bool = True,
        ignore_range: bool = False,
    ) -> FakeRepo:
        revs = {"main": Snapshot(_sha(repo_id, "main"), files)}
        for name, fs in (revisions or {}).items():
            revs[name] = Snapshot(_sha(repo_id, name), fs)
        r = FakeRepo(repo_id, revs, gated, redirect_loop, slow_s, sizes, ignore_range)
        self.repos[repo_id] = r
        return r

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests_for(self, repo_id: str) -> list[Logged]:
        return [x for x in self.log if f"/{repo_id}/" in x.path + "/"]


def _sha(repo_id: str, rev: str) -> str:
    return hashlib.sha1(f"{repo_id}@{rev}".encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._quietly(head=True)

    def do_GET(self) -> None:
        self._quietly(head=False)

    def _quietly(self, head: bool) -> None:
        try:
            self._serve(head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client read what it wanted and hung up

    # -- answers ---------------------------------------------------------------------------------

    def _send(
        self,
        code: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        head: bool = False,
    ) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _error(self, code: int, error_code: str, message: str, head: bool) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(
            code,
            body,
            {
                "Content-Type": "application/json",
                "X-Error-Code": error_code,
                "X-Error-Message": message,
            },
            head,
        )

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth.removeprefix("Bearer ").strip() or None

    def _serve(self, head: bool) -> None:
        hub = self.hub
        url = urlsplit(self.path)
        path = url.path
        hub.log.append(
            Logged(self.command, path, self.headers.get("Range"), self._token() is not None)
        )
        parts = [unquote(p) for p in path.split("/")[1:]]
        if len(parts) >= 3 and parts[0] == "api" and parts[1] == "models":
            repo_id = "/".join(parts[2:4])
            rest = parts[4:]
            repo = hub.repos.get(repo_id)
            if repo is not None and repo.slow_s:
                time.sleep(repo.slow_s)
            if repo is None:
                return self._not_found(head)
            if rest == ["refs"]:
                body = json.dumps(_refs(repo)).encode()
                return self._send(200, body, {"Content-Type": "application/json"}, head)
            if rest[:1] == ["tree"] and len(rest) >= 2:
                tree_snap = repo.snapshot(rest[1])
                if tree_snap is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {rest[1]}", head)
                recursive = (parse_qs(url.query).get("recursive") or [""])[0] in ("true", "1")
                body = json.dumps(_tree(tree_snap, "/".join(rest[2:]), recursive)).encode()
                return self._send(200, body, {"Content-Type": "application/json"}, head)
            rev = "main"
            if rest[:1] == ["revision"] and len(rest) == 2:
                rev = rest[1]
            elif rest:
                return self._error(404, "EntryNotFound", "Not found", head)
            snap = repo.snapshot(rev)
            if snap is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            query = parse_qs(url.query)
            expand = query.get("expand") or query.get("expand[]")
            blobs = (query.get("blobs") or [""])[0].lower() in ("true", "1")
            body = json.dumps(_info(repo, snap, expand, blobs and repo.sizes)).encode()
            return self._send(200, body, {"Content-Type": "application/json"}, head)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id = "/".join(parts[:2])
            repo = hub.repos.get(repo_id)
            if repo is not None and repo.slow_s:
                time.sleep(repo.slow_s)
            if repo is None:
                return self._not_found(head)
            if repo.redirect_loop:
                return self._send(302, b"", {"Location": path}, head)
            snap = repo.snapshot(parts[3])
            if snap is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {parts[3]}", head)
            if repo.gated:
                tok = self._token()
                msg = f"Access to model {repo_id} is restricted."
                if tok is None:
                    return self._error(401, "GatedRepo", msg + " Please log in.", head)
                if tok != hub.token:
                    return self._error(403, "GatedRepo", msg + " You are not in the list.", head)
            f = snap.files.get("/".join(parts[4:]))
            if f is None:
                return self._error(404, "EntryNotFound", "Entry not found", head)
            return self._file(f, snap, head, repo.ignore_range)
        return self._error(404, "", "Not found", head)

    def _not_found(self, head: bool) -> None:
        # The Hub answers 401 for a missing repo without a token (it cannot tell private from
        # missing), 404 with one; both carry X-Error-Code: RepoNotFound.
        code = 404 if self._token() else 401
        self._error(code, "RepoNotFound", "Repository not found", head)

    def _file(self, f: Path, snap: Snapshot, head: bool, ignore_range: bool = False) -> None:
        size = f.stat().st_size
        etag = _etag(f)
        headers = {
            "ETag": f'"{etag}"',
            "X-Linked-Etag": f'"{etag}"',
            "X-Repo-Commit": snap.sha,
            "X-Linked-Size": str(size),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        start, stop = 0, size
        code = 200
        rng = None if ignore_range else self.headers.get("Range")
        if rng:
            spec = rng.strip().removeprefix("bytes=")
            a, _, b = spec.partition("-")
            try:
                start = int(a)
                stop = min(size, int(b) + 1) if b else size
            except ValueError:
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"}, head)
            if start >= size or stop <= start:
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"}, head)
            code = 206
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        headers["Content-Length"] = str(stop - start)
        self._send(code, b"", headers, head=True)
        if head:
            return
        try:
            with f.open("rb") as fh:
                fh.seek(start)
                left = stop - start
                while left > 0:
                    chunk = fh.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client read what it wanted and hung up


def _etag(f: Path) -> str:
    # 64 hex digits, as an LFS file's sha256 (the Hub's X-Linked-Etag): not the content's hash
    # (the files may be GB of sparse holes), but fixed per file.
    return hashlib.sha256(f"{f}:{f.stat().st_size}".encode()).hexdigest()


def _refs(repo: FakeRepo) -> dict[str, Any]:
    """GET /api/models/{repo}/refs as the Hub answers it (huggingface_hub hf_api.list_repo_refs
    reads ``branches`` / ``tags`` / ``converts``; llama.cpp's get_repo_commit reads
    ``branches[].name`` and ``targetCommit``). Every revision but main is shown as a tag."""

    def ref(name: str, kind: str) -> dict[str, str]:
        return {
            "name": name,
            "ref": f"refs/{kind}/{name}",
            "targetCommit": repo.revisions[name].sha,
        }

    return {
        "branches": [ref("main", "heads")],
        "tags": [ref(n, "tags") for n in repo.revisions if n != "main"],
        "converts": [],
    }


def _tree(snap: Snapshot, under: str, recursive: bool) -> list[dict[str, Any]]:
    """GET /api/models/{repo}/tree/{rev}[/{under}][?recursive=true]: the entries under a folder
    (all levels when ``recursive``), folders as ``directory`` entries, sorted by path. Every
    file is an LFS file (``lfs.oid`` = its X-Linked-Etag; the ``oid`` a fixed git blob id)."""
    prefix = f"{under.strip('/')}/" if under.strip("/") else ""
    out: dict[str, dict[str, Any]] = {}
    for path, f in snap.files.items():
        if not path.startswith(prefix):
            continue
        rel = path[len(prefix) :].split("/")
        if not recursive and len(rel) > 1:
            d = prefix + rel[0]
            out[d] = {"type": "directory", "oid": _sha(d, snap.sha), "size": 0, "path": d}
            continue
        for i in range(1, len(rel)):
            d = prefix + "/".join(rel[:i])
            out[d] = {"type": "directory", "oid": _sha(d, snap.sha), "size": 0, "path": d}
        size = f.stat().st_size
        out[path] = {
            "type": "file",
            "oid": _sha(path, snap.sha),
            "size": size,
            "lfs": {"oid": _etag(f), "size": size, "pointerSize": 134},
            "path": path,
        }
    return [out[k] for k in sorted(out)]


def _sibling(path: str, f: Path, blobs: bool) -> dict[str, Any]:
    """One ``siblings`` entry; with ``?blobs=true`` (huggingface_hub's ``files_metadata=True``)
    the Hub adds ``size``, ``blobId`` and ``lfs`` (hf_api.py RepoSibling)."""
    if not blobs:
        return {"rfilename": path}
    size = f.stat().st_size
    lfs = {"sha256": _etag(f), "size": size, "pointerSize": 134}
    return {"rfilename": path, "size": size, "blobId": _sha(path, "blob"), "lfs": lfs}


def _info(
    repo: FakeRepo, snap: Snapshot, expand: list[str] | None, blobs: bool = False
) -> dict[str, Any]:
    full: dict[str, Any] = {
        "sha": snap.sha,
        "siblings": [_sibling(p, snap.files[p], blobs) for p in sorted(snap.files)],
        "gated": "manual" if repo.gated else False,
        "private": False,
    }
    cfg = snap.files.get("config.json")
    if cfg is not None:
        doc = json.loads(cfg.read_text())
        full["config"] = {k: doc[k] for k in ("architectures", "model_type") if k in doc}
    params: dict[str, int] = {}
    for p, f in snap.files.items():
        if p.endswith(".safetensors"):
            for dtype, n in _st_params(f).items():
                params[dtype] = params.get(dtype, 0) + n
    if params:
        full["safetensors"] = {"parameters": params, "total": sum(params.values())}
    ggufs = [f for p, f in sorted(snap.files.items()) if p.endswith(".gguf")]
    if ggufs:
        full["gguf"] = {"total": ggufs[0].stat().st_size}
    keep = set(expand) if expand else set(full)
    out = {"_id": snap.sha[:24], "id": repo.repo_id, "modelId": repo.repo_id}
    out.update({k: v for k, v in full.items() if k in keep})
    return out


def _st_params(f: Path) -> dict[str, int]:
    try:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 1 << 26:
                return {}
            doc = json.loads(fh.read(n))
    except (ValueError, OSError, struct.error):
        return {}
    out: dict[str, int] = {}
    for k, v in doc.items():
        if k != "__metadata__":
            out[v["dtype"]] = out.get(v["dtype"], 0) + math.prod(v["shape"])
    return out


# -- real small files ------------------------------------------------------------------------------

# The published config.json texts (as served by the Hub on the pages the catalog cites:
# data/models.json "source" of qwen3-8b and llama-3.1-8b-instruct).
QWEN3_8B_CONFIG = """{
  "architectures": [
    "Qwen3ForCausalLM"
  ],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 12288,
  "max_position_embeddings": 40960,
  "max_window_layers": 36,
  "model_type": "qwen3",
  "num_attention_heads": 32,
  "num_hidden_layers": 36,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}
"""

LLAMA_31_8B_CONFIG = """{
  "architectures": [
    "LlamaForCausalLM"
  ],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [
    128001,
    128008,
    128009
  ],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.42.3",
  "use_cache": true,
  "vocab_size": 128256
}
"""

DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "I8": 1, "U8": 1, "I32": 4}


def hf_tensors(a: ModelArch, dtype: str = "BF16") -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every tensor of a llama/qwen3-style transformers checkpoint."""
    h, hd = a.hidden_size, a.head_dim
    q, kv = a.n_heads * hd, a.n_kv_heads * hd
    out: list[tuple[str, tuple[int, ...], str]] = [
        ("model.embed_tokens.weight", (a.vocab_size, h), dtype)
    ]
    for i in range(a.n_layers):
        b = f"model.layers.{i}."
        out += [
            (b + "input_layernorm.weight", (h,), dtype),
            (b + "self_attn.q_proj.weight", (q, h), dtype),
            (b + "self_attn.k_proj.weight", (kv, h), dtype),
            (b + "self_attn.v_proj.weight", (kv, h), dtype),
            (b + "self_attn.o_proj.weight", (h, q), dtype),
            (b + "post_attention_layernorm.weight", (h,), dtype),
            (b + "mlp.gate_proj.weight", (a.intermediate_size, h), dtype),
            (b + "mlp.up_proj.weight", (a.intermediate_size, h), dtype),
            (b + "mlp.down_proj.weight", (h, a.intermediate_size), dtype),
        ]
        if a.architecture == "qwen3":
            out += [
                (b + "self_attn.q_norm.weight", (hd,), dtype),
                (b + "self_attn.k_norm.weight", (hd,), dtype),
            ]
    out.append(("model.norm.weight", (h,), dtype))
    if not a.tied_embeddings:
        out.append(("lm_head.weight", (a.vocab_size, h), dtype))
    return out


def tensor_bytes(tensors: list[tuple[str, tuple[int, ...], str]]) -> int:
    return sum(math.prod(s) * DTYPE_BYTES[d] for _, s, d in tensors)


def write_safetensors(
    path: Path,
    tensors: list[tuple[str, tuple[int, ...], str]],
    sparse: bool = True,
    lie_header_len: int | None = None,
) -> Path:
    """A safetensors file with a real header (as the safetensors package writes it: JSON padded
    with spaces to 8 bytes, offsets contiguous); the tensor data is a hole when ``sparse``.
    ``lie_header_len`` replaces the 8-byte header length (a hostile file)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape, dtype in tensors:
        n = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((-len(raw)) % 8)
    n_head = len(raw) if lie_header_len is None else lie_header_len
    with path.open("wb") as f:
        f.write(struct.pack("<Q", n_head) + raw)
        if sparse:
            f.truncate(8 + len(raw) + off)
        else:
            f.write(b"\0" * off)
    return path


def safetensors_repo(
    folder: Path,
    config_text: str,
    tensors: list[tuple[str, tuple[int, ...], str]],
    n_shards: int = 1,
) -> dict[str, Path]:
    """config.json plus model.safetensors (one shard) or model-0000i-of-0000N.safetensors and the
    index, the way transformers' save_pretrained splits a checkpoint (by tensor, in order)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"config.json": folder / "config.json"}
    files["config.json"].write_text(config_text)
    if n_shards == 1:
        files["model.safetensors"] = write_safetensors(folder / "model.safetensors", tensors)
        return files
    per = math.ceil(len(tensors) / n_shards)
    weight_map: dict[str, str] = {}
    for i in range(n_shards):
        name = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        chunk = tensors[i * per : (i + 1) * per]
        files[name] = write_safetensors(folder / name, chunk)
        weight_map.update({t[0]: name for t in chunk})
    index = folder / "model.safetensors.index.json"
    index.write_text(
        json.dumps(
            {"metadata": {"total_size": tensor_bytes(tensors)}, "weight_map": weight_map}, indent=2
        )
    )
    files["model.safetensors.index.json"] = index
    return files


def write_big_header_gguf(path: Path, n_strings: int = 5, string_bytes: int = 15 << 20) -> Path:
    """A GGUF whose header declares ``n_strings`` metadata strings of ``string_bytes`` each (their
    contents a hole): a header longer than any bound, at no disk cost."""
    with path.open("wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, n_strings + 1))
        key = b"general.architecture"
        f.write(struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, 5) + b"llama")
        for i in range(n_strings):
            k = f"hostile.blob{i}".encode()
            f.write(struct.pack("<Q", len(k)) + k + struct.pack("<IQ", 8, string_bytes))
            f.seek(string_bytes, 1)
        f.truncate(f.tell() + 64)
    return path


def write_split_gguf(folder: Path, stem: str, arch: ModelArch, quant: str, n: int) -> list[Path]:
    """``stem-0000i-of-0000N.gguf``: the tensors of one GGUF spread over ``n`` sparse parts (the
    first holds the embeddings, the blocks are divided in order), each a valid GGUF."""
    from tests.support.gguf_factory import FILE_TYPE, tensor_plan, write_gguf_plan

    plan = tensor_plan(arch, quant)
    per = math.ceil(len(plan) / n)
    paths = []
    for i in range(n):
        p = folder / f"{stem}-{i + 1:05d}-of-{n:05d}.gguf"
        write_gguf_plan(p, arch, plan[i * per : (i + 1) * per], FILE_TYPE.get(quant, 1))
        paths.append(p)
    return paths


# Qwen/Qwen3-8B-AWQ's quantization_config (AutoAWQ GEMM: 4 bits, groups of 128, zero points).
AWQ_CONFIG = {
    "bits": 4,
    "group_size": 128,
    "modules_to_not_convert": None,
    "quant_method": "awq",
    "version": "gemm",
    "zero_point": True,
}
# RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8's (llm-compressor): FP8 weights, one scale per channel.
FP8_CONFIG = {
    "quant_method": "compressed-tensors",
    "format": "float-quantized",
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True},
            "input_activations": {"num_bits": 8, "type": "float", "dynamic": True},
        }
    },
    "ignore": ["lm_head"],
}


def quantized_tensors(
    a: ModelArch, method: str, group: int = 128
) -> list[tuple[str, tuple[int, ...], str]]:
    """The tensors of an AWQ (``awq``: qweight/qzeros I32 packing 8 nibbles, F16 scales) or an
    FP8 compressed-tensors (``fp8``: F8_E4M3 weight + BF16 per-channel weight_scale) checkpoint:
    the linear layers quantized, embeddings, norms and the LM head kept in 16 bits."""
    out: list[tuple[str, tuple[int, ...], str]] = []
    for name, shape, dtype in hf_tensors(a, "F16" if method == "awq" else "BF16"):
        is_linear = ".layers." in name and name.endswith("_proj.weight")
        if not is_linear:
            out.append((name, shape, dtype))
            continue
        rows, cols = shape  # torch layout: [out_features, in_features]
        base = name.removesuffix(".weight")
        if method == "awq":
            out += [
                (base + ".qweight", (cols, rows // 8), "I32"),
                (base + ".qzeros", (cols // group, rows // 8), "I32"),
                (base + ".scales", (cols // group, rows), "F16"),
            ]
        else:
            out += [(name, shape, "F8_E4M3"), (base + ".weight_scale", (rows, 1), "BF16")]
    return out


def quantized_config(config_text: str, quantization_config: dict[str, Any], dtype: str) -> str:
    doc = json.loads(config_text)
    doc["quantization_config"] = quantization_config
    doc["torch_dtype"] = dtype
    return json.dumps(doc, indent=2) + "\n"
