"""llama.cpp memory model: exact KV from llama.cpp's own rules, and agreement with llama-fit-params."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.support.gguf_factory import write_gguf

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


FIT = (
    Path(os.environ.get("GPU_PREFLIGHT_CACHE", "/var/cache/gpu-preflight"))
    / "llama.cpp-0.3.36/bin/llama-fit-params"
)


@pytest.mark.llamacpp
@pytest.mark.parametrize(
    ("model", "quant"),
    [
        ("llama-3.1-8b-instruct", "Q4_K_M"),
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
    if not FIT.exists():
        if shutil.which("cmake") is None:
            pytest.skip(
                "llama.cpp binaries not built and no cmake to build them (.ci/llama-cpp.sh)"
            )
        pytest.skip("llama.cpp binaries not built: run `make llama-cpp` (.ci/llama-cpp.sh)")
    path = gguf_files(model, quant)
    r = subprocess.run(
        [
            str(FIT),
            "-m",
            str(path),
            "-c",
            str(ctx),
            "-fa",
            fa,
            "-ctk",
            cache,
            "-ctv",
            cache,
            "--fit-print",
            "on",
            "--no-repack",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    _, model_mib, kv_mib, compute_mib = r.stdout.strip().splitlines()[-1].split()
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
    assert cpu.weights_bytes // MIB == int(model_mib)
    assert cpu.kv_cache_bytes // MIB == int(kv_mib)  # KV exact
    assert (
        0 <= cpu.compute_bytes // MIB - int(compute_mib) <= 40
    )  # never under, at most 40 MiB over
