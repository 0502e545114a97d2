"""GPU node pools: from a cluster file (--cluster FILE) or --simulate POOL=NODESxGPUSxGPU[:MIG].

A pool is a set of identical nodes. Each node is simulated the way ``--simulate`` simulates one
machine (probe/simulate.py scenario_for through the recorded-NVML fake and probe_gpus), so a
pool's plan is the plan the entrypoint makes on one of its nodes.
"""

from __future__ import annotations

import dataclasses
import re
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gpu_preflight.boundedio import read_text
from gpu_preflight.cluster.names import check_pool_name, is_subdomain
from gpu_preflight.errors import InvalidInput
from gpu_preflight.gpu_catalog import GpuCatalog, GpuSpec, load_gpu_catalog
from gpu_preflight.probe.collect import simulated_hardware
from gpu_preflight.probe.fake_nvml import FakeNvml
from gpu_preflight.probe.gpu import probe_gpus
from gpu_preflight.probe.simulate import SIM_CUDA, SIM_DRIVER, Simulation
from gpu_preflight.profile import make_profile
from gpu_preflight.profile_types import Profile

GIB = 2**30
MIB = 2**20
CLUSTER_FILE_LIMIT = 256 * 1024  # a real pool list is a few hundred bytes
MAX_POOLS = 64
MAX_NODES = 1024
MAX_GPUS_PER_NODE = 16  # probe/simulate.py MAX_GPUS: the largest node it simulates
MAX_HOST_RAM_GIB = 65536
_SIM = re.compile(
    r"^(?P<pool>[^=]{1,200})=(?P<nodes>[0-9]{1,6})x(?P<gpus>[0-9]{1,4})x(?P<gpu>[a-z0-9-]{1,64})"
    r"(?::(?:(?P<k>[0-9]{1,2})x)?(?P<mig>[0-9]g\.[0-9]+gb))?$"
)
SIMULATE_ACCEPTED = (
    "POOL=NODESxGPUSxGPU[:[K x]MIG], e.g. h100=2x8xh100-sxm or a100mig=1x8xa100-80gb:2x3g.40gb "
    "(`gpu-preflight gpus` lists the GPU ids and their MIG profiles)"
)
_POOL_KEYS = {
    "name",
    "gpu",
    "gpus_per_node",
    "nodes",
    "mig",
    "host_ram_gib",
    "cache_pvc",
    "node_names",
}


@dataclass(frozen=True)
class Pool:
    """One GPU node pool: ``nodes`` identical nodes with ``gpus_per_node`` GPUs each."""

    name: str
    gpu: str  # catalog id (gpu_catalog)
    gpus_per_node: int
    nodes: int
    mig: str | None = None  # MIG profile of every GPU ("3g.40gb"), None: whole GPUs
    mig_per_gpu: int = 0  # leaves of that profile per GPU
    host_ram_bytes: int | None = None  # per node; None: assumed (see host_ram_note)
    cache_pvc: str | None = None  # the user's ReadWriteMany PVC for the model cache
    node_names: tuple[str, ...] = ()
    product_label: str = ""  # nvidia.com/gpu.product as GFD writes it (the node selector)
    # GFD's MIG strategy: "mixed" exposes nvidia.com/mig-<profile> resources (the default
    # here); "single" exposes each leaf as nvidia.com/gpu with the product "<GPU>-MIG-<profile>".
    mig_strategy: str = "mixed"
    source: str = ""  # where the pool came from, in words
    notes: tuple[str, ...] = ()
    # A GPU whose nvidia.com/gpu.product is not in the catalog (--from-cluster only): its total
    # MiB from the nvidia.com/gpu.memory label, the one thing known of it. ``gpu`` is then the
    # product label's slug, not a catalog id, and ``product_label`` the label itself.
    label_memory_mib: int | None = None

    @property
    def host_ram_note(self) -> str | None:
        if self.host_ram_bytes is not None:
            return None
        return "host RAM per node not given: assumed 2 x the node's GPU memory (--host-ram or host_ram_gib sets it)"


def _spec(catalog: GpuCatalog, gpu: str, where: str) -> GpuSpec:
    card = catalog.find(gpu)
    if card is None:
        close = catalog.suggest(gpu)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InvalidInput(
            f"{where}: unknown GPU {gpu[:80]!r}{hint}. Accepted: an id from `gpu-preflight gpus`."
        )
    return card


