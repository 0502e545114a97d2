"""vLLM pipeline stages of sliding-window models: each stage's KV block, against vLLM itself.

vLLM 0.32 builds one set of KV cache groups for the whole model and projects it onto each
pipeline worker; a worker's block spans the most layers one group has there. The closed form
(``stage_block_layers``) must give what vLLM's own functions give for real published layer
patterns (Gemma 2, Gemma 3, gpt-oss) over many partitions, and the stage model must then give
the pool of the poorest stage.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.plan.conftest import CATALOG, GIB
from tests.support.vllm_run import VENV_PY, run_in_vllm

from gpu_preflight.memory.vllm import VllmConfig, kv_capacity_tokens, kv_layout
from gpu_preflight.memory.vllm_pipeline import (
    Stage,
    estimate_vllm_pipeline,
    partition_layers,
    pipeline_blocks,
    stage_block_layers,
)

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "vllm_kv_groups.py"
SLIDING = [m.id for m in CATALOG.models if m.arch.sliding_window_layers]


def _partitions(n: int) -> list[list[int]]:
    out = [[k, n - k] for k in range(1, n, max(1, n // 9))]
    out += [[n // 3, n // 3, n - 2 * (n // 3)], [1, n - 2, 1], [n // 4] * 3 + [n - 3 * (n // 4)]]
    return out


def _cfg() -> VllmConfig:
    return VllmConfig(max_model_len=8192, gpu_total_bytes=80 * GIB)


@pytest.mark.vllm
def test_stage_blocks_equal_vllms_own_grouping_for_real_layer_patterns(tmp_path):
    if not VENV_PY.exists():
        pytest.skip("vLLM environment not built: run `make vllm` (.ci/vllm.sh)")
    cases, ours = [], []
    for model in SLIDING:
        arch = CATALOG.get(model).arch
        layout = kv_layout(arch, _cfg())
        sliding = set(arch.sliding_window_layers)
        for parts in _partitions(arch.n_layers):
            stages = [Stage(80 * GIB, k) for k in parts]
            cases.append(
                {
                    "sliding": [il in sliding for il in range(arch.n_layers)],
                    "window": arch.sliding_window,
                    "partition": parts,
                    "kv_heads": arch.n_kv_heads,
                    "head_dim": arch.head_dim,
                    "block_size": 16,
                }
            )
            spec = CATALOG.get(model)
            ours.append(
                (
                    model,
                    parts,
                    layout.n_groups,
                    [
                        stage_block_layers(spec, _cfg(), stages, i, layout)
                        for i in range(len(parts))
                    ],
                )
            )
    got = run_in_vllm(SCRIPT, cases, tmp_path, timeout=600)
    for (model, parts, n_groups, blocks), theirs in zip(ours, got, strict=True):
        assert theirs["n_groups"] == n_groups, (model, theirs)
        assert theirs["stage_block_layers"] == blocks, (model, parts, theirs, blocks)
    print(f"{len(cases)} partitions of {len(SLIDING)} sliding-window models agree with vLLM 0.32")


@pytest.mark.parametrize("model", ["gemma-3-27b-it", "gpt-oss-120b", "gemma-2-27b-it"])
def test_a_sliding_window_model_pipelines_with_the_poorest_stages_pool(model):
    spec = CATALOG.get(model)
    art = next(a for a in spec.artifacts if a.engine == "vllm")
    cfg = _cfg()
    cards = [Stage(80 * GIB, 1), Stage(40 * GIB, 1)]
    parts = partition_layers(spec, art, cfg, cards)
    assert sum(parts) == spec.arch.n_layers and parts[0] > parts[1]
    stages = [Stage(80 * GIB, parts[0]), Stage(40 * GIB, parts[1])]
    blocks, each = pipeline_blocks(spec, art, cfg, stages)
    assert blocks == min(b.blocks for b in each) > 0
    e = estimate_vllm_pipeline(spec, art, cfg, stages)
    layout = kv_layout(spec.arch, cfg)
    assert e.kv_capacity_tokens == kv_capacity_tokens(layout, blocks)
    # each card's KV tensors hold the pool's blocks of its own block size, nothing more
    for i, d in enumerate(e.devices):
        assert d.kv_cache_bytes == blocks * layout.page_bytes * stage_block_layers(
            spec, cfg, stages, i, layout
        )
    # moving one layer across the boundary never gives a larger pool (the partition's optimum)
    for d in (-1, 1):
        moved = [Stage(80 * GIB, parts[0] + d), Stage(40 * GIB, parts[1] - d)]
        assert pipeline_blocks(spec, art, cfg, moved)[0] <= blocks
