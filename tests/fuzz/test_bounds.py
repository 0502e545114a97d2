"""Time and memory per hostile input, measured in a fresh subprocess: files declaring 10^8 layers,
2^31 keys, millions of strings, or thousands of entries must be refused (or read) in under 2 s and
256 MiB of RSS growth over the process's base."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from tests.fuzz.conftest import CASES
from tests.support.gguf_factory import raw_gguf, raw_llama_kvs, raw_llama_tensors

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 2.0
MIB_OVER_BASE = 256

RUNNER = r"""
import json, resource, sys, time
from pathlib import Path
from gpu_preflight.models.gguf_file import read_gguf
from gpu_preflight.models.hf_dir import read_hf_dir
from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.plan.tiers import load_tiers
from gpu_preflight.probe.simulate import simulate
from gpu_preflight.profile import read_profile
from gpu_preflight.inputs.errors import InvalidInput
import jsonschema  # imported lazily by the loaders: part of the base, not of a case
LOAD = {
    "gguf": read_gguf, "hf": read_hf_dir, "models": load_catalog, "profile": read_profile,
    "tiers": lambda p: load_tiers({"PREFLIGHT_TIERS_FILE": str(p)}),
    "scenario": lambda p: simulate(str(p)),
}
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    raise KeyError(field)
def reset_peak():
    # Linux >= 4.0: "5" resets VmHWM (the peak RSS) to the current RSS, so each case's peak is
    # its own, not the import's. Where it cannot be reset, ru_maxrss (a lifetime peak) is used.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
