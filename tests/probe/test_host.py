"""Host probes on this machine and on recorded /proc and /sys trees."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gpu_preflight.probe.memory import probe_host_memory, read_cgroup
from gpu_preflight.probe.platform import probe_platform

GIB = 2**30


def _meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def test_host_memory_matches_proc_meminfo_and_is_fast():
    # The best of three: other work on a 2-core CI machine can only slow a run, never speed it.
    elapsed = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        m = probe_host_memory()
        elapsed = min(elapsed, time.perf_counter() - t0)
    assert m.total_bytes == _meminfo_kib("MemTotal") * 1024
    assert abs(m.available_bytes - _meminfo_kib("MemAvailable") * 1024) < 256 * 2**20
    assert m.memory_source == "psutil"
    assert m.cpu_memory_bandwidth_gb_s and m.cpu_memory_bandwidth_gb_s > 0.1
    assert elapsed < 0.2, f"host memory probe took {elapsed:.3f} s"
    if m.cgroup_limit_bytes is not None:
        assert m.effective_total_bytes == min(m.total_bytes, m.cgroup_limit_bytes)


def _tree(tmp: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {
                "proc/self/cgroup": "0::/\n",
                "sys/fs/cgroup/cgroup.controllers": "cpu memory",
                "sys/fs/cgroup/memory.max": "8589934592\n",
                "sys/fs/cgroup/memory.current": "1073741824\n",
                "sys/fs/cgroup/cpu.max": "200000 100000\n",
            },
            (2, 8 * GIB, GIB, 2.0),
        ),
        (
            {
                "proc/self/cgroup": "0::/\n",
                "sys/fs/cgroup/cgroup.controllers": "cpu memory",
                "sys/fs/cgroup/memory.max": "max\n",
                "sys/fs/cgroup/memory.current": "4096\n",
                "sys/fs/cgroup/cpu.max": "max 100000\n",
            },
            (2, None, 4096, None),
        ),
        (
            {
                "proc/self/cgroup": "4:memory:/docker/abc\n",
                "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
                "sys/fs/cgroup/memory/memory.usage_in_bytes": "12345\n",
                "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
                "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
            },
            (1, None, 12345, None),
        ),
        (
            {
                "proc/self/cgroup": "4:memory:/\n",
                "sys/fs/cgroup/memory/memory.limit_in_bytes": "4294967296\n",
                "sys/fs/cgroup/memory/memory.usage_in_bytes": "100\n",
                "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "150000\n",
                "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
            },
            (1, 4 * GIB, 100, 1.5),
        ),
    ],
)
def test_cgroup_trees(tmp_path, files, expected):
    version, limit, usage, quota, _ = read_cgroup(_tree(tmp_path, files))
    assert (version, limit, usage, quota) == expected


def test_no_cgroup_is_a_note(tmp_path):
    version, limit, _, _, notes = read_cgroup(tmp_path)
    assert version is None and limit is None and notes


def test_platform_wsl2_tree(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/sys/kernel/osrelease": "5.15.167.4-microsoft-standard-WSL2\n",
            "proc/1/cgroup": "0::/\n",
            "proc/1/mountinfo": "",
            "usr/lib/wsl/lib/libcuda.so.1": "",
            "dev/dxg": "",
        },
    )
    p = probe_platform(root, env={})
    assert p.wsl2 is True and p.dxg_present and p.wsl_lib_present
    assert p.uvm_oversubscription is False
    assert p.in_container is False


def test_platform_native_linux_with_uvm_in_docker(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/sys/kernel/osrelease": "6.8.0-45-generic\n",
            ".dockerenv": "",
            "dev/nvidia-uvm": "",
            "proc/driver/nvidia/version": "NVRM 550",
            "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1": "",
        },
    )
    p = probe_platform(root, env={})
    assert (
        p.in_container,
        p.container_runtime,
        p.nvidia_runtime,
        p.wsl2,
        p.uvm_oversubscription,
    ) == (True, "docker", True, False, True)


def test_platform_container_without_toolkit_says_what_to_do(tmp_path):
    root = _tree(tmp_path, {"proc/sys/kernel/osrelease": "6.1.0\n", "run/.containerenv": ""})
    p = probe_platform(root, env={})
    assert p.container_runtime == "podman" and p.nvidia_runtime is False
    assert any("--gpus all" in n for n in p.notes)
    assert p.uvm_oversubscription is None


def test_platform_unreadable_proc_is_unknown(tmp_path):
    p = probe_platform(tmp_path, env={})
    assert p.in_container is None and p.kernel_release is None and p.wsl2 is None
