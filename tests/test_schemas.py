"""Every schema is a valid 2020-12 schema, and every built-in data file validates against its own."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from gpu_preflight.schemas import load_schema, validate

SCHEMAS = sorted((Path(__file__).resolve().parents[1] / "schemas").glob("*.schema.json"))


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_schema_is_valid_and_identified(path):
    schema = json.loads(path.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema") and schema["$id"].startswith("https://")


@pytest.mark.parametrize(
    ("data", "schema"), [("gpus.json", "gpus"), ("models.json", "models"), ("tiers.json", "tiers")]
)
def test_builtin_data_validates(data, schema):
    doc = json.loads((resources.files("gpu_preflight") / "data" / data).read_text())
    validate(schema, doc, data)
    assert load_schema(schema)["$id"]


def test_packaged_schemas_are_the_repo_schemas():
    # The wheel force-includes schemas/; the editable install reads the repo's copy.
    assert load_schema("profile") == json.loads(
        (Path(__file__).resolve().parents[1] / "schemas/profile.schema.json").read_text()
    )
