"""`gpu-preflight matrix`: plan every model on every GPU (simulated) and tabulate the verdicts."""

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
    for g in gpus:
        profile = make_profile(simulated_hardware(g, int((host_ram or 64) * GIB)), simulated=g)
        for m in models:
            one = replace(inputs, model=ModelRequest(m, None, "matrix"))
            p = pipeline.plan_on(one, profile, ("vllm", "llama.cpp"))
            cells.append(
                MatrixCell(
                    g,
                    m.id,
                    p.verdict,
                    p.engine,
                    p.model.quant if p.model and p.verdict == "ship" else None,
                    p.context,
                    p.reasons[0] if p.reasons else None,
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
