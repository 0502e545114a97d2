"""The entrypoint in a pool's pod: the pinned plan, and each LeaderWorkerSet rank's argv.

`run`'s own pipeline (pipeline.start) on a node simulated as its pool's node (the probe is the
one name patched, at the hardware edge), with the environment the manifest gives the pod.
"""

from __future__ import annotations

import pytest

from gpu_preflight import pipeline
from gpu_preflight.cluster import lws
from gpu_preflight.cluster.inventory import node_profile, parse_simulate
from gpu_preflight.errors import InvalidInput
from tests.cluster.conftest import plans


def _pod_env(p, rank: int | None = None, leader: str = "llm-h100-0.llm-h100.default"):
    env = dict(p.env)
    env["PREFLIGHT_DRY_RUN"] = "1"
    env["PREFLIGHT_RECEIPT"] = "off"
    if rank is not None:
        env.update(
            {
                "LWS_LEADER_ADDRESS": leader,
                "LWS_GROUP_SIZE": str(p.group_size),
                "LWS_WORKER_INDEX": str(rank),
            }
        )
    return env


@pytest.fixture
def node(monkeypatch, tmp_path):
    """Make run's probe see one node of the named pool."""

    def use(spec: str) -> None:
        prof = node_profile(parse_simulate(spec))
        monkeypatch.setattr(pipeline, "collect_hardware", lambda env, opts: prof.hardware)
        monkeypatch.setenv("PREFLIGHT_PROFILE_DIR", str(tmp_path))

    return use


def _start(env, args, tmp_path):
    env = {**env, "PREFLIGHT_PROFILE_DIR": str(tmp_path)}
    return pipeline.start(env, args, dry_run=True)


def test_every_rank_runs_the_pinned_plan_with_its_own_argv(node, tmp_path):
    p = plans("deepseek-r1", "h100=2x8xh100-sxm")["h100"]
    node("h100=1x8xh100-sxm")
    leader = _start(_pod_env(p, 0), p.args, tmp_path).plan
    follower = _start(_pod_env(p, 1), p.args, tmp_path).plan
    assert leader.verdict == follower.verdict == "ship", (leader.reasons, follower.reasons)
    base = list(p.plan.argv)
    tail = [
        "--nnodes",
        "2",
        "--master-addr",
        "llm-h100-0.llm-h100.default",
        "--master-port",
        "29501",
    ]
    assert list(leader.argv) == [*base, "--nnodes", "2", "--node-rank", "0", *tail[2:]]
    no_api = [
        t
        for i, t in enumerate(base)
        if t not in ("--host", "--port") and base[i - 1] not in ("--host", "--port")
    ]
    assert list(follower.argv) == [
        *no_api,
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        *tail[2:],
        "--headless",
    ]
    assert leader.env == follower.env == p.plan.env


def test_a_node_that_differs_from_its_pool_is_refused_naming_the_difference(node, tmp_path):
    p = plans("deepseek-r1", "h100=2x8xh100-sxm")["h100"]
    node("h100=1x8xh100-pcie")  # another product landed in the pool
    got = _start(_pod_env(p, 0), p.args, tmp_path).plan
    assert got.verdict == "refuse" and got.argv == ()
    assert "differs from what pool h100 was planned with" in got.reasons[0]
    assert "NVIDIA H100 PCIe" in got.reasons[0]


def test_a_deployment_replica_plans_the_pinned_plan(node, tmp_path):
    p = plans(None, "l4=2x1xl4")["l4"]
    node("l4=1x1xl4")
    got = _start(_pod_env(p), p.args, tmp_path).plan
    assert got.verdict == "ship" and got.argv == p.plan.argv


def test_a_replica_on_a_smaller_node_fails_closed(node, tmp_path):
    p = plans(None, "a100=1x4xa100-80gb")["a100"]
    node("a100=1x4xa100-40gb")
    got = _start(_pod_env(p), p.args, tmp_path).plan
    assert got.verdict == "refuse"
    assert "gpu_mib [40960], planned [81920]" in got.reasons[0]


def test_group_size_that_differs_from_the_pin_is_refused(node, tmp_path):
    p = plans("deepseek-r1", "h100=2x8xh100-sxm")["h100"]
    node("h100=1x8xh100-sxm")
    env = {**_pod_env(p, 0), "LWS_GROUP_SIZE": "3"}
    got = _start(env, p.args, tmp_path).plan
    assert got.verdict == "refuse" and "group size 3" in got.reasons[0]


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("LWS_GROUP_SIZE", "0"),
        ("LWS_GROUP_SIZE", "two"),
        ("LWS_WORKER_INDEX", "2"),
        ("LWS_WORKER_INDEX", "-1"),
        ("LWS_LEADER_ADDRESS", "bad host"),
        ("LWS_LEADER_ADDRESS", ""),
    ],
)
def test_bad_lws_environment_is_exit_2_naming_it(var, value):
    env = {
        "LWS_GROUP_SIZE": "2",
        "LWS_WORKER_INDEX": "1",
        "LWS_LEADER_ADDRESS": "leader",
        var: value,
    }
    with pytest.raises(InvalidInput, match=var):
        lws.rank_env(env)


def test_bad_pin_is_exit_2():
    rank = lws.Rank(None, 1, 0)
    with pytest.raises(InvalidInput, match="PREFLIGHT_K8S_PLAN"):
        lws.pinned_rank({"PREFLIGHT_K8S_PLAN": "{not json"}, rank, None, None)  # type: ignore[arg-type]


def test_a_user_rank_flag_is_refused():
    with pytest.raises(InvalidInput, match="--node-rank"):
        lws.rank_argv(["vllm", "serve", "m", "--node-rank", "1"], lws.Rank("leader", 2, 0))


def test_group_profile_numbers_the_nodes_on():
    prof = node_profile(parse_simulate("h100=1x8xh100-sxm"))
    g = lws.group_profile(2, prof)
    devs = g.hardware.gpus.devices
    assert [d.index for d in devs] == list(range(16))
    assert len({d.uuid for d in devs}) == 16
    assert lws.group_profile(1, prof) is prof
