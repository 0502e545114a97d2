"""Storage probe: a short ``fio`` pass where models load from (``/bench`` or --bench-dir).

Sequential read (256 KiB blocks, queue depth 64) is what loading a model file costs; random 4 KiB
reads at queue depth 1 are what mmap page faults cost. Always O_DIRECT with libaio: a buffered
number measures the page cache, not the disk, so a filesystem that cannot do O_DIRECT honestly
(overlay, 9p, drvfs, tmpfs, network and FUSE filesystems) is refused with its name, never
measured. The test file is removed even on error or Ctrl-C. Results are cached next to the
profile, keyed by the device, so a restart on the same disk skips the pass (``force`` re-runs).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_preflight.probe.command import CommandResult, run_command, which
from gpu_preflight.profile_types import StorageBench

Runner = Callable[[list[str], float], CommandResult]
TEST_FILE = ".gpu-preflight-fio.tmp"
CACHE_FILE = "storage-bench.json"
REFUSED_PREFIXES = (
    "overlay",
    "9p",
    "drvfs",
    "tmpfs",
    "ramfs",
    "fuse",
    "nfs",
    "cifs",
    "smb",
    "virtiofs",
    "squashfs",
    "aufs",
    "devtmpfs",
    "proc",
    "sysfs",
)
DEFAULT_RUNTIME_S = 10.0


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    device: str  # major:minor


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        parts, rparts = left.split(), right.split()
        if len(parts) < 5 or not rparts:
            continue
        point = parts[4].replace("\\040", " ")
        mounts.append(Mount(point, rparts[0], parts[2]))
    return mounts


def mount_of(path: Path, mounts: list[Mount]) -> Mount | None:
    """The mount holding path: the longest mount point that is a prefix (the last one wins ties)."""
    p = str(path.resolve())
    best: Mount | None = None
    for m in mounts:
        mp = m.mount_point.rstrip("/") or "/"
        if (p == mp or p.startswith(mp + "/") or mp == "/") and (
            best is None or len(mp) >= len(best.mount_point.rstrip("/") or "/")
        ):
            best = m
    return best


def check_bench_dir(path: Path) -> str | None:
    """Why the directory cannot host the fio pass, or None when it can."""
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is not a directory"
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return "is not readable and writable by this user"
    return None


def refused_filesystem(fstype: str) -> bool:
    return fstype.startswith(REFUSED_PREFIXES)


def _device_model(root: Path, device: str) -> str:
    base = root / "sys/dev/block" / device
    for rel in ("device/model", "../device/model", "device/serial"):
        try:
            return (base / rel).read_text().strip()
        except OSError:
            continue
    return "unknown-model"


def fio_argv(directory: Path, runtime_s: float) -> list[str]:
    seq = max(1, round(runtime_s * 0.5))
    rnd = max(1, round(runtime_s * 0.5))
    return [
        "fio",
        "--output-format=json",
        f"--directory={directory}",
        f"--filename={TEST_FILE}",
        "--size=128M",
        "--direct=1",
        "--ioengine=libaio",
        "--time_based",
        "--unlink=0",
        "--name=seqread",
        "--rw=read",
        "--bs=256k",
        "--iodepth=64",
        f"--runtime={seq}",
        "--name=randread",
        "--stonewall",
        "--rw=randread",
        "--bs=4k",
        "--iodepth=1",
        f"--runtime={rnd}",
    ]


def parse_fio(text: str) -> tuple[float, float, float, float]:
    """(seq MiB/s, rand IOPS, rand MiB/s, runtime s) from fio's JSON (read.bw is KiB/s)."""
    doc = json.loads(text[text.index("{") :])
    jobs = {j["jobname"]: j for j in doc["jobs"]}
    seq, rnd = jobs["seqread"]["read"], jobs["randread"]["read"]
    runtime = (seq.get("runtime", 0) + rnd.get("runtime", 0)) / 1000.0
    return seq["bw"] / 1024.0, float(rnd["iops"]), rnd["bw"] / 1024.0, runtime


