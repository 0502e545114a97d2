"""Read a GGUF file's header: architecture metadata and exact tensor bytes.

The header is read by ``gguf_header`` (skip-ahead, bounded; see there why not ``GGUFReader``), so
only the header pages are touched (a file whose tensor data is a sparse hole reads like a real one). Every failure - bad magic, a truncated file, counts or
offsets past the end of the file - becomes a ``ModelFileError`` naming the file and the problem.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gpu_preflight.models.errors import ModelFileError
from gpu_preflight.models.gguf_header import GGUFHeader, GGUFHeaderError, read_header
from gpu_preflight.models.layout import count_params
from gpu_preflight.models.types import Artifact, ModelArch, ModelSpec, WeightLayout

GGUF_MAGIC = b"GGUF"
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<i>[0-9]{5})-of-(?P<n>[0-9]{5})\.gguf$")
_BLK = re.compile(r"^blk\.([0-9]+)\.")
_EXPERT = re.compile(r"_exps\b|\.ffn_(gate|up|down)_exps")
# llama.cpp's default sliding-window pattern per architecture (src/models/<arch>.cpp:
# load_swa_pattern(ml, N)); a GGUF may override it with {arch}.attention.sliding_window_pattern.
SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "gpt-oss": 2, "cohere2": 4}
MAX_TENSORS = 1_000_000


def _value(header: GGUFHeader, key: str) -> Any:
    return header.fields.get(key)


def _int(header: GGUFHeader, key: str, default: int | None = None) -> int | None:
    v = _value(header, key)
    if isinstance(v, list):
        v = max(v) if v else None
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def _files(path: Path) -> list[Path]:
    m = _SPLIT.match(path.name)
    if not m:
        return [path]
    n = int(m["n"])
    files = [path.with_name(f"{m['stem']}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise ModelFileError(f"{path}: split GGUF is missing {', '.join(missing[:3])}")
    return files


def _open(path: Path) -> GGUFHeader:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    try:
        header = read_header(path)
    except (GGUFHeaderError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: malformed or truncated GGUF header ({exc})") from exc
    if len(header.tensors) > MAX_TENSORS:
        raise ModelFileError(f"{path}: claims {len(header.tensors)} tensors; refusing to trust it")
    for t in header.tensors:
        end = t.data_offset + t.n_bytes
        if end > header.file_size:
            raise ModelFileError(
                f"{path}: tensor {t.name} ends at byte {end} but the file has {header.file_size} bytes (truncated?)"
            )
    return header


def read_gguf(path: Path) -> tuple[ModelArch, Artifact]:
    files = _files(path)
    readers = [_open(f) for f in files]
    head = readers[0]
    arch_name = _value(head, "general.architecture")
    if not isinstance(arch_name, str):
        raise ModelFileError(f"{path}: GGUF has no general.architecture")
    a = arch_name
    n_layers = _int(head, f"{a}.block_count")
    n_embd = _int(head, f"{a}.embedding_length")
    n_head = _int(head, f"{a}.attention.head_count")
    if not n_layers or not n_embd or not n_head:
        raise ModelFileError(
            f"{path}: GGUF lacks {a}.block_count / embedding_length / attention.head_count"
        )
    n_kv = _int(head, f"{a}.attention.head_count_kv", n_head) or n_head
    head_dim = _int(head, f"{a}.attention.key_length", n_embd // n_head) or n_embd // n_head
    head_dim_v = _int(head, f"{a}.attention.value_length", head_dim)

    tensors = [t for r in readers for t in r.tensors]
    by_name = {t.name: t for t in tensors}
    tokens = _value(head, "tokenizer.ggml.tokens")
    embd = by_name.get("token_embd.weight")
    vocab = (
        len(tokens)
        if isinstance(tokens, list) and tokens
        else (int(embd.shape[1]) if embd is not None and len(embd.shape) > 1 else 0)
    )
    if vocab <= 0:
        raise ModelFileError(f"{path}: cannot tell the vocabulary size (no tokens, no token_embd)")

    n_expert = _int(head, f"{a}.expert_count")
    swa = _int(head, f"{a}.attention.sliding_window")
    swa_layers: tuple[int, ...] = ()
    if swa:
        pattern_raw = _value(head, f"{a}.attention.sliding_window_pattern")
        if isinstance(pattern_raw, list) and len(pattern_raw) >= n_layers:
            swa_layers = tuple(i for i in range(n_layers) if pattern_raw[i])
        else:
            n = int(pattern_raw) if isinstance(pattern_raw, int) else SWA_PATTERN.get(a, 0)
            swa_layers = (
                tuple(i for i in range(n_layers) if n == 0 or i % n < n - 1)
                if n or a in SWA_PATTERN
                else ()
            )
    arch = ModelArch(
        architecture=a,
        n_layers=n_layers,
        hidden_size=n_embd,
        n_heads=n_head,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        head_dim_v=head_dim_v if head_dim_v != head_dim else None,
        intermediate_size=_int(head, f"{a}.feed_forward_length", 0) or 0,
        vocab_size=vocab,
        tied_embeddings="output.weight" not in by_name,
        max_position_embeddings=_int(head, f"{a}.context_length", 4096) or 4096,
        sliding_window=swa,
        sliding_window_layers=swa_layers,
        n_experts=n_expert,
        n_experts_per_token=_int(head, f"{a}.expert_used_count"),
        expert_intermediate_size=_int(head, f"{a}.expert_feed_forward_length"),
        n_shared_experts=_int(head, f"{a}.expert_shared_count"),
    )
    per_layer = [0] * n_layers
    per_expert = [0] * n_layers
    tok = out = other = 0
    types: dict[str, int] = {}
    for t in tensors:
        nb = t.n_bytes
        tname = t.type_name
        types[tname] = types.get(tname, 0) + nb
        m = _BLK.match(t.name)
        if m and int(m.group(1)) < n_layers:
            i = int(m.group(1))
            per_layer[i] += nb
            if _EXPERT.search(t.name):
                per_expert[i] += nb
        elif t.name == "token_embd.weight":
            tok += nb
        elif t.name == "output.weight":
            out += nb
        else:
            other += nb
    total = tok + out + other + sum(per_layer)
    layout = WeightLayout(total, tok, out, tuple(per_layer), tuple(per_expert), other, exact=True)
    quant = _quant_name(head, types)
    artifact = Artifact(
        engine="llama.cpp",
        repo=str(path.parent),
        quant=quant,
        weight_bytes=total,
        file=path.name,
        path=str(path),
        source=f"GGUF header of {path}",
        layout=layout,
    )
    return arch, artifact


_FTYPE = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    12: "Q3_K_M",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    30: "IQ4_XS",
    32: "BF16",
    38: "MXFP4",
}


def _quant_name(reader: Any, types: dict[str, int]) -> str:
    ftype = _int(reader, "general.file_type")
    if ftype is not None and ftype in _FTYPE:
        return _FTYPE[ftype]
    return max(types, key=lambda k: types[k]) if types else "unknown"


def spec_from_gguf(path: Path) -> ModelSpec:
    arch, art = read_gguf(path)
    name = path.name.removesuffix(".gguf")
    return ModelSpec(
        id=name.lower(),
        name=name,
        hf_id=name,
        params_b=round(count_params(arch).total / 1e9, 2),
        active_params_b=None,
        arch=arch,
        artifacts=(art,),
        source=art.source or str(path),
    )
