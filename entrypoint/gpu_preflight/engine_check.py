"""Ask llama.cpp itself: its own dry run of the exact command the plan will exec, on these devices.

``llama-fit-params --fit-print on`` (tools/fit-params/fit-params.cpp) parses the same arguments as
llama-server (common/arg.cpp), loads the model's header and builds the context with nothing
allocated (common/fit.cpp ``common_get_device_memory_data_impl`` sets ``no_alloc``), and reports
model, context and compute MiB per device and for the host. It sees the devices this process sees
(same environment, so the same ``CUDA_VISIBLE_DEVICES``), and it reads only the GGUF header: a
sparse copy whose tensor data is a hole works as well as the real file.

``llama_cpu_dry_run`` is the same dry run with the placement replaced, so that everything sits on
this machine's CPU (``plan``, ``estimate`` and ``matrix``, whose devices are often simulated): its
Host row is then the model's weights and its context (KV and recurrent state) for any
architecture, whatever devices the plan is for.

Its ``--log-jsonl`` record (``fit_memory_breakdown``) also lists the buffer types llama.cpp leaves
out of the printed "Host" line (CPU_REPACK has no ``is_host``), which are host RAM all the same:
they are folded into the host row here.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpu_preflight.inputs.flags import Flag, Switch, rows_for, spelling_index
from gpu_preflight.inputs.overrides import normalise_flag
from gpu_preflight.probe.command import run_command

MIB = 2**20
FIT_PARAMS = "llama-fit-params"
TIMEOUT_S = 60
MAX_OUTPUT = 4 * 2**20  # its output is a few KiB; anything beyond is not a breakdown


@dataclass(frozen=True)
class EngineDevice:
    """One device as llama.cpp itself sizes it (bytes; llama.cpp prints whole MiB)."""

    name: str  # "CUDA0", "Vulkan0", ..., or "Host"
    model_bytes: int
    context_bytes: int
    compute_bytes: int
    # Host only: of model_bytes, the CPU extra buffer types' (CPU_REPACK, AMX) folded in below
    extra_model_bytes: int = 0


@dataclass(frozen=True)
class EngineBreakdown:
    devices: tuple[EngineDevice, ...]  # the GPUs in llama.cpp's order, then "Host"
    argv: tuple[str, ...]  # exactly what ran
    dropped: tuple[str, ...]  # flags of the plan's argv llama-fit-params does not take
    seconds: float

    @property
    def gpus(self) -> tuple[EngineDevice, ...]:
        return tuple(d for d in self.devices if d.name != "Host")

    @property
    def host(self) -> EngineDevice | None:
        return next((d for d in self.devices if d.name == "Host"), None)


def _memory(row: Flag) -> bool:
    """Whether dropping the row from the dry run leaves memory it changes unmeasured."""
    return row.role == "modelled" or row.knob.startswith("draft_")


def fit_params_args(
    argv: Sequence[str], model_path: str | None = None
) -> tuple[list[str], list[str]]:
    """The plan's llama-server argv as llama-fit-params takes it: (args, dropped memory flags).

    The flag table says which rows the tool takes (``fit_params``): the server-only ones are left
    out, and those that change memory (a unified KV, the prompt cache, checkpoints, a draft) are
    listed, since the dry run cannot measure them. The user's pass-through arguments are left out
    too: by the table's definition they do not change memory. ``model_path`` replaces a
    ``--hf-repo``/``--hf-file`` source with a local (sparse) copy of the same file.
    """
    index = spelling_index()
    out: list[str] = []
    dropped: list[str] = []
    args = list(argv[1:])
    source = ("hf_repo", "hf_file", "model")
    i = 0
    while i < len(args):
        name, inline = normalise_flag(args[i])
        rows = [f for f in index.get(name, []) if f.owner == "llama.cpp"]
        if not rows:
            i += 1  # a pass-through argument (or its value)
            continue
        row = rows[0]
        takes = not isinstance(row.parser, Switch) and inline is None
        value = args[i + 1] if takes and i + 1 < len(args) else inline
        if model_path and row.knob in source:
            pass  # replaced by the local copy below
        elif row.fit_params:
            out.append(name)
            if value is not None:
                out.append(value)
        elif _memory(row):
            dropped.append(name)
        i += 2 if takes else 1
    if model_path:
        out = ["--model", model_path, *out]
    return out, dropped


# Where llama-server puts the model (common/arg.cpp of 0.3.36; each is also taken by
# llama-fit-params): layers in VRAM, the split over GPUs and its mode, the main GPU, the device
# list, experts kept in host RAM, and per-tensor buffer overrides (-ot names device buffers such
# as CUDA0, which a CPU run would not know). The CPU dry run removes every one of them, from the
# argv and from the environment (their LLAMA_ARG_* variables), and places everything on the CPU
# instead: ``--device none`` offloads to no device (common/arg.cpp parse_device_list: "none" is
# an empty list, so src/llama.cpp llama_prepare_model_devices keeps the model on the CPU even in
# a CUDA or Vulkan build), and ``--n-gpu-layers 0`` says the same to a build with no GPU backend.
CPU_PLACEMENT = (
    "n_gpu_layers",
    "tensor_split",
    "split_mode",
    "main_gpu",
    "device",
    "n_cpu_moe",
    "cpu_moe",
    "override_tensor",
)
CPU_ARGS = ("--n-gpu-layers", "0", "--device", "none")


def _placement_rows() -> tuple[Flag, ...]:
    return tuple(r for knob in CPU_PLACEMENT for r in rows_for(knob, "llama.cpp"))


def _without_placement(args: Sequence[str]) -> list[str]:
    """llama-fit-params arguments less every placement flag (with its value)."""
    placement = {id(r) for r in _placement_rows()}
    index = spelling_index()
    out: list[str] = []
    i = 0
    while i < len(args):
        name, inline = normalise_flag(args[i])
        rows = [f for f in index.get(name, []) if f.owner == "llama.cpp"]
        if not rows:  # a value (fit_params_args keeps only the table's flags and their values)
            out.append(args[i])
            i += 1
            continue
        takes = not isinstance(rows[0].parser, Switch) and inline is None
        width = 2 if takes else 1
        if id(rows[0]) not in placement:
            out.extend(args[i : i + width])
        i += width
    return out


def cpu_fit_params_args(
    argv: Sequence[str], model_path: str | None = None
) -> tuple[list[str], list[str]]:
    """``fit_params_args`` with the placement replaced: everything on this machine's CPU. Every
    other flag llama-fit-params takes (-c, -np, -b, -ub, -ctk/-ctv, -fa, --swa-full, --fit, ...)
    is kept as planned."""
    args, dropped = fit_params_args(argv, model_path)
    return [*_without_placement(args), *CPU_ARGS], dropped


def cpu_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment less the placement rows' LLAMA_ARG_* (llama.cpp reads a variable for a
    flag the argv does not give, common/arg.cpp common_params_parse_ex)."""
    drop = {r.env for r in _placement_rows() if r.env}
    return {k: v for k, v in env.items() if k not in drop}


