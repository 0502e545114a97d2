"""`gpu-preflight estimate`: will *this* command fit on *these* devices? (a VRAM calculator)

The command is read with the same flag table as ``run`` and planned by the same code path, with
every value it gives pinned: what ``estimate`` prints for a command is what ``plan`` predicts for
the same configuration, and the same numbers ``run`` would ship with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from gpu_preflight import pipeline
from gpu_preflight.errors import InvalidInput
from gpu_preflight.plan.overrides import Sourced
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


def run_estimate(
    env: Mapping[str, str],
    options: Mapping[str, str | None],
    engine_argv: Sequence[str],
    gpu: str | None,
    cpu: bool,
    host_ram_gib: float | None,
) -> Plan:
    files = {k: env[k] for k in (*_FILE_VARIABLES, *_HUB_VARIABLES) if k in env}
    # Exactly the command: no catalog draft is added to it.
    files["PREFLIGHT_SPECULATIVE"] = "off"
    inputs = pipeline.prepare(files, engine_argv, options)
    if inputs.overrides.get("parallel") is None:
        # An estimate is one configuration: one sequence unless the command says more.
        inputs = pipeline.prepare(files, engine_argv, {**options, "--parallel": "1"})
    # An estimate answers memory: the decode-speed floor is run's policy, not a memory limit.
    values = {**inputs.overrides.values, "min_tok_s": Sourced(0.0, "estimate (no speed floor)")}
    inputs = dataclasses.replace(
        inputs, overrides=dataclasses.replace(inputs.overrides, values=values)
    )
    if inputs.model is None:
        raise InvalidInput(
            "estimate needs a model: --model ID|REPO|PATH, or the engine command's own "
            "(llama-server -m FILE / -hf REPO, vllm serve REPO)"
        )
    profile = device_profile(gpu, cpu, host_ram_gib)
    return pipeline.plan_on(inputs, profile, ("vllm", "llama.cpp"), all_devices=True)  # type: ignore[arg-type]
