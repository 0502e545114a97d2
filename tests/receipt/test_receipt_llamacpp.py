"""The receipt against the real llama-server on the CPU, started by `gpu-preflight run` exactly as
the image starts it (the watcher forked, the engine exec'd in the same PID), three times in one
profile directory: each start writes a schema-valid receipt, and the next plan is calibrated from
the ones before it. Also: SIGTERM to the engine while the receipt runs still ends it in < 10 s."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.types import ModelArch
from gpu_preflight.plan.document import plan_from_dict
from gpu_preflight.receipt.document import load_history, receipt_from_dict
from tests.support.gguf_factory import write_gguf
from tests.support.llama_fit import fit_params_binary

pytestmark = pytest.mark.llamacpp
TINY = ModelArch("llama", 2, 64, 4, 2, 16, 128, 1000, False, 2048)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bin_dir() -> Path:
    b = fit_params_binary().parent
    if not (b / "llama-server").exists():
        pytest.skip("llama-server not built: run `make llama-cpp` (.ci/llama-cpp.sh)")
    return b


def _start(bin_dir: Path, model: Path, pdir: Path, **extra: str) -> tuple[subprocess.Popen, int]:
    port = _port()
    env = {
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(pdir.parent),
        "PREFLIGHT_BENCH": "off",
        "PREFLIGHT_PROFILE_DIR": str(pdir),
        "PREFLIGHT_MODEL": str(model),
        "PREFLIGHT_HOST": "127.0.0.1",
        "PREFLIGHT_PORT": str(port),
        "PREFLIGHT_RECEIPT_TOKENS": "32",
        **extra,
    }
    exe = Path(sys.executable).parent / "gpu-preflight"
    p = subprocess.Popen(
        [str(exe), "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    return p, port


def _wait_for(path: Path, since: float, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.stat().st_mtime >= since:
            return
        time.sleep(0.2)
    raise AssertionError(f"{path} was not written within {timeout} s")


def _stop(p: subprocess.Popen) -> float:
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    return time.time() - t0


def test_three_starts_write_receipts_and_calibrate_the_next_plan(bin_dir, tmp_path):
    model = write_gguf(tmp_path / "tiny.gguf", TINY, "F16", sparse=False, name="tiny")
    pdir = tmp_path / "profile"
    bands = []
    for start in range(3):
        t0 = time.time() - 1
        p, _ = _start(bin_dir, model, pdir)
        try:
            _wait_for(pdir / "receipt.json", t0, 90)
            plan = plan_from_dict(json.loads((pdir / "plan.json").read_text()))
            receipt = receipt_from_dict(json.loads((pdir / "receipt.json").read_text()))
        finally:
            took = _stop(p)
            out = p.stdout.read().decode() if p.stdout else ""
        assert took < 10, out
        assert receipt.status == "complete", (receipt.warnings, out)
        assert "gpu-preflight receipt: complete" in out
        # The engine's own numbers: the context it runs with is the plan's.
        assert receipt.engine.n_ctx == plan.context and receipt.engine.pid == p.pid
        d = receipt.decode
        assert d is not None and d.single is not None and d.single.decode_tok_s
        assert d.single.decode_tok_s > 0 and d.single.source == "engine timings"
        assert d.within_band is not None and d.cleared_floor is not None
        cpu = receipt.memory[0]
        assert cpu.device == "CPU" and cpu.method == "rss-peak"
        assert cpu.measured_bytes and cpu.measured_bytes > 0
        assert cpu.error_bytes == cpu.measured_bytes - cpu.predicted_bytes
        assert receipt.peaks is not None and receipt.peaks.host_available_min_bytes
        # The plan of this start says what the receipts before it changed.
        assert plan.predicted is not None
        if start == 0:
            assert plan.calibration is None
        else:
            assert plan.calibration is not None
            assert plan.calibration.decode_receipts == start
            assert any(f"calibrated from {start} receipt" in n for n in plan.predicted.notes)
            assert any(n.startswith("last receipt") for n in plan.predicted.notes)
        bands.append((plan.predicted.decode_tok_s_low, plan.predicted.decode_tok_s_high))
    assert len(load_history(pdir).receipts) == 3
    assert bands[0] != bands[1]  # the roofline band was replaced by the measured one


def test_sigterm_while_the_receipt_runs_still_ends_the_engine_within_10_s(bin_dir, tmp_path):
    # A real architecture (data a sparse hole) decodes slowly enough that the stream is running.
    arch = load_catalog().get("qwen2.5-0.5b-instruct").arch
    model = write_gguf(tmp_path / "q.gguf", arch, "Q8_0", sparse=True, name="q")
    pdir = tmp_path / "profile"
    # 4096 tokens per stream: the workload is still running when the signal comes.
    p, port = _start(bin_dir, model, pdir, PREFLIGHT_RECEIPT_TOKENS="4096")
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), 1):
                    break
            except OSError:
                time.sleep(0.2)
        time.sleep(4)
        assert not (pdir / "receipt.json").exists()  # still measuring
    finally:
        took = _stop(p)
    assert took < 10
    # The watcher notices its engine is gone and ends too (it never outlives the container).
    deadline = time.time() + 15
    while time.time() < deadline:
        if not _watchers(pdir):
            break
        time.sleep(0.5)
    assert not _watchers(pdir)


def _watchers(pdir: Path) -> list[int]:
    """gpu-preflight processes still running with this profile directory."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        mine = f"PREFLIGHT_PROFILE_DIR={pdir}".encode() in env and b"gpu-preflight" in cmd
        if mine and int(d.name) != os.getpid():
            out.append(int(d.name))
    return out
