"""The tensor-parallel harness of issue 19 item 4 (vLLM side, TP 2 and 4): which architectures,
with which config changes, building their layouts and asking vLLM for its per-rank KV and
weights (tests/support/vllm_tp_spec.py, run in the vLLM venv). Shared by
tests/models/test_vllm_tp.py and scripts/vllm_tp_reference.py, which writes the reference."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.vllm_coverage import vllm_python
from tests.support.vllm_run import run_in_vllm

SUPPORT = Path(__file__).resolve().parent
SCRIPT = SUPPORT / "vllm_tp_spec.py"
OUT = SUPPORT.parent / "fixtures" / "vllm_tp_reference.json"
TP_SIZES = (2, 4)


@dataclass(frozen=True)
class TpCase:
    """One architecture: transformers' default config for model_type (hf_meta_layout.shrink:
    at most 8 layers and 8 experts) with ``overrides`` set on it. ``refused``: vLLM and the
    planner must both refuse these TP sizes (heads that do not divide). ``plan_refuses``: TP
    sizes plan/vllm.py tp_sizes refuses although vLLM builds them (the memory figures are still
    compared); each with the reason in ``why``."""

    architecture: str
    model_type: str
    why: str
    overrides: dict[str, Any] = field(default_factory=dict)
    refused: tuple[int, ...] = ()
    plan_refuses: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        return self.architecture + ("" if not self.overrides else "+" + _short(self.overrides))


def _short(over: dict[str, Any]) -> str:
    return ",".join(
        f"{k}=[{len(v)}]" if isinstance(v, list) else f"{k}={v}" for k, v in sorted(over.items())
    )


CASES: tuple[TpCase, ...] = (
    TpCase(
        "LlamaForCausalLM",
        "llama",
        "GQA, 8 K/V heads: split at 2 and 4",
        {"num_key_value_heads": 8},
    ),
    TpCase("Qwen2ForCausalLM", "qwen2", "MHA (32 K/V heads) with q/k/v biases"),
    TpCase(
        "MistralForCausalLM",
        "mistral",
        "GQA, 2 K/V heads: split at 2, replicated at 4",
        {"num_key_value_heads": 2},
    ),
    TpCase(
        "Qwen3ForCausalLM",
        "qwen3",
        "one K/V head (MQA): replicated at 2 and 4; q/k norms",
        {"num_key_value_heads": 1},
    ),
    TpCase(
        "LlamaForCausalLM",
        "llama",
        "3 K/V heads: neither a divisor nor a multiple of 2 or 4, refused",
        {"hidden_size": 3072, "num_attention_heads": 24, "num_key_value_heads": 3},
        refused=(2, 4),
    ),
    TpCase(
        "FalconForCausalLM",
        "falcon",
        "fused query_key_value, multi-query (one K/V head), tied",
        # vLLM's falcon.py FalconMLP is 4 x hidden_size wide: ffn_hidden_size set to match
        {"hidden_size": 4096, "num_attention_heads": 32, "ffn_hidden_size": 16384},
    ),
    TpCase(
        "FalconForCausalLM",
        "falcon",
        "71 heads (the default): not divisible by 2 or 4, refused",
        {"num_hidden_layers": 2},
        refused=(2, 4),
    ),
    TpCase("Phi3ForCausalLM", "phi3", "fused qkv_proj, GQA", {"num_key_value_heads": 8}),
    TpCase(
        "DeepseekV2ForCausalLM",
        "deepseek_v2",
        "MLA (latent not sharded), MoE with 2 shared experts",
        # the default 1407 (DeepSeek-V2's own 1536 elsewhere) does not divide by 2
        {"moe_intermediate_size": 1536},
    ),
    TpCase("DeepseekV3ForCausalLM", "deepseek_v3", "MLA, 128 heads, MoE with a shared expert"),
    TpCase("MixtralForCausalLM", "mixtral", "MoE, 8 experts, GQA"),
    TpCase("Qwen3MoeForCausalLM", "qwen3_moe", "MoE, 4 K/V heads"),
    TpCase(
        "GptOssForCausalLM",
        "gpt_oss",
        "MoE with expert biases, sliding window, attention sinks",
        {"intermediate_size": 2048},
    ),
    TpCase("Gemma2ForCausalLM", "gemma2", "sliding window, 4 K/V heads, tied"),
    TpCase("Gemma3ForCausalLM", "gemma3_text", "sliding window, 4 K/V heads, vocab 262208"),
    TpCase(
        "GraniteMoeHybridForCausalLM",
        "granitemoehybrid",
        "Mamba-2 hybrid, one group (replicated past TP 1), MoE, 8 K/V heads",
        {
            "num_hidden_layers": 8,
            "num_key_value_heads": 8,
            "layer_types": ["linear_attention"] * 3
            + ["full_attention"]
            + ["linear_attention"] * 3
            + ["full_attention"],
        },
    ),
    TpCase(
        "NemotronHForCausalLM",
        "nemotron_h",
        "Mamba-2 hybrid, 8 groups (its MoE layers build on CUDA only: left out)",
        {"layers_block_type": ["linear_attention", "mlp"] * 2 + ["full_attention", "mlp"] * 2},
    ),
    TpCase("Mamba2ForCausalLM", "mamba2", "Mamba-2, 8 groups, 128 heads"),
    TpCase(
        "MambaForCausalLM",
        "mamba",
        "Mamba-1, float32 A, vocab 50280 (padded to 50304); attention-free: no heads for "
        "vLLM's TP check to divide (plan/vllm.py attention_heads)",
    ),
    TpCase(
        "Qwen3NextForCausalLM",
        "qwen3_next",
        "gated DeltaNet hybrid, 2 K/V heads (replicated at 4)",
    ),
    # Served through vLLM's Transformers backend (vllm/model_executor/models/transformers/
    # base.py recursive_replace): sharded by the transformers config's base_model_tp_plan,
    # every nn.Linear the plan does not name replicated.
    TpCase("GPTNeoXForCausalLM", "gpt_neox", "Transformers backend, fused query_key_value"),
    TpCase("Olmo2ForCausalLM", "olmo2", "Transformers backend, colwise_gather_output plan"),
    TpCase("Starcoder2ForCausalLM", "starcoder2", "Transformers backend, MLP c_fc/c_proj plan"),
    TpCase("PhiForCausalLM", "phi", "Transformers backend, fc1/fc2 plan, biases"),
    TpCase(
        "GPTBigCodeForCausalLM",
        "gpt_bigcode",
        "Transformers backend without a tensor-parallel plan: MLP replicated; one K/V head, "
        "vocab 50257",
    ),
)


def build_and_ask(cases: list[TpCase], tmp: Path, tp: dict[str, tuple[int, ...]]) -> list[Any]:
    """Write each case's layout under tmp/<n> and ask vLLM at the TP sizes ``tp`` names for it
    (none: the layout only). One RESULT per case, in order."""
    jobs = [
        {
            "architecture": c.architecture,
            "model_type": c.model_type,
            "overrides": c.overrides,
            "dir": str(tmp / str(i)),
            "tp": list(tp.get(c.key, ())),
        }
        for i, c in enumerate(cases)
    ]
    return run_in_vllm(SCRIPT, jobs, tmp, timeout=1800, python=vllm_python())


def tp_plans(model_types: list[str], tmp: Path) -> dict[str, bool]:
    """Whether transformers' config for each model_type has a base_model_tp_plan (what vLLM's
    Transformers backend shards by), asked in the vLLM venv."""
    jobs = [{"tp_plan_of": t} for t in model_types]
    out = run_in_vllm(SCRIPT, jobs, tmp, python=vllm_python())
    return {r["model_type"]: r["plan"] for r in out}


def reference() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(OUT.read_text())
    return doc
