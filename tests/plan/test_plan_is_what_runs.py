"""Issue 9's cases: every user value is planned, carried once, or refused naming both places.

Each test is one case from the issue, tried as a new user would, on simulated real cards.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tests.plan.conftest import CATALOG, run_plan
from tests.support.gguf_factory import write_gguf

from gpu_preflight import pipeline
from gpu_preflight.cli.main import main
from gpu_preflight.inputs.errors import InvalidInput, OverrideError
from gpu_preflight.inputs.flags import FLAGS, engine_flags, markdown_table, spelling_index
from gpu_preflight.memory.llamacpp import LlamaCppConfig, estimate_llamacpp
from gpu_preflight.plan.settings import LlamaServerSettings

GIB = 2**30


def _value(argv: tuple[str, ...], *spellings: str) -> str:
    hits = [i for i, a in enumerate(argv) if a in spellings]
    assert len(hits) == 1, (spellings, argv)
    return argv[hits[0] + 1]


def _once_per_knob(argv: tuple[str, ...], engine: str) -> None:
    """No knob of the table appears twice in an argv, under any of its spellings."""
    index = spelling_index()
    seen: dict[str, str] = {}
    for a in argv:
        for f in index.get(a, []):
            if f.owner != engine:
                continue
            assert f.knob not in seen or f.knob in ("model",), (f.knob, seen.get(f.knob), a, argv)
            seen[f.knob] = a


# --- ubatch / batch / tensor split / fit -------------------------------------------------------


def test_user_ubatch_is_in_the_prediction_and_on_argv_once():
    env = {"LLAMA_ARG_UBATCH": "4096", "LLAMA_ARG_BATCH": "4096", "PREFLIGHT_MODEL": "qwen3-8b"}
    p = run_plan("rtx-4090", env)
    base = run_plan("rtx-4090", {"PREFLIGHT_MODEL": "qwen3-8b"})
    assert _value(p.argv, "--ubatch-size", "-ub") == "4096"
    assert _value(p.argv, "--batch-size", "-b") == "4096"
    _once_per_knob(p.argv, "llama.cpp")
    gpu = next(d for d in p.predicted.devices if d.device == "CUDA0")
    gpu0 = next(d for d in base.predicted.devices if d.device == "CUDA0")
    # The compute buffer grows with the ubatch (llama.cpp's reserve graph is ubatch-wide).
    assert gpu.compute_bytes > gpu0.compute_bytes + 1 * GIB
    spec = CATALOG.get("qwen3-8b")
    art = next(a for a in spec.artifacts if a.quant == p.model.quant and a.engine == "llama.cpp")
    cfg = LlamaCppConfig(
        context=p.context * p.parallel, parallel=p.parallel, n_batch=4096, n_ubatch=4096
    )
    expect = estimate_llamacpp(spec, art, cfg, gpu_count=1).device("CUDA0")
    assert expect is not None and gpu.compute_bytes == expect.compute_bytes
    assert set(p.env_unset) == {"LLAMA_ARG_UBATCH", "LLAMA_ARG_BATCH"}


def test_user_tensor_split_is_planned_and_carried():
    env = {"PREFLIGHT_MODEL": "qwen3-32b@Q4_K_M", "LLAMA_ARG_TENSOR_SPLIT": "3,1"}
    p = run_plan("mixed_4090_3060.json", env)
    assert p.verdict == "ship", p.reasons
    assert _value(p.argv, "--tensor-split", "-ts") == "3,1"
    w0, w1 = (d.weights_bytes for d in p.predicted.devices if d.device.startswith("CUDA"))
    assert w0 > 2 * w1  # three quarters of the layers on CUDA0
    even = run_plan("mixed_4090_3060.json", {**env, "LLAMA_ARG_TENSOR_SPLIT": "1,1"})
    if even.verdict == "ship":
        e0, e1 = (d.weights_bytes for d in even.predicted.devices if d.device.startswith("CUDA"))
        assert abs(e0 - e1) < 0.2 * e0


def test_user_fit_value_is_carried_as_given():
    p = run_plan("rtx-4090", {"LLAMA_ARG_FIT": "on", "PREFLIGHT_MODEL": "qwen3-8b"})
    assert _value(p.argv, "--fit", "-fit") == "on"
    assert "off" not in [p.argv[i + 1] for i, a in enumerate(p.argv) if a == "--fit"]


# --- the model named is the model planned and served --------------------------------------------


def test_llama_arg_hf_repo_is_the_model_planned_and_served():
    repo = "bartowski/Meta-Llama-3.1-70B-Instruct-GGUF"
    p = run_plan("2xa100-80gb", {"LLAMA_ARG_HF_REPO": repo, "PREFLIGHT_ENGINE": "llama.cpp"})
    assert p.verdict == "ship", p.reasons
    assert p.model.id == "llama-3.1-70b-instruct" and p.engine == "llama.cpp"
    assert _value(p.argv, "--hf-repo", "-hf") == repo
    assert p.sources["model"] == "env:LLAMA_ARG_HF_REPO"


def test_llama_arg_hf_repo_implies_llama_cpp():
    p = run_plan("rtx-4090", {"LLAMA_ARG_HF_REPO": "Qwen/Qwen3-8B-GGUF"})
    assert p.engine == "llama.cpp" and _value(p.argv, "--hf-repo") == "Qwen/Qwen3-8B-GGUF"
    # Without a tag llama-server loads Q4_K_M: the plan pins that file, not another.
    assert p.model.quant == "Q4_K_M" and _value(p.argv, "--hf-file") == "Qwen3-8B-Q4_K_M.gguf"


def test_a_quant_tag_the_repo_lacks_lists_the_ones_it_has():
    with pytest.raises(InvalidInput) as info:
        run_plan("rtx-4090", {}, ("-hf", "Qwen/Qwen3-8B-GGUF:Q2_K"))
    assert "Q4_K_M" in str(info.value) and "Q8_0" in str(info.value)


def test_preflight_model_and_llama_arg_model_naming_two_models_is_an_error(tmp_path):
    big = write_gguf(tmp_path / "big.gguf", CATALOG.get("qwen3-14b").arch, "Q4_K_M")
    with pytest.raises(OverrideError) as info:
        run_plan("rtx-4090", {"PREFLIGHT_MODEL": "qwen3-8b", "LLAMA_ARG_MODEL": str(big)})
    msg = str(info.value)
    assert "PREFLIGHT_MODEL" in msg and "LLAMA_ARG_MODEL" in msg and "qwen3-8b" in msg


def test_llama_arg_model_file_is_planned_and_served(tmp_path):
    f = write_gguf(tmp_path / "mine.gguf", CATALOG.get("qwen3-8b").arch, "Q4_K_M")
    p = run_plan("rtx-4090", {"LLAMA_ARG_MODEL": str(f)})
    assert p.engine == "llama.cpp" and _value(p.argv, "--model", "-m") == str(f)
    assert p.model.path == str(f) and "LLAMA_ARG_MODEL" in p.env_unset


def test_named_fp8_repo_is_served_not_swapped_for_awq():
    p = run_plan("h100-sxm", {"PREFLIGHT_MODEL": "Qwen/Qwen3-32B-FP8"})
    assert p.verdict == "ship" and p.model.repo == "Qwen/Qwen3-32B-FP8"
    assert p.argv[2] == "Qwen/Qwen3-32B-FP8" and p.model.quant == "fp8"


def test_vllm_model_bf16_repo_is_served_as_named():
    p = run_plan("rtx-4090", {"VLLM_MODEL": "Qwen/Qwen3-8B"})
    assert p.verdict == "ship" and p.engine == "vllm"
    assert p.model.repo == "Qwen/Qwen3-8B" and p.argv[2] == "Qwen/Qwen3-8B"


def test_a_named_repo_that_does_not_fit_is_refused_with_the_other_artifacts():
    p = run_plan("rtx-4090", {"VLLM_MODEL": "Qwen/Qwen3-32B"})  # bf16: 64 GB of weights
    assert p.verdict == "refuse"
    assert any(a.model == "qwen3-32b" and a.quant != "bf16" for a in p.alternatives)


def test_quantization_the_named_repo_does_not_carry_is_vllms_rule():
    """Issue 20 item 3: vLLM decides (vllm/config/model.py _verify_quantization, weight_utils.py
    get_quant_config). fp8 on a bf16 checkpoint is vLLM's online quantization: it ships (planned
    at the checkpoint's bf16 weight bytes, an over-prediction); awq there fails at load: refused
    naming vLLM's rule, exit 3, not a bad input."""
    p = run_plan("h100-sxm", {"VLLM_MODEL": "Qwen/Qwen3-32B", "VLLM_QUANTIZATION": "fp8"})
    assert p.verdict == "ship", p.reasons
    assert p.argv[p.argv.index("--quantization") + 1] == "fp8"
    q = run_plan("h100-sxm", {"VLLM_MODEL": "Qwen/Qwen3-32B", "VLLM_QUANTIZATION": "awq"})
    assert q.verdict == "refuse"
    assert "get_quant_config" in " ".join(q.reasons)


