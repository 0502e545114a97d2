"""Predicted vs llama.cpp's own memory accounting, on real architectures, no GPU needed.

For each model in bench/archs.py a GGUF with llama.cpp's real tensor names, shapes and types is
written with its data left as a sparse hole. Over a grid of contexts x KV cache types x flash
attention, the planner is run as a user would run it on a machine without a GPU
(`gpu-preflight plan --json` with PREFLIGHT_MODEL/ENGINE/CONTEXT/PARALLEL and
LLAMA_ARG_CACHE_TYPE_K/V, LLAMA_ARG_FLASH_ATTN), and the argv it ships goes, minus the
server-only flags, to `llama-fit-params --fit-print on` (llama.cpp's dry run: model, context and
compute MiB per device; tests/support/llama_fit.py). Nothing is added to that argv: llama.cpp
repacks weights as the shipped llama-server would, and the repacked buffer (CPU_REPACK, which
llama-fit-params' "Host" line leaves out) is counted as the host RAM it is. The plan's predicted
CPU breakdown is compared with it. Writes bench/results/llamacpp-memory.{md,json,png}.

    python bench/llamacpp_memory.py [--quick]
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.gguf_factory import write_gguf  # noqa: E402
from tests.support.llama_fit import LlamaFitError, llama_fit  # noqa: E402

from bench.archs import BENCH_MODELS, CACHE_TYPES, CONTEXTS, FLASH_ATTN  # noqa: E402
from gpu_preflight.models.catalog import load_catalog  # noqa: E402

MIB = 2**20
RESULTS = ROOT / "bench" / "results"
# A machine without a GPU (NVML library missing), with plenty of host RAM and bandwidth so every
# configuration ships (the speed floor is checked against the bandwidth).
NO_GPU = ROOT / "tests" / "fixtures" / "nvml" / "library_not_found.json"
HOST = ["--host-ram", "8192", "--host-bandwidth", "1000"]


def llama_bin(name: str) -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / ".ci" / "llama-cpp.sh")], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip().splitlines()[-1]) / name


def user_env(gguf: Path, ctx: int, fa: str, cache: str) -> dict[str, str]:
    """The environment a user sets; llama-server (and llama-fit-params) inherit it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFLIGHT_", "LLAMA_ARG_"))}
    env.update(
        {
            "PREFLIGHT_MODEL": str(gguf),
            "PREFLIGHT_ENGINE": "llama.cpp",
            "PREFLIGHT_CONTEXT": str(ctx),
            "PREFLIGHT_PARALLEL": "1",
            # K and V both: a V left unset stays f16 in llama.cpp whatever K is
            "LLAMA_ARG_CACHE_TYPE_K": cache,
            "LLAMA_ARG_CACHE_TYPE_V": cache,
            "LLAMA_ARG_FLASH_ATTN": fa,
        }
    )
    # The closed form is what is measured: `plan` would otherwise fold this same dry run into
    # its figures (pipeline.check_on_cpu) and compare llama.cpp with itself. llama-fit-params
    # below reads no PREFLIGHT_* variable.
    env["PREFLIGHT_ENGINE_CHECK"] = "off"
    return env


def plan(env: dict[str, str]) -> dict[str, Any]:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpu_preflight.cli.main",
            "plan",
            "--json",
            "--simulate",
            str(NO_GPU),
            *HOST,
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=120,
    )
    if r.returncode not in (0, 3) or not r.stdout.strip():
        tail = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        raise RuntimeError(f"plan failed: {tail}")
    doc: dict[str, Any] = json.loads(r.stdout)
    if doc.get("verdict") != "ship":
        raise RuntimeError(f"plan refused: {'; '.join(doc.get('reasons') or [])}")
    return doc


