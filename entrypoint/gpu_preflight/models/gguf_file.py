"""Read a GGUF file's header: architecture metadata and exact tensor bytes.

The header is read by ``gguf_header`` (skip-ahead, bounded; see there why not ``GGUFReader``), so
only the header pages are touched (a file whose tensor data is a sparse hole reads like a real one). Every failure - bad magic, a truncated file, counts or
offsets past the end of the file - becomes a ``ModelFileError`` naming the file and the problem.
"""

from __future__ import annotations

import re
from dataclasses import replace
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
    GGUF_REFUSED,
    MAX_LAYERS,
    UNLISTED_NOTE,
    check_arch,
    unknown_architecture,
    unlisted_gguf_architecture,
)
from gpu_preflight.models.types import Artifact, ModelArch, ModelSpec, WeightLayout

GGUF_MAGIC = b"GGUF"
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<i>[0-9]{5})-of-(?P<n>[0-9]{5})\.gguf$")
_BLK = re.compile(r"^blk\.([0-9]+)\.")
_EXPERT = re.compile(r"_exps\b|\.ffn_(gate|up|down)_exps")
# llama.cpp's default sliding-window pattern per architecture, (period, dense first)
# (src/models/<arch>.cpp: load_swa_pattern(ml, N[, dense_first])); a GGUF may override it with
# {arch}.attention.sliding_window_pattern. phi3.cpp's set_swa_pattern(1) marks no layer.
SWA_PATTERN: dict[str, tuple[int, bool]] = {
    "gemma2": (2, False),
    "gemma3": (6, False),
    "gemma3n": (5, False),
    "gemma-embedding": (6, False),
    "gpt-oss": (2, False),
    "cohere2": (4, False),
    "afmoe": (4, False),
    "exaone-moe": (4, False),
    "exaone4": (4, False),
    "llama4": (4, False),
    "olmo2": (4, False),
    "plamo3": (8, False),
    "smallthinker": (4, True),
    "modern-bert": (3, True),
    "phi3": (1, False),
}
# Architectures that read the pattern only as an array of flags (gemma4.cpp, mimo2.cpp,
# step35.cpp: get_arr(LLM_KV_ATTENTION_SLIDING_WINDOW_PATTERN)).
SWA_ARRAY = frozenset({"gemma4", "mimo2", "step35"})
# Windows an architecture has without the key (gemma2.cpp: 4096; llama4.cpp: chunks of 8192).
SWA_WINDOW = {"gemma2": 4096, "llama4": 8192}
# llama-arch.cpp llm_arch_is_recurrent: every layer keeps a recurrent state, none a KV cache.
RECURRENT_ARCHS = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
# Hybrids whose recurrent layers are the ones with 0 KV heads (jamba.cpp, granite-hybrid.cpp,
# lfm2.cpp, lfm2moe.cpp, plamo2.cpp, kimi-linear.cpp: is_recr_impl[i] = n_head_kv(i) == 0).
HYBRID_BY_KV = frozenset({"jamba", "granitehybrid", "lfm2", "lfm2moe", "plamo2", "kimi-linear"})
# nemotron-h.cpp: recurrent where n_head_kv(i) == 0 and n_ff(i) == 0.
NEMOTRON_H = frozenset({"nemotron_h", "nemotron_h_moe"})
# Gated DeltaNet hybrids (qwen3next.cpp, qwen35.cpp, qwen35moe.cpp).
DELTANET = frozenset({"qwen3next", "qwen35", "qwen35moe"})
# falcon-h1.cpp: every layer recurrent, and create_memory keeps every layer's attention too.
PARALLEL_HYBRID = frozenset({"falcon-h1"})
# llama-model.cpp create_memory: no memory (encoders, embedding models, diffusion models).
NO_MEMORY = frozenset(
    {
        "bert",
        "jina-bert-v2",
        "jina-bert-v3",
        "nomic-bert",
        "nomic-bert-moe",
        "neo-bert",
        "eurobert",
        "modern-bert",
        "gemma-embedding",
        "dream",
        "llada",
        "llada-moe",
        "rnd1",
    }
)
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
    path: Path,
    tensors: list[TensorInfo],
    n_layers: int,
    key: str,
    n_nextn: int = 0,
    every_block: bool = True,
) -> None:
    """The declared shape must agree with the tensor table: every block 0..n-1 has tensors, none
    beyond (llama.cpp refuses both: llama_model_loader's "wrong number of tensors"). MTP blocks
    (the last n_nextn) may be absent: llama.cpp loads a trunk-only file (llama-model.cpp
    trunk_only: the MTP tensors are TENSOR_NOT_REQUIRED). ``every_block`` False (an architecture
    gguf does not list): blocks without tensors of their own are let through, since some newer
    ones run blocks on shared weights (hrm-text.cpp: layers_per_stack x cycles slots over the
    stacks' tensors) and llama.cpp's own dry run, not this check, decides whether it loads."""
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
    if every_block and len(seen & set(range(n_layers - n_nextn))) < n_layers - n_nextn:
        raise ModelFileError(
            f"{path}: {key} declares {n_layers} layers but the file has tensors for "
            f"{len(seen)} of them (a GGUF has blk.N tensors for every layer)."
        )


