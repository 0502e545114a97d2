"""`gpu-preflight matrix`: plan every model on every GPU (simulated) and tabulate the verdicts.

Each llama.cpp cell is checked by llama.cpp's own dry run of its argv on this machine's CPU
(pipeline.check_on_cpu) where the model's GGUF header is on local disk, each distinct run once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from rich.console import Console
from rich.table import Table

from gpu_preflight import pipeline
from gpu_preflight.gpu_catalog import load_gpu_catalog
from gpu_preflight.inputs.errors import InvalidInput
from gpu_preflight.inputs.model_request import ModelRequest
from gpu_preflight.probe.collect import simulated_hardware
from gpu_preflight.profile import make_profile

GIB = 2**30


@dataclass(frozen=True)
class MatrixCell:
    gpu: str
    model: str
    verdict: str
    engine: str | None
    quant: str | None
    context: int | None
    reason: str | None
    # llama.cpp's own dry run on the CPU: its summary note, or why there was none (None where
    # none was asked: a vLLM cell, or one the closed form already refused)
    engine_check: str | None = None


_CHECK_NOTE = "llama.cpp's own dry run"


def _check_note(notes: tuple[str, ...]) -> str | None:
    return next((n for n in reversed(notes) if n.startswith(_CHECK_NOTE)), None)


def run_matrix(
    env: Mapping[str, str],
    gpu_list: str | None,
    model_list: str | None,
    context: str | None,
    host_ram: float | None,
) -> list[MatrixCell]:
    gcat = load_gpu_catalog()
    gpus = [g.strip() for g in gpu_list.split(",")] if gpu_list else [g.id for g in gcat.gpus]
    for g in gpus:
        base = g.split("x", 1)[1] if g[:1].isdigit() and "x" in g else g
        if gcat.find(base.split(":")[0]) is None:
            raise InvalidInput(f"--gpus: unknown GPU {g!r}; see `gpu-preflight gpus`")
    files = {k: env[k] for k in ("PREFLIGHT_MODELS_FILE", "PREFLIGHT_TIERS_FILE") if k in env}
    inputs = pipeline.prepare(files, (), {"--context": context})
    catalog, tiers = inputs.catalog, inputs.tiers
    if model_list:
        models = []
        for name in model_list.split(","):
            spec = catalog.get(name.strip())
            if spec is None:
                close = catalog.suggest(name)
                raise InvalidInput(
                    f"--models: unknown model {name.strip()!r}"
                    + (f"; did you mean {', '.join(close)}?" if close else "")
                )
            models.append(spec)
    else:
        seen: dict[str, None] = {}
        for t in tiers.tiers:
            for entry in t.models:
                seen.setdefault(entry.partition("@")[0], None)
        models = [m for m in (catalog.get(i) for i in seen) if m is not None]
    cells = []
    runs: pipeline.DryRuns = {}  # one dry run per (model file, llama-fit-params arguments)
    for g in gpus:
        profile = make_profile(simulated_hardware(g, int((host_ram or 64) * GIB)), simulated=g)
        for m in models:
            one = replace(inputs, model=ModelRequest(m, None, "matrix"))
            p = pipeline.plan_on(one, profile, ("vllm", "llama.cpp"))
            p = pipeline.check_on_cpu(one, p, env, runs)
            cells.append(
                MatrixCell(
                    g,
                    m.id,
                    p.verdict,
                    p.engine,
                    p.model.quant if p.model and p.verdict == "ship" else None,
                    p.context,
                    p.reasons[0] if p.reasons else None,
                    _check_note(p.predicted.notes) if p.predicted is not None else None,
                )
            )
    return cells


def render_matrix(console: Console, cells: list[MatrixCell]) -> None:
    gpus = list(dict.fromkeys(c.gpu for c in cells))
    models = list(dict.fromkeys(c.model for c in cells))
    t = Table(title="largest context that fits (engine, quant); - = refused", title_justify="left")
    t.add_column("model")
    for g in gpus:
        t.add_column(g, justify="right")
    by = {(c.gpu, c.model): c for c in cells}
    for m in models:
        row = [m]
        for g in gpus:
            c = by[(g, m)]
            row.append(
                f"{c.context // 1024}k {c.engine} {c.quant}"
                if c.verdict == "ship" and c.context
                else "-"
            )
        t.add_row(*row)
    console.print(t)
    checks = [c.engine_check for c in cells if c.engine_check]
    if checks:
        unchecked = [n for n in checks if " was not used: " in n]
        line = (
            f"llama.cpp's own dry run on this CPU: {len(checks) - len(unchecked)} of "
            f"{len(checks)} llama.cpp cells checked (weights and KV)"
        )
        if unchecked:
            line += f"; not for {len(unchecked)}: {unchecked[0].split(' was not used: ', 1)[1]}"
        console.print(line, soft_wrap=True, markup=False)
