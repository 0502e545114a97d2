"""Property: the llama.cpp estimate is never under llama.cpp's own accounting, on any file it loads.

Hypothesis generates sparse GGUFs of real architectures (llama, qwen2, qwen3, gemma-2/3 with
sliding windows, two MoEs) cut to a few layers, with a random per-tensor type mix from the weight
types llama.cpp's CPU backend loads, tied or untied output, and random context, slots, batch
sizes, KV cache types and flash attention. For each, ``estimate_llamacpp`` (the planner's memory
model, on the file's header) is compared with the real ``llama-fit-params --fit-print on`` run on
the llama-server argv of the same settings (tests/support/llama_fit.py): the prediction must be at
or above llama.cpp for weights, KV (exact) and total, and the total within the stated error.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tests.support.gguf_factory import tensor_plan, write_gguf_plan
from tests.support.llama_fit import fit_params_binary, llama_fit

from gpu_preflight.memory.llamacpp import LlamaCppConfig, estimate_llamacpp
from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.resolve import resolve_model

MIB = 2**20
CATALOG = load_catalog()
T = GGMLQuantizationType
# Weight types llama.cpp's CPU backend has MUL_MAT/GET_ROWS kernels for (ggml-cpu type traits).
WEIGHT_TYPES = [
    T.F32,
    T.F16,
    T.BF16,
    T.Q4_0,
    T.Q4_1,
    T.Q5_0,
    T.Q5_1,
    T.Q8_0,
    T.Q2_K,
    T.Q3_K,
    T.Q4_K,
    T.Q5_K,
    T.Q6_K,
    T.IQ4_NL,
    T.IQ4_XS,
    T.MXFP4,
]
# (catalog id, tied): None = either; gemma-2/3 always tie (their loaders create no output.weight)
# and gpt-oss never does (llama.cpp requires its output.weight).
ARCHS = [
    ("llama-3.2-1b-instruct", None),
    ("qwen2.5-7b-instruct", None),
    ("qwen3-14b", None),
    ("gemma-2-9b-it", True),
    ("gemma-3-12b-it", True),
    ("qwen3-30b-a3b", None),
    ("gpt-oss-20b", False),
]
KV_TYPES = ["f16", "bf16", "f32", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]
# Stated error (README "How right it is", docs/memory.md): never under; total within 3 % median.
MEDIAN_OVER_PCT = 3.0
# One case: the compute buffer is an upper bound of ggml-alloc's placement, not its exact peak,
# and tiny cut-down models make a fixed allowance large in percent.
CASE_OVER_PCT, CASE_OVER_MIB = 12.0, 160
# Known conservative over-prediction: a tied Q2_K (repacked only on AVX512 builds) or IQ4_XS
# (same bytes per weight as the repacked MXFP4) token_embd is counted twice on the CPU.
AMBIGUOUS_TIED = {T.Q2_K, T.IQ4_XS}
EXAMPLES = 40


def _types_for(ne0: int, pool: list[GGMLQuantizationType]) -> list[GGMLQuantizationType]:
    return [t for t in pool if ne0 % GGML_QUANT_SIZES[t][0] == 0] or [T.F16]


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    model, tied = draw(st.sampled_from(ARCHS))
    spec = CATALOG.get(model)
    assert spec is not None, model
    arch = spec.arch
    arch = dataclasses.replace(
        arch,
        # a cut-down model or the real depth (sparse files cost no disk either way)
        n_layers=draw(st.sampled_from([1, 2, 4, arch.n_layers])),
        tied_embeddings=draw(st.booleans()) if tied is None else tied,
        sliding_window_layers=(),  # re-derived from the file by the reader, as for a real file
    )
    fa = draw(st.booleans())
    ub = draw(st.sampled_from([32, 64, 128, 256, 512, 1024, 2048, 4096]))
    return {
        "model": model,
        "depth": spec.arch.n_layers,
        "arch": arch,
        "pool": draw(st.lists(st.sampled_from(WEIGHT_TYPES), min_size=1, max_size=4, unique=True)),
        "embd": draw(st.sampled_from(WEIGHT_TYPES)),
        "output": draw(st.sampled_from(WEIGHT_TYPES)),
        "seed": draw(st.integers(0, 2**16)),
        "ctx": draw(st.integers(256, 40_000)),
        "parallel": draw(st.integers(1, 4)),
        "fa": fa,
        "ctk": draw(st.sampled_from(KV_TYPES)),
        # llama.cpp refuses a quantized V cache without flash attention
        "ctv": draw(st.sampled_from(KV_TYPES if fa else ["f16", "bf16", "f32"])),
        "ub": ub,
        "b": draw(st.sampled_from([b for b in (64, 256, 512, 2048, 4096, 8192) if b >= ub])),
    }


def _plan(
    case: dict[str, Any],
) -> tuple[list[tuple[str, tuple[int, ...], GGMLQuantizationType]], GGMLQuantizationType]:
    rng = random.Random(case["seed"])
    plan: list[tuple[str, tuple[int, ...], GGMLQuantizationType]] = []
    embd_type = T.F16
    for name, shape, base in tensor_plan(case["arch"], "F16"):
        ne0 = shape[-1]
        if (base == T.F32 and len(shape) == 1) or name.endswith((".bias", "gate_inp.weight")):
            plan.append((name, shape, base))  # norms, biases, sinks, routers stay f32
            continue
        if name == "token_embd.weight":
            t = embd_type = _types_for(ne0, [case["embd"]])[0]
        elif name == "output.weight":
            t = _types_for(ne0, [case["output"]])[0]
        else:
            t = rng.choice(_types_for(ne0, case["pool"]))
        plan.append((name, shape, t))
    return plan, embd_type


@pytest.mark.llamacpp
def test_estimate_never_under_llama_fit_params() -> None:
    if not fit_params_binary().exists():
        pytest.skip("llama.cpp binaries not built: run `make llama-cpp` (.ci/llama-cpp.sh)")
    over_pct: list[tuple[bool, float]] = []  # (real depth, total over llama.cpp in %)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        # no shrinking: each example runs llama.cpp, and shrinking one failure took over 5 min
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(cases())
    def check(case: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            plan, embd_type = _plan(case)
            path = write_gguf_plan(Path(tmp) / f"{case['model']}.gguf", case["arch"], plan)
            fa = "on" if case["fa"] else "off"
            argv = (
                "llama-server",
                "--model",
                str(path),
                "--fit",
                "off",
                "--ctx-size",
                str(case["ctx"]),
                "--parallel",
                str(case["parallel"]),
                "--n-gpu-layers",
                "0",
                "--flash-attn",
                fa,
                "--cache-type-k",
                case["ctk"],
                "--cache-type-v",
                case["ctv"],
                "--batch-size",
                str(case["b"]),
                "--ubatch-size",
                str(case["ub"]),
                "--host",
                "127.0.0.1",
                "--port",
                "8080",
                "--alias",
                "x",
            )
            ref = llama_fit(argv, timeout=120).host
            spec = resolve_model(str(path), CATALOG, "test")
            cfg = LlamaCppConfig(
                context=case["ctx"],
                parallel=case["parallel"],
                cache_type_k=case["ctk"],
                cache_type_v=case["ctv"],
                flash_attn=case["fa"],
                n_batch=case["b"],
                n_ubatch=case["ub"],
                n_gpu_layers=0,
            )
            cpu = estimate_llamacpp(spec, spec.artifacts[0], cfg).devices[-1]
            layout = spec.artifacts[0].layout
            assert layout is not None
        model, kv, comp = (
            cpu.weights_bytes // MIB,
            cpu.kv_cache_bytes // MIB,
            cpu.compute_bytes // MIB,
        )
        what = f"{case} -> ours {model}/{kv}/{comp}, llama.cpp {ref}"
        # llama.cpp floors each buffer type's MiB separately (Host, CPU_REPACK): sum of floors
        assert model >= ref.model_mib, what
        assert kv == ref.context_mib, what  # KV exact
        assert comp >= ref.compute_mib, what
        total, ref_total = model + kv + comp, ref.total_mib
        assert total >= ref_total, what
        allowance = (
            layout.token_embd_bytes // MIB + 1
            if case["arch"].tied_embeddings and embd_type in AMBIGUOUS_TIED
            else 0
        )
        over = total - ref_total - allowance
        assert over <= max(CASE_OVER_PCT / 100 * ref_total, CASE_OVER_MIB), what
        full = case["arch"].n_layers == case["depth"]
        over_pct.append((full, 100 * max(over, 0) / ref_total))

    check()
    assert len(over_pct) >= EXAMPLES // 2, f"only {len(over_pct)} cases ran"
    every = [o for _, o in over_pct]
    real = [o for full, o in over_pct if full]
    print(
        f"{len(every)} cases, total over llama.cpp: median {statistics.median(every):.2f} %, "
        f"worst {max(every):.2f} %; {len(real)} at the real depth: median "
        f"{statistics.median(real) if real else float('nan'):.2f} %"
    )
    # The stated 3 % median is for real models; a model cut to 1-4 layers makes the compute
    # buffer's fixed allowances large in percent (those cases are held to the per-case bound).
    if len(real) >= 5:
        assert statistics.median(real) <= MEDIAN_OVER_PCT
