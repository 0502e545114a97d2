"""The one table of every setting gpu-preflight reads, sets or passes through (pure data).

Each row is one way a user (or the planner) says one thing: an engine flag with all its
spellings, the environment variable the engine itself reads (``LLAMA_ARG_*``), or our own
``PREFLIGHT_*`` / ``VLLM_*`` variable, and the ``gpu-preflight`` command-line option that means the
same. Rows that set the same *knob* are spellings of one value: ``overrides.py`` reads every row,
and two rows of one knob that disagree are an error naming both. Adding a flag is adding a row.

Roles:

- ``modelled``: an input of the memory model. The prediction uses the value and the argv carries
  it exactly once, in the row's canonical (first) spelling.
- ``planner``: a value the planner chooses (context, slots, layers, ...) unless the user pins it;
  a pinned value is used as given, and carried exactly once.
- ``passthrough``: no effect on memory; the user's spelling goes to the engine untouched.
- ``secret``: never accepted on a command line (it would show in ``ps`` and ``docker inspect``).
- ``removed``: a spelling this llama-server release no longer accepts; refused with the new one.
- ``setting``: gpu-preflight's own setting (files, probes, dry run); not the engine's.

Each knob also has one ``Knob`` row (``KNOBS``): its default per owner of its rows, the engine's
own at the pinned version or gpu-preflight's, each cited. ``parse_overrides`` parses every value
once, by its row's parser, into the typed record ``inputs/settings.py UserSettings`` (one attribute
per knob, of the type its parser returns); the planner reads only that record.

Sources of the llama-server rows: ``common/arg.cpp`` of the llama.cpp vendored in
llama-cpp-python 0.3.36 (the image's version): spellings, ``set_env`` names and value parsers.
vLLM rows: ``vllm/engine/arg_utils.py`` and ``vllm/config/*.py`` of vLLM 0.32.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gpu_preflight.errors import InvalidInput

Role = Literal["modelled", "planner", "passthrough", "secret", "removed", "setting"]
Owner = Literal["llama.cpp", "vllm", "preflight"]

MAX_DIGITS = 12  # no count, size or token number we take needs more; bounds int() on hostile text
MAX_TEXT = 1024  # model ids, repos, hosts; a path gets PATH_MAX
PATH_MAX = 4096
MIN_CONTEXT = 256
MAX_CONTEXT = 10_485_760  # 10 Mi tokens: past any model's trained length, catches 32000000 typos


class FlagValueError(InvalidInput):
    """A value given for one row is not acceptable: names where it came from and what is."""

    def __init__(self, where: str, value: str, accepted: str, why: str | None = None) -> None:
        self.variable = where
        self.value = value
        self.accepted = accepted
        shown = value if len(value) <= 80 else value[:77] + "..."
        detail = f": {why}" if why else ""
        super().__init__(f"{where}={shown!r} is not valid{detail}. Accepted: {accepted}.")


# ---------------------------------------------------------------------------------------------
# Value parsers: each knows its accepted values, and the accepted text comes from the same place.


@dataclass(frozen=True)
class Int:
    """A whole number; the typed field it fills is an ``int``."""

    lo: int
    hi: int
    allow_k: bool = False  # "32k" = 32768 (our token counts)
    words: Mapping[str, int] = field(default_factory=dict)  # "all" -> -1 ...
    unit: str = ""

    @property
    def accepted(self) -> str:
        words = "".join(f", or {w!r}" for w in self.words)
        k = ", e.g. 8192 or 32k" if self.allow_k else ""
        unit = f" {self.unit}" if self.unit else ""
        return f"a whole number{unit} from {self.lo} to {self.hi}{k}{words}"

    @property
    def out_type(self) -> type:
        return int

    def parse(self, where: str, raw: str) -> int:
        text = raw.strip().lower().replace("_", "")
        if text in self.words:
            return self.words[text]
        mult = 1
        if self.allow_k and text.endswith("k"):
            text, mult = text[:-1], 1024
        neg = text.startswith("-")
        digits = text[1:] if neg else text
        if not re.fullmatch(r"[0-9]+", digits):
            raise FlagValueError(where, raw, self.accepted, "not a whole number")
        if len(digits.lstrip("0")) > MAX_DIGITS:
            raise FlagValueError(where, raw, self.accepted, "out of range")
        value = int(digits) * mult * (-1 if neg else 1)
        if not self.lo <= value <= self.hi:
            raise FlagValueError(where, raw, self.accepted, f"{value} is out of range")
        return value


@dataclass(frozen=True)
class Float:
    lo: float
    hi: float
    unit: str = ""
    lo_open: bool = False

    @property
    def accepted(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        low = f"above {self.lo:g}" if self.lo_open else f"from {self.lo:g}"
        return f"a number{unit} {low} to {self.hi:g}"

    @property
    def out_type(self) -> type:
        return float

    def parse(self, where: str, raw: str) -> float:
        text = raw.strip()
        if len(text) > 32 or not re.fullmatch(
            r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", text
        ):
            raise FlagValueError(where, raw, self.accepted, "not a number")
        value = float(text)
        low_ok = value > self.lo if self.lo_open else value >= self.lo
        if not math.isfinite(value) or not low_ok or value > self.hi:
            raise FlagValueError(where, raw, self.accepted, "out of range")
        return value


@dataclass(frozen=True)
class Choice:
    choices: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)

    @property
    def accepted(self) -> str:
        # Every text the parser takes, its aliases included (docs/flags.md is this text).
        by_target: dict[str, list[str]] = {}
        for alias, target in self.aliases.items():
            by_target.setdefault(target, []).append(alias)
        also = "; ".join(f"{', '.join(a)} for {t}" for t, a in by_target.items())
        return ", ".join(self.choices) + (f" (also {also})" if also else "")

    @property
    def out_type(self) -> type:
        return str

    def parse(self, where: str, raw: str) -> str:
        text = raw.strip().lower()
        text = self.aliases.get(text, text)
        if text not in self.choices:
            raise FlagValueError(where, raw, self.accepted)
        return text


@dataclass(frozen=True)
class Text:
    pattern: str
    what: str
    max_len: int = MAX_TEXT
    lower: bool = False  # ids compared case-insensitively (tier ids)

    @property
    def accepted(self) -> str:
        return f"{self.what}, at most {self.max_len} characters"

    @property
    def out_type(self) -> type:
        return str

    def parse(self, where: str, raw: str) -> str:
        text = raw.strip()
        if len(text) > self.max_len:
            raise FlagValueError(where, raw, self.accepted, f"{len(text)} characters long")
        if "\x00" in text or not re.fullmatch(self.pattern, text):
            raise FlagValueError(where, raw, self.accepted)
        return text.lower() if self.lower else text


@dataclass(frozen=True)
class Switch:
    """A flag without a value (``--enforce-eager``), or an env variable read as a boolean."""

    @property
    def accepted(self) -> str:
        # llama.cpp's common/arg.cpp is_truthy / is_falsey take on/enabled/true/1 and
        # off/disabled/false/0 for its boolean LLAMA_ARG_* variables; yes/no are ours too.
        return "1/true/yes/on/enabled or 0/false/no/off/disabled"

    @property
    def out_type(self) -> type:
        return bool

    def parse(self, where: str, raw: str) -> bool:
        text = raw.strip().lower()
        if text in ("1", "true", "yes", "on", "enabled"):
            return True
        if text in ("0", "false", "no", "off", "disabled"):
            return False
        raise FlagValueError(where, raw, self.accepted)


@dataclass(frozen=True)
class Split:
    """llama.cpp ``--tensor-split 3,2``: proportions per device (common/arg.cpp splits on , or /)."""

    max_devices: int = 16  # llama_max_devices()

    @property
    def accepted(self) -> str:
        return (
            f"up to {self.max_devices} non-negative proportions separated by commas, "
            "at least one above 0, e.g. 3,2"
        )

    @property
    def out_type(self) -> type:
        return tuple

    def parse(self, where: str, raw: str) -> tuple[float, ...]:
        parts = [p.strip() for p in re.split(r"[,/]", raw.strip())]
        if not 1 <= len(parts) <= self.max_devices:
            raise FlagValueError(where, raw, self.accepted, f"{len(parts)} entries")
        num = Float(0.0, 1e6)
        values = tuple(num.parse(where, p) for p in parts)
        if not any(v > 0 for v in values):
            raise FlagValueError(where, raw, self.accepted, "every proportion is 0")
        return values


@dataclass(frozen=True)
class JsonObject:
    """vLLM ``--speculative-config '{...}'``: a JSON object (vLLM parses it with json.loads)."""

    max_len: int = 4096
    what: str = 'a JSON object, e.g. \'{"method":"ngram","num_speculative_tokens":3}\''

    @property
    def accepted(self) -> str:
        return self.what

    @property
    def out_type(self) -> type:
        return dict

    def parse(self, where: str, raw: str) -> Mapping[str, Any]:
        if len(raw) > self.max_len:
            raise FlagValueError(where, raw, self.accepted, f"{len(raw)} characters long")
        try:
            doc = json.loads(raw, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise FlagValueError(where, raw, self.accepted, "not valid JSON") from None
        if not isinstance(doc, dict):
            raise FlagValueError(where, raw, self.accepted, "not a JSON object")
        return doc


@dataclass(frozen=True)
class IntChoice:
    """One of a few whole numbers (vLLM ``--block-size``: argparse ``choices`` of ints)."""

    choices: tuple[int, ...]

    @property
    def accepted(self) -> str:
        return ", ".join(str(c) for c in self.choices)

    @property
    def out_type(self) -> type:
        return int

    def parse(self, where: str, raw: str) -> int:
        text = raw.strip().lower()
        if text not in {str(c) for c in self.choices}:
            raise FlagValueError(where, raw, self.accepted)
        return int(text)


@dataclass(frozen=True)
class EnvFlag:
    """A boolean variable read the way its engine reads it: ``true`` are the engine's own true
    words (vLLM 0.32 ``vllm/envs.py``: ``os.environ.get(NAME, "0").strip().lower() in ("1",
    "true")``), ``false`` the words that say off. vLLM reads any other text as off; it is refused
    here, so a ``yes`` never silently means no."""

    true: tuple[str, ...] = ("1", "true")
    false: tuple[str, ...] = ("0", "false")

    @property
    def accepted(self) -> str:
        return ", ".join(self.false + self.true)

    @property
    def out_type(self) -> type:
        return bool

    def parse(self, where: str, raw: str) -> bool:
        text = raw.strip().lower()
        if text in self.true:
            return True
        if text in self.false:
            return False
        raise FlagValueError(where, raw, self.accepted)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


# vLLM 0.32 vllm/config/multimodal.py: the modalities _validate_limit_per_prompt gives options of
# their own (ImageDummyOptions, VideoDummyOptions, AudioDummyOptions, each extra="forbid"), and
# those options; BaseDummyOptions.count is Field(999, ge=0), the others Field(None, gt=0).
MM_MODALITIES: Mapping[str, tuple[str, ...]] = {
    "image": ("width", "height"),
    "video": ("num_frames", "width", "height"),
    "audio": ("length",),
}
MM_MAX_COUNT = 1_000_000  # vLLM sets no ceiling; past any prompt, catches typos
MM_MAX_SIZE = 1_048_576  # pixels per side, frames, audio samples: the same


@dataclass(frozen=True)
class MmLimits:
    """vLLM ``--limit-mm-per-prompt '{"image":0}'``: items per prompt for each modality, a count
    or ``{"count": N, ...dummy options}`` (vllm/config/multimodal.py MultiModalConfig.
    limit_per_prompt, parsed by json.loads and _validate_limit_per_prompt). A modality not named
    keeps vLLM's 999."""

    max_len: int = 4096

    @property
    def accepted(self) -> str:
        opts = "; ".join(f"{m}: {', '.join(o)}" for m, o in MM_MODALITIES.items())
        return (
            f"a JSON object of {', '.join(MM_MODALITIES)} to a count from 0 to {MM_MAX_COUNT} "
            f'or to {{"count": N, options}} (options, each from 1 to {MM_MAX_SIZE}: {opts}), '
            "e.g. '{\"image\":0}'"
        )

    @property
    def out_type(self) -> type:
        return dict

    def parse(self, where: str, raw: str) -> Mapping[str, Any]:
        doc = JsonObject(self.max_len, self.accepted).parse(where, raw)
        out: dict[str, Any] = {}
        for modality, value in doc.items():
            if modality not in MM_MODALITIES:
                raise FlagValueError(where, raw, self.accepted, f"unknown modality {modality!r}")
            if isinstance(value, dict):
                allowed = ("count", *MM_MODALITIES[modality])
                bad = [k for k in value if k not in allowed]
                if bad:
                    raise FlagValueError(
                        where, raw, self.accepted, f"{modality}: unknown option {bad[0]!r}"
                    )
                for k, v in value.items():
                    lo, hi = (0, MM_MAX_COUNT) if k == "count" else (1, MM_MAX_SIZE)
                    if not _whole(v) or not lo <= v <= hi:
                        raise FlagValueError(
                            where, raw, self.accepted, f"{modality}.{k} is not {lo} to {hi}"
                        )
                out[modality] = dict(value)
            elif _whole(value) and 0 <= value <= MM_MAX_COUNT:
                out[modality] = value
            else:
                raise FlagValueError(
                    where, raw, self.accepted, f"{modality} is not a count from 0 to {MM_MAX_COUNT}"
                )
        return out


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def mm_count(limits: Mapping[str, Any], modality: str) -> int | None:
    """The count ``--limit-mm-per-prompt`` gives a modality; None where it names none (vLLM's
    MultiModalConfig.get_limit_per_prompt then takes 999)."""
    value = limits.get(modality)
    if value is None:
        return None
    if isinstance(value, dict):
        return int(value.get("count", 999))  # BaseDummyOptions.count default
    return int(value)


