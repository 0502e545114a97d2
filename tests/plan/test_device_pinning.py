"""The plan runs on the cards it planned on: a card that is not this process's CUDA0.

vLLM has no device flag: it runs rank r on cuda:r of what CUDA_VISIBLE_DEVICES shows it
(v1/executor/multiproc_executor.py). llama-server spreads over every visible GPU unless --device
names them. So a plan on one card of a mixed pair, or on an identical group that skips a card,
must pin those cards, and name them CUDA<ordinal> of this process so that its budgets, the dry
run and the receipt measure the card the engine really uses.
"""

from __future__ import annotations

import json

from tests.plan.conftest import NVML, profile_for, run_plan

from gpu_preflight import pipeline
from gpu_preflight.receipt.take import _gpu_map


def _uuid(machine: str, index: int) -> str:
    devs = profile_for(machine).hardware.gpus.devices
    return next(str(d.uuid) for d in devs if d.index == index)


def test_vllm_on_the_second_card_alone_is_pinned_to_it():
    machine = "rtx-3060,rtx-4090"  # the 4090 is GPU 1, CUDA1
    p = run_plan(machine, {"PREFLIGHT_ENGINE": "vllm", "PREFLIGHT_MODEL": "qwen3-14b@awq"})
    assert p.verdict == "ship" and p.engine == "vllm"
    gpus = [d for d in p.predicted.devices if d.device != "CPU"]
    assert [(d.device, d.description) for d in gpus] == [
        ("CUDA1", "NVIDIA GeForce RTX 4090 (GPU 1)")
    ]
    assert p.env["CUDA_VISIBLE_DEVICES"] == _uuid(machine, 1)
    assert "CUDA_DEVICE_ORDER" not in p.env  # a UUID needs no order
    env = pipeline.engine_env({"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "0,1"}, p)
    assert env["CUDA_VISIBLE_DEVICES"] == _uuid(machine, 1)
    assert any("pinned" in w and "CUDA_VISIBLE_DEVICES" in w for w in p.warnings)
    # the receipt measures GPU 1
    assert _gpu_map(p, profile_for(machine)) == {"CUDA1": 1}


def test_vllm_on_cuda0_needs_no_pin():
    p = run_plan(
        "rtx-4090,rtx-3060", {"PREFLIGHT_ENGINE": "vllm", "PREFLIGHT_MODEL": "qwen3-14b@awq"}
    )
    assert p.verdict == "ship" and "CUDA_VISIBLE_DEVICES" not in p.env
    assert [d.device for d in p.predicted.devices if d.device != "CPU"] == ["CUDA0"]


def test_an_identical_group_that_skips_a_card_is_pinned_to_its_cards():
    machine = "a100-80gb,a100-40gb,a100-80gb"
    p = run_plan(
        machine,
        {"PREFLIGHT_MODEL": "llama-3.1-70b-instruct@awq"},
        argv=("--pipeline-parallel-size", "1"),
    )
    assert p.verdict == "ship" and p.engine == "vllm", p.reasons
    assert p.argv[p.argv.index("--tensor-parallel-size") + 1] == "2"
    assert [d.device for d in p.predicted.devices if d.device != "CPU"] == ["CUDA0", "CUDA2"]
    assert p.env["CUDA_VISIBLE_DEVICES"] == f"{_uuid(machine, 0)},{_uuid(machine, 2)}"


def test_llama_cpp_on_the_second_card_alone_names_it_with_device():
    # A 30B at Q4_K_M: the 4090 alone beats the pair here (the planner's default on this machine)
    machine = "rtx-3060,rtx-4090"
    p = run_plan(machine, {"PREFLIGHT_MODEL": "qwen3-30b-a3b@Q4_K_M"}, engines=("llama.cpp",))
    assert p.verdict == "ship" and p.engine == "llama.cpp", p.reasons
    gpus = [d.device for d in p.predicted.devices if d.device != "CPU"]
    if gpus == ["CUDA1"]:  # the card alone was chosen: llama-server must not spread over both
        assert p.argv[p.argv.index("--device") + 1] == "CUDA1"
        assert "--tensor-split" not in p.argv
    else:  # a split over both cards, each named in the planned order
        assert sorted(gpus) == ["CUDA0", "CUDA1"] and "--tensor-split" in p.argv
    # the tier's own choice on this machine is the 4090 alone
    alone = run_plan(machine, engines=("llama.cpp",))
    assert [d.device for d in alone.predicted.devices if d.device != "CPU"] == ["CUDA1"]
    assert alone.argv[alone.argv.index("--device") + 1] == "CUDA1"
    assert "--tensor-split" not in alone.argv


def test_llama_cpp_on_the_first_card_alone_is_told_so_too():
    # The same machine the other way round: the 4090 is CUDA0, and without --device
    # llama-server would still spread over the 3060 (CUDA1) as well. This one-card plan used to
    # be made on a profile holding the 4090 only, which lost the count of CUDA devices.
    alone = run_plan("rtx-4090,rtx-3060", engines=("llama.cpp",))
    assert [d.device for d in alone.predicted.devices if d.device != "CPU"] == ["CUDA0"]
    assert alone.argv[alone.argv.index("--device") + 1] == "CUDA0"
    assert "--tensor-split" not in alone.argv
    assert any("GPU 1 (NVIDIA GeForce RTX 3060) is not planned on" in w for w in alone.warnings), alone.warnings


def test_llama_cpp_is_told_its_devices_when_cuda_sees_one_more(tmp_path):
    # The last of four A100s is lost: CUDA still numbers it (its ordinal is kept), so without
    # --device llama-server would try to spread over it too.
    doc = json.loads((NVML / "one_gpu_lost.json").read_text())
    doc["devices"] = [doc["devices"][i] for i in (0, 1, 3, 2)]
    path = tmp_path / "last_gpu_lost.json"
    path.write_text(json.dumps(doc))
    p = run_plan(str(path), engines=("llama.cpp",))
    assert p.verdict == "ship", p.reasons
    gpus = [d.device for d in p.predicted.devices if d.device != "CPU"]
    assert gpus == ["CUDA0", "CUDA1", "CUDA2"]
    assert p.argv[p.argv.index("--device") + 1] == "CUDA0,CUDA1,CUDA2"
    # with every device planned, no flag
    whole = run_plan("rtx4090.json", engines=("llama.cpp",))
    assert "--device" not in whole.argv
