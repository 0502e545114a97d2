"""The planner's device order (--device) against llama.cpp's own breakdown on two lavapipe devices.

The planner tries each card as the last device of llama.cpp's list, because the last device with a
share of the layers holds the output layer and computes the logits (src/llama-model.cpp
load_tensors: dev_output = get_layer_buft_list(n_layer)), and writes --device CUDAa,CUDAb where an
order other than the CUDA one plans more (plan/llamacpp.py device_orders). --device makes the
model's device list in the order given (common/arg.cpp parse_device_list; src/llama.cpp
llama_prepare_model_devices keeps params.devices as they are) and --tensor-split follows it.

Here two Vulkan devices (the same lavapipe twice, GGML_VK_VISIBLE_DEVICES=0,0; recipe of
test_vulkan_placement.py) get uneven budgets: the planner sees recorded GPUs whose free memory is
lavapipe's less a per-device margin, the -fitt llama.cpp's own fit is given. llama-fit-params then
runs the planner's exact argv, its CUDA device names spelled as this build names the same devices
(CUDA<n> -> Vulkan<n>), and its breakdown (rows in the model's device order, common/fit.cpp
common_memory_breakdown_print) must put the planner's weights and KV on each device, the output
layer on the device the planner said, and stay within each device's budget.

The model is a 1B Llama with a 65536-row untied output, which lavapipe keeps on the device
(test_vulkan_placement.py LAVAPIPE_MAX_STORAGE_BUFFER_RANGE). Vulkan compute buffers are Vulkan's,
not CUDA's: they are compared only between the two devices (the logits' one is the larger).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.memory.test_vulkan_main_gpu import output_heavy_gguf
from tests.memory.test_vulkan_placement import (
    CONTEXT,
    FIT_PARAMS,
    TOL_MIB,
    arch_of,
    as_vulkan,
    llama_cpp_output_device,
    planner_plan,
    run_fit_params,
    scenario,
    vk_env,
)
from tests.support.llama_fit import FitResult, llama_fit

from gpu_preflight.plan.types import Plan

pytestmark = pytest.mark.vulkan

MIB = 2**20
LAVAPIPE_FREE_MIB = 2048


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    return output_heavy_gguf(tmp_path_factory.mktemp("order") / "order.gguf")


def _flag(argv: tuple[str, ...], name: str) -> str | None:
    assert argv.count(name) <= 1, argv
    return argv[argv.index(name) + 1] if name in argv else None


def _gpus(p: Plan) -> list[str]:
    assert p.predicted is not None
    return [d.device for d in p.predicted.devices if d.device != "CPU"]


def _output_note(p: Plan) -> str:
    assert p.predicted is not None
    return next(n for n in p.predicted.notes if n.startswith("device order"))


def _check(p: Plan, ref: FitResult, out_bytes: int, output_on: str) -> None:
    """llama.cpp's breakdown of the planner's argv against the plan, device by device."""
    assert p.predicted is not None
    planned = {d.device: d for d in p.predicted.devices}
    rows = [d for d in ref.devices if d.name.startswith("Vulkan")]
    # llama.cpp lists the devices in the model's order: the planner's order, by name
    assert [r.name.replace("Vulkan", "CUDA") for r in rows] == _gpus(p), (rows, _gpus(p))
    for r in rows:
        pd = planned[r.name.replace("Vulkan", "CUDA")]
        line = (
            f"{pd.device} ({r.name}): planner weights/KV/compute "
            f"{[round(x / MIB) for x in (pd.weights_bytes, pd.kv_cache_bytes, pd.compute_bytes)]}"
            f" MiB, budget {pd.budget_bytes // MIB}; llama.cpp model/context/compute "
            f"{[r.model_mib, r.context_mib, r.compute_mib]} MiB"
        )
        print("  " + line)
        # the same layers, and the output layer, on the same device
        assert abs(pd.weights_bytes / MIB - r.model_mib) <= TOL_MIB, line
        assert abs(pd.kv_cache_bytes / MIB - r.context_mib) <= TOL_MIB, line
        # within its budget by llama.cpp's own accounting of what it puts there, compute too
        assert r.total_mib * MIB <= pd.budget_bytes, line
    by_name = {r.name.replace("Vulkan", "CUDA"): r for r in rows}
    other = next(n for n in by_name if n != output_on)
    # The output layer is where the planner said. By load_tensors' rule applied to the argv (the
    # -ts shares over the --device list) it is on output_on, the planner's last device; the
    # planner counts its bytes there (far above the tolerance: had llama.cpp put it elsewhere,
    # the model columns above would be off by as much); and that device computes the logits,
    # the biggest compute buffer.
    ngl = _flag(p.argv, "--n-gpu-layers") or "all"
    n_layer = arch_of("llama-3.2-1b-instruct").n_layers
    split = tuple(float(x) for x in (_flag(p.argv, "--tensor-split") or "").split(",") if x)
    at = llama_cpp_output_device(n_layer, -1 if ngl == "all" else int(ngl), split, len(rows))
    assert at >= 0 and _gpus(p)[at] == output_on, (at, _gpus(p))
    assert out_bytes > 8 * TOL_MIB * MIB
    assert by_name[output_on].compute_mib > by_name[other].compute_mib, rows


def _own_fit(gguf: Path, fitt: tuple[int, ...], device: str) -> str:
    """llama.cpp's own fit (llama_cpp_fit of test_vulkan_placement.py) in this device order."""
    args = ["--model", str(gguf), "--ctx-size", str(CONTEXT), "--parallel", "1"]
    args += ["--flash-attn", "on", "-fitt", ",".join(str(m) for m in fitt)]
    args += ["--fit-ctx", str(CONTEXT), "--device", device]
    r = run_fit_params(args, vk_env("0,0"))
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("-c ")]
    assert lines, r.stdout[-500:]
    return lines[-1].strip()


