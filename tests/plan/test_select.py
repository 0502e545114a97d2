"""Plan tables: real GPUs x real models on simulated profiles, every override, every refusal."""

from __future__ import annotations

import pytest
from tests.plan.conftest import GIB, run_plan

from gpu_preflight.inputs.errors import OverrideError

# Zero-config: (hardware, tier, engine, model, quant). The context is the largest that fits.
ZERO_CONFIG = [
    ("rtx-4060", "gpu-8gb", "llama.cpp", "qwen3-8b", "Q4_K_M"),
    ("rtx-3060", "gpu-12gb", "llama.cpp", "qwen3-14b", "Q4_K_M"),
    ("t4", "gpu-12gb", "llama.cpp", "qwen3-14b", "Q4_K_M"),
    ("rtx-3090", "gpu-24gb", "llama.cpp", "qwen3-30b-a3b", "Q4_K_M"),
    ("rtx-4090", "gpu-24gb", "llama.cpp", "qwen3-30b-a3b", "Q4_K_M"),
    ("l4", "gpu-24gb", "llama.cpp", "qwen3-30b-a3b", "Q4_K_M"),
    ("a100-40gb", "gpu-40gb", "vllm", "qwen3-32b", "awq"),
    ("l40s", "gpu-40gb", "vllm", "qwen3-32b", "awq"),
    ("h100-sxm", "gpu-80gb", "vllm", "llama-3.1-70b-instruct", "awq"),
    ("a100-80gb", "gpu-80gb", "vllm", "llama-3.1-70b-instruct", "awq"),
    ("h200", "gpu-140gb", "vllm", "gpt-oss-120b", "mxfp4"),
    ("2xa100-80gb", "gpu-140gb", "vllm", "gpt-oss-120b", "mxfp4"),
    ("4xl4", "gpu-80gb", "vllm", "llama-3.1-70b-instruct", "awq"),
    ("2xrtx-4090", "gpu-40gb", "vllm", "qwen3-32b", "awq"),
    ("a100-80gb:1g.10gb", "gpu-8gb", "llama.cpp", "qwen3-8b", "Q4_K_M"),
    ("a100-80gb:3g.40gb", "gpu-40gb", "vllm", "qwen3-32b", "awq"),
    ("library_not_found.json", "cpu", "llama.cpp", "qwen2.5-3b-instruct", "Q4_K_M"),
    ("wsl2_laptop.json", "gpu-8gb", "llama.cpp", "qwen3-8b", "Q4_K_M"),
    ("low_free.json", "gpu-8gb", "llama.cpp", "qwen3-8b", "Q4_K_M"),
]


@pytest.mark.parametrize(("hw", "tier", "engine", "model", "quant"), ZERO_CONFIG)
def test_zero_config(hw, tier, engine, model, quant):
    p = run_plan(hw)
    assert p.verdict == "ship", p.reasons
    assert (p.tier, p.engine, p.model.id, p.model.quant) == (tier, engine, model, quant)
    t = next(
        t for t in __import__("tests.plan.conftest", fromlist=["TIERS"]).TIERS.tiers if t.id == tier
    )
    assert t.min_context <= p.context <= t.target_context
    assert p.sources["model"] == f"tier:{tier}"


def test_tensor_parallel_over_identical_gpus():
    p = run_plan("4xl4")
    assert p.argv[p.argv.index("--tensor-parallel-size") + 1] == "4"
    assert len(p.predicted.devices) == 4
    assert p.argv[:3] == ("vllm", "serve", "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4")


def test_mixed_gpus_are_never_split_evenly():
    p = run_plan(
        "mixed_4090_3060.json",
        {"PREFLIGHT_ENGINE": "llama.cpp", "PREFLIGHT_MODEL": "qwen3-32b@Q4_K_M"},
    )
    assert p.verdict == "ship"
    split = p.argv[p.argv.index("--tensor-split") + 1].split(",")
    a, b = (float(x) for x in split)
    assert a > b > 0  # the 24 GB card takes the larger share
    assert len(p.predicted.devices) == 3  # CUDA0, CUDA1, CPU


