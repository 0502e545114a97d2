"""The GPU kit (bench/gpu/, docs/gpu-kit.md): what travels fits the device tool's limits, and the
device command's rehearsal here writes a report of the schema with every check on a line.

The rehearsal runs the same entry script as the GPU machine (`bench/gpu/run --rehearse`), with
llama.cpp's CPU build (.ci/llama-cpp.sh) in place of the CUDA one and the four configurations
shrunk to a few MiB: plan, llama-fit-params and a served llama-server with its receipt must pass
for each; the GPU-only fields (NVML, the CUDA overhead) are null with a note.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
from bench.gpu import prepare_kit
from bench.gpu.kit import Kit, Run, compare_card, exit_breakdown, overhead
from bench.gpu.prepare_kit import (
    CARRY_PATHS_LIMIT,
    MIB,
    TRAVEL_LIMIT_BYTES,
    VERSION,
    Limits,
    keep,
    needed,
)
from bench.gpu.publish import publish
from bench.gpu.report import SCHEMA, render

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "bench" / "gpu"
MAX_OUT_FILES = 8  # the device tool brings back at most 8 files from $OUT
MAX_OUT_FILE_BYTES = 16 * MIB


# -- pure parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kept"),
    [
        ("CMakeLists.txt", True),
        ("ggml/src/ggml-cuda/fattn.cu", True),
        ("ggml/src/ggml-cuda/template-instances/fattn-vec-instance-f16-f16.cu", True),
        ("ggml/src/ggml-cpu/ggml-cpu.c", True),
        ("ggml/src/ggml.c", True),
        ("ggml/src/ggml-vulkan/ggml-vulkan.cpp", False),
        ("ggml/src/ggml-metal/ggml-metal.m", False),
        ("ggml/src/ggml-sycl/CMakeLists.txt", False),
        ("tools/server/server.cpp", True),
        ("tools/fit-params/fit-params.cpp", True),
        ("tools/server/tests/unit/test_basic.py", False),
        ("tools/ui/CMakeLists.txt", True),
        ("tools/ui/src/app.html", False),
        ("tools/mtmd/test-1.jpeg", False),
        ("scripts/ui-assets.cmake", True),
        ("scripts/build-info.sh", False),
        ("docs/build.md", False),
        ("models/ggml-vocab-llama-bpe.gguf", False),
        ("tests/test-backend-ops.cpp", False),
        ("examples/simple/simple.cpp", False),
        ("src/llama-model.cpp", True),
        ("vendor/cpp-httplib/httplib.h", True),
        ("common/README.md", False),
    ],
)
def test_strip_keeps_what_a_cuda_build_of_the_two_targets_needs(path: str, kept: bool) -> None:
    assert keep(path) is kept


def test_limits_name_each_problem() -> None:
    ok = Limits(carry_bytes=14 * MIB, tree_bytes=3 * MIB, carried_paths=1)
    assert ok.problems == []
    over = Limits(carry_bytes=40 * MIB, tree_bytes=30 * MIB, carried_paths=9)
    text = " ".join(over.problems)
    assert "over the device tool's 64 MiB" in text
    assert "32 MiB target" in text
    assert "at most 8" in text


def test_wheels_walk_stops_at_what_the_device_has() -> None:
    """Only what the device lacks travels: the walk does not enter a package the image holds."""

    def item(name: str, *requires: str) -> dict[str, object]:
        return {"metadata": {"name": name, "version": "1.0", "requires_dist": list(requires)}}

    items = [
        item("gpu-preflight", "gguf>=0.10", "huggingface_hub>=1.0", "jsonschema",
             "pytest; extra == 'dev'"),
        item("gguf", "numpy>=1.17", "pyyaml"),
        item("huggingface-hub", "httpx2"),
        item("httpx2"),
        item("jsonschema", "rpds-py", "attrs"),
        item("rpds-py"),
        item("numpy"),
        item("PyYAML"),
        item("attrs"),
        item("pytest"),
    ]  # fmt: skip
    got = needed(items, {"numpy", "pyyaml", "huggingface-hub", "attrs"})
    assert [n for n, _ in got] == ["gguf", "jsonschema", "rpds-py"]


def test_exit_breakdown_reads_llama_cpp_table() -> None:
    """The table common/fit.cpp common_memory_breakdown_print writes at llama-server's exit
    (template_gpu and template_other, as printed)."""
    log = "\n".join([
        "common_memory_breakdown_print: | memory breakdown [MiB] | total   free    self   model   "
        "context   compute    unaccounted |",
        "common_memory_breakdown_print: |   - CUDA0 (H100 80GB HBM3) | 81079 = 74123 + (6262 = "
        "4403 +    1024 +     834) +         694 |",
        "common_memory_breakdown_print: |   - Host                 |                  573 =   "
        "410 +       0 +     163                |",
    ])  # fmt: skip
    rows = exit_breakdown(log)
    assert rows[0] == {
        "device": "CUDA0", "total_mib": 81079, "free_mib": 74123, "self_mib": 6262,
        "model_mib": 4403, "context_mib": 1024, "compute_mib": 834, "unaccounted_mib": 694,
    }  # fmt: skip
    assert rows[1]["device"] == "Host" and rows[1]["self_mib"] == 573
    assert rows[1]["unaccounted_mib"] is None


def test_probe_check_compares_a_card_with_its_published_figures() -> None:
    """The device-only comparison, on the profile `probe --simulate h100-sxm` writes (NVML
    fields as a real H100 SXM reports them; pinned and PCIe not measured in a simulation)."""
    r = subprocess.run(
        [sys.executable, "-m", "gpu_preflight.cli.main", "probe", "--simulate", "h100-sxm", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    profile = json.loads(r.stdout)
    status, summary, details, card = compare_card(profile, rehearse=False)
    assert card == {"nvml_name": "NVIDIA H100 80GB HBM3", "catalog_id": "h100-sxm"}
    rows = {row["what"]: row for row in details["rows"]}
    assert rows["memory total MiB"]["measured"] == rows["memory total MiB"]["published"] == 81559
    assert rows["compute capability"]["agrees"] and rows["PCIe width (max)"]["agrees"]
    assert rows["PCIe H2D GB/s"]["published"] == 63.0  # gen 5 x16: 32 GT/s x 16 x 128/130 / 8
    # a simulation measures no pinned memory: that row disagrees, so the check says so
    assert status == "fail" and "pinned-memory ceiling GiB" in summary
    profile["hardware"]["gpus"]["devices"][0]["total_bytes"] -= 2 * MIB
    assert "memory total MiB" in compare_card(profile, rehearse=False)[1]
    profile["hardware"]["gpus"]["devices"] = []
    assert compare_card(profile, rehearse=True)[0] == "skip"
    assert compare_card(profile, rehearse=False)[0] == "error"


def test_overhead_is_nvml_minus_the_logged_buffers(tmp_path: Path) -> None:
    from bench.gpu.kit import Clock

    kit = Kit(tmp_path, tmp_path, False, Clock(60), tmp_path)
    run = Run("llama-8b-32k", {}, tmp_path, 0)
    memory = [
        {"device": "CUDA0", "method": "nvml-pid", "measured_bytes": 6000 * MIB,
         "components": [{"name": "weights", "logged_bytes": 4403 * MIB},
                        {"name": "kv_cache", "logged_bytes": 1024 * MIB},
                        {"name": "compute", "logged_bytes": 100 * MIB}]},
        {"device": "CPU", "method": "rss-peak", "measured_bytes": 900 * MIB,
         "components": [{"name": "weights", "logged_bytes": 410 * MIB}]},
    ]  # fmt: skip
    exit_rows = [{"device": "CUDA0", "unaccounted_mib": 980}]
    overhead(kit, run, memory, exit_rows)
    gpu, cpu = kit.overhead_rows
    assert gpu["overhead_bytes"] == (6000 - 4403 - 1024 - 100) * MIB
    assert gpu["unaccounted_bytes"] == 980 * MIB and gpu["note"] is None
    assert cpu["overhead_bytes"] is None and cpu["note"].startswith("host RAM")


# -- prepare: what travels -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def carry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object], float]:
    """bench/gpu/prepare into a temporary folder (sdist and wheels cached under
    /var/cache/gpu-preflight/gpu-kit: PyPI is asked once)."""
    out = tmp_path_factory.mktemp("gpu-kit") / "carry"
    t0 = time.monotonic()
    manifest = prepare_kit.prepare(out, verify=True)
    return out, manifest, time.monotonic() - t0


def test_prepared_carry_fits_the_device_tool(carry: tuple[Path, dict[str, object], float]) -> None:
    out, manifest, seconds = carry
    lim = prepare_kit.limits(out)
    print(
        f"carry {lim.carry_bytes / MIB:.2f} MiB + tree {lim.tree_bytes / MIB:.2f} MiB, "
        f"prepared in {seconds:.0f} s"
    )
    assert lim.problems == []
    assert lim.total_bytes <= TRAVEL_LIMIT_BYTES
    assert lim.carried_paths <= CARRY_PATHS_LIMIT
    # the pinned source, stripped, and configurable (CPU: no nvcc here)
    tarball = out / f"llama.cpp-{VERSION}-cuda-src.tar.xz"
    assert tarball.exists() and tarball.stat().st_size < 8 * MIB
    assert manifest["cmake_configure_check"] == {
        "ok": True,
        "detail": "the stripped tree configures (CPU)",
    }
    names = {w.name.split("-")[0].lower() for w in (out / "wheels").glob("*.whl")}
    # the project and what the device image lacks; nothing it has (device-packages.txt)
    assert {"gpu_preflight", "gguf", "jsonschema", "docker"} <= names
    assert not names & {"numpy", "torch", "huggingface_hub", "click", "rich", "psutil", "pyyaml"}
    assert all(
        "cp312" in w.name or "abi3" in w.name or "none-any" in w.name
        for w in (out / "wheels").glob("*.whl")
    )


def test_carry_folder_is_ignored_by_git() -> None:
    r = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "-q", "bench/gpu/carry/manifest.json"],
        check=False,
    )
    assert r.returncode == 0, "bench/gpu/carry/ must be ignored by git (it is carried, not sent)"


# -- the rehearsal -------------------------------------------------------------------------------


def _cpu_build() -> Path:
    from tests.support.llama_fit import fit_params_binary

    return fit_params_binary().parent


@pytest.mark.llamacpp
def test_rehearsal_writes_a_report_of_the_schema(
    carry: tuple[Path, dict[str, object], float], tmp_path: Path
) -> None:
    if not (_cpu_build() / "llama-server").exists():
        pytest.skip("llama-server not built: run `make llama-cpp` (.ci/llama-cpp.sh)")
    out = tmp_path / "out"
    t0 = time.monotonic()
    r = subprocess.run(
        [str(KIT / "run"), "--rehearse", "--out", str(out), "--carry", str(carry[0]),
         "--work", str(tmp_path / "work")],
        capture_output=True, text=True, check=False, timeout=600,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)},
    )  # fmt: skip
    wall = time.monotonic() - t0
    print(r.stdout, f"rehearsal wall time {wall:.1f} s", sep="\n")
    doc = json.loads((out / "gpu-kit.json").read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(doc)
    # within what the device tool brings back
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= MAX_OUT_FILES
    assert all(p.stat().st_size < MAX_OUT_FILE_BYTES for p in files)
    assert (out / "gpu-kit.md").read_text() == render(doc)
    # one stdout line per check
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("[")]
    assert [ln.split("] ", 1)[1].split(":")[0] for ln in lines] == [
        c["name"].split(":")[0] for c in doc["checks"]
    ]
    status = {c["name"]: c["status"] for c in doc["checks"]}
    names = [c["name"] for c in doc["configs"]]
    assert names == ["llama-8b-32k", "qwen3-30b-a3b-ncmoe", "gpt-oss-20b", "llama-70b"]
    for n in names:
        for step in ("plan", "fit", "serve"):
            assert status[f"{step}:{n}"] == "pass", (step, n, r.stdout[-3000:])
    assert status["install"] == "pass" and status["build"] == "pass"
    # no GPU here: the GPU fields are null with their reason, never invented
    assert status["probe"] == "skip" and status["overhead"] == "skip"
    assert doc["card"] is None and doc["overhead"]["max_bytes"] is None
    assert all(row["nvml_process_bytes"] is None and row["note"] for row in doc["overhead"]["rows"])
    for cfg in doc["configs"]:
        assert cfg["fit"]["seconds"] > 0
        assert cfg["server"]["healthy_s"] is not None
        assert cfg["receipt_memory"]
    assert r.returncode == 0, r.stderr[-2000:]
    # only a device run is committed, under its card's data/gpus.json id
    with pytest.raises(ValueError, match="only device runs are committed"):
        publish(out, tmp_path / "results")
    doc.update(mode="device", backend="cuda",
               card={"nvml_name": "NVIDIA H100 80GB HBM3", "catalog_id": "h100-sxm"})  # fmt: skip
    (out / "gpu-kit.json").write_text(json.dumps(doc))
    js, md = publish(out, tmp_path / "results")
    assert (js.name, md.name) == ("gpu-h100-sxm.json", "gpu-h100-sxm.md")
    assert md.read_text().startswith("# GPU kit: NVIDIA H100 80GB HBM3")
    assert doc["wall_s"] < 120, f"the rehearsal took {doc['wall_s']} s (budget: well under 2 min)"
