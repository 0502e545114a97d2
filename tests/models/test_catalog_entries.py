"""The built-in catalog (data/models.json): every entry is an architecture the memory model knows,
cites its config.json and its artifacts' file listings, and its architecture facts reproduce the
parameter count its model card publishes."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from tests.models.test_architectures import DEEPSEEK_V3, GLM_4_6, QWEN3_NEXT, _arch

from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.layout import GGUF_ARCHITECTURES, count_params

CATALOG = load_catalog()
RAW = json.loads((resources.files("gpu_preflight") / "data" / "models.json").read_text("utf-8"))
HF = "https://huggingface.co/"


def test_every_entry_is_an_architecture_the_memory_model_knows() -> None:
    unknown = {m.id: m.arch.architecture for m in CATALOG.models}
    unknown = {k: v for k, v in unknown.items() if v not in GGUF_ARCHITECTURES}
    assert unknown == {}


def test_every_entry_cites_its_config_and_every_artifact_its_file_listing() -> None:
    for m in RAW["models"]:
        assert m["source"] == f"{HF}{m['hf_id']}/blob/main/config.json", m["id"]
        for a in m["artifacts"]:
            assert a["source"].startswith(f"{HF}{a['repo']}/tree/"), (m["id"], a["repo"])
            if a["engine"] == "llama.cpp":
                assert a.get("file", "").endswith(".gguf"), (m["id"], a)


# Total parameters as each model card states them (billions), and how close the count from the
# catalog's architecture facts must come: the cards round (4.0B, 30.5B); GLM-4.6's 355B and
# DeepSeek's 671B are the published totals (GLM's includes its MTP block, which neither engine
# loads and the catalog does not count).
PUBLISHED_B = {
    "qwen3-4b-instruct-2507": (4.0, 0.02),
    "qwen3-4b-thinking-2507": (4.0, 0.02),
    "qwen3-30b-a3b-instruct-2507": (30.5, 0.01),
    "qwen3-30b-a3b-thinking-2507": (30.5, 0.01),
    "qwen3-coder-30b-a3b-instruct": (30.5, 0.01),
    "qwen3-235b-a22b-instruct-2507": (235.0, 0.01),
    "llama-3.3-70b-instruct": (70.6, 0.01),
    "gemma-3-1b-it": (1.0, 0.03),
    "phi-4-mini-instruct": (3.8, 0.02),
    "phi-4-reasoning-plus": (14.7, 0.01),
    "qwen3-next-80b-a3b-instruct": (80.0, 0.01),
    "glm-4.6": (355.0, 0.015),
    "deepseek-r1": (671.0, 0.005),
}


@pytest.mark.parametrize("model_id", sorted(PUBLISHED_B))
def test_catalog_facts_reproduce_the_published_parameter_count(model_id: str) -> None:
    spec = CATALOG.get(model_id)
    assert spec is not None, model_id
    published, tol = PUBLISHED_B[model_id]
    total = count_params(spec.arch).total / 1e9
    assert abs(total - published) / published < tol, (model_id, total)


@pytest.mark.parametrize(
    ("model_id", "config"),
    [
        ("deepseek-r1", DEEPSEEK_V3),
        ("glm-4.6", GLM_4_6),
        ("qwen3-next-80b-a3b-instruct", QWEN3_NEXT),
    ],
)
def test_new_architecture_entries_are_what_the_config_reader_reads(
    model_id: str, config: dict[str, object]
) -> None:
    # The published config.json texts tests/models/test_architectures.py carries (cited there),
    # read by models/hf_dir.arch_from_config: the catalog holds exactly those facts.
    spec = CATALOG.get(model_id)
    assert spec is not None and spec.arch == _arch(config)
