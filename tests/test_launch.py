"""launch: atomic writes, the profile-dir fallback, engine lookup and the one exec."""

from __future__ import annotations

import os
import stat

import pytest

from gpu_preflight import launch
from gpu_preflight.inputs.errors import EngineMissing


def test_write_atomic_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "plan.json"
    launch.write_atomic(target, "old\n")
    launch.write_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in target.parent.iterdir()] == ["plan.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_write_atomic_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "profile.json"
    launch.write_atomic(target, "old\n")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(launch.os, "replace", boom)
    with pytest.raises(OSError):
        launch.write_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["profile.json"]


def test_profile_dir_used_when_writable(tmp_path):
    d = launch.choose_profile_dir({"PREFLIGHT_PROFILE_DIR": str(tmp_path / "p")})
    assert d.path == tmp_path / "p" and d.warning is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; covered by the file case")
def test_unwritable_profile_dir_falls_back_with_warning(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    d = launch.choose_profile_dir({"PREFLIGHT_PROFILE_DIR": str(ro)})
    assert d.path != ro and d.warning and str(ro) in d.warning


def test_profile_dir_that_is_a_file_falls_back_with_warning(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    d = launch.choose_profile_dir({"PREFLIGHT_PROFILE_DIR": str(f)})
    assert d.path != f and d.path.is_dir()
    assert d.warning is not None and str(f) in d.warning and "PREFLIGHT_PROFILE_DIR" in d.warning


def test_missing_engine_names_binary_and_image_variant(tmp_path):
    with pytest.raises(EngineMissing) as info:
        launch.find_engine("llama.cpp", {"PATH": str(tmp_path)})
    assert "llama-server" in str(info.value) and "llamacpp" in str(info.value)
    assert info.value.exit_code == 2


def test_find_engine_on_path(tmp_path):
    exe = tmp_path / "vllm"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert launch.find_engine("vllm", {"PATH": str(tmp_path)}) == str(exe)
    assert launch.available_engines({"PATH": str(tmp_path)}) == ("vllm",)


def test_scrub_hides_secret_values_only():
    env = {
        "HF_TOKEN": "hf_abcdef123",
        "MY_API_KEY": "k-999999",
        "PIN_KEY": "k-9999",
        "HOME": "/root",
    }
    text = "token hf_abcdef123 key k-999999 home /root pin k-9999"
    # values under 8 characters are not masked (inputs/secrets.py MIN_SECRET, as CI systems do)
    assert launch.scrub(text, env) == "token *** key *** home /root pin k-9999"


def test_exec_engine_calls_execvpe_with_argv_list_and_env(monkeypatch):
    calls = []
    monkeypatch.setattr(launch.os, "execvpe", lambda f, a, e: calls.append((f, a, e)))
    launch.exec_engine(("llama-server", "--port", "8080"), {"HF_TOKEN": "x"})
    assert calls == [("llama-server", ["llama-server", "--port", "8080"], {"HF_TOKEN": "x"})]


def test_write_set_commits_the_pair_or_keeps_the_old_one(tmp_path):
    old = {"profile.json": {"n": 1}, "plan.json": {"n": 1}}
    r = launch.write_set(tmp_path, old)
    assert r.committed and r.message == f"profile.json and plan.json written to {tmp_path}"
    (tmp_path / "plan.json").unlink()
    (tmp_path / "plan.json").mkdir()
    r = launch.write_set(tmp_path, {"profile.json": {"n": 2}, "plan.json": {"n": 2}})
    assert not r.committed and "NOT written" in r.message and "untouched" in r.message
    assert (tmp_path / "profile.json").read_text() == '{\n  "n": 1\n}\n'


def test_scrub_masks_a_secret_pasted_into_another_variable():
    token = "hf_" + "x1y2z3" * 8
    env = {"HF_TOKEN": token, "PREFLIGHT_MODEL": token}
    assert token[:10] not in launch.scrub(f"PREFLIGHT_MODEL={token[:40]!r}... unknown", env)
