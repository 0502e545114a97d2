"""Fused Q/K/V checkpoints per rank: vLLM's QKVParallelLinear replicates the K/V heads once tensor
parallel exceeds them (vllm/model_executor/layers/linear.py QKVParallelLinear:
num_kv_head_replicas = tp // total_num_kv_heads), so a multi-query model's fused c_attn /
query_key_value rows are not split tp ways.

The checkpoint is GPT-BigCode's real layout (bigcode/gpt_bigcode-santacoder's published config,
transformers' GPTBigCodeForCausalLM on the meta device, tests/support/hf_full_layout.py): one K/V
head, fused c_attn. The per-rank figure is checked against vLLM's rule applied tensor by tensor.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from safetensors import safe_open
from tests.support.vllm_coverage import vllm_python
from tests.support.vllm_run import run_in_vllm

from gpu_preflight.memory.vllm import WEIGHT_EXTRA_BYTES, weights_per_rank
from gpu_preflight.models.hf_dir import DTYPE_BYTES, spec_from_hf_dir

SUPPORT = Path(__file__).resolve().parents[1] / "support"
# bigcode/gpt_bigcode-santacoder config.json: 16 query heads of 128, one K/V head.
SANTACODER = {
    "n_embd": 2048,
    "n_head": 16,
    "n_layer": 24,
    "n_inner": 8192,
    "n_positions": 2048,
    "vocab_size": 49280,
    "multi_query": True,
}


@pytest.fixture(scope="module")
def santacoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    py = vllm_python()
    if py is None:
        pytest.skip("no vLLM environment: run `make vllm` (.ci/vllm.sh) or .ci/vllm-cpu.sh")
    tmp = tmp_path_factory.mktemp("fusedqkv")
    d = tmp / "santacoder"
    job = {
        "architecture": "GPTBigCodeForCausalLM",
        "model_type": "gpt_bigcode",
        "config": SANTACODER,
        "dir": str(d),
    }
    (got,) = run_in_vllm(SUPPORT / "hf_full_layout.py", [job], tmp, timeout=300, python=py)
    assert got["ok"], got
    return d


def _vllm_rule(d: Path, tp: int) -> float:
    """Bytes one rank holds by vLLM's layers. vLLM 0.32 serves GPT-BigCode through its
    Transformers backend (registry.py "GPTBigCodeForCausalLM": ("transformers", ...)), and
    transformers' GPTBigCodeConfig has no base_model_tp_plan, so
    (transformers/base.py recursive_replace): c_attn a QKVParallelLinear (16/tp query heads,
    the one K/V head on every rank), the attention's c_proj row parallel and the vocabulary
    embedding vocab parallel (1/tp); wpe and the MLP (c_fc, c_proj) whole on every rank
    (measured on vLLM's own ranks: tests/models/test_vllm_tp.py). 1-D tensors (norms, biases)
    counted whole, as the planner does (the safe side)."""
    heads, kv, hd = 16, 1, 128
    total = 0.0
    with safe_open(str(d / "model.safetensors"), framework="numpy") as st:
        for name in st.keys():  # noqa: SIM118
            sl = st.get_slice(name)
            nb = math.prod(sl.get_shape()) * DTYPE_BYTES[sl.get_dtype()]
            if len(sl.get_shape()) <= 1 or name.endswith("wpe.weight") or ".mlp." in name:
                total += nb
            elif name.endswith("c_attn.weight"):
                assert sl.get_shape()[0] == (heads + 2 * kv) * hd
                per_rank_rows = heads // tp * hd + 2 * max(1, kv // tp) * hd
                total += nb * per_rank_rows / ((heads + 2 * kv) * hd)
            else:
                total += nb / tp
    return total


@pytest.mark.vllm
@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_a_multi_query_fused_qkv_keeps_its_kv_rows_on_every_rank(santacoder, tp) -> None:
    spec = spec_from_hf_dir(santacoder)
    assert spec.arch.n_kv_heads == 1
    art = spec.artifacts[0]
    got = weights_per_rank(spec, art, tp)
    want = _vllm_rule(santacoder, tp)
    # Equal to vLLM's rule (up to rounding), never under it.
    assert abs(got - WEIGHT_EXTRA_BYTES - want) <= 2, (got - WEIGHT_EXTRA_BYTES, want)
    if tp > 1:
        # What splitting the fused tensor tp ways would give: under vLLM by the K/V rows.
        naive = art.weight_bytes / tp + WEIGHT_EXTRA_BYTES
        assert got > naive
