"""`bench/gpu/run`: the one command for a lent GPU, and its rehearsal here (docs/gpu-kit.md).

    bench/gpu/run --out "$OUT"              on the GPU machine (carry bench/gpu/carry)
    bench/gpu/run --rehearse --out DIR      here: llama.cpp's CPU build in place of CUDA

In order, each step bounded in time and inside one budget (540 s on the device, so the whole
command ends inside the device tool's 10 minutes with room to write the report), a failing step a
failed line of the report, never the end of the run:

1. install: the carried wheels into a private target (``pip install --no-index --no-deps
   --target``); then every requirement of gpu-preflight is checked against what is importable.
2. build: llama.cpp from the carried source with ``-DGGML_CUDA=ON`` for the local card's
   architecture only, ``-j16``, the two targets llama-server and llama-fit-params.
3. probe: ``gpu-preflight probe --json`` on the real card against its data/gpus.json entry.
4. per configuration (bench/gpu/configs.py): a sparse zero-filled GGUF (tests/support/
   gguf_factory.py), ``gpu-preflight plan`` on the probed profile, llama.cpp's own dry run of the
   planned argv (``llama-fit-params``, timed, through gpu_preflight.engine_check as ``run`` asks
   it), then llama-server started with the planned argv (plus ``-lv 4``, which only raises the log
   verbosity so that the per-buffer lines are printed: common/log.cpp), ``gpu-preflight receipt``
   against it (NVML per-process memory, the logged buffers, decode), and llama.cpp's own memory
   breakdown printed at exit (common/fit.cpp ``common_memory_breakdown_print``).
5. overhead: NVML's per-process memory minus the model, KV and compute buffers llama.cpp logged,
   per configuration, against the planner's CUDA_OVERHEAD constant.

Writes under --out (at most 5 files, each capped well under 16 MiB): gpu-kit.json (the report,
bench/gpu/report.schema.json), gpu-kit.md, profile.json, build.log, engines.log. One line per
check on stdout. Exit 0 when every check passed or was skipped with its reason, else 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.gpu.prepare_kit import CARRY, PLATFORMS, PY, VERSION, cmake_options  # noqa: E402
from bench.gpu.report import Check, Status, render, validate  # noqa: E402

MIB = 2**20
DEVICE_BUDGET_S = 540.0
REHEARSE_BUDGET_S = 300.0
RESERVE_S = 10.0  # kept for writing the report
LOG_CAP = 2 * MIB  # per engine log in engines.log (head and tail kept)
BUILD_LOG_CAP = 4 * MIB
CACHE = Path(os.environ.get("GPU_PREFLIGHT_CACHE", "/var/cache/gpu-preflight"))
GPUS_JSON = ROOT / "entrypoint" / "gpu_preflight" / "data" / "gpus.json"
BUILD_DIR = ROOT / "bench" / "gpu" / "build"
# The receipt's GPU memory methods (probe/usage.py): the engine's own NVML figure, or the device's
# used memory when the engine is its only user / against before the start.
GPU_METHODS = ("nvml-pid", "nvml-only-process", "device-delta")
# PCIe per-lane transfer rate in GT/s by generation, and the 128b/130b line code (gen 3 to 5):
# the published link rate a measured H2D/D2H bandwidth is a fraction of (PCI-SIG base specs).
PCIE_GT_S = {1: 2.5, 2: 5.0, 3: 8.0, 4: 16.0, 5: 32.0, 6: 64.0}


@dataclass
class Clock:
    budget_s: float
    start: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed() - RESERVE_S

    def cap(self, limit: float) -> float:
        return max(1.0, min(limit, self.left()))


class StepError(Exception):
    """A step that could not run: its check becomes ``error`` with this message."""


@dataclass
class Kit:
    out: Path
    work: Path
    rehearse: bool
    clock: Clock
    carry: Path
    checks: list[Check] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)
    overhead_rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    llama_bin: Path | None = None  # --llama-bin: an existing build instead of building one
    no_install: bool = False  # --no-install: this Python already has gpu-preflight
    site: Path | None = None  # the private target of the wheels (device)
    bindir: Path | None = None
    profile: dict[str, Any] | None = None
    card: dict[str, Any] | None = None

    # -- plumbing ----------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        """The children's environment: ours without the user's preflight and llama.cpp settings,
        the built binaries first on PATH, the wheels' target first on PYTHONPATH."""
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("PREFLIGHT_", "LLAMA_ARG_"))
        }
        if self.bindir is not None:
            env["PATH"] = f"{self.bindir}:{env.get('PATH', '/usr/bin:/bin')}"
        if self.site is not None:
            env["PYTHONPATH"] = f"{self.site}:{ROOT}"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def record(self, check: Check) -> Check:
        self.checks.append(check)
        print(check.line(), flush=True)
        self.write()
        return check

    def step(
        self,
        name: str,
        limit_s: float,
        fn: Callable[[float], tuple[Status, str, dict[str, Any]]],
        needs_s: float = 5.0,
    ) -> Check:
        """Run one bounded step; an exception or a timeout is its ``error`` line."""
        if self.clock.left() < needs_s:
            return self.record(
                Check(
                    name, "skip", 0.0, f"out of time: {self.clock.left():.0f} s of the budget left"
                )
            )
        t0 = time.monotonic()
        try:
            status, summary, details = fn(self.clock.cap(limit_s))
        except subprocess.TimeoutExpired as exc:
            status, summary, details = "error", f"timed out after {exc.timeout:.0f} s", {}
        except Exception as exc:  # a failing step is a line of the report, never the end
            status, summary, details = "error", f"{type(exc).__name__}: {str(exc)[:600]}", {}
        return self.record(Check(name, status, time.monotonic() - t0, summary, details))

    def python(self, args: Sequence[str], timeout: float, env: Mapping[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, check=False,
            timeout=timeout, env=dict(env or self.env()),
        )  # fmt: skip

    def cli(self, args: Sequence[str], timeout: float, env: Mapping[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return self.python(["-m", "gpu_preflight.cli.main", *args], timeout, env)

    # -- the report --------------------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        from_rows = [
            r["overhead_bytes"] for r in self.overhead_rows if r["overhead_bytes"] is not None
        ]
        return {
            "schema_version": 1,
            "mode": "rehearse" if self.rehearse else "device",
            "backend": "cpu" if self.rehearse else "cuda",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_s": round(self.clock.elapsed(), 1),
            "budget_s": self.clock.budget_s,
            "host": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "hostname": platform.node() or None,
            },
            "carry": self.manifest,
            "card": self.card,
            "checks": [c.to_dict() for c in self.checks],
            "configs": self.configs,
            "overhead": {
                "constant_bytes": cuda_overhead_constant(),
                "rows": self.overhead_rows,
                "max_bytes": max(from_rows) if from_rows else None,
                "note": (
                    "NVML absent (no NVIDIA GPU in the rehearsal): not measured."
                    if self.rehearse
                    else "Measured on this card; where it holds, it replaces the constant."
                ),
            },
            "notes": self.notes,
        }

    def write(self) -> dict[str, Any]:
        doc = self.document()
        (self.out / "gpu-kit.json").write_text(json.dumps(doc, indent=2) + "\n")
        (self.out / "gpu-kit.md").write_text(render(doc))
        return doc


def cuda_overhead_constant() -> int:
    try:
        from gpu_preflight.memory.llamacpp import CUDA_OVERHEAD

        return int(CUDA_OVERHEAD)
    except ImportError:
        return 512 * MIB


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])[:800]