def read_gguf(path: Path) -> tuple[ModelArch, Artifact]:
    arch, artifact, _ = _read_gguf(path)
    return arch, artifact


def _read_gguf(path: Path) -> tuple[ModelArch, Artifact, int]:
    """The architecture, the artifact and the parameter count (every tensor's elements but
    those of MTP blocks llama.cpp does not load), all from the header."""
    files = _files(path)
    readers = [_open(f) for f in files]
    head = readers[0]
    arch_name = _value(head, "general.architecture")
    if not isinstance(arch_name, str) or not arch_name or len(arch_name) > 64:
        raise ModelFileError(f"{path}: GGUF has no usable general.architecture")
    a = arch_name
    where = str(path)
    if a in GGUF_REFUSED:
        raise ModelFileError(unknown_architecture("general.architecture", a, where))
    unlisted = unlisted_gguf_architecture(a)
    if unlisted is None:
        return _read_arch(path, a, head, readers, listed=True)
    # An architecture gguf does not list (llama.cpp's newer ones): the same generic reader, and
    # an error that names the architecture before the key it lacks.
    try:
        arch, artifact, params = _read_arch(path, a, head, readers, listed=False)
    except ModelFileError as exc:
        msg = str(exc).removeprefix(f"{where}: ")
        raise ModelFileError(f"{where}: {unlisted}, and its header cannot be read: {msg}") from exc
    return arch, replace(artifact, source=f"{artifact.source} ({UNLISTED_NOTE})"), params


