"""Taking a receipt against engines that misbehave: never healthy, garbage /metrics, a dead
engine, a stream that stops. A small HTTP server stands in for the engine only for these hostile
cases; the real llama-server is measured in test_receipt_llamacpp.py and the container e2e."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gpu_preflight import pipeline
from gpu_preflight.cli.main import main
from gpu_preflight.launch import write_set
from gpu_preflight.plan.document import plan_to_dict
from gpu_preflight.probe.fake_nvml import FakeNvml
from gpu_preflight.profile import profile_to_dict
from gpu_preflight.receipt import engine_api
from gpu_preflight.receipt.document import receipt_from_dict, receipt_to_dict
from gpu_preflight.receipt.take import Request, take
from tests.plan.conftest import profile_for

MIB = 2**20


class Engine(BaseHTTPRequestHandler):
    """What each test sets on the server: health codes, /metrics text, token stream."""

    def log_message(self, *a: Any) -> None:
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        cfg = self.server.cfg  # type: ignore[attr-defined]
        if self.path == "/health":
            self._send(cfg.get("health", 200), b"{}")
        elif self.path == "/metrics":
            self._send(200, cfg.get("metrics", "").encode(), "text/plain")
        elif self.path == "/props":
            self._send(200, json.dumps(cfg.get("props", {})).encode())
        elif self.path == "/v1/models":
            self._send(200, json.dumps({"data": [{"id": "m", "max_model_len": cfg.get("mml")}]}).encode())
        else:
            self._send(404, b"{}")

    def do_POST(self) -> None:
        cfg = self.server.cfg  # type: ignore[attr-defined]
        n = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(n))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i in range(body["max_tokens"] if cfg.get("stream", True) else 0):
            ev = {"choices": [{"text": f"t{i} "}]}
            self.wfile.write(b"data: " + json.dumps(ev).encode() + b"\n\n")
            self.wfile.flush()
        usage = {"usage": {"completion_tokens": body["max_tokens"], "prompt_tokens": 12}}
        self.wfile.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")


@pytest.fixture
def engine() -> Iterator[tuple[str, dict[str, Any]]]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Engine)
    srv.cfg = {}  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", srv.cfg  # type: ignore[attr-defined]
    srv.shutdown()


def _plan(env: dict[str, str], spec: str = "rtx-4090"):
    inputs = pipeline.prepare(env)
    return pipeline.plan_on(inputs, profile_for(spec), ("vllm", "llama.cpp"))


LLAMA = {"PREFLIGHT_MODEL": "qwen3-8b", "PREFLIGHT_ENGINE": "llama.cpp"}
VLLM = {"PREFLIGHT_MODEL": "qwen3-8b", "PREFLIGHT_ENGINE": "vllm"}


def _valid(r):
    return receipt_from_dict(receipt_to_dict(r))


def test_an_engine_that_never_becomes_healthy_times_out_cleanly(engine):
    url, cfg = engine
    cfg["health"] = 503
    r = _valid(take(Request(url, _plan(LLAMA), "plan.json", timeout_s=1.5, max_tokens=8)))
    assert r.status == "failed" and r.decode is None
    assert "did not become healthy within 1.5 s" in r.warnings[0]
    assert "PREFLIGHT_RECEIPT_TIMEOUT" in r.warnings[0]


def test_an_engine_that_exits_ends_the_wait_at_once(engine):
    url, cfg = engine
    cfg["health"] = 503
    r = take(Request(url, _plan(LLAMA), "p", timeout_s=600, alive=lambda: False))
    assert r.status == "failed" and "exited before" in r.warnings[0] and r.duration_s < 30


def test_nothing_listening_is_a_failed_receipt_not_a_traceback():
    r = take(Request("http://127.0.0.1:9", _plan(LLAMA), "p", timeout_s=1, max_tokens=8))
    assert r.status == "failed"


@pytest.mark.parametrize(
    "garbage",
    [
        "this is { not prometheus",
        "vllm:cache_config_info{num_gpu_blocks=\"x\" 1\n",
        "\x00\x01\x02",
        "# TYPE a counter\na_total NaNx\n",
        "",
    ],
)
def test_garbage_metrics_is_a_warning_not_a_traceback(engine, garbage):
    url, cfg = engine
    cfg["metrics"] = garbage
    cfg["mml"] = 4096
    plan = _plan(VLLM)
    r = _valid(take(Request(url, plan, "plan.json", timeout_s=5, max_tokens=8)))
    assert r.status in ("complete", "partial")
    assert r.engine.kv_capacity_tokens is None
    assert any("metrics" in w for w in r.warnings), r.warnings
    assert r.decode is not None and r.decode.single is not None
    assert r.decode.single.completion_tokens == 8


def test_vllm_kv_pool_is_read_from_cache_config_info(engine):
    url, cfg = engine
    cfg["metrics"] = (
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
        "# TYPE vllm:cache_config_info gauge\n"
        'vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="2048"} 1.0\n'
    )
    plan = _plan(VLLM)
    r = take(Request(url, plan, "plan.json", timeout_s=5, max_tokens=8))
    assert r.engine.kv_capacity_tokens == 2048 * 16
    assert r.engine.predicted_kv_capacity_tokens == plan.predicted.kv_capacity_tokens


def test_a_stream_with_no_tokens_is_partial(engine):
    url, cfg = engine
    cfg["stream"] = False
    r = take(Request(url, _plan(LLAMA), "p", timeout_s=5, max_tokens=8))
    assert r.status == "partial" and any("no tokens" in w for w in r.warnings)


def test_gpu_memory_from_a_recorded_nvml_with_host_pids(engine):
    """Inside a container NVML lists host PIDs: the only process on the card is the engine."""
    url, _ = engine
    plan = _plan(LLAMA)
    scenario = json.loads((Path(__file__).parents[1] / "fixtures/nvml/rtx4090.json").read_text())
    dev = scenario["devices"][0]
    used = plan.predicted.devices[0].total_bytes // MIB + 300
    dev["processes"] = [{"pid": 999999, "used_mib": used}]
    dev["temperature_c"] = 61
    dev["power_mw"] = 312000
    r = _valid(
        take(
            Request(
                url, plan, "p", profile=profile_for("rtx-4090"), pid=os.getpid(),
                timeout_s=5, max_tokens=8, nvml=FakeNvml(scenario),
            )
        )
    )  # fmt: skip
    cuda0 = next(m for m in r.memory if m.device == "CUDA0")
    assert cuda0.method == "nvml-only-process" and cuda0.measured_bytes == used * MIB
    assert cuda0.under is True and cuda0.error_bytes == used * MIB - cuda0.predicted_bytes
    assert "host PIDs" in (cuda0.note or "")
    assert r.peaks is not None and r.peaks.gpu_temperature_c == 61 and r.peaks.gpu_power_w == 312.0
    assert any("under-predicted" in w for w in r.warnings)


def test_several_processes_fall_back_to_the_device_delta(engine):
    url, _ = engine
    plan = _plan(LLAMA)
    scenario = json.loads((Path(__file__).parents[1] / "fixtures/nvml/rtx4090.json").read_text())
    dev = scenario["devices"][0]
    dev["processes"] = [{"pid": 1, "used_mib": 100}, {"pid": 2, "used_mib": 200}]
    r = take(
        Request(
            url, plan, "p", profile=profile_for("rtx-4090"), pid=os.getpid(),
            timeout_s=5, max_tokens=8, nvml=FakeNvml(scenario),
        )
    )  # fmt: skip
    cuda0 = next(m for m in r.memory if m.device == "CUDA0")
    assert cuda0.method == "device-delta"


def test_the_receipt_command_on_a_dead_engine_exits_4_and_writes_a_failed_receipt(tmp_path):
    plan = _plan(LLAMA)
    profile = profile_for("rtx-4090")
    write_set(tmp_path, {"plan.json": plan_to_dict(plan), "profile.json": profile_to_dict(profile)})
    res = CliRunner().invoke(
        main,
        ["receipt", "--url", "http://127.0.0.1:9", "--timeout", "1"],
        env={"PREFLIGHT_PROFILE_DIR": str(tmp_path)},
    )
    assert res.exit_code == 4, res.output
    assert "failed" in res.output and "Traceback" not in res.output
    doc = json.loads((tmp_path / "receipt.json").read_text())
    assert receipt_from_dict(doc).status == "failed"
    assert list((tmp_path / "receipts").iterdir())


def test_the_receipt_command_without_a_plan_is_exit_2(tmp_path):
    res = CliRunner().invoke(main, ["receipt"], env={"PREFLIGHT_PROFILE_DIR": str(tmp_path)})
    assert res.exit_code == 2 and "plan.json" in res.output


def test_a_bad_url_is_exit_2(tmp_path):
    plan = _plan(LLAMA)
    write_set(tmp_path, {"plan.json": plan_to_dict(plan)})
    res = CliRunner().invoke(
        main, ["receipt", "--url", "ftp://x"], env={"PREFLIGHT_PROFILE_DIR": str(tmp_path)}
    )
    assert res.exit_code == 2 and "--url" in res.output


def test_an_oversized_metrics_answer_is_refused_bounded(engine):
    url, cfg = engine
    cfg["metrics"] = "a 1\n" * (engine_api.METRICS_LIMIT // 4 + 10)
    fams, why = engine_api.read_metrics(url)
    assert fams is None and why is not None and "over" in why


def test_the_engine_family_includes_its_children():
    """vLLM's memory sits in its EngineCore child: the family of a PID holds its descendants."""
    import subprocess
    import sys

    from gpu_preflight.probe.usage import family

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert {os.getpid(), child.pid} <= family(os.getpid())
    finally:
        child.kill()
        child.wait()
