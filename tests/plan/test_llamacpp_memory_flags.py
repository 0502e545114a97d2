"""llama-server flags that change memory: modelled (--swa-full) or refused before any probe.

Every llama-server flag that changes where or how much memory goes has a row in the flag table
(inputs/flags.py): left untabled it would pass through unread and the plan would not be what
runs. --swa-full is modelled (src/llama-kv-cache-iswa.cpp: the sliding-window layers get the
whole context's cells); the placement and metadata overrides the memory model cannot follow are
refused (exit 2) with what to use instead, like --override-tensor.
"""

from __future__ import annotations

import pytest
from tests.plan.conftest import run_plan

from gpu_preflight.inputs.flags import FlagValueError

ENV = {"PREFLIGHT_ENGINE": "llama.cpp", "PREFLIGHT_MODEL": "gemma-3-12b-it"}


def _gpu_kv(p: object) -> int:
    return sum(d.kv_cache_bytes for d in p.predicted.devices)  # type: ignore[attr-defined]


def test_swa_full_gives_the_sliding_layers_the_whole_context() -> None:
    args = ("-c", "32768", "-np", "1")
    plain = run_plan("h100-sxm", ENV, args)
    full = run_plan("h100-sxm", ENV, (*args, "--swa-full"))
    assert plain.verdict == full.verdict == "ship"
    assert full.argv.count("--swa-full") == 1 and "--swa-full" not in plain.argv
    assert plain.context == full.context == 32768
    # Gemma 3: 5 of every 6 layers slide over a 1024-token window; with --swa-full every layer
    # holds 32768 cells, so the KV is the dense model's: (layers x 32768) / (full + swa cells)
    assert _gpu_kv(full) > 3 * _gpu_kv(plain)


def test_swa_full_from_llama_cpps_own_variable_is_the_same_plan() -> None:
    args = ("-c", "32768", "-np", "1")
    by_flag = run_plan("h100-sxm", ENV, (*args, "--swa-full"))
    by_env = run_plan("h100-sxm", {**ENV, "LLAMA_ARG_SWA_FULL": "1"}, args)
    assert _gpu_kv(by_flag) == _gpu_kv(by_env)
    assert by_env.argv.count("--swa-full") == 1


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--no-kv-offload",), "--no-kv-offload"),
        (("-nkvo",), "-nkvo"),
        (("-ncffn", "4"), "-ncffn"),
        (("--rpc", "10.0.0.2:50052"), "--rpc"),
        (("--override-kv", "llama.context_length=int:4096"), "--override-kv"),
        (("-otd", "exps=CPU"), "-otd"),
        (("-cmoed",), "-cmoed"),
        (("-ncmoed", "2"), "-ncmoed"),
        (("-devd", "CUDA1"), "-devd"),
    ],
)
def test_flags_whose_memory_cannot_be_planned_are_refused_naming_the_flag(
    args: tuple[str, ...], named: str
) -> None:
    with pytest.raises(FlagValueError) as e:
        run_plan("h100-sxm", ENV, args)
    assert named in str(e.value) and "its memory cannot be planned" in str(e.value)


def test_llama_cpps_own_variable_for_such_a_flag_is_refused_too() -> None:
    with pytest.raises(FlagValueError) as e:
        run_plan("h100-sxm", {**ENV, "LLAMA_ARG_N_CPU_FFN": "4"}, ())
    assert "LLAMA_ARG_N_CPU_FFN" in str(e.value)


def test_llama_cpps_kv_offload_variable_off_is_refused_and_on_passes_through() -> None:
    with pytest.raises(FlagValueError) as e:
        run_plan("h100-sxm", {**ENV, "LLAMA_ARG_KV_OFFLOAD": "0"}, ())
    assert "LLAMA_ARG_KV_OFFLOAD" in str(e.value) and "cannot be planned" in str(e.value)
    on = run_plan("h100-sxm", {**ENV, "LLAMA_ARG_KV_OFFLOAD": "1"}, ())
    assert on.verdict == "ship" and "LLAMA_ARG_KV_OFFLOAD" not in on.env_unset
