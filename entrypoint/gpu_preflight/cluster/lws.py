"""The entrypoint's side of a pool: the pinned plan, and each LeaderWorkerSet rank's argv.

A manifest written by ``gpu-preflight k8s`` pins its plan in the pod's environment
(``PREFLIGHT_K8S_PLAN``: the pool's GPU, the group size and the plan's engine, model, context,
sequences and argv). The entrypoint plans as on any machine, then compares: a node that differs
from its pool, or a plan that differs from the pinned one, is refused (exit 3) naming what
differs, so every replica and every rank serves exactly what was planned.

Across nodes, vLLM's own launcher joins the ranks (vLLM 0.32 vllm/entrypoints/cli/serve.py: with
``--nnodes`` above 1, rank 0 serves the API and the ranks from 1 run ``--headless``; the ranks
meet at ``--master-addr:--master-port``, vllm/config/parallel.py ParallelConfig). LeaderWorkerSet
gives every pod ``LWS_LEADER_ADDRESS``, ``LWS_GROUP_SIZE`` and ``LWS_WORKER_INDEX``
(lws: pkg/utils/pod/pod_utils.go); the ranks' argv differ only in ``--node-rank``,
``--headless`` and the leader's ``--host``/``--port``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpu_preflight.errors import InvalidInput
from gpu_preflight.plan.types import Plan
from gpu_preflight.probe.types import Profile

PIN_VAR = "PREFLIGHT_K8S_PLAN"
LEADER_VAR, SIZE_VAR, INDEX_VAR = "LWS_LEADER_ADDRESS", "LWS_GROUP_SIZE", "LWS_WORKER_INDEX"
# vLLM 0.32 vllm/config/parallel.py ParallelConfig.master_port's default: where rank 0 listens
# for the other nodes (written explicitly so every rank's argv names it).
MASTER_PORT = 29501
PIN_MAX_CHARS = 16384
MAX_GROUP = 64  # the plan's -pp is at most 64 (plan/flags.py pipeline_parallel)
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.:-]{0,251}[A-Za-z0-9])?$")
_RANK_FLAGS = ("--nnodes", "--node-rank", "--master-addr", "--master-port", "--headless")
_LEADER_ONLY = ("--host", "--port")  # a headless rank serves no API (serve.py run_headless)
MIB = 2**20


@dataclass(frozen=True)
class Rank:
    """This pod's place in its LeaderWorkerSet group (all None/1 outside one)."""

    leader: str | None
    size: int
    index: int

    @property
    def grouped(self) -> bool:
        return self.size > 1


