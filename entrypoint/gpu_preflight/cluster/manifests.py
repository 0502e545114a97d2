"""The manifests written from the pools' plans (pure: documents in, documents out).

A pool whose one node holds the model: a Deployment and a Service. A pool planned across nodes: a
LeaderWorkerSet (leaderworkerset.x-k8s.io/v1) and a Service for its leader. The image's
entrypoint (`gpu-preflight run --`) plans again in every pod with the pinned values and refuses
when it differs (cluster/lws.py), and in a LeaderWorkerSet turns the pinned plan and the LWS
environment into each rank's vLLM argv.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gpu_preflight.cluster.layout import PoolPlan
from gpu_preflight.cluster.lws import MASTER_PORT

GIB = 2**30
MIB = 2**20
DEFAULT_IMAGE = "gpu-preflight:both"
PORT = 8080  # the plan's --port (inputs/flags.py PREFLIGHT_PORT default), the image's EXPOSE
# /dev/shm for NCCL and vLLM's multiprocess workers: vLLM's own Kubernetes guide mounts a
# memory emptyDir there (vLLM docs/deployment/k8s.md, "dshm", sizeLimit 2Gi) because the
# container runtime's default /dev/shm is 64 MiB.
SHM_BYTES = 2 * GIB
# Host memory the engine process needs besides /dev/shm, as a request (never a limit: a limit
# set too low is an OOM kill). vLLM: its API server and engine core plus one worker process per
# GPU with torch and a CUDA context; llama.cpp: the process and its --cache-ram prompt cache.
HOST_BASE_BYTES = 2 * GIB
HOST_PER_VLLM_RANK_BYTES = 4 * GIB
# The first start downloads the weights: the start-up budget assumes this much per second from
# the Hub to the cache (a slow link; a warm cache starts far sooner), plus a fixed part for the
# engine's own start (CUDA graphs, compilation).
DOWNLOAD_BYTES_S = 50 * 10**6
START_FIXED_S = 600
PROBE_PERIOD_S = 10
HF_SECRET = "hf-token"
HF_SECRET_KEY = "token"
MOUNT_PROFILE = "/var/lib/gpu-preflight"
MOUNT_HF = "/home/preflight/.cache/huggingface"
LWS_API = "leaderworkerset.x-k8s.io/v1"


@dataclass(frozen=True)
class Options:
    image: str = DEFAULT_IMAGE
    namespace: str | None = None
    net_if: str | None = None  # NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME
    hf_secret: str = HF_SECRET
    cache_size_gib: int | None = None  # per-pod model cache (volumeClaimTemplates); None: sized


def resource_name(p: PoolPlan) -> str:
    return f"llm-{p.pool.name}"


def _labels(p: PoolPlan) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "gpu-preflight",
        "app.kubernetes.io/instance": resource_name(p),
        "gpu-preflight/pool": p.pool.name,
    }


def _selector(p: PoolPlan) -> dict[str, str]:
    return {"app.kubernetes.io/instance": resource_name(p)}


def _gib(n: int) -> str:
    return f"{math.ceil(n / GIB)}Gi"


def host_bytes(p: PoolPlan) -> int:
    """The pod's memory request: /dev/shm (counted in it) plus the engine process's host
    memory (the plan's host-side devices, or the allowance above)."""
    plan = p.plan
    host = sum(
        d.total_bytes
        for d in (plan.predicted.devices if plan.predicted else ())
        if not d.device.startswith("CUDA")
    )
    if plan.engine == "vllm":
        host = max(host, HOST_PER_VLLM_RANK_BYTES * p.gpus_per_pod)
    else:
        argv = list(plan.argv)
        if "--cache-ram" in argv:
            host += int(argv[argv.index("--cache-ram") + 1]) * MIB
    return SHM_BYTES + HOST_BASE_BYTES + host


def startup_budget_s(p: PoolPlan) -> int:
    weights = p.plan.model.weight_bytes if p.plan.model else 0
    return START_FIXED_S + math.ceil(weights / DOWNLOAD_BYTES_S)


def _probes(p: PoolPlan) -> dict[str, Any]:
    get = {"path": "/health", "port": "http"}
    return {
        "startupProbe": {
            "httpGet": get,
            "periodSeconds": PROBE_PERIOD_S,
            "timeoutSeconds": 5,
            "failureThreshold": math.ceil(startup_budget_s(p) / PROBE_PERIOD_S),
        },
        "readinessProbe": {
            "httpGet": get,
            "periodSeconds": PROBE_PERIOD_S,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": get,
            "periodSeconds": 30,
            "timeoutSeconds": 10,
            "failureThreshold": 3,
        },
    }


def _env(p: PoolPlan, o: Options, rank: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(p.env.items())]
    if rank == "follower":
        # A headless rank serves no API, so it has no engine to take a receipt of.
        env.append({"name": "PREFLIGHT_RECEIPT", "value": "off"})
    if rank != "single":
        # The address the other ranks reach this pod at (vLLM 0.32 vllm/envs.py VLLM_HOST_IP).
        env.append(
            {"name": "VLLM_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
        )
    if o.net_if:
        # Only from --net-if: the interface NCCL and Gloo bind (every pod, as given).
        env += [
            {"name": "NCCL_SOCKET_IFNAME", "value": o.net_if},
            {"name": "GLOO_SOCKET_IFNAME", "value": o.net_if},
        ]
    env.append(
        {
            "name": "HF_TOKEN",
            "valueFrom": {
                "secretKeyRef": {"name": o.hf_secret, "key": HF_SECRET_KEY, "optional": True}
            },
        }
    )
    return env


def _container(p: PoolPlan, o: Options, rank: str) -> dict[str, Any]:
    mem = _gib(host_bytes(p))
    c: dict[str, Any] = {
        "name": "llm",
        "image": o.image,
        # The image's ENTRYPOINT is `gpu-preflight run --`: these are the engine arguments.
        "args": list(p.args),
        "env": _env(p, o, rank),
        "resources": {
            "requests": {p.resource: str(p.gpus_per_pod), "memory": mem},
            "limits": {p.resource: str(p.gpus_per_pod)},
        },
        "volumeMounts": [
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "profile", "mountPath": MOUNT_PROFILE},
            {"name": "hf-cache", "mountPath": MOUNT_HF},
        ],
    }
    if rank != "follower":
        c["ports"] = [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
        c.update(_probes(p))
    else:
        c["ports"] = [{"name": "dist", "containerPort": MASTER_PORT, "protocol": "TCP"}]
    return c


def _pod_spec(p: PoolPlan, o: Options, rank: str, cache_claim: str | None) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": _gib(SHM_BYTES)}},
        {"name": "profile", "emptyDir": {}},
    ]
    if cache_claim is not None:
        volumes.append({"name": "hf-cache", "persistentVolumeClaim": {"claimName": cache_claim}})
    elif p.kind == "deployment":
        volumes.append({"name": "hf-cache", "emptyDir": {}})
    # else: the LeaderWorkerSet's volumeClaimTemplates give each pod its own "hf-cache".
    return {
        "nodeSelector": {"nvidia.com/gpu.product": p.pool.product_label},
        "terminationGracePeriodSeconds": 30,
        "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
        "containers": [_container(p, o, rank)],
        "volumes": volumes,
    }


def _meta(p: PoolPlan, o: Options, name: str | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name or resource_name(p), "labels": _labels(p)}
    if o.namespace:
        m["namespace"] = o.namespace
    return m


def deployment(p: PoolPlan, o: Options) -> list[dict[str, Any]]:
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(p, o),
        "spec": {
            "replicas": p.replicas,
            "selector": {"matchLabels": _selector(p)},
            # Every GPU of the pool is taken: a surge pod could never be scheduled.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "template": {
                "metadata": {"labels": _labels(p)},
                "spec": _pod_spec(p, o, "single", p.pool.cache_pvc),
            },
        },
    }
    return [dep, _service(p, o, _selector(p))]