def _capped(data: bytes, cap: int) -> bytes:
    if len(data) <= cap:
        return data
    half = cap // 2
    return data[:half] + b"\n[... cut by the kit: log over its cap ...]\n" + data[-half:]


# -- 1. install ------------------------------------------------------------------------------------


def step_install(kit: Kit, timeout: float) -> tuple[Status, str, dict[str, Any]]:
    if kit.no_install:
        from importlib import metadata

        unmet = unmet_requirements()
        have = f"--no-install: this Python's gpu-preflight {metadata.version('gpu-preflight')}"
        if unmet:
            return "error", f"{have}; unmet: {', '.join(unmet)}", {"unmet": unmet}
        return "pass", f"{have}; every requirement met", {"unmet": []}
    wheels = sorted((kit.carry / "wheels").glob("*.whl"))
    if not wheels:
        raise StepError(f"no wheels in {kit.carry / 'wheels'}: run bench/gpu/prepare here and carry "
                        "bench/gpu/carry")  # fmt: skip
    manifest = kit.carry / "manifest.json"
    kit.manifest = json.loads(manifest.read_text()) if manifest.exists() else None
    target = kit.work / "site"
    args = ["-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
            "--no-cache-dir", "--target", str(target)]  # fmt: skip
    if kit.rehearse:
        # Not Python 3.12 here: install them as the device will (cp312 manylinux tags), unused.
        args += ["--only-binary=:all:", "--python-version", PY, "--implementation", "cp"]
        for p in PLATFORMS:
            args += ["--platform", p]
    r = kit.python([*args, *map(str, wheels)], timeout)
    if r.returncode != 0:
        return "error", f"pip install exited {r.returncode}: {_tail(r.stderr)}", {}
    if not kit.rehearse:
        kit.site = target
        sys.path.insert(0, str(target))
    unmet = unmet_requirements()
    details = {"wheels": [w.name for w in wheels], "target": str(target), "unmet": unmet}
    where = "for cp312 (not importable here)" if kit.rehearse else f"into {target}"
    if unmet:
        return "error", f"{len(wheels)} wheels {where}; unmet: {', '.join(unmet)}", details
    return "pass", f"{len(wheels)} wheels {where}; every gpu-preflight requirement met", details


