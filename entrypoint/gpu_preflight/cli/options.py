"""Click options shared by several commands, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")

simulate_option = click.option(
    "--simulate",
    metavar="NAME|FILE",
    help="Plan as if on other hardware: a GPU from `gpu-preflight gpus` (rtx-4090), N of them "
    "(2xa100-80gb), a MIG slice (a100-80gb:1g.10gb) or a recorded NVML scenario file.",
)

host_ram_option = click.option(
    "--host-ram",
    type=click.FloatRange(min=0.5, max=65536),
    metavar="GIB",
    help="With --simulate: the simulated machine's host RAM in GiB (needed to plan CPU offload).",
)

host_bandwidth_option = click.option(
    "--host-bandwidth",
    type=click.FloatRange(min=0.1, max=10000),
    metavar="GB/S",
    help="With --simulate: the simulated host's memory bandwidth (forecasts CPU offload speed).",
)

profile_option = click.option(
    "--profile",
    "profile_path",
    type=click.Path(dir_okay=False, path_type=str),
    help="Plan from a saved profile (from `gpu-preflight probe --json --out FILE`) instead of probing.",
)

model_option = click.option(
    "--model",
    metavar="ID|HF_ID|PATH",
    help="Model: a catalog id (qwen3-8b, or qwen3-8b@Q8_0 for one quant), a Hugging Face id, or a "
    "path to a GGUF file or an HF model directory. Same as PREFLIGHT_MODEL.",
)

engine_option = click.option(
    "--engine",
    type=click.Choice(["auto", "vllm", "llama.cpp"]),
    help="Engine to plan for. Same as PREFLIGHT_ENGINE.",
)

context_option = click.option(
    "--context",
    metavar="TOKENS",
    help="Context length per sequence (e.g. 8192 or 32k). Same as PREFLIGHT_CONTEXT.",
)


def compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply
