"""What llama-server loads or refuses beside the model: a --mmproj projector and its compute, Grok's V cache.

llama-fit-params does not count the projector (common/fit.cpp sizes the text model only), so the
plan adds it itself: the clip GGUF's exact tensor bytes and the compute allowance of
models/gguf_file.py mmproj_compute_bytes. A file that is not a projector is bad input (exit 2).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.plan.conftest import run_plan
from tests.support.gguf_factory import write_gguf_kvs

from gpu_preflight.inputs.flags import FlagValueError
from gpu_preflight.models.gguf_file import mmproj_bytes, mmproj_compute_bytes

F16 = 1
MIB = 2**20


def _projector(path: Path, image: int = 896, patch: int = 14) -> Path:
    tensors = [
        ("v.patch_embd.weight", (1152, 3 * patch * patch), F16),
        ("mm.0.weight", (2560, 1152), F16),
    ]
    kvs = [
        ("clip.has_vision_encoder", "bool", True),
        ("clip.vision.image_size", "uint32", image),
        ("clip.vision.patch_size", "uint32", patch),
        ("clip.vision.embedding_length", "uint32", 1152),
        ("clip.vision.feed_forward_length", "uint32", 4304),
        ("clip.vision.attention.head_count", "uint32", 16),
    ]
    return write_gguf_kvs(path, "clip", kvs, tensors)


def test_projector_compute_grows_with_the_warmup_image(tmp_path: Path) -> None:
    small = mmproj_compute_bytes(_projector(tmp_path / "a.gguf", image=224))
    large = mmproj_compute_bytes(_projector(tmp_path / "b.gguf", image=896))
    n = (896 // 14) ** 2
    assert large == 16 * n * n * 4 + 4 * n * 4304 * 4
    assert small == 64 * MIB  # the floor: a 16 x 16 patch graph is tiny
    assert large > small


def test_mmproj_is_charged_to_the_first_gpu(tmp_path: Path) -> None:
    proj = _projector(tmp_path / "mmproj-f16.gguf")
    env = {"PREFLIGHT_ENGINE": "llama.cpp", "PREFLIGHT_MODEL": "qwen2.5-7b-instruct"}
    bare = run_plan("rtx-4090", env, ("-c", "8192"))
    with_proj = run_plan("rtx-4090", env, ("-c", "8192", "--mmproj", str(proj)))
    assert bare.verdict == with_proj.verdict == "ship"
    extra = mmproj_bytes(proj) + mmproj_compute_bytes(proj)
    gpu = lambda p: next(d for d in p.predicted.devices if d.device != "CPU")  # noqa: E731
    assert gpu(with_proj).total_bytes - gpu(bare).total_bytes == extra


def test_a_file_that_is_not_a_projector_is_bad_input(tmp_path: Path) -> None:
    other = tmp_path / "notes.gguf"
    other.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(FlagValueError, match="a projector GGUF"):
        run_plan(
            "rtx-4090",
            {"PREFLIGHT_ENGINE": "llama.cpp", "PREFLIGHT_MODEL": "qwen2.5-7b-instruct"},
            ("--mmproj", str(other)),
        )


def test_a_projector_without_a_named_model_is_bad_input(tmp_path: Path) -> None:
    proj = _projector(tmp_path / "mmproj-f16.gguf")
    with pytest.raises(FlagValueError, match="no model is named"):
        run_plan("rtx-4090", {"PREFLIGHT_ENGINE": "llama.cpp"}, ("--mmproj", str(proj)))


def test_grok_with_a_quantized_v_cache_is_refused(tmp_path: Path) -> None:
    # llama.cpp turns flash attention off for Grok whatever -fa says (src/llama-context.cpp),
    # and a quantized V cache needs it: llama-server would refuse to start.
    from tests.support.gguf_archs import load_cases, write_case

    c = load_cases()["grok"]
    path = write_case(tmp_path / "grok.gguf", "grok", c.keys, c.tensors)
    env = {"PREFLIGHT_ENGINE": "llama.cpp", "PREFLIGHT_MODEL": str(path)}
    ok = run_plan("h100-sxm", env, ("-c", "4096", "-ctk", "q8_0"))
    assert ok.verdict == "ship", ok.reasons
    bad = run_plan("h100-sxm", env, ("-c", "4096", "-ctk", "q8_0", "-ctv", "q8_0"))
    assert bad.verdict == "refuse"
    assert "always turns off" in " ".join(bad.reasons)
