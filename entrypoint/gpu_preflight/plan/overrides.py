"""Parse and validate every user override (environment and engine arguments) before anything runs.

Precedence, highest first: engine arguments given after ``--`` > explicit environment
(``PREFLIGHT_*``, ``VLLM_*``, ``LLAMA_ARG_*``) > the tier table > built-in defaults. Each parsed
value remembers where it came from so the plan can say so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gpu_preflight.plan.errors import OverrideError

EngineChoice = Literal["auto", "vllm", "llama.cpp"]
Getter = Callable[[str], "str | None"]

LLAMACPP_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
VLLM_CACHE_TYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
VLLM_QUANTIZATIONS = (
    "awq",
    "awq_marlin",
    "gptq",
    "gptq_marlin",
    "fp8",
    "mxfp4",
    "bitsandbytes",
    "compressed-tensors",
    "gguf",
    "none",
)
MAX_CONTEXT = (
    10_485_760  # 10 Mi tokens: past any model's trained length, catches typos like 32000000
)
MIN_CONTEXT = 256

# Variables whose values must never reach argv, the profile, the plan or a log line.
SECRET_PATTERN = re.compile(r"(TOKEN|KEY|SECRET|PASSWORD|CREDENTIALS?)$", re.IGNORECASE)


def is_secret(name: str) -> bool:
    return bool(SECRET_PATTERN.search(name))


@dataclass(frozen=True)
class Sourced:
    """A value and where it came from: "env:NAME", "arg:--flag", "tier:ID", "default", "fit"."""

    value: int | float | str | bool
    source: str


@dataclass(frozen=True)
class EngineArgs:
    """The user's own engine arguments (after ``--``), with the flags the planner must respect."""

    argv: tuple[str, ...] = ()
    # Flag values the planner reads (normalised to the canonical long flag).
    values: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Overrides:
    model: Sourced | None = None
    quantization: Sourced | None = None  # VLLM_QUANTIZATION or an artifact quant for llama.cpp
    engine: Sourced | None = None  # "vllm" | "llama.cpp"; None = auto
    context: Sourced | None = None
    tier: Sourced | None = None
    kv_cache_type: Sourced | None = None
    reserve_bytes: Sourced | None = None
    min_tok_s: Sourced | None = None
    parallel: Sourced | None = None
    n_gpu_layers: Sourced | None = None  # llama.cpp only, from LLAMA_ARG_N_GPU_LAYERS or -ngl
    n_cpu_moe: Sourced | None = None
    flash_attn: Sourced | None = None  # "on" | "off" | "auto"
    gpu_memory_utilization: Sourced | None = None  # vLLM only, from its own argument
    tensor_parallel: Sourced | None = None
    port: Sourced | None = None
    host: Sourced | None = None
    speculative: Sourced | None = None  # "on" | "off"; None = auto (the tier decides)
    # The user's own draft model or speculative method (a flag or LLAMA_ARG_* variable): the
    # planner then adds none of its own and says the prediction does not include it.
    user_draft: Sourced | None = None
    engine_args: EngineArgs = field(default_factory=EngineArgs)
    # LLAMA_ARG_* the user set: llama-server reads them itself, so argv must not contradict them.
    llama_env: Mapping[str, str] = field(default_factory=dict)


def _int(name: str, raw: str, lo: int, hi: int, accepted: str, allow_k: bool = False) -> int:
    text = raw.strip().lower().replace("_", "")
    mult = 1
    if allow_k and text.endswith("k"):
        text, mult = text[:-1], 1024
    if not re.fullmatch(r"[0-9]+", text):
        raise OverrideError(name, raw, accepted, "not a whole number")
    value = int(text) * mult
    if not lo <= value <= hi:
        raise OverrideError(name, raw, accepted, f"{value} is out of range")
    return value


def _float(name: str, raw: str, lo: float, hi: float, accepted: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise OverrideError(name, raw, accepted, "not a number") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise OverrideError(name, raw, accepted, "out of range")
    return value


def _choice(
    name: str, raw: str, choices: Sequence[str], aliases: Mapping[str, str] | None = None
) -> str:
    text = raw.strip().lower()
    text = (aliases or {}).get(text, text)
    if text not in choices:
        raise OverrideError(name, raw, ", ".join(choices))
    return text


_ENGINE_ALIASES = {"llamacpp": "llama.cpp", "llama-cpp": "llama.cpp", "llama_cpp": "llama.cpp"}
_FA_ALIASES = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}
_CONTEXT_ACCEPTED = (
    f"a whole number of tokens from {MIN_CONTEXT} to {MAX_CONTEXT}, e.g. 8192 or 32k"
)

