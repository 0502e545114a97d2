"""llama.cpp's own memory breakdown for an engine command line, from the real llama-fit-params.

``llama_fit(argv)`` takes a llama-server argv as the planner ships it, drops what only the
server knows (llama-fit-params refuses those flags), and runs ``llama-fit-params --fit-print on``
on the rest: llama.cpp loads the model and builds the context with no data allocated
(``common_get_device_memory_data_impl`` in common/fit.cpp sets ``no_alloc``) and reports model,
context and compute MiB per device and for the host.

Why ``--fit-print on`` measures exactly the given settings: tools/fit-params/fit-params.cpp only
calls ``common_fit_params`` (which would change -c/-ngl/-ts/-ot to fit free memory) when
``fit_params_print`` is off; with it on it calls ``common_fit_print`` on the parsed
``mparams``/``cparams`` untouched. ``--fit off`` (which the planner passes so llama-server does not
re-fit) only sets ``params.fit_params``, which that tool never reads, so it is kept as shipped.

Host buffers: ``common_fit_print`` adds a buffer type to "Host" only if
``ggml_backend_buft_is_host`` is true. The CPU repack buffer (CPU_REPACK,
ggml/src/ggml-cpu/repack.cpp ``ggml_backend_cpu_repack_buffer_type``) has no ``is_host``, so the
weights llama.cpp repacks (Q4_0, Q4_K, IQ4_NL, MXFP4 on an AVX2 build) are missing from the
printed "Host" line although they sit in host RAM. ``--log-jsonl`` makes
``common_memory_breakdown_print`` (common/fit.cpp) also emit a ``fit_memory_breakdown`` JSON
record whose ``buffer_type`` rows list those buffers; ``FitResult.host`` folds the CPU ones back
into the host figures.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpu_preflight.engine_check import EngineBreakdown, fit_params_args, llama_dry_run

MIB = 2**20


@dataclass(frozen=True)
class FitDevice:
    """One row of llama.cpp's breakdown, in MiB as llama.cpp prints them (each floored)."""

    name: str  # "CUDA0", ..., "Vulkan0", or "Host"
    model_mib: int
    context_mib: int
    compute_mib: int
    extra_model_mib: int = 0  # Host: the CPU extra buffer types' (CPU_REPACK) part of model_mib

    @property
    def total_mib(self) -> int:
        return self.model_mib + self.context_mib + self.compute_mib


@dataclass(frozen=True)
class FitResult:
    devices: tuple[FitDevice, ...]  # GPUs in order, then "Host" (with the CPU extra buffers)
    argv: tuple[str, ...]  # what was run
    dropped: tuple[str, ...]  # stripped flags that change memory (not measured here)

    @property
    def host(self) -> FitDevice:
        return next(d for d in self.devices if d.name == "Host")

    def device(self, name: str) -> FitDevice | None:
        return next((d for d in self.devices if d.name == name), None)


class LlamaFitError(RuntimeError):
    pass


def fit_params_binary() -> Path:
    """llama-fit-params from the CI build (.ci/llama-cpp.sh's cache directory)."""
    cache = Path(os.environ.get("GPU_PREFLIGHT_CACHE", "/var/cache/gpu-preflight"))
    version = os.environ.get("LLAMA_CPP_PYTHON_VERSION", "0.3.36")
    return cache / f"llama.cpp-{version}" / "bin" / "llama-fit-params"


def fit_argv(argv: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(llama-fit-params arguments, dropped memory flags) for a llama-server argv: the package's
    own stripping (gpu_preflight.engine_check, from the flag table's ``fit_params`` column)."""
    args = list(argv)
    if not args or Path(args[0]).name != "llama-server":
        raise ValueError(f"expected a llama-server argv, got {tuple(args[:2])!r}")
    kept, dropped = fit_params_args(args)
    return tuple(kept), tuple(dropped)


def _mib(b: EngineBreakdown) -> tuple[FitDevice, ...]:
    return tuple(
        FitDevice(
            d.name,
            d.model_bytes // MIB,
            d.context_bytes // MIB,
            d.compute_bytes // MIB,
            d.extra_model_bytes // MIB,
        )
        for d in b.devices
    )


def llama_fit(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    binary: Path | None = None,
    timeout: float = 300,
) -> FitResult:
    """Run llama-fit-params on a shipped llama-server argv; llama.cpp's breakdown per device.

    The same dry run `run` does (gpu_preflight.engine_check). ``env`` is the environment
    llama-server would get (LLAMA_ARG_* values the argv leaves out are read by llama-fit-params
    too). Defaults to this process's environment.
    """
    binary = binary or fit_params_binary()
    if not binary.exists():
        raise LlamaFitError(f"{binary} is not built (.ci/llama-cpp.sh)")
    got = llama_dry_run(argv, dict(os.environ if env is None else env), binary=str(binary))
    if isinstance(got, str):
        raise LlamaFitError(got)
    return FitResult(_mib(got), got.argv, got.dropped)


_CACHE_LINE = re.compile(r"(llama_kv_cache|llama_memory_recurrent): size = +([0-9.]+) MiB")


def cache_sizes_mib(
    argv: Sequence[str], binary: Path | None = None, attempts: int = 8
) -> tuple[float, ...]:
    """llama.cpp's own size of each cache it builds for a llama-server argv, in MiB to two
    decimals, as its verbose log prints them (src/llama-kv-cache.cpp and
    src/llama-memory-recurrent.cpp ``size = %7.2f MiB``): one per KV cache (two for a
    sliding-window model, src/llama-kv-cache-iswa.cpp) and one for the recurrent states.

    Finer than the breakdown's whole MiB. The lines go through common/log.cpp's worker like the
    breakdown (see engine_check.ATTEMPTS), so a run that printed none is asked again; () when
    the model has no cache at all.
    """
    binary = binary or fit_params_binary()
    args, _ = fit_argv(argv)
    sizes: tuple[float, ...] = ()
    for _ in range(attempts):
        r = subprocess.run(
            [str(binary), *args, "--fit-print", "on", "-v"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        out = r.stdout + r.stderr
        if r.returncode != 0:
            raise LlamaFitError(f"exit {r.returncode}: {out.strip().splitlines()[-1:]}")
        sizes = tuple(float(m[2]) for m in _CACHE_LINE.finditer(out))
        # The worker loses the tail of the log, not its middle: a run that got as far as the
        # scheduler's reserve (src/llama-context.cpp, after every cache is made) printed every
        # cache line. One that did not may have printed some of them only (a sliding-window
        # model's second cache lost under load), so it is asked again.
        if "sched_reserve" in out:
            return sizes
    return sizes
