"""Hostile Hugging Face directories: bad config.json fields, bad indexes, lying safetensors headers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_preflight.models.errors import ModelFileError
from gpu_preflight.models.hf_dir import read_hf_dir
from tests.fuzz.conftest import FUZZ, expect_clean, fresh
from tests.fuzz.hostile import Raw, deep, dumps, values

CONFIG = {
    "model_type": "llama",
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 100,
    "max_position_embeddings": 2048,
    "torch_dtype": "bfloat16",
}
KEYS = [
    *CONFIG,
    "head_dim",
    "sliding_window",
    "sliding_window_pattern",
    "layer_types",
    "num_local_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "n_shared_experts",
    "tie_word_embeddings",
    "use_sliding_window",
    "quantization_config",
    "text_config",
]


def _st_header(tensors: dict[str, tuple[str, list[int], list[int]]]) -> bytes:
    h = json.dumps(
        {k: {"dtype": d, "shape": s, "data_offsets": o} for k, (d, s, o) in tensors.items()}
    )
    return h.encode()


def _st_file(header: bytes, data: int, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + b"\0" * data


GOOD_TENSORS = {
    "model.embed_tokens.weight": ("F16", [100, 64], [0, 12800]),
    "model.layers.0.mlp.up_proj.weight": ("F16", [128, 64], [12800, 29184]),
    "model.layers.1.mlp.up_proj.weight": ("F16", [128, 64], [29184, 45568]),
}


def _dir(base: Path, config_text: str, st_bytes: bytes | None = None) -> Path:
    d = fresh(base, "")
    (d / "config.json").write_text(config_text)
    (d / "model.safetensors").write_bytes(
        st_bytes if st_bytes is not None else _st_file(_st_header(GOOD_TENSORS), 45568)
    )
    return d


def _read(d: Path) -> object:
    out = expect_clean("hf-dir", lambda: read_hf_dir(d), names=d)
    if not isinstance(out, BaseException):
        arch, art = out  # type: ignore[misc]
        for name in ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim", "vocab_size"):
            assert isinstance(getattr(arch, name), int) and getattr(arch, name) >= 1
        assert art.weight_bytes >= 0
    return out


def test_base_reads(tmp_path):
    arch, art = read_hf_dir(_dir(tmp_path, json.dumps(CONFIG)))
    assert arch.n_layers == 2 and art.weight_bytes == 45568


@settings(FUZZ, max_examples=1500)
@given(key=st.sampled_from(KEYS), value=values)
def test_config_fields(fuzz_dir, key, value):
    cfg = {**CONFIG, key: value}
    if key == "sliding_window_pattern":
        cfg.update(model_type="gemma3_text", sliding_window=512)
    out = _read(_dir(fuzz_dir, dumps(cfg)))
    if isinstance(value, Raw) and key in CONFIG and value.text != "1e-400":
        assert isinstance(out, ModelFileError)


@pytest.mark.parametrize(
    ("key", "raw", "fragment"),
    [
        ("num_key_value_heads", '"abc"', "num_key_value_heads"),
        ("num_key_value_heads", "[1, 2]", "num_key_value_heads"),
        ("num_key_value_heads", "1e400", "1e400"),
        ("head_dim", '"abc"', "head_dim"),
        ("head_dim", "[1, 2]", "head_dim"),
        ("head_dim", "1e400", "1e400"),
        ("head_dim", "NaN", "NaN"),
        ("num_hidden_layers", "100000000", "num_hidden_layers"),
        ("num_hidden_layers", "2147483648", "num_hidden_layers"),
        ("num_hidden_layers", "9" * 5000, "digits"),
        ("hidden_size", "-1", "hidden_size"),
        ("vocab_size", "64.5", "vocab_size"),
    ],
)
def test_named_config_values(tmp_path, key, raw, fragment):
    text = json.dumps({**CONFIG, key: "__X__"}).replace('"__X__"', raw)
    d = _dir(tmp_path, text)
    out = _read(d)
    assert isinstance(out, ModelFileError) and fragment in str(out) and "Accepted" in str(out)


def test_sliding_window_pattern_zero(tmp_path):
    cfg = {
        **CONFIG,
        "model_type": "gemma3_text",
        "sliding_window": 512,
        "sliding_window_pattern": 0,
    }
    out = _read(_dir(tmp_path, json.dumps(cfg)))
    assert isinstance(out, ModelFileError) and "sliding_window_pattern" in str(out)


@pytest.mark.parametrize(
    "text",
    [
        b"\xff\xfe{}",
        deep(100_000).encode(),
        deep(65).encode(),
        b"{" * 50,
        b"[]",
        b"",
        b'{"a": NaN}',
    ],
)
def test_config_file_shapes(tmp_path, text):
    d = _dir(tmp_path, "{}")
    (d / "config.json").write_bytes(text)
    assert isinstance(_read(d), ModelFileError)


@settings(FUZZ, max_examples=400)
@given(
    length=st.one_of(st.integers(0, 2**64 - 1), st.just(None)),
    shape=st.lists(st.integers(-5, 2**40), max_size=4),
    offsets=st.lists(st.integers(-5, 2**40), max_size=3),
    dtype=st.sampled_from(["F16", "F32", "BF16", "I8", "XYZ", ""]),
    data=st.integers(0, 50_000),
)
def test_lying_safetensors_headers(fuzz_dir, length, shape, offsets, dtype, data):
    tensors = {**GOOD_TENSORS, "model.layers.1.mlp.up_proj.weight": (dtype, shape, offsets)}
    _read(_dir(fuzz_dir, json.dumps(CONFIG), _st_file(_st_header(tensors), data, length)))


@settings(FUZZ, max_examples=100)
@given(index=values)
def test_hostile_index(fuzz_dir, index):
    d = _dir(fuzz_dir, json.dumps(CONFIG))
    (d / "model.safetensors.index.json").write_text(dumps({"weight_map": index}))
    _read(d)


@pytest.mark.parametrize(
    "weight_map",
    [{"a": "../../etc/passwd"}, {"a": "/dev/zero"}, {"a": "missing.safetensors"}, {"a": ""}],
)
def test_index_names_outside_the_dir(tmp_path, weight_map):
    d = _dir(tmp_path, json.dumps(CONFIG))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert isinstance(_read(d), ModelFileError)
