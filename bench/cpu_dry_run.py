"""The closed form against llama.cpp's own dry run on the CPU, as `plan` now runs it.

For every architecture of tests/support/data/gguf_archs.json that llama-fit-params loads (tiny
sparse GGUFs, 6 layers), and for the real layouts of the memory benchmark's catalog models
(bench/archs.py, sparse files of the real tensor shapes), the file is planned for simulated GPUs
exactly as ``gpu-preflight plan --simulate GPU --model FILE`` does (pipeline.plan_on), and the
plan's argv is run through ``llama-fit-params`` on this CPU with the placement replaced
(engine_check.llama_cpu_dry_run). Compared: the plan's weights and KV summed over its devices
against llama.cpp's model and context bytes (whole MiB as llama.cpp prints them, floored).

    python bench/cpu_dry_run.py        # writes bench/results/cpu-dry-run.{json,md}

Needs llama-fit-params (``make llama-cpp``): GPU_PREFLIGHT_CACHE / LLAMA_CPP_PYTHON_VERSION as
tests/support/llama_fit.py.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.gguf_archs import load_cases, write_case  # noqa: E402
from tests.support.gguf_factory import write_gguf  # noqa: E402
from tests.support.llama_fit import fit_params_binary  # noqa: E402

from bench.archs import BENCH_MODELS  # noqa: E402
from gpu_preflight import engine_check, pipeline  # noqa: E402
from gpu_preflight.errors import PreflightError  # noqa: E402
from gpu_preflight.models.catalog import load_catalog  # noqa: E402
from gpu_preflight.plan.reconcile import reconcile_totals  # noqa: E402
from gpu_preflight.probe.collect import simulated_hardware  # noqa: E402
from gpu_preflight.profile import make_profile  # noqa: E402

MIB = 2**20
GIB = 2**30
OUT = ROOT / "bench" / "results"
# (label, simulated devices, settings): the planner's own choices at a pinned context, a
# quantized cache with one slot, and a layer split over two cards (placement removed for the CPU)
SETTINGS: list[tuple[str, str, dict[str, str]]] = [
    ("rtx-4090 c4096", "rtx-4090", {"PREFLIGHT_CONTEXT": "4096"}),
    (
        "rtx-4090 c8192 q8_0 x1",
        "rtx-4090",
        {"PREFLIGHT_CONTEXT": "8192", "PREFLIGHT_KV_CACHE_TYPE": "q8_0", "PREFLIGHT_PARALLEL": "1"},
    ),
    ("2xrtx-3090 c16384", "2xrtx-3090", {"PREFLIGHT_CONTEXT": "16384"}),
]


@dataclass(frozen=True)
class Row:
    model: str
    setting: str
    weights: int  # the closed form's, bytes, all devices
    kv: int
    llama_model: int  # llama.cpp's, bytes (whole MiB)
    llama_context: int
    seconds: float
    folded_weights: int
    folded_kv: int
    verdict: str

    @property
    def weights_under_mib(self) -> float:  # > 0: the closed form is under llama.cpp's figure
        return (self.llama_model - self.weights) / MIB

    @property
    def kv_under_mib(self) -> float:
        return (self.llama_context - self.kv) / MIB

    def equal(self) -> bool:
        return self.weights // MIB == self.llama_model // MIB and (
            self.kv // MIB == self.llama_context // MIB
        )


def _profile(gpu: str) -> Any:
    return make_profile(simulated_hardware(gpu, 64 * GIB, 40.0), simulated=gpu)


def measure(name: str, path: Path, path_env: str) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    skipped: list[str] = []
    for label, gpu, settings in SETTINGS:
        env = {"PATH": path_env, "PREFLIGHT_MODEL": str(path), **settings}
        try:
            inputs = pipeline.prepare(env)
        except PreflightError as exc:
            skipped.append(f"{name}: {str(exc)[:160]}")
            return rows, skipped
        p = pipeline.plan_on(inputs, _profile(gpu), ("llama.cpp",))
        if p.verdict != "ship" or p.predicted is None:
            skipped.append(f"{name} {label}: refused: {p.reasons[0][:160] if p.reasons else ''}")
            continue
        got = engine_check.llama_cpu_dry_run(p.argv, env)
        if isinstance(got, str):
            skipped.append(f"{name} {label}: {got[:200]}")
            continue
        host = got.devices[-1]
        folded = reconcile_totals(p, got)
        assert folded.predicted is not None
        devs, fdevs = p.predicted.devices, folded.predicted.devices
        rows.append(
            Row(
                name,
                label,
                sum(d.weights_bytes for d in devs),
                sum(d.kv_cache_bytes for d in devs),
                host.model_bytes,
                host.context_bytes,
                got.seconds,
                sum(d.weights_bytes for d in fdevs),
                sum(d.kv_cache_bytes for d in fdevs),
                folded.verdict,
            )
        )
    return rows, skipped


def _summary(rows: list[Row]) -> dict[str, Any]:
    if not rows:
        return {"runs": 0}
    return {
        "runs": len(rows),
        "models": len({r.model for r in rows}),
        "equal_mib": sum(r.equal() for r in rows),
        "weights_max_under_mib": round(max(r.weights_under_mib for r in rows), 2),
        "weights_max_over_mib": round(-min(r.weights_under_mib for r in rows), 2),
        "weights_max_under_pct": round(
            max(100 * (r.llama_model - r.weights) / max(r.llama_model, 1) for r in rows), 2
        ),
        "kv_max_under_mib": round(max(r.kv_under_mib for r in rows), 2),
        "kv_max_over_mib": round(-min(r.kv_under_mib for r in rows), 2),
        "kv_max_under_pct": round(
            max(100 * (r.llama_context - r.kv) / max(r.llama_context, 1) for r in rows), 2
        ),
        "raised_by_fold": sum((r.folded_weights, r.folded_kv) != (r.weights, r.kv) for r in rows),
        "refused_after_fold": sum(r.verdict != "ship" for r in rows),
        "median_seconds": sorted(r.seconds for r in rows)[len(rows) // 2],
        "max_seconds": max(r.seconds for r in rows),
    }


def _under(s: dict[str, Any], what: str) -> str:
    mib, pct = s[f"{what}_max_under_mib"], s[f"{what}_max_under_pct"]
    return "never under" if mib <= 0 else f"{mib} MiB ({pct} %)"


def main() -> int:
    binary = fit_params_binary()
    if not binary.exists():
        print(f"{binary} is not built: run `make llama-cpp`", file=sys.stderr)
        return 2
    path_env = f"{binary.parent}:/usr/bin:/bin"
    t0 = time.perf_counter()
    groups: dict[str, tuple[list[Row], list[str]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        archs: tuple[list[Row], list[str]] = ([], [])
        for arch, case in sorted(load_cases().items()):
            if not case.loads:
                continue
            path = write_case(Path(tmp) / f"{arch}.gguf", arch, case.keys, case.tensors)
            r, s = measure(arch, path, path_env)
            archs[0].extend(r)
            archs[1].extend(s)
            path.unlink()
        groups["gguf_archs"] = archs
        catalog = load_catalog()
        real: tuple[list[Row], list[str]] = ([], [])
        for model_id, quant in BENCH_MODELS:
            spec = catalog.get(model_id)
            assert spec is not None, model_id
            path = write_gguf(Path(tmp) / f"{model_id}-{quant}.gguf", spec.arch, quant)
            r, s = measure(f"{model_id} {quant}", path, path_env)
            real[0].extend(r)
            real[1].extend(s)
            path.unlink()
        groups["catalog_layouts"] = real
    doc = {
        "llama.cpp": str(binary),
        "made_by": "python bench/cpu_dry_run.py",
        "seconds": round(time.perf_counter() - t0, 1),
        "groups": {
            g: {
                "summary": _summary(rows),
                "skipped": skipped,
                "rows": [
                    {
                        "model": r.model,
                        "setting": r.setting,
                        "weights_mib": round(r.weights / MIB, 3),
                        "kv_mib": round(r.kv / MIB, 3),
                        "llama_model_mib": r.llama_model // MIB,
                        "llama_context_mib": r.llama_context // MIB,
                        "seconds": r.seconds,
                    }
                    for r in rows
                ],
            }
            for g, (rows, skipped) in groups.items()
        },
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "cpu-dry-run.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [
        "# The closed form against llama.cpp's own dry run on the CPU (`plan`'s check)",
        "",
        f"Made by `python bench/cpu_dry_run.py` ({doc['seconds']} s) with {binary}. Each file is",
        "planned for simulated GPUs as `gpu-preflight plan --simulate GPU --model FILE` does, and",
        "the plan's argv (placement replaced by `--n-gpu-layers 0 --device none`) is run through",
        "llama-fit-params here. \"under\": llama.cpp's figure above the closed form's sum over all",
        "devices (llama.cpp prints whole MiB, floored, so an under of less than 1 MiB is hidden).",
        "",
        "| files | runs | weights and KV equal (MiB) | weights: max under / max over | "
        "KV: max under / max over | raised by the fold | refused after it | dry run median / max |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g, (rows, _) in groups.items():
        sm = _summary(rows)
        if not rows:
            continue
        lines.append(
            f"| {g} ({sm['models']} models) | {sm['runs']} | {sm['equal_mib']} | "
            f"{_under(sm, 'weights')} / {sm['weights_max_over_mib']} MiB | "
            f"{_under(sm, 'kv')} / {sm['kv_max_over_mib']} MiB | {sm['raised_by_fold']} | "
            f"{sm['refused_after_fold']} | {sm['median_seconds']} / {sm['max_seconds']} s |"
        )
    for g, (rows, skipped) in groups.items():
        differ = [r for r in rows if not r.equal()]
        if differ:
            lines += ["", f"## {g}: runs where the MiB differ", ""]
            lines += ["| model | setting | weights (ours / llama.cpp) | KV (ours / llama.cpp) |"]
            lines += ["| --- | --- | --- | --- |"]
            lines += [
                f"| {r.model} | {r.setting} | {r.weights / MIB:.2f} / {r.llama_model // MIB} | "
                f"{r.kv / MIB:.2f} / {r.llama_context // MIB} |"
                for r in differ
            ]
        if skipped:
            lines += ["", f"## {g}: not measured", ""] + [f"- {k}" for k in skipped]
    (OUT / "cpu-dry-run.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