def _read_arch(
    path: Path, a: str, head: GGUFHeader, readers: list[GGUFHeader], listed: bool
) -> tuple[ModelArch, Artifact, int]:
    where = str(path)
    n_layers = _int(head, f"{a}.block_count", None, where)
    n_embd = _int(head, f"{a}.embedding_length", None, where)
    if not n_layers or not n_embd:
        raise ModelFileError(f"{path}: GGUF lacks {a}.block_count / {a}.embedding_length")
    # llama_model_base::load_hparams (src/llama-model.cpp): head_count, head_count_kv and
    # feed_forward_length are a scalar or one value per layer (get_key_or_arr); head_count_kv
    # defaults to head_count; a model without heads (Mamba, RWKV) has none.
    heads = _layers(head, f"{a}.attention.head_count", n_layers, where) or [0] * n_layers
    kv_heads = _layers(head, f"{a}.attention.head_count_kv", n_layers, where) or heads
    ffs = _layers(head, f"{a}.feed_forward_length", n_layers, where) or [0] * n_layers
    n_head = max(heads)
    n_kv = max(kv_heads)
    if not n_head and a not in RECURRENT_ARCHS:
        how = "missing" if _value(head, f"{a}.attention.head_count") is None else "0"
        raise ModelFileError(
            f"{path}: {a}.attention.head_count is {how}. Accepted: at "
            f"least 1 attention head ({a} is not an attention-free architecture)."
        )
    # llama.cpp's head size default is n_embd / head_count (of layer 0)
    default_dim = n_embd // heads[0] if heads[0] else 0
    if n_head and not default_dim and _value(head, f"{a}.attention.key_length") is None:
        raise ModelFileError(
            f"{path}: {a}.attention.head_count {heads[0]} exceeds {a}.embedding_length {n_embd} "
            f"and no {a}.attention.key_length says the head size"
        )
    head_dim = _int(head, f"{a}.attention.key_length", None, where) or default_dim or 1
    head_dim_v = _int(head, f"{a}.attention.value_length", None, where) or default_dim or head_dim
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
    _layer_tensors(path, tensors, n_layers, f"{a}.block_count", n_nextn, every_block=listed)
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
    swa, swa_layers = _sliding(head, a, n_layers, n_nextn, where)
    recurrent, linear, state = _recurrent(head, a, n_layers, n_nextn, kv_heads, ffs, where)
    no_kv = _no_kv_layers(head, a, n_layers, kv_heads, ffs, swa_layers, where)
    shexp = _int(head, Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH.format(arch=a), None, where)
    n_shared = _int(head, f"{a}.expert_shared_count", None, where)
    swa_k = _int(head, Keys.Attention.KEY_LENGTH_SWA.format(arch=a), None, where)
    swa_v = _int(head, Keys.Attention.VALUE_LENGTH_SWA.format(arch=a), None, where)
    arch = ModelArch(
        architecture=a,
        n_layers=n_layers,
        hidden_size=n_embd,
        n_heads=max(n_head, 1),
        n_kv_heads=max(n_kv, 1),
        head_dim=head_dim,
        head_dim_v=head_dim_v if head_dim_v != head_dim else None,
        intermediate_size=max(ffs),
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
        layer_kv_heads=(tuple(kv_heads) if mla is None and len(set(kv_heads)) > 1 else ()),
        no_kv_layers=no_kv,
        swa_head_dim=swa_k if swa_k and swa_k != head_dim and mla is None else None,
        swa_head_dim_v=swa_v if swa_v and swa_v != head_dim_v and mla is None else None,
        recurrent_state_elems=state,
        parallel_hybrid=a in PARALLEL_HYBRID,
    )
    check_arch(arch, f"{path} (architecture derived from its header)")
    params = 0
    per_layer = [0] * n_layers
    per_expert = [0] * n_layers
    tok = out = other = skipped = 0
    types: dict[str, int] = {}
    for t in tensors:
        nb = t.n_bytes
        tname = t.type_name
        types[tname] = types.get(tname, 0) + nb
        m = _BLK.match(t.name)
        if not (m and int(m.group(1)) >= n_layers - n_nextn):
            params += _elements(t.shape)
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
    return arch, artifact, params


