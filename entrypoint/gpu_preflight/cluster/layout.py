"""Each pool planned with the pipeline's one planning path (pipeline.plan_on), on the profile
its pods will see: a Deployment where one node (or one MIG leaf) holds the model, a
LeaderWorkerSet across nodes where none does (TP = GPUs per node, PP = nodes), or a refusal
with the numbers and the nearest layout that fits.

The plan written into a manifest is the plan the pod itself makes: the pod's environment (the
pinned model, engine, context, sequences) and arguments are planned again on the pod's own
profile here, and that plan is the one pinned (cluster/lws.py), so a replica that plans
anything else refuses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from gpu_preflight import pipeline
from gpu_preflight.cluster.inventory import Pool, node_profile
from gpu_preflight.cluster.lws import group_profile, make_pin
from gpu_preflight.cluster.rules import broken_rules
from gpu_preflight.compose import only
from gpu_preflight.gpu_catalog import load_gpu_catalog
from gpu_preflight.inputs.flags import FLAGS, env_setting
from gpu_preflight.inputs.overrides import is_secret
from gpu_preflight.inputs.settings import value_of
from gpu_preflight.plan.request import artifacts
from gpu_preflight.plan.types import Plan
from gpu_preflight.profile_types import Profile

ENGINES = ("vllm", "llama.cpp")
MAX_GROUP_TRY = 16  # nodes tried for one model across nodes (the plan's -pp is at most 64)
# Variables that name files on the machine running `k8s`: they do not exist in the pod.
_LOCAL_ONLY = {
    "PREFLIGHT_PROFILE_DIR",
    "PREFLIGHT_BENCH_DIR",
    "PREFLIGHT_DRY_RUN",
    # This machine's kubeconfig, and what Kubernetes itself sets in the pod (the pin is written
    # per pool; LeaderWorkerSet sets LWS_* per pod): never carried from the writer's shell.
    "KUBECONFIG",
    "PREFLIGHT_K8S_PLAN",
    "LWS_GROUP_SIZE",
    "LWS_WORKER_INDEX",
    "LWS_LEADER_ADDRESS",
}
_PINNED = ("PREFLIGHT_MODEL", "PREFLIGHT_ENGINE", "PREFLIGHT_CONTEXT", "PREFLIGHT_PARALLEL")
Kind = Literal["deployment", "leaderworkerset", "refuse"]


@dataclass(frozen=True)
class PoolPlan:
    pool: Pool
    kind: Kind
    plan: Plan  # the pinned plan (a group's: over all its nodes); a refusal's last plan
    replicas: int  # Deployment pods, or LeaderWorkerSet groups
    group_size: int  # nodes per replica (LeaderWorkerSet size); 1 for a Deployment
    gpus_per_pod: int
    resource: str  # nvidia.com/gpu or nvidia.com/mig-<profile>
    env: dict[str, str]  # the pod's environment (pins included), never a secret
    args: tuple[str, ...]  # engine arguments after `run --`
    pin: str
    reasons: tuple[str, ...]
    why: str
    tp: int = 1
    pp: int = 1


def _gpu_count(plan: Plan) -> int:
    return sum(
        1 for d in (plan.predicted.devices if plan.predicted else ()) if d.device.startswith("CUDA")
    )


def _carried(env: Mapping[str, str]) -> dict[str, str]:
    """The user's own planner variables, carried into the pod (never a secret, never a local
    path of this machine)."""
    names = {f.env for f in FLAGS if f.env}
    return {
        k: v
        for k, v in env.items()
        if k in names and k not in _LOCAL_ONLY and k not in _PINNED and not is_secret(k)
    }


def _model_ref(env: Mapping[str, str], options: Mapping[str, str | None], plan: Plan) -> str:
    # Each variable through its row's parser (inputs/flags.py env_setting), as prepare reads it.
    named = (
        options.get("--model")
        or env_setting(env, "PREFLIGHT_MODEL")
        or env_setting(env, "VLLM_MODEL")
    )
    if named:
        return str(named)
    assert plan.model is not None
    return f"{plan.model.id}@{plan.model.quant}"  # auto-selected: the catalog id and quant


@dataclass(frozen=True)
class Planner:
    """The user's inputs for every pool: the environment, engine arguments and options."""

    env: Mapping[str, str]
    engine_argv: tuple[str, ...]
    options: Mapping[str, str | None]
    base: pipeline.Inputs

    @classmethod
    def create(
        cls, env: Mapping[str, str], engine_argv: Sequence[str], options: Mapping[str, str | None]
    ) -> Planner:
        # Every input checked once, before any pool is planned.
        return cls(env, tuple(engine_argv), options, pipeline.prepare(env, engine_argv, options))

    def plan(self, profile: Profile, extra_args: Sequence[str] = ()) -> Plan:
        inputs = self.base
        if extra_args:
            inputs = pipeline.prepare(self.env, (*self.engine_argv, *extra_args), self.options)
        return pipeline.plan_on(inputs, profile, ENGINES)

    def pod(self, plan: Plan, pod: Profile, args: tuple[str, ...]) -> tuple[Plan, dict[str, str]]:
        """The pod's environment, and the plan the pod makes with it on its own profile."""
        assert plan.model is not None and plan.engine is not None
        env = {
            **_carried(self.env),
            "PREFLIGHT_MODEL": _model_ref(self.env, self.options, plan),
            "PREFLIGHT_ENGINE": plan.engine,
            "PREFLIGHT_CONTEXT": str(plan.context),
            "PREFLIGHT_PARALLEL": str(plan.parallel),
        }
        if plan.draft is None:
            env["PREFLIGHT_SPECULATIVE"] = "off"
        inputs = pipeline.prepare(env, args, {})
        return pipeline.plan_on(inputs, pod, ENGINES), env