Parser = Int | Float | Choice | Text | Switch | Split | JsonObject | IntChoice | EnvFlag | MmLimits

# Accepted texts shared by several rows.
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
_ON_OFF = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}
CONTEXT = Int(MIN_CONTEXT, MAX_CONTEXT, allow_k=True, unit="of tokens")
# A model reference: catalog id, id@QUANT, HF repo (org/name[:QUANT][@rev]), or a path.
MODEL_REF = Text(r"[^\s]+", "a catalog id, org/repo, org/repo:QUANT or a path", PATH_MAX)
PATH = Text(r"[^\n\r]+", "a file path", PATH_MAX)
REPO = Text(
    r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+(:[A-Za-z0-9._-]+)?",
    "a Hugging Face repo, org/name or org/name:QUANT",
)
HOST = Text(
    r"(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]+|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)",
    "an IP address or host name, e.g. 0.0.0.0",
    253,
)
NAME = Text(r"[^\s,]+", "a name without spaces or commas", 256)
PORT = Int(1, 65535)
SLOTS = Int(1, 1024, words={"-1": -1, "auto": -1}, unit="of sequences")


@dataclass(frozen=True)
class Flag:
    knob: str  # what it sets; rows with one knob are spellings of one value
    owner: Owner  # the engine that reads it, or gpu-preflight itself
    spellings: tuple[str, ...]  # command-line spellings, canonical first; () for env-only rows
    env: str | None  # the environment variable that sets it ("LLAMA_ARG_..." is read by the engine)
    parser: Parser
    role: Role
    help: str
    negations: tuple[str, ...] = ()  # spellings that set a Switch to False (--no-repack)
    option: str | None = None  # the gpu-preflight CLI option with the same meaning (plan --model)
    replacement: str | None = None  # for role "removed": what to use instead
    # llama.cpp: whether llama-fit-params takes it too (common/arg.cpp: its set_examples include
    # LLAMA_EXAMPLE_COMMON); server-only flags are left out of llama.cpp's dry run.
    fit_params: bool = True

    @property
    def takes_value(self) -> bool:
        return not isinstance(self.parser, Switch) or not self.spellings

    @property
    def canonical(self) -> str:
        return self.spellings[0] if self.spellings else (self.env or self.knob)


L: Owner = "llama.cpp"
V: Owner = "vllm"
P: Owner = "preflight"

