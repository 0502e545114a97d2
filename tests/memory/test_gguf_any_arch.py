"""Every architecture the ``gguf`` package lists tensors for, planned by the generic closed form
and by llama.cpp itself (llama-fit-params, the CPU dry run), compared.

The files come from tests/support/data/gguf_archs.json: for each architecture the hparams keys
and the tensors (names, shapes) llama.cpp's loader asked for, found by running llama-fit-params
on the file until it loaded (tests/support/gguf_archs.py). Tiny dimensions, 6 layers, the tensor
data a sparse hole. Per file, two settings (flash attention on with q8_0 KV and one slot; off with
f16 KV and two slots, where llama.cpp pads every layer's V to the widest). Targets: the reader
plans every architecture llama-fit-params loads (or refuses it with a reason that is not "unknown
architecture"); KV (and recurrent state) exactly llama.cpp's context MiB; weights within its
1 MiB rounding; the total never under llama.cpp's by more than 1 %.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.gguf_archs import ArchCase, gguf_archs, load_cases, write_case
from tests.support.llama_fit import FitDevice, cache_sizes_mib, fit_params_binary, llama_fit

from gpu_preflight.memory.llamacpp import NO_FLASH_ATTN, LlamaCppConfig, estimate_llamacpp
from gpu_preflight.models.errors import ModelError
from gpu_preflight.models.gguf_file import spec_from_gguf
from gpu_preflight.models.layout import GGUF_REFUSED

MIB = 2**20
CASES = load_cases()
LOADS = sorted(a for a, c in CASES.items() if c.loads)
# (a quantized V cache needs flash attention: llama_init_from_model refuses it without)
SETTINGS = [("on", 1, "q8_0"), ("off", 2, "f16")]
CTX = 4096
# Architectures whose cache llama.cpp sizes with more than the generic KV rule: the closed form
# is then not exact. Each is allowed to differ from llama.cpp's context figure only upwards.
KV_OVER: dict[str, str] = {}

pytestmark = pytest.mark.llamacpp


def _binary() -> Path:
    # a skip, which tests/conftest.py turns into a failure under CI=true (marker llamacpp)
    b = fit_params_binary()
    if not b.exists():
        pytest.skip(f"{b} is not built: run `make llama-cpp` (.ci/llama-cpp.sh)")
    return b


def _argv(path: Path, fa: str, parallel: int, cache: str) -> tuple[str, ...]:
    return (
        "llama-server",
        "--model",
        str(path),
        "--fit",
        "off",
        "--ctx-size",
        str(CTX),
        "--parallel",
        str(parallel),
        "--n-gpu-layers",
        "0",
        "--flash-attn",
        fa,
        "--cache-type-k",
        cache,
        "--cache-type-v",
        cache,
    )


@dataclass(frozen=True)
class Compared:
    ref: FitDevice  # llama.cpp's host row, MiB
    argv: tuple[str, ...]
    kv_exact_mib: float
    kv_mib: int  # the closed form's, floored like llama.cpp's
    weights_mib: int
    compute_mib: int
    total_mib: float


def compare(case: ArchCase, tmp: Path, fa: str, parallel: int, cache: str) -> Compared:
    """llama.cpp's host breakdown and the closed form's for one file and setting."""
    path = write_case(tmp / f"{case.arch}.gguf", case.arch, case.keys, case.tensors)
    argv = _argv(path, fa, parallel, cache)
    ref = llama_fit(argv, timeout=60).host
    spec = spec_from_gguf(path)
    cfg = LlamaCppConfig(
        context=CTX,
        parallel=parallel,
        cache_type_k=cache,
        cache_type_v=cache,
        n_gpu_layers=0,
        flash_attn=fa == "on",
    )
    cpu = estimate_llamacpp(spec, spec.artifacts[0], cfg).devices[-1]
    return Compared(
        ref,
        argv,
        cpu.kv_cache_bytes / MIB,
        cpu.kv_cache_bytes // MIB,
        cpu.weights_bytes // MIB,
        cpu.compute_bytes // MIB,
        cpu.total_bytes / MIB,
    )


def test_every_architecture_gguf_lists_has_a_case() -> None:
    assert set(CASES) == set(gguf_archs())
    for arch, case in CASES.items():
        assert case.loads or case.reason, arch
    # as committed (126 listed, 103 loaded by llama-fit-params 0.3.36): the rest are files the
    # discovery could not complete (an optional tensor or key the graph needs), each with
    # llama.cpp's own words in its reason
    assert len(LOADS) >= 103


@pytest.mark.parametrize("arch", LOADS)
def test_closed_form_against_llama_fit_params(arch: str, tmp_path: Path) -> None:
    _binary()
    case = CASES[arch]
    if arch in GGUF_REFUSED:
        path = write_case(tmp_path / f"{arch}.gguf", arch, case.keys, case.tensors)
        with pytest.raises(ModelError, match=arch):
            spec_from_gguf(path)
        return
    for fa, parallel, kv_type in SETTINGS:
        # llama.cpp forces flash attention off for some: no quantized V cache then
        cache = "f16" if arch in NO_FLASH_ATTN else kv_type
        r = compare(case, tmp_path, fa, parallel, cache)
        ref = r.ref
        print(
            f"\n[any-arch] {arch} fa {fa} x{parallel} {cache}: context {ref.context_mib} MiB "
            f"(plan {r.kv_mib}), model {ref.model_mib} (plan {r.weights_mib}), compute "
            f"{ref.compute_mib} (plan {r.compute_mib}), total {ref.total_mib} (plan "
            f"{r.total_mib:.1f})"
        )
        if arch in KV_OVER:
            assert r.kv_mib >= ref.context_mib, KV_OVER[arch]
        else:
            assert r.kv_mib == ref.context_mib  # KV and recurrent state exact
            # and to the 0.01 MiB llama.cpp logs each cache with
            sizes = cache_sizes_mib(r.argv)
            print(f"[any-arch] {arch}: caches {sizes} MiB, plan {r.kv_exact_mib:.4f}")
            assert abs(r.kv_exact_mib - sum(sizes)) <= 0.005 * len(sizes) + 1e-9, sizes
        assert 0 <= r.weights_mib - ref.model_mib <= 1
        assert r.total_mib >= 0.99 * ref.total_mib  # never under by more than 1 %
