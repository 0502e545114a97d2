"""Platform probe: container or not (and which runtime), NVIDIA runtime, WSL2, UVM oversubscription.

Reads files under ``root`` only (tests pass a recorded tree). Unknown is None with a note.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from gpu_preflight.profile_types import PlatformInfo


def _read(path: Path, limit: int = 65536) -> str | None:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except OSError:
        return None


def _container(root: Path, env: Mapping[str, str]) -> tuple[bool | None, str | None]:
    if (root / ".dockerenv").exists():
        return True, "docker"
    if (root / "run/.containerenv").exists():
        return True, "podman"
    if env.get("KUBERNETES_SERVICE_HOST"):
        return True, "kubernetes"
    runtime = env.get("container")
    if runtime:
        return True, runtime
    cgroup = _read(root / "proc/1/cgroup")
    if cgroup is not None:
        for marker, name in (
            ("docker", "docker"),
            ("kubepods", "kubernetes"),
            ("containerd", "containerd"),
            ("libpod", "podman"),
            ("lxc", "lxc"),
        ):
            if marker in cgroup:
                return True, name
    mountinfo = _read(root / "proc/1/mountinfo", 1 << 20)
    if mountinfo is not None:
        for line in mountinfo.splitlines():
            parts = line.split()
            if len(parts) > 4 and parts[4] == "/" and " - overlay " in line:
                return True, None  # an overlay root is a container whose runtime left no marker
        return False, None
    return None, None


def probe_platform(root: str | Path = "/", env: Mapping[str, str] | None = None) -> PlatformInfo:
    env = os.environ if env is None else env
    r = Path(root)
    notes: list[str] = []
    in_container, runtime = _container(r, env)
    if in_container is None:
        notes.append("container status unknown: /proc/1 is not readable")
    release = _read(r / "proc/sys/kernel/osrelease")
    release = release.strip() if release else None
    if release is None:
        notes.append("kernel release unknown: /proc/sys/kernel/osrelease not readable")
    dxg = (r / "dev/dxg").exists()
    wsl_lib = (r / "usr/lib/wsl/lib").is_dir()
    # /dev/dxg alone proves WSL2; a microsoft kernel release too. Neither readable: unknown.
    wsl2: bool | None = (
        ("microsoft" in release.lower() or dxg) if release is not None else (dxg or None)
    )
    nv_driver = (r / "proc/driver/nvidia").exists()
    nvidia_runtime: bool | None = None
    if in_container:
        libs = any(
            (r / p).exists()
            for p in (
                "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
                "usr/lib/aarch64-linux-gnu/libnvidia-ml.so.1",
                "usr/lib64/libnvidia-ml.so.1",
                "usr/lib/wsl/lib/libnvidia-ml.so.1",
            )
        )
        nvidia_runtime = libs or nv_driver
        if not nvidia_runtime:
            notes.append(
                "in a container without the NVIDIA driver libraries: start it with `--gpus all` "
                "and the NVIDIA Container Toolkit on the host"
            )
    uvm: bool | None
    if wsl2:
        uvm = False
        notes.append(
            "WSL2: CUDA cannot oversubscribe GPU memory (no UVM paging); plans use explicit placement"
        )
    elif (
        (r / "dev/nvidia-uvm").exists()
        or (r / "proc/driver/nvidia-uvm").exists()
        or "nvidia_uvm" in (_read(r / "proc/modules", 1 << 20) or "")
    ):
        uvm = True
    elif nv_driver:
        uvm = None
        notes.append(
            "NVIDIA driver present but the nvidia-uvm module is not visible: UVM oversubscription unknown"
        )
    else:
        uvm = None
        notes.append("no NVIDIA driver visible: UVM oversubscription unknown")
    return PlatformInfo(
        in_container=in_container,
        container_runtime=runtime,
        nvidia_runtime=nvidia_runtime,
        wsl2=wsl2,
        kernel_release=release,
        dxg_present=dxg,
        wsl_lib_present=wsl_lib,
        uvm_oversubscription=uvm,
        notes=tuple(notes),
    )
