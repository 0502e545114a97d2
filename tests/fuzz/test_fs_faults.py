"""Filesystem faults: the wrong kind of file in place (FIFO, directory, symlink to /dev/zero),
read-only directories, a full filesystem. Reads are refused unopened; writes go in as a set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_preflight import launch
from gpu_preflight.inputs.errors import InvalidInput
from gpu_preflight.models.gguf_file import read_gguf
from gpu_preflight.models.hf_dir import read_hf_dir
from tests.fuzz.conftest import expect_clean
from tests.fuzz.test_files import LOADERS
from tests.fuzz.test_hf_dir import CONFIG, GOOD_TENSORS, _st_file, _st_header

ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not ROOT, reason="needs root (mount, and permission bits bind)")
KINDS = ["fifo", "directory", "devzero", "dangling"]


def _mount(args: list[str], target: Path) -> None:
    """Mount, or skip: root in an unprivileged container has no CAP_SYS_ADMIN."""
    done = subprocess.run(
        ["mount", *args, str(target)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")


def _place(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "devzero":
        path.symlink_to("/dev/zero")
    else:
        path.symlink_to(path.parent / "nowhere")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("what", list(LOADERS))
def test_json_files_of_the_wrong_kind(tmp_path, what, kind):
    name, loader = LOADERS[what]
    p = tmp_path / name
    _place(p, kind)
    out = expect_clean(f"fs-{what}", lambda: loader(p), names=p)
    assert isinstance(out, InvalidInput), out


@pytest.mark.parametrize("kind", KINDS)
def test_gguf_of_the_wrong_kind(tmp_path, kind):
    p = tmp_path / "m.gguf"
    _place(p, kind)
    out = expect_clean("fs-gguf", lambda: read_gguf(p), names=p)
    assert isinstance(out, InvalidInput), out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "which", ["config.json", "model.safetensors", "model.safetensors.index.json"]
)
def test_hf_dir_files_of_the_wrong_kind(tmp_path, which, kind):
    d = tmp_path / "m"
    d.mkdir()
    if which != "config.json":
        (d / "config.json").write_text(json.dumps(CONFIG))
    if which == "model.safetensors.index.json":
        (d / "model.safetensors").write_bytes(_st_file(_st_header(GOOD_TENSORS), 45568))
    _place(d / which, kind)
    out = expect_clean("fs-hf-dir", lambda: read_hf_dir(d), names=d)
    assert isinstance(out, InvalidInput), out


def test_split_gguf_part_that_is_a_fifo(tmp_path):
    from tests.fuzz.test_gguf import VALID

    (tmp_path / "m-00001-of-00002.gguf").write_bytes(VALID)
    os.mkfifo(tmp_path / "m-00002-of-00002.gguf")
    p = tmp_path / "m-00001-of-00002.gguf"
    out = expect_clean("fs-gguf", lambda: read_gguf(p), names="m-00002-of-00002.gguf")
    assert isinstance(out, InvalidInput)


# -- writes -------------------------------------------------------------------------------------

OLD = {"profile.json": {"run": "old"}, "plan.json": {"run": "old"}}
NEW = {"profile.json": {"run": "new"}, "plan.json": {"run": "new", "pad": "x" * 200_000}}


def _set(d: Path) -> dict[str, object]:
    return {n: json.loads((d / n).read_text()) for n in OLD if (d / n).is_file()}


def test_write_set_commits_both(tmp_path):
    r = launch.write_set(tmp_path, OLD)
    assert r.committed and "written" in r.message and "NOT" not in r.message
    assert _set(tmp_path) == OLD
    r = launch.write_set(tmp_path, NEW)
    assert r.committed and _set(tmp_path) == NEW
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json", "profile.json"]


@root_only
def test_full_filesystem_keeps_the_old_set(tmp_path):
    d = tmp_path / "small"
    d.mkdir()
    _mount(["-t", "tmpfs", "-o", "size=64k", "tmpfs"], d)
    try:
        assert launch.write_set(d, OLD).committed
        r = expect_clean("fs-write", lambda: launch.write_set(d, NEW))
        assert not r.committed and "No space left" in r.message and "untouched" in r.message
        assert _set(d) == OLD
        assert sorted(p.name for p in d.iterdir()) == ["plan.json", "profile.json"]
        # Nothing there before: nothing there after.
        for n in OLD:
            (d / n).unlink()
        r = launch.write_set(d, NEW)
        assert not r.committed and not list(d.iterdir())
    finally:
        subprocess.run(["umount", str(d)], check=True)


def test_target_that_is_a_directory_keeps_the_old_set(tmp_path):
    assert launch.write_set(tmp_path, OLD).committed
    (tmp_path / "plan.json").unlink()
    (tmp_path / "plan.json").mkdir()
    r = launch.write_set(tmp_path, NEW)
    assert not r.committed and "plan.json exists there as a directory" in r.message
    assert json.loads((tmp_path / "profile.json").read_text()) == OLD["profile.json"]


def test_failure_half_way_through_the_commit_rolls_back(tmp_path, monkeypatch):
    assert launch.write_set(tmp_path, OLD).committed
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2 and str(dst).endswith("plan.json"):
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(launch.os, "replace", flaky)
    r = launch.write_set(tmp_path, NEW)
    monkeypatch.setattr(launch.os, "replace", real)
    assert not r.committed and "Input/output error" in r.message
    assert _set(tmp_path) == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json", "profile.json"]


@root_only
def test_read_only_directory(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    assert launch.write_set(d, OLD).committed
    _mount(["--bind", "-o", "ro", str(d)], d)
    try:
        r = launch.write_set(d, NEW)
        assert not r.committed and "Read-only" in r.message
        assert _set(d) == OLD
    finally:
        subprocess.run(["umount", str(d)], check=True)


def test_directory_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("x")
    r = launch.write_set(tmp_path / "file" / "sub", NEW)
    assert not r.committed and "NOT written" in r.message


def test_scrub_masks_a_secret_value_wherever_it_is():
    token = "hf_" + "A1b2C3d4E5" * 10
    env = {"HF_TOKEN": token, "PREFLIGHT_MODEL": token}
    shown = f"PREFLIGHT_MODEL={token[:77]!r}... is not a known model; {token}"
    out = launch.scrub(shown, env)
    assert token[:12] not in out and "***" in out
    assert launch.scrub("nothing secret here", env) == "nothing secret here"


# -- the run command on a faulty profile directory --------------------------------------------


def _run_dry(profile_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PREFLIGHT_PROFILE_DIR": str(profile_dir),
        "PREFLIGHT_BENCH": "off",
        "COLUMNS": "400",
    }
    env.pop("PREFLIGHT_MODEL", None)
    exe = Path(sys.executable).with_name("gpu-preflight")
    return subprocess.run(
        [str(exe), "run", "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _assert_not_claimed(done: subprocess.CompletedProcess[str], d: Path) -> None:
    out = done.stdout + done.stderr
    assert "Traceback" not in out
    assert f"profile.json and plan.json written to {d}" not in out, out
    assert "NOT written" in out, out


def test_run_with_plan_json_as_a_directory(tmp_path):
    d = tmp_path / "pd"
    assert launch.write_set(d, OLD).committed
    (d / "plan.json").unlink()
    (d / "plan.json").mkdir()
    done = _run_dry(d)
    assert done.returncode in (0, 3), done.stderr
    _assert_not_claimed(done, d)
    assert json.loads((d / "profile.json").read_text()) == OLD["profile.json"]


@root_only
def test_run_on_a_full_filesystem_keeps_the_old_set(tmp_path):
    d = tmp_path / "full"
    d.mkdir()
    _mount(["-t", "tmpfs", "-o", "size=16k", "tmpfs"], d)
    try:
        assert launch.write_set(d, OLD).committed
        (d / "filler").write_bytes(b"\0" * 4096)  # leave less room than the new pair needs
        done = _run_dry(d)
        assert done.returncode in (0, 3), done.stderr
        _assert_not_claimed(done, d)
        assert _set(d) == OLD
    finally:
        subprocess.run(["umount", str(d)], check=True)
