"""Every variable the entrypoint reads in a Kubernetes pod is a row of the flag table
(inputs/flags.py), and cluster/lws.py reads it through that row's parser: one parser per
variable, so what lws accepts is what the table (and docs/flags.md) says it accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_preflight.cli.main import main
from gpu_preflight.cluster import lws
from gpu_preflight.inputs.flags import FLAGS, FlagValueError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "flags.md"
VARIABLES = ("LWS_GROUP_SIZE", "LWS_WORKER_INDEX", "LWS_LEADER_ADDRESS", "PREFLIGHT_K8S_PLAN")
GOOD = {"LWS_GROUP_SIZE": "4", "LWS_WORKER_INDEX": "1", "LWS_LEADER_ADDRESS": "llm-0.llm.ns"}
WORDS = (
    "0", "1", "3", "63", "64", "65", "-1", "1.5", "two", " 2 ", "", " ", "9" * 40, "leader",
    "10.0.0.7", "fd00::7", "bad host", "a" * 254, "-lead", "{}", "[]", '{"pool":"x"}', "nan",
)  # fmt: skip


def _row(variable: str):
    return next(f for f in FLAGS if f.env == variable)


@pytest.mark.parametrize("variable", [*VARIABLES, "KUBECONFIG"])
def test_each_variable_is_a_row_and_in_the_docs(variable):
    row = _row(variable)
    assert row.role == "setting" and row.owner == "preflight"
    assert f"`{variable}`" in DOCS.read_text()


def _table_accepts(variable: str, raw: str) -> bool:
    if raw.strip() == "":
        return True  # unset
    try:
        _row(variable).parser.parse(variable, raw)
    except FlagValueError:
        return False
    return True


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(
    st.sampled_from(VARIABLES[:3]),
    st.one_of(st.sampled_from(WORDS), st.text(max_size=20)),
)
def test_lws_accepts_what_the_table_accepts(variable, raw):
    # Index 0 is a rank of every group; every index the table takes is a rank of 64.
    env = {**GOOD, "LWS_GROUP_SIZE": "64", "LWS_WORKER_INDEX": "0", variable: raw}
    try:
        lws.rank_env(env)
        ok = True
    except FlagValueError as exc:
        ok = False
        assert exc.variable == variable and "Accepted:" in str(exc)
    if raw.strip() == "" and variable != "LWS_GROUP_SIZE":
        assert not ok  # a group of 64 needs its index and leader
    else:
        assert ok == _table_accepts(variable, raw), (variable, raw)


def test_an_index_outside_the_group_names_both_variables():
    with pytest.raises(FlagValueError, match=r"LWS_WORKER_INDEX='4'.*0 to 3.*LWS_GROUP_SIZE=4"):
        lws.rank_env({**GOOD, "LWS_WORKER_INDEX": "4"})


@pytest.mark.parametrize("raw", ["{not json", "[1]", '{"pool": "p"}', "x" * 20000])
def test_a_bad_pin_names_the_variable_and_what_it_accepts(raw):
    with pytest.raises(FlagValueError, match=r"PREFLIGHT_K8S_PLAN=.*Accepted: the JSON object"):
        lws._read_pin({"PREFLIGHT_K8S_PLAN": raw})


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("LWS_GROUP_SIZE", "two"),
        ("LWS_WORKER_INDEX", "-1"),
        ("LWS_LEADER_ADDRESS", "bad host"),
        ("PREFLIGHT_K8S_PLAN", "{not json"),
    ],
)
def test_plan_is_exit_2_naming_a_bad_pod_variable(variable, raw):
    r = CliRunner().invoke(main, ["plan", "--simulate", "rtx-4090"], env={variable: raw})
    assert r.exit_code == 2, r.output
    assert variable in r.output and "Accepted:" in r.output and "Traceback" not in r.output


def test_the_writers_kubeconfig_and_pod_variables_are_never_carried_into_a_pod(k8s, tmp_path):
    env = {
        "KUBECONFIG": str(tmp_path / "my-kubeconfig"),
        "LWS_GROUP_SIZE": "2",
        "LWS_WORKER_INDEX": "1",
        "LWS_LEADER_ADDRESS": "elsewhere",
        "PREFLIGHT_K8S_PLAN": '{"pool":"old"}',
    }
    r = k8s("--simulate", "l4=1x1xl4", env=env)
    assert r.exit_code == 0, r.output
    import yaml

    dep = next(d for d in yaml.safe_load_all(r.stdout) if d and d["kind"] == "Deployment")
    pod_env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert not {"KUBECONFIG", "LWS_GROUP_SIZE", "LWS_WORKER_INDEX", "LWS_LEADER_ADDRESS"} & set(
        pod_env
    )
    assert pod_env["PREFLIGHT_K8S_PLAN"] != env["PREFLIGHT_K8S_PLAN"]  # the pool's own pin
    assert str(tmp_path) not in r.stdout