FLAGS: tuple[Flag, ...] = (
    # --- gpu-preflight's own variables --------------------------------------------------------
    Flag(
        "model",
        P,
        (),
        "PREFLIGHT_MODEL",
        MODEL_REF,
        "planner",
        "the model to serve",
        option="--model",
    ),
    Flag(
        "model",
        P,
        (),
        "VLLM_MODEL",
        MODEL_REF,
        "planner",
        "the model (the vLLM image's variable); asks for vLLM",
    ),
    Flag(
        "engine",
        P,
        (),
        "PREFLIGHT_ENGINE",
        Choice(
            ("auto", "vllm", "llama.cpp"),
            {"llamacpp": "llama.cpp", "llama-cpp": "llama.cpp", "llama_cpp": "llama.cpp"},
        ),
        "planner",
        "the engine",
        option="--engine",
    ),
    Flag(
        "context",
        P,
        (),
        "PREFLIGHT_CONTEXT",
        CONTEXT,
        "planner",
        "context per sequence",
        option="--context",
    ),
    Flag(
        "context",
        P,
        (),
        "VLLM_MAX_MODEL_LEN",
        CONTEXT,
        "planner",
        "context per sequence (vLLM's name)",
    ),
    Flag(
        "parallel",
        P,
        (),
        "PREFLIGHT_PARALLEL",
        SLOTS,
        "planner",
        "sequences served at once",
        option="--parallel",
    ),
    Flag(
        "quantization",
        P,
        (),
        "VLLM_QUANTIZATION",
        Choice(VLLM_QUANTIZATIONS),
        "modelled",
        "the weight quantization (picks that artifact)",
    ),
    Flag(
        "kv_cache_type",
        P,
        (),
        "PREFLIGHT_KV_CACHE_TYPE",
        Choice(LLAMACPP_CACHE_TYPES + VLLM_CACHE_TYPES[1:]),
        "modelled",
        "the KV cache type, K and V",
        option="--cache-type",
    ),
    Flag(
        "tier",
        P,
        (),
        "PREFLIGHT_TIER",
        Text(r"[A-Za-z0-9._-]+", "a tier id from `gpu-preflight tiers`", 64, lower=True),
        "planner",
        "the tier",
    ),
    Flag(
        "reserve_gib",
        P,
        (),
        "PREFLIGHT_RESERVE_GB",
        Float(0.0, 4096.0, "of GiB"),
        "modelled",
        "GiB kept free on every GPU for a co-resident service",
    ),
    Flag(
        "min_tok_s",
        P,
        (),
        "PREFLIGHT_MIN_TOKS",
        Float(0.0, 100000.0, "of tokens/s", lo_open=True),
        "planner",
        "the slowest acceptable decode speed",
    ),
    Flag(
        "speculative",
        P,
        (),
        "PREFLIGHT_SPECULATIVE",
        Choice(("auto", "on", "off"), _ON_OFF),
        "planner",
        "speculative decoding with the catalog's draft",
    ),
    Flag("host", P, (), "PREFLIGHT_HOST", HOST, "planner", "the address the engine listens on"),
    Flag("port", P, (), "PREFLIGHT_PORT", PORT, "planner", "the port the engine listens on"),
    Flag(
        "dry_run",
        P,
        (),
        "PREFLIGHT_DRY_RUN",
        Switch(),
        "setting",
        "plan and print the argv, do not start the engine",
    ),
    Flag(
        "engine_check",
        P,
        (),
        "PREFLIGHT_ENGINE_CHECK",
        Choice(("auto", "on", "off"), _ON_OFF),
        "setting",
        "llama.cpp's own dry run of the planned command before it starts (auto: when "
        "llama-fit-params is in the image)",
    ),
    Flag(
        "vllm_dry_run",
        P,
        (),
        "PREFLIGHT_VLLM_DRY_RUN",
        Choice(("auto", "on", "off"), _ON_OFF),
        "setting",
        "vLLM's own start of the planned command with dummy weights, stopped at its KV cache "
        "report, before the download (auto: on GPUs, weights not on local disk, a download "
        "of 10 GiB or more; gpu_preflight/vllm_check.py)",
    ),
    Flag(
        "receipt",
        P,
        (),
        "PREFLIGHT_RECEIPT",
        Choice(("on", "off"), _ON_OFF),
        "setting",
        "measure the running engine against the plan once it is healthy (receipt.json), and "
        "calibrate later plans from those receipts",
    ),
    Flag(
        "receipt_timeout",
        P,
        (),
        "PREFLIGHT_RECEIPT_TIMEOUT",
        Float(1.0, 86400.0, "of seconds"),
        "setting",
        "how long the receipt waits for the engine to become healthy",
    ),
    Flag(
        "receipt_tokens",
        P,
        (),
        "PREFLIGHT_RECEIPT_TOKENS",
        Int(8, 4096, unit="of tokens"),
        "setting",
        "tokens each stream of the receipt's decode workload asks for",
    ),
    Flag(
        "bench",
        P,
        (),
        "PREFLIGHT_BENCH",
        Choice(("auto", "on", "off", "force")),
        "setting",
        "the fio storage pass (auto: when /bench exists)",
    ),
    Flag(
        "bench_dir", P, (), "PREFLIGHT_BENCH_DIR", PATH, "setting", "where fio runs (a local disk)"
    ),
    Flag(
        "pinned_cap_gib",
        P,
        (),
        "PREFLIGHT_PINNED_CAP_GB",
        Float(0.0, 4096.0, "of GiB"),
        "setting",
        "how much the pinned-memory probe may lock",
    ),
    Flag(
        "profile_dir",
        P,
        (),
        "PREFLIGHT_PROFILE_DIR",
        PATH,
        "setting",
        "where profile.json and plan.json are written",
    ),
    Flag(
        "models_file",
        P,
        (),
        "PREFLIGHT_MODELS_FILE",
        PATH,
        "setting",
        "your own model catalog (schemas/models.schema.json)",
    ),
    Flag(
        "tiers_file",
        P,
        (),
        "PREFLIGHT_TIERS_FILE",
        PATH,
        "setting",
        "your own tier table (schemas/tiers.schema.json)",
    ),
    # --- a Kubernetes pod written by `gpu-preflight k8s` (cluster/lws.py) ----------------------
    Flag(
        "k8s_plan",
        P,
        (),
        "PREFLIGHT_K8S_PLAN",
        JsonObject(
            16384,
            "the JSON object `gpu-preflight k8s` wrote into the manifest, unchanged",
        ),
        "setting",
        "the pool's pinned plan: a node or plan that differs from it is refused (exit 3)",
    ),
    # LeaderWorkerSet sets these in every pod of a group (lws: pkg/utils/pod/pod_utils.go
    # AddLWSVariables); the group is at most 64 nodes here, as the plan's -pp is.
    Flag(
        "lws_group_size",
        P,
        (),
        "LWS_GROUP_SIZE",
        Int(1, 64, unit="of nodes"),
        "setting",
        "the LeaderWorkerSet group's size (LeaderWorkerSet sets it): vLLM's --nnodes",
    ),
    Flag(
        "lws_worker_index",
        P,
        (),
        "LWS_WORKER_INDEX",
        Int(0, 63),
        "setting",
        "this pod's index in its group, below LWS_GROUP_SIZE (LeaderWorkerSet sets it): "
        "vLLM's --node-rank",
    ),
    Flag(
        "lws_leader_address",
        P,
        (),
        "LWS_LEADER_ADDRESS",
        Text(
            r"[A-Za-z0-9]([A-Za-z0-9.:-]{0,251}[A-Za-z0-9])?",
            "the leader pod's DNS name or IP address (LeaderWorkerSet sets it)",
            253,
        ),
        "setting",
        "the group leader's address (LeaderWorkerSet sets it): vLLM's --master-addr",
    ),
    Flag(
        "kubeconfig",
        P,
        (),
        "KUBECONFIG",
        PATH,
        "setting",
        "`gpu-preflight k8s --from-cluster`: the kubeconfig file(s) when --kubeconfig is not "
        "given (the kubernetes client's own variable)",
    ),
    # --- llama-server --------------------------------------------------------------------------
    Flag("model", L, ("--model", "-m"), "LLAMA_ARG_MODEL", PATH, "planner", "model file"),
    Flag(
        "hf_repo",
        L,
        ("--hf-repo", "-hf", "-hfr"),
        "LLAMA_ARG_HF_REPO",
        REPO,
        "planner",
        "GGUF repo on the Hub, org/name[:QUANT]",
    ),
    Flag(
        "hf_file",
        L,
        ("--hf-file", "-hff"),
        "LLAMA_ARG_HF_FILE",
        PATH,
        "planner",
        "GGUF file inside --hf-repo",
    ),
    Flag(
        "ctx_total",
        L,
        ("--ctx-size", "-c"),
        "LLAMA_ARG_CTX_SIZE",
        Int(0, MAX_CONTEXT * 1024, allow_k=True, unit="of tokens"),
        "planner",
        "KV cells of all slots together (0: the model's trained length)",
    ),
    Flag(
        "parallel",
        L,
        ("--parallel", "-np"),
        "LLAMA_ARG_N_PARALLEL",
        SLOTS,
        "planner",
        "server slots (-1: auto = 4, unified KV)",
    ),
    Flag(
        "batch",
        L,
        ("--batch-size", "-b"),
        "LLAMA_ARG_BATCH",
        Int(1, 1_048_576),
        "modelled",
        "logical batch",
    ),
    Flag(
        "ubatch",
        L,
        ("--ubatch-size", "-ub"),
        "LLAMA_ARG_UBATCH",
        Int(1, 1_048_576),
        "modelled",
        "physical batch: sizes the compute buffer",
    ),
    Flag(
        "n_gpu_layers",
        L,
        ("--n-gpu-layers", "-ngl", "--gpu-layers"),
        "LLAMA_ARG_N_GPU_LAYERS",
        Int(0, 100_000, words={"all": -1, "auto": -2, "-1": -2, "-2": -1}),
        "planner",
        "layers in VRAM ('auto': the planner fits it)",
    ),
    Flag(
        "n_cpu_moe",
        L,
        ("--n-cpu-moe", "-ncmoe"),
        "LLAMA_ARG_N_CPU_MOE",
        Int(0, 100_000),
        "planner",
        "layers whose experts stay in host RAM",
    ),
    Flag(
        "cpu_moe",
        L,
        ("--cpu-moe", "-cmoe"),
        "LLAMA_ARG_CPU_MOE",
        Switch(),
        "planner",
        "every layer's experts in host RAM",
    ),
    Flag(
        "tensor_split",
        L,
        ("--tensor-split", "-ts"),
        "LLAMA_ARG_TENSOR_SPLIT",
        Split(),
        "planner",
        "share of layers per GPU",
    ),
    Flag(
        "split_mode",
        L,
        ("--split-mode", "-sm"),
        "LLAMA_ARG_SPLIT_MODE",
        Choice(("layer", "none")),
        "modelled",
        "how layers spread over GPUs (row and tensor are not modelled)",
    ),
    Flag(
        "main_gpu",
        L,
        ("--main-gpu", "-mg"),
        "LLAMA_ARG_MAIN_GPU",
        Int(0, 15),
        "modelled",
        "the GPU used with --split-mode none",
    ),
    # common/arg.cpp parse_device_list: "none", or names ggml_backend_dev_by_name knows (CUDA0,
    # Vulkan1, ...; a CPU device is refused); the list is the model's devices in that order
    # (src/llama.cpp llama_prepare_model_devices), which --tensor-split and the output layer
    # (the last device) follow. RPC[host:port] devices are not planned on.
    Flag(
        "device",
        L,
        ("--device", "-dev"),
        "LLAMA_ARG_DEVICE",
        Text(
            r"none|[A-Za-z][A-Za-z_]*[0-9]+(,[A-Za-z][A-Za-z_]*[0-9]+)*",
            "none, or device names separated by commas, e.g. CUDA1,CUDA0 or Vulkan0",
            256,
        ),
        "planner",
        "the GPUs used and their order (the last holds the output layer)",
    ),
    Flag(
        "flash_attn",
        L,
        ("--flash-attn", "-fa"),
        "LLAMA_ARG_FLASH_ATTN",
        Choice(("on", "off", "auto"), _ON_OFF),
        "modelled",
        "flash attention",
        option="--flash-attn",
    ),
    Flag(
        "cache_type_k",
        L,
        ("--cache-type-k", "-ctk"),
        "LLAMA_ARG_CACHE_TYPE_K",
        Choice(LLAMACPP_CACHE_TYPES),
        "modelled",
        "K cache type",
    ),
    Flag(
        "cache_type_v",
        L,
        ("--cache-type-v", "-ctv"),
        "LLAMA_ARG_CACHE_TYPE_V",
        Choice(LLAMACPP_CACHE_TYPES),
        "modelled",
        "V cache type",
    ),
    Flag(
        "kv_unified",
        L,
        ("--kv-unified", "-kvu"),
        "LLAMA_ARG_KV_UNIFIED",
        Switch(),
        "modelled",
        "one KV buffer shared by the slots",
        negations=("--no-kv-unified", "-no-kvu"),
        fit_params=False,
    ),
    Flag(
        "fit",
        L,
        ("--fit", "-fit"),
        "LLAMA_ARG_FIT",
        Choice(("on", "off"), _ON_OFF),
        "planner",
        "llama.cpp's own fitting (the plan is the fit: off)",
    ),
    Flag(
        "fit_target",
        L,
        ("--fit-target", "-fitt"),
        "LLAMA_ARG_FIT_TARGET",
        Text(r"[0-9,]+", "MiB per device, e.g. 1024,512", 256),
        "passthrough",
        "margin llama.cpp's fit keeps (only with --fit on)",
    ),
    Flag(
        "fit_ctx",
        L,
        ("--fit-ctx", "-fitc"),
        "LLAMA_ARG_FIT_CTX",
        Int(0, MAX_CONTEXT),
        "passthrough",
        "smallest context llama.cpp's fit may choose (only with --fit on)",
    ),
    Flag(
        "repack",
        L,
        ("--repack",),
        "LLAMA_ARG_REPACK",
        Switch(),
        "modelled",
        "CPU weight repacking",
        negations=("--no-repack", "-nr"),
    ),
    Flag(
        "load_mode",
        L,
        ("--load-mode", "-lm"),
        "LLAMA_ARG_LOAD_MODE",
        Choice(("auto", "none", "mmap", "mlock", "mmap+mlock", "dio")),
        "passthrough",
        "how the file is loaded; host weights are counted resident in every mode",
    ),
    Flag(
        "op_offload",
        L,
        ("--op-offload",),
        None,
        Switch(),
        "modelled",
        "prompt-batch ops on host-resident weights run on the GPU (their copies need room there)",
        negations=("--no-op-offload",),
    ),
    Flag(
        "ctx_checkpoints",
        L,
        ("--ctx-checkpoints", "-ctxcp", "--swa-checkpoints"),
        "LLAMA_ARG_CTX_CHECKPOINTS",
        Int(0, 1024),
        "modelled",
        "sliding-window KV checkpoints each slot keeps in host RAM",
        fit_params=False,
    ),
    Flag(
        "cache_ram",
        L,
        ("--cache-ram", "-cram"),
        "LLAMA_ARG_CACHE_RAM",
        Int(0, 1_048_576, unit="of MiB"),
        "modelled",
        "host RAM for llama-server's prompt cache (0: off; its unlimited -1 is refused)",
        fit_params=False,
    ),
    Flag("mlock", L, ("--mlock",), None, Switch(), "removed", "", replacement="--load-mode mlock"),
    Flag(
        "no_mmap", L, ("--no-mmap",), None, Switch(), "removed", "", replacement="--load-mode none"
    ),
    Flag(
        "draft_model",
        L,
        ("--spec-draft-model", "-md", "--model-draft"),
        "LLAMA_ARG_SPEC_DRAFT_MODEL",
        PATH,
        "modelled",
        "draft model file",
        fit_params=False,
    ),
    Flag(
        "draft_hf",
        L,
        ("--spec-draft-hf", "-hfd", "-hfrd", "--hf-repo-draft"),
        "LLAMA_ARG_SPEC_DRAFT_HF_REPO",
        REPO,
        "modelled",
        "draft GGUF repo",
        fit_params=False,
    ),
    Flag(
        "spec_type",
        L,
        ("--spec-type",),
        "LLAMA_ARG_SPEC_TYPE",
        Text(r"[a-z0-9,_-]+", "a speculative type list, e.g. draft-simple or ngram-cache", 256),
        "modelled",
        "speculative decoding method",
        fit_params=False,
    ),
    Flag(
        "draft_ngl",
        L,
        ("--spec-draft-ngl", "-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft"),
        None,
        Int(0, 100_000, words={"all": -1, "auto": -2}),
        "planner",
        "draft layers in VRAM (the planner: all of them when the target is on the GPU)",
        fit_params=False,
    ),
    Flag(
        "draft_type_k",
        L,
        ("--spec-draft-type-k", "-ctkd", "--cache-type-k-draft"),
        None,
        Choice(LLAMACPP_CACHE_TYPES),
        "planner",
        "draft K cache type (the planner: the target's)",
    ),
    Flag(
        "draft_type_v",
        L,
        ("--spec-draft-type-v", "-ctvd", "--cache-type-v-draft"),
        None,
        Choice(LLAMACPP_CACHE_TYPES),
        "planner",
        "draft V cache type (the planner: the target's)",
    ),
    Flag(
        "draft_n_max",
        L,
        ("--spec-draft-n-max",),
        None,
        Int(1, 64),
        "planner",
        "tokens drafted per step",
        fit_params=False,
    ),
    Flag(
        "mmproj",
        L,
        ("--mmproj", "-mm"),
        "LLAMA_ARG_MMPROJ",
        PATH,
        "modelled",
        "multimodal projector file",
    ),
    Flag(
        "mmproj_url",
        L,
        ("--mmproj-url", "-mmu"),
        "LLAMA_ARG_MMPROJ_URL",
        Text(r"\S+", "a URL", PATH_MAX),
        "modelled",
        "multimodal projector URL",
    ),
    Flag(
        "mmproj_auto",
        L,
        ("--mmproj-auto",),
        "LLAMA_ARG_MMPROJ_AUTO",
        Switch(),
        "modelled",
        "download the repo's projector with -hf",
        negations=("--no-mmproj", "--no-mmproj-auto"),
        fit_params=False,
    ),
    Flag("lora", L, ("--lora",), None, PATH, "modelled", "LoRA adapter file"),
    Flag(
        "lora_scaled",
        L,
        ("--lora-scaled",),
        None,
        Text(r"[^\n]+", "FILE:SCALE,...", PATH_MAX),
        "modelled",
        "LoRA adapters with scales",
    ),
    Flag(
        "override_tensor",
        L,
        ("--override-tensor", "-ot"),
        "LLAMA_ARG_OVERRIDE_TENSOR",
        Text(r"[^\n]+", "PATTERN=BUFFER,...", PATH_MAX),
        "modelled",
        "tensor placement overrides (not modelled: refused)",
    ),
    Flag(
        "swa_full",
        L,
        ("--swa-full",),
        "LLAMA_ARG_SWA_FULL",
        Switch(),
        "modelled",
        "sliding-window layers keep the whole context (no SWA checkpoints)",
    ),
    # Flags whose memory the planner cannot predict: refused before any probe
    # (inputs/model_naming.py refuse_unmodelled), like --override-tensor. Left untabled they would
    # pass through to llama-server unread and the plan would not be what runs.
    Flag(
        "no_kv_offload",
        L,
        ("--no-kv-offload", "-nkvo"),
        None,
        Switch(),
        "modelled",
        "KV cache in host RAM (not modelled: refused)",
    ),
    # -kvo/-nkvo's variable (common/arg.cpp set_env LLAMA_ARG_KV_OFFLOAD): on is llama.cpp's
    # default and leaves memory as planned, so it reaches the engine untouched; off is refused.
    Flag(
        "kv_offload",
        L,
        (),
        "LLAMA_ARG_KV_OFFLOAD",
        Switch(),
        "passthrough",
        "KV cache offloaded to the GPUs (off: in host RAM, not modelled: refused)",
    ),
    Flag(
        "n_cpu_ffn",
        L,
        ("--n-cpu-ffn", "-ncffn"),
        "LLAMA_ARG_N_CPU_FFN",
        Int(0, 100_000),
        "modelled",
        "dense FFN weights of the first N layers in host RAM (not modelled: refused)",
    ),
    Flag(
        "rpc",
        L,
        ("--rpc",),
        "LLAMA_ARG_RPC",
        Text(r"[^\s]+", "HOST:PORT,...", PATH_MAX),
        "modelled",
        "remote devices over RPC (not modelled: refused)",
    ),
    Flag(
        "override_kv",
        L,
        ("--override-kv",),
        None,
        Text(r"[^\n]+", "KEY=TYPE:VALUE,...", PATH_MAX),
        "modelled",
        "model metadata overrides (not modelled: refused)",
    ),
    Flag(
        "draft_override_tensor",
        L,
        ("--spec-draft-override-tensor", "-otd", "--override-tensor-draft"),
        None,
        Text(r"[^\n]+", "PATTERN=BUFFER,...", PATH_MAX),
        "modelled",
        "draft tensor placement overrides (not modelled: refused)",
    ),
    Flag(
        "draft_cpu_moe",
        L,
        ("--spec-draft-cpu-moe", "-cmoed", "--cpu-moe-draft"),
        "LLAMA_ARG_SPEC_DRAFT_CPU_MOE",
        Switch(),
        "modelled",
        "draft experts in host RAM (not modelled: refused)",
    ),
    Flag(
        "draft_n_cpu_moe",
        L,
        ("--spec-draft-n-cpu-moe", "--spec-draft-ncmoe", "-ncmoed", "--n-cpu-moe-draft"),
        "LLAMA_ARG_SPEC_DRAFT_N_CPU_MOE",
        Int(0, 100_000),
        "modelled",
        "draft layers whose experts stay in host RAM (not modelled: refused)",
    ),
    Flag(
        "draft_device",
        L,
        ("--spec-draft-device", "-devd", "--device-draft"),
        None,
        Text(r"[^\s]+", "DEVICE,...", PATH_MAX),
        "modelled",
        "the draft model's devices (not modelled: refused)",
    ),
    Flag(
        "host",
        L,
        ("--host",),
        "LLAMA_ARG_HOST",
        HOST,
        "planner",
        "listen address",
        fit_params=False,
    ),
    Flag(
        "port", L, ("--port",), "LLAMA_ARG_PORT", PORT, "planner", "listen port", fit_params=False
    ),
    Flag(
        "alias",
        L,
        ("--alias", "-a"),
        "LLAMA_ARG_ALIAS",
        NAME,
        "planner",
        "the model name the API reports",
        fit_params=False,
    ),
    Flag(
        "api_key",
        L,
        ("--api-key",),
        None,
        Text(r".*", "a key", 4096),
        "secret",
        "",
        replacement="LLAMA_API_KEY",
    ),
    Flag(
        "hf_token",
        L,
        ("--hf-token", "-hft"),
        None,
        Text(r".*", "a token", 4096),
        "secret",
        "",
        replacement="HF_TOKEN",
    ),
    # --- vLLM ----------------------------------------------------------------------------------
    Flag(
        "model", V, ("--model",), None, MODEL_REF, "planner", "the model (also `vllm serve MODEL`)"
    ),
    Flag("context", V, ("--max-model-len",), None, CONTEXT, "planner", "context per sequence"),
    Flag(
        "gpu_memory_utilization",
        V,
        ("--gpu-memory-utilization",),
        None,
        Float(0.05, 1.0, "(fraction of total GPU memory)"),
        "planner",
        "vLLM's memory budget",
        option="--gpu-memory-utilization",
    ),
    Flag(
        "tensor_parallel",
        V,
        ("--tensor-parallel-size", "-tp"),
        None,
        Int(1, 64),
        "planner",
        "tensor parallel GPUs",
    ),
    Flag(
        "data_parallel",
        V,
        ("--data-parallel-size", "-dp"),
        None,
        Int(1, 64),
        "modelled",
        "data parallel ranks: world = DP x TP x PP GPUs, each DP rank its own weights and KV "
        "pool on its own TP x PP cards (vllm/config/parallel.py ParallelConfig)",
    ),
    Flag(
        "pipeline_parallel",
        V,
        ("--pipeline-parallel-size", "-pp"),
        None,
        Int(1, 64),
        "modelled",
        "pipeline parallel stages: above 1, that many stages over the first GPUs, each stage's "
        "layers sized to its card (VLLM_PP_LAYER_PARTITION); not with a draft model",
    ),
    Flag(
        "allow_long_context",
        P,
        (),
        "VLLM_ALLOW_LONG_MAX_MODEL_LEN",
        # vllm/envs.py reads it as "1"/"true" (anything else is off).
        EnvFlag(),
        "modelled",
        "vLLM's own: --max-model-len above the model's max_position_embeddings is allowed "
        "(vllm/config/model.py _get_and_verify_max_len); refused without it",
    ),
    Flag(
        "pp_layer_partition",
        P,
        (),
        "VLLM_PP_LAYER_PARTITION",
        Text(r"[0-9]{1,4}( *, *[0-9]{1,4}){0,63}", "layers per stage, comma-separated", 320),
        "modelled",
        "vLLM's layers per pipeline stage (get_pp_indices); the planner sets it where it plans "
        "pipeline parallel on cards that differ, and plans with yours where you set it",
    ),
    Flag("parallel", V, ("--max-num-seqs",), None, Int(1, 4096), "planner", "sequences at once"),
    Flag(
        "max_num_batched_tokens",
        V,
        ("--max-num-batched-tokens",),
        None,
        Int(1, 1_048_576),
        "modelled",
        "tokens per scheduler step: sizes the profiling peak",
    ),
    Flag(
        "kv_cache_type",
        V,
        ("--kv-cache-dtype",),
        None,
        Choice(VLLM_CACHE_TYPES),
        "modelled",
        "KV cache dtype",
    ),
    Flag(
        "quantization",
        V,
        ("--quantization", "-q"),
        None,
        Choice(VLLM_QUANTIZATIONS),
        "modelled",
        "weight quantization",
    ),
    Flag(
        "dtype",
        V,
        ("--dtype",),
        None,
        Choice(("auto", "bfloat16", "float16", "half"), {"bf16": "bfloat16", "fp16": "float16"}),
        "modelled",
        "activation dtype (16-bit only: float32 is not modelled)",
    ),
    Flag(
        "enforce_eager",
        V,
        ("--enforce-eager",),
        None,
        Switch(),
        "modelled",
        "no CUDA graphs",
        negations=("--no-enforce-eager",),
    ),
    Flag(
        "cpu_offload_gb",
        V,
        ("--cpu-offload-gb",),
        None,
        Float(0.0, 4096.0, "of GiB per GPU"),
        "modelled",
        "weights kept in host RAM",
    ),
    Flag(
        "kv_cache_memory_bytes",
        V,
        ("--kv-cache-memory-bytes",),
        None,
        Int(1, 2**50, unit="of bytes"),
        "modelled",
        "the KV pool's size, instead of the budget's rest",
    ),
    Flag(
        "speculative_config",
        V,
        ("--speculative-config", "-sc"),
        None,
        JsonObject(),
        "modelled",
        "speculative decoding",
    ),
    Flag(
        "limit_mm_per_prompt",
        V,
        ("--limit-mm-per-prompt",),
        None,
        MmLimits(),
        "modelled",
        "items per prompt of each modality: sizes the encoder profiling pass "
        "(MultiModalBudget); 0 for every modality of the tower drops the tower",
    ),
    Flag(
        "language_model_only",
        V,
        ("--language-model-only",),
        None,
        Switch(),
        "modelled",
        "every modality's limit 0: no encoder pass, the tower is not built",
        negations=("--no-language-model-only",),
    ),
    Flag(
        "skip_mm_profiling",
        V,
        ("--skip-mm-profiling",),
        None,
        Switch(),
        "modelled",
        "no encoder profiling pass: its memory is not in vLLM's budget",
        negations=("--no-skip-mm-profiling",),
    ),
    Flag(
        "mm_encoder_tp_mode",
        V,
        ("--mm-encoder-tp-mode",),
        None,
        Choice(("weights", "data")),
        "modelled",
        "the vision tower under tensor parallel: weights sharded, or data split over ranks",
    ),
    Flag(
        "block_size",
        V,
        ("--block-size",),
        None,
        IntChoice((1, 8, 16, 32, 64, 128)),
        "modelled",
        "KV page size in tokens",
    ),
    Flag(
        "revision",
        V,
        ("--revision",),
        None,
        Text(r"[A-Za-z0-9][A-Za-z0-9._/-]*", "a branch, tag or commit", 256),
        "planner",
        "the model's Hub revision (also org/repo@REV in the model's name)",
    ),
    Flag("host", V, ("--host",), None, HOST, "planner", "listen address"),
    Flag("port", V, ("--port",), None, PORT, "planner", "listen port"),
    Flag(
        "alias",
        V,
        ("--served-model-name",),
        None,
        NAME,
        "planner",
        "the model name the API reports",
    ),
    Flag(
        "api_key",
        V,
        ("--api-key",),
        None,
        Text(r".*", "a key", 4096),
        "secret",
        "",
        replacement="VLLM_API_KEY",
    ),
)


