"""The kit's report: one record per check, the JSON document (bench/gpu/report.schema.json) and
its Markdown rendering, as the other benchmarks write them under bench/results/."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SCHEMA = Path(__file__).resolve().parent / "report.schema.json"
MIB = 2**20
Status = Literal["pass", "fail", "error", "skip"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    seconds: float
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """The one stdout line of this check."""
        return f"[{self.status.upper():5}] {self.name}: {self.summary} ({self.seconds:.1f} s)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "summary": self.summary,
            "details": self.details,
        }


def validate(doc: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError if ``doc`` is not a report of this schema."""
    import jsonschema

    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(doc)


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / MIB:,.0f}"


def render(doc: dict[str, Any]) -> str:
    card = doc["card"] or {}
    title = card.get("nvml_name") or f"no GPU ({doc['mode']}, llama.cpp {doc['backend']} build)"
    out = [
        f"# GPU kit: {title}",
        "",
        f"Written by `bench/gpu/run` ({doc['mode']}) on {doc['created_at']}: {doc['wall_s']:.0f} s "
        f"of a {doc['budget_s']:.0f} s budget. Each check compares the plan with what the real "
        "thing reports; error = measured - predicted (positive: under-predicted, the side that "
        "ends in an out-of-memory).",
        "",
    ]
    if doc["mode"] == "rehearse":
        out += [
            "**Rehearsal**: no GPU; llama.cpp's CPU build stands in for CUDA, the four "
            "configurations are shrunk to a few MiB, NVML is absent (its fields are null). It "
            "proves the mechanics and this format, not the numbers.",
            "",
        ]
    out += ["## Checks", "", "| check | status | seconds | summary |", "|---|---|---:|---|"]
    for c in doc["checks"]:
        summary = c["summary"].replace("|", "\\|")
        out.append(f"| {c['name']} | {c['status']} | {c['seconds']:.1f} | {summary} |")
    out += [
        "",
        "## Memory per device: plan, llama.cpp's dry run, the running server",
        "",
        "| config | device | plan weights | plan KV | plan compute | plan overhead | "
        "fit model | fit context | fit compute | NVML/RSS measured | receipt error |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cfg in doc["configs"]:
        fit = {d["device"]: d for d in (cfg["fit"] or {}).get("devices", [])}
        rec = {m["device"]: m for m in cfg["receipt_memory"] or []}
        for d in cfg["plan_devices"] or []:
            f = fit.get(d["device"]) or fit.get("Host" if d["device"] == "CPU" else "") or {}
            m = rec.get(d["device"], {})
            err = m.get("error_fraction")
            out.append(
                f"| {cfg['name']} | {d['device']} | {_mib(d['weights_bytes'])} | "
                f"{_mib(d['kv_cache_bytes'])} | {_mib(d['compute_bytes'])} | "
                f"{_mib(d.get('overhead_bytes'))} | {_mib(f.get('weights_bytes'))} | "
                f"{_mib(f.get('kv_cache_bytes'))} | {_mib(f.get('compute_bytes'))} | "
                f"{_mib(m.get('measured_bytes'))} ({m.get('method', '-')}) | "
                f"{'-' if err is None else f'{err:+.1%}'} |"
            )
    ov = doc["overhead"]
    out += [
        "",
        "## CUDA runtime overhead (NVML per-process used - model - KV - compute)",
        "",
        f"The planner's constant: {_mib(ov['constant_bytes'])} MiB per GPU "
        f"(entrypoint/gpu_preflight/memory/llamacpp.py CUDA_OVERHEAD). {ov['note']}",
        "",
        "| config | device | NVML process MiB | buffers MiB | overhead MiB | llama.cpp "
        "unaccounted MiB | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in ov["rows"]:
        out.append(
            f"| {r['config']} | {r['device']} | {_mib(r['nvml_process_bytes'])} | "
            f"{_mib(r['buffers_bytes'])} | {_mib(r['overhead_bytes'])} | "
            f"{_mib(r['unaccounted_bytes'])} | {r['note'] or ''} |"
        )
    fits = [(c["name"], c["fit"]["seconds"]) for c in doc["configs"] if c["fit"]]
    if fits:
        out += ["", "llama-fit-params (llama.cpp's own dry run) wall time: "
                + ", ".join(f"{n} {s:.2f} s" for n, s in fits) + "."]  # fmt: skip
    if doc["notes"]:
        out += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(out) + "\n"


__all__ = ["Check", "render", "validate"]