def _elements(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


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


def _layers(header: GGUFHeader, key: str, n_layers: int, where: str) -> list[int] | None:
    """A key llama.cpp reads with get_key_or_arr: a scalar for every layer, or one value per
    layer (src/llama-model-loader.cpp: an array longer than the layers is refused). None when
    absent. Elements may be 0 (a layer without attention, an attention-only layer)."""
    v = _value(header, key)
    if v is None:
        return None
    field = next((f for s, f in _KEY_RULE.items() if key.endswith("." + s)), None)
    r = ARCH_RULES[field] if field else _FILE_TYPE_RULE
    zero_ok = NumberRule(0, r.maximum)
    if isinstance(v, ArrayLength) or (isinstance(v, list) and len(v) != n_layers):
        n = v.count if isinstance(v, ArrayLength) else len(v)
        raise ModelFileError(
            f"{where}: {key}: an array of {n} values. Accepted: one value, or one per "
            f"layer ({n_layers})."
        )
    if isinstance(v, list):
        return [_checked(where, f"{key}[{i}]", x, zero_ok) for i, x in enumerate(v)]
    return [_checked(where, key, v, zero_ok)] * n_layers


def _sliding(
    header: GGUFHeader, a: str, n_layers: int, n_nextn: int, where: str
) -> tuple[int | None, tuple[int, ...]]:
    """(window, sliding-window layers) as the architecture's load_arch_hparams sets them.

    A window from {arch}.attention.sliding_window (or the architecture's built-in one,
    SWA_WINDOW), and the layers from {arch}.attention.sliding_window_pattern: an array of flags,
    a period, or the architecture's own period (SWA_PATTERN; llama-model.cpp load_swa_pattern,
    llama-hparams.cpp set_swa_pattern). An architecture with a window but no known pattern is
    planned with every layer at full context: more KV, never less.
    """
    window = _int(header, f"{a}.attention.sliding_window", None, where)
    # gemma2.cpp: 4096 unless the key says otherwise; llama4.cpp: chunked attention of 8192
    # whatever the key holds, unless it is 0 (then no chunking)
    if a in SWA_WINDOW and (window is None or (a == "llama4" and window != 0)):
        window = SWA_WINDOW[a]
    if not window:
        return None, ()
    trunk = n_layers - n_nextn
    pkey = f"{a}.attention.sliding_window_pattern"
    raw = _value(header, pkey)
    if a not in SWA_PATTERN and a not in SWA_ARRAY:
        return window, ()  # llama.cpp reads no pattern for it: no layer slides
    if isinstance(raw, list) and len(raw) >= trunk:
        return window, tuple(i for i in range(trunk) if raw[i])
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        period, dense_first = _checked(where, pkey, raw, _PATTERN_RULE), False
        if a in SWA_PATTERN:
            dense_first = SWA_PATTERN[a][1]
    elif a in SWA_PATTERN:
        period, dense_first = SWA_PATTERN[a]
    else:
        return window, ()  # an array-only architecture without its array: llama.cpp refuses it
    if dense_first:
        return window, tuple(i for i in range(trunk) if period == 0 or i % period != 0)
    return window, tuple(i for i in range(trunk) if period == 0 or i % period < period - 1)


def _recurrent(
    header: GGUFHeader,
    a: str,
    n_layers: int,
    n_nextn: int,
    kv_heads: list[int],
    ffs: list[int],
    where: str,
) -> tuple[tuple[int, ...], dict[str, int | None], tuple[int, int] | None]:
    """The recurrent layers, the gated DeltaNet sizes (qwen3next family) and llama.cpp's
    (n_embd_r, n_embd_s) per sequence of each recurrent layer.

    Which layers (src/models/<arch>.cpp load_arch_hparams, is_recr_impl): every layer of a
    recurrent architecture (llama-arch.cpp llm_arch_is_recurrent) and of Falcon-H1; the layers
    with 0 KV heads of the other hybrids (Jamba, Granite-hybrid, LFM2, PLaMo-2, Kimi-Linear),
    also with no FFN for Nemotron-H; {arch}.attention.recurrent_layers or every trunk layer but
    each {arch}.full_attention_interval-th (default 4) for Qwen3-Next / Qwen3.5.
    """
    trunk = n_layers - n_nextn
    if a in RECURRENT_ARCHS or a in PARALLEL_HYBRID:
        layers: tuple[int, ...] = tuple(range(trunk))
    elif a in HYBRID_BY_KV:
        layers = tuple(i for i in range(trunk) if kv_heads[i] == 0)
    elif a in NEMOTRON_H:
        layers = tuple(i for i in range(trunk) if kv_heads[i] == 0 and ffs[i] == 0)
    elif a in DELTANET:
        flags = _value(header, RECURRENT_LAYERS_KEY.format(arch=a))
        if isinstance(flags, list) and flags:
            if len(flags) < n_layers or not all(isinstance(x, (bool, int)) for x in flags):
                raise ModelFileError(
                    f"{where}: {RECURRENT_LAYERS_KEY.format(arch=a)}: {shorten(flags)}. "
                    f"Accepted: one flag per block ({n_layers})."
                )
            layers = tuple(i for i in range(trunk) if flags[i])
        else:
            key = Keys.LLM.FULL_ATTENTION_INTERVAL.format(arch=a)
            interval = _int(header, key, 4, where) or 4
            layers = tuple(i for i in range(trunk) if (i + 1) % interval != 0)
    else:
        return (), {}, None
    if not layers:
        return (), {}, None
    state = _state_elems(header, a, n_layers, where)
    if a not in DELTANET:
        return layers, {}, state

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
    return (
        layers,
        {
            "linear_conv_kernel": need(Keys.SSM.CONV_KERNEL),
            "linear_k_heads": need(Keys.SSM.GROUP_COUNT),
            "linear_v_heads": v_heads,
            "linear_k_head_dim": need(Keys.SSM.STATE_SIZE),
            "linear_v_head_dim": inner // v_heads,
        },
        state,
    )


def _state_elems(header: GGUFHeader, a: str, n_layers: int, where: str) -> tuple[int, int]:
    """llama-hparams.cpp n_embd_r() / n_embd_s(): the f32 elements of one sequence's conv (or
    token-shift) state and its SSM (or wkv) state in one recurrent layer."""

    def key(k: str, default: int = 0) -> int:
        # 0 is a size here (Mamba-1's group count), within the key's bound
        got = _layers(header, k.format(arch=a), n_layers, where)
        return (got[0] if got else default) or default

    n_embd = key(Keys.LLM.EMBEDDING_LENGTH)
    wkv = key(Keys.WKV.HEAD_SIZE)
    if wkv:  # RWKV: token_shift_count (default 2, llama-hparams.h) x n_embd; n_embd x head size
        return key(Keys.LLM.TOKEN_SHIFT_COUNT, 2) * n_embd, n_embd * wkv
    d_conv, d_inner = key(Keys.SSM.CONV_KERNEL), key(Keys.SSM.INNER_SIZE)
    d_state, n_group = key(Keys.SSM.STATE_SIZE), key(Keys.SSM.GROUP_COUNT)
    s = d_state * d_inner
    l_cache = key(Keys.ShortConv.L_CACHE)
    if l_cache:  # LFM2: the short convolution's window
        return n_embd * (l_cache - 1), s
    kda = key(Keys.KDA.HEAD_DIM)
    if kda:  # Kimi KDA: conv state of q, k and v (d_conv 0 counts as 4); kda^2 per head
        heads = (_layers(header, f"{a}.attention.head_count", n_layers, where) or [0])[0]
        return 3 * (d_conv - 1 if d_conv else 3) * heads * kda, kda * kda * heads
    return (d_conv - 1 if d_conv else 0) * (d_inner + 2 * n_group * d_state), s


def _no_kv_layers(
    header: GGUFHeader,
    a: str,
    n_layers: int,
    kv_heads: list[int],
    ffs: list[int],
    swa_layers: tuple[int, ...],
    where: str,
) -> tuple[int, ...]:
    """Layers that are neither recurrent nor given a KV cache of their own.

    - Encoders and diffusion models (llama-model.cpp create_memory: no memory at all).
    - Nemotron-H's FFN-only layers (create_memory: attention where n_head_kv > 0 and n_ff == 0).
    - KV sharing: from n_layer_kv_from_start on, a layer reads an earlier layer's cache
      (llama-hparams.cpp has_kv; gemma3n.cpp: 20, gemma4.cpp: block_count minus
      {arch}.attention.shared_kv_layers).
    """
    if a in NO_MEMORY:
        return tuple(range(n_layers))
    if a in NEMOTRON_H:
        return tuple(i for i in range(n_layers) if ffs[i] != 0)
    start = None
    if a == "gemma3n":
        start = 20
    elif a == "gemma4":
        shared = _int(header, Keys.Attention.SHARED_KV_LAYERS.format(arch=a), 0, where) or 0
        start = n_layers - shared
    if start is None:
        return ()
    return tuple(range(max(start, 0), n_layers))


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
    arch, art, params = _read_gguf(path)
    name = path.name.removesuffix(".gguf")
    return ModelSpec(
        id=name.lower(),
        name=name,
        hf_id=name,
        params_b=round(params / 1e9, 2),  # exact: the header's tensor shapes
        active_params_b=None,
        arch=arch,
        artifacts=(art,),
        source=art.source or str(path),
    )


def mmproj_bytes(path: Path) -> int:
    """Bytes of the tensors of a --mmproj projector file, which llama-server loads beside the
    model (tools/mtmd/clip.cpp clip_model_loader: every tensor of the file, on the first device
    of the model's list unless --no-mmproj-offload).

    The file must be a GGUF whose general.architecture is "clip" (convert_hf_to_gguf.py
    --mmproj writes that): anything else is a ModelFileError naming what it is.
    """
    head = _open(path)
    arch = _value(head, "general.architecture")
    if arch != "clip":
        raise ModelFileError(
            f"{path}: general.architecture is {shorten(arch)}, not 'clip'. Accepted: a "
            "multimodal projector GGUF (mmproj-*.gguf) for --mmproj."
        )
    return sum(t.n_bytes for t in head.tensors)


# The widest vision warmup llama.cpp gives a dynamic-resolution projector: 46 x 46 output tokens
# of a 2 x 2 merge (tools/mtmd/clip.cpp set_warmup_n_tokens(46*46); clip-model.h
# warmup_image_size = n_tok_per_side * patch_size * n_merge).
_MMPROJ_MAX_WARMUP_PATCHES = (46 * 2) ** 2
_MMPROJ_COMPUTE_FLOOR = 64 * 2**20


def mmproj_compute_bytes(path: Path) -> int:
    """An allowance for the compute buffer llama-server reserves for a --mmproj projector.

    llama-fit-params does not count it (common/fit.cpp sizes the text model only); clip.cpp sizes
    it by building the graph of one warmup image (clip.cpp get_dummy_batch: warmup_image_size,
    image_size by default, or the set_warmup_n_tokens cap of the dynamic-resolution projectors,
    which read clip.vision.image_max_pixels) and reserving it on the projector's device. The
    allowance is that graph's largest tensors with flash attention off (clip.cpp falls back to it
    where the device lacks the head size): the F32 attention scores of every head over the warmup
    patches, plus four F32 activations of the patches at the wider of the embedding and FFN
    widths. Not yet measured on a GPU (bench/gpu/ measures it where one is lent); it is kept on
    the high side on purpose, since under-predicting is an OOM.
    """
    head = _open(path)
    where = str(path)

    def key(name: str, default: int) -> int:
        v = _value(head, name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            return default
        return _checked(where, name, v, NumberRule(1, 1 << 24))

    image = key("clip.vision.image_size", 0)
    patch = key("clip.vision.patch_size", 0)
    if not image or not patch:
        return _MMPROJ_COMPUTE_FLOOR
    n = (image // patch) ** 2
    max_pixels = key("clip.vision.image_max_pixels", 0)
    if max_pixels:
        n = max(n, min(max_pixels // (patch * patch), _MMPROJ_MAX_WARMUP_PATCHES))
    heads = key("clip.vision.attention.head_count", 16)
    width = max(
        key("clip.vision.embedding_length", 1024), key("clip.vision.feed_forward_length", 0)
    )
    return max(_MMPROJ_COMPUTE_FLOOR, heads * n * n * 4 + 4 * n * width * 4)
