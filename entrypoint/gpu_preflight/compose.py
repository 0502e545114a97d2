"""A compose file written for this machine: one LLM service per planned server, plus the
co-resident services (speech recognition, text-to-speech ...) that take priority over it. Pure.

Layout: identical GPUs get one server over all of them (tensor parallel or a layer split); mixed
cards get one server over all of them where the planner finds that beats the best card alone (a
layer split, or vLLM pipeline parallel), else one server per card, each planning for its own
memory; MIG gets one server per leaf, by MIG UUID. Co-resident services are placed on their GPU first, in priority order: their needs are
reserved (PREFLIGHT_RESERVE_GB) and the LLM, always the lowest priority, plans in the rest. A
higher-priority service is never planned out for the LLM; when the services alone do not fit
their GPU, the answer names the one to drop. On a restart the LLM re-plans against what is free
then, so when another service has taken more memory the LLM comes back smaller instead of
failing: the container form of eviction.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gpu_preflight.errors import InvalidInput
from gpu_preflight.plan.types import Plan
from gpu_preflight.profile_types import GpuDevice, Profile

GIB = 2**30
DEFAULT_IMAGE = "${GPU_PREFLIGHT_IMAGE:-gpu-preflight:both}"
_SERVICE = re.compile(
    r"^([a-z][a-z0-9_-]{0,31}):([0-9]+(?:\.[0-9]+)?):([1-9][0-9]?)(?::([0-9]{1,2}))?$"
)
SERVICE_ACCEPTED = (
    "NAME:GIB:PRIORITY[:GPU], e.g. asr:4:2 (4 GiB at priority 2 on GPU 0); a higher priority "
    "wins, the LLM is always the lowest"
)


@dataclass(frozen=True)
class CoService:
    """A co-resident service: its VRAM need on one GPU and its priority over the LLM."""

    name: str
    need_bytes: int
    priority: int
    gpu: int  # NVML index


@dataclass(frozen=True)
class Server:
    """One LLM service: the devices it gets, the reserve kept for others, and its plan."""

    name: str
    devices: tuple[str, ...]  # device_ids for compose: GPU indexes or MIG UUIDs
    gpus: tuple[int, ...]  # NVML indexes
    reserve_bytes: int
    port: int
    plan: Plan


@dataclass(frozen=True)
class Stack:
    servers: tuple[Server, ...]
    services: tuple[CoService, ...]
    layout: str  # "one server" | "per card" | "per MIG leaf" | "CPU"
    why: str


def parse_service(text: str) -> CoService:
    m = _SERVICE.match(text.strip())
    if not m:
        raise InvalidInput(f"--with={text[:80]!r} is not valid. Accepted: {SERVICE_ACCEPTED}.")
    gib = float(m[2])
    if not 0 < gib <= 4096:
        raise InvalidInput(f"--with={text!r}: {gib:g} GiB. Accepted: above 0 to 4096 GiB.")
    return CoService(m[1], int(gib * GIB), int(m[3]), int(m[4] or 0))


def only(profile: Profile, keep: Sequence[GpuDevice]) -> Profile:
    """The profile as a container given just these GPUs sees it (renumbered from CUDA0). This
    process planning on some of its own GPUs is plan(..., on=...) instead: it still sees the
    others."""
    devs = tuple(
        dataclasses.replace(
            d,
            cuda_ordinal=i,
            # the container's one MIG device is its CUDA0 (probe/visible.py)
            mig_devices=tuple(dataclasses.replace(m, cuda_ordinal=0) for m in d.mig_devices),
        )
        for i, d in enumerate(keep)
    )
    gpus = dataclasses.replace(profile.hardware.gpus, devices=devs, errors=())
    return dataclasses.replace(profile, hardware=dataclasses.replace(profile.hardware, gpus=gpus))


def _reserve(services: Sequence[CoService], gpu: GpuDevice) -> tuple[int, str | None]:
    """The bytes the co-resident services need on this GPU, or the one to drop if they cannot
    all fit (the lowest priority of those on it)."""
    mine = sorted((s for s in services if s.gpu == gpu.index), key=lambda s: -s.priority)
    total = gpu.total_bytes or 0
    used = 0
    for s in mine:
        used += s.need_bytes
        if used > total:
            return used, (
                f"the services on GPU {gpu.index} need {used / GIB:.1f} GiB of its "
                f"{total / GIB:.1f} GiB: drop {mine[-1].name} (priority {mine[-1].priority}), "
                "the lowest of them"
            )
    return used, None


def build_stack(
    profile: Profile,
    services: Sequence[CoService],
    planner: Callable[[Profile, int], Plan],
    port: int = 8080,
) -> Stack:
    """The servers for this machine: each planned (by ``planner``, the pipeline's one planning
    path) on exactly the GPUs and reserve its container will have."""
    gpus = list(profile.hardware.gpus.devices)
    known = {g.index for g in gpus}
    for s in services:
        if s.gpu not in known:
            raise InvalidInput(
                f"--with {s.name}: GPU {s.gpu} is not on this machine. Accepted: "
                + (", ".join(str(i) for i in sorted(known)) or "none (no GPU)")
            )
    if not gpus:
        plan = planner(profile, 0)
        return Stack((Server("llm", (), (), 0, port, plan),), tuple(services), "CPU", "no GPU")
    mig = [g for g in gpus if g.mig_enabled and g.mig_devices]
    if mig:
        servers: list[Server] = []
        for g in mig:
            for leaf in g.mig_devices:
                keep = dataclasses.replace(g, mig_devices=(leaf,))
                reserve, drop = _reserve(services, g)
                if drop:
                    raise InvalidInput(f"--with: {drop}")
                p = planner(only(profile, [keep]), reserve)
                name = f"llm-gpu{g.index}-mig{leaf.mig_index}"
                servers.append(
                    Server(name, (leaf.uuid or "",), (g.index,), reserve, port + len(servers), p)
                )
        return Stack(tuple(servers), tuple(services), "per MIG leaf", "a process sees one MIG leaf")
    reserves = []
    for g in gpus:
        r, drop = _reserve(services, g)
        if drop:
            raise InvalidInput(f"--with: {drop}")
        reserves.append(r)
    identical = len({(g.name, g.total_bytes) for g in gpus}) == 1
    if identical:
        p = planner(profile, max(reserves))
        server = Server(
            "llm",
            tuple(str(g.index) for g in gpus),
            tuple(g.index for g in gpus),
            max(reserves),
            port,
            p,
        )
        return Stack(
            (server,), tuple(services), "one server", "identical GPUs: one server over all of them"
        )
    # Mixed cards: one server over all of them where the planner found that beats the best card
    # alone (a llama.cpp layer split, or vLLM pipeline parallel with each card's own layer share:
    # plan/search.py _against_one_card); otherwise one server per card.
    whole = planner(profile, max(reserves))
    if whole.verdict == "ship" and len(whole.targets) == len(gpus):
        server = Server(
            "llm",
            tuple(str(g.index) for g in gpus),
            tuple(g.index for g in gpus),
            max(reserves),
            port,
            whole,
        )
        return Stack(
            (server,),
            tuple(services),
            "one server",
            "mixed cards: one server over all of them gives a larger model or a longer context "
            "than the best card alone",
        )
    servers = []
    for g, r in zip(gpus, reserves, strict=True):
        p = planner(only(profile, [g]), r)
        servers.append(
            Server(f"llm-gpu{g.index}", (str(g.index),), (g.index,), r, port + len(servers), p)
        )
    return Stack(
        tuple(servers),
        tuple(services),
        "per card",
        "mixed cards: one server per card, each planning for its own memory",
    )


def _devices(ids: Sequence[str]) -> dict[str, Any]:
    return {
        "resources": {
            "reservations": {
                "devices": [{"driver": "nvidia", "device_ids": list(ids), "capabilities": ["gpu"]}]
            }
        }
    }


def compose_document(stack: Stack, image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    """The compose file (compose-spec): services, their devices, ports and volumes."""
    services: dict[str, Any] = {}
    volumes: dict[str, Any] = {"hf-cache": {}}
    for s in stack.servers:
        vol = f"preflight-{s.name}"
        volumes[vol] = {}
        svc: dict[str, Any] = {
            "image": image,
            "ports": [f"{s.port}:8080"],
            "environment": {"HF_TOKEN": "${HF_TOKEN:-}"},
            "volumes": [
                f"{vol}:/var/lib/gpu-preflight",
                "hf-cache:/home/preflight/.cache/huggingface",
            ],
            "stop_grace_period": "30s",
            "labels": {
                "gpu-preflight.plan": _summary(s.plan),
            },
        }
        if s.reserve_bytes:
            svc["environment"]["PREFLIGHT_RESERVE_GB"] = f"{s.reserve_bytes / GIB:g}"
        if s.devices:
            svc["deploy"] = _devices(s.devices)
        services[s.name] = svc
    for c in sorted(stack.services, key=lambda c: -c.priority):
        llm = next((s for s in stack.servers if c.gpu in s.gpus), stack.servers[0])
        name = c.name
        services[name] = {
            "image": f"${{{name.upper().replace('-', '_')}_IMAGE:?set {name.upper().replace('-', '_')}_IMAGE to the {name} server's image}}",
            "labels": {
                "gpu-preflight.vram-need": f"{c.need_bytes / GIB:g} GiB",
                "gpu-preflight.priority": str(c.priority),
            },
            # It starts after the LLM, which has planned with its need kept free.
            "depends_on": {llm.name: {"condition": "service_started"}},
            "deploy": _devices([str(c.gpu)]),
        }
    return {"services": services, "volumes": volumes}


def _summary(p: Plan) -> str:
    if p.verdict != "ship" or p.model is None:
        return "refused: " + (p.reasons[0][:200] if p.reasons else "")
    return f"{p.engine} {p.model.id} {p.model.quant}, {p.context} tokens x {p.parallel}"


def render(stack: Stack, doc: dict[str, Any], command: str) -> str:
    """The compose file as YAML, with a header saying how it was made and what each LLM runs."""
    import yaml

    lines = [
        f"# Written by `{command}`: {stack.why}.",
        "# Each LLM service re-plans when it starts, against what is free then (a co-resident",
        "# service that took more memory makes it come back smaller, not fail).",
    ]
    for s in stack.servers:
        lines.append(f"#   {s.name}: {_summary(s.plan)}")
    for c in sorted(stack.services, key=lambda c: -c.priority):
        lines.append(
            f"#   {c.name}: {c.need_bytes / GIB:g} GiB at priority {c.priority} on GPU {c.gpu} "
            "(kept free by the LLM there: PREFLIGHT_RESERVE_GB)"
        )
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=100)
    return "\n".join(lines) + "\n" + body
