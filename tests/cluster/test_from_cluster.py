"""--from-cluster: the real kubernetes client against a local API server serving recorded
NodeLists (tests/support/fake_k8s.py), with GPU feature discovery's label traps."""

from __future__ import annotations

import time

import pytest

from tests.support.fake_k8s import TOKEN, FakeK8s, node_list


@pytest.fixture
def cluster(tmp_path):
    def make(fixture: str, **kw):
        fake = FakeK8s(nodes=node_list(fixture) if fixture else {"items": []}, **kw)
        fake.start()
        made.append(fake)
        return fake, fake.kubeconfig(tmp_path / "kubeconfig")

    made: list[FakeK8s] = []
    yield make
    for f in made:
        f.stop()


def _yaml_docs(text: str):
    import yaml

    return [d for d in yaml.safe_load_all(text) if d]


def test_two_h100_nodes_are_one_pool_and_a_model_needing_both_is_a_leaderworkerset(k8s, cluster):
    fake, kc = cluster("h100-2x8")
    r = k8s("--from-cluster", "--kubeconfig", str(kc), "--model", "deepseek-r1")
    assert r.exit_code == 0, r.output
    docs = _yaml_docs(r.stdout)
    lws = next(d for d in docs if d["kind"] == "LeaderWorkerSet")
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    sel = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["nodeSelector"]
    assert sel == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert fake.requests and fake.requests[0].startswith("/api/v1/nodes")
    assert TOKEN not in r.output


def test_l4_beside_a100_are_two_pools_by_allocatable_count(k8s, cluster):
    _, kc = cluster("l4-a100")
    r = k8s("--from-cluster", "--kubeconfig", str(kc))
    assert r.exit_code == 0, r.output
    deps = {d["metadata"]["name"]: d for d in _yaml_docs(r.stdout) if d["kind"] == "Deployment"}
    assert set(deps) == {"llm-l4-x1", "llm-a100-80gb-x4"}
    assert deps["llm-l4-x1"]["spec"]["replicas"] == 2
    lim = deps["llm-a100-80gb-x4"]["spec"]["template"]["spec"]["containers"][0]["resources"][
        "limits"
    ]
    assert lim == {"nvidia.com/gpu": "4"}


def test_mig_single_plans_the_leaf_from_the_product_label(k8s, cluster):
    _, kc = cluster("mig-single")
    r = k8s("--from-cluster", "--kubeconfig", str(kc))
    assert r.exit_code == 0, r.output
    dep = next(d for d in _yaml_docs(r.stdout) if d["kind"] == "Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB-MIG-3g.40gb"}
    assert spec["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert dep["spec"]["replicas"] == 4


def test_mig_mixed_asks_for_the_mig_resource(k8s, cluster):
    _, kc = cluster("mig-mixed")
    r = k8s("--from-cluster", "--kubeconfig", str(kc))
    assert r.exit_code == 0, r.output
    dep = next(d for d in _yaml_docs(r.stdout) if d["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"] == {"nvidia.com/mig-3g.40gb": "1"}
    assert dep["spec"]["replicas"] == 4


def test_time_sliced_gpus_are_refused_by_node_exit_3(k8s, cluster):
    _, kc = cluster("time-sliced")
    r = k8s("--from-cluster", "--kubeconfig", str(kc))
    assert r.exit_code == 3
    assert "l4-shared-0" in r.output and "no memory guarantee" in r.output


def test_a_gpu_node_without_product_label_is_exit_2_naming_it(k8s, cluster):
    _, kc = cluster("missing-labels")
    r = k8s("--from-cluster", "--kubeconfig", str(kc))
    assert r.exit_code == 2
    assert "gpu-unlabelled-0" in r.output and "nvidia.com/gpu.product" in r.output


@pytest.mark.parametrize("status", [401, 403])
def test_unauthorized_and_forbidden_are_exit_2_without_the_token(k8s, cluster, status, tmp_path):
    fake, kc = cluster("h100-2x8", status=403)
    if status == 401:
        fake.kubeconfig(kc, token="wrong-token-3f9a")
    r = k8s("--from-cluster", "--kubeconfig", str(kc))
    assert r.exit_code == 2, r.output
    assert f"({status})" in r.output
    assert TOKEN not in r.output and "wrong-token-3f9a" not in r.output
    assert "Traceback" not in r.output


def test_a_slow_server_is_a_bounded_error(k8s, cluster, monkeypatch):
    from gpu_preflight.cluster import labels

    monkeypatch.setattr(labels, "TIMEOUT_S", (1.0, 1.0))
    _, kc = cluster("h100-2x8", slow_s=30.0)
    t0 = time.monotonic()
    r = k8s("--from-cluster", "--kubeconfig", str(kc))
    assert r.exit_code == 2 and "cannot list nodes" in r.output
    assert time.monotonic() - t0 < 20.0  # the read timeout, not the server's 30 s


def test_an_unreachable_server_is_exit_2(k8s, cluster):
    fake, kc = cluster("h100-2x8")
    fake.stop()
    r = k8s("--from-cluster", "--kubeconfig", str(kc))
    assert r.exit_code == 2 and "cannot list nodes at http://127.0.0.1:" in r.output


def test_unknown_context_and_unreadable_kubeconfig_are_exit_2(k8s, cluster, tmp_path):
    _, kc = cluster("h100-2x8")
    r = k8s("--from-cluster", "--kubeconfig", str(kc), "--context", "nope")
    assert r.exit_code == 2 and "nope" in r.output and TOKEN not in r.output
    r = k8s("--from-cluster", "--kubeconfig", str(tmp_path / "absent"))
    assert r.exit_code == 2 and "absent" in r.output
    bad = tmp_path / "bad"
    bad.write_text(":: not yaml [")
    r = k8s("--from-cluster", "--kubeconfig", str(bad))
    assert r.exit_code == 2 and "Traceback" not in r.output
