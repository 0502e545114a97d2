"""Issue 20: `estimate -- llama-server ...` plans the command exactly as typed.

What the command leaves open takes llama-server 0.3.36's own default or what llama-server itself
resolves (plan/llamacpp.py typed_defaults_llama, from the llama-cpp-python 0.3.36 sdist's
vendor/llama.cpp): -np auto is 4 slots on a unified KV (tools/server/server.cpp main), -c unset
or 0 the trained context per stream, lowered by llama-server's own --fit (on by default) where it
does not fit (common/fit.cpp common_params_fit_impl), with --fit off n_ctx_train in all
(src/llama-context.cpp), -ngl every layer without --fit, -b/-ub 2048/512, -fa auto, --cache-ram
8192 MiB (common/common.h). The verdict is for that command; a command that does not fit comes
with the nearest single changes that make it fit, each an exact argv that, estimated, fits.
`plan` and `run` keep choosing the values left open.

On main before this change `estimate` answered for another command: -np 1 and the planner's
-c, --fit off, --cache-ram cut to the host, -fa on, each written into the argv.
"""

from __future__ import annotations

import shlex

import pytest
from tests.plan.conftest import engine_flags, estimate, run_plan

from gpu_preflight.cli.estimate_cmd import run_estimate
from gpu_preflight.errors import InvalidInput
from gpu_preflight.plan.types import Plan

REPO = "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF"
Q4 = f"llama-server -hf {REPO}:Q4_K_M"
Q8 = f"llama-server -hf {REPO}:Q8_0"
TRAINED = 131072  # Llama 3.1's n_ctx_train
MIB = 2**20


def _note(p: Plan) -> str:
    assert p.predicted is not None
    return next(n for n in p.predicted.notes if n.startswith("llama-server 0.3.36 resolves"))


def test_what_the_command_leaves_open_is_llama_servers_own_default():
    p = estimate("h100-sxm", Q4)
    assert p.verdict == "ship", p.reasons
    assert p.argv == tuple(shlex.split(Q4))  # nothing added: no -c, -np, --fit off, --cache-ram
    assert p.parallel == 4 and p.context == TRAINED  # -np auto: 4 slots sharing one KV
    note = _note(p)
    assert f"-c {TRAINED}" in note and "-np 4 (unified KV)" in note and "--fit on" in note
    assert "-fa auto" in note and "--cache-ram 8192" in note and "-b 2048, -ub 512" in note
    cpu = next(d for d in p.predicted.devices if d.device == "CPU")
    assert cpu.overhead_bytes >= 8192 * MIB  # llama-server's prompt cache, as typed
    assert p.sources["parallel"].startswith("llama-server 0.3.36 default")
    assert p.sources["flash_attn"].startswith("llama-server 0.3.36 default")


def test_a_typed_total_is_shared_by_the_typed_slots():
    cmd = f"{Q4} -c 8192 -np 2"
    p = estimate("h100-sxm", cmd)
    assert p.verdict == "ship", p.reasons
    assert p.argv == tuple(shlex.split(cmd))
    assert p.parallel == 2 and p.context == 4096  # -np typed: a KV stream per slot
    assert p.sources["context"] == "arg:-c" and p.sources["parallel"] == "arg:-np"


def test_typed_slots_without_c_take_the_trained_context_each():
    # --fit on (default): common/fit.cpp sets n_ctx = n_ctx_train x n_streams.
    p = estimate("h100-sxm", f"{Q4} -np 2")
    assert p.verdict == "ship", p.reasons
    assert p.parallel == 2 and p.context == TRAINED
    assert f"-c {2 * TRAINED}" in _note(p)
    # --fit off: llama_context takes n_ctx_train in all, each of the 2 streams half of it.
    q = estimate("h100-sxm", f"{Q4} -np 2 --fit off")
    assert q.verdict == "ship", q.reasons
    assert q.parallel == 2 and q.context == TRAINED // 2
    assert f"-c {TRAINED}" in _note(q)


