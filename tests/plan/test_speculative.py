"""Speculative decoding: the draft model is planned, sized and passed to each engine, or the plan
says why not. Real GPUs x real catalog pairings on simulated profiles."""

from __future__ import annotations

import json

import pytest
from tests.plan.conftest import CATALOG, run_plan

from gpu_preflight.inputs.errors import InvalidInput, OverrideError


def _draft_flags(argv: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for i, a in enumerate(argv):
        if a.startswith("--spec-"):
            out[a] = argv[i + 1]
    return out


def test_tier_drafts_on_a_16gb_card_with_llamacpp():
    p = run_plan("t4")
    assert p.verdict == "ship" and p.engine == "llama.cpp" and p.model.id == "qwen3-14b"
    assert p.draft is not None and p.draft.id == "qwen3-0.6b" and p.draft.quant == "Q8_0"
    flags = _draft_flags(p.argv)
    assert flags == {
        "--spec-type": "draft-simple",
        "--spec-draft-hf": "Qwen/Qwen3-0.6B-GGUF",
        "--spec-draft-model": "Qwen3-0.6B-Q8_0.gguf",
        "--spec-draft-ngl": "all",
        "--spec-draft-type-k": "f16",
        "--spec-draft-type-v": "f16",
        "--spec-draft-n-max": "3",
    }
    assert "draft" in p.sources


def test_draft_memory_is_in_the_prediction_and_costs_no_context():
    with_draft = run_plan("t4")
    without = run_plan("t4", {"PREFLIGHT_SPECULATIVE": "off"})
    assert without.draft is None and "--spec-type" not in without.argv
    assert with_draft.context == without.context  # the draft never shortens the context
    a, b = with_draft.predicted.devices[0], without.predicted.devices[0]
    draft = CATALOG.get("qwen3-0.6b")
    # Draft KV: 28 layers x 8 KV heads x (128 + 128) x f16 per token, for the same cells.
    draft_kv_per_token = 28 * 8 * 256 * 2
    assert with_draft.predicted.kv_bytes_per_token - without.predicted.kv_bytes_per_token == (
        draft_kv_per_token
    )
    assert a.kv_cache_bytes - b.kv_cache_bytes == draft_kv_per_token * with_draft.context
    q8 = next(x for x in draft.artifacts if x.quant == "Q8_0")
    # Weights: the draft's repeating layers and output on the GPU (its token embeddings on the host).
    assert 0.6 * q8.weight_bytes < a.weights_bytes - b.weights_bytes <= q8.weight_bytes
    assert a.overhead_bytes == b.overhead_bytes  # one process, one CUDA context
    assert a.total_bytes <= a.budget_bytes


def test_vllm_draft_goes_in_speculative_config_and_shrinks_the_kv_pool():
    env = {"PREFLIGHT_MODEL": "llama-3.1-8b-instruct@awq", "PREFLIGHT_ENGINE": "vllm"}
    on = run_plan("a100-80gb", {**env, "PREFLIGHT_SPECULATIVE": "on"})
    off = run_plan("a100-80gb", {**env, "PREFLIGHT_SPECULATIVE": "off"})
    assert on.verdict == "ship" and on.draft is not None and on.draft.id == "llama-3.2-1b-instruct"
    cfg = json.loads(on.argv[on.argv.index("--speculative-config") + 1])
    assert cfg == {
        "method": "draft_model",
        "model": "meta-llama/Llama-3.2-1B-Instruct",
        "num_speculative_tokens": 3,
        "draft_tensor_parallel_size": 1,
    }
    assert "--speculative-config" not in off.argv
    # Target 32 layers x 8 x 256 x 2 B + draft 16 layers x 8 x 128 x 2 B per token.
    assert off.predicted.kv_bytes_per_token == 131072
    assert on.predicted.kv_bytes_per_token == 131072 + 32768
    assert on.predicted.kv_capacity_tokens < off.predicted.kv_capacity_tokens
    assert on.context == off.context


def test_vllm_draft_under_tensor_parallel_uses_the_same_size():
    p = run_plan(
        "2xa100-80gb",
        {
            "PREFLIGHT_MODEL": "llama-3.1-70b-instruct@fp8",
            "PREFLIGHT_SPECULATIVE": "on",
            # The tier's concurrency (not pinned): the planner sizes the context for 8 requests
            # at once, so the draft's KV pages cost context. (A pinned PREFLIGHT_PARALLEL=4 is
            # admitted by vLLM's one-request rule, issue 20, and keeps the tier's target here.)
        },
    )
    assert p.verdict == "ship", p.reasons
    cfg = json.loads(p.argv[p.argv.index("--speculative-config") + 1])
    tp = int(p.argv[p.argv.index("--tensor-parallel-size") + 1])
    assert tp == 2 and cfg["draft_tensor_parallel_size"] == tp
    # Asked for by the user, the draft may cost context (not below the tier's minimum): said so.
    assert any("costs context" in w for w in p.warnings)


def test_speculative_on_that_cannot_be_met_is_a_refusal():
    # vLLM's draft_model method needs equal vocabulary sizes: Qwen2.5-7B pads to 152064, 0.5B not.
    p = run_plan(
        "rtx-4090",
        {
            "PREFLIGHT_MODEL": "qwen2.5-7b-instruct",
            "PREFLIGHT_ENGINE": "vllm",
            "PREFLIGHT_SPECULATIVE": "on",
        },
    )
    assert p.verdict == "refuse"
    assert "PREFLIGHT_SPECULATIVE=on" in p.reasons[0] and "152064" in p.reasons[0]


def test_speculative_on_with_no_room_for_the_draft_refuses_with_numbers():
    # qwen3-8b Q8_0 at a pinned 16k nearly fills a 12 GB card.
    p = run_plan(
        "rtx-3060",
        {
            "PREFLIGHT_MODEL": "qwen3-8b@Q8_0",
            "PREFLIGHT_CONTEXT": "16384",
            "PREFLIGHT_SPECULATIVE": "on",
        },
    )
    assert p.verdict == "refuse"
    assert "draft qwen3-0.6b not added" in p.reasons[0]
    assert "13.0 GiB on NVIDIA GeForce RTX 3060 (GPU 0), 11.1 GiB usable" in p.reasons[0]


def test_tier_draft_that_does_not_fit_is_a_note_not_a_warning():
    p = run_plan("h100-sxm")
    assert p.verdict == "ship" and p.draft is None
    assert any(
        n.startswith("speculative decoding: draft llama-3.2-1b-instruct not added")
        for n in p.predicted.notes
    )
    assert not any("draft" in w for w in p.warnings)


def test_models_without_a_pairing_serve_without_a_draft_quietly():
    p = run_plan("rtx-4090")  # qwen3-30b-a3b: an MoE with 3B active has no draft in the catalog
    assert p.draft is None and "--spec-type" not in p.argv
    assert not any("draft" in w for w in p.warnings)


def test_users_ngram_speculation_is_planned_as_given_without_a_catalog_draft():
    p = run_plan("t4", {"PREFLIGHT_SPECULATIVE": "on"}, ("--spec-type", "ngram-mod"))
    assert p.verdict == "ship" and p.draft is None
    assert p.argv.count("--spec-type") == 1
    assert p.argv[p.argv.index("--spec-type") + 1] == "ngram-mod"


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (("--spec-draft-model", "/models/mine.gguf"), {}),
        (("-md", "/models/mine.gguf"), {}),
        ((), {"LLAMA_ARG_SPEC_DRAFT_MODEL": "/models/mine.gguf"}),
    ],
)
def test_users_draft_needs_its_target_named(argv, env):
    with pytest.raises(InvalidInput) as info:
        run_plan("t4", {**env, "PREFLIGHT_SPECULATIVE": "on"}, argv)
    assert "model" in str(info.value)


