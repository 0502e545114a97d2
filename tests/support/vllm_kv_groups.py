"""Run inside the vLLM venv: vLLM's own KV cache grouping for pipeline stages.

Reads a JSON list of cases {"sliding": [bool per layer], "window": int, "partition": [layers per
stage], "kv_heads": int, "head_dim": int, "block_size": int} and prints, per case, one line
"RESULT {json}" with each stage's bytes per block in pages of one layer, computed by vLLM 0.32's
``_get_kv_cache_groups_uniform_page_size``, ``_project_kv_cache_groups_to_worker`` and
``_get_kv_cache_bytes_per_block`` (vllm/v1/core/kv_cache_utils.py), the number of global groups,
and the layers each global group holds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from vllm.v1.core import kv_cache_utils as u
from vllm.v1.kv_cache_interface import FullAttentionSpec, SlidingWindowSpec
from vllm.v1.kv_cache_layout import KVCacheLayout


def main() -> None:
    for case in json.loads(Path(sys.argv[1]).read_text()):
        common = {
            "block_size": case["block_size"],
            "num_kv_heads": case["kv_heads"],
            "head_size": case["head_dim"],
            "dtype": torch.bfloat16,
        }
        full = FullAttentionSpec(**common)
        sliding = SlidingWindowSpec(**common, sliding_window=case["window"])
        specs = {
            f"model.layers.{i}.self_attn.attn": (sliding if sw else full)
            for i, sw in enumerate(case["sliding"])
        }
        groups = u._get_kv_cache_groups_uniform_page_size(specs)
        page = full.page_size_bytes
        out = []
        start = 0
        for n in case["partition"]:
            worker = {k: v for k, v in specs.items() if start <= int(k.split(".")[2]) < start + n}
            start += n
            projected = u._project_kv_cache_groups_to_worker(groups, worker)
            per_layout = {
                layout.name: u._get_kv_cache_bytes_per_block(
                    [g for g in projected if g.layer_names], layout
                )
                for layout in (KVCacheLayout.LBHNC, KVCacheLayout.BLHNC)
            }
            assert len(set(per_layout.values())) == 1, per_layout
            out.append(next(iter(per_layout.values())) // page)
        print(
            "RESULT "
            + json.dumps(
                {
                    "stage_block_layers": out,
                    "n_groups": len(groups),
                    "group_layers": [len(g.layer_names) for g in groups],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
