"""One node's ranks of a multi-node vLLM group, reduced to their rendezvous: run with the vLLM
CPU venv's torch. Reads the argv the entrypoint computed for this node (JSON on argv[1]) and
joins torch.distributed at exactly its --master-addr/--master-port with world TP x PP and the
global ranks vLLM gives this node (node_rank x local world + local rank: vllm/v1/executor/
multiproc_executor.py), then all-reduces its rank so every rank proves it met every other."""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

argv: list[str] = json.loads(sys.argv[1])
host_ip = sys.argv[2]


def value(name: str) -> str:
    return argv[argv.index(name) + 1]


tp = int(value("--tensor-parallel-size"))
pp = int(value("--pipeline-parallel-size"))
nnodes, node_rank = int(value("--nnodes")), int(value("--node-rank"))
world = tp * pp
local = world // nnodes
assert local == 1, "one rank per node in this check"
rank = node_rank * local
os.environ["GLOO_SOCKET_IFNAME"] = "lo"
dist.init_process_group(
    "gloo",
    init_method=f"tcp://{value('--master-addr')}:{value('--master-port')}",
    world_size=world,
    rank=rank,
    timeout=timedelta(seconds=60),
)
t = torch.tensor([rank + 1])
dist.all_reduce(t)
print(
    f"RENDEZVOUS rank={rank} world_size={dist.get_world_size()} "
    f"master={value('--master-addr')}:{value('--master-port')} sum={int(t.item())} "
    f"headless={'--headless' in argv} ip={host_ip}",
    flush=True,
)
dist.destroy_process_group()