# llama-server flags the planner reads (all spellings -> canonical), and vLLM's.
_LLAMA_FLAGS = {
    "-c": "--ctx-size",
    "--ctx-size": "--ctx-size",
    "-np": "--parallel",
    "--parallel": "--parallel",
    "-ngl": "--n-gpu-layers",
    "--gpu-layers": "--n-gpu-layers",
    "--n-gpu-layers": "--n-gpu-layers",
    "-ctk": "--cache-type-k",
    "--cache-type-k": "--cache-type-k",
    "-ctv": "--cache-type-v",
    "--cache-type-v": "--cache-type-v",
    "-fa": "--flash-attn",
    "--flash-attn": "--flash-attn",
    "-m": "--model",
    "--model": "--model",
    "--n-cpu-moe": "--n-cpu-moe",
    "-ncmoe": "--n-cpu-moe",
    "-b": "--batch-size",
    "--batch-size": "--batch-size",
    "-ub": "--ubatch-size",
    "--ubatch-size": "--ubatch-size",
    "--port": "--port",
    "--host": "--host",
    "-ts": "--tensor-split",
    "--tensor-split": "--tensor-split",
    "-hf": "--hf-repo",
    "--hf-repo": "--hf-repo",
    "--hf-file": "--hf-file",
    "-fit": "--fit",
    "--fit": "--fit",
    "-md": "--spec-draft-model",
    "--model-draft": "--spec-draft-model",
    "--spec-draft-model": "--spec-draft-model",
    "-hfd": "--spec-draft-hf",
    "-hfrd": "--spec-draft-hf",
    "--hf-repo-draft": "--spec-draft-hf",
    "--spec-draft-hf": "--spec-draft-hf",
    "--spec-type": "--spec-type",
}
_VLLM_FLAGS = {
    "--max-model-len": "--max-model-len",
    "--gpu-memory-utilization": "--gpu-memory-utilization",
    "-tp": "--tensor-parallel-size",
    "--tensor-parallel-size": "--tensor-parallel-size",
    "-q": "--quantization",
    "--quantization": "--quantization",
    "--kv-cache-dtype": "--kv-cache-dtype",
    "--max-num-seqs": "--max-num-seqs",
    "--max-num-batched-tokens": "--max-num-batched-tokens",
    "--port": "--port",
    "--host": "--host",
    "--model": "--model",
    "-sc": "--speculative-config",
    "--speculative-config": "--speculative-config",
}
# The user's own speculative decoding, in either engine's spelling (and llama-server's variables).
_DRAFT_FLAGS = ("--spec-draft-model", "--spec-draft-hf", "--spec-type", "--speculative-config")
_DRAFT_ENV = ("LLAMA_ARG_SPEC_DRAFT_MODEL", "LLAMA_ARG_SPEC_TYPE", "LLAMA_ARG_SPEC_DRAFT_HF_REPO")
_ON_OFF_ALIASES = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}
# Flags that would put a secret on the command line (visible in /proc and `docker inspect`).
_SECRET_FLAGS = {
    "--api-key": "LLAMA_API_KEY for llama-server, VLLM_API_KEY for vLLM",
    "--hf-token": "HF_TOKEN",
    "-hft": "HF_TOKEN",
}
_BOOL_FLAGS = {"--enforce-eager", "--no-mmap", "--mlock", "--jinja", "--no-webui", "--metrics"}
# llama-server's flag -> the LLAMA_ARG_* variable it also reads (from common/arg.cpp).
LLAMA_ENV_FOR_FLAG = {
    "--ctx-size": "LLAMA_ARG_CTX_SIZE",
    "--parallel": "LLAMA_ARG_N_PARALLEL",
    "--n-gpu-layers": "LLAMA_ARG_N_GPU_LAYERS",
    "--cache-type-k": "LLAMA_ARG_CACHE_TYPE_K",
    "--cache-type-v": "LLAMA_ARG_CACHE_TYPE_V",
    "--flash-attn": "LLAMA_ARG_FLASH_ATTN",
    "--model": "LLAMA_ARG_MODEL",
    "--n-cpu-moe": "LLAMA_ARG_N_CPU_MOE",
    "--batch-size": "LLAMA_ARG_BATCH",
    "--ubatch-size": "LLAMA_ARG_UBATCH",
    "--port": "LLAMA_ARG_PORT",
    "--host": "LLAMA_ARG_HOST",
    "--tensor-split": "LLAMA_ARG_TENSOR_SPLIT",
    "--hf-repo": "LLAMA_ARG_HF_REPO",
    "--hf-file": "LLAMA_ARG_HF_FILE",
    "--fit": "LLAMA_ARG_FIT",
}


