"""A small sparse GGUF for every architecture the ``gguf`` package lists tensors for.

What llama.cpp's loader requires of each architecture (its hparams keys and every tensor with its
shape) is not written out by hand here: llama.cpp tells it. ``discover`` starts from a few common
keys and no tensors and runs the real ``llama-fit-params`` on the file again and again, reading its
error each time (src/llama-model-loader.cpp):

- ``key not found in model: K`` / ``array key not found in model: K``: the key is added, with a
  small value for its kind (``_guess``);
- ``key K has wrong type A but expected type B``: the value is rewritten as B;
- ``missing tensor 'T'``: the tensor is added (the shape of the same tensor of another block when
  one is known, else a guess);
- ``tensor 'T' has wrong shape; expected E, got G`` (check_tensor_dims): the shape becomes E.

It stops when llama.cpp loads the file and prints its memory breakdown, or at an error it cannot
act on (an assertion, a crash), which becomes the architecture's reason. ``python -m
tests.support.gguf_archs`` writes the result to ``data/gguf_archs.json`` (committed: the tests
read it, so they need no discovery), naming the llama.cpp build it ran.

Per-architecture keys llama.cpp reads optionally but which decide the model's shape (which layers
are recurrent, MoE sizes) are in ``ARCH_KEYS``: without them the discovery would find a plainer
model than the architecture is.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import MODEL_ARCH_NAMES, MODEL_TENSORS, GGMLQuantizationType, GGUFValueType, GGUFWriter

from tests.support.gguf_factory import _add_tokenizer, _write_sparse

DATA = Path(__file__).parent / "data" / "gguf_archs.json"
N_LAYERS = 6
N_EMBD = 256
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 512
VOCAB = 512
CTX_TRAIN = 8192
MAX_STEPS = 600
VT = GGUFValueType
_VT_NAME = {
    "u8": VT.UINT8,
    "i8": VT.INT8,
    "u16": VT.UINT16,
    "i16": VT.INT16,
    "u32": VT.UINT32,
    "i32": VT.INT32,
    "f32": VT.FLOAT32,
    "bool": VT.BOOL,
    "str": VT.STRING,
    "arr": VT.ARRAY,
    "u64": VT.UINT64,
    "i64": VT.INT64,
    "f64": VT.FLOAT64,
}
_FLOATS = {VT.FLOAT32, VT.FLOAT64}
# A key is (name, value type, value, element type of an array or None).
Key = tuple[str, str, Any, str | None]
# A tensor is (name, ggml shape ne0 first, ggml type name).
Tensor = tuple[str, tuple[int, ...], str]


def _kv_heads(pattern: Iterable[int]) -> list[int]:
    return list(pattern)


# Keys that shape an architecture beyond the common ones, from each src/models/<arch>.cpp
# load_arch_hparams. Hybrids read which layers are recurrent from head_count_kv (0: recurrent;
# jamba.cpp, granite-hybrid.cpp, lfm2.cpp, plamo2.cpp, kimi-linear.cpp, nemotron-h.cpp with
# feed_forward_length 0 too); MoE architectures need their expert counts.
_HYBRID_KV = [0, 0, N_HEAD_KV, 0, 0, N_HEAD_KV]
_MOE = [
    ("{arch}.expert_count", "u32", 4, None),
    ("{arch}.expert_used_count", "u32", 2, None),
    ("{arch}.expert_feed_forward_length", "u32", 128, None),
]
# qwen3next.cpp's gated DeltaNet: 4 key heads of 64, 8 value heads of 64 (inner 512), conv 4
_DELTANET: list[Key] = [
    ("{arch}.full_attention_interval", "u32", 3, None),
    ("{arch}.ssm.conv_kernel", "u32", 4, None),
    ("{arch}.ssm.state_size", "u32", 64, None),
    ("{arch}.ssm.group_count", "u32", 4, None),
    ("{arch}.ssm.time_step_rank", "u32", 8, None),
    ("{arch}.ssm.inner_size", "u32", 512, None),
    ("{arch}.rope.dimension_count", "u32", 32, None),
]
_MLA: list[Key] = [
    ("{arch}.attention.head_count_kv", "u32", 1, None),
    ("{arch}.attention.key_length", "u32", 96, None),
    ("{arch}.attention.value_length", "u32", 64, None),
    ("{arch}.attention.key_length_mla", "u32", 96, None),
    ("{arch}.attention.value_length_mla", "u32", 64, None),
    ("{arch}.attention.kv_lora_rank", "u32", 64, None),
    ("{arch}.attention.q_lora_rank", "u32", 64, None),
    ("{arch}.rope.dimension_count", "u32", 32, None),
    ("{arch}.leading_dense_block_count", "u32", 1, None),
    ("{arch}.expert_shared_count", "u32", 1, None),
]
ARCH_KEYS: dict[str, list[Key]] = {
    "jamba": [("{arch}.attention.head_count_kv", "arr", _HYBRID_KV, "u32")],
    "granitehybrid": [("{arch}.attention.head_count_kv", "arr", _HYBRID_KV, "u32")],
    "lfm2": [("{arch}.attention.head_count_kv", "arr", _HYBRID_KV, "u32")],
    "lfm2moe": [("{arch}.attention.head_count_kv", "arr", _HYBRID_KV, "u32"), *_MOE],
    # plamo2.cpp: Mamba-1 style, no groups
    "plamo2": [
        ("{arch}.attention.head_count_kv", "arr", _HYBRID_KV, "u32"),
        ("{arch}.ssm.group_count", "u32", 0, None),
    ],
    "kimi-linear": [("{arch}.attention.head_count_kv", "arr", _HYBRID_KV, "u32"), *_MOE],
    "nemotron_h": [
        ("{arch}.attention.head_count_kv", "arr", [0, N_HEAD_KV, 0, 0, N_HEAD_KV, 0], "u32"),
        ("{arch}.feed_forward_length", "arr", [0, 0, N_FF, 0, 0, N_FF], "u32"),
    ],
    "nemotron_h_moe": [
        ("{arch}.attention.head_count_kv", "arr", [0, N_HEAD_KV, 0, 0, N_HEAD_KV, 0], "u32"),
        ("{arch}.feed_forward_length", "arr", [0, 0, N_FF, 0, 0, N_FF], "u32"),
        *_MOE,
    ],
    # deci (Nemotron-NAS): a layer with 0 KV heads has no attention at all
    "deci": [
        ("{arch}.attention.head_count_kv", "arr", [N_HEAD_KV, 0, N_HEAD_KV, 1, 0, N_HEAD_KV], "u32")
    ],
    "qwen3next": [*_MOE, *_DELTANET],
    "qwen35": list(_DELTANET),
    "qwen35moe": [*_MOE, *_DELTANET],
    # MLA (deepseek2.cpp): 64 nope + 32 rope per q/k head, v 64, latent 64; the cache's
    # key_length / value_length are latent + rope and latent, of one KV head
    "deepseek2": [*_MLA, *_MOE],
    "glm-dsa": [*_MLA, *_MOE],
    # rwkv6qwen2.cpp, arwkv7.cpp: one token shift (n_embd_r() == n_embd)
    "rwkv6qwen2": [("{arch}.token_shift_count", "u32", 1, None)],
    "arwkv7": [("{arch}.token_shift_count", "u32", 1, None)],
    "mistral4": [*_MLA, *_MOE],
    # gemma4.cpp: the pattern is an array; the last shared_kv_layers read the KV of the last
    # sliding and full layer before them (llama-model.cpp create_memory reuse);
    # sliding layers with their own head size
    "gemma4": [
        ("{arch}.attention.sliding_window_pattern", "arr", [1, 1, 1, 0, 1, 0], "u32"),
        ("{arch}.attention.shared_kv_layers", "u32", 2, None),
        ("{arch}.attention.key_length_swa", "u32", 32, None),
        ("{arch}.attention.value_length_swa", "u32", 32, None),
    ],
    "gemma2": [("{arch}.attention.sliding_window", "u32", 512, None)],
    "gemma3": [("{arch}.attention.sliding_window", "u32", 512, None)],
    "cohere2": [("{arch}.attention.sliding_window", "u32", 512, None)],
    "gpt-oss": [("{arch}.attention.sliding_window", "u32", 512, None), *_MOE],
    "llama4": [("{arch}.attention.sliding_window", "u32", 512, None), *_MOE],
}
for _moe_arch in (
    "qwen2moe",
    "qwen3moe",
    "qwen3vlmoe",
    "olmoe",
    "granitemoe",
    "phimoe",
    "dbrx",
    "grok",
    "arctic",
    "deepseek",
    "deepseek2",
    "deepseek2-ocr",
    "mistral4",
    "glm4moe",
    "glm-dsa",
    "minimax-m2",
    "bailingmoe",
    "bailingmoe2",
    "ernie4_5-moe",
    "hunyuan-moe",
    "dots1",
    "afmoe",
    "grovemoe",
    "smallthinker",
    "llada-moe",
    "nomic-bert-moe",
    "jina-bert-v3",
    "exaone-moe",
    "mimo2",
    "step35",
    "rnd1",
):
    ARCH_KEYS.setdefault(_moe_arch, [*_MOE])

# llama-vocab.cpp: BERT-style vocabularies need their token type count
for _bert in ("bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3"):
    ARCH_KEYS.setdefault(_bert, []).append(("tokenizer.ggml.token_type_count", "u32", 2, None))


# Tensors llama.cpp's loader takes as optional (one of two spellings, TENSOR_NOT_REQUIRED) but
# the graph then needs: the discovery would never be asked for them. (suffix, layers; None:
# every layer.) phi3.cpp: the fused attn_qkv or q/k/v; qwen3next.cpp, qwen35*.cpp: the gated
# DeltaNet layers' attn_qkv and attn_gate; falcon-h1.cpp: ssm_norm.
_DELTANET_LAYERS = (0, 1, 3, 4)  # full_attention_interval 3 over 6 layers
SEED_TENSORS: dict[str, list[tuple[str, tuple[int, ...] | None]]] = {
    "phi3": [("attn_qkv.weight", None)],
    "qwen3next": [("attn_qkv.weight", _DELTANET_LAYERS), ("attn_gate.weight", _DELTANET_LAYERS)],
    "qwen35": [("attn_qkv.weight", _DELTANET_LAYERS), ("attn_gate.weight", _DELTANET_LAYERS)],
    "qwen35moe": [
        ("attn_qkv.weight", _DELTANET_LAYERS),
        ("attn_gate.weight", _DELTANET_LAYERS),
    ],
    "falcon-h1": [("ssm_norm.weight", None)],
}


def _seed(arch: str) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for suffix, layers in SEED_TENSORS.get(arch, []):
        for il in range(N_LAYERS) if layers is None else layers:
            out[f"blk.{il}.{suffix}"] = (1,)
    return out


def _guess(key: str) -> tuple[str, Any]:
    """A small, plausible value for a key llama.cpp requires, from its name."""
    k = key.split(".", 1)[-1]
    if any(s in k for s in ("epsilon", "eps")):
        return "f32", 1e-5
    if any(
        s in k
        for s in ("scale", "factor", "softcap", "multiplier", "freq_base", "alpha", "beta", "clamp")
    ):
        return "f32", 1.0
    if k.endswith(("causal", "norm", "use_parallel_residual", "swin_norm", "dt_b_c_rms")):
        return "bool", False
    table = {
        "ssm.conv_kernel": 4,
        "ssm.inner_size": 2 * N_EMBD,
        "ssm.state_size": 16,
        "ssm.time_step_rank": 8,
        "ssm.group_count": 1,
        "wkv.head_size": 64,
        "token_shift_count": 2,
        "shortconv.l_cache": 3,
        "attention.sliding_window": 512,
        "attention.q_lora_rank": 64,
        "attention.kv_lora_rank": 64,
        "attention.key_length_mla": 96,
        "attention.value_length_mla": 64,
        "rope.dimension_count": 32,
        "leading_dense_block_count": 1,
        "expert_shared_count": 1,
        "expert_count": 4,
        "expert_used_count": 2,
        "expert_feed_forward_length": 128,
        "expert_shared_feed_forward_length": 128,
        "expert_gating_func": 1,
        "decoder_start_token_id": 0,
        "attention.relative_buckets_count": 32,
        "attention.shared_kv_layers": 2,
        "altup.active_idx": 0,
        "altup.num_inputs": 4,
        "embedding_length_per_layer_input": 64,
        "rescale_every_n_layers": 6,
        "time_mix_extra_dim": 32,
        "time_decay_extra_dim": 64,
        "attention.decay_lora_rank": 64,
        "attention.iclr_lora_rank": 64,
        "attention.value_residual_mix_lora_rank": 32,
        "attention.gate_lora_rank": 64,
        "full_attention_interval": 3,
        "nextn_predict_layers": 0,
        "vocab_size": VOCAB,
        "pooling_type": 1,
        "features_length": N_EMBD,
        "moe_every_n_layers": 2,
        "interleave_moe_layer_step": 2,
        "expert_group_count": 0,
        "expert_group_used_count": 0,
    }
    if k in table:
        return "u32", table[k]
    if "count" in k or "layers" in k or "every" in k or "step" in k:
        return "u32", 2
    return "u32", 64


@dataclass(frozen=True)
class ArchCase:
    """One architecture's file as llama.cpp accepts it, or the reason it does not."""

    arch: str
    keys: tuple[Key, ...]
    tensors: tuple[Tensor, ...]
    loads: bool
    reason: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "keys": [list(k) for k in self.keys],
            "tensors": [[n, list(s), t] for n, s, t in self.tensors],
            "loads": self.loads,
            "reason": self.reason,
        }

    @staticmethod
    def from_json(arch: str, d: dict[str, Any]) -> ArchCase:
        return ArchCase(
            arch,
            tuple((k[0], k[1], k[2], k[3]) for k in d["keys"]),
            tuple((n, tuple(s), t) for n, s, t in d["tensors"]),
            bool(d["loads"]),
            str(d.get("reason", "")),
        )