def _count(where: str, key: str, value: object, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise InvalidInput(
            f"{where}: {key} {str(value)[:80]!r} is not valid. Accepted: a whole number from 1 "
            f"to {high}."
        )
    return value


def _mig(card: GpuSpec, text: str, where: str) -> tuple[str, int]:
    """'3g.40gb', '2x3g.40gb' or 'a100-80gb:2x3g.40gb' -> (profile, leaves per GPU)."""
    gpu, colon, rest = text.strip().lower().rpartition(":")
    if colon and gpu and gpu not in (card.id, *card.aliases):
        raise InvalidInput(
            f"{where}: mig {text[:80]!r} names GPU {gpu!r}, but the pool's GPU is {card.id}. "
            "Accepted: [GPU:][K x]PROFILE with the pool's own GPU."
        )
    m = re.fullmatch(r"(?:([0-9]{1,2})x)?([0-9]g\.[0-9]+gb)", rest)
    if m is None:
        raise InvalidInput(
            f"{where}: mig {text[:80]!r} is not valid. Accepted: [GPU:][K x]PROFILE, e.g. "
            "a100-80gb:2x3g.40gb."
        )
    profile = card.mig(m[2])
    if profile is None:
        names = ", ".join(p.name for p in card.mig_profiles) or "none (this GPU has no MIG)"
        raise InvalidInput(f"{where}: {card.id} has no MIG profile {m[2]!r}. Accepted: {names}.")
    k = int(m[1] or 1)
    if not 1 <= k <= profile.max_count:
        raise InvalidInput(
            f"{where}: {card.id} fits at most {profile.max_count} x {profile.name}, not {k}."
        )
    return profile.name, k


def product_label(card: GpuSpec, mig: str | None = None, strategy: str = "mixed") -> str:
    """nvidia.com/gpu.product as GPU feature discovery writes it: the NVML name with spaces as
    '-' (k8s-device-plugin internal/lm/resource.go: strings.ReplaceAll(name, " ", "-")); with
    MIG strategy single, "-MIG-<profile>" is appended; with strategy mixed it stays the full
    GPU's."""
    name = card.nvml_name.replace(" ", "-")
    return f"{name}-MIG-{mig}" if mig is not None and strategy == "single" else name


def make_pool(
    name: object,
    gpu: object,
    gpus_per_node: object,
    nodes: object,
    where: str,
    mig: object = None,
    host_ram_gib: object = None,
    cache_pvc: object = None,
    node_names: object = None,
    catalog: GpuCatalog | None = None,
    source: str = "",
) -> Pool:
    """A pool from raw values, each checked and named in the message when it is not accepted."""
    catalog = catalog or load_gpu_catalog()
    pool = check_pool_name(where, name)
    where = f"{where} pool {pool}"
    if not isinstance(gpu, str):
        raise InvalidInput(
            f"{where}: gpu {gpu!r} is not valid. Accepted: an id from `gpu-preflight gpus`."
        )
    card = _spec(catalog, gpu, where)
    g = _count(where, "gpus_per_node", gpus_per_node, MAX_GPUS_PER_NODE)
    n = _count(where, "nodes", nodes, MAX_NODES)
    mig_name, k = (None, 0)
    if mig is not None:
        if not isinstance(mig, str):
            raise InvalidInput(f"{where}: mig {mig!r} is not valid. Accepted: [GPU:][K x]PROFILE.")
        mig_name, k = _mig(card, mig, where)
    ram: int | None = None
    if host_ram_gib is not None:
        if (
            isinstance(host_ram_gib, bool)
            or not isinstance(host_ram_gib, (int, float))
            or not 1 <= host_ram_gib <= MAX_HOST_RAM_GIB
        ):
            raise InvalidInput(
                f"{where}: host_ram_gib {str(host_ram_gib)[:80]!r} is not valid. Accepted: a "
                f"number of GiB from 1 to {MAX_HOST_RAM_GIB}."
            )
        ram = int(host_ram_gib * GIB)
    pvc: str | None = None
    if cache_pvc is not None:
        if not isinstance(cache_pvc, str) or not is_subdomain(cache_pvc):
            raise InvalidInput(
                f"{where}: cache_pvc {str(cache_pvc)[:80]!r} is not valid. Accepted: the name of "
                "a ReadWriteMany PersistentVolumeClaim (a DNS-1123 subdomain)."
            )
        pvc = cache_pvc
    names: tuple[str, ...] = ()
    if node_names is not None:
        if not isinstance(node_names, list) or not all(
            isinstance(x, str) and is_subdomain(x) for x in node_names
        ):
            raise InvalidInput(
                f"{where}: node_names {str(node_names)[:80]!r} is not valid. Accepted: a list of "
                "node names (DNS-1123 subdomains)."
            )
        if len(node_names) != n or len(set(node_names)) != n:
            raise InvalidInput(
                f"{where}: node_names lists {len(set(node_names))} distinct nodes, but nodes is "
                f"{n}. Accepted: one distinct name per node."
            )
        names = tuple(node_names)
    return Pool(
        name=pool,
        gpu=card.id,
        gpus_per_node=g,
        nodes=n,
        mig=mig_name,
        mig_per_gpu=k,
        host_ram_bytes=ram,
        cache_pvc=pvc,
        node_names=names,
        product_label=product_label(card, mig_name),
        source=source,
    )


def parse_simulate(text: str, catalog: GpuCatalog | None = None) -> Pool:
    """--simulate POOL=NODESxGPUSxGPU[:[K x]MIG] -> one pool."""
    m = _SIM.match(text.strip().lower()) if len(text) <= 400 else None
    if m is None:
        raise InvalidInput(f"--simulate {text[:80]!r} is not valid. Accepted: {SIMULATE_ACCEPTED}.")
    mig = f"{m['k'] or 1}x{m['mig']}" if m["mig"] else None
    return make_pool(
        m["pool"],
        m["gpu"],
        int(m["gpus"]),
        int(m["nodes"]),
        f"--simulate {text[:80]!r}",
        mig=mig,
        catalog=catalog,
        source=f"--simulate {text}",
    )


class _NoAliasLoader(yaml.SafeLoader):
    """A safe loader that refuses anchors and aliases: a pool list never needs them, and an
    alias bomb (a few hundred bytes that expand to billions of nodes) cannot be walked."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.YAMLError(f"an alias (*{event.anchor}) at {event.start_mark}")
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if getattr(event, "anchor", None):
            raise yaml.YAMLError(f"an anchor (&{event.anchor}) at {event.start_mark}")
        return super().compose_node(parent, index)


def load_cluster_file(path: Path, catalog: GpuCatalog | None = None) -> tuple[Pool, ...]:
    """--cluster FILE: YAML ``pools: [{name, gpu, gpus_per_node, nodes, mig?, host_ram_gib?,
    cache_pvc?, node_names?}]``, bounded in size, without anchors or aliases."""
    where = f"--cluster {path}"
    text = read_text(path, CLUSTER_FILE_LIMIT, where)
    try:
        doc = yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise InvalidInput(
            f"{where}: not usable YAML ({str(exc)[:200]}). Accepted: plain YAML without anchors "
            "or aliases."
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("pools"), list) or not doc["pools"]:
        raise InvalidInput(
            f"{where}: no pool list. Accepted: a mapping with 'pools:', a list of 1 to "
            f"{MAX_POOLS} pools."
        )
    extra = sorted(str(k)[:40] for k in doc if k != "pools")
    if extra:
        raise InvalidInput(f"{where}: unknown key {extra[0]!r}. Accepted: pools.")
    raw = doc["pools"]
    if len(raw) > MAX_POOLS:
        raise InvalidInput(f"{where}: {len(raw)} pools. Accepted: 1 to {MAX_POOLS}.")
    catalog = catalog or load_gpu_catalog()
    pools: list[Pool] = []
    for i, entry in enumerate(raw):
        at = f"{where}: pools[{i}]"
        if not isinstance(entry, dict):
            raise InvalidInput(f"{at} is not a mapping. Accepted: name, gpu, gpus_per_node, nodes.")
        unknown = sorted(str(k)[:40] for k in entry if k not in _POOL_KEYS)
        if unknown:
            raise InvalidInput(
                f"{at}: unknown key {unknown[0]!r}. Accepted: {', '.join(sorted(_POOL_KEYS))}."
            )
        missing = [k for k in ("name", "gpu", "gpus_per_node", "nodes") if k not in entry]
        if missing:
            raise InvalidInput(
                f"{at}: {missing[0]} is missing. Accepted: name, gpu, gpus_per_node, nodes."
            )
        pools.append(
            make_pool(
                entry["name"],
                entry["gpu"],
                entry["gpus_per_node"],
                entry["nodes"],
                at,
                mig=entry.get("mig"),
                host_ram_gib=entry.get("host_ram_gib"),
                cache_pvc=entry.get("cache_pvc"),
                node_names=entry.get("node_names"),
                catalog=catalog,
                source=where,
            )
        )
    return check_pools(pools)


def check_pools(pools: Sequence[Pool]) -> tuple[Pool, ...]:
    """Pool names are unique, and no node is in two pools."""
    seen: dict[str, Pool] = {}
    owner: dict[str, str] = {}
    for p in pools:
        if p.name in seen:
            raise InvalidInput(
                f"pool name {p.name!r} is given twice ({seen[p.name].source}, {p.source}). "
                "Accepted: one pool per name."
            )
        seen[p.name] = p
        for node in p.node_names:
            if node in owner:
                raise InvalidInput(
                    f"node {node!r} is in two pools ({owner[node]} and {p.name}). Accepted: "
                    "each node in one pool."
                )
            owner[node] = p.name
    return tuple(pools)


def node_ram_bytes(pool: Pool, catalog: GpuCatalog | None = None) -> int:
    if pool.host_ram_bytes is not None:
        return pool.host_ram_bytes
    if pool.label_memory_mib is not None:
        return 2 * pool.gpus_per_node * pool.label_memory_mib * MIB
    card = (catalog or load_gpu_catalog()).find(pool.gpu)
    assert card is not None
    return 2 * pool.gpus_per_node * card.memory_total_mib * MIB


def unlisted_note(product: str, memory_mib: int, catalog: GpuCatalog | None = None) -> str:
    """What the plan and the manifest say of a GPU that is not in the catalog."""
    reserved, idle = _unlisted_reserve(catalog or load_gpu_catalog())
    return (
        f"memory from the nvidia.com/gpu.memory label: product {product} not in the catalog "
        f"({memory_mib} MiB total per GPU; free assumed {memory_mib - reserved - idle} MiB, "
        f"less the catalog's largest driver reserve {reserved} MiB and idle use {idle} MiB; "
        "compute capability, PCIe link, power limit and memory bandwidth unknown)"
    )


def _unlisted_reserve(catalog: GpuCatalog) -> tuple[int, int]:
    """The driver's reserve and the idle use to assume for a GPU the catalog lacks: the largest
    any catalog card shows (data/gpus.json memory_reserved_mib, memory_idle_used_mib), so its
    free memory is never over-stated (an over-stated free memory is an under-predicted OOM)."""
    return (
        max(g.memory_reserved_mib for g in catalog.gpus),
        max(g.memory_idle_used_mib for g in catalog.gpus),
    )


def _unlisted_simulation(pool: Pool, catalog: GpuCatalog) -> Simulation:
    """A node of GPUs known only by their labels, through the recorded-NVML fake and probe_gpus
    as --simulate does (probe/simulate.py scenario_for): name and total memory from the labels,
    free memory less the catalog's largest reserve; the fields NVML would give and the labels do
    not (compute capability, PCIe link, power limit, MIG mode) are left out, so the probe reads
    them as unknown, and bandwidth is unknown because the card is not in the catalog."""
    assert pool.label_memory_mib is not None
    total = pool.label_memory_mib
    reserved, idle = _unlisted_reserve(catalog)
    devices = [
        {
            "uuid": f"GPU-{uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f'gpu-preflight-k8s/{pool.product_label}/{i}')}",
            "name": pool.product_label,
            "memory_mib": {
                "total": total,
                "used": idle,
                "reserved": reserved,
                "free": max(total - idle - reserved, 0),
            },
        }
        for i in range(pool.gpus_per_node)
    ]
    scenario = {
        "description": f"{pool.gpus_per_node}x {pool.product_label} from node labels",
        "source": "nvidia.com/gpu.product and nvidia.com/gpu.memory labels",
        "driver_version": SIM_DRIVER,
        "cuda_driver_version": SIM_CUDA,
        "memory_v2": True,
        "devices": devices,
    }
    report = probe_gpus({}, lib=FakeNvml(scenario), catalog=catalog)
    note = unlisted_note(pool.product_label, total, catalog)
    devs = tuple(dataclasses.replace(d, notes=(note,)) for d in report.devices)
    report = dataclasses.replace(report, devices=devs, notes=(*report.notes, note))
    return Simulation(report, None, None)


def node_profile(pool: Pool, catalog: GpuCatalog | None = None) -> Profile:
    """One node of the pool, probed as ``--simulate`` probes a machine (probe/simulate.py:
    scenario_for through the recorded-NVML fake and probe_gpus), with the pool's host RAM."""
    catalog = catalog or load_gpu_catalog()
    if pool.label_memory_mib is not None:
        spec = f"{pool.gpus_per_node}x {pool.product_label} ({pool.label_memory_mib} MiB, labels)"
        sim = _unlisted_simulation(pool, catalog)
        hw = simulated_hardware(spec, node_ram_bytes(pool, catalog), sim=sim)
        return make_profile(hw, simulated=f"pool {pool.name}: {spec}")
    card = catalog.find(pool.gpu)
    assert card is not None
    spec = f"{pool.gpus_per_node}x{card.id}"
    if pool.mig is not None:
        spec += f":{pool.mig_per_gpu}x{pool.mig}"
    hw = simulated_hardware(spec, node_ram_bytes(pool, catalog))
    return make_profile(hw, simulated=f"pool {pool.name}: {spec}")
