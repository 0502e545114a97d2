"""Read a GGUF file's header: architecture metadata and exact tensor bytes.

The header is read by ``gguf_header`` (skip-ahead, bounded; see there why not ``GGUFReader``), so
only the header pages are touched (a file whose tensor data is a sparse hole reads like a real one). Every failure - bad magic, a truncated file, counts or
offsets past the end of the file - becomes a ``ModelFileError`` naming the file and the problem.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gguf import Keys

from gpu_preflight.boundedio import FileInputError, NumberRule, check_regular, shorten
from gpu_preflight.models.errors import ModelFileError
from gpu_preflight.models.gguf_header import (
    ArrayLength,
    GGUFHeader,
    GGUFHeaderError,
    TensorInfo,
    read_header,
)
from gpu_preflight.models.layout import (
    ARCH_RULES,
    GGUF_ARCHITECTURES,
    MAX_LAYERS,
    check_arch,
    count_params,
    unknown_architecture,
)
from gpu_preflight.models.types import Artifact, ModelArch, ModelSpec, WeightLayout

GGUF_MAGIC = b"GGUF"
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<i>[0-9]{5})-of-(?P<n>[0-9]{5})\.gguf$")
_BLK = re.compile(r"^blk\.([0-9]+)\.")
_EXPERT = re.compile(r"_exps\b|\.ffn_(gate|up|down)_exps")
# llama.cpp's default sliding-window pattern per architecture (src/models/<arch>.cpp:
# load_swa_pattern(ml, N)); a GGUF may override it with {arch}.attention.sliding_window_pattern.
SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "gpt-oss": 2, "cohere2": 4}
MAX_SPLITS = 1024  # split GGUFs: real ones have at most a few dozen parts
# Which ModelArch bound (layout.ARCH_RULES) each GGUF key is held to.
_KEY_RULE = {
    "block_count": "n_layers",
    "embedding_length": "hidden_size",
    "attention.head_count": "n_heads",
    "attention.head_count_kv": "n_kv_heads",
    "attention.key_length": "head_dim",
    "attention.value_length": "head_dim_v",
    "feed_forward_length": "intermediate_size",
    "context_length": "max_position_embeddings",
    "attention.sliding_window": "sliding_window",
    "expert_count": "n_experts",
    "expert_used_count": "n_experts_per_token",
    "expert_feed_forward_length": "expert_intermediate_size",
    "expert_shared_count": "n_shared_experts",
    "expert_shared_feed_forward_length": "shared_expert_intermediate_size",
    "nextn_predict_layers": "n_nextn_layers",
    "leading_dense_block_count": "n_dense_layers",
    "attention.kv_lora_rank": "kv_lora_rank",
    "attention.q_lora_rank": "q_lora_rank",
    "attention.key_length_mla": "head_dim",
    "attention.value_length_mla": "head_dim_v",
    "rope.dimension_count": "qk_rope_head_dim",
    "ssm.conv_kernel": "linear_conv_kernel",
    "ssm.state_size": "linear_k_head_dim",
    "ssm.group_count": "linear_k_heads",
    "ssm.time_step_rank": "linear_v_heads",
    "ssm.inner_size": "intermediate_size",
    "full_attention_interval": "n_layers",
}
# llama-arch.cpp LLM_KV_ATTENTION_RECURRENT_LAYERS; the gguf package has no constant for it.
RECURRENT_LAYERS_KEY = "{arch}.attention.recurrent_layers"
_FILE_TYPE_RULE = NumberRule(0, 1 << 16)
_PATTERN_RULE = NumberRule(0, MAX_LAYERS)


def _value(header: GGUFHeader, key: str) -> Any:
    return header.fields.get(key)


def _checked(where: str, key: str, v: Any, rule: NumberRule) -> int:
    # GGUF values are typed: a float where llama.cpp reads an integer is refused like llama.cpp
    # refuses it (llama_model_loader::get_key checks the type), not rounded.
    if isinstance(v, float):
        raise ModelFileError(
            f"{where}: {key}: is a float ({shorten(v)}), not an integer. Accepted: {rule.accepted}."
        )
    try:
        return int(rule.check(v, where, key))
    except FileInputError as exc:
        raise ModelFileError(str(exc)) from exc


def _int(header: GGUFHeader, key: str, default: int | None, where: str) -> int | None:
    """An integer key: absent -> default; present -> checked against its rule (or an error).

    A per-layer array (some architectures store head_count_kv per layer) gives its maximum; its
    elements may be 0 (layers without attention) but its maximum must satisfy the rule.
    """
    v = _value(header, key)
    if v is None:
        return default
    field = next((f for s, f in _KEY_RULE.items() if key.endswith("." + s)), None)
    r = ARCH_RULES[field] if field else _FILE_TYPE_RULE
    if isinstance(v, ArrayLength):
        raise ModelFileError(
            f"{where}: {key}: an array of {v.count} values. Accepted: {r.accepted}."
        )
    if isinstance(v, list):
        if not v:
            return default
        zero_ok = NumberRule(0, r.maximum)
        return max(_checked(where, f"{key}[{i}]", x, zero_ok) for i, x in enumerate(v)) or (
            _checked(where, key, 0, r)
        )
    return _checked(where, key, v, r)


def _files(path: Path) -> list[Path]:
    m = _SPLIT.match(path.name)
    if not m:
        return [path]
    n = int(m["n"])
    if not 1 <= n <= MAX_SPLITS or not 1 <= int(m["i"]) <= n:
        raise ModelFileError(
            f"{path}: split part {int(m['i'])} of {n}. Accepted: parts 1..N with N at most "
            f"{MAX_SPLITS} (NAME-00001-of-0000N.gguf)."
        )
    files = [path.with_name(f"{m['stem']}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise ModelFileError(f"{path}: split GGUF is missing {', '.join(missing[:3])}")
    return files


def _open(path: Path) -> GGUFHeader:
    try:
        check_regular(path)  # a FIFO or a device is refused before it is opened
    except FileInputError as exc:
        hint = "" if exc.accepted else " Accepted: a readable .gguf file."
        raise ModelFileError(f"{exc}{hint}") from exc
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    try:
        header = read_header(path)
    except (GGUFHeaderError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: malformed or truncated GGUF header ({exc})") from exc
    total = 0
    for t in header.tensors:
        end = t.data_offset + t.n_bytes
        total += t.n_bytes
        if end > header.file_size:
            raise ModelFileError(
                f"{path}: tensor {t.name[:80]} ends at byte {end} but the file has {header.file_size} bytes (truncated?)"
            )
    if total > header.file_size:
        raise ModelFileError(
            f"{path}: its tensors declare {total} bytes in all but the file has "
            f"{header.file_size} bytes (overlapping or lying tensor infos)"
        )
    return header


def _layer_tensors(
    path: Path, tensors: list[TensorInfo], n_layers: int, key: str, n_nextn: int = 0
) -> None:
    """The declared shape must agree with the tensor table: every block 0..n-1 has tensors, none
    beyond (llama.cpp refuses both: llama_model_loader's "wrong number of tensors"). MTP blocks
    (the last n_nextn) may be absent: llama.cpp loads a trunk-only file (llama-model.cpp
    trunk_only: the MTP tensors are TENSOR_NOT_REQUIRED)."""
    seen: set[int] = set()
    for t in tensors:
        m = _BLK.match(t.name)
        if m:
            i = int(m.group(1)) if len(m.group(1)) < 10 else n_layers
            if i >= n_layers:
                raise ModelFileError(
                    f"{path}: tensor {t.name[:80]} is beyond {key} = {n_layers}. Accepted: "
                    f"blk.0 to blk.{n_layers - 1}."
                )
            seen.add(i)
    if len(seen & set(range(n_layers - n_nextn))) < n_layers - n_nextn:
        raise ModelFileError(
            f"{path}: {key} declares {n_layers} layers but the file has tensors for "
            f"{len(seen)} of them (a GGUF has blk.N tensors for every layer)."
        )


def read_gguf(path: Path) -> tuple[ModelArch, Artifact]:
    files = _files(path)
    readers = [_open(f) for f in files]
    head = readers[0]
    arch_name = _value(head, "general.architecture")
    if not isinstance(arch_name, str) or not arch_name or len(arch_name) > 64:
        raise ModelFileError(f"{path}: GGUF has no usable general.architecture")
    a = arch_name
    where = str(path)
    if a not in GGUF_ARCHITECTURES:
        raise ModelFileError(unknown_architecture("general.architecture", a, where))
    n_layers = _int(head, f"{a}.block_count", None, where)
    n_embd = _int(head, f"{a}.embedding_length", None, where)
    n_head = _int(head, f"{a}.attention.head_count", None, where)
    if not n_layers or not n_embd or not n_head:
        raise ModelFileError(
            f"{path}: GGUF lacks {a}.block_count / embedding_length / attention.head_count"
        )
    default_dim = n_embd // n_head
    if default_dim < 1:
        raise ModelFileError(
            f"{path}: {a}.attention.head_count {n_head} exceeds {a}.embedding_length {n_embd} "
            f"and no {a}.attention.key_length says the head size"
        )
    n_kv = _int(head, f"{a}.attention.head_count_kv", n_head, where) or n_head
    head_dim = _int(head, f"{a}.attention.key_length", None, where) or default_dim
    head_dim_v = _int(head, f"{a}.attention.value_length", head_dim, where)
    n_nextn = _int(head, Keys.LLM.NEXTN_PREDICT_LAYERS.format(arch=a), 0, where) or 0
    if n_nextn >= n_layers:
        raise ModelFileError(
            f"{path}: {a}.nextn_predict_layers {n_nextn} is not below {a}.block_count "
            f"{n_layers}. Accepted: fewer MTP layers than blocks."
        )
    mla = _mla(head, a, where)
    if mla is not None:
        # The GGUF's key/value lengths are the cache's (latent + rope, latent) and its
        # head_count_kv is 1; the per-head widths are the *_mla keys (llama-hparams.cpp
        # n_embd_head_k_mla). ModelArch keeps the config's view: every head, nope+rope / v.
        n_kv, head_dim, head_dim_v = n_head, mla[0], mla[1]
    tensors = [t for r in readers for t in r.tensors]
    _layer_tensors(path, tensors, n_layers, f"{a}.block_count", n_nextn)
    by_name = {t.name: t for t in tensors}
    tokens = _value(head, "tokenizer.ggml.tokens")
    embd = by_name.get("token_embd.weight")
    vocab = (
        len(tokens)
        if isinstance(tokens, list) and tokens
        else (int(embd.shape[1]) if embd is not None and len(embd.shape) > 1 else 0)
    )
    if vocab <= 0:
        raise ModelFileError(f"{path}: cannot tell the vocabulary size (no tokens, no token_embd)")

    n_expert = _int(head, f"{a}.expert_count", None, where)
    swa = _int(head, f"{a}.attention.sliding_window", None, where)
    swa_layers: tuple[int, ...] = ()
    if swa:
        pkey = f"{a}.attention.sliding_window_pattern"
        pattern_raw = _value(head, pkey)
        if isinstance(pattern_raw, list) and len(pattern_raw) >= n_layers:
            swa_layers = tuple(i for i in range(n_layers) if pattern_raw[i])
        else:
            n = (
                _checked(where, pkey, pattern_raw, _PATTERN_RULE)
                if isinstance(pattern_raw, (int, float)) and not isinstance(pattern_raw, bool)
                else SWA_PATTERN.get(a, 0)
            )
            swa_layers = (
                tuple(i for i in range(n_layers) if n == 0 or i % n < n - 1)
                if n or a in SWA_PATTERN
                else ()
            )
    recurrent, linear = _recurrent(head, a, n_layers, n_nextn, where)
    shexp = _int(head, Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH.format(arch=a), None, where)
    n_shared = _int(head, f"{a}.expert_shared_count", None, where)
    arch = ModelArch(
        architecture=a,
        n_layers=n_layers,
        hidden_size=n_embd,
        n_heads=n_head,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        head_dim_v=head_dim_v if head_dim_v != head_dim else None,
        intermediate_size=_int(head, f"{a}.feed_forward_length", 0, where) or 0,
        vocab_size=vocab,
        tied_embeddings="output.weight" not in by_name,
        max_position_embeddings=_int(head, f"{a}.context_length", 4096, where) or 4096,
        sliding_window=swa,
        sliding_window_layers=swa_layers,
        n_experts=n_expert,
        n_experts_per_token=_int(head, f"{a}.expert_used_count", None, where),
        expert_intermediate_size=_int(head, f"{a}.expert_feed_forward_length", None, where),
        n_shared_experts=n_shared if n_shared is not None else (1 if shexp else None),
        shared_expert_intermediate_size=shexp,
        n_dense_layers=(
            _int(head, Keys.LLM.LEADING_DENSE_BLOCK_COUNT.format(arch=a), 0, where) or 0
            if n_expert
            else 0
        ),
        kv_lora_rank=mla[2] if mla else None,
        qk_rope_head_dim=mla[3] if mla else None,
        q_lora_rank=mla[4] if mla else None,
        n_nextn_layers=n_nextn,
        recurrent_layers=recurrent,
        linear_conv_kernel=linear.get("linear_conv_kernel"),
        linear_k_heads=linear.get("linear_k_heads"),
        linear_v_heads=linear.get("linear_v_heads"),
        linear_k_head_dim=linear.get("linear_k_head_dim"),
        linear_v_head_dim=linear.get("linear_v_head_dim"),
    )
    check_arch(arch, f"{path} (architecture derived from its header)")
    per_layer = [0] * n_layers
    per_expert = [0] * n_layers
    tok = out = other = skipped = 0
    types: dict[str, int] = {}
    for t in tensors:
        nb = t.n_bytes
        tname = t.type_name
        types[tname] = types.get(tname, 0) + nb
        m = _BLK.match(t.name)
        if m and int(m.group(1)) >= n_layers - n_nextn:
            # MTP block: created with TENSOR_SKIP unless llama-server loads the MTP draft
            # (--spec-type draft-mtp sets load_mtp); not loaded, so not counted.
            skipped += nb
        elif m:
            i = int(m.group(1))
            per_layer[i] += nb
            if _EXPERT.search(t.name):
                per_expert[i] += nb
        elif t.name == "token_embd.weight":
            tok += nb
        elif t.name == "output.weight":
            out += nb
        else:
            other += nb
    total = tok + out + other + sum(per_layer)
    layout = WeightLayout(
        total,
        tok,
        out,
        tuple(per_layer),
        tuple(per_expert),
        other,
        exact=True,
        skipped_bytes=skipped,
    )
    quant = _quant_name(head, types)
    artifact = Artifact(
        engine="llama.cpp",
        repo=str(path.parent),
        quant=quant,
        weight_bytes=total,
        file=path.name,
        path=str(path),
        source=f"GGUF header of {path}",
        layout=layout,
    )
    return arch, artifact


def _mla(header: GGUFHeader, a: str, where: str) -> tuple[int, int, int, int, int | None] | None:
    """(k head, v head, kv_lora_rank, rope dim, q_lora_rank) of an MLA file, or None.

    llama.cpp treats a file as MLA when both {arch}.attention.key_length_mla and
    value_length_mla are set (llama-hparams.cpp is_mla); older deepseek2 GGUFs without them run
    as plain multi-head attention with a K and a V of every head, as their head counts say.
    """
    k = _int(header, Keys.Attention.KEY_LENGTH_MLA.format(arch=a), None, where)
    v = _int(header, Keys.Attention.VALUE_LENGTH_MLA.format(arch=a), None, where)
    if not k or not v:
        return None
    rank = _int(header, Keys.Attention.KV_LORA_RANK.format(arch=a), None, where)
    rope = _int(header, Keys.Rope.DIMENSION_COUNT.format(arch=a), None, where)
    if not rank or not rope:
        raise ModelFileError(
            f"{where}: an MLA GGUF ({a}.attention.key_length_mla is set) without "
            f"{a}.attention.kv_lora_rank or {a}.rope.dimension_count. Accepted: both set."
        )
    q_rank = _int(header, Keys.Attention.Q_LORA_RANK.format(arch=a), None, where)
    return k, v, rank, rope, q_rank or None


def _recurrent(
    header: GGUFHeader, a: str, n_layers: int, n_nextn: int, where: str
) -> tuple[tuple[int, ...], dict[str, int | None]]:
    """The gated DeltaNet layers of a qwen3next file and their state sizes.

    src/models/qwen3next.cpp load_arch_hparams: {arch}.attention.recurrent_layers when present,
    else every trunk layer but each {arch}.full_attention_interval-th (default 4); the sizes
    from {arch}.ssm.* (group_count = key heads, time_step_rank = value heads, state_size = key
    head size, inner_size = value heads x value head size).
    """
    if a != "qwen3next":
        return (), {}
    trunk = n_layers - n_nextn
    flags = _value(header, RECURRENT_LAYERS_KEY.format(arch=a))
    if isinstance(flags, list) and flags:
        if len(flags) < n_layers or not all(isinstance(x, (bool, int)) for x in flags):
            raise ModelFileError(
                f"{where}: {RECURRENT_LAYERS_KEY.format(arch=a)}: {shorten(flags)}. Accepted: "
                f"one flag per block ({n_layers})."
            )
        layers = tuple(i for i in range(trunk) if flags[i])
    else:
        interval = _int(header, Keys.LLM.FULL_ATTENTION_INTERVAL.format(arch=a), 4, where) or 4
        layers = tuple(i for i in range(trunk) if (i + 1) % interval != 0)

    def need(key: str) -> int:
        v = _int(header, key.format(arch=a), None, where)
        if not v:
            raise ModelFileError(
                f"{where}: a {a} GGUF without {key.format(arch=a)}. Accepted: the ssm.* sizes "
                "of its gated DeltaNet layers."
            )
        return v

    v_heads = need(Keys.SSM.TIME_STEP_RANK)
    inner = need(Keys.SSM.INNER_SIZE)
    if inner % v_heads:
        raise ModelFileError(
            f"{where}: {a}.ssm.inner_size {inner} is not a multiple of {a}.ssm.time_step_rank "
            f"{v_heads}. Accepted: value heads x value head size."
        )
    return layers, {
        "linear_conv_kernel": need(Keys.SSM.CONV_KERNEL),
        "linear_k_heads": need(Keys.SSM.GROUP_COUNT),
        "linear_v_heads": v_heads,
        "linear_k_head_dim": need(Keys.SSM.STATE_SIZE),
        "linear_v_head_dim": inner // v_heads,
    }


_FTYPE = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    12: "Q3_K_M",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    30: "IQ4_XS",
    32: "BF16",
    38: "MXFP4",
}


def _quant_name(reader: Any, types: dict[str, int]) -> str:
    ftype = _value(reader, "general.file_type")
    ftype = ftype if isinstance(ftype, int) and not isinstance(ftype, bool) else None
    if ftype is not None and ftype in _FTYPE:
        return _FTYPE[ftype]
    return max(types, key=lambda k: types[k]) if types else "unknown"


def spec_from_gguf(path: Path) -> ModelSpec:
    arch, art = read_gguf(path)
    name = path.name.removesuffix(".gguf")
    return ModelSpec(
        id=name.lower(),
        name=name,
        hf_id=name,
        params_b=round(count_params(arch).total / 1e9, 2),
        active_params_b=None,
        arch=arch,
        artifacts=(art,),
        source=art.source or str(path),
    )