def unmet_requirements() -> list[str]:
    """gpu-preflight's requirements (its installed metadata) that what is importable does not
    meet: missing, or a version outside the specifier."""
    from importlib import metadata

    from packaging.requirements import Requirement

    out = []
    for spec in metadata.requires("gpu-preflight") or []:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            out.append(f"{req.name} (missing)")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            out.append(f"{req.name} {have} (needs {req.specifier})")
    return out


# -- 2. build --------------------------------------------------------------------------------------


def step_build(kit: Kit, timeout: float) -> tuple[Status, str, dict[str, Any]]:
    if kit.rehearse or kit.llama_bin is not None:
        bindir = kit.llama_bin or CACHE / f"llama.cpp-{VERSION}" / "bin"
        if not (bindir / "llama-server").exists() or not (bindir / "llama-fit-params").exists():
            raise StepError(
                f"{bindir}: no llama-server and llama-fit-params there (make llama-cpp)"
            )
        kit.bindir = bindir
        if kit.llama_bin is not None:
            return "pass", f"not built: --llama-bin {bindir}", {"bindir": str(bindir)}
        return (
            "pass",
            f"rehearsal: the cached CPU build ({bindir}) stands in for CUDA",
            {"bindir": str(bindir)},
        )
    tarball = kit.carry / f"llama.cpp-{VERSION}-cuda-src.tar.xz"
    if not tarball.exists():
        raise StepError(f"{tarball} is missing: run bench/gpu/prepare here and carry it")
    deadline = time.monotonic() + timeout
    # In the repository (bench/gpu/build/, ignored by .gitignore's build/): the device tool keeps
    # ignored build outputs between calls on a warm machine, so a second call finds the build
    # and ninja has nothing to do. A different carried source starts it afresh.
    stamp = BUILD_DIR / "source.sha256"
    digest = _file_sha256(tarball)
    if not stamp.exists() or stamp.read_text().strip() != digest:
        shutil.rmtree(BUILD_DIR, ignore_errors=True)
        BUILD_DIR.mkdir(parents=True)
        with tarfile.open(tarball, "r:xz") as t:
            t.extractall(BUILD_DIR / "src", filter="data")
        stamp.write_text(digest + "\n")
    build = BUILD_DIR / "cuda"
    reused = (build / "CMakeCache.txt").exists()
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    jobs = str(min(16, os.cpu_count() or 16))
    log = kit.out / "build.log"
    configure = ["cmake", "-S", str(BUILD_DIR / "src" / "llama.cpp"), "-B", str(build), *gen,
                 *cmake_options(cuda=True)]  # fmt: skip
    targets = ["cmake", "--build", str(build), "-j", jobs, "--target", "llama-server",
               "llama-fit-params"]  # fmt: skip
    t0 = time.monotonic()
    output = bytearray()

    def sh(cmd: list[str]) -> subprocess.CompletedProcess[bytes]:
        output.extend(b"$ " + " ".join(cmd).encode() + b"\n")
        try:
            r = subprocess.run(cmd, capture_output=True, check=False,
                               timeout=max(1.0, deadline - time.monotonic()))  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            output.extend((exc.stdout or b"") + (exc.stderr or b""))
            log.write_bytes(_capped(bytes(output), BUILD_LOG_CAP))
            raise
        output.extend(r.stdout + r.stderr)
        log.write_bytes(_capped(bytes(output), BUILD_LOG_CAP))
        return r

    r = sh(configure)
    arch = None
    if r.returncode != 0:
        # CMake before 3.24 has no "native": name the card's own architecture (nvidia-smi's
        # compute capability 9.0 -> 90), which is what "native" resolves to.
        arch = _compute_arch()
        if arch is not None:
            shutil.rmtree(build, ignore_errors=True)
            r = sh([*configure[:-1], f"-DCMAKE_CUDA_ARCHITECTURES={arch}"])
    if r.returncode != 0:
        return (
            "error",
            f"cmake configure exited {r.returncode}: {_tail(r.stderr.decode(errors='replace'))}",
            {},
        )
    r = sh(targets)
    if r.returncode != 0:
        return (
            "error",
            f"cmake --build exited {r.returncode}: {_tail(r.stderr.decode(errors='replace'))}",
            {},
        )
    kit.bindir = build / "bin"
    cache = (build / "CMakeCache.txt").read_text(errors="replace")
    found = re.search(r"^CMAKE_CUDA_ARCHITECTURES:\w+=(.*)$", cache, re.M)
    compiler = re.search(r"^CMAKE_CUDA_COMPILER_VERSION:\w+=(.*)$", cache, re.M)
    how = "reused and brought up to date" if reused else "built"
    return (
        "pass",
        f"llama-server and llama-fit-params with CUDA {how} in {time.monotonic() - t0:.0f} s ({jobs} jobs)",
        {
            "bindir": str(kit.bindir),
            "reused": reused,
            "cuda_architectures": found.group(1) if found else arch,
            "nvcc": compiler.group(1) if compiler else None,
        },
    )


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _compute_arch() -> str | None:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                           capture_output=True, text=True, check=False, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = r.stdout.strip().splitlines()[:1]
    return first[0].replace(".", "") if r.returncode == 0 and first else None