def _service(p: PoolPlan, o: Options, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(p, o),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def cache_bytes(p: PoolPlan) -> int:
    """A pod's model cache: the checkpoint's weights with a quarter on top (tokenizer, config,
    the download's temporary file)."""
    weights = p.plan.model.weight_bytes if p.plan.model else 0
    return max(GIB, weights + weights // 4)


def leaderworkerset(p: PoolPlan, o: Options) -> list[dict[str, Any]]:
    claim = p.pool.cache_pvc
    templates: list[dict[str, Any]] = []
    if claim is None:
        size = f"{o.cache_size_gib}Gi" if o.cache_size_gib else _gib(cache_bytes(p))
        templates = [
            {
                "metadata": {"name": "hf-cache"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": size}},
                },
            }
        ]
    group: dict[str, Any] = {
        "size": p.group_size,
        "restartPolicy": "RecreateGroupOnPodRestart",
        "leaderTemplate": {
            "metadata": {"labels": _labels(p)},
            "spec": _pod_spec(p, o, "leader", claim),
        },
        "workerTemplate": {
            "metadata": {"labels": _labels(p)},
            "spec": _pod_spec(p, o, "follower", claim),
        },
    }
    if templates:
        group["volumeClaimTemplates"] = templates
    lws = {
        "apiVersion": LWS_API,
        "kind": "LeaderWorkerSet",
        "metadata": _meta(p, o),
        "spec": {
            "replicas": p.replicas,
            # vLLM's leader cannot be ready before its followers join: never LeaderReady.
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": group,
        },
    }
    # The leader Service selects the leader template's own labels (the pod that serves the API).
    group["leaderTemplate"]["metadata"]["labels"]["role"] = "leader"
    group["workerTemplate"]["metadata"]["labels"]["role"] = "worker"
    selector = {**_selector(p), "role": "leader"}
    return [lws, _service(p, o, selector)]


def documents(plans: Sequence[PoolPlan], o: Options) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for p in plans:
        if p.kind == "deployment":
            docs += deployment(p, o)
        elif p.kind == "leaderworkerset":
            docs += leaderworkerset(p, o)
    return docs


def summary(p: PoolPlan) -> str:
    plan = p.plan
    if p.kind == "refuse" or plan.model is None:
        return f"pool {p.pool.name}: refused: " + "; ".join(p.reasons)[:600]
    what = (
        f"{plan.engine} {plan.model.id} {plan.model.quant}, {plan.context} tokens x {plan.parallel}"
    )
    if p.kind == "leaderworkerset":
        return (
            f"pool {p.pool.name}: LeaderWorkerSet {resource_name(p)}: {what}; TP {p.tp} x PP "
            f"{p.pp} over {p.group_size} nodes, {p.replicas} group(s)"
        )
    return (
        f"pool {p.pool.name}: Deployment {resource_name(p)}: {what}; {p.replicas} replica(s) "
        f"of {p.gpus_per_pod} {p.resource}"
    )


def render(plans: Sequence[PoolPlan], docs: Sequence[dict[str, Any]], command: str) -> str:
    import yaml

    class _Plain(yaml.SafeDumper):
        """No anchors or aliases: each resource reads on its own, as kubectl shows it."""

        def ignore_aliases(self, data: Any) -> bool:
            return True

    lines = [f"# Written by `{command}`."]
    for p in plans:
        lines.append("#   " + summary(p))
        if p.pool.host_ram_note:
            lines.append(f"#     {p.pool.host_ram_note}")
        lines += [f"#     {n}" for n in p.pool.notes]
        if p.kind == "deployment" and p.pool.cache_pvc is None:
            lines.append(
                "#     model cache: an emptyDir per pod (each pod downloads the model); set "
                "cache_pvc to a ReadWriteMany claim to share one"
            )
    body = yaml.dump_all(docs, Dumper=_Plain, sort_keys=False, default_flow_style=False, width=4096)
    return "\n".join(lines) + "\n" + body
