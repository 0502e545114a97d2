"""Receipts on this machine's CPU: the plan's prediction against what the running llama-server
really used, and its decode speed against the forecast band.

For each configuration a GGUF with a real architecture's tensors (data a sparse hole) is written,
and `gpu-preflight run` starts it exactly as the image does: probe, plan, llama.cpp's own dry run,
the receipt's watcher forked, llama-server exec'd. The receipt the watcher writes is the first
result (measured peak RSS against the CPU prediction; decode tok/s against the band).

llama-server prints its per-buffer sizes only at log verbosity 4 (common/log.cpp
``common_log_default_callback`` maps libllama's INFO to LOG_LEVEL_TRACE, above the default 3). So
a second pass runs the plan's exact argv plus ``-lv 4`` (which changes only what is printed) and
`gpu-preflight receipt --log` reads the buffers, for the per-component comparison.

Host-side only: no GPU here, so these are the first receipts, not the CUDA ones (issue 14 asks
for those where a GPU is lent). Writes bench/results/receipts.{md,json}.

    python bench/receipts.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.gguf_factory import write_gguf  # noqa: E402

from bench.llamacpp_memory import llama_bin  # noqa: E402
from gpu_preflight.models.catalog import load_catalog  # noqa: E402

MIB = 2**20
RESULTS = ROOT / "bench" / "results"
EXE = Path(sys.executable).parent / "gpu-preflight"
# (catalog model, quant, context, parallel)
CONFIGS = [
    ("qwen2.5-0.5b-instruct", "Q8_0", 4096, 1),
    ("qwen2.5-0.5b-instruct", "Q8_0", 8192, 2),
    ("llama-3.2-1b-instruct", "Q8_0", 4096, 1),
    ("qwen3-0.6b", "F16", 4096, 1),
    ("gemma-2-2b-it", "Q4_K_M", 4096, 1),
]
TOKENS = 48


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(gguf: Path, pdir: Path, ctx: int, par: int, port: int, bindir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFLIGHT_", "LLAMA_ARG_"))}
    env.update(
        {
            "PATH": f"{bindir}:{EXE.parent}:{env.get('PATH', '/usr/bin:/bin')}",
            "PREFLIGHT_MODEL": str(gguf),
            "PREFLIGHT_ENGINE": "llama.cpp",
            "PREFLIGHT_CONTEXT": str(ctx),
            "PREFLIGHT_PARALLEL": str(par),
            "PREFLIGHT_PROFILE_DIR": str(pdir),
            "PREFLIGHT_BENCH": "off",
            "PREFLIGHT_HOST": "127.0.0.1",
            "PREFLIGHT_PORT": str(port),
            "PREFLIGHT_RECEIPT_TOKENS": str(TOKENS),
        }
    )
    return env


def _wait(path: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if time.time() > deadline:
            raise TimeoutError(f"{path} not written in {timeout} s")
        time.sleep(0.3)


def _stop(p: subprocess.Popen[bytes]) -> float:
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    return time.time() - t0


def one(model: str, quant: str, ctx: int, par: int, work: Path, bindir: Path) -> dict[str, Any]:
    spec = load_catalog().get(model)
    gguf = write_gguf(work / f"{model}-{quant}.gguf", spec.arch, quant, sparse=True, name=model)
    pdir = work / f"profile-{model}-{quant}-{ctx}-{par}"
    port = _port()
    env = _env(gguf, pdir, ctx, par, port, bindir)
    p = subprocess.Popen([str(EXE), "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait(pdir / "receipt.json", 300)
    finally:
        stop_s = _stop(p)
    receipt = json.loads((pdir / "receipt.json").read_text())
    plan = json.loads((pdir / "plan.json").read_text())
    # Pass 2: the same argv, -lv 4, for llama.cpp's per-buffer lines.
    log = work / f"{pdir.name}.log"
    port2 = _port()
    argv = [a if a != str(port) else str(port2) for a in plan["argv"]] + ["-lv", "4"]
    with log.open("wb") as f:
        q = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        out = subprocess.run(
            [str(EXE), "receipt", "--json", "--no-write", "--log", str(log), "--pid", str(q.pid),
             "--url", f"http://127.0.0.1:{port2}", "--tokens", "8", "--timeout", "300"],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
    finally:
        _stop(q)
    logged = json.loads(out.stdout) if out.stdout.strip().startswith("{") else None
    cpu = next(d for d in plan["predicted"]["devices"] if d["device"] == "CPU")
    return {
        "components_bytes": cpu["weights_bytes"] + cpu["kv_cache_bytes"] + cpu["compute_bytes"],
        "rss_note": next(m["note"] for m in receipt["memory"] if m["device"] == "CPU"),
        "model": model,
        "quant": quant,
        "context": ctx,
        "parallel": par,
        "argv": plan["argv"],
        "receipt": receipt,
        "logged": logged["memory"] if logged else None,
        "docker_stop_like_s": round(stop_s, 2),
    }


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / MIB:,.0f}"


def render(rows: list[dict[str, Any]]) -> str:
    out = [
        "# Receipts: the running engine against its plan (llama-server on this machine's CPU)",
        "",
        "Written by `python bench/receipts.py`. Each row is a real `gpu-preflight run` (probe, "
        "plan, llama.cpp's dry run, the receipt watcher, llama-server exec'd) on a GGUF with the "
        "model's real tensors and a sparse-hole payload; the receipt is the one the watcher wrote. "
        "Error = measured - predicted (positive: under-predicted, the dangerous side). Host "
        "memory is measured as the engine's peak RSS (VmHWM). The CPU prediction includes "
        "`--cache-ram` (llama-server's prompt cache, 8 GiB by default), which a short receipt "
        "never fills: the total over-predicts by design there, so the per-component table is the "
        "one that shows the model's accuracy.",
        "",
        "No GPU was lent to this task: these are host receipts; the CUDA ones are still to come.",
        "",
        "## Totals and decode",
        "",
        "| model | quant | ctx x par | predicted MiB | of it weights+KV+compute | measured MiB "
        "(peak RSS) | error | decode tok/s | band | inside | floor cleared | stop s |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|---|---:|",
    ]
    for r in rows:
        rc = r["receipt"]
        m = next(x for x in rc["memory"] if x["device"] == "CPU")
        d = rc["decode"] or {}
        s = d.get("single") or {}
        comp = r.get("components_bytes")
        out.append(
            f"| {r['model']} | {r['quant']} | {r['context']} x {r['parallel']} | "
            f"{_mib(m['predicted_bytes'])} | {_mib(comp)} | {_mib(m['measured_bytes'])} | "
            f"{(m['error_fraction'] or 0):+.1%} | {s.get('decode_tok_s', '-')} | "
            f"{d.get('band_low_tok_s')}-{d.get('band_high_tok_s')} | {d.get('within_band')} | "
            f"{d.get('cleared_floor')} | {r['docker_stop_like_s']} |"
        )
    over = [
        r for r in rows
        if r.get("components_bytes") is not None
        and (next(x for x in r["receipt"]["memory"] if x["device"] == "CPU")["measured_bytes"] or 0)
        > r["components_bytes"]
    ]  # fmt: skip
    if over:
        out += ["", "**Found by these receipts:** peak RSS above the predicted weights + KV + compute "
                "(only the `--cache-ram` allowance kept the total above it):", ""]
        for r in over:
            m = next(x for x in r["receipt"]["memory"] if x["device"] == "CPU")
            out.append(
                f"- {r['model']} {r['quant']}: {_mib(m['measured_bytes'])} MiB measured against "
                f"{_mib(r['components_bytes'])} MiB of components. The weights are repacked "
                "(CPU_REPACK) and the mmap'ed file's pages that the repack read stay resident "
                "as page cache (RssFile), so the weights are resident twice until the kernel "
                "reclaims the clean pages. The plan counts them once."
            )
    out += ["", "Resident memory at the end of each receipt (/proc/PID/status):", ""]
    out += [f"- {r['model']} {r['quant']} {r['context']} x {r['parallel']}: {r['rss_note']}" for r in rows]
    out += [
        "",
        "## Per component (llama.cpp's logged buffers, same argv + `-lv 4`)",
        "",
        "| model | quant | ctx x par | component | predicted MiB | logged MiB | error |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        for dev in r["logged"] or []:
            for c in dev["components"]:
                p, g = c["predicted_bytes"], c["logged_bytes"]
                err = f"{(g - p) / p:+.1%}" if p and g is not None else "-"
                out.append(
                    f"| {r['model']} | {r['quant']} | {r['context']} x {r['parallel']} | "
                    f"{dev['device']} {c['name']} | {_mib(p)} | {_mib(g)} | {err} |"
                )
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    bindir = llama_bin("llama-server").parent
    rows = []
    with tempfile.TemporaryDirectory(prefix="receipts-") as tmp:
        for cfg in CONFIGS[:2] if a.quick else CONFIGS:
            t0 = time.time()
            rows.append(one(*cfg, Path(tmp), bindir))
            print(f"{cfg}: {time.time() - t0:.0f} s", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "receipts.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / "receipts.md").write_text(render(rows))
    print((RESULTS / "receipts.md").read_text())


if __name__ == "__main__":
    main()