@pytest.mark.parametrize(
    ("free", "device", "output_on"),
    [
        # the roomier card is CUDA0: the CUDA order (output on CUDA1, 1400 MiB) does not fit,
        # --device CUDA1,CUDA0 puts the output on CUDA0
        ([2048, 1400], "CUDA1,CUDA0", "CUDA0"),
        # the same cards the other way round: the CUDA order already has the roomier card last
        ([1400, 2048], None, "CUDA1"),
    ],
    ids=["roomy-cuda0", "roomy-cuda1"],
)
def test_the_planners_device_order_by_llama_cpps_breakdown(
    model: tuple[Path, int],
    tmp_path: Path,
    free: list[int],
    device: str | None,
    output_on: str,
) -> None:
    path, out_bytes = model
    fitt = tuple(LAVAPIPE_FREE_MIB - f for f in free)
    p = planner_plan(path, scenario(tmp_path / "order.json", free))
    assert p.verdict == "ship", p.reasons
    assert _flag(p.argv, "--device") == device, p.argv
    assert _gpus(p)[-1] == output_on
    note = _output_note(p)
    assert f"(GPU {output_on[4:]})" in note.split("output on ")[1].split(",")[0], note
    argv = as_vulkan(p.argv)
    ref = llama_fit(argv, env={**vk_env("0,0"), **p.env}, binary=FIT_PARAMS)
    print(
        f"\nfree {free} MiB: planner {' '.join(argv[argv.index('--n-gpu-layers') :][:2])} "
        f"--tensor-split {_flag(p.argv, '--tensor-split')} --device {_flag(argv, '--device')}"
    )
    print(f"  {note}")
    _check(p, ref, out_bytes, output_on)
    # llama.cpp's own fit for the same margins and this device order (printed, not asserted: it
    # keeps no margin or runtime overhead of the planner's)
    order = _flag(argv, "--device") or "Vulkan0,Vulkan1"
    theirs = _own_fit(path, fitt, order)
    print(f"  llama.cpp's own fit, -fitt {','.join(map(str, fitt))} --device {order}: {theirs}")


def test_a_users_device_order_by_llama_cpps_breakdown(
    model: tuple[Path, int], tmp_path: Path
) -> None:
    """A user's --device CUDA1,CUDA0 is planned as given: the output on CUDA0."""
    path, out_bytes = model
    pin = ("--device", "CUDA1,CUDA0")
    p = planner_plan(path, scenario(tmp_path / "pin.json", [2048, 1900]), pin)
    assert p.verdict == "ship", p.reasons
    assert _flag(p.argv, "--device") == "CUDA1,CUDA0" and _gpus(p) == ["CUDA1", "CUDA0"]
    ref = llama_fit(as_vulkan(p.argv), env={**vk_env("0,0"), **p.env}, binary=FIT_PARAMS)
    _check(p, ref, out_bytes, "CUDA0")
