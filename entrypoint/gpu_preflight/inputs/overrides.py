"""Read every user value (environment, engine arguments, CLI options) through the flag table.

Nothing here knows a flag by name except through ``inputs/flags.py``. Each value keeps where it came
from ("env:NAME", "arg:SPELLING", "option:--name"), so the plan can say so. Two places that set one
knob must agree; if they do not, the error names both places and both values. The engine flags
the planner reads are taken out of the user's arguments and written again by the planner, once,
in their canonical spelling; every other argument reaches the engine untouched, in order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpu_preflight.inputs.flags import (
    FLAGS,
    LLAMACPP_CACHE_TYPES,
    MAX_CONTEXT,
    MIN_CONTEXT,
    VLLM_CACHE_TYPES,
    VLLM_QUANTIZATIONS,
    Flag,
    FlagValueError,
    Switch,
    spelling_index,
)
from gpu_preflight.inputs.settings import Sourced, UserSettings

__all__ = [
    "LLAMACPP_CACHE_TYPES",
    "MAX_CONTEXT",
    "MIN_CONTEXT",
    "NGL_AUTO",
    "VLLM_CACHE_TYPES",
    "VLLM_QUANTIZATIONS",
    "Overrides",
    "Sourced",
    "UserSettings",
    "is_secret",
    "parse_overrides",
    "per_slot_context",
]

# n_gpu_layers "auto" (llama.cpp's -1): the planner fits it, and the argv carries its number.
NGL_AUTO = -2
LLAMA_COMMAND = ("llama-server",)
VLLM_COMMAND = ("vllm", "serve")

# Variables whose values must never reach argv, the profile, the plan or a log line.
SECRET_PATTERN = re.compile(r"(TOKEN|KEY|SECRET|PASSWORD|CREDENTIALS?)$", re.IGNORECASE)


def is_secret(name: str) -> bool:
    return bool(SECRET_PATTERN.search(name))


# The record parse_overrides fills (inputs/settings.py); the old name, kept for its callers.
Overrides = UserSettings


@dataclass(frozen=True)
class _Hit:
    flag: Flag
    source: str
    raw: str | None  # None: a switch given on the command line
    negated: bool = False


def normalise_flag(token: str) -> tuple[str, str | None]:
    """ "--a_b=v" -> ("--a-b", "v"): llama.cpp and vLLM both read '_' as '-' in long flags."""
    name, eq, inline = token.partition("=")
    if name.startswith("--"):
        name = name.replace("_", "-")
    return name, (inline if eq else None)


def _is_flag(text: str) -> bool:
    return text.startswith("-") and not re.fullmatch(r"-[0-9.]+", text)


def _split_command(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """A whole engine command (`llama-server ...`, `vllm serve ...`) -> (its engine, its args)."""
    args = list(argv)
    if args and args[0].rsplit("/", 1)[-1] in LLAMA_COMMAND:
        return "llama.cpp", args[1:]
    if len(args) >= 2 and args[0].rsplit("/", 1)[-1] == VLLM_COMMAND[0] and args[1] == "serve":
        return "vllm", args[2:]
    return None, args


def _scan_args(argv: Sequence[str]) -> tuple[str | None, list[_Hit], list[str]]:
    """(engine named by the command, the table's flags found, everything else verbatim)."""
    command, args = _split_command(argv)
    index = spelling_index()
    hits: list[_Hit] = []
    rest: list[str] = []
    i = 0
    if args and not _is_flag(args[0]) and command != "llama.cpp":
        # `vllm serve MODEL ...`: the positional model (vLLM's model_tag).
        rows = [f for f in index["--model"] if f.owner == "vllm"]
        hits.append(_Hit(rows[0], "arg:MODEL (positional)", args[0]))
        i = 1
    while i < len(args):
        token = args[i]
        name, inline = normalise_flag(token)
        rows = (index.get(name) or []) if _is_flag(token) else []
        if not rows:
            rest.append(token)
            i += 1
            continue
        if command is not None:
            rows = [f for f in rows if f.owner == command] or rows
        negated = name in rows[0].negations
        if isinstance(rows[0].parser, Switch):
            if inline is not None:
                raise FlagValueError(
                    f"engine argument {name}", inline, f"{name} alone, without a value"
                )
            hits += [_Hit(f, f"arg:{name}", None, negated) for f in rows]
            i += 1
            continue
        if rows[0].role == "secret":
            raise FlagValueError(
                f"engine argument {name}",
                "***",
                f"the secret in the environment instead ({rows[0].replacement}), so it never "
                "appears in argv, the plan or the logs",
            )
        if inline is None:
            if i + 1 >= len(args) or (_is_flag(args[i + 1]) and name != "--flash-attn"):
                if name in ("--flash-attn", "-fa"):
                    inline = "on"  # older llama-server: a bare -fa switched it on
                else:
                    raise FlagValueError(
                        f"engine argument {name}",
                        "",
                        f"{name} VALUE or {name}=VALUE ({rows[0].parser.accepted})",
                        "missing value",
                    )
            else:
                inline = args[i + 1]
                i += 1
        hits += [_Hit(f, f"arg:{name}", inline) for f in rows]
        i += 1
    return command, hits, rest


def _env_hits(env: Mapping[str, str]) -> list[_Hit]:
    out = []
    for f in FLAGS:
        if f.env and f.env in env and env[f.env].strip() != "":
            out.append(_Hit(f, f"env:{f.env}", env[f.env]))
    return out


def _option_hits(options: Mapping[str, str | None]) -> list[_Hit]:
    out = []
    for f in FLAGS:
        if f.option and options.get(f.option) is not None:
            value = options[f.option]
            assert value is not None
            out.append(_Hit(f, f"option:{f.option}", value))
    return out


def _where(h: _Hit) -> str:
    kind, _, name = h.source.partition(":")
    return {"arg": f"engine argument {name}", "option": name}.get(kind, name)


def _parse(h: _Hit) -> Any:
    if h.flag.role == "removed":
        raise FlagValueError(
            _where(h),
            h.raw or h.flag.canonical,
            f"{h.flag.replacement} (this llama-server no longer has {h.flag.canonical})",
        )
    if isinstance(h.flag.parser, Switch) and h.raw is None:
        return not h.negated
    assert h.raw is not None
    return h.flag.parser.parse(_where(h), h.raw)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip().lower() == b.strip().lower()
    return bool(a == b)


def _conflict(knob: str, a: Sourced[Any], b: Sourced[Any], hint: str = "") -> FlagValueError:
    return FlagValueError(
        b.where,
        str(b.value),
        f"the same value as {a.where}={a.value!r}, or only one of the two set{hint}",
        f"it disagrees with {a.where}",
    )


def per_slot_context(ctx_total: int, parallel: int, kv_unified: bool) -> int:
    """The context llama-server gives each slot for -c ctx_total (llama-context.cpp, the
    llama_context constructor: n_ctx padded to 256, n_ctx_seq = pad(n_ctx / n_seq, 256), or all of
    n_ctx with a unified KV)."""
    pad = -(-ctx_total // 256) * 256
    if kv_unified:
        return pad
    return -(-(pad // parallel) // 256) * 256


def parse_overrides(
    env: Mapping[str, str],
    engine_argv: Sequence[str] = (),
    options: Mapping[str, str | None] | None = None,
) -> Overrides:
    """Parse and cross-check every user value; raise FlagValueError naming the first bad one."""
    command, arg_hits, rest = _scan_args(engine_argv)
    hits = _option_hits(options or {}) + arg_hits + _env_hits(env)
    # Engine flags that exist for both engines (--host, --port, --model) count once per source.
    values: dict[str, Sourced[Any]] = {}
    refs: list[tuple[str, Sourced[str]]] = []
    owners: dict[str, Sourced[Any]] = {}
    consumed: list[str] = []
    seen_sources: set[tuple[str, str]] = set()
    for h in hits:
        if (h.flag.knob, h.source) in seen_sources:
            continue  # the same spelling matched a row of each engine
        seen_sources.add((h.flag.knob, h.source))
        value = _parse(h)
        s: Sourced[Any] = Sourced(value, h.source)
        if h.flag.owner != "preflight" and not (h.source.startswith("arg:") and _shared(h.flag)):
            owners.setdefault(h.flag.owner, s)
        # a LLAMA_ARG_* the argv now carries is unset for the engine; one the argv cannot carry
        # (a row without spellings: LLAMA_ARG_KV_OFFLOAD) stays in its environment
        if (
            h.flag.env
            and h.flag.spellings
            and h.source == f"env:{h.flag.env}"
            and h.flag.env.startswith("LLAMA_ARG_")
        ):
            consumed.append(h.flag.env)
        if h.flag.knob in ("model", "hf_repo"):
            refs.append((h.flag.knob, s))
            continue
        prev = values.get(h.flag.knob)
        if prev is None:
            values[h.flag.knob] = s
        elif not _same(prev.value, value):
            raise _conflict(h.flag.knob, prev, s)
    if command is not None:
        owners.setdefault(command, Sourced(command, f"arg:{' '.join(_command_of(command))}"))

    implied: Sourced[str] | None = None
    if "vllm" in owners and "llama.cpp" in owners:
        a, b = owners["llama.cpp"], owners["vllm"]
        raise FlagValueError(
            b.where,
            str(b.value),
            f"settings of one engine: {a.where} is llama-server's, {b.where} is vLLM's",
            "two engines' settings at once",
        )
    for eng, s in owners.items():
        implied = Sourced(eng, s.source)
    vm = next((s for k, s in refs if s.source == "env:VLLM_MODEL"), None)
    if (
        implied is None
        and vm is not None
        and not any(s.source == "env:PREFLIGHT_MODEL" for _, s in refs)
    ):
        implied = Sourced("vllm", "env:VLLM_MODEL")  # the vLLM image's own variable asks for vLLM
    engine = values.get("engine")
    if engine is not None and engine.value == "auto":
        del values["engine"]
        engine = None
    if engine is not None and implied is not None and engine.value != implied.value:
        raise FlagValueError(
            engine.where,
            str(engine.value),
            f"{implied.value}, which {implied.where} is a setting of, or drop that setting",
            "it disagrees with the engine's own settings",
        )

    if engine is None and implied is not None:
        values["engine"] = implied  # the record's engine: the one asked for, by name or by settings
    _check_contexts(values)
    _check_cache_types(values)
    for knob_name, ref in refs:
        values.setdefault(knob_name, ref)  # the record's model / hf_repo: the first of each
    # Each value is its row's parser's type (a test holds every parser's type to its attribute's).
    typed: dict[str, Any] = dict(values)
    o = UserSettings(
        **typed,
        model_refs=tuple(refs),
        engine_implied=implied,
        passthrough=tuple(rest),
        consumed_env=tuple(dict.fromkeys(consumed)),
        user_args=tuple(engine_argv),
    )
    return o


def _command_of(engine: str) -> tuple[str, ...]:
    return LLAMA_COMMAND if engine == "llama.cpp" else VLLM_COMMAND


def _shared(flag: Flag) -> bool:
    """A spelling both engines take (--host, --port, --model): it implies neither."""
    return (
        sum(1 for f in FLAGS if f.knob == flag.knob and set(f.spellings) & set(flag.spellings)) > 1
    )


def _check_cache_types(values: dict[str, Sourced[Any]]) -> None:
    """PREFLIGHT_KV_CACHE_TYPE sets K and V: a K or V type given elsewhere must be the same."""
    both = values.get("kv_cache_type")
    if both is None:
        return
    for knob in ("cache_type_k", "cache_type_v"):
        one = values.get(knob)
        if one is not None and one.value != both.value:
            raise _conflict(knob, both, one)


def _check_contexts(values: dict[str, Sourced[Any]]) -> None:
    """Per-sequence context and llama-server's total (-c) must mean the same context."""
    ctx, total, par = values.get("context"), values.get("ctx_total"), values.get("parallel")
    if ctx is None or total is None or total.value == 0:
        return
    unified = bool(values["kv_unified"].value) if "kv_unified" in values else False
    if par is not None and par.value == -1:
        unified = True
    if par is None and not unified:
        # -c and a per-sequence context together say how many slots: -c / context.
        p, r = divmod(int(total.value), int(ctx.value))
        if r == 0 and p >= 1 and per_slot_context(total.value, p, False) == ctx.value:
            values["parallel"] = Sourced(p, f"{total.source} / {ctx.source}")
            return
        raise FlagValueError(
            total.where,
            str(total.value),
            f"a multiple of {ctx.where}={ctx.value} (llama-server's -c is the total over the "
            "slots), or only one of the two set",
            f"it disagrees with {ctx.where}",
        )
    slots = 4 if par is None or par.value == -1 else int(par.value)
    got = per_slot_context(int(total.value), slots, unified)
    if got != ctx.value:
        where_p = f" and {par.where}={par.value}" if par is not None else ""
        raise FlagValueError(
            total.where,
            str(total.value),
            f"{ctx.value * (1 if unified else slots)} for {ctx.where}={ctx.value}{where_p} "
            "(llama-server's -c is the total over the slots), or only one of the two set",
            f"it gives {got} tokens per slot, not {ctx.value}",
        )
