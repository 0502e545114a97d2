"""The tier table: built-in, a user's file, and what is wrong with a bad one."""

from __future__ import annotations

import json

import pytest
from tests.plan.conftest import profile_for

from gpu_preflight.inputs.errors import TierTableError
from gpu_preflight.inputs.overrides import parse_overrides
from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.plan.select import Catalogue, plan
from gpu_preflight.plan.tiers import builtin_tiers_text, load_tiers

CATALOG = load_catalog()


def test_builtin_tiers_reference_real_catalog_models():
    tiers = load_tiers({})
    assert tiers.tiers[0].min_vram_gib == 0
    for t in tiers.tiers:
        for entry in t.models:
            model_id, _, quant = entry.partition("@")
            spec = CATALOG.get(model_id)
            assert spec is not None, entry
            if quant:
                assert any(a.quant == quant for a in spec.artifacts), entry


def test_user_tier_file_is_used_and_speculative_is_reported(tmp_path):
    doc = json.loads(builtin_tiers_text())
    for t in doc["tiers"]:
        t["speculative"] = True
        if t["id"] == "gpu-24gb":
            t["models"] = ["qwen3-14b@Q8_0"]
    f = tmp_path / "tiers.json"
    f.write_text(json.dumps(doc))
    tiers = load_tiers({"PREFLIGHT_TIERS_FILE": str(f)})
    assert tiers.origin.startswith("PREFLIGHT_TIERS_FILE=")
    p = plan(profile_for("rtx-4090"), Catalogue(CATALOG.models), tiers, parse_overrides({}))
    assert p.model.id == "qwen3-14b" and p.model.quant == "Q8_0"
    # The tier asks for a draft; either it is planned, or the plan says why not.
    if p.draft is None:
        assert any("speculative decoding: draft qwen3-0.6b" in n for n in p.predicted.notes)
    else:
        assert p.draft.id == "qwen3-0.6b" and "--spec-draft-hf" in p.argv


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d["tiers"][1].update(min_context=10**6), "min_context"),
        (lambda d: d["tiers"].append(dict(d["tiers"][1])), "appears twice"),
        (
            lambda d: d.update(tiers=[t for t in d["tiers"] if t["min_vram_gib"] > 0]),
            "min_vram_gib 0",
        ),
        (lambda d: d["tiers"][0].update(engines=["tgi"]), "engines"),
    ],
)
def test_bad_tier_file_names_the_problem(tmp_path, mutate, fragment):
    doc = json.loads(builtin_tiers_text())
    mutate(doc)
    f = tmp_path / "tiers.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(TierTableError, match=fragment):
        load_tiers({"PREFLIGHT_TIERS_FILE": str(f)})


def test_tier_naming_an_unknown_model_is_an_error(tmp_path):
    doc = json.loads(builtin_tiers_text())
    doc["tiers"][-1]["models"] = ["llama-9-1t@Q4_K_M"]
    f = tmp_path / "tiers.json"
    f.write_text(json.dumps(doc))
    tiers = load_tiers({"PREFLIGHT_TIERS_FILE": str(f)})
    with pytest.raises(TierTableError, match="llama-9-1t"):
        plan(profile_for("h200"), Catalogue(CATALOG.models), tiers, parse_overrides({}))
