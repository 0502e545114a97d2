"""Bytes fetched to plan a model named only by its Hub id, and the wall time of `plan` on it.

A local server speaking the Hub's API (tests/support/fake_hub.py) serves real config.json texts,
safetensors files with real headers and sparse GGUFs; the real huggingface_hub client does the
talking (HF_ENDPOINT). For each repo: bytes and requests against the files' real size, and the
seconds `gpu-preflight plan --simulate h100-sxm` takes with PREFLIGHT_MODEL=<the id>, first with
an empty header cache (the Hub is asked) and then again (the cache answers). Writes
bench/results/hub-fetch.{md,json}.

    python bench/hub_fetch.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.models.test_hub import LLAMA_8B, QWEN3_8B, QWEN3_8B_CONFIG  # noqa: E402
from tests.support.fake_hub import (  # noqa: E402
    FakeHub,
    hf_tensors,
    safetensors_repo,
    write_split_gguf,
)
from tests.support.gguf_factory import write_gguf  # noqa: E402

from gpu_preflight.models.hub import resolve_hub_model  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def _plan_seconds(ref: str, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpu_preflight.cli.main",
            "plan",
            "--simulate",
            "h100-sxm",
            "--json",
        ],
        env={**os.environ, **env, "PREFLIGHT_MODEL": ref},
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if r.returncode not in (0, 3):
        raise SystemExit(f"plan {ref}: exit {r.returncode}: {r.stderr[-500:]}")
    return round(elapsed, 2)


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        st = safetensors_repo(d / "st", QWEN3_8B_CONFIG, hf_tensors(QWEN3_8B), 5)
        g = d / "g"
        g.mkdir()
        q4 = write_gguf(g / "Bench-Q4_K_M.gguf", QWEN3_8B, "Q4_K_M")
        q8 = write_gguf(g / "Bench-Q8_0.gguf", QWEN3_8B, "Q8_0")
        s = d / "s"
        s.mkdir()
        split = write_split_gguf(s, "Split-Q4_K_M", LLAMA_8B, "Q4_K_M", 3)
        with FakeHub() as hub:
            hub.add("bench/Qwen3-8B-st", st)
            hub.add("bench/Qwen3-8B-GGUF", {q4.name: q4, q8.name: q8})
            hub.add("bench/Llama-8B-split-GGUF", {f"Q4_K_M/{p.name}": p for p in split})
            for ref in (
                "bench/Qwen3-8B-st",
                "bench/Qwen3-8B-GGUF:Q8_0",
                "bench/Llama-8B-split-GGUF:Q4_K_M",
            ):
                env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(d / "hf" / ref.replace("/", "_"))}
                cache = d / "headers" / ref.replace("/", "_").replace(":", "_")
                r = resolve_hub_model(ref, env, cache)
                pdir = d / "profile" / ref.replace("/", "_").replace(":", "_")
                pdir.mkdir(parents=True)
                penv = {**env, "PREFLIGHT_PROFILE_DIR": str(pdir)}
                cold = _plan_seconds(ref, penv)
                warm = _plan_seconds(ref, penv)
                rows.append(
                    {
                        "repo": ref,
                        "engine": r.engine,
                        "bytes_fetched": r.bytes_fetched,
                        "requests": r.requests,
                        "file_bytes": r.file_bytes,
                        "share": r.bytes_fetched / max(1, r.file_bytes),
                        "plan_s_cold": cold,
                        "plan_s_warm": warm,
                    }
                )
    # The plan times depend on how busy the machine was: say so beside them.
    load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hub-fetch.json").write_text(
        json.dumps([{**r, "machine": load} for r in rows], indent=2) + "\n"
    )
    lines = [
        "# Planning a model by its Hub id: bytes fetched and plan time",
        "",
        "`python bench/hub_fetch.py`: the real `huggingface_hub` against a local server speaking "
        "the Hub's API (tests/support/fake_hub.py), real headers, sparse data. `plan` is "
        "`gpu-preflight plan --simulate h100-sxm` with `PREFLIGHT_MODEL=<id>`: first with an "
        f"empty header cache in the profile directory, then again ({load} while it ran).",
        "",
        "| repo | engine | fetched | requests | files | share | plan (Hub asked) | plan (cache) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['repo']}` | {r['engine']} | {r['bytes_fetched'] / 1e3:.0f} kB | "
            f"{r['requests']} | {r['file_bytes'] / 1e9:.2f} GB | {r['share']:.4%} | "
            f"{r['plan_s_cold']:.2f} s | {r['plan_s_warm']:.2f} s |"
        )
    (RESULTS / "hub-fetch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
