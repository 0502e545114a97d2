"""Sparse test GGUFs for the architectures the pinned llama.cpp knows but PyPI's ``gguf`` does not.

The llama.cpp vendored in llama-cpp-python 0.3.36 names 27 architectures that gguf 0.19.0's
``MODEL_ARCH_NAMES`` lacks (deepseek4, kimi-k3, qwen4exp ...). Which ones, and which of them have
routed experts or a multi-head-latent cache, is read from that llama.cpp's own gguf-py
(``VENDORED``, gguf-py/gguf/constants.py of the llama-cpp-python 0.3.36 sdist) by THIS script
only: the package and the tests never import it. The keys and tensors of each file are then
found the way tests/support/gguf_archs.py finds them for the listed architectures: by running the
real llama-fit-params on the file until it loads (``discover``).

``python -m tests.support.gguf_new_archs [ARCH ...]`` (re-runnable; with ARCHs, only those are
redone) writes ``data/gguf_new_archs.json``, which the tests read (they need neither the sdist
nor a discovery run). ``VENDORED`` may be given with GGUF_PY_CONSTANTS.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from gguf import MODEL_ARCH_NAMES

from tests.support import gguf_archs
from tests.support.gguf_archs import _MLA, _MOE, ArchCase

DATA = Path(__file__).parent / "data" / "gguf_new_archs.json"
VENDORED = Path(
    os.environ.get(
        "GGUF_PY_CONSTANTS",
        "/tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py/gguf/constants.py",
    )
)


# Keys whose value llama.cpp checks beyond "present and of the right type" (an assertion or a
# refusal the discovery cannot act on), from each src/models/<arch>.cpp load_arch_hparams of the
# pinned llama.cpp:
# - deepseek4.cpp: expert_gating_func must be LLAMA_EXPERT_GATING_FUNC_TYPE_SQRT_SOFTPLUS (4,
#   llama-hparams.h); each layer's compression ratio one of 0, 4, 128 (0: no compressor);
# - glm5-next.cpp: GGML_ASSERT(dsv4_hc_mult == 4) ({arch}.hyper_connection.count), and its MLA
#   is nope-only (GGML_ASSERT(n_rot() == 0)): rope.dimension_count 0;
# - bailingmoe3.cpp: GGML_ASSERT(kda_gate_lower_bound < 0);
# - hrm-text.cpp: n_layer == layers_per_stack x h_cycles x (l_cycles + 1): 1 x 2 x 3 = 6;
# - qwen4exp.cpp: ssm_d_state x ssm_dt_rank == ssm_d_inner (value head 64 x 8 heads = 512).
ARCH_HINTS: dict[str, list[Any]] = {
    "deepseek4": [
        ("{arch}.expert_gating_func", "u32", 4, None),
        ("{arch}.attention.compress_ratios", "arr", [0] * 6, "u32"),
    ],
    "glm5-next": [
        ("{arch}.hyper_connection.count", "u32", 4, None),
        ("{arch}.rope.dimension_count", "u32", 0, None),
    ],
    "bailingmoe3": [("{arch}.kda.gate_lower_bound", "f32", -5.0, None)],
    "hrm_text": [
        ("{arch}.hrm.layers_per_stack", "u32", 1, None),
        ("{arch}.hrm.h_cycles", "u32", 2, None),
        ("{arch}.hrm.l_cycles", "u32", 2, None),
    ],
    "qwen4exp": [
        ("{arch}.ssm.conv_kernel", "u32", 4, None),
        ("{arch}.ssm.state_size", "u32", 64, None),
        ("{arch}.ssm.group_count", "u32", 4, None),
        ("{arch}.ssm.time_step_rank", "u32", 8, None),
        ("{arch}.ssm.inner_size", "u32", 512, None),
    ],
}


def vendored_constants(path: Path = VENDORED) -> ModuleType:
    """The pinned llama.cpp's gguf-py constants module, loaded from its file (not installed)."""
    spec = importlib.util.spec_from_file_location("vendored_gguf_constants", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: cannot load it (GGUF_PY_CONSTANTS names another path)")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up while being defined
    spec.loader.exec_module(mod)
    return mod


def new_archs(c: ModuleType) -> dict[str, list[Any]]:
    """Each architecture the vendored gguf-py names and PyPI's gguf does not, with the extra keys
    that shape it (routed experts: the tensor list has ffn_gate_exps; MLA: attn_kv_a_mqa)."""
    listed = set(MODEL_ARCH_NAMES.values())
    out: dict[str, list[Any]] = {}
    for arch, name in c.MODEL_ARCH_NAMES.items():
        if name in listed:
            continue
        tensors = set(c.MODEL_TENSORS.get(arch, ()))
        extra: list[Any] = []
        if c.MODEL_TENSOR.ATTN_KV_A_MQA in tensors:
            extra += _MLA
        if c.MODEL_TENSOR.FFN_GATE_EXP in tensors:
            extra += [k for k in _MOE if k[0] not in {e[0] for e in extra}]
        out[name] = [*extra, *ARCH_HINTS.get(name, [])]
    return dict(sorted(out.items()))


def load_new_cases() -> dict[str, ArchCase]:
    return gguf_archs.load_cases(DATA)


def main(argv: list[str]) -> int:
    archs = new_archs(vendored_constants())
    header = {"constants": str(VENDORED), "made_by": "python -m tests.support.gguf_new_archs"}
    return gguf_archs.regenerate(DATA, list(archs), set(argv), header, workers=2, more=archs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
