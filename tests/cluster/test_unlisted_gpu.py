"""A GPU whose ``nvidia.com/gpu.product`` is not in the catalog (issue 21): planned from its
``nvidia.com/gpu.memory`` label (the TOTAL MiB of one GPU), and the plan and the manifest say so.
Read with the real kubernetes client from a local API server serving a recorded NodeList."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import yaml

from gpu_preflight import pipeline
from gpu_preflight.cluster import lws
from gpu_preflight.cluster.inventory import node_profile
from gpu_preflight.cluster.labels import pools_from_nodes
from gpu_preflight.cluster.layout import Planner, plan_pools
from gpu_preflight.gpu_catalog import load_gpu_catalog
from tests.support.fake_k8s import TOKEN, FakeK8s, node_list

PRODUCT = "NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition"
NVML_NAME = "NVIDIA RTX PRO 6000 Blackwell Server Edition"  # what the node's NVML answers
NOTE = f"memory from the nvidia.com/gpu.memory label: product {PRODUCT} not in the catalog"
MIB = 2**20


@pytest.fixture
def kubeconfig(tmp_path):
    fake = FakeK8s(nodes=node_list("unknown-product"))
    fake.start()
    yield fake.kubeconfig(tmp_path / "kubeconfig")
    fake.stop()


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_an_unknown_product_is_planned_from_its_memory_label(k8s, kubeconfig):
    r = k8s("--from-cluster", "--kubeconfig", str(kubeconfig))
    assert r.exit_code == 0, r.output
    assert NOTE in r.stdout.split("apiVersion:")[0]  # the manifest's comment says so
    assert "97887 MiB total per GPU" in r.stdout
    dep = next(d for d in _docs(r.stdout) if d["kind"] == "Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": PRODUCT}
    assert dep["spec"]["replicas"] == 2  # one pod of 4 GPUs per node
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    pin = lws._read_pin(_env(spec["containers"][0]))
    assert pin is not None and pin["gpu"] == [PRODUCT] and pin["gpu_mib"] == [97887]
    assert TOKEN not in r.output


def test_an_unknown_product_too_small_for_the_model_is_a_leaderworkerset(k8s, kubeconfig):
    r = k8s("--from-cluster", "--kubeconfig", str(kubeconfig), "--model", "deepseek-r1")
    assert r.exit_code == 0, r.output
    assert NOTE in r.stdout
    lws_doc = next(d for d in _docs(r.stdout) if d["kind"] == "LeaderWorkerSet")
    tmpl = lws_doc["spec"]["leaderWorkerTemplate"]
    assert tmpl["size"] == 2
    assert tmpl["leaderTemplate"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": PRODUCT}


def test_the_simulated_card_is_the_label_total_less_the_largest_reserve():
    pool = pools_from_nodes(node_list("unknown-product")["items"]).pools[0]
    assert pool.label_memory_mib == 97887 and pool.gpus_per_node == 4 and pool.nodes == 2
    assert pool.name == "nvidia-rtx-pro-6000-blackwell-server-x4"  # the count is never cut
    gpus = node_profile(pool).hardware.gpus
    cat = load_gpu_catalog().gpus
    reserve = max(g.memory_reserved_mib for g in cat) + max(g.memory_idle_used_mib for g in cat)
    for d in gpus.devices:
        assert d.total_bytes == 97887 * MIB
        assert d.free_bytes == (97887 - reserve) * MIB
        # What the labels do not say is unknown, not guessed.
        assert d.memory_bandwidth_gb_s is None and d.compute_capability is None
        assert d.pcie_gen_max is None and d.power_limit_watts is None
        assert any(NOTE in n for n in d.notes)
    assert any(NOTE in n for n in gpus.notes)


def test_the_real_node_runs_the_pinned_plan_and_a_smaller_one_fails_closed(monkeypatch, tmp_path):
    pools = pools_from_nodes(node_list("unknown-product")["items"]).pools
    (p,) = plan_pools(Planner.create({}, (), {}), pools)
    assert p.kind == "deployment", p.reasons
    # The node as its own NVML reports it: the name with spaces, the label's total memory.
    prof = node_profile(pools[0])
    devs = tuple(dataclasses.replace(d, name=NVML_NAME) for d in prof.hardware.gpus.devices)
    gpus = dataclasses.replace(prof.hardware.gpus, devices=devs[: p.gpus_per_pod])
    real = dataclasses.replace(prof.hardware, gpus=gpus)
    monkeypatch.setattr(pipeline, "collect_hardware", lambda env, opts: real)
    env = {**p.env, "PREFLIGHT_DRY_RUN": "1", "PREFLIGHT_RECEIPT": "off"}
    env["PREFLIGHT_PROFILE_DIR"] = str(tmp_path)
    got = pipeline.start(env, p.args, dry_run=True).plan
    assert got.verdict == "ship", got.reasons
    assert got.argv == p.plan.argv
    small = tuple(dataclasses.replace(d, total_bytes=d.total_bytes - 1024 * MIB) for d in devs)
    gpus = dataclasses.replace(gpus, devices=small[: p.gpus_per_pod])
    monkeypatch.setattr(
        pipeline,
        "collect_hardware",
        lambda env, opts: dataclasses.replace(real, gpus=gpus),
    )
    got = pipeline.start(env, p.args, dry_run=True).plan
    assert got.verdict == "refuse" and "gpu_mib" in got.reasons[0]


def _nodes(**labels: str) -> list[dict]:
    items = copy.deepcopy(node_list("unknown-product")["items"][:1])
    items[0]["metadata"]["labels"].update(labels)
    return items


def test_mig_on_an_unknown_product_is_refused_by_node():
    got = pools_from_nodes(
        _nodes(
            **{"nvidia.com/gpu.product": f"{PRODUCT}-MIG-1g.24gb", "nvidia.com/gpu.memory": "24000"}
        )
    )
    assert got.pools == () and "rtxpro-0" in got.refused[0] and "MIG profiles" in got.refused[0]


def test_a_zero_memory_label_of_an_unknown_product_is_refused_by_node():
    got = pools_from_nodes(_nodes(**{"nvidia.com/gpu.memory": "0"}))
    assert got.pools == () and "rtxpro-0" in got.refused[0] and "=0" in got.refused[0]


@pytest.mark.parametrize("bad", ["-1", "97887.5", "lots", "99999999999"])
def test_a_bad_memory_label_is_exit_2_naming_node_and_label(bad):
    from gpu_preflight.errors import InvalidInput

    with pytest.raises(InvalidInput, match=r"rtxpro-0.*nvidia\.com/gpu\.memory"):
        pools_from_nodes(_nodes(**{"nvidia.com/gpu.memory": bad}))


def test_a_refused_unknown_product_pool_still_says_where_its_memory_came_from(k8s, kubeconfig):
    # Far too large for 2 nodes of 4 x 96 GB at bf16: refused with the numbers and the source.
    r = k8s("--from-cluster", "--kubeconfig", str(kubeconfig), "--model", "glm-4.6@bf16")
    assert r.exit_code == 3, r.output
    assert "refused" in r.output and "nodes of 4x " + PRODUCT in r.output and NOTE in r.output


@pytest.mark.parametrize("version", ["1.34.0", "1.37.0"])
@pytest.mark.parametrize("model", [None, "deepseek-r1"])
def test_its_manifests_validate_strict(k8s, kubeconfig, version, model):
    import kubernetes_validate

    from gpu_preflight.cluster.names import is_dns1035_label, is_label_value

    args = ["--from-cluster", "--kubeconfig", str(kubeconfig)]
    r = k8s(*args, *(["--model", model] if model else []))
    assert r.exit_code == 0, r.output
    for doc in _docs(r.stdout):
        assert is_dns1035_label(doc["metadata"]["name"])
        if doc["kind"] == "LeaderWorkerSet":
            t = doc["spec"]["leaderWorkerTemplate"]
            templates = [t["leaderTemplate"], t["workerTemplate"]]
        else:
            kubernetes_validate.validate(doc, version, strict=True)
            templates = [doc["spec"]["template"]] if doc["kind"] == "Deployment" else []
        for tmpl in templates:
            assert is_label_value(tmpl["spec"]["nodeSelector"]["nvidia.com/gpu.product"])
            pt = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
            kubernetes_validate.validate({**pt, "template": tmpl}, version, strict=True)


def test_kubeconfig_from_the_environment_is_read_through_its_row(k8s, kubeconfig):
    r = k8s("--from-cluster", env={"KUBECONFIG": str(kubeconfig)})
    assert r.exit_code == 0, r.output
    assert NOTE in r.stdout and str(kubeconfig) not in r.stdout
    r = k8s("--from-cluster", env={"KUBECONFIG": "a\nb"})
    assert r.exit_code == 2 and "KUBECONFIG" in r.output and "Accepted:" in r.output
