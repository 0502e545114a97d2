"""Hostile GGUF headers: truncations, wrong magic/version, lying counts and lengths, non-finite and
huge numbers, wrong types. Each must be a clear ModelFileError naming the file, or a sane read."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_preflight.models.errors import ModelFileError
from gpu_preflight.models.gguf_file import read_gguf
from tests.fuzz.conftest import FUZZ, expect_clean, fresh
from tests.support.gguf_factory import raw_gguf, raw_llama_kvs, raw_llama_tensors

TENSORS, DATA = raw_llama_tensors()
VALID = raw_gguf(raw_llama_kvs(), TENSORS, data_bytes=DATA)
INT_KINDS = ["u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64"]
RANGES = {
    "u8": (0, 2**8 - 1),
    "i8": (-(2**7), 2**7 - 1),
    "u16": (0, 2**16 - 1),
    "i16": (-(2**15), 2**15 - 1),
    "u32": (0, 2**32 - 1),
    "i32": (-(2**31), 2**31 - 1),
    "u64": (0, 2**64 - 1),
    "i64": (-(2**63), 2**63 - 1),
}
NUMERIC_KEYS = [k for k, kind, _ in raw_llama_kvs() if kind == "u32"] + [
    "llama.attention.key_length",
    "llama.attention.value_length",
    "llama.attention.sliding_window",
    "llama.expert_count",
    "llama.expert_used_count",
]


def _sane(path: Path, result: object) -> None:
    """A file that reads must give a usable architecture: positive sizes, bytes within the file."""
    if isinstance(result, BaseException):
        return
    arch, art = result  # type: ignore[misc]
    for name in ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim", "vocab_size"):
        v = getattr(arch, name)
        assert isinstance(v, int) and v >= 1, (name, v)
    assert arch.n_layers <= 1024
    assert 0 <= art.weight_bytes <= path.stat().st_size
    assert len(art.layout.per_layer_bytes) == arch.n_layers


def _read(path: Path, data: bytes) -> object:
    path.write_bytes(data)
    out = expect_clean("gguf", lambda: read_gguf(path), names=path)
    assert not isinstance(out, BaseException) or isinstance(out, ModelFileError)
    _sane(path, out)
    return out


def test_the_valid_base_reads(tmp_path):
    arch, _art = read_gguf(_write(tmp_path / "ok.gguf", VALID))
    assert (arch.n_layers, arch.hidden_size, arch.vocab_size) == (2, 64, 100)


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


@settings(FUZZ, max_examples=300)
@given(cut=st.integers(0, len(VALID) - 1))
def test_truncated(fuzz_dir, cut):
    out = _read(fresh(fuzz_dir, "t.gguf"), VALID[:cut])
    assert isinstance(out, ModelFileError)


@settings(FUZZ, max_examples=1500)
@given(
    flips=st.lists(
        st.tuples(st.integers(0, len(VALID) - DATA - 1), st.integers(0, 255)),
        min_size=1,
        max_size=6,
    )
)
def test_byte_flips(fuzz_dir, flips):
    data = bytearray(VALID)
    for pos, b in flips:
        data[pos] = b
    _read(fresh(fuzz_dir, "f.gguf"), bytes(data))


@settings(FUZZ, max_examples=100)
@given(magic=st.binary(min_size=4, max_size=4), version=st.integers(0, 2**32 - 1))
def test_magic_and_version(fuzz_dir, magic, version):
    data = magic + struct.pack("<I", version) + VALID[8:]
    out = _read(fresh(fuzz_dir, "m.gguf"), data)
    if magic != b"GGUF" or version not in (2, 3):
        assert isinstance(out, ModelFileError)


@settings(FUZZ, max_examples=100)
@given(n_tensors=st.integers(0, 2**64 - 1), n_kv=st.integers(0, 2**64 - 1))
def test_lying_counts(fuzz_dir, n_tensors, n_kv):
    data = raw_gguf(raw_llama_kvs(), TENSORS, n_tensors=n_tensors, n_kv=n_kv, data_bytes=DATA)
    out = _read(fresh(fuzz_dir, "c.gguf"), data)
    if (n_tensors, n_kv) != (len(TENSORS), len(raw_llama_kvs())):
        assert isinstance(out, ModelFileError)


@settings(FUZZ, max_examples=100)
@given(which=st.integers(0, 7), length=st.integers(0, 2**64 - 1))
def test_lying_string_lengths(fuzz_dir, which, length):
    # Rewrite the length prefix of the `which`-th key name.
    data = bytearray(VALID)
    pos = 24
    for i, (key, kind, value) in enumerate(raw_llama_kvs()):
        if i == which:
            data[pos : pos + 8] = struct.pack("<Q", length)
            break
        from tests.support.gguf_factory import raw_gguf_value

        pos += 8 + len(key.encode()) + len(raw_gguf_value(kind, value))
    _read(fresh(fuzz_dir, "s.gguf"), bytes(data))


def _number(kind: str) -> st.SearchStrategy[object]:
    if kind in ("f32", "f64"):
        return st.one_of(
            st.floats(allow_nan=True, allow_infinity=True, width=32 if kind == "f32" else 64),
            st.sampled_from([math.inf, -math.inf, math.nan, 32.0, -1.0, 1e30]),
        )
    if kind == "bool":
        return st.booleans()
    if kind == "str":
        return st.text(max_size=12)
    lo, hi = RANGES[kind]
    return st.one_of(
        st.integers(lo, hi),
        st.sampled_from([v for v in (lo, hi, 0, -1, 2**31, 10**8) if lo <= v <= hi]),
    )


@st.composite
def hostile_kv(draw: st.DrawFn) -> tuple[str, str, object]:
    key = draw(st.sampled_from(NUMERIC_KEYS))
    kind = draw(st.sampled_from([*INT_KINDS, "f32", "f64", "bool", "str"]))
    return key, kind, draw(_number(kind))


@settings(FUZZ, max_examples=1500)
@given(kv=hostile_kv())
def test_hostile_numbers_and_types(fuzz_dir, kv):
    key, _kind, value = kv
    kvs = [e for e in raw_llama_kvs() if e[0] != key] + [kv]
    out = _read(fresh(fuzz_dir, "n.gguf"), raw_gguf(kvs, TENSORS, data_bytes=DATA))
    if isinstance(value, float) and key != "general.file_type":
        assert isinstance(out, ModelFileError) and key in str(out)


@settings(FUZZ, max_examples=60)
@given(
    values=st.lists(
        st.one_of(st.integers(-(2**31), 2**31 - 1), st.floats(allow_nan=True, width=32)),
        min_size=0,
        max_size=5,
    ),
    kind=st.sampled_from(["i32", "f32"]),
)
def test_per_layer_arrays(fuzz_dir, values, kind):
    if kind == "i32":
        values = [int(v) if isinstance(v, int) else 7 for v in values]
    kvs = [e for e in raw_llama_kvs() if e[0] != "llama.attention.head_count_kv"]
    kvs.append(("llama.attention.head_count_kv", "arr", (kind, values)))
    _read(fresh(fuzz_dir, "a.gguf"), raw_gguf(kvs, TENSORS, data_bytes=DATA))


@settings(FUZZ, max_examples=300)
@given(
    dims=st.lists(st.integers(0, 2**64 - 1), min_size=0, max_size=10),
    ttype=st.integers(0, 60),
    offset=st.integers(0, 2**64 - 1),
)
def test_lying_tensor_infos(fuzz_dir, dims, ttype, offset):
    tensors = [*TENSORS[:-1], ("blk.1.attn_norm.weight", tuple(dims), ttype, offset)]
    _read(fresh(fuzz_dir, "ti.gguf"), raw_gguf(raw_llama_kvs(), tensors, data_bytes=DATA))


@settings(FUZZ, max_examples=60)
@given(block_count=st.integers(0, 2**32 - 1), extra=st.integers(0, 3))
def test_layers_against_tensors(fuzz_dir, block_count, extra):
    tensors, size = raw_llama_tensors(n_layers=2 + extra)
    kvs = [e for e in raw_llama_kvs() if e[0] != "llama.block_count"]
    kvs.append(("llama.block_count", "u32", block_count))
    out = _read(fresh(fuzz_dir, "l.gguf"), raw_gguf(kvs, tensors, data_bytes=size))
    if block_count != 2 + extra:
        assert isinstance(out, ModelFileError) and "block_count" in str(out)


@pytest.mark.parametrize(
    ("key", "kind", "value", "fragment"),
    [
        ("llama.embedding_length", "i32", -1, "llama.embedding_length"),
        ("llama.block_count", "f32", math.inf, "llama.block_count"),
        ("llama.block_count", "f64", math.nan, "llama.block_count"),
        ("llama.block_count", "u32", 10**8, "llama.block_count"),
        ("llama.block_count", "u64", 2**31, "llama.block_count"),
        ("llama.attention.head_count", "u32", 0, "head_count"),
        ("llama.attention.head_count", "u32", 128, "head_count"),
        ("llama.attention.head_count_kv", "str", "abc", "head_count_kv"),
        ("general.alignment", "u32", 3, "alignment"),
    ],
)
def test_named_hostile_values(tmp_path, key, kind, value, fragment):
    kvs = [e for e in raw_llama_kvs() if e[0] != key] + [(key, kind, value)]
    p = _write(tmp_path / "x.gguf", raw_gguf(kvs, TENSORS, data_bytes=DATA))
    out = expect_clean("gguf", lambda: read_gguf(p), names=p)
    assert isinstance(out, ModelFileError) and fragment in str(out), out
    assert "Accepted" in str(out) or "power of two" in str(out) or "exceeds" in str(out)


def test_nested_and_huge_arrays_are_bounded(tmp_path):
    nested = ("x.nested", "arr", ("arr", [("u8", [1])] * 2))
    p = _write(tmp_path / "n.gguf", raw_gguf([*raw_llama_kvs(), nested], TENSORS, data_bytes=DATA))
    expect_clean("gguf", lambda: read_gguf(p), names=p)
    # An array claiming 2^40 elements in a small file.
    data = bytearray(
        raw_gguf([*raw_llama_kvs(), ("x.big", "arr", ("u8", [1]))], TENSORS, data_bytes=DATA)
    )
    i = data.index(b"x.big") + 5 + 8  # after the key: value type (4), element type (4)
    data[i : i + 8] = struct.pack("<Q", 2**40)
    p.write_bytes(bytes(data))
    out = expect_clean("gguf", lambda: read_gguf(p), names=p)
    assert isinstance(out, ModelFileError)
