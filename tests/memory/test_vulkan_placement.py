"""Placement on a device that is not the CPU: llama.cpp's Vulkan backend on Mesa's lavapipe.

lavapipe (mesa-vulkan-drivers) is a software Vulkan driver: llama.cpp's Vulkan backend sees it as
a real device with its own memory (2048 MiB, all free), so llama.cpp's device-side decisions run
here without a GPU: which repeating layers and whether the output layer go to which device
(src/llama-model.cpp ``load_tensors``: ``i_gpu_start``, the split points, ``dev_output``), the
tensor split, and the expert offload (common/fit.cpp ``common_fit_params``). lavapipe is a
CPU-type Vulkan device, which ggml-vulkan skips unless ``GGML_VK_VISIBLE_DEVICES`` names it
(ggml-vulkan.cpp ``ggml_vk_instance_init``); naming it twice (``0,0``) gives two devices.

Two things are checked, on sparse GGUFs of real catalog architectures (no disk, header only):

a. llama.cpp's own fit (``llama-fit-params`` without ``--fit-print``) with per-device ``-fitt``
   margins chooses what it chose when this recipe was checked: this pins the device, the driver
   and the build (.ci/llama-cpp-vulkan.sh).
b. The planner, given recorded NVML GPUs whose free memory is what lavapipe reports minus the same
   margins, writes an argv; llama.cpp's breakdown of *that argv* on the lavapipe devices
   (tests/support/llama_fit.py, ``--fit-print on``) must put the same weights and KV on each
   device as the planner says (within a few MiB), and what llama.cpp places on each device must
   be within the planner's budget for it. The planner's -ngl/-ts/--n-cpu-moe and llama.cpp's own
   choice for the same budgets are printed side by side (they need not agree: the planner keeps a
   margin and a runtime overhead llama.cpp does not count).

One lavapipe rule has no CUDA counterpart: a weight matrix of more than 65536 rows (the output
layer of both models) stays on the CPU (see LAVAPIPE_MAX_STORAGE_BUFFER_RANGE); the comparison
moves it, and two tests pin the rule and -ngl's counting of the output layer on a model that
lavapipe does not refuse.

Vulkan compute buffers are Vulkan's, not CUDA's: they are printed, never asserted on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.gguf_factory import _nbytes, tensor_plan, write_gguf
from tests.support.llama_fit import FitDevice, llama_fit

from gpu_preflight import pipeline
from gpu_preflight.memory.llamacpp import LlamaCppConfig, estimate_llamacpp
from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.resolve import resolve_model
from gpu_preflight.models.types import ModelArch
from gpu_preflight.plan.types import Plan, PlannedDevice
from gpu_preflight.probe.collect import simulated_hardware
from gpu_preflight.profile import make_profile
from gpu_preflight.schemas import validate

pytestmark = pytest.mark.vulkan

MIB = 2**20
CATALOG = load_catalog()
CONTEXT = 8192
# lavapipe's memory as ggml-vulkan reports it (ggml_backend_vk_get_device_memory: the
# device-local heap, or its budget where VK_EXT_memory_budget is present), measured with Mesa
# 22.3.6 (Debian 12); test_lavapipe_devices checks it.
LAVAPIPE_FREE_MIB = 2048
# The planner's weights/KV per device against llama.cpp's printed "model"/"context" columns, which
# common_fit_print floors to whole MiB per device.
TOL_MIB = 4
# A card the GPU catalog knows, so that the planner can forecast the decode speed of a partial
# offload (llvmpipe has no memory bandwidth in data/gpus.json); only the name is borrowed: the
# memory is lavapipe's.
GPU_NAME = "NVIDIA GeForce RTX 4090"
# Mesa's lavapipe ICD (mesa-vulkan-drivers), named after the machine (lvp_icd.x86_64.json)
LVP_ICDS = sorted(Path("/usr/share/vulkan/icd.d").glob("lvp_icd.*.json"))


def arch_of(model: str) -> ModelArch:
    spec = CATALOG.get(model)
    assert spec is not None, model
    return spec.arch


def vulkan_bin() -> Path:
    """The binaries of .ci/llama-cpp-vulkan.sh (its cache directory)."""
    cache = Path(os.environ.get("GPU_PREFLIGHT_CACHE", "/var/cache/gpu-preflight"))
    version = os.environ.get("LLAMA_CPP_PYTHON_VERSION", "0.3.36")
    return cache / f"llama.cpp-vulkan-{version}" / "bin"


FIT_PARAMS = vulkan_bin() / "llama-fit-params"
if not FIT_PARAMS.exists():
    pytest.skip(
        f"{FIT_PARAMS} not built: run `make llama-cpp-vulkan` (.ci/llama-cpp-vulkan.sh)",
        allow_module_level=True,
    )
if not LVP_ICDS:
    pytest.skip(
        "Mesa's lavapipe is not installed (mesa-vulkan-drivers): run `make system-deps`",
        allow_module_level=True,
    )


def vk_env(visible: str) -> dict[str, str]:
    """The environment for a Vulkan llama.cpp on lavapipe only: ``visible`` is
    GGML_VK_VISIBLE_DEVICES ("0" = one device, "0,0" = the same lavapipe twice)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
    env["GGML_VK_VISIBLE_DEVICES"] = visible
    # only Mesa's software driver, whatever else the machine has (the Vulkan loader reads
    # VK_DRIVER_FILES, and VK_ICD_FILENAMES before loader 1.3.207)
    env["VK_ICD_FILENAMES"] = env["VK_DRIVER_FILES"] = ":".join(str(p) for p in LVP_ICDS)
    return env


