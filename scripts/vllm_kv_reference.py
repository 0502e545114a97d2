"""Write tests/fixtures/vllm_kv_reference.json: vLLM's own KV cache spec for every text-generation
architecture of its registry that transformers can build.

Run from the repository root with the project venv (it drives the vLLM venv made by .ci/vllm.sh):

    .venv/bin/python scripts/vllm_kv_reference.py [ARCHITECTURE ...]

Named architectures are re-derived and merged into the committed file (the others kept as they
are); with none, every architecture is (about 15 minutes on 2 cores).

For each architecture data/vllm_registry.json lists as "text" with a transformers model_type:
tests/support/hf_meta_layout.py builds the checkpoint layout (transformers' model class on the
meta device: config.json + a safetensors header over a sparse hole), then
tests/support/vllm_kv_spec.py builds vLLM's own model class for it on the meta device and reads
every layer's KV cache spec. The figures are kept as test data so `make test` need not rebuild
vLLM's side for every architecture; tests/models/test_vllm_coverage.py re-derives a sample live.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.vllm_coverage import OUT, build_cases, buildable, vllm_specs  # noqa: E402


def main() -> None:
    only = set(sys.argv[1:])
    every = buildable()
    unknown = only - {c["architecture"] for c in every}
    if unknown:
        sys.exit(f"not a buildable text architecture: {sorted(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        cases = [c for c in every if not only or c["architecture"] in only]
        built = build_cases(cases, t)
        ok = [c for c, b in zip(cases, built, strict=True) if b["ok"]]
        specs = {s["architecture"]: s for s in vllm_specs(ok, t)}
    reg = json.loads((ROOT / "entrypoint/gpu_preflight/data/vllm_registry.json").read_text())
    doc = {
        "vllm_version": reg["vllm_version"],
        "transformers_version": reg["transformers_version"],
        "generated_by": "scripts/vllm_kv_reference.py",
        "architectures": {
            c["architecture"]: {
                "model_type": c["model_type"],
                "built": b["ok"],
                "build_error": b["error"],
                "vllm": specs.get(c["architecture"]),
            }
            for c, b in zip(cases, built, strict=True)
        },
    }
    if only:
        kept = json.loads(OUT.read_text())
        if (kept["vllm_version"], kept["transformers_version"]) != (
            doc["vllm_version"],
            doc["transformers_version"],
        ):
            sys.exit(f"{OUT} names other versions: re-derive every architecture")
        kept["architectures"].update(doc["architectures"])
        doc = kept
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    n_ok = sum(1 for v in doc["architectures"].values() if v["vllm"] and v["vllm"]["ok"])
    print(
        f"wrote {OUT}: {len(cases)} text architectures with a model_type re-derived, "
        f"{len(ok)} built; {n_ok} in the file with vLLM's spec"
    )


if __name__ == "__main__":
    main()
