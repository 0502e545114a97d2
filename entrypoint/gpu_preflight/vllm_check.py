"""Ask vLLM itself, before the download: its own start of the exact planned command with dummy
weights, stopped once it has sized its KV cache.

``vllm serve ... --load-format dummy`` (vllm/config/load.py ``LoadConfig.load_format``;
vllm/model_executor/model_loader/dummy_loader.py) builds the model from its config and fills the
weights with random values: nothing but the config and tokenizer files is fetched. Everything else
is the real start on these devices: the free-memory check, the weights in memory, the profiling
pass (vllm/v1/worker/gpu_worker.py ``Worker.determine_available_memory``, which logs
"Available KV cache memory: X GiB"), and the pool cut into blocks (vllm/v1/core/kv_cache_utils.py
``update_kv_cache_capacity``: "GPU KV cache size: N tokens, Maximum concurrency for L tokens per
request: Cx"; "CPU" on vLLM's CPU build). That line is the sign to stop: the process group gets
SIGTERM, then SIGKILL, and the devices are free again before the real start. vLLM's own refusals
for memory (kv_cache_utils.py ``_check_enough_kv_cache_memory``, gpu_worker.py
``Worker.init_device``'s free-memory check) come back as a refusal; a crash or a timeout as a note.

When it runs: on a machine with GPUs, for a planned vLLM start whose weights are not yet on local
disk and whose download is at least ``MIN_DOWNLOAD_BYTES`` (``PREFLIGHT_VLLM_DRY_RUN=auto``); ``on``
runs it whenever vLLM is planned, ``off`` never. The fold itself is pure:
plan/reconcile_vllm.py.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from gpu_preflight import launch
from gpu_preflight.errors import SetupError
from gpu_preflight.plan.reconcile_vllm import VllmKvReport, VllmRefused, reconcile_vllm
from gpu_preflight.plan.types import Plan
from gpu_preflight.probe.command import WatchResult, watch_command

GIB = 2**30
# Start to the KV report: interpreter and imports (10-30 s), the dummy model built on the
# devices, torch.compile of the profiling shapes (tens of seconds cold; its cache is reused by
# the real start), the profiling pass. Five minutes bounds it well above that; not yet timed on a
# GPU (docs/memory-vllm.md).
TIMEOUT_S = 300.0
# Below this the download is about as quick as the dry run itself (10 GiB: 100 s at 100 MB/s),
# and vLLM's real start, which checks the same things, comes soon enough: auto skips it.
MIN_DOWNLOAD_BYTES = 10 * GIB
DUMMY = ("--load-format", "dummy")
MAX_INDEX_BYTES = 16 * 2**20  # a safetensors index is a few hundred KiB

# vllm/v1/core/kv_cache_utils.py update_kv_cache_capacity: "%s KV cache size: %s tokens,
# Maximum concurrency for %s tokens per request: %.2fx" (GPU, CPU, XPU..., "+ host" with
# hisparse), one line in 0.32; two lines before (kv_cache_utils.py _report_kv_cache_config), so
# the two parts are read apart and the concurrency, the later of them, is the sign.
_TOKENS = re.compile(r"\b[A-Z]+(?: \+ host)? KV cache size: (?P<tokens>[0-9][0-9,]*) tokens")
_CONCURRENCY = re.compile(
    r"Maximum concurrency for (?P<len>[0-9][0-9,]*) tokens per request: "
    r"(?P<conc>[0-9]+(?:\.[0-9]+)?)x"
)
# vllm/v1/worker/gpu_worker.py determine_available_memory: "Available KV cache memory: %s GiB"
# (format_gib: round(bytes / GiB, 2); negative when the budget is already spent)
_AVAILABLE = re.compile(r"Available KV cache memory: (?P<gib>-?[0-9]+(?:\.[0-9]+)?) GiB")
# vLLM's own refusals for memory, the same on the real start: kv_cache_utils.py
# _check_enough_kv_cache_memory, the start-up free-memory check (v1/worker/utils.py
# request_memory, called by gpu_worker.py Worker.init_device) and cpu_worker.py's own.
_REFUSALS = (
    re.compile(r"No available memory for the cache blocks\.[^\n]*"),
    re.compile(r"To serve at least one request with the models?'s max seq len[^\n]*"),
    re.compile(r"Free memory on device[^\n]*? on startup is less than[^\n]*"),
    re.compile(r"Available memory on node[^\n]*? is less than[^\n]*"),
)
_TRAILER = re.compile(r"\s*See https://docs\.vllm\.ai/\S+ for more details\.?\s*$")


def dry_run_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """The planned argv with dummy weights; argparse keeps the last --load-format given."""
    return (*argv, *DUMMY)


def dry_run_env(env: Mapping[str, str]) -> dict[str, str]:
    """The engine's environment, with vLLM's own log on stdout at INFO or more (the KV report is
    an INFO line; vllm/logger.py _configure_vllm_root_logger reads these). Nothing here changes
    memory."""
    out = dict(env)
    out.pop("VLLM_LOGGING_CONFIG_PATH", None)
    out["VLLM_CONFIGURE_LOGGING"] = "1"
    out["VLLM_LOGGING_STREAM"] = "ext://sys.stdout"
    out["VLLM_LOGGING_COLOR"] = "0"
    out["PYTHONUNBUFFERED"] = "1"
    if out.get("VLLM_LOGGING_LEVEL", "INFO").upper() not in ("DEBUG", "INFO"):
        out["VLLM_LOGGING_LEVEL"] = "INFO"
    return out


def kv_reported(line: str) -> bool:
    """The sign to stop: vLLM has sized its KV pool (the engine core logs it once), or refused
    for memory (after which it may take a while to tear down, or hang)."""
    return _CONCURRENCY.search(line) is not None or any(p.search(line) for p in _REFUSALS)


def parse_log(text: str, seconds: float, argv: Sequence[str]) -> VllmKvReport | VllmRefused | None:
    """vLLM's KV report or its refusal from its output, or None when it printed neither."""
    for pattern in _REFUSALS:
        m = pattern.search(text)
        if m:
            message = _TRAILER.sub("", m.group(0)).strip()
            return VllmRefused(message[:600], seconds, tuple(argv))
    available = tuple(round(float(m.group("gib")) * GIB) for m in _AVAILABLE.finditer(text))
    tokens, conc = _TOKENS.search(text), _CONCURRENCY.search(text)
    if tokens is None and conc is None and not available:
        return None
    return VllmKvReport(
        available_kv_bytes=available,
        kv_capacity_tokens=int(tokens.group("tokens").replace(",", "")) if tokens else None,
        max_concurrency=float(conc.group("conc")) if conc else None,
        request_tokens=int(conc.group("len").replace(",", "")) if conc else None,
        seconds=seconds,
        argv=tuple(argv),
    )


