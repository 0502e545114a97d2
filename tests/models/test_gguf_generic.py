"""The generic GGUF reader on architectures outside the old list of 11, without llama.cpp: the
files llama.cpp's loader accepted (tests/support/data/gguf_archs.json), read back, and the KV
rules that follow from their keys (per-layer KV heads, recurrent states, KV sharing, the
projector file). tests/memory/test_gguf_any_arch.py compares them with llama.cpp itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGMLQuantizationType
from tests.support.gguf_archs import N_EMBD, N_LAYERS, load_cases, write_case
from tests.support.gguf_factory import write_gguf_kvs

from gpu_preflight.memory import llamacpp as lc
from gpu_preflight.models.errors import ModelError, ModelFileError
from gpu_preflight.models.gguf_file import mmproj_bytes, read_gguf, spec_from_gguf
from gpu_preflight.models.layout import GGUF_ARCHITECTURES, GGUF_REFUSED, UNLISTED_NOTE

CASES = load_cases()
F16, F32 = GGMLQuantizationType.F16, GGMLQuantizationType.F32


def _read(tmp_path: Path, arch: str):  # type: ignore[no-untyped-def]
    c = CASES[arch]
    return read_gguf(write_case(tmp_path / f"{arch}.gguf", arch, c.keys, c.tensors))


def test_every_case_llama_cpp_loads_is_read(tmp_path: Path) -> None:
    loads = [a for a, c in CASES.items() if c.loads]
    for arch in loads:
        if arch in GGUF_REFUSED:
            continue
        a, art = _read(tmp_path, arch)
        assert a.architecture == arch and art.layout is not None and art.layout.exact
    assert len(GGUF_ARCHITECTURES) + len(GGUF_REFUSED) == len({*GGUF_ARCHITECTURES, *CASES})


def test_deci_layers_without_kv_heads(tmp_path: Path) -> None:
    a, _ = _read(tmp_path, "deci")
    assert a.layer_kv_heads == (2, 0, 2, 1, 0, 2)
    on = lc.LlamaCppConfig(context=4096, flash_attn=True)
    off = lc.LlamaCppConfig(context=4096, flash_attn=False)
    hd = a.head_dim
    # flash attention: each layer its own heads; without it every V row is the widest (2 heads)
    assert lc.kv_layer_bytes(a, on) == [4096 * 2 * n * hd * 2 for n in a.layer_kv_heads]
    assert lc.kv_layer_bytes(a, off) == [4096 * 2 * (n + 2) * hd for n in a.layer_kv_heads]


def test_mamba_state_is_conv_window_and_ssm_state(tmp_path: Path) -> None:
    a, _ = _read(tmp_path, "mamba")
    assert a.recurrent_layers == tuple(range(N_LAYERS)) and a.kv_layer_count == 0
    d_conv, d_inner, d_state = 4, 2 * N_EMBD, 16  # gguf_archs._guess
    assert a.recurrent_state_elems == ((d_conv - 1) * d_inner, d_state * d_inner)
    cfg = lc.LlamaCppConfig(context=4096, parallel=3)
    assert sum(lc.kv_layer_bytes(a, cfg)) == 3 * N_LAYERS * 4 * sum(a.recurrent_state_elems)


def test_jamba_recurrent_where_no_kv_heads(tmp_path: Path) -> None:
    a, _ = _read(tmp_path, "jamba")
    assert a.recurrent_layers == (0, 1, 3, 4)
    assert [a.has_kv(il) for il in range(N_LAYERS)] == [False, False, True, False, False, True]


def test_gemma4_shared_kv_layers_have_no_cache(tmp_path: Path) -> None:
    a, _ = _read(tmp_path, "gemma4")
    assert a.no_kv_layers == (4, 5)  # gguf_archs.ARCH_KEYS: the last 2 of 6 share
    assert a.sliding_window_layers == (0, 1, 2, 4)
    assert (a.swa_head_dim, a.swa_head_dim_v, a.head_dim) == (32, 32, 64)
    cfg = lc.LlamaCppConfig(context=4096, flash_attn=True)
    swa_cells = lc.pad(min(4096, 512 + 512))
    per = [swa_cells * 2 * 2 * 32 * 2] * 3 + [4096 * 2 * 2 * 64 * 2]
    assert lc.kv_layer_bytes(a, cfg) == [*per, 0, 0]


def test_a_projector_is_refused_as_a_model_and_counted_as_mmproj(tmp_path: Path) -> None:
    plan = [("v.patch_embd.weight", (64, 3 * 14 * 14), F16), ("mm.0.weight", (256, 64), F16)]
    kvs = [("clip.has_vision_encoder", "bool", True)]
    path = write_gguf_kvs(tmp_path / "mmproj-model-f16.gguf", "clip", kvs, plan)
    with pytest.raises(ModelError, match="--mmproj"):
        spec_from_gguf(path)
    assert mmproj_bytes(path) == 2 * (64 * 3 * 14 * 14 + 256 * 64)
    c = CASES["llama"]
    model = write_case(tmp_path / "llama.gguf", "llama", c.keys, c.tensors)
    with pytest.raises(ModelFileError, match="not 'clip'"):
        mmproj_bytes(model)


def test_an_architecture_gguf_does_not_list_is_read_and_marked(tmp_path: Path) -> None:
    # Issue 19: not refused by the reader; planned only with llama.cpp's own dry run, which
    # refuses a name llama.cpp does not know (tests/memory/test_gguf_new_archs.py)
    c = CASES["llama"]
    keys = [(k.replace("llama.", "llamaz."), t, v, s) for k, t, v, s in c.keys]
    path = write_case(tmp_path / "x.gguf", "llamaz", keys, c.tensors)
    arch, art = read_gguf(path)
    assert arch.architecture == "llamaz" and UNLISTED_NOTE in (art.source or "")
