"""Bad input to `gpu-preflight k8s`: exit 2 naming the value, never a traceback, bounded in time
(the fuzz suite's expect_clean: under 2 s a case, nothing hangs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gpu_preflight.cluster.inventory import CLUSTER_FILE_LIMIT, load_cluster_file, parse_simulate
from gpu_preflight.errors import InvalidInput
from tests.fuzz.conftest import FUZZ, expect_clean

GOOD = {"name": "h100", "gpu": "h100-sxm", "gpus_per_node": 8, "nodes": 2}


def _file(tmp_path: Path, doc: object) -> Path:
    f = tmp_path / "pools.yaml"
    f.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return f


@pytest.mark.parametrize(
    ("pool", "named"),
    [
        ({**GOOD, "gpu": "h100-sxmm"}, "h100-sxmm"),
        ({**GOOD, "gpu": "rtx-4090", "mig": "1g.10gb"}, "1g.10gb"),
        ({**GOOD, "gpu": "a100-80gb", "mig": "1g.5gb"}, "1g.5gb"),
        ({**GOOD, "gpu": "a100-80gb", "mig": "9x3g.40gb"}, "9"),
        ({**GOOD, "gpu": "a100-80gb", "mig": "h100-sxm:3g.40gb"}, "h100-sxm"),
        ({**GOOD, "nodes": 0}, "nodes"),
        ({**GOOD, "nodes": -1}, "nodes"),
        ({**GOOD, "nodes": 1.5}, "nodes"),
        ({**GOOD, "nodes": "2"}, "nodes"),
        ({**GOOD, "gpus_per_node": 0}, "gpus_per_node"),
        ({**GOOD, "gpus_per_node": 17}, "gpus_per_node"),
        ({**GOOD, "gpus_per_node": True}, "gpus_per_node"),
        ({**GOOD, "name": "H100"}, "H100"),
        ({**GOOD, "name": "h100_east"}, "h100_east"),
        ({**GOOD, "name": "1h100"}, "1h100"),
        ({**GOOD, "name": "a" * 41}, "a" * 41),
        ({**GOOD, "name": ""}, "''"),
        ({**GOOD, "host_ram_gib": 0}, "host_ram_gib"),
        ({**GOOD, "cache_pvc": "Bad PVC"}, "Bad PVC"),
        ({**GOOD, "node_names": ["n1"]}, "node_names"),
        ({**GOOD, "colour": "blue"}, "colour"),
        ({k: v for k, v in GOOD.items() if k != "gpu"}, "gpu"),
    ],
)
def test_bad_pool_is_exit_2_naming_it(tmp_path, k8s, pool, named):
    f = _file(tmp_path, {"pools": [pool]})
    exc = expect_clean("k8s-pool", lambda: load_cluster_file(f), named)
    assert isinstance(exc, InvalidInput)
    r = k8s("--cluster", str(f))
    assert r.exit_code == 2 and named in r.output and "Traceback" not in r.output


def test_duplicate_pool_names_and_a_node_in_two_pools(tmp_path, k8s):
    f = _file(tmp_path, {"pools": [dict(GOOD), dict(GOOD)]})
    r = k8s("--cluster", str(f))
    assert r.exit_code == 2 and "'h100' is given twice" in r.output
    a = {**GOOD, "nodes": 1, "node_names": ["gpu-1"]}
    b = {**GOOD, "name": "b", "nodes": 1, "node_names": ["gpu-1"]}
    r = k8s("--cluster", str(_file(tmp_path, {"pools": [a, b]})))
    assert r.exit_code == 2 and "node 'gpu-1' is in two pools" in r.output


def test_alias_bomb_and_oversized_file_are_refused_unread(tmp_path, k8s):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    f = _file(tmp_path, bomb)
    exc = expect_clean("k8s-file", lambda: load_cluster_file(f), "anchor")
    assert isinstance(exc, InvalidInput)
    big = tmp_path / "big.yaml"
    big.write_text("#" * (CLUSTER_FILE_LIMIT + 1))
    r = k8s("--cluster", str(big))
    assert r.exit_code == 2 and "big.yaml" in r.output and "at most" in r.output
    r = k8s("--cluster", "/dev/zero")
    assert r.exit_code == 2 and "/dev/zero" in r.output


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("h100=0x8xh100-sxm", "nodes"),
        ("h100=2x0xh100-sxm", "gpus_per_node"),
        ("h100=2x8xnope", "nope"),
        ("H 100=2x8xh100-sxm", "H 100"),
        ("h100=2x8", "h100=2x8"),
        ("=2x8xh100-sxm", "=2x8xh100-sxm"),
        ("a100=1x1xa100-80gb:3g.20gb", "3g.20gb"),
    ],
)
def test_bad_simulate_is_exit_2_naming_it(k8s, spec, named):
    r = k8s("--simulate", spec)
    assert r.exit_code == 2 and named in r.output and "Traceback" not in r.output


def test_options_that_do_not_go_together(k8s, tmp_path):
    assert k8s().exit_code == 2
    assert k8s("--simulate", "a=1x1xl4", "--from-cluster").exit_code == 2
    assert k8s("--simulate", "a=1x1xl4", "--context", "x").exit_code == 2
    r = k8s("--cluster", str(tmp_path / "x.yaml"), "--host-ram", "64")
    assert r.exit_code == 2 and "--host-ram" in r.output
    r = k8s("--simulate", "a=1x1xl4", "--net-if", "eth 0")
    assert r.exit_code == 2 and "'eth 0'" in r.output
    r = k8s("--simulate", "a=1x1xl4", "--namespace", "Bad_NS")
    assert r.exit_code == 2 and "Bad_NS" in r.output
    r = k8s("--simulate", "a=1x1xl4", "--model", "no-such-model")
    assert r.exit_code == 2 and "no-such-model" in r.output


@FUZZ
@given(st.text(max_size=80))
def test_fuzz_simulate_spec(spec):
    expect_clean("k8s-simulate", lambda: parse_simulate(spec), None)


_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
)
_pool = st.dictionaries(
    st.sampled_from(
        [
            "name",
            "gpu",
            "gpus_per_node",
            "nodes",
            "mig",
            "host_ram_gib",
            "cache_pvc",
            "node_names",
            "x",
        ]
    ),
    st.one_of(_scalar, st.lists(_scalar, max_size=3)),
)


@FUZZ
@given(
    st.one_of(
        _scalar,
        st.dictionaries(
            st.sampled_from(["pools", "x"]), st.one_of(_scalar, st.lists(_pool, max_size=3))
        ),
    )
)
def test_fuzz_cluster_file(tmp_path_factory, doc):
    f = tmp_path_factory.mktemp("pools") / "pools.yaml"
    f.write_text(yaml.safe_dump(doc))
    expect_clean("k8s-cluster-file", lambda: load_cluster_file(f), None)
