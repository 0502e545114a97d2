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
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpu_preflight.errors import InvalidInput
from gpu_preflight.inputs.flags import FlagValueError, env_setting
from gpu_preflight.plan.types import Plan
from gpu_preflight.profile_types import Profile

PIN_VAR = "PREFLIGHT_K8S_PLAN"
LEADER_VAR, SIZE_VAR, INDEX_VAR = "LWS_LEADER_ADDRESS", "LWS_GROUP_SIZE", "LWS_WORKER_INDEX"
# vLLM 0.32 vllm/config/parallel.py ParallelConfig.master_port's default: where rank 0 listens
# for the other nodes (written explicitly so every rank's argv names it).
MASTER_PORT = 29501
# PREFLIGHT_K8S_PLAN's and the LWS_* variables' bounds and syntax are their rows in
# inputs/flags.py (the group: at most 64 nodes, as the plan's -pp is).
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


def rank_env(env: Mapping[str, str]) -> Rank:
    """LWS_* read and checked before anything is probed, each through its row of the flag table
    (inputs/flags.py env_setting: one parser per variable); no LWS_GROUP_SIZE: not in a group."""
    size = env_setting(env, SIZE_VAR)
    index = env_setting(env, INDEX_VAR)
    leader = env_setting(env, LEADER_VAR)
    if size is None:
        return Rank(None, 1, 0)
    assert isinstance(size, int) and (index is None or isinstance(index, int))
    if index is not None and index >= size:
        raise FlagValueError(
            INDEX_VAR,
            env[INDEX_VAR],
            f"a whole number from 0 to {size - 1} (below {SIZE_VAR}={size}; LeaderWorkerSet "
            "sets both)",
            "not a rank of the group",
        )
    if size > 1 and index is None:
        raise FlagValueError(
            INDEX_VAR, "", f"a whole number from 0 to {size - 1} (LeaderWorkerSet sets it)", "unset"
        )
    if size > 1 and leader is None:
        raise FlagValueError(
            LEADER_VAR,
            "",
            "the leader pod's DNS name or IP address (LeaderWorkerSet sets it)",
            f"unset, and {SIZE_VAR}={size}",
        )
    return Rank(str(leader) if leader is not None else None, size, index or 0)


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
    the plan's, which never carries one: inputs/overrides.py is_secret)."""
    doc = {"pool": pool, "nodes": nodes, **node_facts(node), **plan_facts(plan)}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def _read_pin(env: Mapping[str, str]) -> dict[str, Any] | None:
    doc = env_setting(env, PIN_VAR)  # inputs/flags.py's row: a JSON object of bounded size
    if doc is None:
        return None
    keys = ("pool", "nodes", "gpus", "gpu", "gpu_mib", "engine", "model", "context", "argv")
    if any(k not in doc for k in keys):
        raise FlagValueError(
            PIN_VAR,
            env[PIN_VAR],
            "the JSON object `gpu-preflight k8s` wrote into the manifest, unchanged",
            f"it lacks {next(k for k in keys if k not in doc)!r}",
        )
    return dict(doc)


def _label_form(name: object) -> str:
    return str(name).replace(" ", "-")


def differences(pin: Mapping[str, Any], rank: Rank, node: Profile, plan: Plan) -> list[str]:
    """What differs between this node and its plan and what the pool was planned with."""
    out = []
    if int(pin["nodes"]) != rank.size:
        out.append(f"group size {rank.size} ({SIZE_VAR}), planned {pin['nodes']}")
    for key, have in node_facts(node).items():
        want = pin.get(key)
        if key == "gpu" and isinstance(want, list):
            # A GPU the catalog lacks was planned under its product label (spaces written as
            # '-', k8s-device-plugin internal/lm/resource.go), the node selector's value: the
            # names are compared in that form, which is what selected this node.
            same = sorted(_label_form(x) for x in want) == sorted(_label_form(x) for x in have)
        else:
            same = want == have
        if not same:
            out.append(f"{key} {have}, planned {want}")
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
