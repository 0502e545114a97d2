"""The user's settings: one frozen, typed record, one attribute per knob of the flag table.

``parse_overrides`` (inputs/overrides.py) parses every value once, by its row's parser
(inputs/flags.py ``FLAGS``), into this record; ``plan``, ``estimate``, ``run`` and ``matrix`` read
only this record. Each attribute is ``None`` when nobody set the knob, else the typed value and where
it came from ("env:NAME", "arg:--flag", "option:--name"). A knob's default (the engine's own at the
pinned version, or gpu-preflight's, each cited) is in the table (``KNOBS``); ``resolved`` gives
"the user's value or the default, with the default's source". There is no string-keyed bag:
``sourced``/``resolved`` take a knob name only where a caller truly iterates knobs, and raise on a
name the table does not have.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from gpu_preflight.inputs.flags import knob

T = TypeVar("T")

__all__ = ["Sourced", "UserSettings", "value_of"]


@dataclass(frozen=True)
class Sourced(Generic[T]):
    """A value and where it came from: "env:NAME", "arg:--flag", "option:--name", "fit", ..."""

    value: T
    source: str

    @property
    def where(self) -> str:
        """The place in the user's words: the variable, the engine argument or the option."""
        kind, _, name = self.source.partition(":")
        return {"arg": f"engine argument {name}", "option": name}.get(kind, name)


def value_of(s: Sourced[T] | None) -> T | None:
    """The value of a knob's attribute, None when the user left it unset."""
    return None if s is None else s.value