# --- context: llama-server's -c is the total over the slots -------------------------------------


def test_per_sequence_context_and_a_total_that_disagree_is_an_error():
    env = {"PREFLIGHT_CONTEXT": "8192", "LLAMA_ARG_CTX_SIZE": "8192", "PREFLIGHT_PARALLEL": "4"}
    with pytest.raises(OverrideError) as info:
        run_plan("rtx-4090", env)
    msg = str(info.value)
    assert "PREFLIGHT_CONTEXT" in msg and "LLAMA_ARG_CTX_SIZE" in msg and "32768" in msg


def test_consistent_total_is_accepted_and_carried_as_given():
    env = {"PREFLIGHT_CONTEXT": "8192", "LLAMA_ARG_CTX_SIZE": "32768", "PREFLIGHT_PARALLEL": "4"}
    p = run_plan("rtx-4090", env)
    assert (p.context, p.parallel) == (8192, 4)
    assert _value(p.argv, "--ctx-size", "-c") == "32768"
    assert _value(p.argv, "--parallel", "-np") == "4"


def test_total_alone_gives_each_slot_its_share():
    p = run_plan("rtx-4090", {"LLAMA_ARG_CTX_SIZE": "8192", "PREFLIGHT_PARALLEL": "4"})
    assert (p.context, p.parallel) == (2048, 4) and _value(p.argv, "--ctx-size") == "8192"