def test_llama_servers_own_fit_lowers_an_unset_context_where_it_does_not_fit():
    p = estimate("rtx-4060", Q4)
    assert p.verdict == "ship", p.reasons
    assert p.argv == tuple(shlex.split(Q4))
    assert 4096 <= p.context < TRAINED  # never under fit_params_min_ctx
    assert "lowered by llama-server's own --fit" in _note(p)
    assert p.sources["context"].startswith("llama-server 0.3.36 --fit on")


def test_a_typed_c_0_is_not_lowered():
    # common/arg.cpp: -c 0 sets fit_params_min_ctx to UINT32_MAX ("user has requested full
    # context size -> no change").
    p = estimate("h100-sxm", f"{Q4} -c 0")
    assert p.verdict == "ship", p.reasons
    assert p.context == TRAINED and p.argv == tuple(shlex.split(f"{Q4} -c 0"))


def test_a_command_that_does_not_fit_gets_the_shortfall_and_exact_argvs_that_fit():
    cmd = f"{Q4} -c 65536 -np 2 --fit off"
    p = estimate("rtx-4060", cmd)
    assert p.verdict == "refuse"
    joined = " ".join(p.reasons)
    assert "usable (short by" in joined and "RTX 4060" in joined, joined  # the shortfall per device
    assert p.alternatives
    typed = engine_flags(tuple(shlex.split(cmd)))
    for a in p.alternatives:
        assert a.argv[:3] == ("llama-server", "-hf", f"{REPO}:Q4_K_M")
        changed = {k for k, v in engine_flags(a.argv).items() if typed.get(k, "<unset>") != v}
        assert changed, a.argv
        assert changed <= {
            "--ctx-size",
            "--n-gpu-layers",
            "--fit",
            "--parallel",
            "--cache-ram",
        } or changed == {
            "--cache-type-k",
            "--cache-type-v",
        }, (a.argv, changed)
        q = estimate("rtx-4060", shlex.join(a.argv))
        assert q.verdict == "ship", (a.argv, q.reasons)
        assert q.argv == a.argv


def test_fit_off_with_too_big_a_model_offers_llama_servers_own_fit():
    p = estimate("rtx-4060", f"{Q8} --fit off")
    assert p.verdict == "refuse"
    assert any(a.argv[-2:] == ("--fit", "on") for a in p.alternatives), p.alternatives
    q = estimate("rtx-4060", f"{Q8} --fit on")
    assert q.verdict == "ship", q.reasons
    assert q.predicted is not None
    assert any(d.device == "CPU" and d.weights_bytes > 0 for d in q.predicted.devices)


def test_plan_and_run_keep_choosing_the_open_values():
    p = run_plan("h100-sxm", {}, tuple(shlex.split(Q4)))
    assert p.verdict == "ship", p.reasons
    flags = engine_flags(p.argv)
    # The planner writes what it chose, and turns llama-server's own re-fit off.
    assert flags["--fit"] == "off" and "--ctx-size" in flags and "--parallel" in flags


def test_host_ram_short_on_the_cpu_gets_exact_argvs_that_fit():
    # Gemma 2 (sliding-window layers) on the CPU, as typed: 4 slots, --cache-ram 8192 MiB and 32
    # context checkpoints per slot in host RAM (common.h), more than 40 GiB holds.
    cmd = "llama-server -hf bartowski/gemma-2-2b-it-GGUF:Q4_K_M"
    p = run_estimate({}, {}, tuple(shlex.split(cmd)), None, True, 40)
    assert p.verdict == "refuse"
    assert "host RAM" in " ".join(p.reasons) and "short by" in " ".join(p.reasons)
    kinds = {a.argv[3] for a in p.alternatives}
    assert "--cache-ram" in kinds, kinds
    for a in p.alternatives:
        q = run_estimate({}, {}, a.argv, None, True, 40)
        assert q.verdict == "ship" and q.argv == a.argv, (a.argv, q.reasons)


def test_a_configuration_option_beside_a_typed_command_is_an_input_error():
    # It would be planned but not run: the argv is the typed command.
    with pytest.raises(InvalidInput, match="--parallel '2' with an engine command"):
        run_estimate({}, {"--parallel": "2"}, tuple(shlex.split(Q4)), "h100-sxm", False, None)
