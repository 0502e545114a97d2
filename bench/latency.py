"""Preflight latency: whole-process time against a bare interpreter start, in the same run.

Times (median of N, after one warm-up) `python -c pass`, `gpu-preflight plan --simulate rtx-4090`,
`gpu-preflight run --dry-run` (real probe on this machine, no fio), `gpu-preflight probe --json
--no-bench`, and `llama-fit-params` on the same model; and each probe on its own, in process.
Writes bench/results/latency.{md,json}.

    python bench/latency.py [-n 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def timed(argv: list[str], n: int, env: dict[str, str]) -> list[float]:
    subprocess.run(argv, capture_output=True, env=env, check=False)  # warm the page cache
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = subprocess.run(argv, capture_output=True, env=env, check=False)
        out.append(time.perf_counter() - t0)
        if r.returncode not in (0, 3):
            raise SystemExit(f"{argv} failed: {r.stderr.decode()[-500:]}")
    return out


def probe_times(n: int) -> dict[str, float]:
    from gpu_preflight.probe.gpu import probe_gpus
    from gpu_preflight.probe.memory import probe_host_memory
    from gpu_preflight.probe.pcie import probe_pcie
    from gpu_preflight.probe.platform import probe_platform

    probes = {
        "gpu (NVML)": lambda: probe_gpus(os.environ),
        "platform": probe_platform,
        "host memory (incl. bandwidth)": probe_host_memory,
        "pcie (no GPU)": lambda: probe_pcie([]),
    }
    out = {}
    for name, fn in probes.items():
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[name] = round(statistics.median(ts) * 1000, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-n", type=int, default=15)
    args = ap.parse_args()
    py = sys.executable
    cli = [py, "-m", "gpu_preflight.cli.main"]
    from tests.support.gguf_factory import write_gguf

    from gpu_preflight.models.catalog import load_catalog

    with tempfile.TemporaryDirectory() as tmp:
        gguf = write_gguf(
            Path(tmp) / "llama-3.1-8b.gguf",
            load_catalog().get("llama-3.1-8b-instruct").arch,
            "Q4_K_M",
        )
        env = {**os.environ, "PREFLIGHT_PROFILE_DIR": tmp, "PREFLIGHT_BENCH": "off"}
        fit = subprocess.run(
            ["bash", str(ROOT / ".ci" / "llama-cpp.sh")], capture_output=True, text=True, check=True
        )
        fit_bin = str(Path(fit.stdout.strip().splitlines()[-1]) / "llama-fit-params")
        cases = {
            "python -c pass": [py, "-c", "pass"],
            "gpu-preflight plan --simulate rtx-4090": [
                *cli,
                "plan",
                "--simulate",
                "rtx-4090",
                "--json",
            ],
            "gpu-preflight plan --model FILE.gguf (header read)": [
                *cli,
                "plan",
                "--simulate",
                "rtx-4090",
                "--model",
                str(gguf),
                "--json",
            ],
            "gpu-preflight probe --json --no-bench": [*cli, "probe", "--json", "--no-bench"],
            "gpu-preflight run --dry-run": [*cli, "run", "--dry-run"],
            "llama-fit-params (same model, 8k)": [
                fit_bin,
                "-m",
                str(gguf),
                "-c",
                "8192",
                "--fit-print",
                "on",
            ],
        }
        results = {name: timed(argv, args.n, env) for name, argv in cases.items()}
    base = statistics.median(results["python -c pass"])
    rows = []
    for name, ts in results.items():
        med = statistics.median(ts)
        rows.append(
            {
                "command": name,
                "median_s": round(med, 3),
                "min_s": round(min(ts), 3),
                "over_bare_python_s": round(med - base, 3),
                "ratio_to_bare_python": round(med / base, 2),
            }
        )
    probes = probe_times(args.n)
    summary = {
        "planning_overhead_s": next(
            r["over_bare_python_s"]
            for r in rows
            if r["command"].startswith("gpu-preflight plan --simulate")
        ),
        "dry_run_overhead_s": next(
            r["over_bare_python_s"] for r in rows if r["command"] == "gpu-preflight run --dry-run"
        ),
        "target_planning_overhead_s": 0.5,
        "slowest_probe_ms": max(probes.values()),
        "target_probe_ms": 200,
        "machine": f"{os.cpu_count()} cores, {sys.platform}, Python {sys.version.split()[0]}",
        "runs_per_command": args.n,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency.json").write_text(
        json.dumps({"summary": summary, "commands": rows, "probes_ms": probes}, indent=1) + "\n"
    )
    md = [
        "# Preflight latency",
        "",
        "Median whole-process wall time of each command, measured in the same run as a "
        "bare interpreter start. Produced by `python bench/latency.py`.",
        "",
        "| command | median s | min s | over bare python s | ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    md += [
        f"| `{r['command']}` | {r['median_s']} | {r['min_s']} | {r['over_bare_python_s']} | {r['ratio_to_bare_python']} |"
        for r in rows
    ]
    md += ["", "| probe (in process) | median ms |", "| --- | ---: |"]
    md += [f"| {k} | {v} |" for k, v in probes.items()]
    md += ["", "| summary | value |", "| --- | --- |"] + [
        f"| {k} | {v} |" for k, v in summary.items()
    ]
    (RESULTS / "latency.md").write_text("\n".join(md) + "\n")
    print(json.dumps(summary, indent=1))
    return 0 if summary["planning_overhead_s"] < 0.5 and summary["slowest_probe_ms"] < 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