def test_total_and_per_sequence_without_slots_imply_the_slot_count():
    p = run_plan("rtx-4090", {"PREFLIGHT_CONTEXT": "4096"}, ("-c", "16384"))
    assert (p.context, p.parallel) == (4096, 4)


def test_auto_slots_are_four_with_a_unified_kv():
    p = run_plan("rtx-4090", {"PREFLIGHT_MODEL": "qwen3-8b"}, ("-np", "-1", "-c", "16384"))
    assert (p.context, p.parallel) == (16384, 4)
    assert _value(p.argv, "--parallel") == "4" and "--kv-unified" in p.argv


# --- cache types: K and V are separate values, each f16 unless set ----------------------------


@pytest.mark.parametrize(
    ("env", "argv"),
    [({}, ("-ctk", "q8_0")), ({"LLAMA_ARG_CACHE_TYPE_K": "q8_0"}, ())],
)
def test_setting_k_leaves_v_at_f16_in_both_spellings(env, argv):
    p = run_plan("rtx-4090", {"PREFLIGHT_MODEL": "qwen3-8b", **env}, argv)
    assert _value(p.argv, "--cache-type-k", "-ctk") == "q8_0"
    assert _value(p.argv, "--cache-type-v", "-ctv") == "f16"


def test_both_cache_spellings_must_agree():
    with pytest.raises(OverrideError) as info:
        run_plan("rtx-4090", {"LLAMA_ARG_CACHE_TYPE_K": "q4_0"}, ("-ctk", "q8_0"))
    assert "LLAMA_ARG_CACHE_TYPE_K" in str(info.value) and "-ctk" in str(info.value)


def test_preflight_kv_type_and_a_different_k_type_is_an_error():
    with pytest.raises(OverrideError) as info:
        run_plan("rtx-4090", {"PREFLIGHT_KV_CACHE_TYPE": "q4_0"}, ("-ctk", "q8_0"))
    assert "PREFLIGHT_KV_CACHE_TYPE" in str(info.value) and "-ctk" in str(info.value)


# --- layers: "auto" means the planner fits it and the argv says the number ---------------------


def test_ngl_auto_is_fitted_and_written_as_a_number():
    env = {
        "LLAMA_ARG_N_GPU_LAYERS": "auto",
        "PREFLIGHT_MODEL": "llama-3.1-70b-instruct@Q4_K_M",
        "PREFLIGHT_MIN_TOKS": "0.1",
    }
    p = run_plan("rtx-4090", env, host_ram_gib=128)
    assert p.verdict == "ship", p.reasons
    s = p.argv[p.argv.index("--n-gpu-layers") + 1]
    assert s.isdigit() and 0 < int(s) < 80
    assert p.argv.count("--n-gpu-layers") == 1 and "LLAMA_ARG_N_GPU_LAYERS" in p.env_unset


