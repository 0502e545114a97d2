"""End to end in a real container: the image's entrypoint probes, plans, execs llama-server or refuses.

The session fixture starts a private Docker engine (.ci/dockerd.sh), imports a Debian 12 base made
with debootstrap that carries a static llama-server built from llama.cpp's source (.ci/base-image.sh),
and builds this repository's Dockerfile (target `llamacpp`) on it. Not covered here, because they
need a registry and a GPU: the official vLLM and llama.cpp CUDA base images.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.types import ModelArch
from gpu_preflight.plan.document import plan_from_dict
from gpu_preflight.profile import profile_from_dict
from tests.support.gguf_factory import write_gguf

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
IMAGE = "gpu-preflight:e2e"
MARKER = "hf_e2eMARKER_7d1c9a0b5f"


def _sh(script: str) -> str:
    r = subprocess.run(
        ["bash", str(ROOT / ".ci" / script)], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        pytest.fail(f".ci/{script} failed:\n{r.stderr[-3000:]}")
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def docker_client():
    if os.geteuid() != 0:
        pytest.skip("the end-to-end test starts its own Docker engine, which needs root")
    import docker

    host = _sh("dockerd.sh")
    base = _sh("base-image.sh")
    client = docker.DockerClient(base_url=host, timeout=600)
    t0 = time.time()
    client.images.build(
        path=str(ROOT),
        target="llamacpp",
        tag=IMAGE,
        network_mode="host",
        rm=True,
        buildargs={
            "LLAMACPP_BASE": base,
            "VLLM_BASE": base,
            "LLAMACPP_DIR": "/usr/local/lib/llama.cpp",
        },
    )
    print(f"image built in {time.time() - t0:.0f} s")
    yield client
    # Under vfs every superseded build leaves a full copy of the rootfs behind (~0.5 GB each).
    client.images.prune(filters={"dangling": True})
    client.close()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    d.chmod(0o755)
    tiny = ModelArch("llama", 2, 64, 4, 2, 16, 128, 1000, False, 2048)
    write_gguf(d / "tiny.gguf", tiny, "F16", sparse=False, name="tiny").chmod(0o644)
    huge = load_catalog().get("llama-3.1-70b-instruct")
    write_gguf(d / "huge.gguf", huge.arch, "F16", sparse=True, name="huge").chmod(0o644)
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(client, models_dir, volume, env, **kw):
    return client.containers.run(
        IMAGE,
        detach=True,
        network_mode="host",
        environment={
            "PREFLIGHT_BENCH": "off",
            "PREFLIGHT_HOST": "127.0.0.1",
            "HF_TOKEN": MARKER,
            **env,
        },
        volumes={
            str(models_dir): {"bind": "/models", "mode": "ro"},
            volume: {"bind": "/var/lib/gpu-preflight", "mode": "rw"},
        },
        **kw,
    )


def _read(container, path: str) -> str:
    stream, _ = container.get_archive(path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.getmembers()[0]
        f = tar.extractfile(member)
        assert f is not None
        return f.read().decode()


def _wait_http(url: str, timeout: float) -> bytes:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read()
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def test_ships_on_cpu_serves_and_stops_on_sigterm(docker_client, models_dir):
    port = _free_port()
    vol = f"gpu-preflight-e2e-{port}"
    c = _run(
        docker_client,
        models_dir,
        vol,
        {"PREFLIGHT_MODEL": "/models/tiny.gguf", "PREFLIGHT_PORT": str(port)},
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", 120)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/completion",
            data=json.dumps({"prompt": "hello", "n_predict": 8}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            done = json.loads(r.read())
        assert done["tokens_predicted"] == 8
        props = json.loads(_wait_http(f"http://127.0.0.1:{port}/props", 10))
        plan = plan_from_dict(json.loads(_read(c, "/var/lib/gpu-preflight/plan.json")))
        profile = profile_from_dict(json.loads(_read(c, "/var/lib/gpu-preflight/profile.json")))
        assert plan.verdict == "ship" and plan.engine == "llama.cpp" and plan.tier == "cpu"
        assert props["default_generation_settings"]["n_ctx"] == plan.context
        assert profile.hardware.gpus.devices == () and profile.hardware.platform.in_container
        # llama.cpp's own dry run of the exact command ran in the container before the exec.
        assert plan.predicted is not None
        dry = [n for n in plan.predicted.notes if n.startswith("llama.cpp's own dry run")]
        assert dry and "llama-fit-params" in dry[0], plan.predicted.notes
        # exec, not a child: llama-server is PID 1 and gets docker stop's SIGTERM itself.
        cmdline = c.exec_run(["cat", "/proc/1/cmdline"]).output.decode().split("\0")
        assert cmdline[0] == "llama-server" and list(plan.argv) == [a for a in cmdline if a]
        t0 = time.time()
        c.stop(timeout=10)
        stopped = time.time() - t0
        c.reload()
        assert stopped < 10, f"docker stop took {stopped:.1f} s"
        assert c.attrs["State"]["ExitCode"] in (0, 130, 143)
        logs = c.logs().decode()
        texts = [
            logs,
            json.dumps(c.attrs["Args"]),
            json.dumps(c.attrs["Config"]["Cmd"]),
            _read(c, "/var/lib/gpu-preflight/plan.json"),
            _read(c, "/var/lib/gpu-preflight/profile.json"),
            " ".join(cmdline),
        ]
        for t in texts:
            assert MARKER not in t
        print(f"docker stop: {stopped:.2f} s; plan context {plan.context}")
    finally:
        c.remove(force=True)
        docker_client.volumes.get(vol).remove(force=True)


def test_impossible_model_is_refused_with_exit_3(docker_client, models_dir):
    vol = "gpu-preflight-e2e-refuse"
    c = _run(docker_client, models_dir, vol, {"PREFLIGHT_MODEL": "/models/huge.gguf"})
    try:
        assert c.wait(timeout=120)["StatusCode"] == 3
        logs = c.logs().decode()
        assert "refuse" in logs and "GiB" in logs
        assert "server is listening" not in logs and "llama_model_load" not in logs
        plan = json.loads(_read(c, "/var/lib/gpu-preflight/plan.json"))
        assert plan["verdict"] == "refuse" and plan["argv"] == []
        assert MARKER not in logs
    finally:
        c.remove(force=True)
        docker_client.volumes.get(vol).remove(force=True)


def test_malformed_override_exits_2_naming_the_variable(docker_client, models_dir):
    vol = "gpu-preflight-e2e-bad"
    c = _run(
        docker_client,
        models_dir,
        vol,
        {"PREFLIGHT_MODEL": "/models/tiny.gguf", "PREFLIGHT_CONTEXT": "abc"},
    )
    try:
        assert c.wait(timeout=60)["StatusCode"] == 2
        logs = c.logs().decode()
        assert "PREFLIGHT_CONTEXT='abc'" in logs and "Traceback" not in logs
    finally:
        c.remove(force=True)
        docker_client.volumes.get(vol).remove(force=True)


def _wait_file(container, path: str, timeout: float, newer_than: str | None = None) -> str:
    deadline = time.time() + timeout
    while True:
        try:
            text = _read(container, path)
            if newer_than is None or json.loads(text).get("created_at") != newer_than:
                return text
        except Exception:  # not there yet (docker answers 404 for a missing path)
            pass
        if time.time() > deadline:
            raise AssertionError(f"{path} not written within {timeout} s:\n{container.logs().decode()}")
        time.sleep(0.5)


def test_receipt_measures_the_engine_and_calibrates_the_next_start(docker_client, models_dir):
    """issue 14: the receipt in the real container, then a second start in the same volume."""
    from gpu_preflight.receipt.document import receipt_from_dict

    port = _free_port()
    vol = f"gpu-preflight-e2e-receipt-{port}"
    env = {"PREFLIGHT_MODEL": "/models/tiny.gguf", "PREFLIGHT_PORT": str(port)}
    first = None
    try:
        for start in range(2):
            c = _run(docker_client, models_dir, vol, env)
            try:
                text = _wait_file(c, "/var/lib/gpu-preflight/receipt.json", 120, first)
                receipt = receipt_from_dict(json.loads(text))
                plan = plan_from_dict(json.loads(_read(c, "/var/lib/gpu-preflight/plan.json")))
                # PID 1 is still the engine; the watcher is its child, not its parent.
                cmdline = c.exec_run(["cat", "/proc/1/cmdline"]).output.decode().split("\0")
                assert cmdline[0] == "llama-server"
                t0 = time.time()
                c.stop(timeout=10)
                stopped = time.time() - t0
            finally:
                logs = c.logs().decode()
                c.remove(force=True)
            assert stopped < 10, f"docker stop took {stopped:.1f} s"
            assert receipt.status == "complete", (receipt.warnings, logs)
            assert "gpu-preflight receipt: complete" in logs
            d = receipt.decode
            assert d is not None and d.single is not None
            assert d.single.decode_tok_s and d.single.decode_tok_s > 0
            assert d.within_band is not None and d.band_low_tok_s is not None
            cpu = next(m for m in receipt.memory if m.device == "CPU")
            assert cpu.measured_bytes and cpu.error_bytes == cpu.measured_bytes - cpu.predicted_bytes
            assert cpu.error_fraction is not None and cpu.under is not None
            assert receipt.engine.n_ctx == plan.context
            assert MARKER not in text and MARKER not in logs
            if start == 1:
                assert plan.calibration is not None and plan.calibration.decode_receipts == 1
                assert "calibrated from 1 receipt" in logs
            first = receipt.created_at
            print(
                f"start {start}: decode {d.single.decode_tok_s} tok/s vs band "
                f"{d.band_low_tok_s}-{d.band_high_tok_s} ({d.band_source}); host "
                f"{cpu.measured_bytes / 2**20:.0f} MiB measured vs "
                f"{cpu.predicted_bytes / 2**20:.0f} MiB predicted; docker stop {stopped:.2f} s"
            )
    finally:
        docker_client.volumes.get(vol).remove(force=True)


def test_docker_stop_ends_the_engine_within_10_s_while_the_receipt_runs(docker_client, models_dir):
    # A real architecture (Qwen2.5-0.5B, data a sparse hole) decodes slowly enough on this CPU
    # that 4096 tokens are still streaming when the stop comes.
    spec = load_catalog().get("qwen2.5-0.5b-instruct")
    if not (models_dir / "qwen05.gguf").exists():
        write_gguf(models_dir / "qwen05.gguf", spec.arch, "Q8_0", sparse=True, name="q").chmod(0o644)
    port = _free_port()
    vol = f"gpu-preflight-e2e-receipt-stop-{port}"
    c = _run(
        docker_client,
        models_dir,
        vol,
        {
            "PREFLIGHT_MODEL": "/models/qwen05.gguf",
            "PREFLIGHT_PORT": str(port),
            "PREFLIGHT_RECEIPT_TOKENS": "4096",  # the workload is still running at the stop
        },
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", 180)
        time.sleep(4)
        ps = c.exec_run(["sh", "-c", "ls /var/lib/gpu-preflight"]).output.decode()
        assert "receipt.json" not in ps  # still measuring
        t0 = time.time()
        c.stop(timeout=10)
        stopped = time.time() - t0
        c.reload()
        assert stopped < 10, f"docker stop took {stopped:.1f} s"
        assert c.attrs["State"]["ExitCode"] in (0, 130, 143)
        print(f"docker stop during the receipt: {stopped:.2f} s")
    finally:
        c.remove(force=True)
        docker_client.volumes.get(vol).remove(force=True)


def test_a_model_named_only_by_its_hub_id_is_planned_remotely_and_downloaded_by_llama_server(
    docker_client, tmp_path
):
    """issue 11: `org/repo:Q4_K_M` only. The preflight reads the GGUF header with ranged requests
    from the local Hub endpoint, plans, and execs llama-server with --hf-repo/--hf-file; llama-server
    downloads from the same endpoint and serves with the plan's context."""
    from tests.support.fake_hub import FakeHub

    repo, name = "tiny-org/Tiny-GGUF", "Tiny-Q4_K_M.gguf"
    d = tmp_path / "repo"
    d.mkdir()
    tiny = ModelArch("llama", 2, 64, 4, 2, 16, 128, 1000, False, 2048)
    gguf = write_gguf(d / name, tiny, "Q4_K_M", sparse=False, name="tiny")
    port = _free_port()
    vol = f"gpu-preflight-e2e-hf-{port}"
    with FakeHub() as hub:
        hub.add(repo, {name: gguf})
        c = docker_client.containers.run(
            IMAGE,
            detach=True,
            network_mode="host",
            environment={
                "PREFLIGHT_BENCH": "off",
                "PREFLIGHT_HOST": "127.0.0.1",
                "PREFLIGHT_PORT": str(port),
                "PREFLIGHT_MODEL": f"{repo}:Q4_K_M",
                "HF_ENDPOINT": hub.url,
                "HF_TOKEN": MARKER,
            },
            volumes={vol: {"bind": "/var/lib/gpu-preflight", "mode": "rw"}},
        )
        try:
            _wait_http(f"http://127.0.0.1:{port}/health", 180)
            props = json.loads(_wait_http(f"http://127.0.0.1:{port}/props", 10))
            plan = plan_from_dict(json.loads(_read(c, "/var/lib/gpu-preflight/plan.json")))
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/completion",
                data=json.dumps({"prompt": "hello", "n_predict": 4}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=60) as r:
                assert json.loads(r.read())["tokens_predicted"] == 4
            cmdline = c.exec_run(["cat", "/proc/1/cmdline"]).output.decode().split("\0")
            logs = c.logs().decode()
        finally:
            c.remove(force=True)
            docker_client.volumes.get(vol).remove(force=True)
        asked = [(x.method, x.path) for x in hub.log]
    assert plan.verdict == "ship" and plan.engine == "llama.cpp"
    assert plan.model is not None and plan.model.repo == repo and plan.model.file == name
    assert props["default_generation_settings"]["n_ctx"] == plan.context
    assert cmdline[0] == "llama-server" and "--hf-repo" in cmdline and repo in cmdline
    # The planner read the header with ranged requests; llama-server then downloaded the file.
    gets = [p for m, p in asked if m == "GET" and p.endswith(name)]
    assert len(gets) >= 2, asked
    assert MARKER not in logs
    print(f"hub requests: {len(asked)}; plan context {plan.context}")
