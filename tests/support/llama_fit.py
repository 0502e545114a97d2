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

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

# Flags of llama-server that llama-fit-params rejects ("error: invalid argument"): in
# common/arg.cpp they are registered with set_examples({LLAMA_EXAMPLE_SERVER, ...}) without
# LLAMA_EXAMPLE_COMMON or LLAMA_EXAMPLE_FIT_PARAMS. (spelling, takes a value). None of them changes
# the model/KV/compute buffers of the target model, except the ones marked "memory" - their
# effect cannot be measured here, and llama_fit reports them in FitResult.dropped.
# TODO(lead): replace this tuple by a lookup in the flag table (plan/flags.py: the rows whose
# role is server-only / not accepted by llama-fit-params) once it lands.
SERVER_ONLY_FLAGS: tuple[tuple[str, bool], ...] = (
    ("--host", True),
    ("--port", True),
    ("--reuse-port", False),
    ("--path", True),
    ("--api-prefix", True),
    ("-a", True),
    ("--alias", True),
    ("--tags", True),
    ("--api-key", True),
    ("--api-key-file", True),
    ("--ssl-key-file", True),
    ("--ssl-cert-file", True),
    ("--jinja", False),
    ("--no-jinja", False),
    ("--chat-template", True),
    ("--chat-template-file", True),
    ("--chat-template-kwargs", True),
    ("--reasoning-format", True),
    ("--reasoning-budget", True),
    ("-rea", True),
    ("--reasoning", True),
    ("--metrics", False),
    ("--props", False),
    ("--slots", False),
    ("--no-slots", False),
    ("--slot-save-path", True),
    ("--ui", False),
    ("--webui", False),
    ("--no-ui", False),
    ("--no-webui", False),
    ("--threads-http", True),
    ("-to", True),
    ("--timeout", True),
    ("-cb", False),
    ("--cont-batching", False),
    ("-nocb", False),
    ("--no-cont-batching", False),
    ("--cache-prompt", False),
    ("--no-cache-prompt", False),
    ("--cache-reuse", True),
    ("--warmup", False),
    ("--no-warmup", False),
    ("--context-shift", False),
    ("--no-context-shift", False),
    ("-sps", True),
    ("--slot-prompt-similarity", True),
    ("--sleep-idle-seconds", True),
    ("--log-prompts-dir", True),
    ("--mmproj-auto", False),
    ("--no-mmproj-auto", False),
    ("--embedding", False),
    ("--embeddings", False),
    ("--rerank", False),
    ("--reranking", False),
    ("--pooling", True),
    # memory: llama-server's host-RAM prompt cache (tools/server), not a llama.cpp buffer
    ("-cram", True),
    ("--cache-ram", True),
    # memory: a unified KV has one stream of n_ctx cells instead of n_seq of n_ctx/n_seq
    ("-kvu", False),
    ("--kv-unified", False),
    ("--kv-unified-per-slot", True),
    # memory: the draft model of speculative decoding (its buffers are not in this breakdown)
    ("--spec-type", True),
    ("--spec-draft-model", True),
    ("-md", True),
    ("--model-draft", True),
    ("--spec-draft-hf", True),
    ("-hfd", True),
    ("--spec-draft-ngl", True),
    ("-ngld", True),
    ("--spec-draft-n-max", True),
    ("--draft-max", True),
    ("--spec-draft-n-min", True),
    ("--draft-min", True),
    # --spec-draft-type-k/-v are accepted by llama-fit-params (common) but mean nothing without a
    # draft: they are dropped with it.
    ("--spec-draft-type-k", True),
    ("-ctkd", True),
    ("--spec-draft-type-v", True),
    ("-ctvd", True),
)
_MEMORY_FLAGS = frozenset(
    {"-cram", "--cache-ram", "-kvu", "--kv-unified", "--kv-unified-per-slot"}
    | {f for f, _ in SERVER_ONLY_FLAGS if f.startswith(("--spec-", "-md", "--model-draft"))}
    | {"-hfd", "-ngld", "--draft-max", "--draft-min"}
)
_TAKES_VALUE = dict(SERVER_ONLY_FLAGS)
MIB = 2**20