def _none(path: Path | None, fstype: str | None, why: str) -> StorageBench:
    return StorageBench(str(path) if path else None, fstype, None, None, None, None, None, (why,))


def probe_storage(
    bench_dir: Path,
    runtime_s: float = DEFAULT_RUNTIME_S,
    force: bool = False,
    cache_dir: Path | None = None,
    runner: Runner | None = None,
    root: Path = Path("/"),
) -> StorageBench:
    problem = check_bench_dir(bench_dir)
    if problem:
        return _none(bench_dir, None, f"bench directory {bench_dir} {problem}")
    try:
        mounts = parse_mountinfo((root / "proc/self/mountinfo").read_text())
    except OSError as exc:
        return _none(bench_dir, None, f"cannot read mountinfo to find the filesystem: {exc}")
    mount = mount_of(bench_dir, mounts)
    if mount is None:
        return _none(bench_dir, None, f"no mount found for {bench_dir}")
    if refused_filesystem(mount.fstype):
        return _none(
            bench_dir,
            mount.fstype,
            f"refused: {bench_dir} is on {mount.fstype} ({mount.mount_point}), which does not "
            "give honest O_DIRECT numbers; mount a local disk volume (ext4, xfs, btrfs) at /bench",
        )
    key = f"{mount.device}:{mount.fstype}:{_device_model(root, mount.device)}"
    cache_path = cache_dir / CACHE_FILE if cache_dir else None
    if cache_path and not force:
        cached = _read_cache(cache_path, key)
        if cached is not None:
            return cached
    if runner is None:
        if which("fio") is None:
            return _none(
                bench_dir,
                mount.fstype,
                "fio is not installed (apt-get install fio); storage not measured",
            )
        runner = run_command
    test_file = bench_dir / TEST_FILE
    try:
        res = runner(fio_argv(bench_dir, runtime_s), runtime_s * 3 + 60)
    finally:
        test_file.unlink(missing_ok=True)
    if res.returncode != 0:
        text = (res.stderr or res.stdout or res.error or "").strip()
        if "O_DIRECT" in text or "Invalid argument" in text:
            why = f"{mount.fstype} refused O_DIRECT; not falling back to buffered I/O"
        else:
            why = f"fio failed: {res.error or text.splitlines()[-1] if text else 'no output'}"
        return _none(bench_dir, mount.fstype, why)
    try:
        seq, iops, rmib, runtime = parse_fio(res.stdout)
    except (ValueError, KeyError, TypeError) as exc:
        return _none(bench_dir, mount.fstype, f"fio output not understood: {exc}")
    result = StorageBench(
        str(bench_dir),
        mount.fstype,
        round(seq, 1),
        round(iops, 1),
        round(rmib, 2),
        round(runtime, 2),
        "fio",
    )
    if cache_path:
        _write_cache(cache_path, key, result)
    return result


def _read_cache(path: Path, key: str) -> StorageBench | None:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        hit = doc.get(key)
    except (OSError, ValueError):
        return None
    if not isinstance(hit, dict):
        return None
    try:
        return StorageBench(
            hit["path"],
            hit["filesystem"],
            hit["seq_read_mib_s"],
            hit["rand_read_4k_iops"],
            hit["rand_read_4k_mib_s"],
            hit["runtime_s"],
            "cache",
            (
                f"reused the fio result measured on this device ({key}); PREFLIGHT_BENCH=force re-runs it",
            ),
        )
    except KeyError:
        return None


def _write_cache(path: Path, key: str, result: StorageBench) -> None:
    try:
        doc = json.loads(path.read_text()) if path.exists() else {}
        if not isinstance(doc, dict):
            doc = {}
    except (OSError, ValueError):
        doc = {}
    doc[key] = {
        "path": result.path,
        "filesystem": result.filesystem,
        "seq_read_mib_s": result.seq_read_mib_s,
        "rand_read_4k_iops": result.rand_read_4k_iops,
        "rand_read_4k_mib_s": result.rand_read_4k_mib_s,
        "runtime_s": result.runtime_s,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(path)
    except OSError:
        pass  # a cache that cannot be written only costs the next start another pass
