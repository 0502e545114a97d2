"""`make bench`: every benchmark, one after the other; results land in bench/results/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    codes = [
        subprocess.run([sys.executable, str(HERE / s)], check=False).returncode
        for s in (
            "llamacpp_memory.py",
            "vllm_kv.py",
            "gpu_logs.py",
            "hub_fetch.py",
            "latency.py",
            "receipts.py",
        )
    ]
    raise SystemExit(max(codes))
