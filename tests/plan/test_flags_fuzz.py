"""Every row of the flag table, given hostile text, is a clear exit 2, never a traceback.

Hypothesis draws values for each environment variable and engine flag of the table (huge numbers,
5,000-digit integers, non-finite floats, 5,000-character strings, control characters, empty and
blank text). Through the real CLI, each must exit 0/2/3, with a message naming the variable or
flag and what is accepted when it is 2; a value equal to a secret is never echoed back.
"""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_preflight.cli.main import main
from gpu_preflight.inputs.flags import FLAGS, FlagValueError
from gpu_preflight.inputs.overrides import parse_overrides

HOSTILE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "9" * 5000,
            "-" + "9" * 5000,
            "nan",
            "inf",
            "-inf",
            "1e400",
            "0x10",
            "٣",  # a non-ASCII digit: int() would take it
            "x" * 5000,
            " ",
            "\t\n",
            "1\x00",
            "-1",
            "0",
            "1.5",
            "32k",
            "999999999999999999999",
        ]
    ),
)
ENV_ROWS = [f for f in FLAGS if f.env and f.role != "setting"]
ALL_ENV_ROWS = [f for f in FLAGS if f.env]
ARG_ROWS = [f for f in FLAGS if f.spellings and f.takes_value and f.role != "secret"]


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(st.sampled_from(ALL_ENV_ROWS), HOSTILE)
def test_parse_env_value_is_a_value_or_a_named_error(row, raw):
    t0 = time.perf_counter()
    try:
        parse_overrides({row.env: raw})
    except FlagValueError as exc:
        assert row.env in str(exc) and "Accepted:" in str(exc)
        assert len(str(exc)) < 2000  # the value is truncated, not echoed whole
    assert time.perf_counter() - t0 < 0.5


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(st.sampled_from(ARG_ROWS), HOSTILE)
def test_parse_engine_flag_value_is_a_value_or_a_named_error(row, raw):
    spelling = row.spellings[-1]
    try:
        parse_overrides({}, [spelling, raw])
    except FlagValueError as exc:
        assert spelling in str(exc) and "Accepted:" in str(exc)


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(st.sampled_from(ENV_ROWS), HOSTILE)
def test_plan_cli_never_shows_a_traceback(row, raw):
    if "\x00" in raw:
        return  # an environment cannot hold NUL (execve); tested at the parser above
    r = CliRunner().invoke(main, ["plan", "--simulate", "rtx-4090"], env={row.env: raw})
    assert r.exit_code in (0, 2, 3), (row.env, raw, r.output, r.exception)
    assert "Traceback" not in r.output
    if r.exit_code == 2:
        assert "gpu-preflight: error:" in r.output


@pytest.mark.parametrize("var", ["PREFLIGHT_MODEL", "PREFLIGHT_TIER", "LLAMA_ARG_HF_REPO"])
def test_a_secret_pasted_into_another_variable_is_masked_in_plan(var):
    token = "hf_abcdefghijklmnopqrstuvwxyz0123"
    r = CliRunner().invoke(
        main, ["plan", "--simulate", "rtx-4090"], env={"HF_TOKEN": token, var: token}
    )
    assert r.exit_code == 2 and token not in r.output, r.output
    assert var in r.output


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"PREFLIGHT_DRY_RUN": " "}, None),
        ({"PREFLIGHT_DRY_RUN": ""}, None),
        ({"PREFLIGHT_DRY_RUN": "maybe"}, "PREFLIGHT_DRY_RUN='maybe'"),
        ({"PREFLIGHT_HOST": "-1"}, "PREFLIGHT_HOST='-1'"),
        ({"PREFLIGHT_PORT": "9" * 5000}, "PREFLIGHT_PORT="),
        ({"PREFLIGHT_MODEL": "m" * 5000}, "5000 characters"),
    ],
)
def test_documented_edge_values(env, fragment):
    if fragment is None:
        parse_overrides(env)  # empty or blank: unset, everywhere
        return
    with pytest.raises(FlagValueError) as info:
        parse_overrides(env)
    assert fragment in str(info.value)


def _options() -> list[tuple[str, str]]:
    """(command, option) for every option of every command that takes a value."""
    out = []
    for name, cmd in main.commands.items():
        for p in cmd.params:
            if p.param_type_name == "option" and not p.is_flag and p.opts[0] != "--help":
                out.append((name, p.opts[0]))
    return out


OPTIONS = _options()
# What each command needs besides the option under test, so that it gets as far as using it.
BASE = {
    "probe": ["probe", "--json", "--no-bench", "--simulate", "rtx-4090"],
    "gpus": ["gpus", "--json"],
    "plan": ["plan", "--json", "--simulate", "rtx-4090"],
    "estimate": ["estimate", "--json", "--model", "qwen3-8b", "--context", "4096"],
    "matrix": ["matrix", "--json", "--gpus", "rtx-4090", "--models", "qwen3-8b"],
    "tiers": ["tiers", "--json"],
}


@settings(
    max_examples=120,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(st.sampled_from(OPTIONS), HOSTILE)
def test_every_cli_option_with_hostile_text_is_a_clear_exit(option, raw):
    command, opt = option
    if "\x00" in raw or command not in BASE:
        return
    args = list(BASE[command])
    if opt in args:  # replace the base's own value for this option
        i = args.index(opt)
        del args[i : i + 2]
    if command == "estimate" and opt not in ("--gpu",):
        args += ["--cpu"]
    if opt == "--out":
        return  # a path to write: tests/fuzz covers the filesystem faults
    r = CliRunner().invoke(main, [*args, opt, raw])
    assert r.exit_code in (0, 2, 3), (command, opt, raw, r.output, r.exception)
    assert "Traceback" not in r.output, (command, opt, raw, r.output)
    assert r.exception is None or isinstance(r.exception, SystemExit), (opt, raw, r.exception)


def test_the_option_list_is_complete():
    assert ("plan", "--model") in OPTIONS and ("estimate", "--gpu") in OPTIONS
    assert ("matrix", "--gpus") in OPTIONS and ("plan", "--host-ram") in OPTIONS