# --- bad values name the flag -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (("-b", "abc"), "engine argument -b='abc'"),
        (("-ub", "0"), "engine argument -ub='0'"),
        (("--ubatch-size", "9" * 5000), "engine argument --ubatch-size"),
        (("-ts", "1,x"), "engine argument -ts"),
        (("--split-mode", "row"), "layer, none"),
        (("--mlock",), "--load-mode mlock"),
        (("-ot", "exps=CPU"), "--n-cpu-moe"),
        (("--pipeline-parallel-size", "65"), "from 1 to 64"),
    ],
)
def test_bad_engine_values_name_the_flag_and_what_is_accepted(argv, fragment):
    with pytest.raises(InvalidInput) as info:
        run_plan("rtx-4090", {}, argv)
    assert fragment in str(info.value) and "Accepted" in str(info.value)


def test_two_engines_flags_at_once_is_an_error():
    with pytest.raises(OverrideError) as info:
        run_plan("rtx-4090", {}, ("-ngl", "10", "--max-num-batched-tokens", "4096"))
    assert "-ngl" in str(info.value) and "--max-num-batched-tokens" in str(info.value)


def test_engine_pin_against_the_engines_own_flags_is_an_error():
    with pytest.raises(OverrideError) as info:
        run_plan("rtx-4090", {"PREFLIGHT_ENGINE": "vllm"}, ("-ngl", "10"))
    assert "PREFLIGHT_ENGINE" in str(info.value)


# --- sources, one code path, the models file ------------------------------------------------------