def parse_engine_args(argv: Sequence[str]) -> EngineArgs:
    """Pick out the flags the planner must respect from the user's engine arguments.

    ``--flag value`` and ``--flag=value`` are both understood. Flags the planner does not read are
    passed through untouched; a known flag missing its value is an error.
    """
    values: dict[str, str] = {}
    known = {**_LLAMA_FLAGS, **_VLLM_FLAGS}
    i = 0
    args = list(argv)
    while i < len(args):
        arg = args[i]
        flag, eq, inline = arg.partition("=")
        if flag in _BOOL_FLAGS:
            values[flag] = "true"
        elif flag in known:
            canonical = known[flag]
            if eq:
                values[canonical] = inline
            elif i + 1 < len(args) and not _is_flag(args[i + 1]):
                values[canonical] = args[i + 1]
                i += 1
            elif canonical == "--flash-attn":
                values[canonical] = "on"  # older llama-server: a bare -fa switched it on
            else:
                raise OverrideError(
                    f"engine argument {flag}", "", f"{flag} VALUE or {flag}=VALUE", "missing value"
                )
        i += 1
    for arg in args:
        flag = arg.partition("=")[0]
        if flag in _SECRET_FLAGS:
            raise OverrideError(
                f"engine argument {flag}",
                "***",
                f"the secret in the environment instead ({_SECRET_FLAGS[flag]}), so it never "
                "appears in argv, the plan or the logs",
            )
    return EngineArgs(argv=tuple(args), values=values)


def _is_flag(text: str) -> bool:
    return text.startswith("-") and not re.fullmatch(r"-[0-9.]+", text)


