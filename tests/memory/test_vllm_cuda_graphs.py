"""vLLM 0.32's CUDA graph estimate (memory/vllm.py cuda_graph_bytes) and its capture sizes."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from gpu_preflight.memory.vllm import (
    CUDA_GRAPH_BYTES,
    DRAFT_CUDA_GRAPH_BYTES,
    GIB,
    VllmConfig,
    VllmDraft,
    budget,
    cuda_graph_bytes,
    cudagraph_capture_sizes,
    cudagraph_counts,
)
from gpu_preflight.models.catalog import load_catalog

CATALOG = load_catalog()


@pytest.mark.parametrize(
    ("seqs", "tokens", "pw", "full", "largest"),
    [
        # 'Profiling CUDA graph memory: PIECEWISE=51 (largest=512), FULL=35 (largest=256)'
        (256, 8192, 51, 35, 512),
        (256, 2048, 51, 35, 512),
        # PIECEWISE=35 (largest=256), FULL=19 (largest=128)
        (128, 32768, 35, 19, 256),
        # PIECEWISE=5 (largest=16), FULL=4 (largest=8)
        (8, 65536, 5, 4, 16),
        # an H100's serve defaults: 1024 sequences, every size also a FULL decode graph
        (1024, 8192, 51, 51, 512),
        # max_num_batched_tokens under the ceiling is captured itself
        (256, 300, 38, 35, 300),
    ],
)
def test_capture_sizes_follow_vllm_032(
    seqs: int, tokens: int, pw: int, full: int, largest: int
) -> None:
    sizes = cudagraph_capture_sizes(seqs, tokens)
    assert sizes[-1] == largest
    assert cudagraph_counts(sizes, seqs) == (pw, full)


def test_blackwell_datacentre_ceiling_is_1024() -> None:
    assert cudagraph_capture_sizes(1024, 16384, max_capture=1024)[-1] == 1024


def _cfg(**kw: object) -> VllmConfig:
    base = VllmConfig(max_model_len=8192, gpu_total_bytes=80 * GIB, cudagraph_in_budget=True)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_without_arch_or_before_021_the_allowance_stays() -> None:
    spec = CATALOG.get("qwen3-8b")
    assert spec is not None
    assert cuda_graph_bytes(0) == CUDA_GRAPH_BYTES
    assert (
        cuda_graph_bytes(0, arch=spec.arch, cfg=_cfg(cudagraph_in_budget=False)) == CUDA_GRAPH_BYTES
    )
    assert cuda_graph_bytes(100 * GIB) == math.ceil(100 * GIB * 0.016)


def test_the_estimate_grows_with_the_graphs_tensor_parallel_and_recurrent_layers() -> None:
    dense, hybrid = CATALOG.get("qwen3-8b"), CATALOG.get("qwen3-next-80b-a3b-instruct")
    assert dense is not None and hybrid is not None
    few = cuda_graph_bytes(0, arch=dense.arch, cfg=_cfg(max_num_seqs=8))
    many = cuda_graph_bytes(0, arch=dense.arch, cfg=_cfg(max_num_seqs=1024))
    tp2 = cuda_graph_bytes(0, arch=dense.arch, cfg=_cfg(max_num_seqs=1024, tensor_parallel_size=2))
    assert few < many < tp2
    small = cuda_graph_bytes(0, arch=hybrid.arch, cfg=_cfg(max_num_batched_tokens=2048))
    large = cuda_graph_bytes(0, arch=hybrid.arch, cfg=_cfg(max_num_batched_tokens=8192))
    assert large > small
    # Qwen3-8B on a 24 GiB card logged 0.52 GiB for 51 + 35 graphs (LMCache issue 3430)
    a5000 = cuda_graph_bytes(0, arch=dense.arch, cfg=_cfg(gpu_total_bytes=24 * GIB))
    assert 0.52 * GIB <= a5000 < CUDA_GRAPH_BYTES


def test_budget_takes_the_estimate_and_the_drafter_allowance() -> None:
    spec, draft = CATALOG.get("llama-3.1-8b-instruct"), CATALOG.get("llama-3.2-1b-instruct")
    assert spec is not None and draft is not None
    art = next(a for a in spec.artifacts if a.engine == "vllm" and a.quant == "bf16")
    dart = next(a for a in draft.artifacts if a.engine == "vllm" and a.quant == "bf16")
    cfg = _cfg()
    alone = budget(spec, art, cfg)
    assert alone.cuda_graph_bytes == cuda_graph_bytes(alone.weights_bytes, arch=spec.arch, cfg=cfg)
    both = budget(spec, art, replace(cfg, draft=VllmDraft(draft, dart, 3)))
    assert both.cuda_graph_bytes > alone.cuda_graph_bytes + DRAFT_CUDA_GRAPH_BYTES - GIB // 2
    assert budget(spec, art, replace(cfg, enforce_eager=True)).cuda_graph_bytes == 0