def test_cli_option_is_its_own_source():
    r = CliRunner().invoke(
        main, ["plan", "--simulate", "rtx-4090", "--model", "qwen3-8b", "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["sources"]["model"] == "option:--model"


def test_cli_option_and_env_naming_two_models_is_an_error():
    r = CliRunner().invoke(
        main,
        ["plan", "--simulate", "rtx-4090", "--model", "qwen3-8b"],
        env={"PREFLIGHT_MODEL": "qwen3-14b"},
    )
    assert r.exit_code == 2 and "--model" in r.output and "PREFLIGHT_MODEL" in r.output


def test_estimate_and_plan_agree_on_vllms_kv_capacity():
    p = run_plan("h100-sxm", {"PREFLIGHT_MODEL": "qwen3-32b@fp8", "PREFLIGHT_SPECULATIVE": "off"})
    args = ["estimate", "--gpu", "h100-sxm", "--json", "--", *p.argv]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    e = json.loads(r.output)
    assert e["predicted"]["kv_capacity_tokens"] == p.predicted.kv_capacity_tokens
    assert e["argv"] == list(p.argv)


def test_matrix_reads_the_users_models_file(tmp_path):
    doc = json.loads((catalog_path()).read_text())
    doc["models"] = [m for m in doc["models"] if m["id"] == "qwen3-8b"]
    doc["models"][0]["id"] = "my-only-model"
    doc["models"][0].pop("draft", None)
    f = tmp_path / "models.json"
    f.write_text(json.dumps(doc))
    r = CliRunner().invoke(
        main,
        ["matrix", "--gpus", "rtx-4090", "--models", "my-only-model", "--json"],
        env={"PREFLIGHT_MODELS_FILE": str(f)},
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)[0]["model"] == "my-only-model"


def catalog_path():
    from importlib import resources

    return resources.files("gpu_preflight") / "data" / "models.json"


def test_inputs_are_checked_before_the_probe(monkeypatch):
    """A typo costs nothing: prepare() raises before collect_hardware would run."""
    called = []
    monkeypatch.setattr(
        "gpu_preflight.pipeline.collect_hardware", lambda *a, **k: called.append(1)
    )
    from gpu_preflight.cli.run_cmd import run_preflight

    for env in ({"PREFLIGHT_MODEL": "qwen9-8b"}, {"PREFLIGHT_TIER": "gpu-9000gb"}):
        assert run_preflight({**env, "PREFLIGHT_BENCH": "off"}, (), True) == 2
    assert called == []


# --- the table itself ------------------------------------------------------------------------------


def test_every_row_has_an_accepted_text_and_unique_spellings():
    index = spelling_index()
    for spelling, rows in index.items():
        # One spelling may be one row per engine (--host, --port, --model), never two of one.
        owners = [r.owner for r in rows]
        assert len(owners) == len(set(owners)), spelling
    for f in FLAGS:
        assert f.parser.accepted
        if f.role == "removed" or f.role == "secret":
            assert f.replacement


def test_docs_flag_table_is_the_table():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "flags.md").read_text()
    assert markdown_table() in text


def test_llama_argv_flags_are_in_the_table():
    p = run_plan("rtx-4090")
    known = engine_flags("llama.cpp")
    flags = [a for a in p.argv[1:] if a.startswith("--")]
    assert all(f in known or f.startswith("--spec-draft-") for f in flags), flags


def test_settings_record_is_the_argv():
    p = run_plan("rtx-4090", {"PREFLIGHT_MODEL": "qwen3-8b"})
    assert isinstance(p.argv, tuple) and LlamaServerSettings  # the record type exists
    assert pipeline.prepare({}, p.argv).overrides.ctx_total.value == int(
        _value(p.argv, "--ctx-size")
    )


# --- estimate -- <the shipped argv> agrees with plan ------------------------------------------

AGREE = [
    ("rtx-4090", {}),
    ("rtx-4090", {"PREFLIGHT_MODEL": "qwen3-8b", "LLAMA_ARG_UBATCH": "1024"}),
    ("2xrtx-3090", {"PREFLIGHT_MODEL": "llama-3.1-70b-instruct@Q4_K_M", "PREFLIGHT_PARALLEL": "1"}),
    ("mixed_4090_3060.json", {"PREFLIGHT_MODEL": "qwen3-32b@Q4_K_M"}),
    ("t4", {"PREFLIGHT_SPECULATIVE": "on"}),  # a draft model on the command line
    ("h100-sxm", {"PREFLIGHT_MODEL": "qwen3-32b@fp8"}),
    ("4xl4", {}),
    ("2xa100-80gb", {"PREFLIGHT_MODEL": "qwen3-32b@bf16", "PREFLIGHT_PARALLEL": "4"}),
    ("a100-80gb", {"PREFLIGHT_MODEL": "llama-3.1-8b-instruct@bf16", "PREFLIGHT_SPECULATIVE": "on"}),
    ("a100-80gb", {"PREFLIGHT_KV_CACHE_TYPE": "fp8", "PREFLIGHT_MODEL": "qwen3-14b@awq"}),
]


@pytest.mark.parametrize(("gpu", "env"), AGREE, ids=[f"{g}-{i}" for i, (g, _) in enumerate(AGREE)])
def test_estimate_of_the_shipped_command_is_the_plan(gpu, env):
    from tests.conftest import NVML

    p = run_plan(gpu, env)
    assert p.verdict == "ship", p.reasons
    where = str(NVML / gpu) if gpu.endswith(".json") else gpu
    r = CliRunner().invoke(main, ["estimate", "--gpu", where, "--json", "--", *p.argv])
    assert r.exit_code == 0, r.output
    e = json.loads(r.output)
    assert e["argv"] == list(p.argv)
    assert (e["context"], e["parallel"], e["engine"]) == (p.context, p.parallel, p.engine)
    planned = [
        (d.device, d.weights_bytes, d.kv_cache_bytes, d.compute_bytes, d.total_bytes)
        for d in p.predicted.devices
    ]
    got = [
        (d["device"], d["weights_bytes"], d["kv_cache_bytes"], d["compute_bytes"], d["total_bytes"])
        for d in e["predicted"]["devices"]
    ]
    assert got == planned
    assert e["predicted"]["kv_capacity_tokens"] == p.predicted.kv_capacity_tokens
    assert (e["draft"] or {}).get("repo") == (p.draft.repo if p.draft else None)


def test_estimate_takes_a_comma_list_of_mixed_cards():
    args = ["estimate", "--gpu", "rtx-4090,rtx-3060", "--json", "--"]
    args += ["llama-server", "-hf", "Qwen/Qwen3-32B-GGUF:Q4_K_M", "-c", "8192", "-np", "1"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    e = json.loads(r.output)
    gpus = [d for d in e["predicted"]["devices"] if d["device"].startswith("CUDA")]
    assert [d["device"] for d in gpus] == ["CUDA0", "CUDA1"]
    assert all(d["total_bytes"] <= d["budget_bytes"] for d in gpus)
    assert "RTX 3060" in e["targets"][1]


# --- llama-server's prompt cache: host RAM the plan budgets, carried explicitly ---------------


def test_prompt_cache_is_budgeted_in_host_ram_and_on_argv():
    p = run_plan("rtx-4090", {"PREFLIGHT_MODEL": "qwen3-8b"}, host_ram_gib=64)
    mib = int(_value(p.argv, "--cache-ram", "-cram"))
    assert mib == 8192  # llama.cpp's default, when the host has room for it
    cpu = next(d for d in p.predicted.devices if d.device == "CPU")
    assert cpu.overhead_bytes >= mib * 2**20 and cpu.total_bytes <= cpu.budget_bytes


def test_prompt_cache_shrinks_to_the_host_ram_left():
    p = run_plan("library_not_found.json", {}, host_ram_gib=6)
    mib = int(_value(p.argv, "--cache-ram"))
    cpu = next(d for d in p.predicted.devices if d.device == "CPU")
    assert mib < 8192 and cpu.total_bytes <= cpu.budget_bytes


def test_users_prompt_cache_is_carried_and_unlimited_is_refused():
    p = run_plan("rtx-4090", {"PREFLIGHT_MODEL": "qwen3-8b"}, ("-cram", "0"))
    assert _value(p.argv, "--cache-ram", "-cram") == "0"
    with pytest.raises(OverrideError) as info:
        run_plan("rtx-4090", {"LLAMA_ARG_CACHE_RAM": "-1"})
    assert "LLAMA_ARG_CACHE_RAM" in str(info.value)


def test_op_offload_needs_room_on_the_first_gpu_unless_turned_off():
    env = {"PREFLIGHT_MODEL": "qwen3-30b-a3b@Q4_K_M", "PREFLIGHT_PARALLEL": "1"}
    pinned = ("--n-cpu-moe", "48", "-c", "8192")
    on = run_plan("rtx-4090", env, pinned)
    off = run_plan("rtx-4090", env, (*pinned, "--no-op-offload"))
    g_on = next(d for d in on.predicted.devices if d.device == "CUDA0")
    g_off = next(d for d in off.predicted.devices if d.device == "CUDA0")
    # With op offload (llama.cpp's default) CUDA0's compute buffer holds one layer's experts.
    assert g_on.compute_bytes > g_off.compute_bytes + 100 * 2**20
    assert "--no-op-offload" in off.argv and off.argv.count("--no-op-offload") == 1
    assert any("op offload" in n for n in on.predicted.notes)


def test_sliding_window_checkpoints_are_budgeted_in_host_ram():
    p = run_plan("rtx-4090", {"PREFLIGHT_MODEL": "gemma-2-9b-it"}, host_ram_gib=32)
    n = int(_value(p.argv, "--ctx-checkpoints", "-ctxcp"))
    assert 0 < n <= 32
    cpu = next(d for d in p.predicted.devices if d.device == "CPU")
    assert cpu.total_bytes <= cpu.budget_bytes
    assert any("--ctx-checkpoints" in x for x in p.predicted.notes)
    # A model without sliding-window layers makes none: nothing is written for it.
    q = run_plan("rtx-4090", {"PREFLIGHT_MODEL": "qwen3-8b"})
    assert "--ctx-checkpoints" not in q.argv


def test_fewer_slots_before_refusing_and_every_reason_names_the_configuration():
    # Issue 13's case: the tier's 4 slots make the 70B too big for 2x3090 with llama.cpp; fewer
    # slots fit, and the plan says why it took them.
    env = {"PREFLIGHT_MODEL": "llama-3.1-70b-instruct", "PREFLIGHT_ENGINE": "llama.cpp"}
    p = run_plan("2xrtx-3090", env)
    assert p.verdict == "ship" and p.parallel < 4 and p.context >= 8192
    assert any("parallel slots" in n for n in p.predicted.notes)
    # A pinned slot count is never changed: it is refused, and the reason names the slots.
    r = run_plan("2xrtx-3090", {**env, "PREFLIGHT_PARALLEL": "4"}, host_ram_gib=None)
    assert r.verdict == "refuse"
    assert any("x 4 slot(s)" in x and "KV f16/f16" in x for x in r.reasons), r.reasons