def test_mixed_gpus_vllm_uses_the_identical_group_and_says_so():
    p = run_plan("mixed_4090_3060.json", {"PREFLIGHT_ENGINE": "vllm"})
    assert p.verdict == "ship" and p.engine == "vllm"
    assert "--tensor-parallel-size" not in p.argv
    # It says which layout it took: the 4090 alone ("not used by this server"), or (since vLLM
    # 0.32's sampler is charged 16 bytes per logit, issue 20) pipeline parallel over both cards.
    notes = p.predicted.notes
    assert any("not used by this server" in w for w in p.warnings) or any(
        "pipeline parallel over all 2 cards" in n for n in notes
    )


def test_mig_plans_on_one_leaf_only():
    p = run_plan("a100_mig.json")
    assert len([d for d in p.predicted.devices if d.device.startswith("CUDA")]) == 1
    assert "MIG" in p.targets[0]
    assert p.predicted.devices[0].budget_bytes < 20 * GIB


def test_reserve_for_a_co_resident_service_drops_the_tier():
    base = run_plan("rtx-4090")
    reserved = run_plan("rtx-4090", {"PREFLIGHT_RESERVE_GB": "6"})
    assert base.tier == "gpu-24gb" and reserved.tier == "gpu-12gb"
    gpu = reserved.predicted.devices[0]
    assert gpu.budget_bytes <= base.predicted.devices[0].budget_bytes - 6 * GIB
    assert reserved.sources["reserve"] == "env:PREFLIGHT_RESERVE_GB"


def test_low_free_memory_is_planned_against_free_not_total():
    p = run_plan("low_free.json")
    assert p.predicted.devices[0].budget_bytes < 10 * GIB


def test_user_model_engine_context_are_kept_and_sourced():
    p = run_plan(
        "rtx-4090",
        {
            "PREFLIGHT_MODEL": "qwen3-8b",
            "PREFLIGHT_ENGINE": "llama.cpp",
            "PREFLIGHT_CONTEXT": "8192",
            "PREFLIGHT_PARALLEL": "3",
            "PREFLIGHT_KV_CACHE_TYPE": "q8_0",
        },
    )
    assert (p.model.id, p.engine, p.context, p.parallel) == ("qwen3-8b", "llama.cpp", 8192, 3)
    assert p.argv[p.argv.index("--ctx-size") + 1] == str(8192 * 3)
    assert p.argv[p.argv.index("--cache-type-k") + 1] == "q8_0"
    assert p.sources["context"] == "env:PREFLIGHT_CONTEXT"
    assert p.sources["kv_cache_type"] == "env:PREFLIGHT_KV_CACHE_TYPE"


def test_vllm_compat_variables():
    p = run_plan(
        "h100-sxm",
        {
            "VLLM_MODEL": "Qwen/Qwen3-32B-FP8",
            "VLLM_QUANTIZATION": "fp8",
            "VLLM_MAX_MODEL_LEN": "16384",
        },
    )
    assert (p.engine, p.model.id, p.model.quant, p.context) == ("vllm", "qwen3-32b", "fp8", 16384)
    assert p.argv[p.argv.index("--quantization") + 1] == "fp8"
    assert p.sources["engine"] == "env:VLLM_MODEL"


def test_engine_args_and_env_must_mean_one_context():
    env = {"PREFLIGHT_CONTEXT": "4096", "PREFLIGHT_MODEL": "qwen3-8b", "PREFLIGHT_PARALLEL": "2"}
    with pytest.raises(OverrideError) as info:
        run_plan("rtx-4090", env, argv=("--ctx-size", "16384", "--jinja"))
    assert "--ctx-size" in str(info.value) and "PREFLIGHT_CONTEXT" in str(info.value)
    # -c is llama-server's total over the slots: 16384 / 2 slots = 8192 tokens per sequence.
    p = run_plan("rtx-4090", {**env, "PREFLIGHT_CONTEXT": "8192"}, ("--ctx-size", "16384", "--jinja"))
    assert p.context == 8192 and p.sources["context"] == "env:PREFLIGHT_CONTEXT"
    assert p.argv.count("--ctx-size") == 1 and p.argv[p.argv.index("--ctx-size") + 1] == "16384"
    assert p.argv[-1] == "--jinja"


