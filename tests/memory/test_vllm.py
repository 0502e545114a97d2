"""vLLM memory model: KV arithmetic exact against vLLM's rules and its own logs, budget, refusals."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from bench.vllm_kv import evaluate, gpu_catalog, load_reference, summary
from hypothesis import given
from hypothesis import strategies as st

from gpu_preflight.memory.vllm import (
    CUDA_CONTEXT_BYTES,
    VllmConfig,
    VllmConfigError,
    VllmDraft,
    batch_limits,
    budget,
    choose_gpu_memory_utilization,
    default_batch_limits,
    estimate_vllm,
    fits,
    kv_bytes_per_token,
    kv_capacity_tokens,
    kv_heads_per_rank,
    kv_layout,
    kv_pool,
    max_model_len_that_fits,
    min_kv_bytes_needed,
    vllm_refusal,
    weights_per_rank,
)
from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.types import Artifact, ModelSpec

CATALOG = load_catalog()
GIB = 2**30
MIB = 2**20
H100_MIB = 81559  # NVML total of an H100 80GB HBM3 (gpus.json)
ROOT = Path(__file__).resolve().parents[2]


def model(model_id: str, quant: str = "bf16") -> tuple[ModelSpec, Artifact]:
    spec = CATALOG.get(model_id)
    assert spec is not None
    art = next(a for a in spec.artifacts if a.engine == "vllm" and a.quant == quant)
    return spec, art


def h100(max_model_len: int, **kw: object) -> VllmConfig:
    return VllmConfig(
        max_model_len=max_model_len,
        gpu_total_bytes=H100_MIB * MIB,
        gpu_name="NVIDIA H100 80GB HBM3",
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("model_id", "dtype", "per_token"),
    [
        # layers x KV heads x (K + V head widths) x bytes, from each model's config.json
        ("llama-3.1-8b-instruct", "auto", 32 * 8 * (128 + 128) * 2),  # 128 KiB
        ("qwen3-32b", "auto", 64 * 8 * 256 * 2),  # 256 KiB
        ("qwen3-14b", "fp8", 40 * 8 * 256 * 1),
        ("gpt-oss-20b", "auto", 24 * 8 * (64 + 64) * 2),
        ("qwen2.5-7b-instruct", "fp8_e5m2", 28 * 4 * 256 * 1),
    ],
)
def test_kv_bytes_per_token_exact(model_id: str, dtype: str, per_token: int) -> None:
    spec = CATALOG.get(model_id)
    assert spec is not None
    assert kv_bytes_per_token(spec, dtype) == per_token


def test_tensor_parallel_shards_kv_heads_and_replicates_past_them() -> None:
    spec, art = model("llama-3.1-70b-instruct", "fp8")
    assert kv_bytes_per_token(spec, "auto", tp=2) == kv_bytes_per_token(spec) // 2
    assert kv_heads_per_rank(8, 8) == 1
    assert kv_heads_per_rank(8, 16) == 1  # more ranks than heads: one replicated head each
    assert kv_bytes_per_token(spec, "auto", tp=16) == kv_bytes_per_token(spec, "auto", tp=8)
    with pytest.raises(VllmConfigError, match=r"tensor_parallel_size 3 does not divide .* 8 KV"):
        kv_heads_per_rank(8, 3)
    # Replicated K/V heads cost each rank more than a 1/tp share of the weights.
    assert weights_per_rank(spec, art, 16) > weights_per_rank(spec, art, 8) / 2
    e = estimate_vllm(spec, art, h100(8192, tensor_parallel_size=2))
    assert [d.device for d in e.devices] == ["CUDA0", "CUDA1"]
    assert e.devices[0].weights_bytes == pytest.approx(art.weight_bytes / 2, rel=0.01)


def test_hybrid_groups_follow_vllm() -> None:
    gemma3 = CATALOG.get("gemma-3-27b-it")
    assert gemma3 is not None
    lay = kv_layout(gemma3.arch, h100(4096))
    # 52 sliding + 10 full: groups of 10 -> 6 sliding groups (8 padding layers) + 1 full group
    assert (lay.full_layers, lay.sliding_layers, lay.group_size, lay.n_groups) == (10, 52, 10, 7)
    gpt = CATALOG.get("gpt-oss-20b")
    assert gpt is not None
    lay = kv_layout(gpt.arch, h100(4096))
    # 12 + 12 are within 1.5x: one group of each
    assert (lay.group_size, lay.full_groups, lay.sliding_groups) == (12, 1, 1)
    off = kv_layout(gpt.arch, h100(4096, hybrid_kv_cache=False))
    assert (off.group_size, off.n_groups, off.sliding_window) == (24, 1, None)


def test_sliding_window_layers_need_only_the_window() -> None:
    spec, _ = model("gpt-oss-20b", "mxfp4")
    page = 16 * 8 * 128 * 2
    cfg = VllmConfig(
        max_model_len=131072, gpu_total_bytes=80 * GIB, gpu_name="NVIDIA A100-SXM4-80GB"
    )
    # A100: 2048-token chunks. Full group: 131072/16 blocks; sliding group: the 128-token window
    # plus one chunk, plus one block (SlidingWindowSpec.max_memory_usage_bytes).
    assert min_kv_bytes_needed(spec, cfg) == 12 * page * (8192 + math.ceil(2175 / 16) + 1)
    full_width = kv_bytes_per_token(spec) * 131072
    assert min_kv_bytes_needed(spec, cfg) < 0.52 * full_width
    hybrid_off = replace(cfg, hybrid_kv_cache=False)
    assert min_kv_bytes_needed(spec, hybrid_off) == full_width


def test_kv_arithmetic_reproduces_logged_token_counts() -> None:
    rows = [r for r in load_reference() if "kv_tokens" in r["logged"]]
    assert len(rows) >= 5
    gpus = gpu_catalog()
    for row in rows:
        r = evaluate(row, gpus)
        assert r.tokens_from_logged is not None and r.tokens_logged is not None
        # The logged GiB has two decimals: 0.005 GiB of slack, turned into tokens.
        spec, _ = model(row["model"], row["quant"])
        slack = 0.005 * GIB / kv_bytes_per_token(spec, row["settings"]["kv_cache_dtype"])
        assert abs(r.tokens_from_logged - r.tokens_logged) <= slack + 16, row["id"]


def test_refusal_figures_match_vllms_message() -> None:
    # vllm#25350: "(10.12 GiB KV cache is needed ...) the estimated maximum model length is 122080"
    spec, _ = model("qwen3-30b-a3b", "fp8")
    cfg = VllmConfig(max_model_len=221000, gpu_total_bytes=80 * GIB, kv_cache_dtype="fp8")
    assert round(min_kv_bytes_needed(spec, cfg) / GIB, 2) == 10.12
    row = next(r for r in load_reference() if r["id"] == "qwen3-30b-a3b-fp8-kvfp8-221k-refused")
    r = evaluate(row, gpu_catalog())
    assert r.est_max_len is not None
    assert abs(r.est_max_len - 122080) <= 0.005 * GIB / kv_bytes_per_token(spec, "fp8")


def test_refuses_a_context_the_pool_cannot_hold() -> None:
    spec, art = model("qwen3-32b")
    cfg = h100(131072, gpu_memory_utilization=0.9)
    msg = vllm_refusal(spec, art, cfg)
    assert msg is not None and "max seq len (131072)" in msg
    assert not fits(spec, art, cfg)
    best = max_model_len_that_fits(spec, art, cfg)
    assert 0 < best < 131072
    assert fits(spec, art, replace(cfg, max_model_len=best))
    assert not fits(spec, art, replace(cfg, max_model_len=best + 1))
    two = max_model_len_that_fits(spec, art, cfg, parallel=2)
    assert 0 < two < best
    # Weights alone over the budget: vLLM's "No available memory for the cache blocks".
    big, big_art = model("llama-3.1-70b-instruct", "fp8")
    # (at 0.86: vLLM 0.32's 16-byte-per-logit sampler leaves 1.1 GiB at its default 0.9)
    no_room = vllm_refusal(big, big_art, h100(4096, gpu_memory_utilization=0.86))
    assert no_room is not None and no_room.startswith("No available memory")
    assert max_model_len_that_fits(big, big_art, h100(4096)) == 0


def test_plan_keeps_a_margin_below_the_central_figure() -> None:
    spec, art = model("llama-3.1-8b-instruct")
    cfg = h100(16000)
    b = budget(spec, art, cfg)
    e = estimate_vllm(spec, art, cfg)
    assert e.margin_bytes == b.margin_bytes > 256 * MIB
    # The KV pool reported is the central one, the plan's limit sits margin_bytes below it.
    layout = kv_layout(spec.arch, cfg)
    assert e.kv_capacity_tokens == kv_capacity_tokens(layout, kv_pool(layout, b.available_kv_bytes))
    central_len = max_model_len_that_fits(spec, art, replace(cfg, max_model_len=10**7), limit=10**7)
    assert central_len * kv_bytes_per_token(spec) <= b.available_kv_bytes - b.margin_bytes


def test_max_num_seqs_and_batch_defaults_drive_the_activation_peak() -> None:
    assert default_batch_limits(H100_MIB * MIB, "NVIDIA H100 80GB HBM3") == (8192, 1024)
    assert default_batch_limits(81920 * MIB, "NVIDIA A100-SXM4-80GB") == (2048, 256)
    assert default_batch_limits(23034 * MIB, "NVIDIA L4") == (2048, 256)
    assert default_batch_limits(H100_MIB * MIB, None) == (8192, 1024)  # unknown name: larger
    spec, art = model("llama-3.1-8b-instruct")
    few = budget(spec, art, h100(16000, max_num_seqs=8))
    many = budget(spec, art, h100(16000))
    assert batch_limits(h100(16000)) == (8192, 1024)
    # 1024 sampled rows of a 128k vocabulary dominate the peak: 1.89 GiB logged by vLLM 0.19.0
    # on an H100 (llm-d-planner, bench/gpu_logs.json group llm-d; 4.76 GiB under 0.11-0.13,
    # before the 0.17 sampler). Keyed to 0.32 at 16 bytes per logit: at or just above the log.
    assert 1.89 <= many.activation_bytes / GIB <= 2.2
    assert few.activation_bytes < many.activation_bytes
    assert few.available_kv_bytes > many.available_kv_bytes


def test_quantized_weights() -> None:
    for model_id, quant in [
        ("llama-3.1-8b-instruct", "awq"),
        ("llama-3.1-8b-instruct", "fp8"),
        ("qwen3-32b", "awq"),
    ]:
        spec, art = model(model_id, quant)
        assert weights_per_rank(spec, art, 1) == pytest.approx(art.weight_bytes, abs=128 * MIB)
    spec, art = model("gpt-oss-20b", "mxfp4")
    # MXFP4 experts are re-laid out on load: 12.8 GiB on disk, 13.47-13.72 GiB logged.
    assert 13.72 <= weights_per_rank(spec, art, 1) / GIB < 14.2


def test_bad_settings_name_the_setting() -> None:
    spec, art = model("llama-3.1-8b-instruct")
    with pytest.raises(VllmConfigError, match=r"kv_cache_dtype 'q8_0'.*accepted: auto, fp8"):
        estimate_vllm(spec, art, h100(4096, kv_cache_dtype="q8_0"))
    with pytest.raises(
        VllmConfigError, match=r"gpu_memory_utilization must be in \(0, 1\], got 1.5"
    ):
        budget(spec, art, h100(4096, gpu_memory_utilization=1.5))
    with pytest.raises(VllmConfigError, match="max_model_len must be >= 1"):
        budget(spec, art, h100(0))


@given(
    total_mib=st.integers(min_value=4096, max_value=200_000),
    free_frac=st.floats(min_value=0.0, max_value=1.0),
    reserve_mib=st.integers(min_value=0, max_value=40_000),
    tp=st.sampled_from([1, 2, 4]),
    eager=st.booleans(),
    reserved_mib=st.integers(min_value=0, max_value=1024),
)
def test_utilization_never_trips_vllms_free_memory_check(
    total_mib: int, free_frac: float, reserve_mib: int, tp: int, eager: bool, reserved_mib: int
) -> None:
    total = total_mib * MIB
    free = int(total * free_frac)
    reserve = reserve_mib * MIB
    u = choose_gpu_memory_utilization(
        total, free, reserve, tensor_parallel_size=tp, enforce_eager=eager
    )
    assert u == round(u, 2) and 0.0 <= u <= 0.92
    assert u * total <= max(0, free - reserve)
    # vLLM compares u x its CUDA total (<= NVML total) with what is free after its own context.
    cuda_total = total - reserved_mib * MIB
    if u > 0:
        assert u * cuda_total <= free - reserve - CUDA_CONTEXT_BYTES


def test_utilization_examples() -> None:
    h = H100_MIB * MIB
    assert choose_gpu_memory_utilization(h, h - 600 * MIB, 0) == 0.92  # capped
    # A co-resident service holding 20 GiB and a 4 GiB reserve for it to grow.
    u = choose_gpu_memory_utilization(h, h - 20 * GIB, 4 * GIB)
    assert u == 0.67
    assert choose_gpu_memory_utilization(h, 1 * GIB, 0) == 0.0
    assert choose_gpu_memory_utilization(0, 0, 0) == 0.0


def test_prediction_matches_vllm_logs_within_target() -> None:
    results = [evaluate(r, gpu_catalog()) for r in load_reference()]
    s = summary(results)
    assert s["v1_rows"] >= 6
    assert s["v1_median_abs_error_pct"] <= 5.0
    # Each row is read with its own release's constants (the sampler changed in 0.17: bench/
    # vllm_kv.py row_version, memory/vllm.py SAMPLER_CHANGED_IN).
    assert s["refusals_predicted"] == s["refusals_logged"] >= 5
    # Every logged start but the self-contradicting llm-d gpt-oss-120b row is predicted to start.
    assert s["fits_refused_by_model"] == ["llmd-gpt-oss-120b-h100"]


def test_reference_rows_cite_sources_and_catalog_models() -> None:
    doc = json.loads((ROOT / "bench" / "vllm_reference.json").read_text(encoding="utf-8"))
    assert len(doc["rows"]) >= 15
    for row in doc["rows"]:
        assert row["source"].startswith("https://")
        model(row["model"], row["quant"])


# Speculative decoding: vLLM gives the draft's attention layers pages in the same KV cache
# (UniformTypeKVCacheSpecs: a block's page is the sum over target and draft layers).


def _draft(model_id: str = "llama-3.2-1b-instruct", quant: str = "bf16") -> VllmDraft:
    spec, art = model(model_id, quant)
    return VllmDraft(spec, art, num_speculative_tokens=3)


def test_draft_kv_pages_add_to_the_targets() -> None:
    spec, _ = model("llama-3.1-8b-instruct")
    d = _draft()
    assert kv_bytes_per_token(spec, draft=d) == 32 * 8 * 256 * 2 + 16 * 8 * 128 * 2
    layout = kv_layout(spec.arch, h100(8192, draft=d))
    assert layout.page_bytes == 16 * (32 * 8 * 256 * 2 + 16 * 8 * 128 * 2)
    assert layout.group_size == 1 and layout.n_groups == 1
    # Under TP 2 both models' KV heads split across the ranks.
    assert kv_bytes_per_token(spec, tp=2, draft=d) == kv_bytes_per_token(spec, draft=d) // 2


def test_draft_weights_and_graphs_come_out_of_the_kv_pool() -> None:
    spec, art = model("llama-3.1-8b-instruct")
    d = _draft()
    alone = budget(spec, art, h100(8192, cudagraph_in_budget=True))
    both = budget(spec, art, h100(8192, cudagraph_in_budget=True, draft=d))
    draft_weights = weights_per_rank(d.spec, d.artifact, 1)
    assert both.weights_bytes - alone.weights_bytes == draft_weights
    assert both.cuda_graph_bytes > alone.cuda_graph_bytes
    assert both.available_kv_bytes < alone.available_kv_bytes - draft_weights
    e = estimate_vllm(spec, art, h100(8192, cudagraph_in_budget=True, draft=d))
    pool = kv_pool(kv_layout(spec.arch, h100(8192, draft=d)), both.available_kv_bytes)
    assert e.kv_capacity_tokens == pool * 16
    assert any("draft llama-3.2-1b-instruct" in n for n in e.notes)


@pytest.mark.parametrize(
    ("target", "draft", "fragment"),
    [
        ("qwen2.5-7b-instruct", "qwen2.5-0.5b-instruct", "equal vocabulary sizes"),
        ("gemma-3-27b-it", "gemma-3-4b-it", "sliding-window"),
    ],
)
def test_drafts_vllm_cannot_serve_are_refused_by_name(target, draft, fragment) -> None:
    spec, art = model(target)
    with pytest.raises(VllmConfigError, match=fragment):
        estimate_vllm(spec, art, h100(8192, draft=_draft(draft)))


def test_tensor_parallel_4_keeps_about_2_gib_of_non_torch_memory_per_rank():
    # Published TP 4 start-up logs show ~2 GiB of non-torch memory per GPU (issue 12). llm-d's
    # vLLM 0.19.0 H100 logs (issue 20): 0.24-0.27 GiB on one GPU, 2.06-2.11 GiB at TP 2 (NCCL
    # and the custom all-reduce over NVLink; 0.55 GiB in an older log without it), 2.13-2.21
    # GiB at TP 4. Each figure at or above the largest logged.
    from gpu_preflight.memory.vllm import NON_TORCH_BYTES, non_torch_tp_bytes

    assert non_torch_tp_bytes(1) == 0
    assert 0.27 * GIB <= NON_TORCH_BYTES < 0.3 * GIB
    assert 2.11 * GIB <= NON_TORCH_BYTES + non_torch_tp_bytes(2) < 2.2 * GIB
    assert NON_TORCH_BYTES + non_torch_tp_bytes(4) >= 2.21 * GIB
    assert non_torch_tp_bytes(8) >= non_torch_tp_bytes(4)