def run_fit_params(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [str(FIT_PARAMS), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, f"llama-fit-params {args} exited {r.returncode}: {r.stderr[-800:]}"
    return r


# common_print_available_devices (common/common.cpp):
#   "  Vulkan0: llvmpipe (LLVM 15.0.6, 256 bits) (2048 MiB, 2048 MiB free)"
_DEVICE_LINE = re.compile(r"^\s*(Vulkan\d+): (.*) \((\d+) MiB, (\d+) MiB free\)\s*$")


def vulkan_devices(visible: str) -> list[tuple[str, str, int, int]]:
    """(name, description, total MiB, free MiB) of the Vulkan devices llama.cpp sees."""
    r = run_fit_params(["--list-devices"], vk_env(visible))
    out = []
    for line in (r.stdout + r.stderr).splitlines():
        m = _DEVICE_LINE.match(line)
        if m:
            out.append((m[1], m[2], int(m[3]), int(m[4])))
    return out


@dataclass(frozen=True)
class Fitted:
    """What llama.cpp's own fit printed (tools/fit-params/fit-params.cpp): -c, -ngl, -ts, -ot."""

    line: str
    ngl: int
    ts: tuple[int, ...]
    cpu_expert_layers: tuple[int, ...]  # layers whose experts an -ot override sends to the CPU


def parse_fitted(line: str) -> Fitted:
    m = re.search(r"-ngl (-?\d+)", line)
    assert m, line
    ts = re.search(r"-ts ([\d,]+)", line)
    ot = re.search(r'-ot "([^"]*)"', line)
    layers: list[int] = []
    for rule in ot[1].split(",") if ot else []:
        pattern, _, buft = rule.rpartition("=")
        lm = re.match(r"blk\\\.(\d+)\\\.ffn_", pattern)
        if lm and "exps" in pattern and buft.upper().startswith("CPU"):
            layers.append(int(lm[1]))
    return Fitted(
        line.strip(),
        int(m[1]),
        tuple(int(x) for x in ts[1].split(",")) if ts else (),
        tuple(sorted(layers)),
    )


def llama_cpp_fit(gguf: Path, visible: str, fitt: tuple[int, ...]) -> Fitted:
    """llama.cpp's own fit: the -ngl/-ts/-ot it would run with, for free memory minus ``fitt``."""
    args = ["--model", str(gguf), "--ctx-size", str(CONTEXT), "--parallel", "1"]
    args += ["--flash-attn", "on", "-fitt", ",".join(str(m) for m in fitt)]
    # --fit-ctx: llama.cpp may otherwise shrink the context to fit; the planner keeps 8192
    args += ["--fit-ctx", str(CONTEXT)]
    r = run_fit_params(args, vk_env(visible))
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("-c ")]
    assert lines, f"no fitted arguments in llama-fit-params' output: {r.stdout[-500:]!r}"
    return parse_fitted(lines[-1])


def scenario(path: Path, free_mib: list[int]) -> Path:
    """A recorded NVML scenario (schemas/nvml-scenario.schema.json) of len(free_mib) GPUs with
    lavapipe's memory and the given free MiB."""
    devices = [
        {
            "uuid": f"GPU-1a0a0000-0000-4000-8000-00000000000{i}",
            "name": GPU_NAME,
            "memory_mib": {"total": LAVAPIPE_FREE_MIB, "used": LAVAPIPE_FREE_MIB - f, "free": f},
            "compute_capability": [8, 9],
            "pcie_gen_current": 4,
            "pcie_gen_max": 4,
            "pcie_width_current": 16,
            "pcie_width_max": 16,
            "power_limit_mw": 450000,
            "mig_mode": [0, 0],
        }
        for i, f in enumerate(free_mib)
    ]
    doc = {
        "description": f"{len(free_mib)} lavapipe Vulkan device(s) as GPUs, free MiB {free_mib}",
        "source": "llama.cpp Vulkan on Mesa lavapipe: 2048 MiB per device (llama-fit-params "
        "--list-devices), minus the -fitt margin passed to llama.cpp",
        "driver_version": "550.54.14",
        "cuda_driver_version": 12040,
        "memory_v2": True,
        "devices": devices,
    }
    validate("nvml-scenario", doc, str(path))
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def planner_plan(gguf: Path, scenario_path: Path, argv: tuple[str, ...] = ()) -> Plan:
    """The planner's plan for this GGUF on the scenario's devices, with the user's arguments."""
    env = {
        "PREFLIGHT_MODEL": str(gguf),
        "PREFLIGHT_ENGINE": "llama.cpp",
        "PREFLIGHT_CONTEXT": str(CONTEXT),
        "PREFLIGHT_PARALLEL": "1",
        "PREFLIGHT_MIN_TOKS": "0.001",
    }
    hardware = simulated_hardware(str(scenario_path), 64 * 2**30, 40.0)
    profile = make_profile(hardware, simulated=str(scenario_path))
    inputs = pipeline.prepare(env, argv)
    return pipeline.plan_on(inputs, profile, ("llama.cpp",))


def flag(argv: tuple[str, ...], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def as_vulkan(argv: tuple[str, ...]) -> tuple[str, ...]:
    """The planner's argv with its --device names (CUDA<n>, the image's CUDA build) spelled as
    this Vulkan build names the same devices, Vulkan<n>; nothing else changes. The planner writes
    --device where another device order than the CUDA one plans more (plan/llamacpp.py
    device_orders); llama.cpp's rows come in that order, as the planner's devices do."""
    out = list(argv)
    if "--device" in out:
        i = out.index("--device") + 1
        out[i] = ",".join("Vulkan" + n.removeprefix("CUDA") for n in out[i].split(","))
    return tuple(out)


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    made: dict[str, Path] = {}

    def get(model: str) -> Path:
        if model not in made:
            d = tmp_path_factory.mktemp("vk-gguf")
            made[model] = write_gguf(d / f"{model}.gguf", arch_of(model), "Q4_K_M")
        return made[model]

    return get


# -- lavapipe's one placement rule that CUDA does not have ------------------------------------
#
# select_weight_buft (src/llama-model-loader.cpp) offers a weight to a device only if the device
# supports the op it is used in; weight_buft_supported probes MUL_MAT with a 512-row F32 input, so
# the probe's result is n_rows x 512 x 4 bytes. ggml_backend_vk_device_supports_op
# (ggml-vulkan.cpp, tensor_size_supported) refuses any source or result larger than the device's
# maxStorageBufferRange unless it has VK_EXT_shader_64bit_indexing. Mesa 22.3's lavapipe lacks
# that extension and its range is 2^27 (128 MiB: the boundary test below finds exactly 65536 rows
# x 512 x 4 bytes), so a matrix of more than 65536 rows - the output layer of Llama 3.1 (128256)
# or Qwen3 (151936) - falls back to the next buffer type, the CPU, although load_tensors assigned
# the output layer to the Vulkan device. CUDA has no such limit (and desktop Vulkan drivers
# typically report a 4 GiB range), so the planner rightly puts the output on the GPU: the
# comparison below moves it to the host for lavapipe, and test_lavapipe_output_row_limit pins the
# rule at its exact boundary.
LAVAPIPE_MAX_STORAGE_BUFFER_RANGE = 2**27
PROBE_ROWS = 512  # weight_buft_supported's MUL_MAT input: ne[1] = 512, F32


def lavapipe_refuses(n_rows: int) -> bool:
    return n_rows * PROBE_ROWS * 4 > LAVAPIPE_MAX_STORAGE_BUFFER_RANGE


def output_weight_bytes(model: str) -> tuple[int, int]:
    """(rows, bytes) of output.weight as gguf_factory writes it (Q4_K_M: Q6_K output)."""
    arch = arch_of(model)
    for name, shape, t in tensor_plan(arch, "Q4_K_M"):
        if name == "output.weight":
            return shape[0], _nbytes(t, shape)
    raise AssertionError(f"{model}: no output.weight (tied embeddings)")


def llama_cpp_output_device(n_layer: int, ngl: int, split: tuple[float, ...], n_dev: int) -> int:
    """The device llama.cpp assigns the output layer to (-1 = CPU), from src/llama-model.cpp
    load_tensors: i_gpu_start = n_layer + 1 - ngl, the output is layer index n_layer, and its device
    is the first split point above (n_layer - i_gpu_start) / act_gpu_layers."""
    act = min(ngl, n_layer + 1) if ngl >= 0 else n_layer + 1
    if act <= 0:
        return -1
    start = max(n_layer + 1 - act, 0)
    fractions = list(split) if split and any(split) else [1.0] * n_dev
    total = sum(fractions)
    pos = (n_layer - start) / act
    acc = 0.0
    for i, f in enumerate(fractions):
        acc += f / total
        if pos < acc:
            return i
    return n_dev - 1


def test_lavapipe_output_row_limit(tmp_path: Path) -> None:
    """The rule above, at its boundary: an output.weight of 65536 rows goes to the Vulkan device,
    one of 65600 rows stays on the CPU (a 1B Llama with an untied output, all layers offloaded)."""
    base = arch_of("llama-3.2-1b-instruct")
    kept_on_host = {}
    for rows in (65536, 65600):
        arch = dataclasses.replace(base, vocab_size=rows, tied_embeddings=False)
        path = write_gguf(tmp_path / f"out{rows}.gguf", arch, "Q4_K_M")
        sizes = {n: _nbytes(t, shape) for n, shape, t in tensor_plan(arch, "Q4_K_M")}
        argv = ("llama-server", "--model", str(path), "--ctx-size", "512", "--n-gpu-layers", "99")
        host = llama_fit(argv, env=vk_env("0"), binary=FIT_PARAMS).host
        # every repeating layer is offloaded: the host keeps token_embd, and the output if refused
        extra = host.model_mib - sizes["token_embd.weight"] / MIB
        print(f"n_vocab {rows}: host model {host.model_mib} MiB, token_embd + {extra:.1f} MiB")
        assert min(abs(extra), abs(extra - sizes["output.weight"] / MIB)) <= 1, extra
        kept_on_host[rows] = abs(extra) > 1
    assert kept_on_host == {65536: False, 65600: True}
    assert not lavapipe_refuses(65536) and lavapipe_refuses(65600)


@pytest.mark.parametrize("ngl", [1, 2, 9, 16, 17])
def test_ngl_counts_the_output_layer(tmp_path: Path, ngl: int) -> None:
    """-ngl N with N <= n_layer: the output layer and the last N-1 repeating layers go to the
    device (load_tensors: i_gpu_start = n_layer + 1 - N, the output is layer n_layer), on a model
    whose output lavapipe does not refuse (65536 rows); the closed form must say the same."""
    base = arch_of("llama-3.2-1b-instruct")  # 16 layers
    arch = dataclasses.replace(base, vocab_size=65536, tied_embeddings=False)
    path = write_gguf(tmp_path / "ngl.gguf", arch, "Q4_K_M")
    argv = ("llama-server", "--model", str(path), "--ctx-size", "512", "--n-gpu-layers", str(ngl))
    vk = llama_fit(argv, env=vk_env("0"), binary=FIT_PARAMS).devices[0]
    spec = resolve_model(str(path), CATALOG, "test")
    cfg = LlamaCppConfig(context=512, n_gpu_layers=ngl)
    ours = estimate_llamacpp(spec, spec.artifacts[0], cfg, gpu_count=1).devices[0]
    print(
        f"-ngl {ngl}: {vk} / planner weights {ours.weights_bytes / MIB:.1f} "
        f"KV {ours.kv_cache_bytes / MIB:.1f} MiB"
    )
    assert abs(ours.weights_bytes / MIB - vk.model_mib) <= TOL_MIB
    assert abs(ours.kv_cache_bytes / MIB - vk.context_mib) <= TOL_MIB


# -- a. llama.cpp's own fit on lavapipe ---------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    model: str
    visible: str  # GGML_VK_VISIBLE_DEVICES
    fitt: tuple[int, ...]  # -fitt MiB per device
    ngl: int | None = None  # what llama.cpp's own fit chose when the recipe was checked
    ts: tuple[int, ...] = ()
    expert_rules: int = 0  # -ot rules sending a layer's experts to the CPU


# The recipe's numbers. One device: -fitt 1100 (1024, llama.cpp's default, gives -ngl 7 here).
# Two devices with uneven margins, 1150 and 1050 MiB. Qwen3-30B-A3B: -ngl 24 (23 repeating
# layers 25..47 + the output) with 23 expert rules, blk.26 .. blk.48: common/fit.cpp
# set_ngl_tensor_split_tbo counts the output as layer index n_layer (48), which has no experts,
# so the experts of 22 real layers (26..47) move to the CPU and layer 25 keeps its own.
PINNED = [
    Case("llama8b-1dev", "llama-3.1-8b-instruct", "0", (1100,), ngl=6),
    Case("llama8b-2dev", "llama-3.1-8b-instruct", "0,0", (1150, 1050), ngl=11, ts=(5, 6)),
    Case("qwen3moe-1dev", "qwen3-30b-a3b", "0", (900,), ngl=24, expert_rules=23),
]
# Budgets where the planner, which keeps a 512 MiB margin and a 512 MiB runtime overhead per GPU
# that llama.cpp does not count, places layers at all on a 2 GiB device.
ROOMY = [
    Case("llama8b-1dev-roomy", "llama-3.1-8b-instruct", "0", (0,)),
    Case("llama8b-2dev-roomy", "llama-3.1-8b-instruct", "0,0", (0, 256)),
    Case("qwen3moe-1dev-roomy", "qwen3-30b-a3b", "0", (0,)),
    Case("qwen3moe-2dev-roomy", "qwen3-30b-a3b", "0,0", (512, 0)),
]


def test_lavapipe_devices() -> None:
    one, two = vulkan_devices("0"), vulkan_devices("0,0")
    print(one, two)
    assert len(one) == 1 and len(two) == 2, (one, two)
    assert all(free == LAVAPIPE_FREE_MIB for *_, free in one + two), (one, two)


@pytest.mark.parametrize("case", PINNED, ids=lambda c: c.id)
def test_llama_cpp_fit_on_lavapipe(gguf: Callable[[str], Path], case: Case) -> None:
    got = llama_cpp_fit(gguf(case.model), case.visible, case.fitt)
    print(f"{case.id}: llama.cpp fit -fitt {case.fitt}: {got.line[:120]}")
    assert got.ngl == case.ngl, got.line
    assert got.ts == case.ts, got.line
    assert len(got.cpu_expert_layers) == case.expert_rules, got.line
    if case.expert_rules:
        n_layer = arch_of(case.model).n_layers
        first = n_layer + 1 - case.ngl + 1  # i_gpu_start + n_full (one full layer)
        assert got.cpu_expert_layers == tuple(range(first, n_layer + 1)), got.line


# -- b. the planner's placement against llama.cpp's breakdown of the planner's argv -------------


def _row(pd: PlannedDevice, ref: FitDevice, moved_mib: float) -> str:
    mib = [round(x / MIB) for x in (pd.weights_bytes, pd.kv_cache_bytes, pd.compute_bytes)]
    lav = f", less the output layer lavapipe refuses ({moved_mib:.0f} MiB)" if moved_mib else ""
    return (
        f"{pd.device}->{ref.name}: planner weights/KV/compute {mib} MiB{lav} "
        f"(budget {pd.budget_bytes // MIB}); llama.cpp model/context/compute "
        f"{[ref.model_mib, ref.context_mib, ref.compute_mib]} MiB (compute not compared)"
    )


@pytest.mark.parametrize("case", PINNED + ROOMY, ids=lambda c: c.id)
def test_planner_placement_matches_llama_cpp(
    gguf: Callable[[str], Path], tmp_path: Path, case: Case
) -> None:
    path = gguf(case.model)
    n_layer = arch_of(case.model).n_layers
    free = [LAVAPIPE_FREE_MIB - m for m in case.fitt]
    p = planner_plan(path, scenario(tmp_path / f"vulkan_{case.id}.json", free))
    if case in PINNED and p.verdict == "refuse":
        # Under 1.2 GiB free, the planner's per-GPU floor (its 512 MiB margin, a CUDA context
        # llama.cpp does not count, and the op-offload compute buffer that even -ngl 0 needs on
        # the first GPU) leaves no room: it refuses instead of planning a GPU it cannot afford.
        assert any("needs" in r for r in p.reasons), p.reasons
        print(f"{case.id}: planner refuses on {free} MiB free: {p.reasons[0][:160]}")
        return
    assert p.verdict == "ship" and p.predicted is not None, p.reasons
    gpus = [d for d in p.predicted.devices if d.device != "CPU"]
    cpu = next(d for d in p.predicted.devices if d.device == "CPU")
    assert len(gpus) == len(free)
    ref = llama_fit(as_vulkan(p.argv), env={**vk_env(case.visible), **p.env}, binary=FIT_PARAMS)
    vk = [d for d in ref.devices if d.name.startswith("Vulkan")]
    assert len(vk) == len(gpus), ref.devices
    theirs = llama_cpp_fit(path, case.visible, case.fitt)
    ours = " ".join(
        f"{f} {flag(p.argv, f)}"
        for f in ("--n-gpu-layers", "--tensor-split", "--n-cpu-moe")
        if flag(p.argv, f) is not None
    )
    print(f"\n{case.id} -fitt {case.fitt} (free {free} MiB): planner {ours}")
    print(f"  llama.cpp's own fit: {theirs.line[:100]}{'...' if len(theirs.line) > 100 else ''}")
    ngl = int(flag(p.argv, "--n-gpu-layers") or -1)
    ts = tuple(float(x) for x in (flag(p.argv, "--tensor-split") or "").split(",") if x)
    out_dev = llama_cpp_output_device(n_layer, ngl, ts, len(gpus))
    rows, out_bytes = output_weight_bytes(case.model)
    moved = out_bytes if out_dev >= 0 and lavapipe_refuses(rows) else 0
    for i, (pd, d) in enumerate(zip(gpus, vk, strict=True)):
        lav = moved if i == out_dev else 0
        print("  " + _row(pd, d, lav / MIB))
        # the plan fits by llama.cpp's own accounting of what it puts on the device
        assert (d.model_mib + d.context_mib) * MIB <= pd.budget_bytes, _row(pd, d, lav / MIB)
        # the same layers, output layer and experts on the same device
        assert abs((pd.weights_bytes - lav) / MIB - d.model_mib) <= TOL_MIB, _row(pd, d, lav / MIB)
        # the same KV cells on the same device (KV follows its layer)
        assert abs(pd.kv_cache_bytes / MIB - d.context_mib) <= TOL_MIB, _row(pd, d, lav / MIB)
    host = ref.host
    print(
        f"  host: planner weights/KV {round((cpu.weights_bytes + moved) / MIB)}/"
        f"{round(cpu.kv_cache_bytes / MIB)} MiB; llama.cpp {host.model_mib}/{host.context_mib} MiB"
    )
    assert abs((cpu.weights_bytes + moved) / MIB - host.model_mib) <= TOL_MIB
    assert abs(cpu.kv_cache_bytes / MIB - host.context_mib) <= TOL_MIB
