"""Degrade step 3 (issue 13): the KV cache type, only where the tier allows it, never a pinned one.

The order is slots (down to 1), context (down to the tier's minimum), KV type, offload; each step
taken is a plan note naming the value and why, and plan.json's sources say the tier chose it.
"""

from __future__ import annotations

import json

from tests.plan.conftest import run_plan

from gpu_preflight.plan.tiers import builtin_tiers_text

LLAMA = {"PREFLIGHT_MODEL": "qwen3-32b@Q4_K_M", "PREFLIGHT_CONTEXT": "20480"}
VLLM = {
    "PREFLIGHT_MODEL": "qwen3-32b@fp8",
    "PREFLIGHT_ENGINE": "vllm",
    "PREFLIGHT_CONTEXT": "32768",
}


def _kv(p) -> str:
    a = p.argv
    if p.engine == "vllm":
        return a[a.index("--kv-cache-dtype") + 1] if "--kv-cache-dtype" in a else "auto"
    return f"{a[a.index('--cache-type-k') + 1]}/{a[a.index('--cache-type-v') + 1]}"


def test_llama_cpp_falls_back_to_q8_0_only_after_one_slot_at_f16_failed():
    fits_at_f16 = run_plan("rtx-4090", {**LLAMA, "PREFLIGHT_CONTEXT": "16384"})
    assert _kv(fits_at_f16) == "f16/f16" and fits_at_f16.sources["kv_cache_type"] == "default"
    p = run_plan("rtx-4090", LLAMA)
    assert p.verdict == "ship", p.reasons
    assert _kv(p) == "q8_0/q8_0" and "--n-gpu-layers" in p.argv
    assert p.argv[p.argv.index("--n-gpu-layers") + 1] == "all"  # before offload
    assert p.sources["kv_cache_type"] == "tier:gpu-24gb (kv_cache_degrade)"
    note = next(n for n in p.predicted.notes if n.startswith("KV cache type"))
    assert "q8_0 instead of llama.cpp's default f16" in note and "gpu-24gb" in note
    assert any(n.startswith("parallel slots: 1") for n in p.predicted.notes)


def test_vllm_falls_back_to_fp8_where_the_gpu_has_fp8_units():
    p = run_plan("l40s", VLLM)  # compute capability 8.9
    assert p.verdict == "ship" and _kv(p) == "fp8", p.reasons
    assert any("fp8 instead of vllm's default auto" in n for n in p.predicted.notes)


def test_no_fp8_fallback_on_a_gpu_without_fp8_units():
    p = run_plan("a100-40gb", VLLM)  # compute capability 8.0
    assert p.verdict == "refuse"
    assert not any("KV fp8" in r for r in p.reasons), p.reasons


def test_a_pinned_kv_type_is_never_changed():
    p = run_plan("rtx-4090", {**LLAMA, "PREFLIGHT_KV_CACHE_TYPE": "f16"})
    if p.verdict == "ship":
        assert _kv(p) == "f16/f16"
        assert not any(n.startswith("KV cache type") for n in p.predicted.notes)
    q = run_plan("l40s", VLLM, argv=("--kv-cache-dtype", "auto"))
    assert q.verdict == "refuse" or _kv(q) == "auto"
    assert not any("KV fp8" in r for r in q.reasons)


def test_a_tier_table_without_the_allowance_never_changes_the_kv_type(tmp_path):
    doc = json.loads(builtin_tiers_text())
    for t in doc["tiers"]:
        t.pop("kv_cache_degrade", None)
    path = tmp_path / "tiers.json"
    path.write_text(json.dumps(doc))
    p = run_plan("rtx-4090", {**LLAMA, "PREFLIGHT_TIERS_FILE": str(path)})
    assert p.verdict == "refuse" or _kv(p) == "f16/f16"
    assert not any("q8_0" in r for r in p.reasons)


def test_every_degraded_miss_states_the_kv_type_it_tried():
    env = {"PREFLIGHT_MODEL": "llama-3.1-70b-instruct@Q4_K_M", "PREFLIGHT_CONTEXT": "131072"}
    p = run_plan("rtx-4090", env, host_ram_gib=16)
    assert p.verdict == "refuse"
    assert any("KV q8_0/q8_0" in r for r in p.reasons), p.reasons
    assert any("KV f16/f16" in r for r in p.reasons), p.reasons


def test_a_tier_allowance_of_the_wrong_engines_type_is_refused_by_the_schema(tmp_path):
    import pytest

    from gpu_preflight.inputs.errors import TierTableError
    from gpu_preflight.plan.tiers import load_tiers

    doc = json.loads(builtin_tiers_text())
    doc["tiers"][1]["kv_cache_degrade"] = {"llama.cpp": ["fp8"]}
    path = tmp_path / "tiers.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(TierTableError, match="kv_cache_degrade"):
        load_tiers({"PREFLIGHT_TIERS_FILE": str(path)})
