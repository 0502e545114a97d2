"""`bench/gpu/prepare`: write the one folder that travels to a lent GPU machine (bench/gpu/carry/).

What the device lacks, nothing else (it has no network; see docs/gpu-kit.md):

- ``llama.cpp-<version>-cuda-src.tar.xz``: llama.cpp as the llama-cpp-python sdist vendors it (the
  same pinned source .ci/llama-cpp.sh builds here), stripped to what ``cmake --build --target
  llama-server llama-fit-params`` with ``-DGGML_CUDA=ON`` compiles: ggml's core, its CPU and CUDA
  backends, src/, common/, vendor/, tools/ (every tool's sources stay, since tools/CMakeLists.txt
  configures them all), cmake/ and the scripts/*.cmake helpers. Docs, models (test vocabularies),
  tests, examples, the web UI's sources and every other ggml backend (ggml/src/CMakeLists.txt adds
  a backend's directory only when its GGML_<NAME> option is on) are left out.
- ``wheels/``: the gpu-preflight wheel built from this tree, and a cp312 manylinux x86-64 wheel of
  each requirement the device image does not hold (bench/gpu/device-packages.txt), resolved by pip
  for Python 3.12 and walked from the project's requirements, stopping at a package the image has.
- ``manifest.json``: versions, sha256 sums, sizes, and the tree's commit the wheel was built from.

The sdist and the dependency wheels are cached under $GPU_PREFLIGHT_CACHE/gpu-kit
(/var/cache/gpu-preflight/gpu-kit), so a rerun costs the project wheel and the tarball only.

    bench/gpu/prepare [--out DIR] [--no-verify]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CARRY = HERE / "carry"
CARRY_REL = "bench/gpu/carry"
VERSION = os.environ.get("LLAMA_CPP_PYTHON_VERSION", "0.3.36")
CACHE = Path(os.environ.get("GPU_PREFLIGHT_CACHE", "/var/cache/gpu-preflight")) / "gpu-kit"
MIB = 2**20
# The device tool's limits (its README, "Limits"): the working tree plus the carried paths travel,
# 64 MiB together, at most 8 carried paths. The kit carries one.
TRAVEL_LIMIT_BYTES = 64 * MIB
CARRY_PATHS_LIMIT = 8
# The carry must leave the tree room to grow: "well under" the limit.
CARRY_TARGET_BYTES = 32 * MIB
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
PY = "3.12"

# What the CUDA build needs, relative to the llama.cpp root. Top-level entries kept whole
# (the filters below then drop parts of them).
KEEP_TOP = {"CMakeLists.txt", "LICENSE", "cmake", "include", "src", "common", "vendor", "ggml",
            "tools", "licenses", "scripts"}  # fmt: skip
# ggml backends compiled for a CUDA build of llama-server (ggml/src/CMakeLists.txt
# ggml_add_backend(CPU) is always on; CUDA by -DGGML_CUDA=ON).
KEEP_BACKENDS = {"ggml-cpu", "ggml-cuda"}
DROP_PREFIXES = (
    "tools/ui/src/",  # the web UI's sources: only `npm` builds them (LLAMA_BUILD_UI=OFF here)
    "tools/ui/tests/",
    "tools/ui/static/",
    "tools/ui/package-lock.json",
    "tools/server/tests/",
    "tools/server/bench/",
    "tools/mtmd/tests/",
    "tools/mtmd/legacy-models/",
    "tools/mtmd/test-",  # sample media
)


@dataclass(frozen=True)
class Stripped:
    path: Path
    files: int
    raw_bytes: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    file: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Limits:
    """What would travel to the device: the tree (tracked and untracked-not-ignored) + the carry."""

    carry_bytes: int
    tree_bytes: int
    carried_paths: int

    @property
    def total_bytes(self) -> int:
        return self.carry_bytes + self.tree_bytes

    @property
    def problems(self) -> list[str]:
        out = []
        if self.total_bytes > TRAVEL_LIMIT_BYTES:
            out.append(
                f"tree {self.tree_bytes / MIB:.1f} MiB + carry {self.carry_bytes / MIB:.1f} MiB "
                f"= {self.total_bytes / MIB:.1f} MiB is over the device tool's 64 MiB"
            )
        if self.carry_bytes > CARRY_TARGET_BYTES:
            out.append(
                f"carry {self.carry_bytes / MIB:.1f} MiB is over the kit's own "
                f"{CARRY_TARGET_BYTES // MIB} MiB target (leave the tree room)"
            )
        if self.carried_paths > CARRY_PATHS_LIMIT:
            out.append(f"{self.carried_paths} carried paths: the device tool takes at most 8")
        return out


def _pip(*args: str) -> None:
    """``python -m pip ARGS``; its output (index warnings included) is shown only on failure."""
    r = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                       check=False)  # fmt: skip
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"pip {args[0]} exited {r.returncode}:\n{tail}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def keep(rel: str) -> bool:
    """Whether a path of the llama.cpp tree (posix, relative to its root) is needed by the build."""
    parts = PurePosixPath(rel).parts
    if not parts or parts[0] not in KEEP_TOP:
        return False
    name = parts[-1]
    if name.endswith(".md") and name != "LICENSE.md":
        return False
    if parts[0] == "scripts":
        # only the CMake helpers the configure step runs (tools/ui: scripts/ui-assets.cmake)
        return len(parts) == 2 and name.endswith(".cmake")
    if parts[:2] == ("ggml", "src") and len(parts) > 3 and parts[2].startswith("ggml-"):
        return parts[2] in KEEP_BACKENDS
    return not any(rel.startswith(p) for p in DROP_PREFIXES)


def fetch_sdist(cache: Path = CACHE) -> Path:
    """The llama-cpp-python sdist (cached): the pinned llama.cpp source, as .ci/llama-cpp.sh uses."""
    d = cache / "sdist"
    found = sorted(d.glob(f"llama_cpp_python-{VERSION}.tar.gz"))
    if found:
        return found[0]
    d.mkdir(parents=True, exist_ok=True)
    _pip("download", "--quiet", "--no-deps", "--no-binary", ":all:", "-d", str(d),
         f"llama-cpp-python=={VERSION}")  # fmt: skip
    return d / f"llama_cpp_python-{VERSION}.tar.gz"


def strip_source(sdist: Path, out: Path) -> Stripped:
    """A .tar.xz of the kept llama.cpp files under ``llama.cpp/`` (mode and order kept)."""
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    files = raw = 0
    tmp = out.with_suffix(".part")
    with tarfile.open(sdist, "r:gz") as src, tarfile.open(tmp, "w:xz", preset=6) as dst:
        for m in src:
            if not m.name.startswith(prefix) or not (m.isfile() or m.isdir()):
                continue
            rel = m.name[len(prefix) :]
            if not rel or (m.isfile() and not keep(rel)) or (m.isdir() and not keep(rel + "/x")):
                continue
            info = tarfile.TarInfo("llama.cpp/" + rel)
            info.mode, info.mtime, info.type = m.mode, m.mtime, m.type
            if m.isfile():
                data = src.extractfile(m)
                assert data is not None
                blob = data.read()
                info.size = len(blob)
                dst.addfile(info, io.BytesIO(blob))
                files += 1
                raw += len(blob)
            else:
                dst.addfile(info)
    tmp.replace(out)
    return Stripped(out, files, raw, out.stat().st_size, _sha256(out))


def configure_check(tarball: Path) -> str | None:
    """Configure the stripped tree here with CMake (CPU, no CUDA: there is no nvcc here), with the
    device's other options. None when it configures; else the tail of CMake's error."""
    if shutil.which("cmake") is None:
        return "cmake is not installed here: `apt-get install cmake`"
    with tempfile.TemporaryDirectory(prefix="gpu-kit-cfg-") as tmp:
        with tarfile.open(tarball, "r:xz") as t:
            t.extractall(tmp, filter="data")
        r = subprocess.run(
            ["cmake", "-S", f"{tmp}/llama.cpp", "-B", f"{tmp}/build", *cmake_options(cuda=False)],
            capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
    if r.returncode == 0:
        return None
    return " | ".join((r.stderr or r.stdout).strip().splitlines()[-8:])[:1500]


def cmake_options(cuda: bool) -> list[str]:
    """The configure options of the device build (bench/gpu/kit.py uses the same list)."""
    opts = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_BUILD_TOOLS=ON",
        # tools/ui: no npm build and no download of the prebuilt UI (the device has no network);
        # scripts/ui-assets.cmake then embeds an empty asset table.
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        # -hf downloads are not used on the device: no OpenSSL dependency
        "-DLLAMA_OPENSSL=OFF",
    ]
    if cuda:
        # the local card's architecture only (CMake >= 3.24 resolves "native" through nvcc)
        opts += ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=native"]
        # one card: NCCL (ggml/CMakeLists.txt GGML_CUDA_NCCL, default ON, found or not) only
        # serves multi-GPU splits; off, so the build does not depend on where NCCL is installed
        opts += ["-DGGML_CUDA_NCCL=OFF"]
    return opts


# -- wheels ------------------------------------------------------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def device_packages(path: Path = HERE / "device-packages.txt") -> set[str]:
    names: set[str] = set()
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            names |= {_norm(n) for n in line.split()}
    return names


def _pip_platform() -> list[str]:
    out = ["--only-binary=:all:", "--python-version", PY, "--implementation", "cp"]
    for p in PLATFORMS:
        out += ["--platform", p]
    return out


def build_project_wheel(dest: Path) -> Path:
    for old in dest.glob("gpu_preflight-*.whl"):
        old.unlink()
    _pip("wheel", "--quiet", "--no-deps", str(ROOT), "-w", str(dest))
    return next(dest.glob("gpu_preflight-*.whl"))


def resolve(project_wheel: Path) -> list[dict[str, Any]]:
    """pip's resolution (metadata only, --dry-run --report) of the wheel's requirements for
    Python 3.12 on manylinux x86-64, every package as if none were installed."""
    with tempfile.TemporaryDirectory(prefix="gpu-kit-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        _pip("install", "--quiet", "--dry-run", "--ignore-installed", "--report", str(report),
             "--target", f"{tmp}/t", *_pip_platform(), str(project_wheel))  # fmt: skip
        items: list[dict[str, Any]] = json.loads(report.read_text())["install"]
    return items


def needed(items: Sequence[dict[str, Any]], present: set[str]) -> list[tuple[str, str]]:
    """(name, version) of each resolved package the device lacks: the graph walked from the
    project, not into a package the device holds (its own dependencies are its image's)."""
    from packaging.requirements import Requirement

    env = {"python_version": PY, "python_full_version": PY + ".3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython",
           "extra": ""}  # fmt: skip
    by_name = {_norm(i["metadata"]["name"]): i for i in items}
    root = next(n for n in by_name if n == "gpu-preflight")
    seen: set[str] = set()
    todo = [root]
    out: list[tuple[str, str]] = []
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        meta = by_name[n]["metadata"]
        if n != root:
            out.append((meta["name"], meta["version"]))
        for spec in meta.get("requires_dist") or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = _norm(req.name)
            if dep in present or dep not in by_name:
                continue
            todo.append(dep)
    return sorted(out)


def download_wheels(pkgs: Iterable[tuple[str, str]], cache: Path = CACHE) -> list[Path]:
    d = cache / "wheels"
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for name, version in pkgs:
        stem = re.sub(r"[-_.]+", "_", name).lower()
        hit = [p for p in d.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-")]
        if not hit:
            _pip("download", "--quiet", "--no-deps", *_pip_platform(), "-d", str(d),
                 f"{name}=={version}")  # fmt: skip
            hit = [p for p in d.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-")]
        if len(hit) != 1:
            raise RuntimeError(f"{name}=={version}: expected one cached wheel in {d}, found {hit}")
        out.append(hit[0])
    return out


# -- size ----------------------------------------------------------------------------------------


def tree_bytes(root: Path = ROOT) -> int:
    """What the device tool sends besides the carry: tracked and untracked-not-ignored files (and
    the shared/ folder where the checkout has one)."""
    r = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    )  # fmt: skip
    total = 0
    for rel in r.stdout.decode().split("\0"):
        p = root / rel
        if rel and p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    shared = root / "shared"
    if shared.is_dir():
        total += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file())
    return total


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def limits(carry: Path = CARRY, root: Path = ROOT) -> Limits:
    return Limits(folder_bytes(carry) if carry.exists() else 0, tree_bytes(root), 1)


def _git(*args: str) -> str | None:
    r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def prepare(out: Path = CARRY, verify: bool = True) -> dict[str, Any]:
    t0 = time.time()
    phases: dict[str, float] = {}
    marks = [t0]

    def lap(name: str) -> None:
        marks.append(time.time())
        phases[name] = round(marks[-1] - marks[-2], 1)

    out.mkdir(parents=True, exist_ok=True)
    for old in (*out.glob("*.tar.xz"), out / "manifest.json"):
        old.unlink(missing_ok=True)  # what this script writes (an older version's tarball too)
    sdist = fetch_sdist()
    lap("sdist")
    tarball = out / f"llama.cpp-{VERSION}-cuda-src.tar.xz"
    # The stripped tarball and its configure check are cached, keyed by the sdist and this
    # script (which holds the strip rules): xz and CMake are most of a cold run's time.
    key = hashlib.sha256((_sha256(sdist) + _sha256(Path(__file__))).encode()).hexdigest()[:16]
    cached = CACHE / "stripped" / f"{tarball.stem}-{key}.tar.xz"
    record = cached.with_suffix(".json")
    if cached.exists() and record.exists():
        shutil.copy2(cached, tarball)
        stripped = Stripped(tarball, **json.loads(record.read_text())["stripped"])
    else:
        stripped = strip_source(sdist, tarball)
    lap("strip")
    previous = json.loads(record.read_text()).get("configured") if record.exists() else None
    if verify and previous is not None and previous["ok"]:
        configured = previous
    elif verify:
        why = configure_check(tarball)
        configured = {"ok": why is None, "detail": why or "the stripped tree configures (CPU)"}
    else:
        configured = {"ok": None, "detail": "not verified (--no-verify)"}
    lap("configure_check")
    if not record.exists() or (verify and previous is None):
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tarball, cached)
        keep_ok = configured if configured["ok"] else None
        fields = {k: v for k, v in asdict(stripped).items() if k != "path"}
        record.write_text(json.dumps({"stripped": fields, "configured": keep_ok}) + "\n")
    wheels_dir = out / "wheels"
    if wheels_dir.exists():
        shutil.rmtree(wheels_dir)
    wheels_dir.mkdir()
    project = build_project_wheel(wheels_dir)
    lap("project_wheel")
    pkgs = needed(resolve(project), device_packages())
    for w in download_wheels(pkgs):
        shutil.copy2(w, wheels_dir / w.name)
    lap("dependency_wheels")
    wheels = [
        Wheel(w.name.split("-")[0], w.name.split("-")[1], w.name, w.stat().st_size, _sha256(w))
        for w in sorted(wheels_dir.glob("*.whl"))
    ]
    manifest: dict[str, Any] = {
        "llama_cpp_python_version": VERSION,
        "sdist": {"file": sdist.name, "sha256": _sha256(sdist), "bytes": sdist.stat().st_size},
        "source": {**asdict(stripped), "path": stripped.path.name},
        "cmake_configure_check": configured,
        "python": PY,
        "platforms": list(PLATFORMS),
        "wheels": [asdict(w) for w in wheels],
        "tree_commit": _git("rev-parse", "HEAD"),
        "tree_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    lim = limits(out)
    manifest["limits"] = {**asdict(lim), "total_bytes": lim.total_bytes, "problems": lim.problems}
    manifest["seconds"] = round(time.time() - t0, 1)
    manifest["phase_seconds"] = phases
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/gpu/prepare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=CARRY, help=f"the carry folder ({CARRY_REL})")
    ap.add_argument("--no-verify", action="store_true", help="skip the CMake configure check")
    a = ap.parse_args(argv)
    m = prepare(a.out.resolve(), verify=not a.no_verify)
    lim = m["limits"]
    src = m["source"]
    print(
        f"llama.cpp {VERSION} source: {src['files']} files, {src['raw_bytes'] / MIB:.1f} MiB "
        f"-> {src['bytes'] / MIB:.2f} MiB xz; configure: {m['cmake_configure_check']['detail']}"
    )
    print(
        f"wheels: {len(m['wheels'])} ("
        + ", ".join(f"{w['name']} {w['version']}" for w in m["wheels"])
        + f"), {sum(w['bytes'] for w in m['wheels']) / MIB:.2f} MiB"
    )
    print(
        f"{a.out.resolve()}: {lim['carry_bytes'] / MIB:.2f} MiB; with the tree "
        f"({lim['tree_bytes'] / MIB:.2f} MiB) {lim['total_bytes'] / MIB:.2f} MiB of the device "
        f"tool's 64 MiB; 1 carried path ({m['seconds']} s: "
        + ", ".join(f"{k} {v}" for k, v in m["phase_seconds"].items())
        + ")"
    )
    for p in lim["problems"]:
        print(f"PROBLEM: {p}", file=sys.stderr)
    if m["cmake_configure_check"]["ok"] is False:
        print(f"PROBLEM: the stripped tree does not configure: {m['cmake_configure_check']['detail']}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 1 if lim["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
