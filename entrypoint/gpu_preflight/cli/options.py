"""Click options shared by several commands, defined once."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


class FiniteRange(click.FloatRange):
    """A float option within [min, max] that is also finite: ``click.FloatRange`` lets ``nan``
    through (every comparison with nan is false), and ``1e400`` parses to ``inf``.

    The error names the option (click adds it), the value, and the accepted range, all from
    this one object.
    """

    name = "finite number range"

    def __init__(self, min: float, max: float, unit: str) -> None:
        super().__init__(min=min, max=max)
        self.unit = unit

    @property
    def accepted(self) -> str:
        return f"a finite number from {self.min:g} to {self.max:g} {self.unit}"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        shown = text if len(text) <= 80 else text[:77] + "..."
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{shown!r} is not a number. Accepted: {self.accepted}.", param, ctx)
        if not math.isfinite(number) or not self.min <= number <= self.max:  # type: ignore[operator]
            self.fail(f"{shown!r} is out of range. Accepted: {self.accepted}.", param, ctx)
        return number


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")

simulate_option = click.option(
    "--simulate",
    metavar="NAME|FILE",
    help="Plan as if on other hardware: a GPU from `gpu-preflight gpus` (rtx-4090), N of them "
    "(2xa100-80gb), mixed cards (rtx-4090,rtx-3060), a MIG slice (a100-80gb:1g.10gb) or a recorded "
    "NVML scenario file.",
)

host_ram_option = click.option(
    "--host-ram",
    type=FiniteRange(0.5, 65536, "GiB"),
    metavar="GIB",
    help="With --simulate: the simulated machine's host RAM in GiB (needed to plan CPU offload).",
)

host_bandwidth_option = click.option(
    "--host-bandwidth",
    type=FiniteRange(0.1, 10000, "GB/s"),
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