def gguf_archs() -> list[str]:
    """The architectures the ``gguf`` package lists tensors for (its MODEL_TENSORS)."""
    return sorted(MODEL_ARCH_NAMES[a] for a in MODEL_TENSORS)


def base_keys(arch: str, more: Sequence[Key] = ()) -> list[Key]:
    f = "{arch}."
    keys: list[Key] = [
        (f + "context_length", "u32", CTX_TRAIN, None),
        (f + "embedding_length", "u32", N_EMBD, None),
        (f + "block_count", "u32", N_LAYERS, None),
        (f + "feed_forward_length", "u32", N_FF, None),
        (f + "attention.head_count", "u32", N_HEAD, None),
        (f + "attention.head_count_kv", "u32", N_HEAD_KV, None),
        (f + "attention.layer_norm_rms_epsilon", "f32", 1e-6, None),
        (f + "attention.layer_norm_epsilon", "f32", 1e-5, None),
        ("general.file_type", "u32", 1, None),
    ]
    extra = {k: (k, t, v, s) for k, t, v, s in [*ARCH_KEYS.get(arch, []), *more]}
    out = [extra.pop(k, (k, t, v, s)) for k, t, v, s in keys]
    out += list(extra.values())
    return [(k.format(arch=arch), t, v, s) for k, t, v, s in out]