def parse_overrides(env: Mapping[str, str], engine_argv: Sequence[str] = ()) -> Overrides:
    """Validate every override; raise OverrideError naming the first bad variable."""
    args = parse_engine_args(engine_argv)
    a = args.values
    o: dict[str, Sourced | None] = {}

    def get(name: str) -> str | None:
        value = env.get(name)
        return value if value is not None and value.strip() != "" else None

    # Model: PREFLIGHT_MODEL and VLLM_MODEL are the same knob; disagreeing values are an error.
    pm, vm = get("PREFLIGHT_MODEL"), get("VLLM_MODEL")
    if pm and vm and pm.strip() != vm.strip():
        raise OverrideError(
            "VLLM_MODEL",
            vm,
            f"the same model as PREFLIGHT_MODEL={pm!r}, or only one of the two set",
        )
    if "--model" in a:
        o["model"] = Sourced(a["--model"], "arg:--model")
    elif "--hf-repo" in a:
        o["model"] = Sourced(a["--hf-repo"], "arg:--hf-repo")
    elif pm:
        o["model"] = Sourced(pm.strip(), "env:PREFLIGHT_MODEL")
    elif vm:
        o["model"] = Sourced(vm.strip(), "env:VLLM_MODEL")
    elif get("LLAMA_ARG_MODEL"):
        o["model"] = Sourced(env["LLAMA_ARG_MODEL"].strip(), "env:LLAMA_ARG_MODEL")

    engine_raw = get("PREFLIGHT_ENGINE")
    if engine_raw:
        engine = _choice(
            "PREFLIGHT_ENGINE", engine_raw, ("auto", "vllm", "llama.cpp"), _ENGINE_ALIASES
        )
        if engine != "auto":
            o["engine"] = Sourced(engine, "env:PREFLIGHT_ENGINE")
    elif vm and not pm:
        # VLLM_MODEL is the vLLM image's own variable: it asks for vLLM.
        o["engine"] = Sourced("vllm", "env:VLLM_MODEL")

    quant = get("VLLM_QUANTIZATION")
    if "--quantization" in a:
        q = _choice("engine argument --quantization", a["--quantization"], VLLM_QUANTIZATIONS)
        o["quantization"] = Sourced(q, "arg:--quantization")
    elif quant:
        o["quantization"] = Sourced(
            _choice("VLLM_QUANTIZATION", quant, VLLM_QUANTIZATIONS), "env:VLLM_QUANTIZATION"
        )

    o["context"] = _context(env, a, get)
    tier = get("PREFLIGHT_TIER")
    if tier:
        o["tier"] = Sourced(
            tier.strip().lower(), "env:PREFLIGHT_TIER"
        )  # checked against the table later

    o["kv_cache_type"] = _cache_type(env, a, get)

    reserve = get("PREFLIGHT_RESERVE_GB")
    if reserve:
        gib = _float(
            "PREFLIGHT_RESERVE_GB", reserve, 0.0, 4096.0, "GiB from 0 to 4096, e.g. 2 or 3.5"
        )
        o["reserve_bytes"] = Sourced(int(gib * 2**30), "env:PREFLIGHT_RESERVE_GB")
    mt = get("PREFLIGHT_MIN_TOKS")
    if mt:
        o["min_tok_s"] = Sourced(
            _float("PREFLIGHT_MIN_TOKS", mt, 0.01, 100000.0, "tokens/s above 0, e.g. 1 or 5.5"),
            "env:PREFLIGHT_MIN_TOKS",
        )
    o["parallel"] = _int_knob(
        env,
        a,
        get,
        "--parallel",
        "PREFLIGHT_PARALLEL",
        "LLAMA_ARG_N_PARALLEL",
        1,
        1024,
        "a whole number of concurrent sequences from 1 to 1024",
    )
    if o["parallel"] is None and "--max-num-seqs" in a:
        o["parallel"] = Sourced(
            _int("engine argument --max-num-seqs", a["--max-num-seqs"], 1, 4096, "1 to 4096"),
            "arg:--max-num-seqs",
        )
    o["n_gpu_layers"] = _ngl(env, a, get)
    o["n_cpu_moe"] = _int_knob(
        env, a, get, "--n-cpu-moe", None, "LLAMA_ARG_N_CPU_MOE", 0, 1024, "0 to 1024 layers"
    )
    fa = a.get("--flash-attn")
    if fa is not None:
        o["flash_attn"] = Sourced(
            _choice("engine argument --flash-attn", fa, ("on", "off", "auto"), _FA_ALIASES),
            "arg:--flash-attn",
        )
    elif get("LLAMA_ARG_FLASH_ATTN"):
        o["flash_attn"] = Sourced(
            _choice(
                "LLAMA_ARG_FLASH_ATTN",
                env["LLAMA_ARG_FLASH_ATTN"],
                ("on", "off", "auto"),
                _FA_ALIASES,
            ),
            "env:LLAMA_ARG_FLASH_ATTN",
        )
    if "--gpu-memory-utilization" in a:
        o["gpu_memory_utilization"] = Sourced(
            _float(
                "engine argument --gpu-memory-utilization",
                a["--gpu-memory-utilization"],
                0.05,
                1.0,
                "a fraction of total GPU memory from 0.05 to 1.0",
            ),
            "arg:--gpu-memory-utilization",
        )
    if "--tensor-parallel-size" in a:
        o["tensor_parallel"] = Sourced(
            _int(
                "engine argument --tensor-parallel-size",
                a["--tensor-parallel-size"],
                1,
                64,
                "1 to 64",
            ),
            "arg:--tensor-parallel-size",
        )
    o["port"] = _int_knob(
        env, a, get, "--port", "PREFLIGHT_PORT", "LLAMA_ARG_PORT", 1, 65535, "1 to 65535"
    )
    host = a.get("--host") or get("PREFLIGHT_HOST") or get("LLAMA_ARG_HOST")
    if host:
        src = (
            "arg:--host"
            if "--host" in a
            else ("env:PREFLIGHT_HOST" if get("PREFLIGHT_HOST") else "env:LLAMA_ARG_HOST")
        )
        if not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]+", host.strip()):
            raise OverrideError(
                src.split(":", 1)[1], host, "an IP address or host name, e.g. 0.0.0.0"
            )
        o["host"] = Sourced(host.strip(), src)

    spec_raw = get("PREFLIGHT_SPECULATIVE")
    if spec_raw:
        spec = _choice("PREFLIGHT_SPECULATIVE", spec_raw, ("auto", "on", "off"), _ON_OFF_ALIASES)
        if spec != "auto":
            o["speculative"] = Sourced(spec, "env:PREFLIGHT_SPECULATIVE")
    for flag in _DRAFT_FLAGS:
        if flag in a:
            o["user_draft"] = Sourced(a[flag], f"arg:{flag}")
            break
    else:
        for name in _DRAFT_ENV:
            if get(name):
                o["user_draft"] = Sourced(env[name].strip(), f"env:{name}")
                break

    llama_env = {k: v for k, v in env.items() if k.startswith("LLAMA_ARG_") and v.strip() != ""}
    return Overrides(**o, engine_args=args, llama_env=llama_env)  # type: ignore[arg-type]


