"""The real CLI on hostile files and option values: exit 2 (or 3 / 0), a message naming the file or
option, never a traceback, never a hang. Driven through click's CliRunner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import FUZZ, expect_clean, fresh
from tests.fuzz.hostile import deep, dumps, mutated
from tests.fuzz.test_files import SCENARIO
from tests.fuzz.test_gguf import VALID

main = pytest.importorskip("gpu_preflight.cli.main").main


def _cli(args: list[str], env: dict[str, str] | None = None, names: str | None = None) -> object:
    runner = CliRunner()
    result = expect_clean(
        "cli", lambda: runner.invoke(main, args, env=env or {}, catch_exceptions=True)
    )
    out = result.output + (getattr(result, "stderr", "") or "")
    assert "Traceback" not in out
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), f"{args}: {exc!r}\n{out}"
    assert result.exit_code in (0, 2, 3), (args, result.exit_code, out)
    if result.exit_code == 2 and names:
        assert names in out, f"{args}: message does not name {names}: {out}"
    return result


def _place(p: Path, kind: str) -> Path:
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dir":
        p.mkdir()
    elif kind == "devzero":
        p.symlink_to("/dev/zero")
    return p


@pytest.mark.parametrize("kind", ["fifo", "dir", "devzero"])
def test_plan_profile_of_the_wrong_kind(tmp_path, kind):
    p = _place(tmp_path / "p.json", kind)
    r = _cli(["plan", "--profile", str(p), "--json"], names=str(p))
    assert r.exit_code == 2


def test_plan_profile_dev_zero_directly():
    r = _cli(["plan", "--profile", "/dev/zero"], names="/dev/zero")
    assert r.exit_code == 2


@pytest.mark.parametrize("kind", ["fifo", "dir", "devzero"])
def test_simulate_file_of_the_wrong_kind(tmp_path, kind):
    p = _place(tmp_path / "s.json", kind)
    r = _cli(["plan", "--simulate", str(p), "--json"], names=str(p))
    assert r.exit_code == 2


@pytest.mark.parametrize("kind", ["fifo", "dir", "devzero"])
def test_tiers_file_of_the_wrong_kind(tmp_path, kind):
    p = _place(tmp_path / "t.json", kind)
    r = _cli(
        ["tiers", "--json"], env={"PREFLIGHT_TIERS_FILE": str(p)}, names="PREFLIGHT_TIERS_FILE"
    )
    assert r.exit_code == 2


def test_tiers_json_round_trips(tmp_path):
    r = _cli(["tiers", "--json"])
    assert r.exit_code == 0
    p = tmp_path / "tiers.json"
    p.write_text(r.output)
    again = _cli(["tiers", "--json"], env={"PREFLIGHT_TIERS_FILE": str(p)})
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["tiers"] == json.loads(r.output)["tiers"]


@settings(FUZZ, max_examples=80)
@given(doc=mutated(SCENARIO))
def test_plan_on_mutated_scenarios(fuzz_dir, doc):
    p = fresh(fuzz_dir, "s.json")
    p.write_text(dumps(doc))
    _cli(["plan", "--simulate", str(p), "--json", "--model", "qwen3-0.6b"], names=str(p))


@pytest.mark.parametrize("text", [b"\xff\xfe", deep(5000).encode(), b'{"schema_version": NaN}'])
def test_plan_on_hostile_profile_text(tmp_path, text):
    p = tmp_path / "p.json"
    p.write_bytes(text)
    assert _cli(["plan", "--profile", str(p)], names=str(p)).exit_code == 2


@settings(FUZZ, max_examples=60)
@given(cut=st.integers(0, len(VALID) - 1))
def test_estimate_on_truncated_gguf(fuzz_dir, cut):
    p = fresh(fuzz_dir, "m.gguf")
    p.write_bytes(VALID[:cut])
    r = _cli(
        ["estimate", "--model", str(p), "--engine", "llama.cpp", "--context", "2048", "--cpu"],
        names=str(p),
    )
    assert r.exit_code == 2


@pytest.mark.parametrize("option", ["--host-ram", "--host-bandwidth"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "-1", "0", "abc", "", "9" * 5000])
def test_host_options_refuse_non_finite_and_out_of_range(option, value):
    r = _cli(["plan", "--simulate", "rtx-4090", option, value, "--json"], names=option)
    assert r.exit_code == 2 and "Accepted" in r.output
    assert "nan-nan" not in r.output and "--simulate" not in r.output.split("Accepted")[0][-40:]


def _walk(doc: object, path: str = "$"):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, doc


@st.composite
def odd_architectures(draw: st.DrawFn) -> dict[str, int]:
    """Architectures every reader accepts, out to the edges of layout.ARCH_RULES."""
    edge = st.sampled_from
    return {
        "n_layers": draw(st.one_of(st.integers(1, 64), edge([1, 1024]))),
        "n_embd": draw(st.one_of(st.integers(1, 8192), edge([1, 2**18]))),
        "n_head": draw(st.one_of(st.integers(1, 64), edge([1]))),
        "n_kv": draw(st.integers(1, 64)),
        "vocab": draw(st.one_of(st.integers(1, 300_000), edge([1, 2**24]))),
        "ctx": draw(st.one_of(st.integers(1, 2**20), edge([1, 2**30]))),
    }


@settings(FUZZ, max_examples=80)
@given(a=odd_architectures(), gpu=st.sampled_from(["rtx-4090", "2xa100-80gb", "l4"]))
def test_plans_from_odd_files_have_sane_numbers(fuzz_dir, a, gpu):
    """A file that passes every bound must give a plan (or a refusal) with finite, non-negative
    memory: never the negative KV bytes an embedding_length of -1 used to give."""
    from tests.support.gguf_factory import raw_gguf, raw_llama_kvs, raw_llama_tensors

    if a["n_embd"] < a["n_head"]:
        a["n_head"] = a["n_embd"]
    kvs = [
        e for e in raw_llama_kvs(a["n_layers"], a["n_embd"], a["n_head"]) if "count_kv" not in e[0]
    ]
    kvs = [e for e in kvs if e[0] != "llama.context_length"]
    kvs += [("llama.attention.head_count_kv", "u32", min(a["n_kv"], a["n_head"]))]
    kvs += [("llama.context_length", "u32", a["ctx"])]
    tensors, size = raw_llama_tensors(a["n_layers"], a["n_embd"], a["vocab"])
    p = fresh(fuzz_dir, "odd.gguf")
    head = raw_gguf(kvs, tensors)
    with p.open("wb") as f:
        f.write(head)
        f.truncate(len(head) + size)  # sparse: the data is a hole
    r = _cli(["plan", "--simulate", gpu, "--model", str(p), "--json"], names=str(p))
    if r.exit_code in (0, 3):
        doc = json.loads(r.output)
        for where, v in _walk(doc):
            if isinstance(v, float):
                assert v == v and v not in (float("inf"), float("-inf")), (where, v)
            if isinstance(v, (int, float)) and where.endswith("_bytes"):
                assert v >= 0, (where, v)
