"""Predicted vs llama.cpp's own memory accounting, on real architectures, no GPU needed.

For each model in bench/archs.py a GGUF with llama.cpp's real tensor names, shapes and types is
written with its data left as a sparse hole. Over a grid of contexts x KV cache types x flash
attention, `llama-fit-params --fit-print on` (llama.cpp's dry run: model, context and compute
MiB per device) is compared with `gpu-preflight estimate --engine llama.cpp --cpu --json`, run
as a user would run it. Writes bench/results/llamacpp-memory.{md,json,png}.

    python bench/llamacpp_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.gguf_factory import write_gguf  # noqa: E402

from bench.archs import BENCH_MODELS, CACHE_TYPES, CONTEXTS, FLASH_ATTN  # noqa: E402
from gpu_preflight.models.catalog import load_catalog  # noqa: E402

MIB = 2**20
RESULTS = ROOT / "bench" / "results"


def llama_bin(name: str) -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / ".ci" / "llama-cpp.sh")], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip().splitlines()[-1]) / name


def fit_params(
    binary: Path, gguf: Path, ctx: int, fa: str, cache: str
) -> tuple[int, int, int] | str:
    r = subprocess.run(
        [
            str(binary),
            "-m",
            str(gguf),
            "-c",
            str(ctx),
            "-fa",
            fa,
            "-ctk",
            cache,
            "-ctv",
            cache,
            "--fit-print",
            "on",
            "--no-repack",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if r.returncode != 0:
        return (r.stderr.strip().splitlines() or ["failed"])[-1]
    _, model, kv, compute = r.stdout.strip().splitlines()[-1].split()
    return int(model), int(kv), int(compute)


def estimate(gguf: Path, ctx: int, fa: str, cache: str) -> dict[str, int]:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpu_preflight.cli.main",
            "estimate",
            "--model",
            str(gguf),
            "--engine",
            "llama.cpp",
            "--context",
            str(ctx),
            "--cpu",
            "--flash-attn",
            fa,
            "--cache-type",
            cache,
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    cpu = json.loads(r.stdout)["devices"][-1]
    return {k: cpu[k] for k in ("weights_bytes", "kv_cache_bytes", "compute_bytes", "total_bytes")}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="3 models x 2 contexts (a smoke run)")
    args = ap.parse_args()
    models = BENCH_MODELS[:3] if args.quick else BENCH_MODELS
    contexts = CONTEXTS[:2] if args.quick else CONTEXTS
    binary = llama_bin("llama-fit-params")
    catalog = load_catalog()
    rows = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for model_id, quant in models:
            spec = catalog.get(model_id)
            assert spec is not None, model_id
            gguf = write_gguf(Path(tmp) / f"{model_id}.gguf", spec.arch, quant)
            for ctx in contexts:
                for fa in FLASH_ATTN:
                    for cache in CACHE_TYPES:
                        if fa == "off" and cache != "f16":
                            continue  # llama.cpp refuses a quantized V cache without flash attention
                        ref = fit_params(binary, gguf, ctx, fa, cache)
                        if isinstance(ref, str):
                            rows.append(
                                {
                                    "model": model_id,
                                    "quant": quant,
                                    "ctx": ctx,
                                    "fa": fa,
                                    "cache": cache,
                                    "error": ref,
                                }
                            )
                            continue
                        ours = estimate(gguf, ctx, fa, cache)
                        ref_total = sum(ref)
                        ours_total = (
                            ours["weights_bytes"] // MIB
                            + ours["kv_cache_bytes"] // MIB
                            + ours["compute_bytes"] // MIB
                        )
                        rows.append(
                            {
                                "model": model_id,
                                "quant": quant,
                                "ctx": ctx,
                                "fa": fa,
                                "cache": cache,
                                "llama_mib": {
                                    "model": ref[0],
                                    "kv": ref[1],
                                    "compute": ref[2],
                                    "total": ref_total,
                                },
                                "ours_mib": {
                                    "model": ours["weights_bytes"] // MIB,
                                    "kv": ours["kv_cache_bytes"] // MIB,
                                    "compute": ours["compute_bytes"] // MIB,
                                    "total": ours_total,
                                },
                                "total_error_pct": round(
                                    100 * (ours_total - ref_total) / ref_total, 3
                                ),
                            }
                        )
    elapsed = time.time() - t0
    ok = [r for r in rows if "error" not in r]
    errs = [r["total_error_pct"] for r in ok]
    kv_diff = [r["ours_mib"]["kv"] - r["llama_mib"]["kv"] for r in ok]
    summary = {
        "configurations": len(ok),
        "failed_in_llama_cpp": len(rows) - len(ok),
        "median_abs_total_error_pct": round(statistics.median(abs(e) for e in errs), 3),
        "worst_abs_total_error_pct": round(max(abs(e) for e in errs), 3),
        "worst_under_prediction_pct": round(min(*errs, 0.0), 3),
        "kv_exact": all(d == 0 for d in kv_diff),
        "worst_kv_error_mib": max(abs(d) for d in kv_diff),
        "weights_exact": all(r["ours_mib"]["model"] == r["llama_mib"]["model"] for r in ok),
        "worst_compute_over_mib": max(
            r["ours_mib"]["compute"] - r["llama_mib"]["compute"] for r in ok
        ),
        "min_compute_margin_mib": min(
            r["ours_mib"]["compute"] - r["llama_mib"]["compute"] for r in ok
        ),
        "seconds": round(elapsed, 1),
        "llama_cpp": "llama-cpp-python 0.3.36 vendored llama.cpp, CPU build (.ci/llama-cpp.sh)",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "llamacpp-memory.json").write_text(
        json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n"
    )
    lines = [
        "# Predicted vs llama.cpp's own memory accounting",
        "",
        "`gpu-preflight estimate --engine llama.cpp --cpu --json` against `llama-fit-params --fit-print on "
        "--no-repack` (llama.cpp's dry run; host buffers of a CPU build) on GGUFs with real tensor shapes "
        "and sparse data. MiB. Produced by `python bench/llamacpp_memory.py`.",
        "",
        "| summary | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in summary.items()],
        "",
        "| model | quant | ctx | FA | KV type | llama.cpp model/KV/compute/total | ours model/KV/compute/total | total error % |",
        "| --- | --- | ---: | --- | --- | --- | --- | ---: |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['quant']} | {r['ctx']} | {r['fa']} | {r['cache']} | failed: {r['error']} | | |"
            )
            continue
        a, b = r["llama_mib"], r["ours_mib"]
        lines.append(
            f"| {r['model']} | {r['quant']} | {r['ctx']} | {r['fa']} | {r['cache']} | "
            f"{a['model']}/{a['kv']}/{a['compute']}/{a['total']} | {b['model']}/{b['kv']}/{b['compute']}/{b['total']} | "
            f"{r['total_error_pct']:+.3f} |"
        )
    (RESULTS / "llamacpp-memory.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 6))
        xs = [r["llama_mib"]["total"] / 1024 for r in ok]
        ys = [r["ours_mib"]["total"] / 1024 for r in ok]
        ax.loglog(xs, ys, "o", ms=3)
        lim = [min(xs + ys) * 0.9, max(xs + ys) * 1.1]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_xlabel("llama-fit-params total (GiB)")
        ax.set_ylabel("gpu-preflight estimate total (GiB)")
        ax.set_title(
            f"{len(ok)} configurations, median |error| {summary['median_abs_total_error_pct']}%"
        )
        fig.tight_layout()
        fig.savefig(RESULTS / "llamacpp-memory.png", dpi=110)
    except ImportError:
        print("matplotlib missing: no plot (pip install '.[bench]')", file=sys.stderr)
    print(json.dumps(summary, indent=1))
    return 0 if summary["kv_exact"] and summary["worst_under_prediction_pct"] >= -2.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
