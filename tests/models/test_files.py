"""Model files on disk: GGUF headers (real-architecture sparse files), HF directories, hostile input."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from tests.support.gguf_factory import tensor_plan, write_gguf

from gpu_preflight.models.catalog import load_catalog, parse_catalog
from gpu_preflight.models.errors import CatalogError, ModelError, ModelFileError
from gpu_preflight.models.gguf_file import read_gguf
from gpu_preflight.models.hf_dir import read_hf_dir
from gpu_preflight.models.layout import derive_layout
from gpu_preflight.models.resolve import resolve_model

CATALOG = load_catalog()


@pytest.mark.parametrize(
    ("model", "quant"),
    [
        ("llama-3.1-8b-instruct", "Q4_K_M"),
        ("qwen3-30b-a3b", "Q4_K_M"),
        ("gemma-3-12b-it", "Q8_0"),
        ("gpt-oss-20b", "MXFP4"),
    ],
)
def test_gguf_header_round_trip(tmp_path, model, quant):
    spec = CATALOG.get(model)
    path = write_gguf(tmp_path / f"{model}.gguf", spec.arch, quant)
    assert path.stat().st_blocks * 512 < 64 * 2**20  # sparse: the tensor data is a hole
    arch, art = read_gguf(path)
    a = spec.arch
    assert (
        arch.n_layers,
        arch.hidden_size,
        arch.n_heads,
        arch.n_kv_heads,
        arch.head_dim,
        arch.vocab_size,
    ) == (a.n_layers, a.hidden_size, a.n_heads, a.n_kv_heads, a.head_dim, a.vocab_size)
    assert (
        arch.sliding_window == a.sliding_window
        and arch.sliding_window_layers == a.sliding_window_layers
    )
    assert arch.n_experts == a.n_experts and arch.tied_embeddings == a.tied_embeddings
    expected = sum(
        int(np.prod(s))
        // __import__("gguf").GGML_QUANT_SIZES[t][0]
        * __import__("gguf").GGML_QUANT_SIZES[t][1]
        for _, s, t in tensor_plan(a, quant)
    )
    assert art.weight_bytes == expected and art.layout is not None and art.layout.exact
    assert (
        sum(art.layout.per_layer_bytes)
        + art.layout.token_embd_bytes
        + art.layout.output_bytes
        + art.layout.other_bytes
        == expected
    )
    if a.is_moe:
        assert all(e > 0 for e in art.layout.per_layer_expert_bytes)


def test_a_known_file_keeps_the_catalog_identity(tmp_path):
    spec = CATALOG.get("qwen3-8b")
    path = write_gguf(tmp_path / "my-download.gguf", spec.arch, "Q4_K_M")
    got = resolve_model(str(path), CATALOG, "PREFLIGHT_MODEL")
    assert got.id == "qwen3-8b" and got.draft == spec.draft
    assert got.artifacts[0].path == str(path) and got.artifacts[0].layout.exact


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"NOTAGGUF" + b"\0" * 64, "not a GGUF file"),
        (
            b"GGUF" + struct.pack("<I", 3) + struct.pack("<Q", 2**62) + struct.pack("<Q", 0),
            "malformed or truncated",
        ),
        (
            b"GGUF" + struct.pack("<I", 3) + struct.pack("<Q", 0) + struct.pack("<Q", 2**40),
            "malformed or truncated",
        ),
        (b"GGUF", "malformed or truncated"),
        (b"", "not a GGUF file"),
    ],
)
def test_hostile_gguf_is_a_clear_error(tmp_path, content, fragment):
    p = tmp_path / "bad.gguf"
    p.write_bytes(content)
    with pytest.raises(ModelFileError) as info:
        read_gguf(p)
    assert str(p) in str(info.value) and fragment in str(info.value)


def test_truncated_gguf_data_is_detected(tmp_path):
    spec = CATALOG.get("llama-3.2-1b-instruct")
    p = write_gguf(tmp_path / "t.gguf", spec.arch, "Q8_0")
    with p.open("r+b") as f:
        f.truncate(p.stat().st_size // 2)
    with pytest.raises(ModelFileError, match="truncated"):
        read_gguf(p)


def test_missing_split_part(tmp_path):
    p = tmp_path / "m-00001-of-00002.gguf"
    write_gguf(p, CATALOG.get("llama-3.2-1b-instruct").arch, "Q8_0")
    with pytest.raises(ModelFileError, match="missing"):
        read_gguf(p)


def _hf_dir(tmp_path, config, tensors, sharded=False):
    from safetensors.numpy import save_file

    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    if sharded:
        names = list(tensors)
        half = len(names) // 2
        parts = {
            "model-00001-of-00002.safetensors": names[:half],
            "model-00002-of-00002.safetensors": names[half:],
        }
        for fname, keys in parts.items():
            save_file({k: tensors[k] for k in keys}, str(d / fname))
        (d / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {k: f for f, ks in parts.items() for k in ks}})
        )
    else:
        save_file(tensors, str(d / "model.safetensors"))
    return d


TINY = {
    "model_type": "llama",
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 100,
    "max_position_embeddings": 2048,
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
}


def _tiny_tensors():
    t = {
        "model.embed_tokens.weight": np.zeros((100, 64), np.float16),
        "lm_head.weight": np.zeros((100, 64), np.float16),
        "model.norm.weight": np.zeros((64,), np.float32),
    }
    for i in range(2):
        t[f"model.layers.{i}.self_attn.q_proj.weight"] = np.zeros((64, 64), np.float16)
        t[f"model.layers.{i}.mlp.up_proj.weight"] = np.zeros((128, 64), np.float16)
    return t


@pytest.mark.parametrize("sharded", [False, True])
def test_hf_directory_exact_bytes(tmp_path, sharded):
    d = _hf_dir(tmp_path, TINY, _tiny_tensors(), sharded)
    arch, art = read_hf_dir(d)
    assert (arch.n_layers, arch.hidden_size, arch.n_kv_heads, arch.head_dim) == (2, 64, 2, 16)
    expected = sum(a.nbytes for a in _tiny_tensors().values())
    assert art.weight_bytes == expected and art.quant == "bf16" and art.engine == "vllm"
    assert art.layout.per_layer_bytes == (64 * 64 * 2 + 128 * 64 * 2,) * 2


def test_hf_directory_errors(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        read_hf_dir(d)
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelFileError, match="num_hidden_layers"):
        read_hf_dir(d)
    (d / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(ModelFileError, match=r"no \.safetensors"):
        read_hf_dir(d)
    (d / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ModelFileError, match="malformed safetensors"):
        read_hf_dir(d)


def test_resolve_errors_name_the_variable(tmp_path):
    with pytest.raises(ModelError) as info:
        resolve_model("/nope/model.gguf", CATALOG, "PREFLIGHT_MODEL")
    assert "PREFLIGHT_MODEL='/nope/model.gguf'" in str(info.value)
    with pytest.raises(ModelError, match="Did you mean"):
        resolve_model("Qwen/Qwen3-9B", CATALOG, "VLLM_MODEL")
    assert resolve_model("Qwen/Qwen3-8B", CATALOG, "VLLM_MODEL").id == "qwen3-8b"
    assert resolve_model("Qwen/Qwen3-8B-GGUF", CATALOG, "VLLM_MODEL").id == "qwen3-8b"


def test_catalog_param_counts_match_bf16_checkpoints():
    # bf16 safetensors totals as listed: the architecture facts must reproduce them exactly.
    for mid in (
        "llama-3.2-1b-instruct",
        "llama-3.2-3b-instruct",
        "llama-3.1-8b-instruct",
        "mistral-7b-instruct",
    ):
        spec = CATALOG.get(mid)
        art = next(a for a in spec.artifacts if a.quant == "bf16")
        derived = derive_layout(spec.arch, "bf16", "vllm").total_bytes
        assert abs(derived - art.weight_bytes) / art.weight_bytes < 0.001, mid


def test_every_catalog_layout_sums_to_its_weight_bytes():
    for m in CATALOG.models:
        for a in m.artifacts:
            lay = a.layout
            assert lay.total_bytes == a.weight_bytes
            assert (
                sum(lay.per_layer_bytes) + lay.token_embd_bytes + lay.output_bytes + lay.other_bytes
                == a.weight_bytes
            )
            assert len(lay.per_layer_bytes) == m.arch.n_layers


def test_bad_catalog_names_the_path():
    with pytest.raises(CatalogError, match="models/0"):
        parse_catalog({"schema_version": 1, "description": "", "models": [{"id": "x"}]}, "test")


def test_header_reader_agrees_with_gguf_reader(tmp_path):
    """gguf_header (fast, skip-ahead) against the gguf package's own GGUFReader, field by field."""
    from gguf import GGUFReader

    from gpu_preflight.models.gguf_header import ArrayLength, read_header
    from gpu_preflight.models.types import ModelArch

    arch = ModelArch(
        "qwen3moe",
        3,
        256,
        4,
        2,
        64,
        0,
        5000,
        False,
        4096,
        n_experts=4,
        n_experts_per_token=2,
        expert_intermediate_size=128,
    )
    path = write_gguf(tmp_path / "small.gguf", arch, "Q8_0", sparse=False)
    ours = read_header(path)
    ref = GGUFReader(path)
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        got = ours.fields[key]
        if isinstance(got, ArrayLength):
            assert got.count == len(value), key
        elif isinstance(value, float):
            assert got == pytest.approx(value), key
        else:
            assert got == value, key
    assert [(t.name, t.n_bytes, t.data_offset) for t in ours.tensors] == [
        (t.name, int(t.n_bytes), int(t.data_offset)) for t in ref.tensors
    ]


def test_config_fields_are_typed(tmp_path):
    from tests.fuzz.test_hf_dir import _dir

    for key, raw in [
        ("num_key_value_heads", '"abc"'),
        ("head_dim", "[1, 2]"),
        ("head_dim", "1e400"),
    ]:
        d = _dir(tmp_path, json.dumps({**TINY, key: "__X__"}).replace('"__X__"', raw))
        with pytest.raises(ModelFileError, match=key if raw != "1e400" else "1e400"):
            read_hf_dir(d)


def test_gguf_negative_embedding_length_is_refused(tmp_path):
    from tests.support.gguf_factory import raw_gguf, raw_llama_kvs, raw_llama_tensors

    tensors, size = raw_llama_tensors()
    kvs = [e for e in raw_llama_kvs() if e[0] != "llama.embedding_length"]
    p = tmp_path / "neg.gguf"
    p.write_bytes(raw_gguf([*kvs, ("llama.embedding_length", "i32", -1)], tensors, data_bytes=size))
    with pytest.raises(ModelFileError, match=r"llama\.embedding_length"):
        read_gguf(p)