# ---------------------------------------------------------------------------------------------
# Each knob's default: its value when nobody sets it, and where that value comes from. One
# ``Knob`` per knob, with one ``Default`` per owner of its rows (gpu-preflight's own, llama-server's,
# vLLM's; a test holds the owners equal to the rows'). ``value=None`` is an explicit "no fixed
# value": the model, the hardware or the planner decides, and ``cited`` says which.
# llama-server: llama.cpp of llama-cpp-python 0.3.36, ``common/common.h`` ``common_params``
# (server-only changes in ``common/arg.cpp``). vLLM 0.32: ``vllm/engine/arg_utils.py``
# ``EngineArgs`` and the ``vllm/config/*.py`` fields it takes its defaults from.

LLAMA_DEFAULT = "llama-server 0.3.36 default"
VLLM_DEFAULT = "vLLM 0.32 default"
OWN_DEFAULT = "gpu-preflight"


@dataclass(frozen=True)
class Default:
    """A knob's value when it is not set, and its source (cited: file and function)."""

    value: Any  # None: no fixed value (who decides is in `cited`)
    cited: str


@dataclass(frozen=True)
class Knob:
    name: str
    defaults: Mapping[Owner, Default]  # one per owner of the knob's rows

    def default(self, owner: str | None = None) -> Default:
        """The default of `owner` (an engine), or gpu-preflight's (or the only one) without one."""
        if owner in self.defaults:
            return self.defaults[owner]  # type: ignore[index]
        if "preflight" in self.defaults:
            return self.defaults["preflight"]
        return next(iter(self.defaults.values()))


