"""Every override: accepted values parse with their source; bad ones name variable, value, accepted."""

from __future__ import annotations

import pytest

from gpu_preflight.inputs.errors import OverrideError
from gpu_preflight.inputs.overrides import parse_overrides


@pytest.mark.parametrize(
    ("env", "field", "value", "source"),
    [
        ({"PREFLIGHT_MODEL": "qwen3-8b"}, "model", "qwen3-8b", "env:PREFLIGHT_MODEL"),
        ({"VLLM_MODEL": "Qwen/Qwen3-8B"}, "model", "Qwen/Qwen3-8B", "env:VLLM_MODEL"),
        ({"VLLM_MODEL": "Qwen/Qwen3-8B"}, "engine", "vllm", "env:VLLM_MODEL"),
        ({"PREFLIGHT_ENGINE": "llamacpp"}, "engine", "llama.cpp", "env:PREFLIGHT_ENGINE"),
        ({"PREFLIGHT_ENGINE": "VLLM"}, "engine", "vllm", "env:PREFLIGHT_ENGINE"),
        ({"PREFLIGHT_CONTEXT": "32k"}, "context", 32768, "env:PREFLIGHT_CONTEXT"),
        ({"PREFLIGHT_CONTEXT": "8192"}, "context", 8192, "env:PREFLIGHT_CONTEXT"),
        ({"VLLM_MAX_MODEL_LEN": "4096"}, "context", 4096, "env:VLLM_MAX_MODEL_LEN"),
        ({"LLAMA_ARG_CTX_SIZE": "2048"}, "ctx_total", 2048, "env:LLAMA_ARG_CTX_SIZE"),
        ({"PREFLIGHT_TIER": "GPU-24GB"}, "tier", "gpu-24gb", "env:PREFLIGHT_TIER"),
        (
            {"PREFLIGHT_KV_CACHE_TYPE": "Q8_0"},
            "kv_cache_type",
            "q8_0",
            "env:PREFLIGHT_KV_CACHE_TYPE",
        ),
        ({"PREFLIGHT_KV_CACHE_TYPE": "fp8"}, "kv_cache_type", "fp8", "env:PREFLIGHT_KV_CACHE_TYPE"),
        (
            {"PREFLIGHT_RESERVE_GB": "2.5"},
            "reserve_gib",
            2.5,
            "env:PREFLIGHT_RESERVE_GB",
        ),
        ({"PREFLIGHT_MIN_TOKS": "5"}, "min_tok_s", 5.0, "env:PREFLIGHT_MIN_TOKS"),
        ({"PREFLIGHT_PARALLEL": "4"}, "parallel", 4, "env:PREFLIGHT_PARALLEL"),
        ({"VLLM_QUANTIZATION": "AWQ"}, "quantization", "awq", "env:VLLM_QUANTIZATION"),
        ({"LLAMA_ARG_N_GPU_LAYERS": "20"}, "n_gpu_layers", 20, "env:LLAMA_ARG_N_GPU_LAYERS"),
        ({"LLAMA_ARG_N_GPU_LAYERS": "all"}, "n_gpu_layers", -1, "env:LLAMA_ARG_N_GPU_LAYERS"),
        ({"PREFLIGHT_PORT": "9000"}, "port", 9000, "env:PREFLIGHT_PORT"),
    ],
)
def test_valid_override_parses_with_its_source(env, field, value, source):
    o = parse_overrides(env)
    got = getattr(o, field)
    assert got is not None
    assert got.value == value
    assert got.source == source


