"""--from-cluster: the nodes' GPU labels, read with the official kubernetes client, as pools.

GPU feature discovery (NVIDIA k8s-device-plugin, gpu-feature-discovery) labels each GPU node;
its traps, each handled here:
- ``nvidia.com/gpu.product`` is the NVML name with spaces as '-' (internal/lm/resource.go), so
  it is matched to the catalog by NVML name written the same way;
- ``nvidia.com/gpu.memory`` is the TOTAL MiB of one GPU, not what is free;
- the schedulable count is ``status.allocatable["nvidia.com/gpu"]``, not ``nvidia.com/gpu.count``
  (the device plugin can hold GPUs back as unhealthy);
- ``nvidia.com/mig.strategy``: ``single`` makes every MIG leaf a ``nvidia.com/gpu`` whose product,
  count and memory labels are the leaf's (product "<GPU>-MIG-<profile>"); ``mixed`` exposes
  ``nvidia.com/mig-<profile>`` resources with ``nvidia.com/mig-<profile>.count`` / ``.memory``;
- time-sliced or MPS GPUs (``nvidia.com/gpu.replicas`` above 1, a product ending in
  ``-SHARED``, ``nvidia.com/gpu.sharing-strategy``) have no memory guarantee: such a node is
  refused by name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_preflight.cluster.inventory import (
    MAX_GPUS_PER_NODE,
    Pool,
    check_pools,
    make_pool,
    unlisted_note,
)
from gpu_preflight.cluster.names import check_pool_name
from gpu_preflight.errors import InvalidInput
from gpu_preflight.gpu_catalog import GpuCatalog, GpuSpec, load_gpu_catalog
from gpu_preflight.inputs.flags import env_setting

GPU = "nvidia.com/gpu"
PRODUCT, MEMORY, COUNT = "nvidia.com/gpu.product", "nvidia.com/gpu.memory", "nvidia.com/gpu.count"
REPLICAS, STRATEGY = "nvidia.com/gpu.replicas", "nvidia.com/mig.strategy"
SHARING = "nvidia.com/gpu.sharing-strategy"
_MIG_RES = re.compile(r"^nvidia\.com/mig-([0-9]g\.[0-9]+gb)$")
TIMEOUT_S = (5.0, 20.0)  # connect, read: a slow API server is an error, not a hang
MAX_NODES = 5000
MAX_MIB = 10**7  # GiB-scale GPUs: a label above this is not a GPU's memory


@dataclass(frozen=True)
class ClusterRead:
    pools: tuple[Pool, ...]
    refused: tuple[str, ...]  # "node: why", one per node that cannot be planned


def _int(node: str, key: str, raw: object, high: int = 4096) -> int:
    text = str(raw).strip()
    if not text.isdigit() or len(text) > 9 or int(text) > high:
        raise InvalidInput(
            f"node {node}: {key}={text[:40]!r} is not valid. Accepted: a whole number from 0 to "
            f"{high} (as GPU feature discovery and the device plugin write it)."
        )
    return int(text)


def _card(catalog: GpuCatalog, product: str) -> GpuSpec | None:
    key = product.strip().lower()
    return next((g for g in catalog.gpus if g.nvml_name.replace(" ", "-").lower() == key), None)


def _slug(product: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", product.lower())).strip("-")[:64] or "gpu"


def _group(
    node: Mapping[str, Any], catalog: GpuCatalog
) -> tuple[tuple[Any, ...] | None, str | None]:
    """(pool key, None) for a usable GPU node, (None, why) for a refused one, (None, None) for a
    node without GPUs."""
    meta = node.get("metadata") or {}
    name = str(meta.get("name", "?"))[:253]
    labels = meta.get("labels") or {}
    alloc = (node.get("status") or {}).get("allocatable") or {}
    mig_res = {m[1]: _int(name, k, v) for k, v in alloc.items() if (m := _MIG_RES.match(k))}
    gpus = _int(name, f'allocatable["{GPU}"]', alloc[GPU]) if GPU in alloc else 0
    if gpus == 0 and not any(mig_res.values()):
        return None, None
    product = labels.get(PRODUCT)
    replicas = labels.get(REPLICAS)
    if (
        (replicas is not None and _int(name, REPLICAS, replicas) > 1)
        or (isinstance(product, str) and product.endswith("-SHARED"))
        or labels.get(SHARING) in ("time-slicing", "mps")
    ):
        return None, (
            f"{name}: shared GPUs (time-slicing or MPS: {REPLICAS}={replicas}, "
            f"{PRODUCT}={product}) have no memory guarantee"
        )
    if not product or MEMORY not in labels:
        missing = PRODUCT if not product else MEMORY
        raise InvalidInput(
            f"node {name}: it has {GPU} but no {missing} label. Accepted: nodes labelled by GPU "
            "feature discovery (the NVIDIA GPU operator), or --cluster FILE."
        )
    memory = _int(name, MEMORY, labels[MEMORY], MAX_MIB)
    strategy = labels.get(STRATEGY, "none")
    base, _, mig = str(product).partition("-MIG-")
    card = _card(catalog, base)
    if card is None and (mig or (strategy == "mixed" and any(mig_res.values()))):
        # A MIG leaf's memory and count per GPU come from the catalog's profiles.
        return None, (
            f"{name}: MIG on GPU {product!r} ({memory} MiB per {MEMORY}), which is not in the "
            "GPU catalog (`gpu-preflight gpus`): its MIG profiles are unknown; describe the "
            "pool with --cluster FILE"
        )
    if card is None:
        # Not in the catalog: the memory label (the TOTAL MiB of one GPU) is the source, and
        # the plan says so (inventory.py unlisted_note).
        if memory == 0:
            return None, f"{name}: {MEMORY}=0 for GPU {product!r} not in the GPU catalog"
        return (_slug(str(product)), gpus, None, 0, "none", str(product), memory), None
    if strategy == "single" and mig:
        return (card.id, gpus, mig.lower(), 1, "single"), None
    if strategy == "mixed" and any(mig_res.values()):
        profile, leaves = max(mig_res.items(), key=lambda kv: kv[1])
        physical = _int(name, COUNT, labels.get(COUNT, "1")) or 1
        per = leaves // physical if leaves % physical == 0 else leaves
        return (card.id, physical if per != leaves else 1, profile, per, "mixed"), None
    if abs(memory - card.memory_total_mib) > card.memory_total_mib // 50:
        return None, (
            f"{name}: {MEMORY}={memory} MiB, but {card.nvml_name} has "
            f"{card.memory_total_mib} MiB (catalog); describe the pool with --cluster FILE"
        )
    return (card.id, gpus, None, 0, "none"), None


def pools_from_nodes(
    nodes: Sequence[Mapping[str, Any]], catalog: GpuCatalog | None = None
) -> ClusterRead:
    """NodeList items (as the API serves them) -> pools of identical nodes, and refused nodes."""
    catalog = catalog or load_gpu_catalog()
    groups: dict[tuple[Any, ...], list[str]] = {}
    refused: list[str] = []
    for node in nodes[:MAX_NODES]:
        key, why = _group(node, catalog)
        if why:
            refused.append(why)
        elif key is not None:
            groups.setdefault(key, []).append(str((node.get("metadata") or {}).get("name")))
    pools = []
    for key, names in sorted(groups.items(), key=lambda kv: str(kv[0])):
        gpu, count, mig, per, strategy = key[:5]
        tail = f"-x{count}" + (f"-{mig.replace('.', '-')}" if mig else "")
        # A long product name is cut, never the GPU count and MIG profile that tell pools apart.
        name = re.sub(r"[^a-z0-9-]", "-", str(gpu).lower())[: 40 - len(tail)].strip("-") + tail
        name = name if name[:1].isalpha() else f"gpu-{name}"[:40].strip("-")  # DNS-1035
        if len(key) > 5:
            pools.append(_unlisted_pool(name, key[5], key[6], count, sorted(names), catalog))
            continue
        pool = make_pool(
            name,
            gpu,
            count,
            len(names),
            "--from-cluster",
            mig=f"{per}x{mig}" if mig else None,
            node_names=sorted(names),
            catalog=catalog,
            source="--from-cluster",
        )
        if strategy == "single":
            import dataclasses

            card = catalog.find(gpu)
            assert card is not None
            pool = dataclasses.replace(
                pool,
                mig_strategy="single",
                product_label=f"{card.nvml_name.replace(' ', '-')}-MIG-{mig}",
            )
        pools.append(pool)
    return ClusterRead(check_pools(pools), tuple(refused))


def _unlisted_pool(
    name: str, product: str, memory: int, count: int, names: list[str], catalog: GpuCatalog
) -> Pool:
    """A pool of a GPU the catalog lacks, described by its labels: the product (the node
    selector) and the total memory; the rest of the card is unknown, and the pool says so."""
    return Pool(
        name=check_pool_name("--from-cluster", name),
        gpu=_slug(product),
        gpus_per_node=_count_ok(name, count),
        nodes=len(names),
        node_names=tuple(names),
        product_label=product,
        source="--from-cluster",
        notes=(unlisted_note(product, memory, catalog),),
        label_memory_mib=memory,
    )


def _count_ok(name: str, count: int) -> int:
    if not 1 <= count <= MAX_GPUS_PER_NODE:
        raise InvalidInput(
            f"--from-cluster pool {name}: {count} GPUs per node. Accepted: 1 to "
            f"{MAX_GPUS_PER_NODE} (the largest node this tool simulates)."
        )
    return count


def read_cluster(
    env: Mapping[str, str], kubeconfig: Path | None, context: str | None
) -> ClusterRead:
    """List the nodes with the kubernetes client (kubeconfig, context), bounded in time; every
    failure is one line naming the file, the context or the server, never the credentials."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException

    # KUBECONFIG through its row of the flag table (inputs/flags.py): one parser per variable.
    path = str(kubeconfig) if kubeconfig else env_setting(env, "KUBECONFIG")
    shown = path or "~/.kube/config"
    try:
        api = config.new_client_from_config(config_file=path, context=context)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
        what = f"context {context!r}" if context and "context" in str(exc).lower() else "it"
        raise InvalidInput(
            f"--kubeconfig {shown}: cannot use {what} ({type(exc).__name__}). Accepted: a "
            "readable kubeconfig with that context (kubectl config get-contexts lists them)."
        ) from None
    host = str(api.configuration.host)[:200]
    api.configuration.retries = 0
    try:
        raw = client.CoreV1Api(api).list_node(_request_timeout=TIMEOUT_S, _preload_content=False)
        import json

        doc = json.loads(raw.data)  # type: ignore[attr-defined]
    except ApiException as exc:
        status = exc.status
        why = {401: "unauthorized (401)", 403: "forbidden (403): the user may not list nodes"}
        raise InvalidInput(
            f"--from-cluster: the API server at {host} answered "
            f"{why.get(status, f'HTTP {status}')}. Accepted: credentials that may list nodes."
        ) from None
    except Exception as exc:  # urllib3 timeouts and connection errors, bad JSON
        raise InvalidInput(
            f"--from-cluster: cannot list nodes at {host} ({type(exc).__name__}, within "
            f"{TIMEOUT_S[0]:g}+{TIMEOUT_S[1]:g} s). Accepted: a reachable API server."
        ) from None
    finally:
        api.close()
    items = doc.get("items") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise InvalidInput(f"--from-cluster: {host} did not answer a NodeList")
    return pools_from_nodes(items)