def _l(value: Any, shown: str, where: str) -> dict[Owner, Default]:
    return {"llama.cpp": Default(value, f"{LLAMA_DEFAULT} ({shown}): {where}")}


def _v(value: Any, shown: str, where: str) -> dict[Owner, Default]:
    return {"vllm": Default(value, f"{VLLM_DEFAULT} ({shown}): {where}")}


def _p(value: Any, shown: str, why: str) -> dict[Owner, Default]:
    return {"preflight": Default(value, f"{OWN_DEFAULT} ({shown}): {why}")}


_CH = "common/common.h common_params"

KNOBS: tuple[Knob, ...] = (
    Knob(
        "model",
        _p(None, "none", "the tier's catalog models when unset (plan/search.py)")
        | _l(None, "none", f"{_CH}.model: llama-server needs -m or -hf")
        | _v(None, "none", "vllm/config/model.py ModelConfig.model: `vllm serve` needs one"),
    ),
    Knob("engine", _p(None, "auto", "the tier's engines, in the tier table's order")),
    Knob(
        "context",
        _p(None, "planner", "the largest context that fits, up to the tier's target")
        | _v(
            None,
            "the model's max_position_embeddings",
            "vllm/config/model.py ModelConfig.max_model_len (None: get_and_verify_max_len)",
        ),
    ),
    Knob(
        "parallel",
        _p(None, "planner", "the tier's parallel")
        | _l(
            -1,
            "-np auto = 4 slots, unified KV",
            "common/arg.cpp sets n_parallel = -1 for the server; "
            "tools/server/server.cpp main turns it into 4 slots and kv_unified",
        )
        | _v(
            None,
            "by device, 1024 on >= 70 GiB cards other than A100, else 256",
            "vllm/engine/"
            "arg_utils.py EngineArgs.get_batch_defaults (OPENAI_API_SERVER max_num_seqs)",
        ),
    ),
    Knob(
        "quantization",
        _p(None, "the checkpoint's", "the artifact the model names, or the tier's")
        | _v(
            None,
            "the checkpoint's",
            "vllm/config/model.py ModelConfig.quantization (None: "
            "from the checkpoint's quantization_config)",
        ),
    ),
    Knob(
        "kv_cache_type",
        _p(None, "the engine's", "each engine's own: llama-server f16, vLLM auto")
        | _v("auto", "auto", "vllm/config/cache.py CacheConfig.cache_dtype"),
    ),
    Knob("tier", _p(None, "by GPU memory", "the tier table's tier for the largest card")),
    Knob("reserve_gib", _p(0.0, "0", "nothing is kept free for another service unless asked")),
    Knob("min_tok_s", _p(1.0, "1", "a plan slower than 1 token/s is not useful to serve")),
    Knob("speculative", _p(None, "the tier's", "the tier table's speculative setting")),
    Knob(
        "host",
        _p("0.0.0.0", "0.0.0.0", "inside a container: reachable through the published port")
        | _l("127.0.0.1", "127.0.0.1", f"{_CH}.hostname")
        | _v(None, "all interfaces", "vllm/entrypoints/launchers/cli_args.py FrontendArgs.host"),
    ),
    Knob(
        "port",
        _p(8080, "8080", "one port for both images: llama-server's own")
        | _l(8080, "8080", f"{_CH}.port")
        | _v(8000, "8000", "vllm/entrypoints/launchers/cli_args.py FrontendArgs.port"),
    ),
    Knob("dry_run", _p(False, "off", "`run` starts the engine")),
    Knob("engine_check", _p("auto", "auto", "llama.cpp's dry run where llama-fit-params is")),
    Knob("vllm_dry_run", _p("auto", "auto", "vLLM's dry run on GPUs before a big download")),
    Knob("receipt", _p("on", "on", "measure the running engine against its plan")),
    Knob(
        "receipt_timeout",
        _p(1800.0, "1800 s", "receipt/take.py DEFAULT_TIMEOUT_S: a slow first load"),
    ),
    Knob("receipt_tokens", _p(128, "128", "receipt/take.py DEFAULT_TOKENS: enough steps to time")),
    Knob("bench", _p("auto", "auto", "fio only where /bench exists")),
    Knob("bench_dir", _p("/bench", "/bench", "inputs/probe_options.py DEFAULT_BENCH_DIR")),
    Knob("pinned_cap_gib", _p(16.0, "16 GiB", "probe/collect.py DEFAULT_PINNED_CAP")),
    Knob(
        "profile_dir", _p("/var/lib/gpu-preflight", "the volume", "launch.py DEFAULT_PROFILE_DIR")
    ),
    Knob("models_file", _p(None, "the built-in catalog", "gpu_preflight/data/models.json")),
    Knob("tiers_file", _p(None, "the built-in tiers", "gpu_preflight/data/tiers.json")),
    Knob("k8s_plan", _p(None, "none", "not in a pod written by `gpu-preflight k8s`")),
    Knob("lws_group_size", _p(None, "none", "not in a LeaderWorkerSet group")),
    Knob("lws_worker_index", _p(None, "none", "not in a LeaderWorkerSet group")),
    Knob("lws_leader_address", _p(None, "none", "not in a LeaderWorkerSet group")),
    Knob("kubeconfig", _p(None, "~/.kube/config", "the kubernetes client's own default")),
    Knob("hf_repo", _l(None, "none", f"{_CH}.model.hf_repo")),
    Knob("hf_file", _l(None, "by quant", f"{_CH}.model.hf_file (from the repo's :QUANT tag)")),
    Knob("ctx_total", _l(0, "0 = the model's trained length", f"{_CH}.n_ctx")),
    Knob("batch", _l(2048, "2048", f"{_CH}.n_batch")),
    Knob("ubatch", _l(512, "512", f"{_CH}.n_ubatch")),
    # llama.cpp's -1 is auto; the row parses it to -2 (inputs/overrides.py NGL_AUTO), the value
    # the record holds for auto (-1 there is "all").
    Knob("n_gpu_layers", _l(-2, "auto", f"{_CH}.n_gpu_layers = -1, auto, fitted")),
    Knob("n_cpu_moe", _l(0, "0", "common/arg.cpp --n-cpu-moe (no expert override)")),
    Knob("cpu_moe", _l(False, "off", "common/arg.cpp --cpu-moe (no expert override)")),
    Knob("tensor_split", _l(None, "by free memory", f"{_CH}.tensor_split (all 0)")),
    Knob("split_mode", _l("layer", "layer", f"{_CH}.split_mode")),
    Knob("main_gpu", _l(0, "0", f"{_CH}.main_gpu")),
    Knob("device", _l(None, "every GPU", f"{_CH}.devices (empty: all)")),
    Knob("flash_attn", _l("auto", "auto", f"{_CH}.flash_attn_type")),
    Knob("cache_type_k", _l("f16", "f16", f"{_CH}.cache_type_k")),
    Knob("cache_type_v", _l("f16", "f16", f"{_CH}.cache_type_v")),
    Knob("kv_unified", _l(False, "off; on with -np auto", f"{_CH}.kv_unified")),
    Knob("fit", _l("on", "on", f"{_CH}.fit_params")),
    Knob("fit_target", _l(None, "1024 MiB per device", f"{_CH}.fit_params_target")),
    Knob("fit_ctx", _l(4096, "4096", f"{_CH}.fit_params_min_ctx")),
    Knob("repack", _l(True, "on", f"{_CH}.no_extra_bufts = false")),
    Knob("load_mode", _l("auto", "auto", f"{_CH}.load_mode")),
    Knob("op_offload", _l(True, "on", f"{_CH}.no_op_offload = false")),
    Knob("ctx_checkpoints", _l(32, "32", f"{_CH}.n_ctx_checkpoints")),
    Knob("cache_ram", _l(8192, "8192 MiB", f"{_CH}.cache_ram_mib")),
    Knob("mlock", _l(None, "removed", "common/arg.cpp: --load-mode mlock")),
    Knob("no_mmap", _l(None, "removed", "common/arg.cpp: --load-mode none")),
    Knob("draft_model", _l(None, "none", "common_params_speculative_draft.mparams")),
    Knob("draft_hf", _l(None, "none", "common_params_speculative_draft.mparams.hf_repo")),
    Knob("spec_type", _l(None, "none", "common_params_speculative.types (NONE)")),
    Knob(
        "draft_ngl",
        _l(
            None,
            "the planner, all where the target is on the GPU, else 0",
            "common_params_speculative_draft.n_gpu_layers, -1 = llama-server's own",
        ),
    ),
    Knob(
        "draft_type_k",
        _l(None, "the target's (the planner)", "common_params_speculative_draft.cache_type_k f16"),
    ),
    Knob(
        "draft_type_v",
        _l(None, "the target's (the planner)", "common_params_speculative_draft.cache_type_v f16"),
    ),
    Knob("draft_n_max", _l(3, "3", "common_params_speculative_draft.n_max")),
    Knob("mmproj", _l(None, "none", f"{_CH}.mmproj")),
    Knob("mmproj_url", _l(None, "none", f"{_CH}.mmproj.url")),
    Knob("mmproj_auto", _l(None, "on with -hf", f"{_CH}.no_mmproj = false")),
    Knob("lora", _l(None, "none", f"{_CH}.lora_adapters")),
    Knob("lora_scaled", _l(None, "none", f"{_CH}.lora_adapters")),
    Knob("override_tensor", _l(None, "none", f"{_CH}.tensor_buft_overrides")),
    Knob("swa_full", _l(False, "off", f"{_CH}.swa_full")),
    Knob("no_kv_offload", _l(False, "off (KV offloaded)", f"{_CH}.no_kv_offload")),
    Knob("kv_offload", _l(True, "on", f"{_CH}.no_kv_offload = false")),
    Knob("n_cpu_ffn", _l(0, "0", "common/arg.cpp --n-cpu-ffn (no FFN override)")),
    Knob("rpc", _l(None, "none", f"{_CH}.rpc_servers")),
    Knob("override_kv", _l(None, "none", f"{_CH}.kv_overrides")),
    Knob("draft_override_tensor", _l(None, "none", f"{_CH}.speculative tensor_buft_overrides")),
    Knob("draft_cpu_moe", _l(False, "off", "common/arg.cpp --spec-draft-cpu-moe")),
    Knob("draft_n_cpu_moe", _l(0, "0", "common/arg.cpp --spec-draft-n-cpu-moe")),
    Knob("draft_device", _l(None, "the target's", f"{_CH}.speculative devices")),
    Knob(
        "alias",
        _l(None, "the model's name", f"{_CH}.model_alias")
        | _v(None, "the model's name", "vllm/config/model.py ModelConfig.served_model_name"),
    ),
    Knob(
        "api_key",
        _l(None, "none", f"{_CH}.api_keys")
        | _v(None, "none", "vllm/entrypoints/launchers/cli_args.py FrontendArgs.api_key"),
    ),
    Knob("hf_token", _l(None, "none: HF_TOKEN", f"{_CH}.hf_token")),
    Knob(
        "gpu_memory_utilization",
        _v(0.92, "0.92", "vllm/config/cache.py CacheConfig.gpu_memory_utilization"),
    ),
    Knob(
        "tensor_parallel", _v(1, "1", "vllm/config/parallel.py ParallelConfig.tensor_parallel_size")
    ),
    Knob("data_parallel", _v(1, "1", "vllm/config/parallel.py ParallelConfig.data_parallel_size")),
    Knob(
        "pipeline_parallel",
        _v(1, "1", "vllm/config/parallel.py ParallelConfig.pipeline_parallel_size"),
    ),
    Knob(
        "allow_long_context",
        {
            "preflight": Default(
                False,
                f"{VLLM_DEFAULT} (off): vllm/envs.py "
                'VLLM_ALLOW_LONG_MAX_MODEL_LEN, unset reads as "0"',
            )
        },
    ),
    Knob(
        "pp_layer_partition",
        {
            "preflight": Default(
                None,
                f"{VLLM_DEFAULT} (even split): vllm/distributed/utils.py "
                "get_pp_indices, VLLM_PP_LAYER_PARTITION unset",
            )
        },
    ),
    Knob(
        "max_num_batched_tokens",
        _v(
            None,
            "by device, 8192 on >= 70 GiB cards other than A100, else 2048",
            "vllm/engine/arg_utils.py EngineArgs.get_batch_defaults (OPENAI_API_SERVER)",
        ),
    ),
    Knob("dtype", _v("auto", "auto", "vllm/config/model.py ModelConfig.dtype")),
    Knob("enforce_eager", _v(False, "off", "vllm/config/model.py ModelConfig.enforce_eager")),
    Knob("cpu_offload_gb", _v(0.0, "0", "vllm/config/offload.py UVAOffloadConfig.cpu_offload_gb")),
    Knob(
        "kv_cache_memory_bytes",
        _v(None, "the budget's rest", "vllm/config/cache.py CacheConfig.kv_cache_memory_bytes"),
    ),
    Knob(
        "speculative_config",
        _v(None, "none", "vllm/engine/arg_utils.py EngineArgs.speculative_config"),
    ),
    Knob(
        "limit_mm_per_prompt",
        _v(
            None,
            "999 per modality",
            "vllm/config/multimodal.py MultiModalConfig.limit_per_prompt (get_limit_per_prompt)",
        ),
    ),
    Knob(
        "language_model_only",
        _v(False, "off", "vllm/config/multimodal.py MultiModalConfig.language_model_only"),
    ),
    Knob(
        "skip_mm_profiling",
        _v(False, "off", "vllm/config/multimodal.py MultiModalConfig.skip_mm_profiling"),
    ),
    Knob(
        "mm_encoder_tp_mode",
        _v("weights", "weights", "vllm/config/multimodal.py MultiModalConfig.mm_encoder_tp_mode"),
    ),
    Knob(
        "block_size",
        _v(
            None,
            "16 on CUDA, or the attention backend's",
            "vllm/config/cache.py "
            "CacheConfig.block_size (None: set by the platform's check_and_update_config)",
        ),
    ),
    Knob("revision", _v(None, "the default branch", "vllm/config/model.py ModelConfig.revision")),
)


