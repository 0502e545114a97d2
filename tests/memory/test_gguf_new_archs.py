"""Architectures the pinned llama.cpp serves but gguf 0.19.0 does not list (issue 19 item 1).

The files come from tests/support/data/gguf_new_archs.json (tests/support/gguf_new_archs.py: the
27 architectures llama.cpp 0.3.36's own gguf-py names beyond PyPI's gguf, each file's keys and
tensors found by running llama-fit-params on it until it loads). Such a model is planned only with
llama.cpp's own dry run folded in: with it, `plan` and `estimate` ship with llama.cpp's weights
and KV; without it (PREFLIGHT_ENGINE_CHECK=off, no llama-fit-params, a file it cannot load) the
plan is a refusal (exit 3) that says why; a header the reader cannot read names the architecture
before the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from gguf import MODEL_ARCH_NAMES
from tests.support.gguf_archs import load_cases, write_case
from tests.support.gguf_new_archs import load_new_cases
from tests.support.llama_fit import fit_params_binary, llama_fit

from gpu_preflight import pipeline
from gpu_preflight.cli.estimate_cmd import device_profile
from gpu_preflight.cli.main import main
from gpu_preflight.inputs.flags import FlagValueError
from gpu_preflight.memory.llamacpp import LlamaCppConfig, estimate_llamacpp
from gpu_preflight.models.errors import ModelError
from gpu_preflight.models.gguf_file import spec_from_gguf
from gpu_preflight.models.layout import UNLISTED_NOTE, unlisted_gguf_architecture
from gpu_preflight.plan.document import plan_to_dict
from gpu_preflight.plan.types import Plan

MIB = 2**20
CASES = load_new_cases()
LOADS = sorted(a for a, c in CASES.items() if c.loads)
SUMMARY = "llama.cpp's own dry run of this command on this machine's CPU"
CTX = 4096


def _binary() -> Path:
    # a skip, which tests/conftest.py turns into a failure under CI=true (marker llamacpp)
    b = fit_params_binary()
    if not b.exists():
        pytest.skip(f"{b} is not built: run `make llama-cpp` (.ci/llama-cpp.sh)")
    return b


def _env(**more: str) -> dict[str, str]:
    return {"PATH": f"{_binary().parent}:/usr/bin:/bin", **more}


def _file(tmp: Path, arch: str) -> Path:
    case = CASES[arch]
    return write_case(tmp / f"{arch}.gguf", arch, case.keys, case.tensors)


def _plan(args: list[str], env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    r = CliRunner().invoke(main, [*args, "--json"], env=env)
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        doc = {}
    return r.exit_code, doc, r.output


def _sums(doc: dict[str, Any]) -> tuple[int, int]:
    devs = doc["predicted"]["devices"]
    return sum(d["weights_bytes"] for d in devs), sum(d["kv_cache_bytes"] for d in devs)


def test_every_new_architecture_has_a_case() -> None:
    listed = set(MODEL_ARCH_NAMES.values())
    assert len(CASES) == 27 and not set(CASES) & listed
    for arch, case in CASES.items():
        assert case.loads or case.reason, arch
        assert unlisted_gguf_architecture(arch) is not None
    # as committed: 18 of the 27 load in llama-fit-params 0.3.36 (the rest: speculative drafts
    # that need their target's sizes, and graphs that assert on the tiny dimensions)
    assert len(LOADS) >= 18
    assert unlisted_gguf_architecture("llama") is None


@pytest.mark.parametrize("arch", LOADS)
def test_the_reader_marks_it(arch: str, tmp_path: Path) -> None:
    spec = spec_from_gguf(_file(tmp_path, arch))
    assert spec.arch.architecture == arch
    assert UNLISTED_NOTE in spec.artifacts[0].source and UNLISTED_NOTE in spec.source


@pytest.mark.parametrize("key", ["block_count", "embedding_length", "attention.head_count"])
def test_a_header_the_reader_cannot_read_names_the_architecture_first(
    key: str, tmp_path: Path
) -> None:
    arch = "mellum"
    case = CASES[arch]
    keys = [k for k in case.keys if k[0] != f"{arch}.{key}"]
    assert len(keys) == len(case.keys) - 1
    path = write_case(tmp_path / "m.gguf", arch, keys, case.tensors)
    with pytest.raises(ModelError) as info:
        spec_from_gguf(path)
    msg = str(info.value)
    assert f"general.architecture '{arch}'" in msg, msg
    assert msg.index(f"'{arch}'") < msg.index(f"{arch}.{key}"), msg
    code, _, out = _plan(["plan", "--simulate", "h100-sxm", "--model", str(path)], {})
    assert code == 2 and f"general.architecture '{arch}'" in out, out


@pytest.mark.llamacpp
@pytest.mark.parametrize("arch", LOADS)
def test_plan_and_estimate_ship_with_llama_cpps_figures(arch: str, tmp_path: Path) -> None:
    path = _file(tmp_path, arch)
    env = _env()
    cmds = {
        "plan": ["plan", "--simulate", "h100-sxm", "--model", str(path), "--context", str(CTX)],
        "estimate": ["estimate", "--gpu", "h100-sxm", "--model", str(path), "--context", str(CTX)],
    }
    for name, cmd in cmds.items():
        code, doc, out = _plan(cmd, env)
        assert code == 0, out
        notes = doc["predicted"]["notes"]
        summary = next(n for n in notes if n.startswith(SUMMARY))
        unlisted = unlisted_gguf_architecture(arch)
        assert any(n.startswith(f"{unlisted}: weights and KV") for n in notes), notes
        model = int(summary.split("): model ", 1)[1].split(" MiB", 1)[0])
        context = int(summary.split(", context ", 1)[1].split(" MiB", 1)[0])
        w, kv = _sums(doc)
        assert w // MIB >= model and kv // MIB >= context, (name, summary)

        # without the dry run: a refusal that says why, never the closed form alone
        for env_off, why in (
            (_env(PREFLIGHT_ENGINE_CHECK="off"), "PREFLIGHT_ENGINE_CHECK=off"),
            ({"PATH": "/usr/bin:/bin"}, "llama-fit-params is not on PATH"),
        ):
            code, doc, out = _plan(cmd, env_off)
            assert code == 3, out
            reason = doc["reasons"][0]
            assert f"general.architecture '{arch}'" in reason and why in reason, reason
            assert "closed form alone is not trusted" in reason


@pytest.mark.llamacpp
def test_a_file_llama_fit_params_cannot_load_is_refused(tmp_path: Path) -> None:
    failing = sorted(a for a, c in CASES.items() if not c.loads)
    refused = 0
    for arch in failing:
        path = _file(tmp_path, arch)
        try:
            spec_from_gguf(path)
        except ModelError as exc:
            assert f"general.architecture '{arch}'" in str(exc)
            continue
        code, doc, out = _plan(["plan", "--simulate", "h100-sxm", "--model", str(path)], _env())
        assert code == 3, (arch, out)
        assert "closed form alone is not trusted" in doc["reasons"][0], doc["reasons"]
        refused += 1
    assert refused >= 1
    # a name llama.cpp itself does not know: read like any other, refused by llama.cpp's loader
    llama = load_cases()["llama"]
    keys = [(k.replace("llama.", "llamaz."), t, v, s) for k, t, v, s in llama.keys]
    path = write_case(tmp_path / "z.gguf", "llamaz", keys, llama.tensors)
    code, doc, out = _plan(["plan", "--simulate", "h100-sxm", "--model", str(path)], _env())
    assert code == 3 and "'llamaz'" in doc["reasons"][0], out
    assert "llama-fit-params" in doc["reasons"][0], out


@pytest.mark.llamacpp
@pytest.mark.parametrize("arch", LOADS)
def test_closed_form_against_llama_fit_params(arch: str, tmp_path: Path) -> None:
    """For the report: the generic closed form's weights and KV beside llama.cpp's (not
    asserted equal: for these architectures llama.cpp's figures are the plan's)."""
    _binary()
    path = _file(tmp_path, arch)
    argv = (
        "llama-server", "--model", str(path), "--fit", "off", "--ctx-size", str(CTX),
        "--parallel", "1", "--n-gpu-layers", "0", "--flash-attn", "on",
    )  # fmt: skip
    ref = llama_fit(argv, timeout=60).host
    spec = spec_from_gguf(path)
    cfg = LlamaCppConfig(context=CTX, parallel=1, n_gpu_layers=0, flash_attn=True)
    cpu = estimate_llamacpp(spec, spec.artifacts[0], cfg).devices[-1]
    print(
        f"\n[new-arch] {arch}: model {ref.model_mib} MiB (closed form "
        f"{cpu.weights_bytes / MIB:.2f}), context {ref.context_mib} MiB (closed form "
        f"{cpu.kv_cache_bytes / MIB:.2f})"
    )
    # weights are the header's tensor bytes: exact to llama.cpp's whole-MiB rounding
    assert 0 <= cpu.weights_bytes // MIB - ref.model_mib <= 1


@pytest.mark.llamacpp
def test_run_folds_llama_cpps_dry_run_or_refuses(tmp_path: Path) -> None:
    """`run`'s check on the real devices (pipeline.check_with_engine; here the CPU)."""
    path = _file(tmp_path, "minimax-m3")
    env = {"PREFLIGHT_MODEL": str(path), "PREFLIGHT_CONTEXT": "4096", **_env()}
    unlisted = unlisted_gguf_architecture("minimax-m3")
    profile = device_profile(None, True, 64, 40.0)

    def checked(e: dict[str, str]) -> Plan:
        inputs = pipeline.prepare(e)
        p = pipeline.plan_on(inputs, profile, ("llama.cpp",))
        assert p.verdict == "ship", p.reasons
        return pipeline.check_with_engine(inputs, p, e)

    r = checked(env)
    assert r.verdict == "ship" and r.predicted is not None
    assert any(n.startswith("llama.cpp's own dry run of this command (") for n in r.predicted.notes)
    assert any(n.startswith(f"{unlisted}: weights and KV") for n in r.predicted.notes)
    plan_to_dict(r)
    for e, why in (
        ({**env, "PREFLIGHT_ENGINE_CHECK": "off"}, "PREFLIGHT_ENGINE_CHECK=off"),
        ({**env, "PATH": "/usr/bin:/bin"}, "llama-fit-params is not on PATH"),
    ):
        refused = checked(e)
        assert refused.verdict == "refuse" and refused.argv == ()
        assert refused.reasons[0].startswith(f"{unlisted}, and llama.cpp's own dry run cannot")
        assert why in refused.reasons[0]
        plan_to_dict(refused)


def test_a_draft_of_an_unlisted_architecture_is_refused_naming_it(tmp_path: Path) -> None:
    # llama.cpp's dry run leaves a draft out (server-only), so nothing would check its closed
    # form: the draft is refused before any probe, naming the flag and the architecture.
    arch = LOADS[0]
    draft = _file(tmp_path, arch)
    target = write_case(tmp_path / "t.gguf", "llama", *_listed("llama"))
    env = _env(PREFLIGHT_MODEL=str(target))
    with pytest.raises(FlagValueError) as e:
        pipeline.prepare(env, ("-md", str(draft)))
    assert "-md" in str(e.value) and repr(arch) in str(e.value)


def _listed(arch: str) -> tuple[Any, Any]:
    case = load_cases()[arch]
    return case.keys, case.tensors