# -- 3. probe --------------------------------------------------------------------------------------


def _catalog_entry(name: str) -> dict[str, Any] | None:
    gpus = json.loads(GPUS_JSON.read_text())["gpus"]
    return next((g for g in gpus if g["nvml_name"] == name), None)


def _link_gb_s(gen: int | None, width: int | None) -> float | None:
    if not gen or not width or gen not in PCIE_GT_S:
        return None
    encoding = 128 / 130 if gen >= 3 else 8 / 10
    return PCIE_GT_S[gen] * width * encoding / 8


def step_probe(kit: Kit, timeout: float) -> tuple[Status, str, dict[str, Any]]:
    out = kit.out / "profile.json"
    r = kit.cli(["probe", "--json", "--no-bench", "--out", str(out)], timeout)
    if r.returncode != 0:
        return "error", f"probe exited {r.returncode}: {_tail(r.stderr)}", {}
    kit.profile = json.loads(out.read_text())
    status, summary, details, kit.card = compare_card(kit.profile, kit.rehearse)
    return status, summary, details


def compare_card(
    profile: Mapping[str, Any], rehearse: bool
) -> tuple[Status, str, dict[str, Any], dict[str, Any] | None]:
    """The probed profile's first GPU against its data/gpus.json entry: (status, summary,
    details, card). No GPU: skip in the rehearsal, error on the device."""
    hw = profile["hardware"]
    devices = hw["gpus"]["devices"]
    pinned = hw["pinned"]
    details: dict[str, Any] = {
        "gpu_source": hw["gpus"]["source"],
        "driver": hw["gpus"].get("driver_version"),
        "pinned_ceiling_bytes": pinned["ceiling_bytes"],
        "pinned_capped": pinned["capped"],
        "pinned_seconds": pinned["seconds"],
        "rows": [],
    }
    if not devices:
        why = ("; ".join(hw["gpus"].get("notes") or []) or "no NVIDIA GPU")[:120]
        status: Status = "skip" if rehearse else "error"
        return status, f"NVML absent here ({why}): GPU fields null", details, None
    d = devices[0]
    pub = _catalog_entry(d["name"])
    card = {"nvml_name": d["name"], "catalog_id": pub["id"] if pub else None}
    pcie = next((p for p in hw["pcie"]["devices"] if p["index"] == d["index"]), None)
    link = _link_gb_s(d.get("pcie_gen_max"), d.get("pcie_width_max"))
    rows: list[tuple[str, Any, Any, bool | None]] = [
        ("name in data/gpus.json", d["name"], pub["id"] if pub else None, pub is not None),
    ]
    if pub:
        rows += [
            ("memory total MiB", d["total_bytes"] // MIB, pub["memory_total_mib"],
             d["total_bytes"] // MIB == pub["memory_total_mib"]),
            ("memory reserved MiB", (d.get("reserved_bytes") or 0) // MIB,
             pub["memory_reserved_mib"], None),
            ("compute capability", d["compute_capability"], pub["compute_capability"],
             d["compute_capability"] == pub["compute_capability"]),
            ("PCIe gen (max)", d.get("pcie_gen_max"), pub["pcie_gen"],
             d.get("pcie_gen_max") == pub["pcie_gen"]),
            ("PCIe width (max)", d.get("pcie_width_max"), pub["pcie_width"],
             d.get("pcie_width_max") == pub["pcie_width"]),
            ("power limit W", d.get("power_limit_watts"), pub["power_limit_w"], None),
        ]  # fmt: skip
    rows += [
        ("CUDA ordinal of NVML index", d.get("cuda_ordinal"), d["index"],
         d.get("cuda_ordinal") is not None),
        ("pinned-memory ceiling GiB", None if pinned["ceiling_bytes"] is None
         else round(pinned["ceiling_bytes"] / 2**30, 1), f"cap {pinned['cap_bytes'] / 2**30:.0f}",
         pinned["ceiling_bytes"] is not None),
        ("PCIe H2D GB/s", pcie and pcie["host_to_device_gb_s"],
         None if link is None else round(link, 1), None),
        ("PCIe D2H GB/s", pcie and pcie["device_to_host_gb_s"],
         None if link is None else round(link, 1), None),
    ]  # fmt: skip
    details["rows"] = [
        {"what": w, "measured": m, "published": p, "agrees": ok} for w, m, p, ok in rows
    ]
    details["gpus"] = len(devices)
    bad = [w for w, _, _, ok in rows if ok is False]
    h2d = pcie and pcie["host_to_device_gb_s"]
    summary = (
        f"{d['name']} ({pub['id'] if pub else 'not in data/gpus.json'}), "
        f"{d['total_bytes'] // MIB} MiB, CC {d['compute_capability']}, "
        f"PCIe H2D {h2d or '-'} of {link and round(link, 1)} GB/s, pinned "
        f"{details['pinned_ceiling_bytes'] and round(details['pinned_ceiling_bytes'] / 2**30, 1)} GiB"
    )
    if bad:
        return "fail", summary + "; differs: " + ", ".join(bad), details, card
    return "pass", summary, details, card


# -- 4. per configuration --------------------------------------------------------------------------


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _components(d: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("device", "weights_bytes", "kv_cache_bytes", "compute_bytes", "overhead_bytes",
            "total_bytes")  # fmt: skip
    return {k: d[k] for k in keys if k in d}


@dataclass
class Run:
    """One configuration's state through plan, fit and serve."""

    name: str
    row: dict[str, Any]
    pdir: Path
    port: int
    plan: dict[str, Any] | None = None
    gguf: Path | None = None

    def engine_env(self, kit: Kit) -> dict[str, str]:
        """As gpu_preflight.pipeline.engine_env: ours less the plan's env_unset, plus its env."""
        assert self.plan is not None
        env = {k: v for k, v in kit.env().items() if k not in self.plan.get("env_unset", [])}
        env.update(self.plan.get("env") or {})
        return env


def step_plan(kit: Kit, run: Run, timeout: float) -> tuple[Status, str, dict[str, Any]]:
    from tests.support.gguf_factory import write_gguf

    from bench.gpu.configs import DEVICE_CONFIGS, arch_for, rehearsal_configs

    c = next(
        x for x in (rehearsal_configs() if kit.rehearse else DEVICE_CONFIGS) if x.name == run.name
    )
    t0 = time.monotonic()
    run.gguf = write_gguf(kit.work / f"{c.name}.gguf", arch_for(c, kit.rehearse), c.quant,
                          sparse=True, name=c.model)  # fmt: skip
    run.row["gguf_bytes"] = run.gguf.stat().st_size
    write_s = time.monotonic() - t0
    assert kit.profile is not None
    run.pdir.mkdir(parents=True, exist_ok=True)
    (run.pdir / "profile.json").write_text(json.dumps(kit.profile))
    env = kit.env(
        PREFLIGHT_MODEL=str(run.gguf),
        PREFLIGHT_ENGINE="llama.cpp",
        PREFLIGHT_CONTEXT=str(c.context),
        PREFLIGHT_PARALLEL="1",
        PREFLIGHT_SPECULATIVE="off",
        PREFLIGHT_HOST="127.0.0.1",
        PREFLIGHT_PORT=str(run.port),
        PREFLIGHT_PROFILE_DIR=str(run.pdir),
        **dict(c.env),
    )
    r = kit.cli(["plan", "--profile", str(run.pdir / "profile.json"), "--json"],
                max(1.0, timeout - write_s), env)  # fmt: skip
    if r.returncode not in (0, 3) or not r.stdout.strip().startswith("{"):
        return "error", f"plan exited {r.returncode}: {_tail(r.stderr)}", {"write_s": write_s}
    plan = json.loads(r.stdout)
    devices = (
        [_components(d) for d in plan["predicted"]["devices"]] if plan.get("predicted") else []
    )
    run.row.update({"argv": plan["argv"] or None, "plan_devices": devices or None})
    details = {"verdict": plan["verdict"], "write_s": round(write_s, 2), "sources": plan.get("sources"),
               "warnings": plan.get("warnings"), "notes": (plan.get("predicted") or {}).get("notes")}  # fmt: skip
    if plan["verdict"] != "ship":
        reasons = "; ".join(str(x.get("message", x)) if isinstance(x, dict) else str(x)
                            for x in plan.get("reasons") or [])  # fmt: skip
        return "fail", f"refused: {reasons[:400]}", details
    run.plan = plan
    (run.pdir / "plan.json").write_text(json.dumps(plan, indent=2))
    ngl = _flag(plan["argv"], "--n-gpu-layers")
    where = ", ".join(
        f"{d['device']} {d['total_bytes'] / MIB:,.0f} MiB" for d in devices if d.get("total_bytes")
    )
    extra = (
        f", --n-cpu-moe {_flag(plan['argv'], '--n-cpu-moe')}"
        if "--n-cpu-moe" in plan["argv"]
        else ""
    )
    return "pass", f"ship, -ngl {ngl}{extra}, ctx {plan['context']}; predicted {where}", details


def _flag(argv: Sequence[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else None


def _fit_name(plan_device: str, gpus: Sequence[str]) -> str | None:
    """llama.cpp's device for a planned one: CPU is its Host row (with the CPU_REPACK buffers,
    gpu_preflight.engine_check); a GPU is named alike in both (CUDA0, ...)."""
    if plan_device == "CPU":
        return "Host"
    return plan_device if plan_device in gpus else None


def step_fit(kit: Kit, run: Run, timeout: float) -> tuple[Status, str, dict[str, Any]]:
    from gpu_preflight import engine_check

    assert run.plan is not None and kit.bindir is not None
    # bounded by engine_check itself: TIMEOUT_S (60 s) a run, a hang or an error never retried
    got = engine_check.llama_dry_run(
        run.plan["argv"], run.engine_env(kit), binary=str(kit.bindir / "llama-fit-params")
    )
    if isinstance(got, str):
        return "error", got, {}
    fit_devices = [
        {"device": d.name, "weights_bytes": d.model_bytes, "kv_cache_bytes": d.context_bytes,
         "compute_bytes": d.compute_bytes,
         "total_bytes": d.model_bytes + d.context_bytes + d.compute_bytes}
        for d in got.devices
    ]  # fmt: skip
    run.row["fit"] = {"seconds": got.seconds, "devices": fit_devices}
    by = {d["device"]: d for d in fit_devices}
    gpus = [d.name for d in got.gpus]
    rows = []
    for p in run.row["plan_devices"] or []:
        f = by.get(_fit_name(p["device"], gpus) or "")
        if f is None:
            continue
        planned = p["weights_bytes"] + p["kv_cache_bytes"] + p["compute_bytes"]
        rows.append({"device": p["device"], "planned_bytes": planned, "fit_bytes": f["total_bytes"],
                     "error_bytes": f["total_bytes"] - planned,
                     "kv_error_bytes": f["kv_cache_bytes"] - p["kv_cache_bytes"],
                     "weights_error_bytes": f["weights_bytes"] - p["weights_bytes"]})  # fmt: skip
    under = [r for r in rows if r["error_bytes"] > 0]
    text = ", ".join(
        f"{r['device']} {r['fit_bytes'] / MIB:,.0f} vs plan {r['planned_bytes'] / MIB:,.0f} MiB "
        f"(KV {r['kv_error_bytes'] / MIB:+,.0f}, weights {r['weights_error_bytes'] / MIB:+,.0f})"
        for r in rows
    )
    details = {"rows": rows, "argv": list(got.argv), "dropped": list(got.dropped)}
    summary = f"{got.seconds:.2f} s; {text}"
    return ("fail", "UNDER-predicted: " + summary, details) if under else ("pass", summary, details)


_EXIT_ROW = re.compile(r"common_memory_breakdown_print:\s*\|\s*-\s*(.+?)\s*\|(.*)\|\s*$")


def exit_breakdown(log: str) -> list[dict[str, Any]]:
    """llama-server's memory table at exit (common/fit.cpp common_memory_breakdown_print), MiB:
    a device row is ``total = free + (self = model + context + compute) + unaccounted``, the host
    row ``self = model + context + compute``."""
    rows = []
    for line in log.splitlines():
        m = _EXIT_ROW.search(line)
        if not m:
            continue
        nums = [int(x) for x in re.findall(r"-?\d+", m.group(2))]
        dev = m.group(1).split(" (")[0].strip()
        if len(nums) == 7:
            total, free, self_, model, ctx, comp, unacc = nums
            rows.append({"device": dev, "total_mib": total, "free_mib": free, "self_mib": self_,
                         "model_mib": model, "context_mib": ctx, "compute_mib": comp,
                         "unaccounted_mib": unacc})  # fmt: skip
        elif len(nums) == 4:
            self_, model, ctx, comp = nums
            rows.append({"device": dev, "total_mib": None, "free_mib": None, "self_mib": self_,
                         "model_mib": model, "context_mib": ctx, "compute_mib": comp,
                         "unaccounted_mib": None})  # fmt: skip
    return rows


def _healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.25)
    return None


def _stop(proc: subprocess.Popen[bytes]) -> float:
    t0 = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return time.monotonic() - t0


def step_serve(kit: Kit, run: Run, timeout: float) -> tuple[Status, str, dict[str, Any]]:
    assert run.plan is not None
    deadline = time.monotonic() + timeout
    log = kit.work / f"{run.name}.log"
    argv = [*run.plan["argv"], "-lv", "4"]
    url = f"http://127.0.0.1:{run.port}"
    with log.open("wb") as f:
        # in the kit's own process group: if the device tool ends the command, the server goes
        # with it (a new session would outlive the call and hold the card's memory)
        proc = subprocess.Popen(argv, env=run.engine_env(kit), stdout=f, stderr=subprocess.STDOUT)
    receipt: dict[str, Any] | None = None
    healthy_s = stop_s = None
    why = ""
    try:
        healthy_s = _healthy(url, proc, max(1.0, deadline - time.monotonic() - 30))
        if healthy_s is None:
            why = f"exited {proc.returncode}" if proc.poll() is not None else "not healthy in time"
        else:
            tokens = "16" if kit.rehearse else "64"
            r = kit.cli(
                ["receipt", "--json", "--no-write", "--log", str(log), "--pid", str(proc.pid),
                 "--url", url, "--tokens", tokens, "--timeout", "30"],
                max(1.0, deadline - time.monotonic() - 5),
                kit.env(PREFLIGHT_PROFILE_DIR=str(run.pdir)),
            )  # fmt: skip
            if r.stdout.strip().startswith("{"):
                receipt = json.loads(r.stdout)
            else:
                why = f"receipt exited {r.returncode}: {_tail(r.stderr)}"
    finally:
        stop_s = _stop(proc)
    text = log.read_bytes()
    with (kit.out / "engines.log").open("ab") as f:
        f.write(f"===== {run.name}: {' '.join(argv)}\n".encode())
        f.write(_capped(text, LOG_CAP) + b"\n")
    breakdown = exit_breakdown(text.decode(errors="replace"))
    run.row["server"] = {"healthy_s": healthy_s and round(healthy_s, 2), "stop_s": round(stop_s, 2),
                         "exit_breakdown": breakdown}  # fmt: skip
    if receipt is None:
        return "error", f"llama-server {why}: {_tail(text.decode(errors='replace'), 3)}", {}
    memory = receipt.get("memory") or []
    run.row["receipt_memory"] = memory
    overhead(kit, run, memory, breakdown)
    details = {"receipt_status": receipt["status"], "decode": receipt.get("decode"),
               "warnings": receipt.get("warnings"), "peaks": receipt.get("peaks")}  # fmt: skip
    parts = []
    for m in memory:
        err = m.get("error_fraction")
        got = "-" if m["measured_bytes"] is None else f"{m['measured_bytes'] / MIB:,.0f}"
        parts.append(
            f"{m['device']} {got} vs plan {m['predicted_bytes'] / MIB:,.0f} MiB ({m['method']}"
            + ("" if err is None else f", {err:+.1%}")
            + ")"
        )
    single = ((receipt.get("decode") or {}).get("single") or {}).get("decode_tok_s")
    summary = (f"healthy in {healthy_s:.1f} s, receipt {receipt['status']}; " + "; ".join(parts)
               + (f"; decode {single} tok/s" if single else ""))  # fmt: skip
    if receipt["status"] == "failed":
        return "error", summary, details
    if any(m.get("under") for m in memory):
        return "fail", "UNDER-predicted: " + summary, details
    return "pass", summary, details


def overhead(kit: Kit, run: Run, memory: Sequence[Mapping[str, Any]],
             breakdown: Sequence[Mapping[str, Any]]) -> None:  # fmt: skip
    """NVML's per-process memory minus the buffers llama.cpp logged, per GPU of the plan."""
    exit_rows = {r["device"]: r for r in breakdown}
    for m in memory:
        gpu = m["device"] != "CPU"
        nvml = m["measured_bytes"] if gpu and m["method"] in GPU_METHODS else None
        logged = [c.get("logged_bytes") for c in m.get("components") or []]
        buffers = sum(int(x) for x in logged) if logged and None not in logged else None
        unacc = exit_rows.get(m["device"], {}).get("unaccounted_mib")
        note = None
        if not gpu:
            note = "host RAM (peak RSS): no CUDA overhead" + (
                "; NVML absent (no NVIDIA GPU in the rehearsal)" if kit.rehearse else ""
            )
        elif nvml is None:
            note = f"no NVML per-process figure (method {m['method']})"
        elif buffers is None:
            note = "llama.cpp's buffer lines were not logged"
        kit.overhead_rows.append({
            "config": run.name,
            "device": m["device"],
            "nvml_process_bytes": nvml,
            "buffers_bytes": buffers,
            "overhead_bytes": nvml - buffers if nvml is not None and buffers is not None else None,
            "unaccounted_bytes": None if unacc is None else unacc * MIB,
            "note": note,
        })  # fmt: skip


def step_overhead(kit: Kit, _timeout: float) -> tuple[Status, str, dict[str, Any]]:
    const = cuda_overhead_constant()
    rows = [r for r in kit.overhead_rows if r["overhead_bytes"] is not None]
    if not rows:
        status: Status = "skip" if kit.rehearse else "error"
        return status, "no configuration gave NVML per-process memory and logged buffers", {}
    worst = max(rows, key=lambda r: r["overhead_bytes"])
    text = ", ".join(f"{r['config']} {r['device']} {r['overhead_bytes'] / MIB:,.0f}" for r in rows)
    summary = f"measured {text} MiB against the {const / MIB:.0f} MiB constant"
    details = {"max_bytes": worst["overhead_bytes"], "constant_bytes": const}
    if worst["overhead_bytes"] > const:
        return "fail", "constant UNDER the measurement: " + summary, details
    return "pass", summary, details


# -- main ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/gpu/run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="where the report and logs go ($OUT)")
    ap.add_argument("--rehearse", action="store_true",
                    help="here, without a GPU: llama.cpp's CPU build, scaled-down models")  # fmt: skip
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole run")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: under /tmp)")
    ap.add_argument("--carry", type=Path, default=CARRY, help="the prepared carry folder")
    ap.add_argument("--only", default=None, help="comma-separated configuration names")
    ap.add_argument(
        "--no-install",
        action="store_true",
        help="use this Python's own gpu-preflight (by hand: `pip install -e .[cuda]` first)",
    )
    ap.add_argument(
        "--llama-bin",
        type=Path,
        default=None,
        help="a folder with llama-server and llama-fit-params already built (skips the build)",
    )
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    for stale in ("gpu-kit.json", "gpu-kit.md", "profile.json", "build.log", "engines.log"):
        (a.out / stale).unlink(missing_ok=True)
    work = a.work or Path("/tmp") / f"gpu-kit-{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    budget = a.budget or (REHEARSE_BUDGET_S if a.rehearse else DEVICE_BUDGET_S)
    kit = Kit(a.out, work, a.rehearse, Clock(budget), a.carry.resolve())
    kit.llama_bin = a.llama_bin.resolve() if a.llama_bin else None
    kit.no_install = a.no_install
    if a.rehearse:
        kit.notes.append(
            "Rehearsal: no GPU here. llama.cpp's CPU build (.ci/llama-cpp.sh) stands in for the "
            "CUDA build, the four configurations are shrunk to a few MiB (2 layers), NVML is absent: "
            "the GPU fields and the CUDA overhead are null with a note."
        )
    try:
        kit.step("install", 120, partial(step_install, kit))
        kit.step("build", 420, partial(step_build, kit), needs_s=30)
        kit.step("probe", 90, partial(step_probe, kit))
        try:  # gpu_preflight comes from the installed wheels: without them, a line, not a trace
            from bench.gpu.configs import DEVICE_CONFIGS, Config, rehearsal_configs

            configs: tuple[Config, ...] = rehearsal_configs() if a.rehearse else DEVICE_CONFIGS
        except ImportError as exc:
            kit.record(Check("configs", "error", 0.0, f"cannot load the configurations: {exc}"))
            configs = ()
        wanted = set(a.only.split(",")) if a.only else None
        for c in configs:
            if wanted is not None and c.name not in wanted:
                continue
            row: dict[str, Any] = {
                "name": c.name, "model": c.model, "quant": c.quant, "context": c.context,
                "what": c.what, "env": dict(c.env), "gguf_bytes": None, "argv": None,
                "plan_devices": None, "fit": None, "server": None, "receipt_memory": None,
            }  # fmt: skip
            kit.configs.append(row)
            run = Run(c.name, row, work / f"profile-{c.name}", _port())
            if kit.profile is None or kit.bindir is None:
                for s in ("plan", "fit", "serve"):
                    kit.record(
                        Check(f"{s}:{c.name}", "skip", 0.0, "no profile or no llama.cpp build")
                    )
                continue
            kit.step(f"plan:{c.name}", 90, partial(step_plan, kit, run))
            if run.plan is None:
                for s in ("fit", "serve"):
                    kit.record(Check(f"{s}:{c.name}", "skip", 0.0, "no shipped plan"))
                continue
            kit.step(f"fit:{c.name}", 60, partial(step_fit, kit, run))
            kit.step(f"serve:{c.name}", 240, partial(step_serve, kit, run), needs_s=20)
            if run.gguf is not None:
                run.gguf.unlink(missing_ok=True)
        kit.step("overhead", 5, partial(step_overhead, kit), needs_s=0)
    finally:
        doc = kit.write()
        shutil.rmtree(work, ignore_errors=True)
    try:
        validate(doc)
    except ImportError:
        print("report not validated: jsonschema is not importable", file=sys.stderr)
    except Exception as exc:  # the report itself is wrong: say so, exit non-zero
        print(f"report does not match bench/gpu/report.schema.json: {exc}", file=sys.stderr)
        return 2
    bad = [c for c in kit.checks if c.status in ("fail", "error")]
    print(f"{len(kit.checks)} checks, {len(bad)} failed or in error, {kit.clock.elapsed():.0f} s; "
          f"report: {a.out / 'gpu-kit.md'}", flush=True)  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
