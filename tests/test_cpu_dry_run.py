"""llama.cpp's own dry run on the CPU for `plan`, `estimate` and `matrix` (issue 19 item 1).

The plan's exact argv, with its placement replaced by ``--n-gpu-layers 0 --device none``, goes to
the real llama-fit-params; its Host row is the model's weights and KV (and recurrent state) for
any architecture, folded into the plan's totals over all its devices (never lowered). Files:
tests/support/data/gguf_archs.json (tiny sparse GGUFs llama.cpp itself loads), and the catalog's
real layouts for the HF cache.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpu_preflight import engine_check, pipeline
from gpu_preflight.cli.estimate_cmd import run_estimate
from gpu_preflight.cli.main import main
from gpu_preflight.engine_check import EngineBreakdown, EngineDevice
from gpu_preflight.errors import SetupError
from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.plan.document import plan_to_dict
from gpu_preflight.plan.reconcile import reconcile_totals
from gpu_preflight.plan.types import Plan
from gpu_preflight.probe.collect import simulated_hardware
from gpu_preflight.profile import make_profile
from tests.support.fake_hub import FakeHub
from tests.support.gguf_archs import load_cases, write_case
from tests.support.gguf_factory import write_gguf
from tests.support.llama_fit import fit_params_binary

MIB = 2**20
GIB = 2**30
CASES = load_cases()
# llama (dense), gemma2/gemma3 (sliding window), qwen3moe (MoE), lfm2 (hybrid short-conv),
# mamba (recurrent), qwen3next (gated DeltaNet hybrid MoE), deepseek2 (MLA), gpt-oss (SWA MoE)
ARCHS = (
    "llama",
    "gemma2",
    "gemma3",
    "qwen3moe",
    "lfm2",
    "mamba",
    "qwen3next",
    "deepseek2",
    "gpt-oss",
)
SUMMARY = "llama.cpp's own dry run of this command on this machine's CPU"
NOT_USED = "llama.cpp's own dry run on the CPU was not used: "


def _binary() -> Path:
    # a skip, which tests/conftest.py turns into a failure under CI=true (marker llamacpp)
    b = fit_params_binary()
    if not b.exists():
        pytest.skip(f"{b} is not built: run `make llama-cpp` (.ci/llama-cpp.sh)")
    return b


def _env(**more: str) -> dict[str, str]:
    return {"PATH": f"{_binary().parent}:/usr/bin:/bin", **more}


def _profile(gpu: str = "rtx-4090"):
    return make_profile(simulated_hardware(gpu, 64 * GIB, 40.0), simulated=gpu)


def _sums(p: Plan) -> tuple[int, int]:
    assert p.predicted is not None
    devs = p.predicted.devices
    return sum(d.weights_bytes for d in devs), sum(d.kv_cache_bytes for d in devs)


def _notes(p: Plan) -> tuple[str, ...]:
    assert p.predicted is not None
    return p.predicted.notes


def _note(p: Plan, start: str) -> str:
    assert p.predicted is not None
    return next(n for n in p.predicted.notes if n.startswith(start))


# -- the argv and environment of the CPU run (pure) -----------------------------------------------


def test_the_placement_is_replaced_and_every_other_flag_kept() -> None:
    argv = (
        "llama-server", "--model", "/m.gguf", "--fit", "off", "--ctx-size", "8192",
        "--parallel", "2", "--n-gpu-layers", "all", "--tensor-split", "3,2", "--split-mode",
        "layer", "--main-gpu", "1", "--device", "CUDA1,CUDA0", "--n-cpu-moe", "4", "--cpu-moe",
        "-ot", "exps=CPU", "--flash-attn", "on", "--cache-type-k", "q8_0", "--cache-type-v",
        "q8_0", "--batch-size", "2048", "--ubatch-size", "512", "--no-repack",
        "--kv-unified", "--host", "0.0.0.0",
    )  # fmt: skip
    args, dropped = engine_check.cpu_fit_params_args(argv)
    assert args == [
        "--model", "/m.gguf", "--fit", "off", "--ctx-size", "8192", "--parallel", "2",
        "--flash-attn", "on", "--cache-type-k", "q8_0", "--cache-type-v", "q8_0",
        "--batch-size", "2048", "--ubatch-size", "512", "--no-repack",
        "--n-gpu-layers", "0", "--device", "none",
    ]  # fmt: skip
    assert dropped == ["--kv-unified"]
    env = engine_check.cpu_env(
        {"LLAMA_ARG_TENSOR_SPLIT": "1,1", "LLAMA_ARG_N_CPU_MOE": "2", "LLAMA_ARG_CTX_SIZE": "9"}
    )
    assert env == {"LLAMA_ARG_CTX_SIZE": "9"}


# -- the fold on a hand-made plan (pure) ----------------------------------------------------------


def _gpu_plan() -> Plan:
    # 8k tokens on a 24 GB card: room for 10 % more weights and KV
    env = {
        "PREFLIGHT_MODEL": "qwen3-8b",
        "PREFLIGHT_ENGINE": "llama.cpp",
        "PREFLIGHT_CONTEXT": "8k",
    }
    inputs = pipeline.prepare(env)
    p = pipeline.plan_on(inputs, _profile(), ("llama.cpp",))
    assert p.verdict == "ship" and p.predicted is not None
    assert len(p.predicted.devices) == 2  # CUDA0 and the host's share
    return p


def _host_row(model: int, context: int, dropped: tuple[str, ...] = ()) -> EngineBreakdown:
    host = EngineDevice("Host", model, context, 300 * MIB)
    return EngineBreakdown((host,), ("llama-fit-params",), dropped, 0.25)


def test_a_closed_form_ten_percent_low_is_raised_in_proportion() -> None:
    p = _gpu_plan()
    w, kv = _sums(p)
    model, context = w * 11 // 10, kv * 11 // 10
    r = reconcile_totals(p, _host_row(model, context))
    assert r.verdict == "ship"
    assert _sums(r) == (model, context)  # exactly llama.cpp's, the larger
    assert r.predicted is not None and p.predicted is not None
    for before, after in zip(p.predicted.devices, r.predicted.devices, strict=True):
        # each device raised by its share of what it held (to the byte, bar the rounding)
        assert abs((after.weights_bytes - before.weights_bytes) - before.weights_bytes // 10) <= 2
        assert after.compute_bytes == before.compute_bytes  # the CPU's compute is not folded
        assert after.total_bytes == (
            before.total_bytes
            + after.weights_bytes - before.weights_bytes
            + after.kv_cache_bytes - before.kv_cache_bytes
        )  # fmt: skip
    note = _note(r, SUMMARY)
    assert f"model {model // MIB} MiB, context {context // MIB} MiB" in note
    assert "0.25 s" in note and "not folded" in note
    assert any(n.startswith("weights: llama.cpp says") for n in r.predicted.notes)
    assert any(n.startswith("KV raised to llama.cpp's") for n in r.predicted.notes)
    plan_to_dict(r)


def test_raised_past_the_budget_the_plan_is_refused_with_llama_cpps_numbers() -> None:
    p = _gpu_plan()
    assert p.predicted is not None
    gpu = p.predicted.devices[0]
    tight = replace(gpu, budget_bytes=gpu.total_bytes + gpu.weights_bytes // 20)  # 5 % free
    p = replace(p, predicted=replace(p.predicted, devices=(tight, *p.predicted.devices[1:])))
    w, kv = _sums(p)
    model, context = w * 11 // 10, kv * 11 // 10
    r = reconcile_totals(p, _host_row(model, context))
    assert r.verdict == "refuse" and r.argv == ()
    assert r.reasons[0].startswith(
        f"llama.cpp's own dry run of the planned command on the CPU (model {model // MIB} MiB, "
        f"context {context // MIB} MiB) needs "
    )
    assert gpu.description in r.reasons[0]
    plan_to_dict(r)


def test_a_lower_figure_never_lowers_the_plan_and_a_far_one_is_a_note() -> None:
    p = _gpu_plan()
    w, kv = _sums(p)
    r = reconcile_totals(p, _host_row(w // 2, kv))
    assert r.predicted is not None and p.predicted is not None
    assert r.predicted.devices == p.predicted.devices
    assert any("kept the larger (the prediction)" in n for n in r.predicted.notes)


def test_a_unified_kv_is_not_compared_with_llama_cpps_per_slot_streams() -> None:
    p = _gpu_plan()
    w, kv = _sums(p)
    r = reconcile_totals(p, _host_row(w, kv * 2, ("--kv-unified",)))
    assert _sums(r) == (w, kv)
    assert "KV kept as predicted: --kv-unified is server-only" in _note(r, SUMMARY)


def test_no_dry_run_leaves_the_closed_form_with_the_reason() -> None:
    p = _gpu_plan()
    r = reconcile_totals(p, "llama-fit-params is not on PATH")
    assert r.predicted is not None and p.predicted is not None
    assert r.predicted.devices == p.predicted.devices
    assert _note(r, NOT_USED).endswith("llama-fit-params is not on PATH; the closed form stands")


# -- the real llama-fit-params on every kind of architecture --------------------------------------


@pytest.mark.llamacpp
@pytest.mark.parametrize("arch", ARCHS)
def test_plan_for_a_gpu_folds_llama_cpps_cpu_figures(arch: str, tmp_path: Path) -> None:
    case = CASES[arch]
    assert case.loads, case.reason
    path = write_case(tmp_path / f"{arch}.gguf", arch, case.keys, case.tensors)
    env = _env(PREFLIGHT_MODEL=str(path), PREFLIGHT_CONTEXT="4096")
    inputs = pipeline.prepare(env)
    p = pipeline.plan_on(inputs, _profile(), ("llama.cpp",))
    assert p.verdict == "ship" and p.model is not None and p.model.path == str(path)
    runs: pipeline.DryRuns = {}
    r = pipeline.check_on_cpu(inputs, p, env, runs)
    (ref,) = runs.values()
    assert isinstance(ref, EngineBreakdown), ref
    assert [d.name for d in ref.devices] == ["Host"]  # everything on the CPU
    assert ref.argv[-7:-3] == ("--n-gpu-layers", "0", "--device", "none")
    host = ref.devices[0]
    note = _note(r, SUMMARY)
    assert f"model {host.model_bytes // MIB} MiB, context {host.context_bytes // MIB} MiB" in note
    (w0, kv0), (w1, kv1) = _sums(p), _sums(r)
    assert (w1, kv1) == (max(w0, host.model_bytes), max(kv0, host.context_bytes))
    # and the closed form agrees with llama.cpp here (its figures are whole MiB, floored)
    assert w0 // MIB == host.model_bytes // MIB and kv0 // MIB == host.context_bytes // MIB
    assert r.verdict == "ship"
    plan_to_dict(r)


@pytest.mark.llamacpp
def test_plan_command_on_a_simulated_gpu_records_the_figures(tmp_path: Path) -> None:
    case = CASES["gemma3"]
    path = write_case(tmp_path / "g.gguf", "gemma3", case.keys, case.tensors)
    runner = CliRunner()
    r = runner.invoke(
        main, ["plan", "--simulate", "h100-sxm", "--model", str(path), "--json"], env=_env()
    )
    assert r.exit_code == 0, r.output
    notes = json.loads(r.stdout)["predicted"]["notes"]
    assert any(n.startswith(SUMMARY) for n in notes), notes
    off = runner.invoke(
        main,
        ["plan", "--simulate", "h100-sxm", "--model", str(path), "--json"],
        env=_env(PREFLIGHT_ENGINE_CHECK="off"),
    )
    assert off.exit_code == 0, off.output
    assert not any(
        "llama.cpp's own dry run" in n for n in json.loads(off.stdout)["predicted"]["notes"]
    )


@pytest.mark.llamacpp
def test_estimate_carries_the_note_and_on_without_the_binary_is_exit_2(tmp_path: Path) -> None:
    case = CASES["qwen3moe"]
    path = write_case(tmp_path / "q.gguf", "qwen3moe", case.keys, case.tensors)
    cmd = ["estimate", "--gpu", "2xrtx-3090", "--json", "--", "llama-server", "-m", str(path)]
    runner = CliRunner()
    r = runner.invoke(main, [*cmd, "-c", "4096", "-np", "2"], env=_env())
    assert r.exit_code == 0, r.output
    notes = json.loads(r.stdout)["predicted"]["notes"]
    assert any(n.startswith(SUMMARY) for n in notes), notes
    # on the CPU (a CPU-only plan): every component per device, compute included
    cpu = runner.invoke(main, ["estimate", "--cpu", *cmd[3:], "-c", "4096"], env=_env())
    assert cpu.exit_code == 0, cpu.output
    cpu_notes = json.loads(cpu.stdout)["predicted"]["notes"]
    assert any(n.startswith("llama.cpp's own dry run of this command (") for n in cpu_notes)
    no_binary = {"PATH": "/usr/bin:/bin", "PREFLIGHT_ENGINE_CHECK": "on"}
    bad = runner.invoke(main, [*cmd, "-c", "4096"], env=no_binary)
    assert bad.exit_code == 2, bad.output
    assert "PREFLIGHT_ENGINE_CHECK=on" in bad.output and "llama-fit-params" in bad.output
    auto = runner.invoke(main, [*cmd, "-c", "4096"], env={"PATH": "/usr/bin:/bin"})
    assert auto.exit_code == 0, auto.output
    assert any(
        n.startswith(NOT_USED) and "not on PATH" in n
        for n in json.loads(auto.stdout)["predicted"]["notes"]
    )


@pytest.mark.llamacpp
def test_swa_full_is_modelled_and_equals_llama_cpps_kv(tmp_path: Path) -> None:
    # --swa-full sizes every sliding-window layer's cache to the whole context
    # (src/llama-kv-cache-iswa.cpp); the closed form models it, and llama.cpp's own CPU dry run
    # of the same argv (which carries it) agrees to the MiB: nothing is raised.
    case = CASES["gpt-oss"]
    path = write_case(tmp_path / "o.gguf", "gpt-oss", case.keys, case.tensors)
    argv = ("llama-server", "-m", str(path), "-c", "32768", "-np", "1")
    # the shell's K cache type: not part of estimate's command, so not of its dry run either
    env = _env(LLAMA_ARG_CACHE_TYPE_K="q8_0")
    plain = run_estimate(env, {}, argv, "rtx-4090", False, None)
    full = run_estimate(env, {}, (*argv, "--swa-full"), "rtx-4090", False, None)

    def context_mib(p: Plan) -> int:
        return int(_note(p, SUMMARY).split("context ", 1)[1].split(" MiB", 1)[0])

    assert "--swa-full" in full.argv and "--swa-full" not in plain.argv
    for p in (plain, full):
        assert _sums(p)[1] // MIB == context_mib(p) and p.context == 32768
        assert not any(n.startswith("KV raised to llama.cpp's") for n in _notes(p))
    assert _sums(full)[1] > 1.5 * _sums(plain)[1]


@pytest.mark.llamacpp
def test_a_failed_dry_run_is_a_note_and_the_closed_form_stands(tmp_path: Path) -> None:
    case = CASES["llama"]
    path = write_case(tmp_path / "l.gguf", "llama", case.keys, case.tensors)
    env = _env(PREFLIGHT_MODEL=str(path))
    inputs = pipeline.prepare(env)
    p = pipeline.plan_on(inputs, _profile(), ("llama.cpp",))
    path.write_bytes(b"GGUF" + bytes(60))  # the file changed under the plan: llama.cpp refuses it
    r = pipeline.check_on_cpu(inputs, p, env)
    assert r.verdict == "ship" and _sums(r) == _sums(p)
    note = _note(r, NOT_USED)
    assert "llama-fit-params exited" in note and note.endswith("the closed form stands")


def test_on_without_the_binary_is_a_setup_error_naming_the_variable(tmp_path: Path) -> None:
    case = CASES["llama"]
    path = write_case(tmp_path / "l.gguf", "llama", case.keys, case.tensors)
    env = {"PATH": "/nonexistent", "PREFLIGHT_MODEL": str(path), "PREFLIGHT_ENGINE_CHECK": "on"}
    inputs = pipeline.prepare(env)
    p = pipeline.plan_on(inputs, _profile(), ("llama.cpp",))
    with pytest.raises(SetupError, match="PREFLIGHT_ENGINE_CHECK=on"):
        pipeline.check_on_cpu(inputs, p, env)


# -- a Hub model: the ranged read's sparse copy, and the HF cache for `matrix` -------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    d = tmp_path_factory.mktemp("cpuhub")
    arch = load_catalog().get("llama-3.2-1b-instruct")
    assert arch is not None
    q8 = write_gguf(d / "tiny-Q8_0.gguf", arch.arch, "Q8_0")
    with FakeHub() as h:
        h.add("someorg/Tiny-GGUF", {"tiny-Q8_0.gguf": q8})
        yield h


@pytest.mark.llamacpp
def test_a_hub_model_is_checked_on_its_header_copy(hub: FakeHub, tmp_path: Path) -> None:
    env = _env(
        HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), PREFLIGHT_PROFILE_DIR=str(tmp_path)
    )
    inputs = pipeline.prepare(env, ("-hf", "someorg/Tiny-GGUF:Q8_0", "-c", "4096"))
    p = pipeline.plan_on(inputs, _profile(), ("llama.cpp",))
    assert p.verdict == "ship" and p.model is not None and p.model.path is None
    r = pipeline.check_on_cpu(inputs, p, env)
    assert _sums(r) == _sums(p)  # the 1B layout: the closed form is not under llama.cpp
    assert "model 1" in _note(r, SUMMARY)  # llama-3.2-1b at Q8_0: 1.2 GiB of weights


@pytest.mark.llamacpp
def test_matrix_checks_a_catalog_model_in_the_hf_cache_once_per_distinct_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_catalog().get("llama-3.2-1b-instruct")
    assert spec is not None
    art = next(a for a in spec.artifacts if a.engine == "llama.cpp" and a.quant == "Q4_K_M")
    assert art.file is not None
    commit = "0" * 40
    repo = tmp_path / "hub" / f"models--{art.repo.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    write_gguf(snap / art.file, spec.arch, "Q4_K_M")
    calls: list[tuple[str, ...]] = []
    real = engine_check.llama_cpu_dry_run

    def counted(*a: object, **k: object) -> EngineBreakdown | str:
        got = real(*a, **k)  # type: ignore[arg-type]
        calls.append(got.argv if isinstance(got, EngineBreakdown) else (got,))
        return got

    monkeypatch.setattr(engine_check, "llama_cpu_dry_run", counted)
    from gpu_preflight.cli.matrix_cmd import run_matrix

    env = _env(HF_HUB_CACHE=str(tmp_path / "hub"))
    cells = run_matrix(env, "rtx-4090,rtx-3090,rtx-3060", "llama-3.2-1b-instruct", "8192", 64)
    shipped = [c for c in cells if c.verdict == "ship" and c.engine == "llama.cpp"]
    assert len(shipped) == 3, cells
    for c in shipped:
        assert c.engine_check is not None and c.engine_check.startswith(SUMMARY), c
    assert len(calls) == len(set(calls)) < len(shipped), calls  # identical runs asked once
    # without the file at hand: the reason, for every llama.cpp cell
    bare = run_matrix(_env(HF_HUB_CACHE=str(tmp_path / "empty")), "rtx-4090", None, None, 64)
    for c in bare:
        if c.engine == "llama.cpp" and c.verdict == "ship":
            assert c.engine_check is not None and c.engine_check.startswith(NOT_USED), c