def _refuse(pool: Pool, plan: Plan, reasons: Sequence[str], why: str) -> PoolPlan:
    return PoolPlan(pool, "refuse", plan, 0, 1, 0, "", {}, (), "", tuple(reasons), why)


def _gpu_words(pool: Pool) -> str:
    card = load_gpu_catalog().find(pool.gpu)
    return f"{pool.gpus_per_node}x {card.nvml_name if card else pool.product_label or pool.gpu}"


def _deployment(
    planner: Planner,
    pool: Pool,
    pod: Profile,
    plan: Plan,
    gpus: int,
    resource: str,
    replicas: int,
    why: str,
) -> PoolPlan:
    pinned, env = planner.pod(plan, pod, planner.engine_argv)
    if pinned.verdict != "ship" or pinned.argv != plan.argv:
        return _refuse(
            pool,
            pinned,
            (
                "the pod's own plan with the pinned values differs from the pool's: "
                f"{' '.join(pinned.argv)[:300] or pinned.reasons[:1]} against {' '.join(plan.argv)[:300]}",
            ),
            "internal consistency check",
        )
    env["PREFLIGHT_K8S_PLAN"] = make_pin(pool.name, pod, 1, pinned)
    return PoolPlan(
        pool,
        "deployment",
        pinned,
        replicas,
        1,
        gpus,
        resource,
        env,
        planner.engine_argv,
        env["PREFLIGHT_K8S_PLAN"],
        (),
        why,
    )


def _mig_pool(planner: Planner, pool: Pool, node: Profile) -> PoolPlan:
    gpu = node.hardware.gpus.devices[0]
    leaf = dataclasses.replace(gpu, mig_devices=gpu.mig_devices[:1])
    pod = only(node, [leaf])
    plan = planner.plan(pod)
    leaves = pool.nodes * pool.gpus_per_node * pool.mig_per_gpu
    if plan.verdict != "ship":
        return _refuse(
            pool,
            plan,
            (
                f"one {pool.mig} MIG leaf of {pool.gpu}: {plan.reasons[0]}"
                if plan.reasons
                else "refused",
                *plan.reasons[1:],
            ),
            "one server per MIG leaf",
        )
    resource = "nvidia.com/gpu" if pool.mig_strategy == "single" else f"nvidia.com/mig-{pool.mig}"
    return _deployment(
        planner,
        pool,
        pod,
        plan,
        1,
        resource,
        leaves,
        f"one server per MIG leaf ({leaves} leaves of {pool.mig})",
    )