@dataclass(frozen=True)
class FitDevice:
    """One row of llama.cpp's breakdown, in MiB as llama.cpp prints them (each floored)."""

    name: str  # "CUDA0", ..., "Host", or a buffer type ("CPU_REPACK")
    model_mib: int
    context_mib: int
    compute_mib: int

    @property
    def total_mib(self) -> int:
        return self.model_mib + self.context_mib + self.compute_mib


@dataclass(frozen=True)
class FitResult:
    devices: tuple[FitDevice, ...]  # GPUs in order, then "Host" (llama.cpp's own host sum)
    extra_buffers: tuple[FitDevice, ...]  # buffer types on no device row ("CPU_REPACK")
    argv: tuple[str, ...]  # what was run
    dropped: tuple[str, ...]  # stripped flags that change memory (not measured here)

    @property
    def host(self) -> FitDevice:
        """Host RAM: llama.cpp's "Host" row plus the CPU extra buffers it leaves out of it."""
        h = next(d for d in self.devices if d.name == "Host")
        extra = [b for b in self.extra_buffers if b.name.upper().startswith("CPU")]
        return FitDevice(
            "Host",
            h.model_mib + sum(b.model_mib for b in extra),
            h.context_mib + sum(b.context_mib for b in extra),
            h.compute_mib + sum(b.compute_mib for b in extra),
        )

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
    """(llama-fit-params arguments, dropped memory flags) for a llama-server argv."""
    args = list(argv)
    if not args or Path(args[0]).name != "llama-server":
        raise ValueError(f"expected a llama-server argv, got {tuple(args[:2])!r}")
    out: list[str] = []
    dropped: list[str] = []
    i = 1
    while i < len(args):
        a = args[i]
        name = a.split("=", 1)[0] if a.startswith("--") else a
        if name in _TAKES_VALUE:
            if name in _MEMORY_FLAGS:
                dropped.append(name)
            i += 2 if _TAKES_VALUE[name] and "=" not in a else 1
            continue
        out.append(a)
        i += 1
    return tuple(out), tuple(dropped)


def _parse(stdout: str) -> tuple[list[FitDevice], list[FitDevice]]:
    devices: list[FitDevice] = []
    extra: list[FitDevice] = []
    printed: list[FitDevice] = []
    for line in stdout.splitlines():
        at = line.find('{"type":"fit_memory_breakdown"')
        if at >= 0:
            rows = json.loads(line[at:])["data"]["rows"]
            for r in rows:
                d = FitDevice(str(r["name"]), int(r["model"]), int(r["context"]), int(r["compute"]))
                if r["kind"] == "buffer_type":
                    extra.append(d)
                else:
                    devices.append(replace(d, name="Host") if r["kind"] == "host" else d)
            continue
        parts = line.split()
        # common_fit_print: "<device> <model> <context> <compute>" per device, then "Host ..."
        if len(parts) == 4 and all(p.isdigit() for p in parts[1:]) and not line.startswith("{"):
            printed.append(FitDevice(parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
    if not devices:
        devices = printed  # no JSON record (an older llama.cpp): the printed lines
    return devices, extra


def llama_fit(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    binary: Path | None = None,
    timeout: float = 300,
) -> FitResult:
    """Run llama-fit-params on a shipped llama-server argv; llama.cpp's breakdown per device.

    ``env`` is the environment llama-server would get (LLAMA_ARG_* values the argv leaves out are
    read by llama-fit-params too: common/arg.cpp applies an option's env for every tool that
    accepts the option). Defaults to this process's environment.
    """
    binary = binary or fit_params_binary()
    if not binary.exists():
        raise LlamaFitError(f"{binary} is not built (.ci/llama-cpp.sh)")
    args, dropped = fit_argv(argv)
    run = (str(binary), *args, "--fit-print", "on", "--log-jsonl")
    r = subprocess.run(
        run,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=dict(os.environ if env is None else env),
    )
    if r.returncode != 0:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-5:]
        raise LlamaFitError(f"llama-fit-params exited {r.returncode}: {' | '.join(tail)}")
    devices, extra = _parse(r.stdout)
    if not any(d.name == "Host" for d in devices):
        raise LlamaFitError(f"no breakdown in llama-fit-params' output: {r.stdout[-500:]!r}")
    return FitResult(tuple(devices), tuple(extra), run, tuple(dropped))
