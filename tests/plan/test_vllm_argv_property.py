"""Property: for generated user flags and env, the argv the plan ships resolves, in the real vLLM,
to exactly the values the plan predicted with (max_model_len, gpu_memory_utilization, tensor and
pipeline parallel, max_num_seqs, KV dtype, quantization, and the modelled switches).

Hypothesis draws the combinations (derandomized, so CI runs the same cases every time); the shipped
argvs then go through vLLM 0.32's own parser and EngineArgs in one subprocess.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import strategies as st
from tests.plan.conftest import run_plan
from tests.support.draw import drawn as draw_examples
from tests.support.vllm_run import VENV_PY, check_argvs

from gpu_preflight.errors import InvalidInput

pytestmark = pytest.mark.vllm
EXAMPLES = 40

GPUS = ("h100-sxm", "a100-80gb", "l40s", "2xrtx-4090", "4xl4", "2xa100-80gb", "rtx-4090")
MODELS = (
    "qwen3-8b@bf16",
    "qwen3-8b@fp8",
    "qwen3-14b@awq",
    "llama-3.1-8b-instruct@bf16",
    "qwen2.5-7b-instruct@bf16",
    "qwen3-32b@fp8",
    "Qwen/Qwen3-8B",
    "Qwen/Qwen3-14B-FP8",
)


@st.composite
def user_settings(draw: Any) -> tuple[str, dict[str, str], tuple[str, ...]]:
    env: dict[str, str] = {"PREFLIGHT_SPECULATIVE": draw(st.sampled_from(["off", "auto"]))}
    args: list[str] = []
    model = draw(st.sampled_from(MODELS))
    env[draw(st.sampled_from(["PREFLIGHT_MODEL", "VLLM_MODEL"]))] = model
    env["PREFLIGHT_ENGINE"] = "vllm"
    ctx = draw(st.one_of(st.none(), st.sampled_from([2048, 4096, 8192, 16384])))
    if ctx is not None:
        where = draw(
            st.sampled_from(["PREFLIGHT_CONTEXT", "VLLM_MAX_MODEL_LEN", "--max-model-len"])
        )
        if where.startswith("--"):
            args += [where, str(ctx)] if draw(st.booleans()) else [f"{where}={ctx}"]
        else:
            env[where] = (
                str(ctx) if ctx % 1024 else draw(st.sampled_from([str(ctx), f"{ctx // 1024}k"]))
            )
    par = draw(st.one_of(st.none(), st.integers(1, 16)))
    if par is not None:
        if draw(st.booleans()):
            env["PREFLIGHT_PARALLEL"] = str(par)
        else:
            args += ["--max-num-seqs", str(par)]
    if draw(st.booleans()):
        kv = draw(st.sampled_from(["fp8", "auto", "fp8_e4m3"]))
        if draw(st.booleans()) and kv != "auto":
            env["PREFLIGHT_KV_CACHE_TYPE"] = kv
        else:
            args += ["--kv-cache-dtype", kv]
    if draw(st.booleans()):
        args += ["--gpu-memory-utilization", draw(st.sampled_from(["0.5", "0.75", "0.85"]))]
    if draw(st.booleans()):
        args.append("--enforce-eager")
    if draw(st.booleans()):
        args += ["--max-num-batched-tokens", str(draw(st.sampled_from([1024, 4096, 8192])))]
    if draw(st.booleans()):
        args += ["--block-size", draw(st.sampled_from(["16", "32"]))]
    if draw(st.booleans()):
        args += ["-tp", draw(st.sampled_from(["1", "2"]))]
    if draw(st.booleans()):
        args.append("--enable-prefix-caching")  # passed through untouched
    return draw(st.sampled_from(GPUS)), env, tuple(args)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    if not VENV_PY.exists():
        pytest.skip("vLLM environment not built: run `make vllm` (.ci/vllm.sh)")
    drawn = draw_examples(user_settings(), EXAMPLES)
    plans = []
    for gpu, env, args in drawn:
        try:
            p = run_plan(gpu, env, args)
        except InvalidInput:
            continue  # e.g. -tp 2 on one GPU: refused before planning, that is tested elsewhere
        if p.verdict == "ship":
            plans.append(((gpu, env, args), p))
    cases = [{"argv": list(p.argv), "engine_config": False} for _, p in plans]
    repos = {p.model.repo for _, p in plans} | {p.draft.repo for _, p in plans if p.draft}
    results = check_argvs(cases, repos, tmp_path_factory.mktemp("vllm-prop"))
    return drawn, plans, results


def _flag(argv: tuple[str, ...], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_vllm_resolves_every_shipped_argv_to_the_planned_values(shipped):
    drawn, plans, results = shipped
    assert len(drawn) == EXAMPLES and len(plans) >= EXAMPLES // 2, (len(drawn), len(plans))
    for (case, p), res in zip(plans, results, strict=True):
        assert res["ok"], (case, p.argv, res)
        a = p.argv
        assert res["max_model_len"] == p.context, case
        assert res["max_num_seqs"] == p.parallel, case
        assert res["gpu_memory_utilization"] == pytest.approx(
            float(_flag(a, "--gpu-memory-utilization") or 0)
        )
        tp = len([d for d in p.predicted.devices if d.device.startswith("CUDA")])
        assert res["tensor_parallel_size"] == tp and res["pipeline_parallel_size"] == 1, case
        planned_kv = _flag(a, "--kv-cache-dtype") or "auto"
        assert res["kv_cache_dtype"] == planned_kv, case
        assert res["quantization"] == _flag(a, "--quantization"), case
        assert res["enforce_eager"] == ("--enforce-eager" in a), case
        mnbt = _flag(a, "--max-num-batched-tokens")
        assert res["max_num_batched_tokens"] == (int(mnbt) if mnbt else None), case
        bs = _flag(a, "--block-size")
        assert res["block_size"] == (int(bs) if bs else None), case
        assert res["port"] == 8080, case
        # Each knob of the plan is written once.
        for flag in ("--max-model-len", "--gpu-memory-utilization", "--max-num-seqs"):
            assert a.count(flag) == 1, (flag, a)
        user = case[2]
        if "--enable-prefix-caching" in user:
            assert a[-1] == "--enable-prefix-caching"
    print(f"vLLM property cases: {len(drawn)} drawn, {len(plans)} shipped and checked")
