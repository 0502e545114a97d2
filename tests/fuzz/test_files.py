"""Hostile NVML scenario, profile, tier and model-catalog files: mutated valid documents, non-UTF-8,
deep nesting, non-finite numbers. Each loads, or fails as InvalidInput naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_preflight.inputs.errors import InvalidInput
from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.plan.tiers import builtin_tiers_text, load_tiers
from gpu_preflight.probe.simulate import simulate
from gpu_preflight.profile import read_profile
from tests.fuzz.conftest import FUZZ, expect_clean, fresh
from tests.fuzz.hostile import RAW_TOKENS, deep, dumps, mutated

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvml"
SCENARIO = json.loads((FIXTURES / "a100_mig.json").read_text())
TIERS = json.loads(builtin_tiers_text())
MODELS = json.loads(
    (Path(__file__).resolve().parents[2] / "entrypoint/gpu_preflight/data/models.json").read_text()
)
MODELS = {**MODELS, "models": MODELS["models"][:3]}


def _profile_doc() -> dict:
    from gpu_preflight.probe.collect import simulated_hardware
    from gpu_preflight.profile import make_profile
    from gpu_preflight.serde import to_dict

    return to_dict(
        make_profile(simulated_hardware("rtx-4090", 64 * 2**30, None), simulated="rtx-4090")
    )


PROFILE = _profile_doc()

# (what, file name, loader) - every loader takes the path of a user-supplied file.
LOADERS = {
    "scenario": ("s.json", lambda p: simulate(str(p))),
    "profile": ("p.json", read_profile),
    "tiers": ("t.json", lambda p: load_tiers({"PREFLIGHT_TIERS_FILE": str(p)})),
    "models": ("m.json", load_catalog),
}
BASES = {"scenario": SCENARIO, "profile": PROFILE, "tiers": TIERS, "models": MODELS}


def _load(base: Path, what: str, text: str | bytes) -> object:
    name, loader = LOADERS[what]
    p = fresh(base, name)
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return expect_clean(what, lambda: loader(p), names=p)


@pytest.mark.parametrize("what", list(LOADERS))
def test_valid_bases_load(tmp_path, what):
    out = _load(tmp_path, what, json.dumps(BASES[what]))
    assert not isinstance(out, BaseException), out


@settings(FUZZ, max_examples=800)
@given(doc=mutated(SCENARIO))
def test_mutated_scenarios(fuzz_dir, doc):
    _load(fuzz_dir, "scenario", dumps(doc))


@settings(FUZZ, max_examples=800)
@given(doc=mutated(PROFILE))
def test_mutated_profiles(fuzz_dir, doc):
    _load(fuzz_dir, "profile", dumps(doc))


@settings(FUZZ, max_examples=400)
@given(doc=mutated(TIERS))
def test_mutated_tiers(fuzz_dir, doc):
    _load(fuzz_dir, "tiers", dumps(doc))


@settings(FUZZ, max_examples=400)
@given(doc=mutated(MODELS))
def test_mutated_models(fuzz_dir, doc):
    _load(fuzz_dir, "models", dumps(doc))


@pytest.mark.parametrize("what", list(LOADERS))
@pytest.mark.parametrize(
    "text",
    [
        b"\xff\xfe\x00{",
        b"\xc3\x28",
        deep(100_000).encode(),
        ("{" + '"a":' * 10).encode(),
        b"",
        b"null",
        b"[]",
        *[f'{{"schema_version": {t}}}'.encode() for t in RAW_TOKENS],
    ],
    ids=lambda t: repr(t[:12]),
)
def test_hostile_text(tmp_path, what, text):
    assert isinstance(_load(tmp_path, what, text), InvalidInput)


def test_scenario_without_driver_versions(tmp_path):
    doc = {k: v for k, v in SCENARIO.items() if k not in ("driver_version", "cuda_driver_version")}
    out = _load(tmp_path, "scenario", json.dumps(doc))
    assert not isinstance(out, BaseException), out
    assert out.gpus.devices


def test_scenario_with_too_many_devices(tmp_path):
    doc = {**SCENARIO, "devices": [SCENARIO["devices"][0]] * 1000}
    assert "at most" in str(_load(tmp_path, "scenario", json.dumps(doc)))


@settings(FUZZ, max_examples=60)
@given(value=st.sampled_from([*RAW_TOKENS, "-5", "1e300", "0.0", '"x"']))
def test_tier_numbers(fuzz_dir, value):
    doc = json.loads(builtin_tiers_text())
    doc["tiers"][0]["target_context"] = "__X__"
    text = json.dumps(doc).replace('"__X__"', value)
    out = _load(fuzz_dir, "tiers", text)
    assert isinstance(out, InvalidInput)
