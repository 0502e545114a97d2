"""Commit a GPU kit run: its report, checked against bench/gpu/report.schema.json, copied to
bench/results/gpu-<card>.json and .md, <card> being the card's data/gpus.json id.

    python -m bench.gpu.publish DIR     (DIR: what `bench/gpu/run --out DIR` wrote)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from bench.gpu.report import render, validate

RESULTS = Path(__file__).resolve().parents[1] / "results"


def publish(run_dir: Path, results: Path = RESULTS) -> tuple[Path, Path]:
    doc = json.loads((run_dir / "gpu-kit.json").read_text())
    validate(doc)
    if doc["mode"] != "device" or not doc["card"]:
        raise ValueError(
            f"{run_dir}: a {doc['mode']} run without a card; only device runs are committed"
        )
    card = doc["card"]["catalog_id"] or re.sub(r"[^a-z0-9]+", "-", doc["card"]["nvml_name"].lower())
    results.mkdir(parents=True, exist_ok=True)
    js, md = results / f"gpu-{card}.json", results / f"gpu-{card}.md"
    js.write_text(json.dumps(doc, indent=2) + "\n")
    md.write_text(render(doc))
    return js, md


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    for p in publish(Path(sys.argv[1])):
        print(p)