def _tail(output: str, env: Mapping[str, str]) -> str:
    """The line that says why (the last exception line), or the last lines; secrets masked."""
    lines = [x.strip() for x in output.splitlines() if x.strip()]
    errors = [x for x in lines if re.search(r"\b\w*(error|exception)\b:", x, re.IGNORECASE)]
    picked = errors[-1:] if errors else lines[-3:]
    return launch.scrub(" | ".join(picked), env)[:500] or "no output"


def vllm_dry_run(
    argv: Sequence[str], env: Mapping[str, str], timeout_s: float = TIMEOUT_S
) -> VllmKvReport | VllmRefused | str:
    """vLLM's own KV report for ``argv`` started with dummy weights, its refusal, or why neither
    could be had (in words, for the plan's notes)."""
    run = dry_run_argv(argv)
    r: WatchResult = watch_command(list(run), dry_run_env(env), timeout_s, kv_reported)
    if r.error is not None:
        return f"vLLM did not run: {r.error}"
    parsed = parse_log(r.output, r.seconds, run)
    outlived = f"; {r.left_running} of its processes outlived SIGKILL" if r.left_running > 0 else ""
    if isinstance(parsed, VllmRefused) or (parsed is not None and r.matched):
        return parsed if not outlived else f"vLLM's dry run could not be stopped{outlived}"
    if r.timed_out:
        return (
            f"vLLM did not report its KV cache within {timeout_s:g} s with dummy weights "
            f"(stopped: SIGTERM, then SIGKILL to its process group){outlived}"
        )
    return (
        f"vLLM exited {r.returncode} before reporting its KV cache with dummy weights "
        f"({r.seconds:.1f} s): {_tail(r.output, env)}{outlived}"
    )


def _argv_value(argv: Sequence[str], name: str) -> str | None:
    for i, tok in enumerate(argv):
        if tok == name and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return None