def write_case(path: Path, arch: str, keys: Iterable[Key], tensors: Iterable[Tensor]) -> Path:
    """The sparse GGUF of one case: these keys, a byte-level tokenizer of VOCAB tokens, and
    these tensors (data a hole)."""
    w = GGUFWriter(str(path), arch)
    for name, kind, value, sub in keys:
        vt = _VT_NAME[kind]
        if vt == VT.ARRAY:
            assert sub is not None
            w.add_key_value(name, list(value), vt, _VT_NAME[sub])
        else:
            w.add_key_value(name, value, vt)
    _add_tokenizer(w, VOCAB)
    plan = [(n, tuple(reversed(s)), GGMLQuantizationType[t]) for n, s, t in tensors]
    return _write_sparse(w, path, plan)


# llama-fit-params logs the loader's error through common/log.cpp's worker thread and then
# throws out of main (common/fit.cpp: "failed to load model"); std::terminate aborts before the
# worker writes the line. This shim, preloaded, gives the worker 25 ms first (SHIM_SLEEP_MS; a
# run whose error is lost anyway is repeated with longer waits).
_SHIM = r"""
#include <chrono>
#include <cstdlib>
#include <exception>
#include <thread>
static void on_terminate() {
    const char * ms = std::getenv("SHIM_SLEEP_MS");
    std::this_thread::sleep_for(std::chrono::milliseconds(ms ? std::atoi(ms) : 25));
    std::_Exit(134);
}
__attribute__((constructor)) static void install() { std::set_terminate(on_terminate); }
"""