def knob(name: str) -> Knob:
    """The knob of that name; KeyError naming it when the table has no such knob."""
    for k in KNOBS:
        if k.name == name:
            return k
    raise KeyError(f"{name!r} is not a knob of the flag table (inputs/flags.py KNOBS)")


def knob_names() -> tuple[str, ...]:
    return tuple(k.name for k in KNOBS)


def knob_type(name: str) -> type:
    """The Python type every row of the knob parses to (a test holds the rows equal)."""
    return next(f.parser.out_type for f in FLAGS if f.knob == name)


def spelling_index() -> dict[str, list[Flag]]:
    """Every command-line spelling (negations included) -> the rows it can mean (one per engine)."""
    out: dict[str, list[Flag]] = {}
    for f in FLAGS:
        for s in f.spellings + f.negations:
            out.setdefault(s, []).append(f)
    return out


def env_rows() -> tuple[Flag, ...]:
    return tuple(f for f in FLAGS if f.env)


def env_setting(env: Mapping[str, str], variable: str) -> Any:
    """One variable's value through its row's parser (the only parser of that variable), or
    None when it is unset or empty; FlagValueError names it and what its row accepts."""
    row = next((f for f in FLAGS if f.env == variable), None)
    if row is None:
        raise KeyError(f"{variable} is not a row of the flag table")
    raw = env.get(variable, "")
    if raw.strip() == "":
        return None
    return row.parser.parse(variable, raw)


