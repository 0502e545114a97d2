"""The four configurations the kit measures, and their scaled-down rehearsal twins.

On the device each is a real catalog architecture at full size, written as a sparse zero-filled
GGUF by the project's own writer (tests/support/gguf_factory.py): the header is the model's, the
data a hole, so an 80 GB card loads and serves it while the disk holds only the header. In the
rehearsal (no GPU, 2 shared cores) the same architectures are shrunk to a few MiB with the same
tensor layout (the same writer), so that llama-server loads and answers in seconds on the CPU:
the rehearsal proves the mechanics and the report, not the numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.types import ModelArch


@dataclass(frozen=True)
class Config:
    name: str  # the report's key: letters, digits, '-'
    model: str  # catalog id (its architecture is written)
    quant: str  # what tests/support/gguf_factory.py writes
    context: int  # PREFLIGHT_CONTEXT
    what: str  # one line for the report
    # user settings the plan must honour as given (inputs/flags.py: a planner row the user set)
    env: tuple[tuple[str, str], ...] = ()


DEVICE_CONFIGS = (
    Config("llama-8b-32k", "llama-3.1-8b-instruct", "Q4_K_M", 32768,
           "Llama 3.1 8B Q4_K_M, 32k context, full offload"),
    # 24 of 48 layers keep their experts in host RAM: the expert offload path on CUDA
    # (common/arg.cpp --n-cpu-moe: an -ot rule "blk\.(0..N-1)\.ffn_(up|down|gate)_exps" -> CPU)
    Config("qwen3-30b-a3b-ncmoe", "qwen3-30b-a3b", "Q4_K_M", 16384,
           "Qwen3-30B-A3B Q4_K_M, --n-cpu-moe 24", (("LLAMA_ARG_N_CPU_MOE", "24"),)),
    Config("gpt-oss-20b", "gpt-oss-20b", "MXFP4", 32768,
           "gpt-oss-20b MXFP4 (sliding window, attention sinks), 32k context"),
    Config("llama-70b", "llama-3.3-70b-instruct", "Q4_K_M", 8192,
           "Llama 3.3 70B Q4_K_M on one 80 GB card (last: the longest load)"),
)  # fmt: skip

REHEARSAL_CONTEXT = 2048


def rehearsal_configs() -> tuple[Config, ...]:
    """The device configurations at a small context; --n-cpu-moe 1 of the 2 rehearsal layers."""
    out = []
    for c in DEVICE_CONFIGS:
        env = tuple((k, "1") if k == "LLAMA_ARG_N_CPU_MOE" else (k, v) for k, v in c.env)
        out.append(dataclasses.replace(c, context=REHEARSAL_CONTEXT, env=env))
    return tuple(out)


def arch_for(c: Config, scaled: bool) -> ModelArch:
    """The catalog architecture of ``c``; ``scaled``: the same family shrunk to a few MiB (2
    layers, 256 wide, a 1000-token vocabulary; MoE with 8 small experts), same tensor names."""
    spec = load_catalog().get(c.model)
    if spec is None:
        raise ValueError(f"{c.model}: not in the model catalog")
    a = spec.arch
    if not scaled:
        return a
    layers = 2
    return dataclasses.replace(
        a,
        n_layers=layers,
        hidden_size=256,
        n_heads=4,
        n_kv_heads=2,
        head_dim=64,
        head_dim_v=None,
        intermediate_size=512 if a.intermediate_size else 0,
        vocab_size=1000,
        max_position_embeddings=max(REHEARSAL_CONTEXT, 4096),
        sliding_window=128 if a.sliding_window else None,
        sliding_window_layers=tuple(i for i in range(layers) if i % 2 == 0)
        if a.sliding_window_layers
        else (),
        n_experts=8 if a.n_experts else a.n_experts,
        n_experts_per_token=2 if a.n_experts_per_token else a.n_experts_per_token,
        expert_intermediate_size=128 if a.expert_intermediate_size else None,
    )


__all__ = ["DEVICE_CONFIGS", "Config", "arch_for", "rehearsal_configs"]
