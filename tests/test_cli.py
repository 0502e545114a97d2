"""The command line end to end in-process (CliRunner), on this GPU-less machine and simulated GPUs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpu_preflight import launch
from gpu_preflight.cli.main import main
from gpu_preflight.plan.document import plan_from_dict
from gpu_preflight.profile import profile_from_dict

SECRET = "hf_MARKER_b6f0c1d2e3"


@pytest.fixture
def cli(monkeypatch):
    for var in list(__import__("os").environ):
        if var.startswith(("PREFLIGHT_", "VLLM_", "LLAMA_ARG_")) or var in (
            "CUDA_VISIBLE_DEVICES",
            "NVIDIA_VISIBLE_DEVICES",
        ):
            monkeypatch.delenv(var, raising=False)
    return CliRunner()


def test_probe_json_here_is_fast_valid_and_explains_missing_gpus(tmp_path):
    out = tmp_path / "profile.json"
    t0 = time.perf_counter()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpu_preflight.cli.main",
            "probe",
            "--json",
            "--no-bench",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert elapsed < 1.5, f"probe took {elapsed:.2f} s"
    doc = json.loads(r.stdout)
    assert json.loads(out.read_text()) == doc
    p = profile_from_dict(doc)
    assert p.hardware.gpus.devices == ()
    assert any("libnvidia-ml" in n or "NVML" in n for n in p.hardware.gpus.notes)
    meminfo = {
        ln.split(":")[0]: int(ln.split()[1]) * 1024
        for ln in Path("/proc/meminfo").read_text().splitlines()
    }
    assert p.hardware.memory.total_bytes == meminfo["MemTotal"]
    if p.hardware.memory.cgroup_limit_bytes:
        assert p.hardware.memory.effective_total_bytes <= p.hardware.memory.cgroup_limit_bytes
    assert p.hardware.pinned.ceiling_bytes is None and p.hardware.pinned.notes


def test_probe_table_for_people(cli):
    r = cli.invoke(main, ["probe", "--simulate", "2xa100-80gb"])
    assert r.exit_code == 0 and "A100" in r.output and "80.0 GiB" in r.output


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["probe", "--simulate", "rtx-4900"], {}, "did you mean rtx-4090"),
        (
            ["probe", "--json", "--no-bench"],
            {"NVIDIA_VISIBLE_DEVICES": "gpu0"},
            "NVIDIA_VISIBLE_DEVICES='gpu0'",
        ),
        (
            ["probe", "--bench", "--bench-dir", "/nonexistent/dir"],
            {},
            "--bench-dir='/nonexistent/dir': does not exist",
        ),
        (
            ["probe", "--json", "--no-bench", "--out", "/proc/nope/profile.json"],
            {},
            "--out /proc/nope/profile.json",
        ),
        (["plan", "--simulate", "rtx-4090", "--context", "lots"], {}, "--context='lots'"),
        (
            ["plan", "--simulate", "rtx-4090"],
            {"PREFLIGHT_RESERVE_GB": "x"},
            "PREFLIGHT_RESERVE_GB='x'",
        ),
        (
            ["plan", "--simulate", "rtx-4090", "--model", "qwen9-8b"],
            {},
            "--model='qwen9-8b' is not a known model. Did you mean qwen3-8b",
        ),
        (["plan", "--profile", "/nonexistent.json"], {}, "/nonexistent.json: cannot read it"),
        (
            ["plan", "--simulate", "rtx-4090"],
            {"PREFLIGHT_TIERS_FILE": "/nonexistent.json"},
            "PREFLIGHT_TIERS_FILE",
        ),
        (["probe", "--json"], {"PREFLIGHT_BENCH": "sometimes"}, "PREFLIGHT_BENCH='sometimes'"),
        (
            ["estimate", "--model", "qwen3-8b", "--engine", "llama.cpp", "--context", "8k"],
            {},
            "--gpu DEVICES",
        ),
    ],
)
def test_invalid_input_exits_2_naming_the_value(cli, args, env, fragment):
    r = cli.invoke(main, args, env=env)
    assert r.exit_code == 2, r.output
    assert fragment in r.output
    assert "Traceback" not in r.output


def test_plan_exit_codes_and_json(cli):
    ok = cli.invoke(main, ["plan", "--simulate", "rtx-4090", "--json"])
    assert ok.exit_code == 0
    p = plan_from_dict(json.loads(ok.output))
    assert p.verdict == "ship" and p.engine == "llama.cpp"
    no = cli.invoke(main, ["plan", "--simulate", "rtx-4060", "--model", "llama-3.1-70b-instruct"])
    assert no.exit_code == 3 and "refuse" in no.output and "what would fit instead" in no.output


def test_plan_from_a_saved_profile(cli, tmp_path):
    out = tmp_path / "p.json"
    assert (
        cli.invoke(main, ["probe", "--simulate", "h100-sxm", "--json", "--out", str(out)]).exit_code
        == 0
    )
    r = cli.invoke(main, ["plan", "--profile", str(out), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["engine"] == "vllm"


def test_old_profile_version_says_what_to_do(cli, tmp_path):
    bad = tmp_path / "old.json"
    bad.write_text(json.dumps({"schema_version": 0}))
    r = cli.invoke(main, ["plan", "--profile", str(bad)])
    assert r.exit_code == 2 and "schema_version 0" in r.output and "gpu-preflight probe" in r.output


def test_tiers_gpus_estimate_matrix(cli):
    tiers = json.loads(cli.invoke(main, ["tiers", "--json"]).output)
    assert tiers["tiers"][0]["id"] == "cpu"
    gpus = json.loads(cli.invoke(main, ["gpus", "--json"]).output)
    assert {"rtx-3060", "h100-sxm", "h200", "a10g"} <= {g["id"] for g in gpus}
    e = json.loads(
        cli.invoke(
            main,
            [
                "estimate",
                "--model",
                "llama-3.1-8b-instruct",
                "--engine",
                "llama.cpp",
                "--context",
                "8192",
                "--cpu",
                "--json",
            ],
        ).output
    )
    cpu = e["predicted"]["devices"][0]
    assert cpu["device"] == "CPU" and e["predicted"]["kv_bytes_per_token"] == 131072
    assert cpu["kv_cache_bytes"] == 8192 * 131072 and e["context"] == 8192 and e["parallel"] == 1
    m = cli.invoke(
        main, ["matrix", "--gpus", "rtx-4090,h100-sxm", "--models", "qwen3-8b", "--json"]
    )
    cells = json.loads(m.output)
    assert [c["verdict"] for c in cells] == ["ship", "ship"]


def test_run_dry_run_writes_profile_and_plan_and_keeps_secrets_out(cli, tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(launch, "exec_engine", lambda argv, env, **kw: called.append(argv))
    env = {
        "PREFLIGHT_PROFILE_DIR": str(tmp_path),
        "PREFLIGHT_BENCH": "off",
        "HF_TOKEN": SECRET,
        "PREFLIGHT_DRY_RUN": "1",
    }
    r = cli.invoke(main, ["run"], env=env)
    assert r.exit_code == 0, r.output
    assert called == []
    prof = json.loads((tmp_path / "profile.json").read_text())
    plan = json.loads((tmp_path / "plan.json").read_text())
    profile_from_dict(prof)
    p = plan_from_dict(plan)
    assert p.verdict == "ship" and p.engine == "llama.cpp" and p.tier == "cpu"
    for text in (r.output, json.dumps(prof), json.dumps(plan)):
        assert SECRET not in text


def test_run_execs_the_planned_argv_with_secrets_in_env_only(cli, tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(launch, "exec_engine", lambda argv, env, **kw: called.append((argv, dict(env))))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "llama-server").write_text("#!/bin/sh\n")
    (bin_dir / "llama-server").chmod(0o755)
    env = {
        "PREFLIGHT_PROFILE_DIR": str(tmp_path / "p"),
        "PREFLIGHT_BENCH": "off",
        "HF_TOKEN": SECRET,
        "PATH": f"{bin_dir}:/usr/bin:/bin",
    }
    r = cli.invoke(main, ["run", "--", "--jinja"], env=env)
    assert r.exit_code == 0, r.output
    ((argv, engine_env),) = called
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert list(argv) == plan["argv"] and argv[0] == "llama-server" and argv[-1] == "--jinja"
    assert SECRET not in " ".join(argv) and engine_env["HF_TOKEN"] == SECRET


def test_run_missing_engine_is_exit_2_naming_binary(cli, tmp_path):
    env = {"PREFLIGHT_PROFILE_DIR": str(tmp_path), "PREFLIGHT_BENCH": "off", "PATH": str(tmp_path)}
    r = cli.invoke(main, ["run"], env=env)
    assert r.exit_code == 2 and "llama-server" in r.output and "llamacpp" in r.output


def test_run_refusal_exits_3_without_exec(cli, tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(launch, "exec_engine", lambda argv, env, **kw: called.append(argv))
    env = {
        "PREFLIGHT_PROFILE_DIR": str(tmp_path),
        "PREFLIGHT_BENCH": "off",
        "PREFLIGHT_ENGINE": "vllm",
    }
    r = cli.invoke(main, ["run"], env=env)
    assert r.exit_code == 3 and called == []
    assert json.loads((tmp_path / "plan.json").read_text())["verdict"] == "refuse"


def test_run_rejects_secret_flags(cli, tmp_path):
    r = cli.invoke(
        main, ["run", "--", "--api-key", SECRET], env={"PREFLIGHT_PROFILE_DIR": str(tmp_path)}
    )
    assert r.exit_code == 2 and SECRET not in r.output and "LLAMA_API_KEY" in r.output


def test_help_has_examples(cli):
    r = cli.invoke(main, ["--help"])
    assert r.exit_code == 0 and "Examples:" in r.output and "--simulate" in r.output
    for cmd in ("probe", "plan", "estimate", "matrix", "tiers", "gpus", "run"):
        assert cli.invoke(main, [cmd, "--help"]).exit_code == 0
