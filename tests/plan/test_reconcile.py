"""llama.cpp's own dry run folded into the plan: the larger figure is kept, a device it puts over
budget refuses, and a dry run that could not run leaves a note (the closed form stands)."""

from __future__ import annotations

import pytest
from tests.plan.conftest import CATALOG, run_plan
from tests.support.gguf_factory import write_gguf

from gpu_preflight import pipeline
from gpu_preflight.cli.estimate_cmd import device_profile
from gpu_preflight.engine_check import EngineBreakdown, EngineDevice, fit_params_args
from gpu_preflight.plan.document import plan_to_dict
from gpu_preflight.plan.reconcile import reconcile

MIB = 2**20
GIB = 2**30


def _breakdown(plan, compute_extra: int = 0, model_extra: int = 0) -> EngineBreakdown:
    devs = []
    for d in plan.predicted.devices:
        name = "Host" if d.device == "CPU" else d.device
        devs.append(
            EngineDevice(
                name,
                d.weights_bytes + model_extra,
                d.kv_cache_bytes,
                d.compute_bytes + compute_extra,
            )
        )
    gpus = [d for d in devs if d.name != "Host"]
    host = [d for d in devs if d.name == "Host"]
    return EngineBreakdown(tuple(gpus + host), ("llama-fit-params",), (), 0.4)


def test_agreeing_dry_run_keeps_the_plan_and_says_so():
    p = run_plan("rtx-4090", {"PREFLIGHT_MODEL": "qwen3-8b"})
    r = reconcile(p, _breakdown(p))
    assert r.verdict == "ship" and r.predicted.devices == p.predicted.devices
    assert any("llama.cpp's own dry run" in n for n in r.predicted.notes)
    plan_to_dict(r)


def test_a_larger_engine_figure_is_kept_with_a_note():
    p = run_plan("rtx-4090", {"PREFLIGHT_MODEL": "qwen3-8b"})
    r = reconcile(p, _breakdown(p, compute_extra=300 * MIB))
    gpu = next(d for d in r.predicted.devices if d.device == "CUDA0")
    before = next(d for d in p.predicted.devices if d.device == "CUDA0")
    assert gpu.compute_bytes == before.compute_bytes + 300 * MIB
    assert gpu.total_bytes == before.total_bytes + 300 * MIB
    assert any("CUDA0 compute" in n and "kept the larger" in n for n in r.predicted.notes)


def test_a_smaller_engine_figure_never_lowers_the_prediction():
    p = run_plan("rtx-4090", {"PREFLIGHT_MODEL": "qwen3-8b"})
    r = reconcile(p, _breakdown(p, compute_extra=-100 * MIB))
    assert r.predicted.devices == p.predicted.devices


def test_a_dry_run_over_budget_refuses_with_its_numbers():
    p = run_plan("rtx-4090", {"PREFLIGHT_MODEL": "qwen3-8b"})
    r = reconcile(p, _breakdown(p, model_extra=30 * GIB))
    assert r.verdict == "refuse" and r.argv == ()
    assert "llama.cpp's own dry run" in r.reasons[0]
    plan_to_dict(r)


def test_no_dry_run_is_a_note():
    p = run_plan("rtx-4090", {"PREFLIGHT_MODEL": "qwen3-8b"})
    r = reconcile(p, "llama-fit-params is not on PATH in this image")
    assert r.verdict == "ship" and any("not on PATH" in n for n in r.predicted.notes)


def test_fit_params_args_drop_server_flags_and_substitute_a_local_copy():
    argv = (
        "llama-server", "--hf-repo", "Q/Q-GGUF", "--hf-file", "q.gguf", "--fit", "off",
        "--ctx-size", "8192", "--kv-unified", "--host", "0.0.0.0", "--alias", "q", "--jinja",
    )  # fmt: skip
    args, dropped = fit_params_args(argv, "/tmp/sparse.gguf")
    assert args == ["--model", "/tmp/sparse.gguf", "--fit", "off", "--ctx-size", "8192"]
    assert dropped == ["--kv-unified"]  # the one that changes memory; host/alias/--jinja silently


@pytest.mark.llamacpp
def test_run_asks_llama_cpp_itself_and_matches_it(tmp_path):
    from tests.support.llama_fit import fit_params_binary

    binary = fit_params_binary()
    if not binary.exists():
        pytest.skip("llama-fit-params not built: run `make llama-cpp` (.ci/llama-cpp.sh)")
    gguf = write_gguf(tmp_path / "m.gguf", CATALOG.get("llama-3.2-1b-instruct").arch, "Q8_0")
    env = {
        "PREFLIGHT_MODEL": str(gguf),
        "PATH": f"{binary.parent}:/usr/bin:/bin",
        "PREFLIGHT_CONTEXT": "4096",
    }
    inputs = pipeline.prepare(env)
    p = pipeline.plan_on(inputs, device_profile(None, True, 64, 40.0), ("llama.cpp",))
    checked = pipeline.check_with_engine(inputs, p, env)
    note = next(n for n in checked.predicted.notes if n.startswith("llama.cpp's own dry run"))
    assert " s, llama-fit-params" in note
    # Never lower than the closed form, and llama.cpp's figures are in it.
    for a, b in zip(p.predicted.devices, checked.predicted.devices, strict=True):
        assert b.total_bytes >= a.total_bytes
