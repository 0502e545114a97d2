"""`gpu-preflight compose`: the stack written for a machine, co-resident services by priority.

The files in compose/ are this command's output (their first line says which command): a test
runs it again and compares. tests/e2e/test_static.py validates them against the compose spec.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from gpu_preflight import pipeline
from gpu_preflight.cli.main import main
from gpu_preflight.compose import CoService, build_stack, compose_document, parse_service
from gpu_preflight.errors import InvalidInput
from tests.plan.conftest import profile_for

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
FILES = sorted((ROOT / "compose").glob("*.yaml"))


def _planner(env=None):
    def plan(profile, reserve):
        extra = {"PREFLIGHT_RESERVE_GB": f"{reserve / GIB:g}"} if reserve else {}
        return pipeline.plan_on(
            pipeline.prepare({**(env or {}), **extra}), profile, ("vllm", "llama.cpp")
        )

    return plan


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_the_compose_files_are_this_commands_output(path):
    text = path.read_text()
    m = re.match(r"# Written by `gpu-preflight (compose[^`]*)`", text)
    assert m, f"{path.name} does not say which command wrote it"
    r = CliRunner().invoke(main, m[1].split()[0:1] + m[1].split()[1:], env={})
    assert r.exit_code == 0, r.output
    assert r.output == text, f"{path.name} is stale: run `make docs`"


def test_mixed_cards_get_one_server_each_and_mig_one_per_leaf():
    # An H200 alone holds the largest tier model at a long context; pipeline parallel with an
    # RTX 4090 beside it buys nothing, so each card gets its own server. (A 4090 beside a 3060 now
    # gets one server over both: vLLM 0.32's cheaper sampler leaves room for a 32B model there.)
    mixed = build_stack(profile_for("h200,rtx-4090"), [], _planner())
    assert mixed.layout == "per card" and [s.devices for s in mixed.servers] == [("0",), ("1",)]
    assert len({s.port for s in mixed.servers}) == 2
    mig = build_stack(profile_for("a100-80gb:3x2g.20gb"), [], _planner())
    assert mig.layout == "per MIG leaf" and len(mig.servers) == 3
    assert all(s.devices[0].startswith("MIG-") for s in mig.servers)
    assert all(s.plan.verdict == "ship" for s in mig.servers)


def test_mixed_cards_get_one_server_where_it_beats_the_best_card_alone():
    # vLLM pipeline parallel over an A100 80 GB and an A100 40 GB gives a longer context than the
    # 80 GB card alone: one service with both cards; the plan carries its layer partition.
    stack = build_stack(profile_for("a100-80gb,a100-40gb"), [], _planner())
    assert stack.layout == "one server" and [s.devices for s in stack.servers] == [("0", "1")]
    p = stack.servers[0].plan
    assert p.engine == "vllm" and "VLLM_PP_LAYER_PARTITION" in p.env
    doc = compose_document(stack)
    ids = doc["services"]["llm"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert ids["device_ids"] == ["0", "1"]


def _llm_total(stack) -> int:
    p = stack.servers[0].plan
    return sum(d.total_bytes for d in p.predicted.devices if d.device != "CPU")


def test_a_16_gb_card_with_asr_and_tts_gives_the_llm_what_is_left():
    profile = profile_for("t4")
    budgets, totals = [], []
    for asr in (1, 2, 4, 6):
        services = [CoService("asr", asr * GIB, 2, 0), CoService("tts", 2 * GIB, 1, 0)]
        stack = build_stack(profile, services, _planner())
        s = stack.servers[0]
        # The higher-priority services are reserved first, whole: never planned out for the LLM.
        assert s.reserve_bytes == (asr + 2) * GIB
        assert s.plan.verdict == "ship", s.plan.reasons
        budget = sum(d.budget_bytes for d in s.plan.predicted.devices if d.device != "CPU")
        budgets.append(budget)
        totals.append(_llm_total(stack))
        assert totals[-1] <= budget
    assert budgets == sorted(budgets, reverse=True) and budgets[0] > budgets[-1]
    assert totals[-1] < totals[0]
    doc = compose_document(stack)
    assert doc["services"]["llm"]["environment"]["PREFLIGHT_RESERVE_GB"] == "8"
    assert doc["services"]["asr"]["depends_on"] == {"llm": {"condition": "service_started"}}


def test_a_stack_that_cannot_fit_names_the_service_to_drop():
    services = [CoService("asr", 10 * GIB, 2, 0), CoService("tts", 8 * GIB, 1, 0)]
    with pytest.raises(InvalidInput) as info:
        build_stack(profile_for("t4"), services, _planner())
    assert "drop tts" in str(info.value)


def test_on_restart_the_llm_comes_back_smaller_when_memory_was_taken():
    profile = profile_for("rtx-4090")
    first = build_stack(profile, [CoService("asr", 4 * GIB, 2, 0)], _planner())
    # The ASR service took 6 GiB more than it said: the LLM re-plans against what is free now.
    gpu = profile.hardware.gpus.devices[0]
    less = dataclasses.replace(gpu, free_bytes=gpu.free_bytes - 6 * GIB)
    hw = dataclasses.replace(
        profile.hardware, gpus=dataclasses.replace(profile.hardware.gpus, devices=(less,))
    )
    later = build_stack(
        dataclasses.replace(profile, hardware=hw), [CoService("asr", 4 * GIB, 2, 0)], _planner()
    )
    a, b = first.servers[0].plan, later.servers[0].plan
    assert a.verdict == b.verdict == "ship"
    assert _llm_total(later) < _llm_total(first)


@pytest.mark.parametrize(
    "text", ["asr", "asr:0:1", "ASR:4:2", "asr:4:0", "asr:4:2:x", "a" * 40 + ":1:1"]
)
def test_bad_service_values_are_exit_2(text):
    with pytest.raises(InvalidInput) as info:
        parse_service(text)
    assert "NAME:GIB:PRIORITY" in str(info.value) or "GiB" in str(info.value)
    r = CliRunner().invoke(main, ["compose", "--simulate", "t4", "--with", text])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_the_yaml_parses_back():
    r = CliRunner().invoke(main, ["compose", "--simulate", "2xa100-80gb"])
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(r.output)
    assert doc["services"]["llm"]["deploy"]["resources"]["reservations"]["devices"][0][
        "device_ids"
    ] == ["0", "1"]


def _compose_cli() -> list[str] | None:
    """`docker compose` (the v2 plugin) or Debian 12's `docker-compose` (v1): both check a file
    with `config` alone, without a daemon. None when neither is installed."""
    import shutil
    import subprocess

    if shutil.which("docker"):
        r = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, check=False
        )
        if r.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _stacks() -> list[tuple[str, list[str]]]:
    written = [(p.name, ["--file", str(p)]) for p in FILES]
    made = [
        ("mixed pair", ["compose", "--simulate", "rtx-4090,rtx-3060"]),
        ("8x H100", ["compose", "--simulate", "8xh100-sxm"]),
        ("MIG", ["compose", "--simulate", "a100-80gb:3x2g.20gb"]),
        ("asr+tts", ["compose", "--simulate", "t4", "--with", "asr:4:2", "--with", "tts:2:1"]),
    ]
    return written + made


@pytest.mark.parametrize("name,how", _stacks(), ids=[n for n, _ in _stacks()])
def test_docker_compose_config_accepts_what_compose_writes(name, how, tmp_path):
    import subprocess

    cli = _compose_cli()
    if cli is None:
        pytest.skip(
            "neither `docker compose` nor `docker-compose` is installed (.ci/system-deps.sh)"
        )
    if how[0] == "--file":
        path = Path(how[1])
    else:
        r = CliRunner().invoke(main, how)
        assert r.exit_code == 0, r.output
        path = tmp_path / "compose.yaml"
        path.write_text(r.output)
    # The co-resident services' images are the user's to name (a required variable).
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "ASR_IMAGE": "asr:1", "TTS_IMAGE": "tts:1"}
    r2 = subprocess.run(
        [*cli, "--file", str(path), "config", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert r2.returncode == 0, f"{name}: {r2.stderr}"
