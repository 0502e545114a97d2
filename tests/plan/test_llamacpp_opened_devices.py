"""Every GPU llama.cpp opens costs a CUDA context, whether it holds layers or not.

llama.cpp reads the free memory of each device of its list (src/llama.cpp
llama_model_load_from_file_impl: ggml_backend_dev_get_props -> ggml-cuda.cu
ggml_backend_cuda_device_get_memory: cudaSetDevice + cudaMemGetInfo, which creates the device's
primary context), and llama_context starts a backend for each of model.devices. Without
--device it reads every GPU's properties first, to drop duplicates, and only then keeps the
--main-gpu one for --split-mode none. So:

- a share of 0 in a user's -ts still charges that GPU its overhead (the plan is what runs);
- a GPU the planner's split would give no layers is left out of the list and of --device;
- --split-mode none over several GPUs writes llama.cpp's own list as --device, so --main-gpu
  indexes the same GPU and only that one is opened.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import NVML
from tests.plan.conftest import run_plan

from gpu_preflight.memory.llamacpp import CUDA_OVERHEAD, layers_per_device

LLAMA = {"PREFLIGHT_ENGINE": "llama.cpp"}


def flag(argv: tuple[str, ...], name: str) -> str | None:
    assert argv.count(name) <= 1, argv
    return argv[argv.index(name) + 1] if name in argv else None


def rows(p) -> dict[str, tuple[int, int, int]]:
    """GPU rows of the prediction: (weights + KV, overhead, budget)."""
    assert p.predicted is not None
    return {
        d.device: (d.weights_bytes + d.kv_cache_bytes, d.overhead_bytes, d.budget_bytes)
        for d in p.predicted.devices
        if d.device != "CPU"
    }


def test_layers_per_device_follows_llamas_split_points() -> None:
    assert layers_per_device(32, (0.5, 0.5)) == [17, 16]  # 33 positions, the first 17 below 0.5
    assert layers_per_device(32, (1.0, 0.0)) == [33, 0]
    assert layers_per_device(32, (0.999, 0.001)) == [33, 0]  # a share under one layer
    assert layers_per_device(32, ()) == [33]


def test_a_zero_share_in_a_users_split_still_costs_its_context() -> None:
    p = run_plan(
        "2xrtx-3090",
        {**LLAMA, "PREFLIGHT_MODEL": "llama-3.1-8b-instruct"},
        argv=("--tensor-split", "1,0"),
    )
    assert p.verdict == "ship", p.reasons
    assert flag(p.argv, "--tensor-split") == "1,0"  # as given
    got = rows(p)
    assert got["CUDA1"][0] == 0  # no layers, no KV
    assert got["CUDA1"][1] == CUDA_OVERHEAD  # but its CUDA context


def _nearly_full_3060(tmp_path: Path, free_mib: int) -> str:
    doc = json.loads((NVML / "mixed_4090_3060.json").read_text())
    card = doc["devices"][1]
    mem = card["memory_mib"]
    mem["free"] = free_mib
    mem["used"] = mem["total"] - mem["reserved"] - free_mib
    out = tmp_path / "4090_and_a_busy_3060.json"
    out.write_text(json.dumps(doc))
    return str(out)


def test_a_card_the_split_gives_no_layers_is_left_out_of_the_device_list(tmp_path) -> None:
    spec = _nearly_full_3060(tmp_path, 700)
    p = run_plan(spec, {**LLAMA, "PREFLIGHT_MODEL": "qwen2.5-14b-instruct"})
    assert p.verdict == "ship", p.reasons
    got = rows(p)
    assert "CUDA1" not in got, got
    assert flag(p.argv, "--device") == "CUDA0"  # so llama-server does not open the 3060
    assert flag(p.argv, "--tensor-split") is None


def test_split_mode_none_lists_llamas_own_order_so_only_the_main_gpu_is_opened() -> None:
    p = run_plan(
        "2xrtx-3090",
        {**LLAMA, "PREFLIGHT_MODEL": "llama-3.1-8b-instruct"},
        argv=("--split-mode", "none", "--main-gpu", "1"),
    )
    assert p.verdict == "ship", p.reasons
    assert flag(p.argv, "--device") == "CUDA0,CUDA1"
    assert flag(p.argv, "--main-gpu") == "1"
    assert list(rows(p)) == ["CUDA1"]


def test_split_mode_none_on_one_gpu_needs_no_list() -> None:
    p = run_plan(
        "rtx-3090",
        {**LLAMA, "PREFLIGHT_MODEL": "llama-3.1-8b-instruct"},
        argv=("--split-mode", "none"),
    )
    assert p.verdict == "ship", p.reasons
    assert "--device" not in p.argv
