"""Plan tables: every pool planned by the one planning path, on the pods' own profiles."""

from __future__ import annotations

import yaml

from tests.cluster.conftest import plans


def test_deepseek_r1_two_h100_nodes_is_one_leaderworkerset_tp8_pp2():
    p = plans("deepseek-r1", "h100=2x8xh100-sxm")["h100"]
    assert p.kind == "leaderworkerset"
    assert (p.tp, p.pp, p.group_size, p.replicas, p.gpus_per_pod) == (8, 2, 2, 1, 8)
    argv = list(p.plan.argv)
    assert argv[argv.index("--tensor-parallel-size") + 1] == "8"
    assert argv[argv.index("--pipeline-parallel-size") + 1] == "2"
    # Every stage fits its GPUs: the smallest stage bounds the KV pool (memory/vllm_pipeline.py).
    devs = p.plan.predicted.devices
    assert len(devs) == 16 and all(d.total_bytes <= d.budget_bytes for d in devs)
    assert p.plan.env.get("VLLM_PP_LAYER_PARTITION") is not None


def test_deepseek_r1_on_one_node_is_refused_with_the_nearest_layout():
    got = plans("deepseek-r1", "one=1x8xh100-sxm", "two=2x8xh100-sxm")
    one = got["one"]
    assert one.kind == "refuse"
    assert (
        "needs 2 nodes of 8x NVIDIA H100 80GB HBM3 (TP 8 x PP 2); pool one has 1" in one.reasons[0]
    )
    assert any("GiB" in r for r in one.reasons)  # the one-node numbers
    assert any(r.startswith("nearest that fits: pool two") for r in one.reasons)
    assert got["two"].kind == "leaderworkerset"


def test_glm_46_bf16_is_refused_on_one_node_with_two_nodes_as_the_alternative():
    p = plans("glm-4.6@bf16", "h100=1x8xh100-sxm")["h100"]
    assert p.kind == "refuse"
    assert "needs 2 nodes" in p.reasons[0] and "pool h100 has 1" in p.reasons[0]


def test_qwen3_235b_at_tp8_replicates_its_4_kv_heads_on_one_node():
    p = plans("qwen3-235b-a22b-instruct-2507", "h100=1x8xh100-sxm")["h100"]
    assert p.kind == "deployment" and p.gpus_per_pod == 8 and p.replicas == 1
    argv = list(p.plan.argv)
    assert argv[argv.index("--tensor-parallel-size") + 1] == "8"
    assert "--pipeline-parallel-size" not in argv


def test_l4_pool_beside_a100_pool_get_one_deployment_each():
    got = plans(None, "l4=2x1xl4", "a100=1x4xa100-80gb")
    assert got["l4"].kind == got["a100"].kind == "deployment"
    assert got["l4"].replicas == 2 and got["l4"].gpus_per_pod == 1
    assert got["a100"].gpus_per_pod == 4
    assert got["l4"].pool.product_label == "NVIDIA-L4"
    assert got["a100"].pool.product_label == "NVIDIA-A100-SXM4-80GB"


def test_mig_pool_is_one_server_per_leaf():
    p = plans(None, "mig=1x8xa100-80gb:2x3g.40gb")["mig"]
    assert p.kind == "deployment"
    assert p.resource == "nvidia.com/mig-3g.40gb" and p.gpus_per_pod == 1 and p.replicas == 16
    assert all(d.total_bytes <= d.budget_bytes for d in p.plan.predicted.devices)


def test_pinned_env_replans_to_the_same_argv():
    # The pod plans again with the pinned values: the pin is that plan (layout.Planner.pod).
    for p in plans(None, "l4=1x1xl4", "h100=1x8xh100-sxm").values():
        assert p.env["PREFLIGHT_MODEL"] and p.env["PREFLIGHT_ENGINE"] == p.plan.engine
        assert f'"context":{p.plan.context}' in p.pin


def test_cli_writes_deployment_and_exit_0(k8s, tmp_path):
    out = tmp_path / "llm.yaml"
    r = k8s("--simulate", "l4=2x1xl4", "--out", str(out))
    assert r.exit_code == 0, r.output
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    assert out.read_text().startswith("# Written by `gpu-preflight k8s --simulate l4=2x1xl4`.")


def test_cli_refuses_a_model_no_pool_holds_with_exit_3(k8s):
    r = k8s("--simulate", "l4=1x1xl4", "--model", "deepseek-r1")
    assert r.exit_code == 3
    assert "refused" in r.output and "GiB" in r.output and "Traceback" not in r.output


def test_cli_refuses_a_pool_of_too_few_nodes_naming_the_count(k8s):
    r = k8s("--simulate", "h100=1x8xh100-sxm", "--model", "deepseek-r1")
    assert r.exit_code == 3
    assert "needs 2 nodes of 8x NVIDIA H100 80GB HBM3" in r.output


def test_a_model_whose_weights_need_more_than_16_nodes_is_refused_at_once():
    p = plans("deepseek-r1", "l4=4x1xl4")["l4"]
    assert p.kind == "refuse"
    assert any("weights alone" in r and "need at least" in r for r in p.reasons), p.reasons
