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
    mixed = build_stack(profile_for("rtx-4090,rtx-3060"), [], _planner())
    assert mixed.layout == "per card" and [s.devices for s in mixed.servers] == [("0",), ("1",)]
    assert len({s.port for s in mixed.servers}) == 2
    mig = build_stack(profile_for("a100-80gb:3x2g.20gb"), [], _planner())
    assert mig.layout == "per MIG leaf" and len(mig.servers) == 3
    assert all(s.devices[0].startswith("MIG-") for s in mig.servers)
    assert all(s.plan.verdict == "ship" for s in mig.servers)


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
