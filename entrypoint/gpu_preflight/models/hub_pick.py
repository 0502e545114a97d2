"""Naming and choosing, with no I/O: the model reference (``org/repo[@rev][:QUANT]``,
``org/repo[@rev]/path/file.gguf``) and which files of a repo's listing to read: the GGUF that
llama-server's ``-hf`` would take, or config.json and the safetensors shards vLLM loads."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gpu_preflight.models.hub_errors import HubFileError, HubNotAModel, HubQuantNotFound
from gpu_preflight.models.types import Engine

MAX_PARTS = 1024  # parts of one split GGUF (as gguf_file.MAX_SPLITS)
MAX_SHARDS = 4096  # safetensors shards (as hf_dir.MAX_SHARDS)
# llama-server's file for `-hf org/repo` without a tag (common/download.cpp asks the Hub for
# "latest", which it resolves to Q4_K_M when the repo has one).
DEFAULT_GGUF_QUANT = "Q4_K_M"

_PART = re.compile(r"^(?P<stem>.+)-(?P<i>[0-9]{5})-of-(?P<n>[0-9]{5})\.gguf$")
_ST_PART = re.compile(r"-([0-9]{5})-of-([0-9]{5})\.safetensors$")
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_REPO = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")
_REV = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_QUANT_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# The quant tag at the end of a GGUF file name: Qwen3-8B-Q4_K_M, llama-2-7b.Q4_K_M, x-UD-Q4_K_XL,
# gpt-oss-20b-mxfp4, model-f16, model-bf16, x-IQ4_XS, x-TQ1_0.
_TAG_IN_NAME = re.compile(
    r"(?i)[-.](?P<tag>(?:UD-)?(?:I?Q[0-9][A-Z0-9_]*|TQ[0-9][A-Z0-9_]*|B?F(?:16|32)|MXFP4[A-Z0-9_]*))$"
)


@dataclass(frozen=True)
class HubRef:
    """A parsed model reference: ``org/repo[@revision][:QUANT | /path/file.gguf]``."""

    repo: str
    revision: str | None = None
    quant: str | None = None
    file: str | None = None  # a path inside the repo (a .gguf file)


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
    if path is not None and (not path.lower().endswith(".gguf") or not safe_relpath(path)):
        return None
    return HubRef(repo=repo, revision=rev or None, quant=quant, file=path)


def safe_relpath(p: str) -> bool:
    if not p or len(p) > 1024 or p.startswith("/") or "\\" in p or "\0" in p:
        return False
    return all(c not in ("", ".", "..") and len(c) <= 255 for c in p.split("/"))


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
class Pick:
    engine: Engine
    files: tuple[str, ...]  # GGUF parts in order, or config.json + index + shards
    quant: str | None


def pick_files(
    repo: str,
    listing: set[str],
    ref: HubRef,
    engine: Engine | None,
    where: str,
    complete: bool,
    lone_ok: bool = False,
) -> Pick | None:
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
        return Pick("llama.cpp", tuple(parts), _tag_of(ref.file))
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
                return Pick("llama.cpp", tuple(parts), _tag_of(first))
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
        return Pick("vllm", tuple(files), None)
    if not complete:
        return None
    what = ", ".join(sorted(listing)[:8]) if listing else "no files"
    raise HubNotAModel(
        f"{where}: {repo} is not a model repo the planner can read (it has {what}). Accepted: a "
        "repo with config.json and .safetensors weights (vLLM) or .gguf files (llama.cpp)."
    )


def index_shards(raw: bytes, where: str) -> list[str]:
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
    if len(names) > MAX_SHARDS or not all(safe_relpath(n) and "/" not in n for n in names):
        raise HubFileError(
            f"{where}: model.safetensors.index.json names {len(names)} shards, or a shard outside "
            f"the repo's top folder. Accepted: at most {MAX_SHARDS} file names."
        )
    return names


def all_st_parts(files: Sequence[str]) -> bool:
    """Without an index, shards named model-0000i-of-0000N must all be there."""
    have: dict[str, set[int]] = {}
    for f in files:
        m = _ST_PART.search(f)
        if m:
            have.setdefault(f[: m.start()] + f"/{m[2]}", set()).add(int(m[1]))
    return all(len(v) == int(k.rpartition("/")[2]) for k, v in have.items())