def test_llama_arg_ctx_size_is_the_total_over_slots():
    p = run_plan(
        "rtx-4090",
        {"PREFLIGHT_MODEL": "qwen3-8b", "LLAMA_ARG_CTX_SIZE": "12288", "LLAMA_ARG_N_PARALLEL": "3"},
    )
    assert (p.context, p.parallel) == (4096, 3)
    assert p.argv[p.argv.index("--ctx-size") + 1] == "12288" and p.argv.count("--ctx-size") == 1
    assert set(p.env_unset) == {"LLAMA_ARG_CTX_SIZE", "LLAMA_ARG_N_PARALLEL"}


def test_tier_override_and_unknown_tier():
    p = run_plan("h100-sxm", {"PREFLIGHT_TIER": "gpu-24gb"})
    assert p.tier == "gpu-24gb" and p.sources["tier"] == "env:PREFLIGHT_TIER"
    with pytest.raises(OverrideError) as info:
        run_plan("h100-sxm", {"PREFLIGHT_TIER": "gpu-9000gb"})
    assert "PREFLIGHT_TIER" in str(info.value) and "gpu-24gb" in str(info.value)


def test_context_that_cannot_fit_is_a_refusal_with_a_shorter_alternative():
    # Host RAM unknown: offloading layers to make room is not an option, so the context must fit.
    p = run_plan(
        "rtx-4060",
        {
            "PREFLIGHT_MODEL": "qwen3-8b",
            "PREFLIGHT_CONTEXT": "40960",
            "PREFLIGHT_ENGINE": "llama.cpp",
        },
        host_ram_gib=None,
    )
    assert p.verdict == "refuse" and p.argv == ()
    assert any("40960 tokens" in r and "GiB" in r for r in p.reasons)
    alt = next(a for a in p.alternatives if a.kind == "shorter-context")
    assert alt.model == "qwen3-8b" and 4096 <= alt.context < 40960


def test_model_too_large_refuses_with_numbers_and_alternatives():
    p = run_plan(
        "rtx-4090", {"PREFLIGHT_MODEL": "llama-3.1-70b-instruct", "PREFLIGHT_MIN_TOKS": "5"}
    )
    assert p.verdict == "refuse"
    assert any("GiB" in r and "RTX 4090" in r for r in p.reasons)
    kinds = {a.kind for a in p.alternatives}
    assert "offload" in kinds and "other-model" in kinds
    off = next(a for a in p.alternatives if a.kind == "offload")
    assert off.decode_tok_s is not None and off.decode_tok_s < 5


def test_offload_when_floor_allows_it():
    p = run_plan(
        ["tests", "fixtures", "nvml", "mixed_4090_3060.json"][-1],
        {
            "PREFLIGHT_MODEL": "llama-3.1-70b-instruct@Q4_K_M",
            "PREFLIGHT_ENGINE": "llama.cpp",
            "PREFLIGHT_MIN_TOKS": "0.5",
            "CUDA_VISIBLE_DEVICES": "0",
        },
    )
    assert p.verdict == "ship", p.reasons
    assert "--n-gpu-layers" in p.argv
    ngl = int(p.argv[p.argv.index("--n-gpu-layers") + 1])
    assert 0 < ngl < 80
    cpu = p.predicted.devices[-1]
    assert cpu.device == "CPU" and cpu.weights_bytes > 10 * GIB
    assert p.predicted.decode_tok_s_low >= 0.5


def test_moe_offloads_experts_first():
    p = run_plan(
        "rtx-4060",
        {
            "PREFLIGHT_MODEL": "qwen3-30b-a3b@Q4_K_M",
            "PREFLIGHT_ENGINE": "llama.cpp",
            "PREFLIGHT_CONTEXT": "8192",
        },
        host_ram_gib=64,
    )
    assert p.verdict == "ship", p.reasons
    assert p.argv[p.argv.index("--n-gpu-layers") + 1] == "all"
    assert int(p.argv[p.argv.index("--n-cpu-moe") + 1]) > 0