def _context(env: Mapping[str, str], a: Mapping[str, str], get: Getter) -> Sourced | None:
    getter = get
    for flag in ("--ctx-size", "--max-model-len"):
        if flag in a:
            return Sourced(
                _int(
                    f"engine argument {flag}",
                    a[flag],
                    MIN_CONTEXT,
                    MAX_CONTEXT,
                    _CONTEXT_ACCEPTED,
                    True,
                ),
                f"arg:{flag}",
            )
    found: list[tuple[str, int]] = []
    for name in ("PREFLIGHT_CONTEXT", "VLLM_MAX_MODEL_LEN", "LLAMA_ARG_CTX_SIZE"):
        raw = getter(name)
        if raw:
            found.append((name, _int(name, raw, MIN_CONTEXT, MAX_CONTEXT, _CONTEXT_ACCEPTED, True)))
    if len({v for _, v in found}) > 1:
        names = ", ".join(f"{n}={v}" for n, v in found)
        raise OverrideError(found[1][0], str(found[1][1]), f"one context for all of them ({names})")
    if found:
        return Sourced(found[0][1], f"env:{found[0][0]}")
    return None


def _cache_type(env: Mapping[str, str], a: Mapping[str, str], get: Getter) -> Sourced | None:
    accepted = LLAMACPP_CACHE_TYPES + tuple(t for t in VLLM_CACHE_TYPES if t != "auto")
    k, v = a.get("--cache-type-k"), a.get("--cache-type-v")
    if k is not None or v is not None:
        if k is not None and v is not None and k.lower() != v.lower():
            # Mixed K/V types are legal in llama.cpp; the plan keeps them as given.
            kk = _choice("engine argument --cache-type-k", k, LLAMACPP_CACHE_TYPES)
            vv = _choice("engine argument --cache-type-v", v, LLAMACPP_CACHE_TYPES)
            return Sourced(f"{kk}/{vv}", "arg:--cache-type-k")
        value = k if k is not None else v
        assert value is not None
        flag = "--cache-type-k" if k is not None else "--cache-type-v"
        return Sourced(
            _choice(f"engine argument {flag}", value, LLAMACPP_CACHE_TYPES), f"arg:{flag}"
        )
    if "--kv-cache-dtype" in a:
        return Sourced(
            _choice("engine argument --kv-cache-dtype", a["--kv-cache-dtype"], VLLM_CACHE_TYPES),
            "arg:--kv-cache-dtype",
        )
    raw = get("PREFLIGHT_KV_CACHE_TYPE")
    if raw:
        return Sourced(
            _choice("PREFLIGHT_KV_CACHE_TYPE", raw, accepted), "env:PREFLIGHT_KV_CACHE_TYPE"
        )
    lk, lv = get("LLAMA_ARG_CACHE_TYPE_K"), get("LLAMA_ARG_CACHE_TYPE_V")
    if lk or lv:
        kk = _choice("LLAMA_ARG_CACHE_TYPE_K", lk, LLAMACPP_CACHE_TYPES) if lk else "f16"
        vv = _choice("LLAMA_ARG_CACHE_TYPE_V", lv, LLAMACPP_CACHE_TYPES) if lv else "f16"
        src = "env:LLAMA_ARG_CACHE_TYPE_K" if lk else "env:LLAMA_ARG_CACHE_TYPE_V"
        return Sourced(kk if kk == vv else f"{kk}/{vv}", src)
    return None


def _int_knob(
    env: Mapping[str, str],
    a: Mapping[str, str],
    get: Getter,
    flag: str,
    preflight_var: str | None,
    llama_var: str | None,
    lo: int,
    hi: int,
    accepted: str,
) -> Sourced | None:
    if flag in a:
        return Sourced(_int(f"engine argument {flag}", a[flag], lo, hi, accepted), f"arg:{flag}")
    for name in (preflight_var, llama_var):
        if name and get(name):
            return Sourced(_int(name, env[name], lo, hi, accepted), f"env:{name}")
    return None


def _ngl(env: Mapping[str, str], a: Mapping[str, str], get: Getter) -> Sourced | None:
    accepted = "a number of layers from 0 to 10000, or 'all' / 'auto'"
    raw, src = None, None
    if "--n-gpu-layers" in a:
        raw, src = a["--n-gpu-layers"], "arg:--n-gpu-layers"
    elif get("LLAMA_ARG_N_GPU_LAYERS"):
        raw, src = env["LLAMA_ARG_N_GPU_LAYERS"], "env:LLAMA_ARG_N_GPU_LAYERS"
    if raw is None or src is None:
        return None
    name = src.split(":", 1)[1]
    text = raw.strip().lower()
    if text in ("all", "-1", "999"):
        return Sourced(-1, src)
    if text == "auto":
        return None  # llama.cpp's own fitting: the planner decides, which is what auto asks for
    return Sourced(
        _int(name if src.startswith("env") else f"engine argument {name}", raw, 0, 10000, accepted),
        src,
    )