def cached_gguf(repo: str, file: str | None, env: Mapping[str, str]) -> str | None:
    """The GGUF ``file`` of Hub ``repo`` where the Hugging Face cache already holds it (a real
    download: the project's own sparse header copies are kept elsewhere, models/hub_cache.py),
    else None. Read-only: huggingface_hub's ``try_to_load_from_cache`` on the cache folder
    ``env`` names (models/hub_http.py settings: HF_HUB_CACHE, HF_HOME, ...)."""
    if not file or not file.endswith(".gguf") or "/" not in repo:
        return None
    # Importing huggingface_hub costs about 0.3 s, more than planning itself: first a look at
    # every folder its cache can be in (huggingface_hub/constants.py: HF_HUB_CACHE, else
    # HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub).
    folder = "models--" + repo.replace("/", "--")
    home = Path(env.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    roots = [env.get("HF_HUB_CACHE"), env.get("HUGGINGFACE_HUB_CACHE"), env.get("HF_HOME")]
    places = [Path(r) for r in roots[:2] if r] + [Path(r) / "hub" for r in roots[2:] if r]
    try:
        if not any((p.expanduser() / folder).is_dir() for p in [*places, home / "hub"]):
            return None
    except (OSError, RuntimeError):  # RuntimeError: ~ with no home directory
        return None
    from huggingface_hub import try_to_load_from_cache

    from gpu_preflight.models.hub_errors import HubError
    from gpu_preflight.models.hub_http import settings

    try:
        found = try_to_load_from_cache(repo, file, cache_dir=settings(env).hub_cache)
    except (HubError, OSError, ValueError):
        return None
    return found if isinstance(found, str) else None


def _rows(stdout: str) -> list[EngineDevice] | None:
    for line in stdout.splitlines():
        at = line.find('{"type":"fit_memory_breakdown"')
        if at < 0:
            continue
        rows = json.loads(line[at:])["data"]["rows"]
        devices: list[EngineDevice] = []
        extra = [0, 0, 0]
        for r in rows:
            parts = [int(r["model"]) * MIB, int(r["context"]) * MIB, int(r["compute"]) * MIB]
            if r["kind"] == "buffer_type":
                if str(r["name"]).upper().startswith("CPU"):
                    extra = [a + b for a, b in zip(extra, parts, strict=True)]
                continue
            name = "Host" if r["kind"] == "host" else str(r["name"])
            devices.append(EngineDevice(name, *parts))
        out = []
        for d in devices:
            if d.name == "Host":
                d = EngineDevice(  # noqa: PLW2901 - the host row with its extra buffers
                    "Host",
                    d.model_bytes + extra[0],
                    d.context_bytes + extra[1],
                    d.compute_bytes + extra[2],
                    extra[0],
                )
            out.append(d)
        return out
    return None


# See llama_dry_run: the breakdown record is sometimes not written. Measured with the CI's
# llama-fit-params 0.3.36 on a small GGUF (17 ms a run): 0 lost in 100 on an idle 2-core machine,
# 86 lost in 1000 with three busy loops beside it. Two attempts then failed about 1 call in 135,
# which a CI run of a few hundred dry runs hit; eight fail about 3e-9 of calls. A lost record
# costs one more short run (a hang or an error is never retried), so the bound is cheap.
ATTEMPTS = 8


def llama_dry_run(
    argv: Sequence[str],
    env: Mapping[str, str],
    model_path: str | None = None,
    binary: str | None = None,
) -> EngineBreakdown | str:
    """llama.cpp's own breakdown of ``argv`` on this machine, or why it could not be had."""
    found = binary or shutil.which(FIT_PARAMS, path=env.get("PATH"))
    if not found:
        return f"{FIT_PARAMS} is not on PATH in this image"
    args, dropped = fit_params_args(argv, model_path)
    return _ask(found, args, dropped, env)


def llama_cpu_dry_run(
    argv: Sequence[str],
    env: Mapping[str, str],
    model_path: str | None = None,
    binary: str | None = None,
) -> EngineBreakdown | str:
    """llama.cpp's own breakdown of ``argv`` with everything on this machine's CPU (one Host
    row: the model's weights, its context and the CPU's compute buffer), or why it could not be
    had. The weights and the context do not depend on where they sit; the compute buffer does
    (it is the CPU backend's graph), so callers fold only the first two for other devices."""
    found = binary or shutil.which(FIT_PARAMS, path=env.get("PATH"))
    if not found:
        return f"{FIT_PARAMS} is not on PATH in this image"
    args, dropped = cpu_fit_params_args(argv, model_path)
    return _ask(found, args, dropped, cpu_env(env))


def _ask(
    found: str, args: Sequence[str], dropped: Sequence[str], env: Mapping[str, str]
) -> EngineBreakdown | str:
    run = (found, *args, "--fit-print", "on", "--log-jsonl")
    t0 = time.perf_counter()
    why = ""
    # The breakdown record goes through llama.cpp's asynchronous log worker (common/fit.cpp
    # LOG_JSON); now and then the process exits before the worker writes it, with exit code 0
    # and only the plain printf lines on stdout: the logger is deliberately leaked, so nothing
    # flushes its queue at exit (common/log.cpp common_log_main, llama.cpp issue 22142).
    # The plain lines leave out the extra host buffer types (CPU_REPACK), so they are no
    # substitute: the dry run is asked once more instead.
    for _ in range(ATTEMPTS):
        r = run_command(list(run), TIMEOUT_S, dict(env))
        if r.error is not None:
            return f"{FIT_PARAMS} did not run: {r.error}"
        if r.returncode != 0:
            tail = " | ".join((r.stderr.strip() or r.stdout.strip()).splitlines()[-3:])
            return f"{FIT_PARAMS} exited {r.returncode}: {tail[:500]}"
        try:
            devices = _rows(r.stdout[:MAX_OUTPUT])
        except (ValueError, KeyError, TypeError) as exc:
            return f"{FIT_PARAMS} printed a breakdown this version cannot read: {exc}"
        if devices and any(d.name == "Host" for d in devices):
            seconds = round(time.perf_counter() - t0, 3)
            return EngineBreakdown(tuple(devices), run, tuple(dropped), seconds)
        why = f"{FIT_PARAMS} printed no memory breakdown ({ATTEMPTS} runs)"
    return why


__all__ = [
    "EngineBreakdown",
    "EngineDevice",
    "cached_gguf",
    "cpu_env",
    "cpu_fit_params_args",
    "fit_params_args",
    "llama_cpu_dry_run",
    "llama_dry_run",
]
