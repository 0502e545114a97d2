"""Every manifest against the real schemas and parsers, and the checks the schemas cannot make.

- Deployments, Services and their pod templates: kubernetes-validate --strict for Kubernetes 1.34
  and 1.37 (the versions kubernetes-validate 1.37 ships: 1.34.0 to 1.37.0, both ends used here).
- LeaderWorkerSets: the CRD's own openAPIV3Schema (kubernetes-sigs/lws at the commit named in
  ../shared/schemas/README.md) with jsonschema; the CRD is never copied into this repository.
- Every resource quantity through the kubernetes client's parse_quantity, and what the API
  server rejects although the schemas accept it: DNS-1123/1035 names, label values, the
  selector matching the template's labels, replicas >= 0, LWS size >= 1, GPUs per pod x nodes
  = TP x PP, no HF_TOKEN value, startupPolicy never LeaderReady, pod memory >= the shm limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes.utils import parse_quantity

from gpu_preflight.cluster.manifests import Options, documents, render
from gpu_preflight.cluster.names import is_dns1035_label, is_dns1123_label, is_label_value
from tests.cluster.conftest import plans

REPO = Path(__file__).resolve().parents[2]
CRD = REPO.parent / "shared" / "schemas" / "leaderworkerset.x-k8s.io_leaderworkersets.yaml"
K8S_VERSIONS = ("1.34.0", "1.37.0")
CASES = {
    "deepseek-r1 2x8 H100": ("deepseek-r1", ("h100=2x8xh100-sxm",)),
    "glm-4.6 bf16 4x8 H100": ("glm-4.6@bf16", ("h100=4x8xh100-sxm",)),
    "qwen3-235b 1x8 H100": ("qwen3-235b-a22b-instruct-2507", ("h100=1x8xh100-sxm",)),
    "L4 beside A100": (None, ("l4=3x1xl4", "a100=1x4xa100-80gb")),
    "MIG": (None, ("mig=2x8xa100-80gb:2x3g.40gb",)),
}


def _docs(name: str, **opts: Any) -> list[dict[str, Any]]:
    model, pools = CASES[name]
    got = plans(model, *pools)
    o = Options(**opts)
    text = render(list(got.values()), documents(list(got.values()), o), "test")
    return list(yaml.safe_load_all(text))  # what kubectl reads: the rendered YAML


ALL = {name: _docs(name, net_if="eth0", namespace="llm") for name in CASES}


def _pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "Deployment":
        return [doc["spec"]["template"]["spec"]]
    if doc["kind"] == "LeaderWorkerSet":
        t = doc["spec"]["leaderWorkerTemplate"]
        return [t["leaderTemplate"]["spec"], t["workerTemplate"]["spec"]]
    return []


def _templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "Deployment":
        return [doc["spec"]["template"]]
    if doc["kind"] == "LeaderWorkerSet":
        t = doc["spec"]["leaderWorkerTemplate"]
        return [t["leaderTemplate"], t["workerTemplate"]]
    return []


def test_cases_cover_every_kind():
    kinds = {d["kind"] for docs in ALL.values() for d in docs}
    assert kinds == {"Deployment", "Service", "LeaderWorkerSet"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", list(CASES))
def test_builtin_kinds_validate_strict(name, version):
    import kubernetes_validate

    for doc in ALL[name]:
        if doc["kind"] == "LeaderWorkerSet":
            # Its pod templates are core PodTemplates: validated as such, strictly.
            for tmpl in _templates(doc):
                pt = {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": "t"},
                    "template": tmpl,
                }
                kubernetes_validate.validate(pt, version, strict=True)
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        for tmpl in _templates(doc):
            pt = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "t"},
                "template": tmpl,
            }
            kubernetes_validate.validate(pt, version, strict=True)


def test_kubernetes_validate_cli_strict_on_the_written_file(tmp_path):
    # The same through kubernetes-validate's own command line, as a user would run it.
    f = tmp_path / "l4.yaml"
    f.write_text(yaml.safe_dump_all(ALL["L4 beside A100"]))
    for version in K8S_VERSIONS:
        r = subprocess.run(
            [
                str(Path(sys.executable).parent / "kubernetes-validate"),
                "--strict",
                "-k",
                version,
                str(f),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert r.returncode == 0, r.stdout + r.stderr


def _crd_schema() -> dict[str, Any]:
    if not CRD.is_file():
        pytest.fail(
            f"missing {CRD}: the LeaderWorkerSet CRD (kubernetes-sigs/lws, "
            "config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml, at the commit named "
            "in ../shared/schemas/README.md); CI has it beside the checkout"
        )
    crd = yaml.safe_load(CRD.read_text())
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return v1["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("name", ["deepseek-r1 2x8 H100", "glm-4.6 bf16 4x8 H100"])
def test_leaderworkerset_validates_against_the_crd(name):
    schema = _crd_schema()
    lws = [d for d in ALL[name] if d["kind"] == "LeaderWorkerSet"]
    assert lws
    for doc in lws:
        jsonschema.validate(doc, schema)


def test_the_crd_rejects_what_it_should():
    # The schema is really checked: a wrong field type is an error.
    schema = _crd_schema()
    doc = json.loads(
        json.dumps(next(d for d in ALL["deepseek-r1 2x8 H100"] if d["kind"] == "LeaderWorkerSet"))
    )
    doc["spec"]["leaderWorkerTemplate"]["size"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def _quantities(obj: Any, path: str = ""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("requests", "limits") and isinstance(v, dict):
                for rk, rv in v.items():
                    yield f"{path}.{k}.{rk}", rv
            elif k == "sizeLimit":
                yield f"{path}.{k}", v
            else:
                yield from _quantities(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _quantities(v, f"{path}[{i}]")


@pytest.mark.parametrize("name", list(CASES))
def test_every_quantity_parses_and_api_server_rules_hold(name):
    docs = ALL[name]
    for doc in docs:
        for where, q in _quantities(doc):
            assert isinstance(q, str), where
            assert parse_quantity(q) >= 0, where
        meta = doc["metadata"]
        assert is_dns1123_label(meta["name"]) and is_dns1123_label(meta["namespace"])
        for v in meta["labels"].values():
            assert is_label_value(v)
        if doc["kind"] == "Service":
            assert is_dns1035_label(meta["name"])  # Services are DNS-1035 labels
            target = [
                d for d in docs if d["kind"] != "Service" and d["metadata"]["name"] == meta["name"]
            ]
            assert len(target) == 1
            labels = _templates(target[0])[0]["metadata"]["labels"]
            assert doc["spec"]["selector"].items() <= labels.items()
        if doc["kind"] == "Deployment":
            spec = doc["spec"]
            assert spec["replicas"] >= 0
            assert (
                spec["selector"]["matchLabels"].items()
                <= spec["template"]["metadata"]["labels"].items()
            )
        if doc["kind"] == "LeaderWorkerSet":
            assert is_dns1035_label(meta["name"]) and len(meta["name"]) <= 63
            spec = doc["spec"]
            assert spec["startupPolicy"] == "LeaderCreated"  # never LeaderReady
            t = spec["leaderWorkerTemplate"]
            assert t["size"] >= 1 and spec["replicas"] >= 0
            assert t["restartPolicy"] == "RecreateGroupOnPodRestart"
            gpus = int(
                t["leaderTemplate"]["spec"]["containers"][0]["resources"]["limits"][
                    "nvidia.com/gpu"
                ]
            )
            argv = json.loads(_env(t["leaderTemplate"]["spec"])["PREFLIGHT_K8S_PLAN"])["argv"]
            tp = int(argv[argv.index("--tensor-parallel-size") + 1])
            pp = int(argv[argv.index("--pipeline-parallel-size") + 1])
            assert gpus * t["size"] == tp * pp
            # Probes on the leader only.
            assert "startupProbe" in t["leaderTemplate"]["spec"]["containers"][0]
            assert "startupProbe" not in t["workerTemplate"]["spec"]["containers"][0]
        for spec in _pod_specs(doc):
            c = spec["containers"][0]
            shm = next(v for v in spec["volumes"] if v["name"] == "shm")["emptyDir"]
            assert shm["medium"] == "Memory"
            assert parse_quantity(c["resources"]["requests"]["memory"]) >= parse_quantity(
                shm["sizeLimit"]
            )
            for e in c["env"]:
                if e["name"] == "HF_TOKEN":
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"]


def _env(spec: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in spec["containers"][0]["env"]}


def test_no_hf_token_value_anywhere(monkeypatch):
    marker = "hf_SECRETMARKER_0a1b2c"
    monkeypatch.setenv("HF_TOKEN", marker)
    for name in CASES:
        assert marker not in json.dumps(_docs(name))


def test_multi_node_env_vllm_host_ip_and_net_if():
    lws = next(d for d in ALL["deepseek-r1 2x8 H100"] if d["kind"] == "LeaderWorkerSet")
    for tmpl in _templates(lws):
        env = _env(tmpl["spec"])
        assert env["VLLM_HOST_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "eth0"
    # Without --net-if neither is set.
    lws = next(d for d in _docs("deepseek-r1 2x8 H100") if d["kind"] == "LeaderWorkerSet")
    assert "NCCL_SOCKET_IFNAME" not in _env(
        lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]
    )


def test_lws_cache_per_pod_or_the_users_rwx_claim():
    lws = next(d for d in ALL["deepseek-r1 2x8 H100"] if d["kind"] == "LeaderWorkerSet")
    vct = lws["spec"]["leaderWorkerTemplate"]["volumeClaimTemplates"]
    assert vct[0]["metadata"]["name"] == "hf-cache"
    assert parse_quantity(vct[0]["spec"]["resources"]["requests"]["storage"]) > 600 * 2**30