def rows_for(knob: str, owner: Owner | None = None) -> tuple[Flag, ...]:
    return tuple(f for f in FLAGS if f.knob == knob and (owner is None or f.owner == owner))


def canonical(knob: str, owner: Owner) -> str:
    """The spelling the planner writes for a knob on an engine's command line."""
    for f in FLAGS:
        if f.knob == knob and f.owner == owner and f.spellings:
            return f.spellings[0]
    raise KeyError(f"no {owner} flag for {knob}")


def engine_flags(owner: Owner) -> frozenset[str]:
    """Every spelling the engine takes from the table (for stripping and checks)."""
    return frozenset(s for f in FLAGS if f.owner == owner for s in f.spellings + f.negations)


def markdown_table() -> str:
    """The docs table (docs/flags.md is this text; a test keeps them equal)."""
    lines = [
        "| knob | engine | spellings | environment | accepted | role | default (when unset) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in FLAGS:
        spell = ", ".join(f"`{s}`" for s in f.spellings + f.negations)
        if f.option:
            spell += f" (gpu-preflight `{f.option}`)" if spell else f"gpu-preflight `{f.option}`"
        spell = spell or "-"
        env = f"`{f.env}`" if f.env else "-"
        role = f.role if f.role != "removed" else f"removed: use `{f.replacement}`"
        if f.role == "secret":
            role = f"secret: use `{f.replacement}`"
        accepted = f.parser.accepted.replace("|", "\\|")
        default = knob(f.knob).default(f.owner).cited.replace("|", "\\|")
        lines.append(
            f"| {f.knob} | {f.owner} | {spell} | {env} | {accepted} | {role} | {default} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - `make docs`: rewrite docs/flags.md's table
    import sys
    from pathlib import Path

    doc = Path(sys.argv[1])
    text = doc.read_text()
    doc.write_text(text[: text.index("| knob | engine |")] + markdown_table())
