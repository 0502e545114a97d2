"""Property: for generated user flags and env, llama.cpp's own dry run of the argv the plan ships
is never above the plan's prediction, and within the estimator's stated error of it.

Hypothesis draws user settings (derandomized: CI runs the same cases every time) for sparse GGUFs of
real architectures (their data is a hole: no disk). Each plan is made for a machine with no GPU, its
final argv goes to the real llama-fit-params (tests/support/llama_fit.py drops only the flags that
tool does not take), and llama.cpp's host breakdown is compared with the plan's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from tests.plan.conftest import CATALOG
from tests.support.draw import drawn as draw_examples
from tests.support.gguf_factory import write_gguf
from tests.support.llama_fit import fit_params_binary, llama_fit

from gpu_preflight import pipeline
from gpu_preflight.cli.estimate_cmd import device_profile
from gpu_preflight.errors import InvalidInput

pytestmark = pytest.mark.llamacpp
EXAMPLES = 50
MIB = 2**20
MODELS = (
    ("qwen2.5-0.5b-instruct", "Q4_K_M"),
    ("llama-3.2-1b-instruct", "Q8_0"),
    ("gemma-2-2b-it", "Q4_K_M"),  # sliding-window layers
    ("qwen3-0.6b", "Q8_0"),
)
# The estimator's stated error (README, docs/memory.md): never under; over by at most this.
OVER_FRACTION = 0.05
OVER_FIXED = 64 * MIB


@st.composite
def user_settings(draw: Any) -> tuple[int, dict[str, str], tuple[str, ...]]:
    env: dict[str, str] = {}
    args: list[str] = []
    model = draw(st.integers(0, len(MODELS) - 1))
    par = draw(st.sampled_from([1, 1, 2, 4]))
    ctx = draw(st.sampled_from([1024, 2048, 4096, 8192]))
    if draw(st.booleans()):
        env["PREFLIGHT_CONTEXT"] = str(ctx)
        if par > 1:
            env["PREFLIGHT_PARALLEL"] = str(par)
    else:
        (args.extend if draw(st.booleans()) else _env(env, "LLAMA_ARG_CTX_SIZE"))(
            ["-c", str(ctx * par)]
        )
        if par > 1:
            args += ["-np", str(par)]
    if draw(st.booleans()):
        ub = draw(st.sampled_from([128, 256, 512, 1024]))
        (args.extend if draw(st.booleans()) else _env(env, "LLAMA_ARG_UBATCH"))(["-ub", str(ub)])
    if draw(st.booleans()):
        b = draw(st.sampled_from([256, 1024, 2048]))
        args += ["--batch-size", str(b)]
    fa = draw(st.sampled_from(["on", "off", None]))
    if fa is not None:
        (args.extend if draw(st.booleans()) else _env(env, "LLAMA_ARG_FLASH_ATTN"))(["-fa", fa])
    kv = draw(st.sampled_from([None, "q8_0", "q4_0", "f16"]))
    if kv is not None and fa != "off":
        if draw(st.booleans()):
            args += ["-ctk", kv, "-ctv", kv]
        else:
            env["LLAMA_ARG_CACHE_TYPE_K"] = kv
            env["LLAMA_ARG_CACHE_TYPE_V"] = kv
    elif kv is not None:
        args += ["-ctk", kv]  # a quantized K alone is legal without flash attention
    if draw(st.booleans()):
        args.append(draw(st.sampled_from(["--no-repack", "--repack"])))
    if draw(st.booleans()):
        args.append("--jinja")  # server-only, passed through
    return model, env, tuple(args)


def _env(env: dict[str, str], name: str) -> Any:
    def put(pair: list[str]) -> None:
        env[name] = pair[1]

    return put


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> list[Path]:
    if not fit_params_binary().exists():
        pytest.skip("llama-fit-params not built: run `make llama-cpp` (.ci/llama-cpp.sh)")
    d = tmp_path_factory.mktemp("gguf")
    out = []
    for model_id, quant in MODELS:
        spec = CATALOG.get(model_id)
        assert spec is not None
        out.append(write_gguf(d / f"{model_id}-{quant}.gguf", spec.arch, quant))
    return out


def test_llama_fit_params_never_exceeds_the_shipped_prediction(ggufs):
    drawn = draw_examples(user_settings(), EXAMPLES)
    checked = 0
    overs: list[float] = []
    profile = device_profile(None, True, 64, 40.0)
    for model, user_env, args in drawn:
        env = {**user_env, "PREFLIGHT_MODEL": str(ggufs[model])}
        try:
            p = pipeline.plan_on(pipeline.prepare(env, args), profile, ("llama.cpp",))
        except InvalidInput as exc:
            pytest.fail(f"a valid combination was refused as input: {env} {args}: {exc}")
        assert p.verdict == "ship", (env, args, p.reasons)
        engine_env = {k: v for k, v in env.items() if k not in p.env_unset}
        real = llama_fit(p.argv, env=engine_env).host
        cpu = next(d for d in p.predicted.devices if d.device == "CPU")
        case = (env, args, p.argv, real)
        assert cpu.kv_cache_bytes // MIB >= real.context_mib, case
        assert cpu.weights_bytes // MIB + 1 >= real.model_mib, case
        predicted = cpu.weights_bytes + cpu.kv_cache_bytes + cpu.compute_bytes
        measured = real.total_mib * MIB
        assert predicted + 3 * MIB >= measured, ("under-predicted", case)  # MiB rounding
        assert predicted <= measured * (1 + OVER_FRACTION) + OVER_FIXED, ("too far over", case)
        overs.append((predicted - measured) / measured)
        checked += 1
    assert checked == EXAMPLES
    print(
        f"llama.cpp property cases: {checked} drawn, planned and dry-run by llama-fit-params; "
        f"over-prediction median {sorted(overs)[len(overs) // 2]:.2%}, max {max(overs):.2%}, "
        f"min {min(overs):.2%}"
    )