def _hub_cache(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """Where vLLM looks for (and downloads) the weights: --download-dir, else huggingface_hub's
    cache (vllm/model_executor/model_loader/weight_utils.py download_weights_from_hf passes
    download_dir as the cache_dir)."""
    given = _argv_value(argv, "--download-dir")
    if given:
        return str(Path(given).expanduser())
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if cache:
        return str(Path(cache).expanduser())
    home = env.get("HF_HOME")
    if home:
        return str(Path(home).expanduser() / "hub")
    xdg = env.get("XDG_CACHE_HOME")
    return str((Path(xdg) if xdg else Path("~/.cache")).expanduser() / "huggingface" / "hub")


def weights_local(plan: Plan, env: Mapping[str, str]) -> bool:
    """Whether vLLM will find the model's weights on local disk (a directory, or every
    safetensors file of the repo in the Hugging Face cache at the planned revision)."""
    from huggingface_hub import try_to_load_from_cache

    m = plan.model
    if m is None:
        return False
    if m.path is not None:
        return True
    cache = _hub_cache(plan.argv, env)
    rev = _argv_value(plan.argv, "--revision")

    def cached(name: str) -> str | None:
        try:
            hit = try_to_load_from_cache(m.repo, name, cache_dir=cache, revision=rev)
        except (OSError, ValueError):
            return None
        return hit if isinstance(hit, str) else None

    index = cached("model.safetensors.index.json")
    if index is None:
        return cached("model.safetensors") is not None
    try:
        with open(index, "rb") as f:
            shards = set(json.loads(f.read(MAX_INDEX_BYTES))["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return bool(shards) and all(cached(str(s)) is not None for s in shards)


def _download_bytes(plan: Plan) -> int:
    draft = plan.draft.weight_bytes if plan.draft is not None and plan.draft.path is None else 0
    return (plan.model.weight_bytes if plan.model is not None else 0) + draft


def skip_reason(plan: Plan, env: Mapping[str, str], real_gpus: bool, dry_run: bool) -> str | None:
    """Why auto leaves the dry run out for this plan, or None to run it."""
    forced = " (PREFLIGHT_VLLM_DRY_RUN=on runs it anyway)"
    if not real_gpus:
        return "no real GPU in this profile (none probed, or simulated)" + forced
    if dry_run:
        return "`run --dry-run` starts no engine" + forced
    if weights_local(plan, env):
        return "the weights are on local disk: vLLM's own start checks as soon" + forced
    size = _download_bytes(plan)
    if size < MIN_DOWNLOAD_BYTES:
        return (
            f"the download ({size / GIB:.1f} GiB) is under {MIN_DOWNLOAD_BYTES / GIB:.0f} GiB: "
            "vLLM's own start comes about as soon" + forced
        )
    return None


def check_vllm(
    plan: Plan,
    env: Mapping[str, str],
    mode: str,
    real_gpus: bool,
    dry_run: bool,
    timeout_s: float = TIMEOUT_S,
) -> Plan:
    """The plan with vLLM's own dummy-weight dry run folded in (or a note why there is none).

    ``env`` is the engine's environment (the plan's additions included); ``mode`` is
    PREFLIGHT_VLLM_DRY_RUN (auto, on, off)."""
    if mode == "off" or plan.verdict != "ship" or plan.engine != "vllm" or not plan.argv:
        return plan
    if mode == "auto":
        why = skip_reason(plan, env, real_gpus, dry_run)
        if why is not None:
            return reconcile_vllm(plan, f"not run: {why}")
    binary = shutil.which(plan.argv[0], path=env.get("PATH"))
    if binary is None:
        if mode == "on":
            raise SetupError(
                f"PREFLIGHT_VLLM_DRY_RUN=on, but `{plan.argv[0]}` is not on PATH in this image. "
                "Accepted: auto or off, or an image that ships vLLM."
            )
        return reconcile_vllm(plan, f"`{plan.argv[0]}` is not on PATH in this image")
    return reconcile_vllm(plan, vllm_dry_run((binary, *plan.argv[1:]), env, timeout_s))


__all__ = [
    "MIN_DOWNLOAD_BYTES",
    "TIMEOUT_S",
    "check_vllm",
    "dry_run_argv",
    "parse_log",
    "skip_reason",
    "vllm_dry_run",
    "weights_local",
]