def _int(env: Mapping[str, str], name: str, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidInput(
            f"{name}={raw[:80]!r} is not valid. Accepted: a whole number from {low} to {high} "
            "(LeaderWorkerSet sets it)."
        )
    return int(raw)


def rank_env(env: Mapping[str, str]) -> Rank:
    """LWS_* read and checked before anything is probed; no LWS_GROUP_SIZE: not in a group."""
    if SIZE_VAR not in env:
        return Rank(None, 1, 0)
    size = _int(env, SIZE_VAR, 1, MAX_GROUP)
    index = _int(env, INDEX_VAR, 0, size - 1) if size > 1 or INDEX_VAR in env else 0
    leader = env.get(LEADER_VAR, "").strip() or None
    if size > 1 and (leader is None or _HOST.match(leader) is None):
        raise InvalidInput(
            f"{LEADER_VAR}={(leader or '')[:80]!r} is not valid. Accepted: the leader pod's DNS "
            "name or IP address (LeaderWorkerSet sets it)."
        )
    return Rank(leader, size, index)


def _fresh_uuid(uuid: str | None, node: int) -> str | None:
    if uuid is None or node == 0:
        return uuid
    prefix = uuid.split("-", 1)[0] if uuid.startswith(("GPU-", "MIG-")) else "GPU"
    return f"{prefix}-{uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f'gpu-preflight-node{node}/{uuid}')}"


def group_profile(rank: Rank | int, profile: Profile) -> Profile:
    """The whole group as one machine: this node's GPUs once per node, numbered on (node k's
    GPU j is k x G + j), which is what a pipeline over identical nodes plans against. Each node
    checks itself against the pin, so planning with copies of this node is exact for the pool.
    A node outside a group is returned as it is."""
    n = rank if isinstance(rank, int) else rank.size
    if n <= 1:
        return profile
    gpus = profile.hardware.gpus
    per = len(gpus.devices)
    devices = []
    for k in range(n):
        for d in gpus.devices:
            devices.append(
                dataclasses.replace(
                    d,
                    index=k * per + d.index,
                    uuid=_fresh_uuid(d.uuid, k),
                    cuda_ordinal=None if d.cuda_ordinal is None else k * per + d.cuda_ordinal,
                )
            )
    note = f"planned as a group of {n} nodes like this one (LeaderWorkerSet, {SIZE_VAR}={n})"
    report = dataclasses.replace(gpus, devices=tuple(devices), errors=(), notes=(*gpus.notes, note))
    hw = dataclasses.replace(profile.hardware, gpus=report)
    return dataclasses.replace(profile, hardware=hw)


# ---------------------------------------------------------------------------------------------
# The pin


def node_facts(profile: Profile) -> dict[str, Any]:
    """What the pin says of a node: its GPUs (or MIG leaves) as a pod sees them."""
    gpus = profile.hardware.gpus.devices
    leaves = [m for g in gpus for m in g.mig_devices if g.mig_enabled]
    if leaves:
        return {
            "gpus": len(leaves),
            "gpu": sorted({str(m.name) for m in leaves}),
            "gpu_mib": sorted({(m.total_bytes or 0) // MIB for m in leaves}),
        }
    return {
        "gpus": len(gpus),
        "gpu": sorted({str(g.name) for g in gpus}),
        "gpu_mib": sorted({(g.total_bytes or 0) // MIB for g in gpus}),
    }


def plan_facts(plan: Plan) -> dict[str, Any]:
    return {
        "engine": plan.engine,
        "model": plan.model.id if plan.model else None,
        "quant": plan.model.quant if plan.model else None,
        "context": plan.context,
        "parallel": plan.parallel,
        "argv": list(plan.argv),
    }


def make_pin(pool: str, node: Profile, nodes: int, plan: Plan) -> str:
    """The value of PREFLIGHT_K8S_PLAN for a pool's pods: compact JSON, no secrets (the argv is
    the plan's, which never carries one: plan/overrides.py is_secret)."""
    doc = {"pool": pool, "nodes": nodes, **node_facts(node), **plan_facts(plan)}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def _read_pin(env: Mapping[str, str]) -> dict[str, Any] | None:
    raw = env.get(PIN_VAR)
    if raw is None:
        return None
    try:
        doc = json.loads(raw) if len(raw) <= PIN_MAX_CHARS else None
    except ValueError:
        doc = None
    keys = ("pool", "nodes", "gpus", "gpu", "gpu_mib", "engine", "model", "context", "argv")
    if not isinstance(doc, dict) or any(k not in doc for k in keys):
        raise InvalidInput(
            f"{PIN_VAR}={raw[:80]!r} is not valid. Accepted: the value `gpu-preflight k8s` "
            "wrote into the manifest, unchanged."
        )
    return doc


def differences(pin: Mapping[str, Any], rank: Rank, node: Profile, plan: Plan) -> list[str]:
    """What differs between this node and its plan and what the pool was planned with."""
    out = []
    if int(pin["nodes"]) != rank.size:
        out.append(f"group size {rank.size} ({SIZE_VAR}), planned {pin['nodes']}")
    for key, have in node_facts(node).items():
        if pin.get(key) != have:
            out.append(f"{key} {have}, planned {pin.get(key)}")
    if plan.verdict != "ship":
        return out
    for key, have in plan_facts(plan).items():
        if pin.get(key) != have:
            out.append(f"{key} {have}, planned {pin.get(key)}")
    return out


def rank_argv(argv: Sequence[str], rank: Rank, port: int = MASTER_PORT) -> tuple[str, ...]:
    """vLLM's own multi-node launch for this rank: the plan's argv, plus --nnodes/--node-rank/
    --master-addr/--master-port; ranks above 0 without --host/--port and with --headless."""
    assert rank.leader is not None
    out: list[str] = []
    skip = False
    for tok in argv:
        if skip:
            skip = False
            continue
        name = tok.split("=", 1)[0]
        if name in _RANK_FLAGS:
            raise InvalidInput(
                f"engine argument {name} is set, but the LeaderWorkerSet group sets it per rank. "
                "Accepted: leave it out."
            )
        if rank.index > 0 and name in _LEADER_ONLY:
            skip = "=" not in tok
            continue
        out.append(tok)
    out += [
        "--nnodes",
        str(rank.size),
        "--node-rank",
        str(rank.index),
        "--master-addr",
        rank.leader,
        "--master-port",
        str(port),
    ]
    if rank.index > 0:
        out.append("--headless")
    return tuple(out)


def pinned_rank(env: Mapping[str, str], rank: Rank, node: Profile, plan: Plan) -> Plan:
    """The plan as this pod runs it: refused when the node or the plan differs from the pin;
    in a group, the rank's own argv."""
    pin = _read_pin(env)
    if pin is not None:
        diff = differences(pin, rank, node, plan)
        if diff:
            why = (
                f"this node differs from what pool {pin['pool']} was planned with "
                f"({PIN_VAR}): " + "; ".join(diff)
            )
            return dataclasses.replace(
                plan, verdict="refuse", argv=(), reasons=(why, *plan.reasons)
            )
    if not rank.grouped or plan.verdict != "ship":
        return plan
    if plan.engine != "vllm":
        return dataclasses.replace(
            plan,
            verdict="refuse",
            argv=(),
            reasons=(
                f"{SIZE_VAR}={rank.size}: a group of nodes is served by vLLM's multi-node "
                f"launcher, and this plan is {plan.engine}",
                *plan.reasons,
            ),
        )
    return dataclasses.replace(plan, argv=rank_argv(plan.argv, rank))
