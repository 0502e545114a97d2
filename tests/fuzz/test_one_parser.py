"""One parser per variable (issue 20, item 5): what the probe options accept is what the flag
table's row accepts, and what docs/flags.md says it accepts.

Before, ``cli/probe_opts.py`` parsed PREFLIGHT_DRY_RUN, PREFLIGHT_BENCH and
PREFLIGHT_PINNED_CAP_GB a second time by hand: PREFLIGHT_DRY_RUN=enabled passed the table and
failed there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_preflight.inputs.flags import FLAGS, FlagValueError
from gpu_preflight.inputs.probe_options import flag, probe_options

from .conftest import FUZZ

DOCS = Path(__file__).resolve().parents[2] / "docs" / "flags.md"
# Every variable inputs/probe_options.py reads, and how it is read there.
PROBE_VARIABLES = (
    "PREFLIGHT_DRY_RUN",
    "PREFLIGHT_BENCH",
    "PREFLIGHT_BENCH_DIR",
    "PREFLIGHT_PINNED_CAP_GB",
)
WORDS = (
    "1", "0", "true", "false", "yes", "no", "on", "off", "enabled", "disabled", "auto", "force",
    "maybe", " On ", "16", "0.5", "-1", "4097", "nan", "inf", "1e3", "/bench", "", " ",
)  # fmt: skip


def _row(variable: str) -> Any:
    return next(f for f in FLAGS if f.env == variable)


def _table_accepts(variable: str, raw: str) -> bool:
    if raw.strip() == "":
        return True  # unset
    try:
        _row(variable).parser.parse(variable, raw)
    except FlagValueError:
        return False
    return True


def _probe_accepts(variable: str, raw: str) -> bool:
    env = {variable: raw}
    try:
        if variable == "PREFLIGHT_DRY_RUN":
            flag(env, variable)
        else:
            # --no-bench: the directory is not checked, only the values parsed.
            probe_options(env, False, None, None)
    except FlagValueError:
        return False
    return True


def test_dry_run_enabled_is_one_value_for_both():
    """Case 5 of issue 20: accepted by the table's parser, rejected by probe_opts on 0334952."""
    assert _table_accepts("PREFLIGHT_DRY_RUN", "enabled")
    assert flag({"PREFLIGHT_DRY_RUN": "enabled"}, "PREFLIGHT_DRY_RUN") is True
    assert flag({"PREFLIGHT_DRY_RUN": "disabled"}, "PREFLIGHT_DRY_RUN") is False
    assert flag({}, "PREFLIGHT_DRY_RUN") is False


@pytest.mark.parametrize("variable", PROBE_VARIABLES)
def test_docs_say_what_the_row_accepts(variable):
    row = _row(variable)
    line = next(x for x in DOCS.read_text().splitlines() if f"`{variable}`" in x)
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)]
    assert cells[5].replace("\\|", "|") == row.parser.accepted


@settings(FUZZ, max_examples=150)
@given(
    variable=st.sampled_from(PROBE_VARIABLES),
    raw=st.one_of(st.sampled_from(WORDS), st.text(max_size=12)),
)
def test_probe_options_accept_what_the_table_accepts(variable, raw):
    if "\x00" in raw:
        return  # no environment can carry a NUL
    assert _probe_accepts(variable, raw) == _table_accepts(variable, raw), (variable, raw)