def _across_nodes(planner: Planner, pool: Pool, node: Profile, one: Plan) -> PoolPlan:
    """No node holds the model: TP = GPUs per node, PP = nodes, the fewest nodes that fit."""
    g = pool.gpus_per_node
    # The vLLM reason first: only vLLM is planned across nodes.
    reasons = (
        [next((r for r in one.reasons if "(vllm)" in r), one.reasons[0])] if one.reasons else []
    )
    request = planner.base.model
    engine = value_of(planner.base.overrides.engine)
    if request is None:
        return _refuse(
            pool,
            one,
            [
                *reasons,
                "nothing in the catalog fits one node; name a "
                "model (--model) to plan it across nodes",
            ],
            "one node",
        )
    if engine == "llama.cpp":
        return _refuse(
            pool,
            one,
            [
                *reasons,
                "across nodes only vLLM is planned (its own "
                "multi-node launcher); llama.cpp was asked for",
            ],
            "one node",
        )
    user_tp = value_of(planner.base.overrides.tensor_parallel)
    user_pp = value_of(planner.base.overrides.pipeline_parallel)
    tp = user_tp if user_tp is not None else g
    stages = [user_pp] if user_pp is not None else list(range(2, MAX_GROUP_TRY + 1))
    last = one
    # The weights alone bound the nodes from below (the smallest vLLM artifact of the model the
    # request can use, over all of a node's GPU memory): fewer nodes are not planned at all.
    arts = [x.weight_bytes for x in artifacts(request.spec, "vllm", request.quant)]
    node_bytes = sum(d.total_bytes or 0 for d in node.hardware.gpus.devices)
    floor = -(-min(arts) // node_bytes) if arts and node_bytes else 1
    if floor > MAX_GROUP_TRY and user_pp is None:
        return _refuse(
            pool,
            one,
            [
                *reasons,
                f"{request.spec.id}'s weights alone ({min(arts) / 2**30:.1f} GiB) need at least "
                f"{floor} nodes of {_gpu_words(pool)}; at most {MAX_GROUP_TRY} are planned",
            ],
            "across nodes",
        )
    for pp in stages:
        nnodes = max(1, (tp * pp) // g)
        if nnodes < floor and user_pp is None:
            continue
        broken = broken_rules(request.spec, tp, pp, nnodes, g)
        if broken:
            if user_pp is not None or any(
                "tensor parallel" in b or "attention heads" in b for b in broken
            ):
                return _refuse(pool, last, [*reasons, *broken], "across nodes")
            continue
        extra: list[str] = []
        if user_tp is None:
            extra += ["--tensor-parallel-size", str(tp)]
        if user_pp is None:
            extra += ["--pipeline-parallel-size", str(pp)]
        group = group_profile(nnodes, node)
        plan = planner.plan(group, extra)
        last = plan
        if plan.verdict != "ship":
            continue
        if nnodes > pool.nodes:
            return _refuse(
                pool,
                plan,
                [
                    f"{plan.model.id if plan.model else request.spec.id} needs {nnodes} nodes of "
                    f"{_gpu_words(pool)} (TP {tp} x PP {pp}); pool {pool.name} has {pool.nodes}",
                    *reasons,
                ],
                "across nodes",
            )
        args = (*planner.engine_argv, *extra)
        pinned, env = planner.pod(plan, group, args)
        if pinned.verdict != "ship" or pinned.argv != plan.argv:
            return _refuse(
                pool,
                pinned,
                [
                    "the pod's own plan with the pinned values differs from the pool's",
                    *pinned.reasons[:1],
                ],
                "internal consistency check",
            )
        env["PREFLIGHT_K8S_PLAN"] = make_pin(pool.name, node, nnodes, pinned)
        return PoolPlan(
            pool,
            "leaderworkerset",
            pinned,
            pool.nodes // nnodes,
            nnodes,
            g,
            "nvidia.com/gpu",
            env,
            args,
            env["PREFLIGHT_K8S_PLAN"],
            (),
            f"no node holds it: TP {tp} (GPUs per node) x PP {pp} (nodes)",
            tp,
            pp,
        )
    tail = f"not on {max(stages)} nodes either" + (f": {last.reasons[0]}" if last.reasons else "")
    return _refuse(pool, last, [*reasons, tail], "across nodes")


def plan_pool(planner: Planner, pool: Pool) -> PoolPlan:
    if pool.notes and pool.gpus_per_node == 0:
        return _refuse(pool, _empty(), pool.notes, "no usable GPU")
    node = node_profile(pool)
    if pool.mig is not None:
        return _mig_pool(planner, pool, node)
    plan = planner.plan(node)
    if plan.verdict != "ship":
        return _across_nodes(planner, pool, node, plan)
    used = _gpu_count(plan)
    if used == 0:
        return _refuse(pool, plan, ["the plan uses no GPU of the node (host RAM only)"], "one node")
    pod, per_node = node, 1
    if used < pool.gpus_per_node:
        # A pod asks for the GPUs its plan uses, and sees only those: plan on exactly them.
        pod = only(node, node.hardware.gpus.devices[:used])
        again = planner.plan(pod)
        if again.verdict == "ship" and again.model == plan.model:
            plan, per_node = again, pool.gpus_per_node // used
        else:
            pod, used = node, pool.gpus_per_node
    return _deployment(
        planner,
        pool,
        pod,
        plan,
        used,
        "nvidia.com/gpu",
        pool.nodes * per_node,
        f"one node holds it: {used} GPU(s) per pod, {per_node} pod(s) per node",
    )


def _empty() -> Plan:
    return Plan(1, "refuse", None, None, None, None, (), {}, None, None, None, (), {})


def plan_pools(planner: Planner, pools: Sequence[Pool]) -> tuple[PoolPlan, ...]:
    """Every pool planned; a refused pool names another pool that serves the same model."""
    done = [plan_pool(planner, p) for p in pools]
    out = []
    for done_one in done:
        result = done_one
        if result.kind == "refuse" and planner.base.model is not None:
            want = planner.base.model.spec.id
            near = [
                o
                for o in done
                if o.kind != "refuse" and o.plan.model is not None and o.plan.model.id == want
            ]
            if near:
                result = dataclasses.replace(
                    result,
                    reasons=(
                        *result.reasons,
                        f"nearest that fits: pool {near[0].pool.name} ({near[0].why})",
                    ),
                )
        out.append(result)
    return tuple(out)
