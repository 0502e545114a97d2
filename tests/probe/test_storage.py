"""The fio storage pass: for real on a loop-mounted ext4 image; refused on tmpfs and overlay."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gpu_preflight.probe.command import CommandResult
from gpu_preflight.probe.storage import (
    TEST_FILE,
    check_bench_dir,
    mount_of,
    parse_mountinfo,
    probe_storage,
)


def _ensure_fio() -> None:
    if shutil.which("fio"):
        return
    if os.geteuid() != 0:
        pytest.skip("fio is not installed and this user cannot apt-get install it")
    r = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "fio"], capture_output=True, text=True, check=False
    )
    if r.returncode != 0 or not shutil.which("fio"):
        pytest.skip(f"fio could not be installed: {r.stderr.strip()[-200:]}")


@pytest.fixture
def ext4_dir(tmp_path):
    """A real ext4 filesystem: a 192 MiB image, loop-mounted for the test, unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    _ensure_fio()
    image, mnt = tmp_path / "disk.img", tmp_path / "mnt"
    mnt.mkdir()
    with image.open("wb") as f:
        f.truncate(192 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    r = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        pytest.skip(f"loop mount not permitted here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.fio
def test_fio_pass_for_real_on_ext4(ext4_dir, tmp_path):
    cache = tmp_path / "cache"
    r = probe_storage(ext4_dir, runtime_s=2.0, cache_dir=cache)
    assert r.source == "fio", r.notes
    assert r.filesystem == "ext4"
    assert r.seq_read_mib_s and r.seq_read_mib_s > 1
    assert r.rand_read_4k_iops and r.rand_read_4k_iops > 10
    assert r.runtime_s and 1.0 <= r.runtime_s <= 4.0
    assert not (ext4_dir / TEST_FILE).exists()
    again = probe_storage(ext4_dir, runtime_s=2.0, cache_dir=cache)
    assert again.source == "cache" and again.seq_read_mib_s == r.seq_read_mib_s

    calls = []

    def counting(argv, timeout):
        calls.append(argv)
        return CommandResult(tuple(argv), 1, "", "boom", None)

    forced = probe_storage(ext4_dir, runtime_s=2.0, cache_dir=cache, force=True, runner=counting)
    assert calls and forced.source is None and "fio failed" in forced.notes[0]


def test_test_file_removed_on_interrupt(tmp_path):
    def interrupted(argv, timeout):
        (tmp_path / TEST_FILE).write_bytes(b"x" * 4096)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        probe_storage(tmp_path, runtime_s=1.0, runner=interrupted)
    assert not (tmp_path / TEST_FILE).exists()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_refuses_tmpfs_by_name():
    r = probe_storage(Path("/dev/shm"), runtime_s=1.0)
    assert r.source is None and r.filesystem == "tmpfs"
    assert "refused" in r.notes[0] and "tmpfs" in r.notes[0]


def test_refuses_overlay_from_recorded_mountinfo(tmp_path):
    root = tmp_path / "root"
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/mountinfo").write_text(
        "1 0 0:32 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w\n"
    )
    bench = tmp_path / "bench"
    bench.mkdir()
    r = probe_storage(bench, root=root, runner=lambda a, t: pytest.fail("fio must not run"))
    assert r.filesystem == "overlay" and "refused" in r.notes[0]


def test_mountinfo_longest_prefix():
    mounts = parse_mountinfo(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "2 1 0:40 / /bench rw - xfs /dev/sdb rw\n"
        "3 1 0:41 / /bench/tmp rw - tmpfs tmpfs rw\n"
        "4 1 0:42 / /benchmark rw - 9p none rw\n"
    )
    assert mount_of(Path("/bench/models"), mounts).fstype == "xfs"
    assert mount_of(Path("/bench/tmp/x"), mounts).fstype == "tmpfs"
    assert mount_of(Path("/benchmark"), mounts).fstype == "9p"
    assert mount_of(Path("/srv"), mounts).fstype == "ext4"


def test_bench_dir_checks(tmp_path):
    assert check_bench_dir(tmp_path) is None
    assert check_bench_dir(tmp_path / "missing") == "does not exist"
    f = tmp_path / "f"
    f.write_text("")
    assert check_bench_dir(f) == "is not a directory"


def test_fio_missing_is_a_note(tmp_path, monkeypatch):
    from gpu_preflight.probe import storage

    monkeypatch.setattr(storage, "which", lambda name: None)
    r = probe_storage(tmp_path)
    assert r.source is None and "fio is not installed" in r.notes[0]