def measure(gguf: Path, ctx: int, fa: str, cache: str, binary: Path) -> dict[str, Any]:
    env = user_env(gguf, ctx, fa, cache)
    doc = plan(env)
    argv = tuple(doc["argv"])
    cpu = next(d for d in doc["predicted"]["devices"] if d["device"] == "CPU")
    ref = llama_fit(argv, env={**env, **(doc.get("env") or {})}, binary=binary)
    h = ref.host
    ours = {
        "model": cpu["weights_bytes"] // MIB,
        "kv": cpu["kv_cache_bytes"] // MIB,
        "compute": cpu["compute_bytes"] // MIB,
    }
    ours["total"] = ours["model"] + ours["kv"] + ours["compute"]
    return {
        "argv": list(argv),
        "llama_mib": {
            "model": h.model_mib,
            "kv": h.context_mib,
            "compute": h.compute_mib,
            "total": h.total_mib,
            "cpu_repack_model": h.extra_model_mib,
        },
        "ours_mib": ours,
        "total_error_pct": round(100 * (ours["total"] - h.total_mib) / h.total_mib, 3),
    }


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
                        row: dict[str, Any] = {
                            "model": model_id,
                            "quant": quant,
                            "ctx": ctx,
                            "fa": fa,
                            "cache": cache,
                        }
                        try:
                            row.update(measure(gguf, ctx, fa, cache, binary))
                        except (RuntimeError, LlamaFitError, subprocess.TimeoutExpired) as exc:
                            row["error"] = str(exc)[-300:]
                        rows.append(row)
                        print(
                            model_id,
                            ctx,
                            fa,
                            cache,
                            row.get("total_error_pct", row.get("error")),
                            file=sys.stderr,
                            flush=True,
                        )
    elapsed = time.time() - t0
    ok = [r for r in rows if "error" not in r]
    if not ok:
        print(json.dumps(rows[:3], indent=1), file=sys.stderr)
        return 1
    errs = [r["total_error_pct"] for r in ok]
    kv_diff = [r["ours_mib"]["kv"] - r["llama_mib"]["kv"] for r in ok]
    summary = {
        "configurations": len(ok),
        "failed": len(rows) - len(ok),
        "median_abs_total_error_pct": round(statistics.median(abs(e) for e in errs), 3),
        "worst_abs_total_error_pct": round(max(abs(e) for e in errs), 3),
        "worst_under_prediction_pct": round(min(*errs, 0.0), 3),
        "kv_exact": all(d == 0 for d in kv_diff),
        "worst_kv_error_mib": max(abs(d) for d in kv_diff),
        # llama.cpp floors Host and CPU_REPACK separately: their sum may be 1 MiB under ours
        "weights_within_1_mib": all(
            0 <= r["ours_mib"]["model"] - r["llama_mib"]["model"] <= 1 for r in ok
        ),
        "worst_weights_over_mib": max(r["ours_mib"]["model"] - r["llama_mib"]["model"] for r in ok),
        "with_cpu_repack": sum(1 for r in ok if r["llama_mib"]["cpu_repack_model"] > 0),
        "worst_compute_over_mib": max(
            r["ours_mib"]["compute"] - r["llama_mib"]["compute"] for r in ok
        ),
        "min_compute_margin_mib": min(
            r["ours_mib"]["compute"] - r["llama_mib"]["compute"] for r in ok
        ),
        "seconds": round(elapsed, 1),
        "llama_cpp": "llama-cpp-python 0.3.36 vendored llama.cpp, CPU build (.ci/llama-cpp.sh)",
        "argv": "the plan's own (gpu-preflight plan --json, no GPU), server-only flags removed",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "llamacpp-memory.json").write_text(
        json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n"
    )
    lines = [
        "# Predicted vs llama.cpp's own memory accounting",
        "",
        "The plan's predicted host breakdown (`gpu-preflight plan --json` on a machine without a "
        "GPU, settings from PREFLIGHT_* and LLAMA_ARG_CACHE_TYPE_K/V, LLAMA_ARG_FLASH_ATTN) against "
        "`llama-fit-params --fit-print on` run on the argv that plan ships (server-only flags "
        "removed, nothing added: weights are repacked as llama-server repacks them, and the "
        "CPU_REPACK buffer is counted in llama.cpp's host figures). GGUFs with real tensor shapes "
        "and sparse data. MiB. Produced by `python bench/llamacpp_memory.py`.",
        "",
        "| summary | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in summary.items()],
        "",
        "| model | quant | ctx | FA | KV type | llama.cpp model/KV/compute/total (of which CPU_REPACK) "
        "| ours model/KV/compute/total | total error % |",
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
            f"{a['model']}/{a['kv']}/{a['compute']}/{a['total']} ({a['cpu_repack_model']}) | "
            f"{b['model']}/{b['kv']}/{b['compute']}/{b['total']} | "
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
    ok_run = summary["kv_exact"] and summary["worst_under_prediction_pct"] >= 0.0
    return 0 if ok_run and not summary["failed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