def test_wsl2_without_confirmed_pinned_memory_refuses_offload():
    p = run_plan(
        "wsl2_laptop.json", {"PREFLIGHT_MODEL": "qwen3-14b@Q4_K_M", "PREFLIGHT_ENGINE": "llama.cpp"}
    )
    assert p.verdict == "refuse"
    assert any("WSL2" in r and "pinned" in r for r in p.reasons)


def test_no_gpu_vllm_is_refused_with_the_reason():
    p = run_plan("library_not_found.json", {"PREFLIGHT_ENGINE": "vllm"})
    assert p.verdict == "refuse"
    assert any("vLLM needs a GPU" in r and "--gpus all" in r for r in p.reasons)


def test_cpu_speed_floor():
    p = run_plan("library_not_found.json", {"PREFLIGHT_MODEL": "qwen3-32b@Q4_K_M"}, host_bw=None)
    assert (
        p.verdict == "refuse"
    )  # 64 GiB of RAM holds it, but with no bandwidth the speed is unknown
    assert any("cannot be forecast" in r for r in p.reasons)
    # With a recorded host bandwidth the floor is enforced by the forecast.
    q = run_plan(
        "library_not_found.json", {"PREFLIGHT_MODEL": "qwen3-32b@Q4_K_M", "PREFLIGHT_MIN_TOKS": "5"}
    )
    assert q.verdict == "refuse" and any("under the floor of 5 tok/s" in r for r in q.reasons)
    ok = run_plan(
        "library_not_found.json",
        {"PREFLIGHT_MODEL": "qwen3-32b@Q4_K_M", "PREFLIGHT_MIN_TOKS": "0.5"},
    )
    assert ok.verdict == "ship" and ok.predicted.decode_tok_s_low >= 0.5


def test_kv_type_for_the_other_engine_rules_that_engine_out():
    p = run_plan("h100-sxm", {"PREFLIGHT_KV_CACHE_TYPE": "q8_0", "PREFLIGHT_MODEL": "qwen3-8b"})
    assert p.engine == "llama.cpp"
    q = run_plan("rtx-4090", {"PREFLIGHT_KV_CACHE_TYPE": "fp8", "PREFLIGHT_MODEL": "qwen3-8b"})
    assert q.engine == "vllm" and q.argv[q.argv.index("--kv-cache-dtype") + 1] == "fp8"


def test_quantized_v_cache_without_flash_attention_is_refused():
    p = run_plan(
        "rtx-4090",
        {
            "PREFLIGHT_MODEL": "qwen3-8b",
            "PREFLIGHT_ENGINE": "llama.cpp",
            "PREFLIGHT_KV_CACHE_TYPE": "q4_0",
            "LLAMA_ARG_FLASH_ATTN": "off",
        },
    )
    assert p.verdict == "refuse" and any("flash attention" in r for r in p.reasons)


def test_image_without_vllm_plans_llama_cpp():
    p = run_plan("h100-sxm", engines=("llama.cpp",))
    assert p.engine == "llama.cpp"


def test_sliding_window_model_context():
    p = run_plan("rtx-4090", {"PREFLIGHT_MODEL": "gemma-2-9b-it", "PREFLIGHT_ENGINE": "llama.cpp"})
    assert p.verdict == "ship" and p.context == 8192  # the model's own maximum caps the tier target


def test_pinned_context_is_kept_by_offloading_layers_when_ram_allows():
    p = run_plan(
        "rtx-4060",
        {
            "PREFLIGHT_MODEL": "qwen3-8b",
            "PREFLIGHT_CONTEXT": "40960",
            "PREFLIGHT_ENGINE": "llama.cpp",
        },
    )
    assert p.verdict == "ship" and p.context == 40960
    assert int(p.argv[p.argv.index("--n-gpu-layers") + 1]) < 37
    assert any("offload" in w for w in p.warnings)