def test_users_draft_file_must_exist():
    with pytest.raises(InvalidInput) as info:
        run_plan("t4", {"PREFLIGHT_MODEL": "qwen3-8b"}, ("-md", "/models/mine.gguf"))
    assert "/models/mine.gguf" in str(info.value)


def test_users_own_vllm_speculative_config_wins():
    sc = '{"method":"ngram","num_speculative_tokens":4,"prompt_lookup_max":4}'
    p = run_plan(
        "a100-80gb",
        {"PREFLIGHT_MODEL": "llama-3.1-8b-instruct@awq", "PREFLIGHT_SPECULATIVE": "on"},
        ("--speculative-config", sc),
    )
    assert p.argv.count("--speculative-config") == 1
    assert p.argv[p.argv.index("--speculative-config") + 1] == sc


def test_offloaded_targets_get_no_draft():
    p = run_plan(
        "rtx-4060",
        {"PREFLIGHT_MODEL": "qwen3-32b@Q4_K_M", "PREFLIGHT_MIN_TOKS": "0.1"},
    )
    assert p.verdict == "ship" and "--n-gpu-layers" in p.argv and p.draft is None


@pytest.mark.parametrize("value", ["maybe", "2", "enabled"])
def test_invalid_speculative_value_names_variable_and_choices(value):
    with pytest.raises(OverrideError) as e:
        run_plan("t4", {"PREFLIGHT_SPECULATIVE": value})
    msg = str(e.value)
    assert "PREFLIGHT_SPECULATIVE" in msg and value in msg and "auto, on, off" in msg


@pytest.mark.parametrize(("value", "drafts"), [("1", True), ("yes", True), ("0", False)])
def test_speculative_aliases(value, drafts):
    p = run_plan("t4", {"PREFLIGHT_SPECULATIVE": value})
    assert (p.draft is not None) == drafts
