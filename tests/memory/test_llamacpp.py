"""llama.cpp memory model: exact KV from llama.cpp's own rules, and agreement with llama-fit-params."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests.support.gguf_factory import write_gguf
from tests.support.llama_fit import fit_argv, fit_params_binary, llama_fit

from gpu_preflight.memory.llamacpp import (
    LlamaCppConfig,
    context_cells,
    estimate_llamacpp,
    kv_layer_cells,
)
from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.resolve import resolve_model

CATALOG = load_catalog()
MIB = 2**20


def test_context_padding_and_streams():
    # llama-context.cpp: n_ctx padded to 256; per-stream size padded again when not unified.
    assert context_cells(LlamaCppConfig(context=1000)) == (1024, 1024, 1)
    assert context_cells(LlamaCppConfig(context=8192, parallel=3)) == (8448, 2816, 3)
    assert context_cells(LlamaCppConfig(context=8192, parallel=3, kv_unified=True)) == (
        8192,
        8192,
        1,
    )


def test_llama_8b_kv_exact():
    spec = CATALOG.get("llama-3.1-8b-instruct")
    e = estimate_llamacpp(spec, spec.artifacts[0], LlamaCppConfig(context=8192, n_gpu_layers=0))
    # 32 layers x 8192 cells x (8 heads x 128) x 2 (K,V) x 2 bytes
    assert e.devices[-1].kv_cache_bytes == 32 * 8192 * 1024 * 2 * 2
    q8 = estimate_llamacpp(
        spec,
        spec.artifacts[0],
        LlamaCppConfig(context=8192, n_gpu_layers=0, cache_type_k="q8_0", cache_type_v="q8_0"),
    )
    assert q8.devices[-1].kv_cache_bytes == 32 * 8192 * (1024 // 32 * 34) * 2


def test_sliding_window_layers_use_the_window():
    spec = CATALOG.get("gemma-2-9b-it")
    cells = kv_layer_cells(spec.arch, LlamaCppConfig(context=16384))
    # llama-kv-cache-iswa.cpp: pad(min(n_ctx, n_swa + n_ubatch), 256) = pad(4096 + 512) = 4608
    assert cells[0] == 4608 and cells[1] == 16384
    gpt = CATALOG.get("gpt-oss-20b")
    assert kv_layer_cells(gpt.arch, LlamaCppConfig(context=32768))[:2] == [768, 32768]


def test_placement_full_partial_and_experts():
    spec = CATALOG.get("qwen3-30b-a3b")
    art = next(a for a in spec.artifacts if a.quant == "Q4_K_M")
    full = estimate_llamacpp(spec, art, LlamaCppConfig(context=4096), gpu_count=1)
    assert full.devices[-1].weights_bytes == art.layout.token_embd_bytes + art.layout.other_bytes
    moe = estimate_llamacpp(spec, art, LlamaCppConfig(context=4096, n_cpu_moe=10), gpu_count=1)
    moved = sum(art.layout.per_layer_expert_bytes[:10])
    assert moe.devices[0].weights_bytes == full.devices[0].weights_bytes - moved
    assert moe.devices[-1].kv_cache_bytes == 0  # KV stays with the layers, which stay on the GPU
    part = estimate_llamacpp(spec, art, LlamaCppConfig(context=4096, n_gpu_layers=20), gpu_count=1)
    # -ngl counts the output layer: 20 = the last 19 repeating layers + the output (llama-model.cpp)
    assert part.devices[0].kv_cache_bytes == 19 * full.devices[0].kv_cache_bytes // 48
    split = estimate_llamacpp(
        spec, art, LlamaCppConfig(context=4096, tensor_split=(0.75, 0.25)), gpu_count=2
    )
    assert split.devices[0].weights_bytes > 2 * split.devices[1].weights_bytes


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory):
    """Real-architecture sparse GGUFs, written once per model for the whole module."""
    made: dict[tuple[str, str], Path] = {}

    def get(model: str, quant: str) -> Path:
        if (model, quant) not in made:
            d = tmp_path_factory.mktemp("gguf")
            made[(model, quant)] = write_gguf(d / f"{model}.gguf", CATALOG.get(model).arch, quant)
        return made[(model, quant)]

    return get


@pytest.mark.llamacpp
@pytest.mark.parametrize(
    ("model", "quant"),
    [
        ("llama-3.1-8b-instruct", "Q4_K_M"),
        ("llama-3.2-3b-instruct", "Q4_K_M"),  # tied, Q4_K token_embd: repacked output copy
        ("gemma-2-9b-it", "Q4_K_M"),
        ("gpt-oss-20b", "MXFP4"),
        ("qwen3-30b-a3b", "Q4_K_M"),
    ],
)
@pytest.mark.parametrize(
    ("ctx", "fa", "cache"),
    [(4096, "on", "f16"), (8192, "on", "f16"), (16384, "off", "f16"), (16384, "on", "q4_0")],
)
def test_agrees_with_llama_fit_params(gguf_files, model, quant, ctx, fa, cache):
    if not fit_params_binary().exists():
        if shutil.which("cmake") is None:
            pytest.skip(
                "llama.cpp binaries not built and no cmake to build them (.ci/llama-cpp.sh)"
            )
        pytest.skip("llama.cpp binaries not built: run `make llama-cpp` (.ci/llama-cpp.sh)")
    path = gguf_files(model, quant)
    # the argv as llama-server gets it: repacking on (llama.cpp's default), server flags included
    argv = (
        "llama-server",
        "--model",
        str(path),
        "--fit",
        "off",
        "--ctx-size",
        str(ctx),
        "--parallel",
        "1",
        "--n-gpu-layers",
        "0",
        "--flash-attn",
        fa,
        "--cache-type-k",
        cache,
        "--cache-type-v",
        cache,
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
        "--alias",
        model,
    )
    ref = llama_fit(argv, timeout=120).host
    file_spec = resolve_model(str(path), CATALOG, "test")
    e = estimate_llamacpp(
        file_spec,
        file_spec.artifacts[0],
        LlamaCppConfig(
            context=ctx,
            flash_attn=fa == "on",
            cache_type_k=cache,
            cache_type_v=cache,
            n_gpu_layers=0,
        ),
    )
    cpu = e.devices[-1]
    # llama.cpp floors its Host and CPU_REPACK MiB separately: their sum can be 1 under ours
    assert 0 <= cpu.weights_bytes // MIB - ref.model_mib <= 1
    assert cpu.kv_cache_bytes // MIB == ref.context_mib  # KV exact
    # never under; at most 80 MiB over (MoE: the expert intermediate the output phase keeps)
    assert 0 <= cpu.compute_bytes // MIB - ref.compute_mib <= 80


def _file_estimate(path: Path, **cfg) -> int:
    spec = resolve_model(str(path), CATALOG, "test")
    cfg.setdefault("n_gpu_layers", 0)
    e = estimate_llamacpp(spec, spec.artifacts[0], LlamaCppConfig(context=4096, **cfg))
    return e.devices[-1].weights_bytes


def test_tied_output_is_a_second_copy_when_repacked(gguf_files):
    # src/llama-model-loader.cpp create_tensor: a TENSOR_DUPLICATED output is a new tensor when
    # its buffer type (CPU_REPACK for a Q4_K MUL_MAT on AVX2) differs from token_embd's (CPU).
    path = gguf_files("llama-3.2-3b-instruct", "Q4_K_M")
    layout = resolve_model(str(path), CATALOG, "test").artifacts[0].layout
    assert layout is not None and layout.output_bytes == 0
    once = layout.total_bytes
    assert _file_estimate(path) == once + layout.token_embd_bytes
    assert _file_estimate(path, repack=False) == once
    # Q8_0 is repacked on aarch64 (NEON) builds only
    q8 = gguf_files("llama-3.2-1b-instruct", "Q8_0")
    q8_layout = resolve_model(str(q8), CATALOG, "test").artifacts[0].layout
    assert q8_layout is not None
    assert _file_estimate(q8) == q8_layout.total_bytes
    assert _file_estimate(q8, host_isa="aarch64") == q8_layout.total_bytes + (
        q8_layout.token_embd_bytes
    )


def test_batch_is_capped_at_the_context():
    # llama_context: n_batch = min(n_ctx, n_batch) for causal models, n_ubatch = min(n_batch, ..)
    spec = CATALOG.get("llama-3.1-8b-instruct")
    small = LlamaCppConfig(context=256, n_batch=2048, n_ubatch=1024, n_gpu_layers=0)
    same = LlamaCppConfig(context=256, n_batch=256, n_ubatch=256, n_gpu_layers=0)
    a = estimate_llamacpp(spec, spec.artifacts[0], small).devices[-1]
    b = estimate_llamacpp(spec, spec.artifacts[0], same).devices[-1]
    assert a.compute_bytes == b.compute_bytes


def test_fit_argv_drops_server_only_flags():
    argv = (
        "llama-server",
        "--model",
        "/m.gguf",
        "--fit",
        "off",
        "-c",
        "8192",
        "--host",
        "0.0.0.0",
        "--port=8080",
        "--alias",
        "x",
        "--jinja",
        "--no-webui",
        "--kv-unified",
        "-ngl",
        "0",
    )
    args, dropped = fit_argv(argv)
    assert args == ("--model", "/m.gguf", "--fit", "off", "-c", "8192", "-ngl", "0")
    assert dropped == ("--kv-unified",)


def test_amx_packing_and_tied_copy(gguf_files):
    # amx/mmq.cpp get_row_size: packed Q8_0 rows take 38 bytes per 34; AMX takes F16/Q8_0 MUL_MAT
    # weights, so a tied Q8_0 output is a second copy there (amx.cpp supports_op)
    q8 = gguf_files("llama-3.2-1b-instruct", "Q8_0")
    spec = resolve_model(str(q8), CATALOG, "test")
    layout = spec.artifacts[0].layout
    assert layout is not None
    plain = _file_estimate(q8)
    amx = _file_estimate(q8, amx=True)
    dense = sum(layout.per_layer_bytes) + layout.token_embd_bytes  # layers + the output copy
    assert amx == plain + layout.token_embd_bytes + -(-dense * 4 // 34)
    assert _file_estimate(q8, amx=True, repack=False) == plain  # --no-repack: no AMX either


def test_a_slot_checkpoint_is_its_own_window_in_a_unified_cache_too() -> None:
    # A unified KV holds every slot's SWA window in one stream; one slot's checkpoint is its own
    # window plus a ubatch (llama-kv-cache.cpp prunes a sequence below pos - n_swa), as with
    # split streams, not the whole stream (which charged 4 slots' windows per checkpoint).
    from dataclasses import replace

    from gpu_preflight.memory.llamacpp import LlamaCppConfig, checkpoint_bytes

    spec = CATALOG.get("gemma-2-2b-it")
    assert spec is not None
    arch = spec.arch
    split = LlamaCppConfig(context=4 * 8192, parallel=4, kv_unified=False)
    unified = replace(split, kv_unified=True)
    assert checkpoint_bytes(arch, unified) == checkpoint_bytes(arch, split) > 0
