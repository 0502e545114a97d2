"""`gpu-preflight estimate`: will *this* command fit on *these* devices? (a VRAM calculator)

The command is read with the same flag table as ``run`` and planned by the same code path. A
``vllm serve`` command is planned exactly as typed (issue 20): what it leaves open takes vLLM
0.32's own default (plan/vllm.py typed_defaults), nothing is chosen for it, the plan's argv is the
typed command, and a command that does not fit is answered with the shortfall per device and the
nearest single changes that make it fit, each an exact argv (plan/refusal.py typed_alternatives).
A ``llama-server`` command is planned the same way: what it leaves open takes llama-server 0.3.36's
own default or what llama-server resolves itself (plan/llamacpp.py typed_defaults_llama: -np
auto is 4 unified slots, -c the trained context, lowered by its own --fit where it does not
fit, ...).
Without an engine command (--model/--engine only) llama.cpp's estimate is one sequence, the rest
chosen as ``plan`` would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from gpu_preflight import pipeline
from gpu_preflight.errors import InvalidInput
from gpu_preflight.inputs.overrides import Sourced
from gpu_preflight.plan.types import Plan
from gpu_preflight.probe.collect import simulated_hardware
from gpu_preflight.probe.simulate import SimulateError
from gpu_preflight.profile import make_profile

GIB = 2**30
DEFAULT_HOST_RAM_GIB = 64
# Only the variables naming our own files reach an estimate: the shell's LLAMA_ARG_* or
# PREFLIGHT_* must not change what "exactly this command" means.
_FILE_VARIABLES = ("PREFLIGHT_MODELS_FILE", "PREFLIGHT_TIERS_FILE")
# Where a model named on the Hub is read from: they locate the model, they do not change the
# command (models/hub.py reads them).
_HUB_VARIABLES = (
    "HF_ENDPOINT",
    "MODEL_ENDPOINT",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_ETAG_TIMEOUT",
    "HF_HUB_DOWNLOAD_TIMEOUT",
    "HOME",
)
# vLLM's own variables that decide what it accepts (vllm/envs.py): they are part of the command.
_ENGINE_VARIABLES = ("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "VLLM_PP_LAYER_PARTITION")
_ANY_GPU = "rtx-4090"  # a card to build a host from, whose GPUs are then removed (--cpu)


def device_profile(
    gpu: str | None, cpu: bool, host_ram_gib: float | None, host_bandwidth_gb_s: float | None = None
) -> object:
    """The simulated machine: a device set (NxNAME, NAME, NAME:MIG, scenario file) or no GPU."""
    ram = int((host_ram_gib or DEFAULT_HOST_RAM_GIB) * GIB)
    try:
        hw = simulated_hardware(gpu or _ANY_GPU, ram, host_bandwidth_gb_s)
    except (SimulateError, ValueError) as exc:
        raise InvalidInput(f"--gpu {gpu!r}: {exc}") from None
    if cpu:
        hw = dataclasses.replace(hw, gpus=dataclasses.replace(hw.gpus, devices=(), errors=()))
    return make_profile(hw, simulated=gpu or "cpu")


def _engine_of(inputs: pipeline.Inputs) -> str | None:
    """The engine the command (or --engine, or the named artifact) is for; None: open."""
    e = inputs.overrides.engine
    if e is not None:
        return e.value
    art = inputs.model.artifact if inputs.model is not None else None
    return art.engine if art is not None else None


# The options that describe a configuration without a command, and where a typed command says
# the same: with a command, the command is planned exactly as typed, so a value given beside it
# would be planned but not run (the plan is what runs).
_CONFIG_OPTIONS = {
    "--context": "-c (llama-server) / --max-model-len (vLLM)",
    "--parallel": "-np (llama-server) / --max-num-seqs (vLLM)",
    "--cache-type": "-ctk/-ctv (llama-server) / --kv-cache-dtype (vLLM)",
    "--flash-attn": "-fa (llama-server)",
    "--gpu-memory-utilization": "--gpu-memory-utilization in the vLLM command",
}


def _check_options(options: Mapping[str, str | None], engine_argv: Sequence[str]) -> None:
    if not engine_argv:
        return
    for opt, where in _CONFIG_OPTIONS.items():
        value = options.get(opt)
        if value is not None:
            raise InvalidInput(
                f"estimate {opt} {value!r} with an engine command: the command is planned "
                f"exactly as typed, so a value beside it would not run. Accepted: write it in "
                f"the command ({where}), or give the options without a command"
            )


def run_estimate(
    env: Mapping[str, str],
    options: Mapping[str, str | None],
    engine_argv: Sequence[str],
    gpu: str | None,
    cpu: bool,
    host_ram_gib: float | None,
) -> Plan:
    _check_options(options, engine_argv)
    files = {k: env[k] for k in (*_FILE_VARIABLES, *_HUB_VARIABLES, *_ENGINE_VARIABLES) if k in env}
    # Exactly the command: no catalog draft is added to it.
    files["PREFLIGHT_SPECULATIVE"] = "off"
    inputs = pipeline.prepare(files, engine_argv, options)
    # The command as typed (issue 20): a `vllm serve` or `llama-server` command. Without one
    # (--model/--engine options only), llama.cpp's estimate is the planner's own configuration.
    engine = _engine_of(inputs)
    as_typed = engine == "vllm" or (engine == "llama.cpp" and bool(inputs.overrides.user_args))
    if not as_typed and inputs.overrides.parallel is None:
        # llama.cpp's estimate is one configuration: one sequence unless the command says more.
        inputs = pipeline.prepare(files, engine_argv, {**options, "--parallel": "1"})
    # An estimate answers memory: the decode-speed floor is run's policy, not a memory limit.
    no_floor = Sourced(0.0, "estimate (no speed floor)")
    # The command as typed (issue 20): every value the user left open is the engine's own
    # default, nothing is chosen for it, and the plan's argv is the typed command.
    inputs = dataclasses.replace(
        inputs,
        overrides=dataclasses.replace(inputs.overrides, min_tok_s=no_floor, as_typed=as_typed),
    )
    if inputs.model is None:
        raise InvalidInput(
            "estimate needs a model: --model ID|REPO|PATH, or the engine command's own "
            "(llama-server -m FILE / -hf REPO, vllm serve REPO)"
        )
    profile = device_profile(gpu, cpu, host_ram_gib)
    result = pipeline.plan_on(inputs, profile, ("vllm", "llama.cpp"), all_devices=True)  # type: ignore[arg-type]
    return pipeline.check_on_cpu(inputs, result, env)  # llama.cpp's own dry run on the CPU
