"""Speculative decoding against the real llama-server: the planner's draft flags are accepted, the
server actually drafts, and the draft context's buffers are what the memory model predicts.

Two tiny models with the same byte-level vocabulary are written with real (random) weights; the
server runs on the CPU build from .ci/llama-cpp.sh. Random weights accept no drafts, which does
not matter: the server reports how many tokens it drafted.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from tests.support.gguf_factory import write_gguf

from gpu_preflight.inputs.overrides import parse_overrides
from gpu_preflight.memory.llamacpp import LlamaCppConfig, draft_config, estimate_llamacpp
from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.resolve import resolve_model
from gpu_preflight.models.types import ModelArch
from gpu_preflight.plan.llamacpp import llama_server_argv
from gpu_preflight.plan.settings import DraftSettings, LlamaServerSettings
from gpu_preflight.plan.types import ModelChoice

pytestmark = pytest.mark.llamacpp
BIN = (
    Path(os.environ.get("GPU_PREFLIGHT_CACHE", "/var/cache/gpu-preflight"))
    / "llama.cpp-0.3.36/bin/llama-server"
)
MIB = 2**20
CTX, PARALLEL = 2048, 2


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 30, data: dict[str, object] | None = None) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            body = json.dumps(data).encode() if data is not None else None
            req = urllib.request.Request(
                url, data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=10) as r:
                return str(r.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _mib(log: str, what: str) -> list[float]:
    return [float(x) for x in re.findall(rf"CPU {what} buffer size =\s+([0-9.]+) MiB", log)]


def test_llama_server_drafts_with_the_planned_flags_and_predicted_buffers(tmp_path):
    if not BIN.exists():
        pytest.skip("llama.cpp binaries not built: run `make llama-cpp` (.ci/llama-cpp.sh)")
    target = write_gguf(
        tmp_path / "target.gguf",
        ModelArch("llama", 4, 256, 8, 4, 32, 512, 1000, False, 4096),
        "F16",
        sparse=False,
        name="target",
    )
    draft = write_gguf(
        tmp_path / "draft.gguf",
        ModelArch("llama", 2, 64, 4, 2, 16, 128, 1000, False, 4096),
        "F16",
        sparse=False,
        name="draft",
        seed=1,
    )
    port = _port()
    choice = ModelChoice(
        "target", "target", "", "", None, str(target), "F16", target.stat().st_size, True
    )
    settings = LlamaServerSettings(
        n_ctx_total=CTX,
        parallel=PARALLEL,
        n_gpu_layers=-1,
        n_cpu_moe=0,
        flash_attn="on",
        cache_type_k="f16",
        cache_type_v="f16",
        n_batch=2048,
        n_ubatch=512,
        tensor_split=(),
        host="127.0.0.1",
        port=port,
        draft=DraftSettings(repo="", file=None, path=str(draft), tokens=3),
    )
    # -lv 4: the buffer sizes are info-level lines; passed as the user's own engine argument.
    argv = llama_server_argv(choice, settings, parse_overrides({}, ("-lv", "4")))
    assert "--spec-type" in argv and "--spec-draft-model" in argv
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(BIN), *argv[1:]], stdout=log, stderr=subprocess.STDOUT)
        try:
            _get(f"http://127.0.0.1:{port}/health", 60)
            done = json.loads(
                _get(
                    f"http://127.0.0.1:{port}/completion",
                    60,
                    {"prompt": "hello", "n_predict": 16, "temperature": 0},
                )
            )
            slots = json.loads(_get(f"http://127.0.0.1:{port}/slots"))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    text = log_path.read_text()
    assert proc.returncode == 0 or proc.returncode == -15, text[-3000:]
    assert all(s["speculative"] for s in slots), slots
    assert done["timings"]["draft_n"] > 0, done["timings"]

    # Buffers: the first KV/compute lines are the target's context, the second the draft's.
    kv, compute = _mib(text, "KV"), _mib(text, "compute")
    assert len(kv) == 2 and len(compute) == 2, text[-3000:]
    catalog = load_catalog()
    t_spec = resolve_model(str(target), catalog, "test")
    d_spec = resolve_model(str(draft), catalog, "test")
    cfg = LlamaCppConfig(context=CTX, parallel=PARALLEL, n_gpu_layers=0)
    t_est = estimate_llamacpp(t_spec, t_spec.artifacts[0], cfg).device("CPU")
    d_est = estimate_llamacpp(d_spec, d_spec.artifacts[0], draft_config(cfg, "f16", "f16")).device(
        "CPU"
    )
    assert t_est is not None and d_est is not None
    # KV is exact for both contexts: the draft holds the target's cells, per slot.
    assert round(t_est.kv_cache_bytes / MIB, 2) == kv[0]
    assert round(d_est.kv_cache_bytes / MIB, 2) == kv[1]
    # Compute: never under llama.cpp's own reservation.
    assert t_est.compute_bytes / MIB >= compute[0]
    assert d_est.compute_bytes / MIB >= compute[1]