@dataclass(frozen=True)
class UserSettings:
    """Every value the user set, parsed once, one typed attribute per knob (inputs/flags.py KNOBS;
    a test holds the attributes equal to the knobs and their types to the rows' parsers)."""

    model: Sourced[str] | None = None
    # The engine asked for: PREFLIGHT_ENGINE / --engine, else the one whose own settings the user
    # gave (engine_implied below; parse_overrides holds the two equal).
    engine: Sourced[str] | None = None
    context: Sourced[int] | None = None
    parallel: Sourced[int] | None = None
    quantization: Sourced[str] | None = None
    kv_cache_type: Sourced[str] | None = None
    tier: Sourced[str] | None = None
    reserve_gib: Sourced[float] | None = None
    min_tok_s: Sourced[float] | None = None
    speculative: Sourced[str] | None = None
    host: Sourced[str] | None = None
    port: Sourced[int] | None = None
    dry_run: Sourced[bool] | None = None
    engine_check: Sourced[str] | None = None
    vllm_dry_run: Sourced[str] | None = None
    receipt: Sourced[str] | None = None
    receipt_timeout: Sourced[float] | None = None
    receipt_tokens: Sourced[int] | None = None
    bench: Sourced[str] | None = None
    bench_dir: Sourced[str] | None = None
    pinned_cap_gib: Sourced[float] | None = None
    profile_dir: Sourced[str] | None = None
    models_file: Sourced[str] | None = None
    tiers_file: Sourced[str] | None = None
    k8s_plan: Sourced[Mapping[str, Any]] | None = None
    lws_group_size: Sourced[int] | None = None
    lws_worker_index: Sourced[int] | None = None
    lws_leader_address: Sourced[str] | None = None
    kubeconfig: Sourced[str] | None = None
    hf_repo: Sourced[str] | None = None
    hf_file: Sourced[str] | None = None
    ctx_total: Sourced[int] | None = None
    batch: Sourced[int] | None = None
    ubatch: Sourced[int] | None = None
    n_gpu_layers: Sourced[int] | None = None
    n_cpu_moe: Sourced[int] | None = None
    cpu_moe: Sourced[bool] | None = None
    tensor_split: Sourced[tuple[float, ...]] | None = None
    split_mode: Sourced[str] | None = None
    main_gpu: Sourced[int] | None = None
    device: Sourced[str] | None = None
    flash_attn: Sourced[str] | None = None
    cache_type_k: Sourced[str] | None = None
    cache_type_v: Sourced[str] | None = None
    kv_unified: Sourced[bool] | None = None
    fit: Sourced[str] | None = None
    fit_target: Sourced[str] | None = None
    fit_ctx: Sourced[int] | None = None
    repack: Sourced[bool] | None = None
    load_mode: Sourced[str] | None = None
    op_offload: Sourced[bool] | None = None
    swa_full: Sourced[bool] | None = None
    no_kv_offload: Sourced[bool] | None = None
    kv_offload: Sourced[bool] | None = None
    n_cpu_ffn: Sourced[int] | None = None
    rpc: Sourced[str] | None = None
    override_kv: Sourced[str] | None = None
    draft_override_tensor: Sourced[str] | None = None
    draft_cpu_moe: Sourced[bool] | None = None
    draft_n_cpu_moe: Sourced[int] | None = None
    draft_device: Sourced[str] | None = None
    ctx_checkpoints: Sourced[int] | None = None
    cache_ram: Sourced[int] | None = None
    mlock: Sourced[bool] | None = None
    no_mmap: Sourced[bool] | None = None
    draft_model: Sourced[str] | None = None
    draft_hf: Sourced[str] | None = None
    spec_type: Sourced[str] | None = None
    draft_ngl: Sourced[int] | None = None
    draft_type_k: Sourced[str] | None = None
    draft_type_v: Sourced[str] | None = None
    draft_n_max: Sourced[int] | None = None
    mmproj: Sourced[str] | None = None
    mmproj_url: Sourced[str] | None = None
    mmproj_auto: Sourced[bool] | None = None
    lora: Sourced[str] | None = None
    lora_scaled: Sourced[str] | None = None
    override_tensor: Sourced[str] | None = None
    alias: Sourced[str] | None = None
    api_key: Sourced[str] | None = None
    hf_token: Sourced[str] | None = None
    gpu_memory_utilization: Sourced[float] | None = None
    tensor_parallel: Sourced[int] | None = None
    data_parallel: Sourced[int] | None = None
    pipeline_parallel: Sourced[int] | None = None
    allow_long_context: Sourced[bool] | None = None
    pp_layer_partition: Sourced[str] | None = None
    max_num_batched_tokens: Sourced[int] | None = None
    dtype: Sourced[str] | None = None
    enforce_eager: Sourced[bool] | None = None
    cpu_offload_gb: Sourced[float] | None = None
    kv_cache_memory_bytes: Sourced[int] | None = None
    speculative_config: Sourced[Mapping[str, Any]] | None = None
    limit_mm_per_prompt: Sourced[Mapping[str, Any]] | None = None
    language_model_only: Sourced[bool] | None = None
    skip_mm_profiling: Sourced[bool] | None = None
    mm_encoder_tp_mode: Sourced[str] | None = None
    block_size: Sourced[int] | None = None
    revision: Sourced[str] | None = None
    # Every place that named a model (PREFLIGHT_MODEL, VLLM_MODEL, -m, -hf, `vllm serve X`...):
    # the pipeline resolves them all and they must name one model. ``model``/``hf_repo`` above
    # hold the first of each knob.
    model_refs: tuple[tuple[str, Sourced[str]], ...] = ()  # (knob, value), knob model|hf_repo
    engine_implied: Sourced[str] | None = None  # an engine's own flags or variables ask for it
    passthrough: tuple[str, ...] = ()  # the user's engine arguments the planner does not read
    consumed_env: tuple[str, ...] = ()  # LLAMA_ARG_* now carried on argv: unset for the engine
    user_args: tuple[str, ...] = ()  # the engine arguments as the user gave them
    # `estimate`: the command exactly as typed. Every value the user left open takes the engine's
    # own default at the pinned version (nothing is chosen for it), and the argv is the typed one.
    as_typed: bool = False

    def sourced(self, name: str) -> Sourced[Any] | None:
        """The knob's value by name, for callers that iterate knobs; KeyError on a name that is
        not a knob of the table (a typo is never a silent None)."""
        knob(name)
        value: Sourced[Any] | None = getattr(self, name)
        return value

    def is_set(self, name: str) -> bool:
        return self.sourced(name) is not None

    def resolved(self, name: str, engine: str | None = None) -> Sourced[Any]:
        """The user's value, or the table's default for `engine` (gpu-preflight's without one)
        with the default's citation as its source. Its value is None where no fixed default
        exists (the model, the hardware or the planner decides: the source says which)."""
        own = self.sourced(name)
        if own is not None:
            return own
        d = knob(name).default(engine)
        return Sourced(d.value, d.cited)

    def source_of(self, name: str, engine: str | None = None) -> str:
        """Where the knob's value comes from: the user's place, or the default's citation."""
        return self.resolved(name, engine).source
