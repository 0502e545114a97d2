"""The plan document: what will run and why, or why nothing will. Serialises to schemas/plan.schema.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Verdict = Literal["ship", "refuse"]
AlternativeKind = Literal[
    "smaller-quant",
    "shorter-context",
    "other-model",
    "offload",
    "cpu",
    "other-engine",
    "other-setting",
]


@dataclass(frozen=True)
class ModelChoice:
    id: str  # catalog id, or the file's own name when given by path
    name: str
    hf_id: str
    repo: str  # what the engine loads: HF repo (vLLM) or GGUF repo (llama.cpp)
    file: str | None  # GGUF file inside the repo
    path: str | None  # local file/directory when given by path
    quant: str
    weight_bytes: int
    from_file: bool  # True: facts read from the file's header, not the catalog


@dataclass(frozen=True)
class DraftChoice:
    """The speculative-decoding draft model served next to the target."""

    id: str
    repo: str
    file: str | None
    path: str | None
    quant: str
    weight_bytes: int
    tokens: int  # drafted per step


@dataclass(frozen=True)
class PlannedDevice:
    device: str  # CUDA0.., or CPU (host RAM)
    description: str  # "NVIDIA GeForce RTX 4090 (GPU 0)" / "host RAM"
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    overhead_bytes: int
    total_bytes: int
    budget_bytes: int


@dataclass(frozen=True)
class Prediction:
    devices: tuple[PlannedDevice, ...]
    margin_bytes: int  # kept free on every GPU on top of the components
    kv_bytes_per_token: int
    kv_capacity_tokens: int | None  # vLLM's KV pool in tokens (what it logs at start-up)
    max_concurrency: float | None
    decode_tok_s_low: float | None
    decode_tok_s_high: float | None
    notes: tuple[str, ...] = ()
    decode_floor_tok_s: float | None = None  # PREFLIGHT_MIN_TOKS, what a receipt's floor check uses


@dataclass(frozen=True)
class Alternative:
    kind: AlternativeKind
    description: str
    model: str
    quant: str
    engine: str
    context: int
    total_bytes: int
    budget_bytes: int
    decode_tok_s: float | None = None
    # The overrides that make it ship (in place of the user's own model, engine, context, slot,
    # layer and KV settings: plan/refusal.py ALTERNATIVE_REPLACES).
    env: dict[str, str] = field(default_factory=dict)
    # `estimate`: the typed command with the one change that makes it fit, as an exact argv.
    argv: tuple[str, ...] = ()


@dataclass(frozen=True)
class Calibration:
    """What earlier receipts in the profile volume changed in this plan (receipt/calibrate.py)."""

    key_id: str
    memory_key_id: str
    decode_receipts: int  # same-key receipts the decode band was calibrated from (0: roofline)
    memory_receipts: int  # receipts of this model on this GPU that were checked for shortfalls
    gpu_margin_added_bytes: int  # kept free on every GPU because a receipt measured more
    host_margin_added_bytes: int


@dataclass(frozen=True)
class Plan:
    schema_version: int
    verdict: Verdict
    engine: str | None
    model: ModelChoice | None
    context: int | None  # tokens per sequence
    parallel: int | None
    argv: tuple[str, ...]
    env: dict[str, str]  # variables the launcher adds for the engine (never secrets)
    predicted: Prediction | None
    tier: str | None
    tier_label: str | None
    targets: tuple[str, ...]  # the devices planned on, in words
    sources: dict[str, str]  # each chosen value -> where it came from
    warnings: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()  # why refused, with numbers
    draft: DraftChoice | None = None  # speculative decoding
    # Variables removed from the engine's environment: the user's LLAMA_ARG_* now carried on argv.
    env_unset: tuple[str, ...] = ()
    alternatives: tuple[Alternative, ...] = field(default=())
    calibration: Calibration | None = None