@pytest.mark.parametrize(
    ("env", "variable", "accepted_fragment"),
    [
        ({"PREFLIGHT_CONTEXT": "abc"}, "PREFLIGHT_CONTEXT", "whole number of tokens"),
        ({"PREFLIGHT_CONTEXT": "12"}, "PREFLIGHT_CONTEXT", "256"),
        ({"PREFLIGHT_CONTEXT": "999999999"}, "PREFLIGHT_CONTEXT", "10485760"),
        ({"PREFLIGHT_CONTEXT": "-5"}, "PREFLIGHT_CONTEXT", "whole number"),
        ({"VLLM_MAX_MODEL_LEN": "8k5"}, "VLLM_MAX_MODEL_LEN", "whole number"),
        ({"PREFLIGHT_ENGINE": "tgi"}, "PREFLIGHT_ENGINE", "auto, vllm, llama.cpp"),
        ({"PREFLIGHT_KV_CACHE_TYPE": "int3"}, "PREFLIGHT_KV_CACHE_TYPE", "q8_0"),
        ({"PREFLIGHT_RESERVE_GB": "lots"}, "PREFLIGHT_RESERVE_GB", "GiB"),
        ({"PREFLIGHT_RESERVE_GB": "-1"}, "PREFLIGHT_RESERVE_GB", "GiB"),
        ({"PREFLIGHT_RESERVE_GB": "nan"}, "PREFLIGHT_RESERVE_GB", "GiB"),
        ({"PREFLIGHT_MIN_TOKS": "0"}, "PREFLIGHT_MIN_TOKS", "tokens/s"),
        ({"PREFLIGHT_PARALLEL": "0"}, "PREFLIGHT_PARALLEL", "1 to 1024"),
        ({"PREFLIGHT_PARALLEL": "2.5"}, "PREFLIGHT_PARALLEL", "1 to 1024"),
        ({"VLLM_QUANTIZATION": "int2"}, "VLLM_QUANTIZATION", "awq"),
        ({"LLAMA_ARG_N_GPU_LAYERS": "many"}, "LLAMA_ARG_N_GPU_LAYERS", "all"),
        ({"LLAMA_ARG_CACHE_TYPE_K": "q3"}, "LLAMA_ARG_CACHE_TYPE_K", "q4_0"),
        ({"PREFLIGHT_PORT": "70000"}, "PREFLIGHT_PORT", "65535"),
        ({"PREFLIGHT_HOST": "a b"}, "PREFLIGHT_HOST", "IP address"),
        (
            {"PREFLIGHT_CONTEXT": "8192", "VLLM_MAX_MODEL_LEN": "4096"},
            "VLLM_MAX_MODEL_LEN",
            "the same value as PREFLIGHT_CONTEXT",
        ),
    ],
)
def test_invalid_override_names_variable_value_and_accepted(env, variable, accepted_fragment):
    with pytest.raises(OverrideError) as info:
        parse_overrides(env)
    message = str(info.value)
    assert info.value.variable == variable
    assert variable in message
    assert accepted_fragment in message
    bad_value = env[variable]
    assert repr(bad_value) in message


def test_engine_arg_and_env_for_one_value_must_agree():
    with pytest.raises(OverrideError) as info:
        parse_overrides({"LLAMA_ARG_CTX_SIZE": "4096"}, ["--ctx-size", "16384"])
    assert "LLAMA_ARG_CTX_SIZE" in str(info.value) and "--ctx-size" in str(info.value)
    o = parse_overrides({"LLAMA_ARG_CTX_SIZE": "16384"}, ["--ctx-size", "16384"])
    assert o.ctx_total is not None and o.ctx_total.value == 16384


def test_engine_args_equals_form_and_passthrough():
    o = parse_overrides({}, ["--max-model-len=8192", "--enable-prefix-caching"])
    assert o.context is not None and o.context.value == 8192
    assert o.passthrough == ("--enable-prefix-caching",)
    o = parse_overrides({}, ["-np", "3", "--jinja"])
    assert o.parallel is not None and o.parallel.value == 3 and o.passthrough == ("--jinja",)


def test_engine_arg_missing_value_is_an_error():
    with pytest.raises(OverrideError, match="--ctx-size"):
        parse_overrides({}, ["--ctx-size"])


@pytest.mark.parametrize("flag", ["--api-key", "--hf-token"])
def test_secret_on_the_command_line_is_refused(flag):
    with pytest.raises(OverrideError) as info:
        parse_overrides({}, [flag, "sk-live-123456"])
    assert "sk-live-123456" not in str(info.value)
    assert "environment" in str(info.value)


def test_llama_env_read_by_the_planner_is_consumed_and_carried_on_argv():
    o = parse_overrides({"LLAMA_ARG_CTX_SIZE": "4096", "LLAMA_ARG_HOST": "127.0.0.1"})
    assert set(o.consumed_env) == {"LLAMA_ARG_CTX_SIZE", "LLAMA_ARG_HOST"}
    assert o.host is not None and o.host.value == "127.0.0.1"


def test_empty_values_are_unset():
    o = parse_overrides({"PREFLIGHT_CONTEXT": "  ", "PREFLIGHT_ENGINE": ""})
    assert o.context is None and o.engine is None


def test_auto_engine_means_no_pin():
    assert parse_overrides({"PREFLIGHT_ENGINE": "auto"}).engine is None
