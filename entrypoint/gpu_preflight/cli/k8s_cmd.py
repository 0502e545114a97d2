"""`gpu-preflight k8s`: Kubernetes manifests per GPU node pool, each pool planned like one machine."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

from gpu_preflight.errors import InvalidInput

EXIT_OK, EXIT_REFUSE = 0, 3
# NCCL_SOCKET_IFNAME's own syntax (NCCL docs, Environment Variables): an optional ^ (exclude) or
# = (exact) prefix, then comma-separated interface names or prefixes.
_NET_IF = re.compile(r"^[\^=]?[A-Za-z0-9_.:-]{1,15}(,[A-Za-z0-9_.:-]{1,15}){0,7}$")


def _net_if(value: str | None) -> str | None:
    if value is not None and not _NET_IF.match(value):
        raise InvalidInput(
            f"--net-if {value[:80]!r} is not valid. Accepted: network interface names (at most "
            "15 characters of letters, digits, '_', '.', ':', '-'), comma-separated, optionally "
            "prefixed by ^ or = as NCCL_SOCKET_IFNAME takes them"
        )
    return value


@click.command(
    name="k8s",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    epilog="\b\nExamples:\n"
    "  gpu-preflight k8s --simulate h100=2x8xh100-sxm --model deepseek-r1\n"
    "  gpu-preflight k8s --cluster pools.yaml --out llm.yaml\n"
    "  gpu-preflight k8s --from-cluster --context prod -- --max-model-len 32768",
)
@click.option(
    "--cluster",
    "cluster_file",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="YAML of pools: name, gpu, gpus_per_node, nodes, mig, host_ram_gib, cache_pvc.",
)
@click.option(
    "--simulate",
    "simulate",
    multiple=True,
    metavar="POOL=NODESxGPUSxGPU[:MIG]",
    help="A pool as if it existed, e.g. h100=2x8xh100-sxm (repeatable).",
)
@click.option(
    "--from-cluster", is_flag=True, help="Read the nodes' GPU labels with the kubernetes client."
)
@click.option(
    "--kubeconfig",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="With --from-cluster (default: KUBECONFIG or ~/.kube/config).",
)
@click.option(
    "--context", "kube_context", metavar="NAME", help="With --from-cluster: the kubeconfig context."
)
@click.option(
    "--model", metavar="ID|REPO", help="The model for every pool (default: chosen per pool)."
)
@click.option("--engine", type=click.Choice(["vllm", "llama.cpp"]), help="The engine.")
@click.option(
    "--host-ram",
    type=click.FloatRange(1, 65536),
    metavar="GIB",
    help="Host RAM per node of --simulate pools (default: 2 x the node's GPU memory).",
)
@click.option("--image", default=None, metavar="IMAGE", help="The gpu-preflight image.")
@click.option(
    "--namespace", default=None, metavar="NS", help="metadata.namespace of every resource."
)
@click.option(
    "--net-if",
    default=None,
    metavar="IFACES",
    help="NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME of multi-node pods.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write it here.")
@click.argument("engine_args", nargs=-1, type=click.UNPROCESSED)
def k8s(
    cluster_file: Path | None,
    simulate: tuple[str, ...],
    from_cluster: bool,
    kubeconfig: Path | None,
    kube_context: str | None,
    model: str | None,
    engine: str | None,
    host_ram: float | None,
    image: str | None,
    namespace: str | None,
    net_if: str | None,
    out: Path | None,
    engine_args: tuple[str, ...],
) -> None:
    """Kubernetes manifests for every GPU node pool, or a refusal with the numbers.

    A pool whose one node holds the model gets a Deployment and a Service; a model no node holds
    is planned across the nodes of a pool (TP = GPUs per node, PP = nodes) as a LeaderWorkerSet
    with vLLM's own multi-node launcher. Exit 0 written, 3 no pool can serve it, 2 bad input.
    """
    from gpu_preflight.cluster import inventory, layout, manifests
    from gpu_preflight.cluster.names import is_dns1123_label

    env = dict(os.environ)
    args = list(engine_args)
    if args and args[0] == "--":
        args = args[1:]
    sources = sum((cluster_file is not None, bool(simulate), from_cluster))
    if sources != 1:
        raise InvalidInput(
            "say which pools, once: --cluster FILE, --simulate POOL=NODESxGPUSxGPU (repeatable) "
            "or --from-cluster"
        )
    if host_ram is not None and not simulate:
        raise InvalidInput(
            "--host-ram goes with --simulate (a --cluster file sets host_ram_gib per pool; "
            "--from-cluster pools assume 2 x the node's GPU memory)"
        )
    if (kubeconfig or kube_context) and not from_cluster:
        raise InvalidInput("--kubeconfig and --context go with --from-cluster")
    if namespace is not None and not is_dns1123_label(namespace):
        raise InvalidInput(
            f"--namespace {namespace[:80]!r} is not valid. Accepted: a DNS-1123 label."
        )
    opts = manifests.Options(
        image=image or manifests.DEFAULT_IMAGE, namespace=namespace, net_if=_net_if(net_if)
    )
    planner = layout.Planner.create(env, args, {"--model": model, "--engine": engine})
    refused_nodes: list[str] = []
    if cluster_file is not None:
        pools = inventory.load_cluster_file(cluster_file)
    elif simulate:
        pools = inventory.check_pools([inventory.parse_simulate(s) for s in simulate])
        if host_ram is not None:
            import dataclasses

            pools = tuple(
                dataclasses.replace(p, host_ram_bytes=int(host_ram * inventory.GIB)) for p in pools
            )
    else:
        from gpu_preflight.cluster.labels import read_cluster

        found = read_cluster(env, kubeconfig, kube_context)
        pools, refused_nodes = found.pools, list(found.refused)
    for line in refused_nodes:
        click.echo(f"gpu-preflight: node refused: {line}", err=True)
    if not pools:
        click.echo("gpu-preflight: no usable GPU node pool: " + "; ".join(refused_nodes), err=True)
        sys.exit(EXIT_REFUSE)
    plans = layout.plan_pools(planner, pools)
    for p in plans:
        if p.kind == "refuse":
            click.echo(f"gpu-preflight: {manifests.summary(p)}", err=True)
            for note in (n for n in p.pool.notes if n not in p.reasons):  # a GPU from its labels
                click.echo(f"gpu-preflight:   {note}", err=True)
    if all(p.kind == "refuse" for p in plans):
        sys.exit(EXIT_REFUSE)
    docs = manifests.documents(plans, opts)
    # The header names how it was made, from the options (never the engine arguments, which
    # may carry a key).
    how = ["gpu-preflight k8s"]
    how += [f"--cluster {cluster_file}"] if cluster_file else []
    how += [f"--simulate {s}" for s in simulate]
    how += ["--from-cluster"] if from_cluster else []
    how += [f"--model {model}"] if model else []
    command = " ".join(how)[:300]
    text = manifests.render(plans, docs, command)
    if out is None:
        click.echo(text, nl=False)
    else:
        from gpu_preflight.launch import scrub, write_atomic

        write_atomic(out, scrub(text, os.environ))  # a written file is output: secrets masked
    sys.exit(EXIT_OK)