def build_shim(work: Path) -> Path:
    src, lib = work / "shim.cpp", work / "shim.so"
    src.write_text(_SHIM)
    subprocess.run(["g++", "-shared", "-fPIC", "-O1", "-o", str(lib), str(src)], check=True)
    return lib


def fit_run(
    binary: Path, path: Path, shim: Path | None = None, timeout: float = 30, wait_ms: int = 25
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LD_PRELOAD": str(shim), "SHIM_SLEEP_MS": str(wait_ms)} if shim else None
    return subprocess.run(
        [str(binary), "-m", str(path), "-c", "4096", "-ngl", "0", "--fit-print", "on"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


_KEY_MISSING = re.compile(r"(array )?key not found in model: (\S+)")
_KEY_TYPE = re.compile(r"key (\S+) has wrong type (\w+) but expected type (\w+)")
_T_MISSING = re.compile(r"missing tensor '([^']+)'|tensor '([^']+)' not found")
_T_SHAPE = re.compile(r"tensor '([^']+)' has wrong shape; expected ([0-9, ]+), got")
_BLK = re.compile(r"^blk\.\d+\.")


def _error(out: str, returncode: int = 0) -> str:
    """The loader's or ggml's own words (an assertion with its file and line), or the signal."""
    lines = [
        ln
        for ln in out.splitlines()
        if re.search(r"error|failed|GGML_ASSERT|abort", ln, re.I)
        and "failed to load model" not in ln
    ]
    why = re.sub(r"^[0-9.]+ [A-Z] ", "", lines[-1].strip()) if lines else ""
    why = re.sub(r"\S*/vendor/llama\.cpp/", "", why)
    if returncode < 0 and not why:
        why = f"llama-fit-params crashed (signal {-returncode}) building the graph"
    elif not why:
        why = f"llama-fit-params exited {returncode} without the loader's reason"
    return why[:300]


def _convert(value: Any, kind: str) -> Any:
    vt = _VT_NAME[kind]
    if vt in _FLOATS:
        return float(value) if not isinstance(value, list) else 1.0
    if vt == VT.BOOL:
        return bool(value)
    if vt == VT.STRING:
        return str(value)
    return int(value) if not isinstance(value, list) else int(max(value))


def _tensor_type(shape: tuple[int, ...]) -> str:
    """F16 for matrices, F32 for vectors and for short rows (convolution kernels, SSM
    parameters), as converters keep them: llama.cpp's SSM and RWKV ops take those in F32."""
    return "F16" if len(shape) > 1 and shape[0] % 32 == 0 else "F32"


def discover(
    arch: str, binary: Path, work: Path, shim: Path | None = None, more: Sequence[Key] = ()
) -> ArchCase:
    """``more``: keys beyond ARCH_KEYS that shape the architecture (gguf_new_archs.py)."""
    keys = {k: (k, t, v, s) for k, t, v, s in base_keys(arch, more)}
    tensors: dict[str, tuple[int, ...]] = _seed(arch)
    path = work / f"{arch}.gguf"
    why = "too many steps"
    for _ in range(MAX_STEPS):
        write_case(path, arch, keys.values(), [(n, s, _tensor_type(s)) for n, s in tensors.items()])
        try:
            for wait in (25, 200, 1000):
                r = fit_run(binary, path, shim, wait_ms=wait)
                out = r.stdout + r.stderr
                if r.returncode != 134 or "error loading model" in out:
                    break
        except subprocess.TimeoutExpired:
            why = "llama-fit-params timed out"
            break
        if r.returncode == 0 and "Host" in r.stdout:
            return ArchCase(
                arch,
                tuple(keys.values()),
                tuple((n, s, _tensor_type(s)) for n, s in tensors.items()),
                True,
            )
        if m := _T_SHAPE.search(out):
            shape = tuple(int(x) for x in m[2].split(","))
            if tensors.get(m[1]) == shape:
                why = _error(out)
                break
            tensors[m[1]] = shape
            continue
        if m := _T_MISSING.search(out):
            name = m[1] or m[2]
            if name in tensors:
                why = _error(out)
                break
            suffix = _BLK.sub("", name)
            same = next(
                (s for n, s in tensors.items() if _BLK.match(n) and _BLK.sub("", n) == suffix),
                None,
            )
            tensors[name] = same or (1,)
            continue
        if m := _KEY_TYPE.search(out):
            k, _, want = m[1], m[2], m[3]
            old = keys.get(k)
            if want not in _VT_NAME or old is None or old[1] == want:
                why = _error(out)
                break
            if want == "arr":
                keys[k] = (k, "arr", [old[2]] * N_LAYERS, old[1])
            else:
                keys[k] = (k, want, _convert(old[2], want), None)
            continue
        if m := _KEY_MISSING.search(out):
            k = m[2]
            if k in keys:
                why = _error(out)
                break
            kind, value = _guess(k)
            keys[k] = (k, "arr", [value] * N_LAYERS, kind) if m[1] else (k, kind, value, None)
            continue
        why = _error(out, r.returncode)
        break
    return ArchCase(
        arch,
        tuple(keys.values()),
        tuple((n, s, _tensor_type(s)) for n, s in tensors.items()),
        False,
        why,
    )


def load_cases(path: Path = DATA) -> dict[str, ArchCase]:
    raw = json.loads(path.read_text())
    return {a: ArchCase.from_json(a, d) for a, d in raw["archs"].items()}


def regenerate(
    data: Path,
    todo: Sequence[str],
    only: set[str],
    header: Mapping[str, str],
    workers: int,
    more: Mapping[str, Sequence[Key]] | None = None,
) -> int:
    """Discover ``todo`` (the ``only`` ones where given, the others kept from ``data``) and write
    ``data``: this module's and gguf_new_archs.py's generator."""
    from tests.support.llama_fit import fit_params_binary

    binary = fit_params_binary()
    old = json.loads(data.read_text())["archs"] if data.exists() and only else {}
    cases: dict[str, Any] = dict(old)
    extra = more or {}
    with tempfile.TemporaryDirectory() as tmp:
        shim = build_shim(Path(tmp))
        todo = [a for a in todo if not only or a in only]
        # the runs mostly wait on llama-fit-params starting up: a few at a time
        with ThreadPoolExecutor(max_workers=workers) as pool:
            runs = pool.map(lambda a: discover(a, binary, Path(tmp), shim, extra.get(a, ())), todo)
            for case in runs:
                cases[case.arch] = case.as_json()
                status = "loads" if case.loads else "FAILS: " + case.reason
                print(f"{case.arch:20s} {status}", flush=True)
    data.parent.mkdir(exist_ok=True)
    data.write_text(
        json.dumps(
            {"llama.cpp": str(binary), **header, "archs": dict(sorted(cases.items()))},
            indent=None,
            separators=(",", ":"),
        )
        + "\n"
    )
    return 0


def main(argv: list[str]) -> int:
    header = {"made_by": "python -m tests.support.gguf_archs"}
    return regenerate(DATA, gguf_archs(), set(argv), header, workers=4)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
