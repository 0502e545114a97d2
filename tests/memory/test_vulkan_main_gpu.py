"""Where llama.cpp puts the output layer on two devices, and what --main-gpu moves (issue 13).

Read from src/llama-model.cpp ``load_tensors`` (the llama.cpp of llama-cpp-python 0.3.36): the
output layer is assigned ``get_layer_buft_list(n_layer)``, i.e. it goes with the split point past
the last repeating layer: the last device with a share of the layers (``-ts``). ``--main-gpu``
is read in src/llama.cpp ``llama_model_load_from_file_impl`` only for ``--split-mode none``
(keep that one device) and, for ``--split-mode row``, as the device of the row-split matrices'
results; in layer mode (llama-server's default and the only one the planner writes) it moves
neither the output layer nor a compute buffer. So the planner puts the output layer on the card
with room by sizing the split (plan/llamacpp.py ``_room_split`` takes the output layer and the
last device's compute buffer out of the last card's room), never by writing -mg, and a user's -mg
is passed as given.

Checked here with llama.cpp's own breakdown on two lavapipe Vulkan devices (the recipe of
test_vulkan_placement.py), on a 1B Llama with a 65536-row untied output (lavapipe refuses larger
matrices, see LAVAPIPE_MAX_STORAGE_BUFFER_RANGE there).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from tests.memory.test_vulkan_placement import FIT_PARAMS, arch_of, vk_env
from tests.support.gguf_factory import _nbytes, tensor_plan, write_gguf
from tests.support.llama_fit import llama_fit

pytestmark = pytest.mark.vulkan

MIB = 2**20


def output_heavy_gguf(path: Path) -> tuple[Path, int]:
    """A 1B Llama with an untied 64k-vocabulary output layer (its size returned), so the device
    that holds the output stands out in llama.cpp's breakdown."""
    arch = dataclasses.replace(
        arch_of("llama-3.2-1b-instruct"), vocab_size=65536, tied_embeddings=False
    )
    write_gguf(path, arch, "Q4_K_M")
    sizes = {n: _nbytes(t, shape) for n, shape, t in tensor_plan(arch, "Q4_K_M")}
    return path, sizes["output.weight"]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    return output_heavy_gguf(tmp_path_factory.mktemp("mg") / "mg.gguf")


def _devices(path: Path, *extra: str) -> dict[str, int]:
    """Model MiB per device llama.cpp uses ({"Vulkan0": ..., "Vulkan1": ...})."""
    argv = ("llama-server", "--model", str(path), "--ctx-size", "512", "-ngl", "99", *extra)
    fit = llama_fit(argv, env=vk_env("0,0"), binary=FIT_PARAMS)
    devs = [d for d in fit.devices if d.name != "Host"]
    print(extra, [(d.name, d.model_mib, d.context_mib, d.compute_mib) for d in devs])
    return {d.name: d.model_mib for d in devs}


def _models(path: Path, *extra: str) -> list[int]:
    return list(_devices(path, *extra).values())


def _layers_on_first(n_layer: int, share: float) -> int:
    """Repeating layers load_tensors gives the first of two devices: layer il goes to the first
    split point above il / act_gpu_layers, where act_gpu_layers = n_layer + 1 counts the output
    layer (all offloaded)."""
    return sum(1 for il in range(n_layer) if il / (n_layer + 1) < share)


def _compute(path: Path, *extra: str) -> list[int]:
    argv = ("llama-server", "--model", str(path), "--ctx-size", "512", "-ngl", "99", *extra)
    fit = llama_fit(argv, env=vk_env("0,0"), binary=FIT_PARAMS)
    return [d.compute_mib for d in fit.devices if d.name != "Host"]


def test_main_gpu_moves_nothing_in_layer_split_mode(small: tuple[Path, int]) -> None:
    path, _ = small
    base = _models(path, "-ts", "1,1")
    assert _models(path, "-ts", "1,1", "-mg", "1") == base
    assert _models(path, "-ts", "1,1", "-mg", "0") == base
    # The biggest compute buffer (the logits' output phase) is the last device's, -mg or not.
    for mg in ("0", "1"):
        first, last = _compute(path, "-ts", "1,1", "-mg", mg)
        assert last > first, (mg, first, last)


def test_the_output_layer_goes_with_the_last_share(small: tuple[Path, int]) -> None:
    path, out = small
    out_mib = out / MIB
    even = _models(path, "-ts", "1,1")
    # 16 equal layers and the output as a 17th: 9 layers on the first device, 7 and the output
    # on the second
    n = arch_of("llama-3.2-1b-instruct").n_layers
    first = _layers_on_first(n, 0.5)
    assert first == 9
    layer = (sum(even) - out_mib) / n
    assert abs(even[0] - first * layer) <= 2, (even, layer)
    assert abs(even[1] - ((n - first) * layer + out_mib)) <= 2, (even, layer, out_mib)
    # With no share on the second device the output goes with the first's layers
    first_only = _models(path, "-ts", "1,0")
    assert first_only[1] == 0 and abs(first_only[0] - sum(even)) <= 2, first_only


def test_split_mode_none_keeps_only_the_main_gpu(small: tuple[Path, int]) -> None:
    path, _ = small
    one = _devices(path, "-sm", "none", "-mg", "1")
    assert list(one) == ["Vulkan1"], one
    assert abs(one["Vulkan1"] - sum(_models(path, "-ts", "1,1"))) <= 2, one


def test_a_written_device_list_keeps_main_gpu_indexing_the_same_device(
    small: tuple[Path, int],
) -> None:
    # The planner writes llama.cpp's own order as --device for --split-mode none (so that only
    # the main GPU is opened, plan/llamacpp.py device_flag): --main-gpu must still pick the
    # same device as without the list.
    path, _ = small
    listed = _devices(path, "--device", "Vulkan0,Vulkan1", "-sm", "none", "-mg", "1")
    assert listed == _devices(path, "-sm", "none", "-mg", "1"), listed