RESETS = reset_peak()
def rss():
    if RESETS:
        return status("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def start_case():
    reset_peak()
    return status("VmRSS") if RESETS else rss()
cases = json.loads(sys.argv[1])
LOAD["gguf"](Path(cases[0][1]))  # warm-up on the valid file: caches and imports in the base
out = []
base = start_case()
hold = bytearray(64 * 2**20)  # control: the measure must see a 64 MiB allocation
out.append(["control", "control-64MiB", 0.0, rss() - base, "ok"])
del hold
for kind, path in cases:
    base = start_case()
    start = time.monotonic()
    try:
        LOAD[kind](Path(path))
        result = "ok"
    except InvalidInput as exc:
        result = "error: " + str(exc)[:300]
    out.append([kind, path, time.monotonic() - start, rss() - base, result])
print(json.dumps(out))
"""


def _sparse(path: Path, head: bytes, size: int) -> Path:
    with path.open("wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def _cases(d: Path) -> list[tuple[str, str]]:
    tensors, data = raw_llama_tensors()
    kvs = raw_llama_kvs()
    cases: list[tuple[str, Path]] = []

    def gguf(name: str, content: bytes) -> None:
        p = d / name
        p.write_bytes(content)
        cases.append(("gguf", p))

    gguf("valid.gguf", raw_gguf(kvs, tensors, data_bytes=data))
    for n, kind in [(10**7, "u32"), (10**8, "u32"), (2**31, "u64"), (2**63, "u64")]:
        other = [e for e in kvs if e[0] != "llama.block_count"]
        gguf(
            f"layers-{n}.gguf",
            raw_gguf([*other, ("llama.block_count", kind, n)], tensors, data_bytes=data),
        )
    # Lying counts in big sparse files (all zeros past the header: every "key" reads as empty).
    for name, nt, nkv in [
        ("kv", 0, 2**16),
        ("kv-max", 0, 2**40),
        ("tensors", 2**16, 0),
        ("t2", 2**31, 0),
    ]:
        head = b"GGUF" + struct.pack("<IQQ", 3, nt, nkv)
        cases.append(("gguf", _sparse(d / f"count-{name}.gguf", head, 2**34)))
    # A string declaring 8 GiB, in a 16 GiB sparse file.
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**33)
    cases.append(("gguf", _sparse(d / "string.gguf", head, 2**34)))
    # Vocabulary-sized string arrays, and as many kept short arrays as the header allows.
    gguf(
        "vocab.gguf",
        raw_gguf(
            [*kvs, ("tokenizer.ggml.tokens", "arr", ("str", [""] * 2**21))],
            tensors,
            data_bytes=data,
        ),
    )
    short = [(f"x.{i}", "arr", ("u64", list(range(10**9, 10**9 + 4096)))) for i in range(70)]
    gguf("short-arrays.gguf", raw_gguf([*kvs, *short], tensors, data_bytes=data))
    # 65536 tensor infos of 8 dimensions each.
    many = [(f"t{i}", (1,) * 8, 0, 0) for i in range(2**15)]
    gguf("tensor-infos.gguf", raw_gguf(kvs, many, data_bytes=data))

    # config.json / catalog / scenario / profile / tiers declaring huge sizes or counts.
    hf = d / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "num_hidden_layers": 10**8,
                "hidden_size": 64,
                "num_attention_heads": 4,
                "vocab_size": 100,
            }
        )
    )
    (hf / "model.safetensors").write_bytes(b"\0" * 16)
    cases.append(("hf", hf))
    catalog = json.loads((ROOT / "entrypoint/gpu_preflight/data/models.json").read_text())
    one = catalog["models"][0]
    big = {**catalog, "models": [{**one, "arch": {**one["arch"], "n_layers": 10**8}}]}
    (d / "models-layers.json").write_text(json.dumps(big))
    cases.append(("models", d / "models-layers.json"))
    many_models = {**catalog, "models": [{**one, "id": f"m{i}"} for i in range(5000)]}
    (d / "models-many.json").write_text(json.dumps(many_models))
    cases.append(("models", d / "models-many.json"))
    # At the limits (accepted or not, within the time and memory bounds).
    at_limit = {**catalog, "models": [{**one, "id": f"m{i}", "draft": None} for i in range(1024)]}
    (d / "models-1024.json").write_text(json.dumps(at_limit))
    cases.append(("models", d / "models-1024.json"))
    scenario = json.loads((ROOT / "tests/fixtures/nvml/h100_sxm.json").read_text())
    limit = {
        **scenario,
        "devices": [{**scenario["devices"][0], "uuid": f"GPU-{i}"} for i in range(64)],
    }
    (d / "scenario-64.json").write_text(json.dumps(limit))
    cases.append(("scenario", d / "scenario-64.json"))
    scenario["devices"] = scenario["devices"] * 5000
    (d / "scenario.json").write_text(json.dumps(scenario))
    cases.append(("scenario", d / "scenario.json"))
    (d / "profile.json").write_text(json.dumps({"schema_version": 1, "notes": ["x"] * 500_000}))
    cases.append(("profile", d / "profile.json"))
    tiers = json.loads((ROOT / "entrypoint/gpu_preflight/data/tiers.json").read_text())
    tiers["tiers"] = tiers["tiers"] * 600
    (d / "tiers.json").write_text(json.dumps(tiers)[: 2**20])
    cases.append(("tiers", d / "tiers.json"))
    (d / "tiers-many.json").write_text(
        json.dumps({**tiers, "tiers": tiers["tiers"][:2000]})[: 2**20 - 1]
    )
    cases.append(("tiers", d / "tiers-many.json"))
    return [(k, str(p)) for k, p in cases]


def test_time_and_memory_per_hostile_input(tmp_path):
    cases = _cases(tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'entrypoint'}{os.pathsep}{ROOT}"}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout
    rows = json.loads(proc.stdout)
    CASES["bounds"] += len(rows)
    slow = [r for r in rows if r[2] >= SECONDS]
    fat = [r for r in rows if r[3] >= MIB_OVER_BASE]
    assert not slow and not fat, "\n".join(
        f"{r[1]}: {r[2]:.2f} s, +{r[3]:.0f} MiB" for r in slow + fat
    )
    control = rows.pop(0)
    assert control[3] >= 60, f"the RSS measure missed a 64 MiB allocation: {control}"
    by_name = {Path(r[1]).name: r[4] for r in rows}
    assert by_name["valid.gguf"] == "ok"
    # A 2M-entry vocabulary is allowed (real: <= 262k); so are 1024 models and 64 GPUs.
    read_ok = {"valid.gguf", "vocab.gguf", "models-1024.json", "scenario-64.json"}
    assert all(by_name[n] == "ok" for n in read_ok), {n: by_name[n] for n in read_ok}
    refused = [n for n in by_name if n not in read_ok]
    assert all(by_name[n].startswith("error: ") for n in refused), {n: by_name[n] for n in refused}
    print("\n".join(f"{Path(r[1]).name:24} {r[2]:.3f} s +{r[3]:.0f} MiB {r[4][:90]}" for r in rows))
