"""Write GGUF files with llama.cpp's real tensor names, shapes and types for a given architecture.

``sparse=True`` leaves the tensor data as a hole (the file is truncated to its full size), so a 70B
model costs no disk and llama.cpp's header-only paths (llama-fit-params) read it like the real
thing. ``sparse=False`` writes small random data and a byte-level tokenizer, so a tiny model can
actually be served by llama-server.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

from gpu_preflight.models.types import ModelArch

QUANT_TYPES = {
    "F32": GGMLQuantizationType.F32,
    "F16": GGMLQuantizationType.F16,
    "Q8_0": GGMLQuantizationType.Q8_0,
    "Q4_0": GGMLQuantizationType.Q4_0,
    "Q4_K": GGMLQuantizationType.Q4_K,
    "Q6_K": GGMLQuantizationType.Q6_K,
    "MXFP4": GGMLQuantizationType.MXFP4,
}
# File-type ids (general.file_type) as llama.cpp's llama_ftype enum numbers them.
FILE_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15, "MXFP4": 38}
GGUF_ARCH = {"gpt-oss": "gpt-oss"}


def _nbytes(t: GGMLQuantizationType, shape: tuple[int, ...]) -> int:
    block, size = GGML_QUANT_SIZES[t]
    n = int(np.prod(shape))
    return n // block * size


def _pick(quant: str, ne0: int, expert: bool = False) -> GGMLQuantizationType:
    """The type a matrix gets: the quant's main type if its row length allows it, else Q8_0/F16."""
    if quant == "MXFP4":
        return GGMLQuantizationType.MXFP4 if expert else GGMLQuantizationType.Q8_0
    main = {"Q4_K_M": GGMLQuantizationType.Q4_K}.get(
        quant, QUANT_TYPES.get(quant, GGMLQuantizationType.F16)
    )
    block = GGML_QUANT_SIZES[main][0]
    if ne0 % block == 0:
        return main
    return GGMLQuantizationType.Q8_0 if ne0 % 32 == 0 else GGMLQuantizationType.F16


def tensor_plan(
    a: ModelArch, quant: str
) -> list[tuple[str, tuple[int, ...], GGMLQuantizationType]]:
    """(name, numpy shape, type) for every tensor llama.cpp loads for this architecture."""
    h, hd, hdv = a.hidden_size, a.head_dim, a.v_head_dim
    q, k, v = a.n_heads * hd, a.n_kv_heads * hd, a.n_kv_heads * hdv
    f32 = GGMLQuantizationType.F32
    out: list[tuple[str, tuple[int, ...], GGMLQuantizationType]] = []
    emb_t = _pick(quant if quant != "Q4_K_M" else "Q4_K", h)
    out.append(("token_embd.weight", (a.vocab_size, h), emb_t))
    out.append(("output_norm.weight", (h,), f32))
    if not a.tied_embeddings:
        out.append(
            ("output.weight", (a.vocab_size, h), _pick("Q6_K" if quant == "Q4_K_M" else quant, h))
        )
    for i in range(a.n_layers):
        b = f"blk.{i}."
        out.append((b + "attn_norm.weight", (h,), f32))
        if a.architecture == "phi3":
            out.append((b + "attn_qkv.weight", (q + k + v, h), _pick(quant, h)))
        else:
            out += [
                (b + "attn_q.weight", (q, h), _pick(quant, h)),
                (b + "attn_k.weight", (k, h), _pick(quant, h)),
                (b + "attn_v.weight", (v, h), _pick(quant, h)),
            ]
        out.append((b + "attn_output.weight", (h, a.n_heads * hdv), _pick(quant, a.n_heads * hdv)))
        if a.architecture in ("qwen2", "gpt-oss"):
            out += [
                (b + "attn_q.bias", (q,), f32),
                (b + "attn_k.bias", (k,), f32),
                (b + "attn_v.bias", (v,), f32),
            ]
        if a.architecture == "gpt-oss":
            out += [
                (b + "attn_output.bias", (h,), f32),
                (b + "attn_sinks.weight", (a.n_heads,), f32),
                (b + "post_attention_norm.weight", (h,), f32),
            ]
        if a.architecture in ("qwen3", "qwen3moe", "gemma3"):
            out += [(b + "attn_q_norm.weight", (hd,), f32), (b + "attn_k_norm.weight", (hd,), f32)]
        if a.architecture in ("gemma2", "gemma3"):
            out += [
                (b + "post_attention_norm.weight", (h,), f32),
                (b + "post_ffw_norm.weight", (h,), f32),
            ]
        if a.architecture != "gpt-oss":
            out.append((b + "ffn_norm.weight", (h,), f32))
        if a.is_moe:
            n, eff = a.n_experts or 0, a.expert_intermediate_size or 0
            out.append((b + "ffn_gate_inp.weight", (n, h), f32))
            out += [
                (b + "ffn_gate_exps.weight", (n, eff, h), _pick(quant, h, True)),
                (b + "ffn_up_exps.weight", (n, eff, h), _pick(quant, h, True)),
                (b + "ffn_down_exps.weight", (n, h, eff), _pick(quant, eff, True)),
            ]
            if a.architecture == "gpt-oss":
                out += [
                    (b + "ffn_gate_inp.bias", (n,), f32),
                    (b + "ffn_gate_exps.bias", (n, eff), f32),
                    (b + "ffn_up_exps.bias", (n, eff), f32),
                    (b + "ffn_down_exps.bias", (n, h), f32),
                ]
        elif a.architecture == "phi3":
            ff = a.intermediate_size
            out += [
                (b + "ffn_up.weight", (2 * ff, h), _pick(quant, h)),
                (b + "ffn_down.weight", (h, ff), _pick(quant, ff)),
            ]
        else:
            ff = a.intermediate_size
            out += [
                (b + "ffn_gate.weight", (ff, h), _pick(quant, h)),
                (b + "ffn_up.weight", (ff, h), _pick(quant, h)),
                (b + "ffn_down.weight", (h, ff), _pick(quant, ff)),
            ]
    if a.architecture == "phi3":
        out += [
            ("rope_factors_long.weight", (hd // 2,), f32),
            ("rope_factors_short.weight", (hd // 2,), f32),
        ]
    return out


def byte_vocab(n: int) -> tuple[list[str], list[int], list[str]]:
    """A GPT-2 byte-level BPE vocabulary of n tokens (256 bytes + merges + specials)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    tokens = [chr(c) for c in cs]
    merges: list[str] = []
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    for x in letters:
        for y in letters:
            if len(tokens) >= n - 2:
                break
            merges.append(f"{x} {y}")
            tokens.append(x + y)
    tokens += ["<|bos|>", "<|eos|>"]
    types = [1] * (len(tokens) - 2) + [3, 3]
    return tokens, types, merges


def _writer(path: Path, arch: ModelArch, file_type: int, name: str) -> GGUFWriter:
    """A GGUFWriter with the model's metadata and a byte-level vocabulary of vocab_size."""
    a = arch
    gname = GGUF_ARCH.get(a.architecture, a.architecture)
    w = GGUFWriter(str(path), gname)
    w.add_name(name)
    w.add_uint32("general.file_type", file_type)
    w.add_context_length(a.max_position_embeddings)
    w.add_embedding_length(a.hidden_size)
    w.add_block_count(a.n_layers)
    w.add_feed_forward_length(a.intermediate_size or (a.expert_intermediate_size or 0))
    w.add_head_count(a.n_heads)
    w.add_head_count_kv(a.n_kv_heads)
    w.add_key_length(a.head_dim)
    w.add_value_length(a.v_head_dim)
    w.add_rope_dimension_count(a.head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    if a.sliding_window:
        w.add_sliding_window(a.sliding_window)
    if a.is_moe:
        w.add_expert_count(a.n_experts or 0)
        w.add_expert_used_count(a.n_experts_per_token or 0)
        w.add_expert_feed_forward_length(a.expert_intermediate_size or 0)
    _add_tokenizer(w, a.vocab_size)
    return w


def _add_tokenizer(w: GGUFWriter, vocab: int) -> None:
    """A byte-level tokenizer of exactly ``vocab`` tokens, so llama.cpp can load the file."""
    tokens, types, merges = byte_vocab(vocab)
    if len(tokens) < vocab:
        pad = vocab - len(tokens)
        tokens += [f"<|unused{i}|>" for i in range(pad)]
        types += [5] * pad  # USER_DEFINED: keeps the vocabulary exactly vocab long
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens[:vocab])
    w.add_token_types(types[:vocab])
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab - 2)
    w.add_eos_token_id(vocab - 1)


def _write_head(
    w: GGUFWriter, path: Path, plan: list[tuple[str, tuple[int, ...], GGMLQuantizationType]]
) -> BinaryIO:
    """Header, metadata and tensor infos of ``plan`` written; the open file, after the infos."""
    for tname, shape, t in plan:
        w.add_tensor_info(tname, shape, np.dtype(np.float32), _nbytes(t, shape), raw_dtype=t)
    w.write_header_to_file(path=path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    assert w.fout is not None
    return w.fout[0]


def _write_sparse(
    w: GGUFWriter, path: Path, plan: list[tuple[str, tuple[int, ...], GGMLQuantizationType]]
) -> Path:
    """Header, metadata and tensor infos of ``plan``; the tensor data a hole (truncated to size)."""
    fout = _write_head(w, path, plan)
    fout.flush()
    start = fout.tell()
    total = sum(GGUFWriter.ggml_pad(_nbytes(t, s), w.data_alignment) for _, s, t in plan)
    w.close()
    with open(path, "r+b") as f:
        f.truncate(GGUFWriter.ggml_pad(start, w.data_alignment) + total)
    return path


def write_gguf(
    path: Path,
    arch: ModelArch,
    quant: str = "Q4_K_M",
    sparse: bool = True,
    name: str = "test-model",
    seed: int = 0,
) -> Path:
    plan = tensor_plan(arch, quant)
    if sparse:
        return write_gguf_plan(path, arch, plan, FILE_TYPE.get(quant, 1), name)
    w = _writer(path, arch, FILE_TYPE.get(quant, 1), name)
    rng = np.random.default_rng(seed)
    fout = _write_head(w, path, plan)
    w.write_padding(fout, fout.tell())
    for _, shape, t in plan:
        nb = _nbytes(t, shape)
        if t == GGMLQuantizationType.F32:
            data = (rng.standard_normal(int(np.prod(shape))).astype(np.float32) * 0.02).tobytes()
        elif t == GGMLQuantizationType.F16:
            data = (rng.standard_normal(int(np.prod(shape))).astype(np.float16) * 0.02).tobytes()
        else:
            data = rng.integers(0, 256, nb, dtype=np.uint8).tobytes()
            if t == GGMLQuantizationType.Q8_0:
                arr = np.frombuffer(bytearray(data), dtype=np.uint8).reshape(-1, 34)
                arr[:, 0:2] = np.frombuffer(
                    np.float16(0.001).tobytes(), dtype=np.uint8
                )  # sane scales
                data = arr.tobytes()
        fout.write(data)
        w.write_padding(fout, nb)
    w.close()
    return path


# -- raw, possibly hostile, GGUF bytes (tests/fuzz) ---------------------------------------------

RAW_FORMATS = {
    "u8": (0, "<B"),
    "i8": (1, "<b"),
    "u16": (2, "<H"),
    "i16": (3, "<h"),
    "u32": (4, "<I"),
    "i32": (5, "<i"),
    "f32": (6, "<f"),
    "bool": (7, "<?"),
    "str": (8, None),
    "arr": (9, None),
    "u64": (10, "<Q"),
    "i64": (11, "<q"),
    "f64": (12, "<d"),
}


def raw_gguf_value(kind: str, value: object) -> bytes:
    """One GGUF metadata value (type code first). ``arr`` takes (element kind, [values])."""
    import struct

    code, fmt = RAW_FORMATS[kind]
    head = struct.pack("<I", code)
    if kind == "str":
        data = str(value).encode()
        return head + struct.pack("<Q", len(data)) + data
    if kind == "arr":
        ekind, items = value  # type: ignore[misc]
        ecode = RAW_FORMATS[ekind][0]
        body = b"".join(raw_gguf_value(ekind, v)[4:] for v in items)
        return head + struct.pack("<IQ", ecode, len(items)) + body
    assert fmt is not None
    return head + struct.pack(fmt, value)


def raw_gguf(
    kvs: list[tuple[str, str, object]],
    tensors: list[tuple[str, tuple[int, ...], int, int]] = (),  # type: ignore[assignment]
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    data_bytes: int = 0,
    align: int = 32,
) -> bytes:
    """GGUF bytes built by hand, so that counts, lengths and types can lie.

    ``tensors`` are (name, ggml shape, ggml type code, offset); ``n_tensors``/``n_kv`` override the
    declared counts; ``data_bytes`` zero bytes follow the aligned header.
    """
    import struct

    out = bytearray(b"GGUF")
    out += struct.pack("<I", version)
    out += struct.pack(
        "<QQ", len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    for key, kind, value in kvs:
        k = key.encode()
        out += struct.pack("<Q", len(k)) + k + raw_gguf_value(kind, value)
    for name, shape, ttype, offset in tensors:
        n = name.encode()
        out += struct.pack("<Q", len(n)) + n + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<Q", d) for d in shape)
        out += struct.pack("<IQ", ttype, offset)
    pad = (-len(out)) % align
    return bytes(out) + b"\0" * (pad + data_bytes)


def raw_llama_kvs(
    n_layers: int = 2, n_embd: int = 64, n_head: int = 4
) -> list[tuple[str, str, object]]:
    """The metadata of a minimal valid llama GGUF, for raw_gguf (edit entries to make it hostile)."""
    return [
        ("general.architecture", "str", "llama"),
        ("llama.block_count", "u32", n_layers),
        ("llama.embedding_length", "u32", n_embd),
        ("llama.attention.head_count", "u32", n_head),
        ("llama.attention.head_count_kv", "u32", 2),
        ("llama.feed_forward_length", "u32", 128),
        ("llama.context_length", "u32", 2048),
        ("general.file_type", "u32", 0),
    ]


def raw_llama_tensors(
    n_layers: int = 2, n_embd: int = 64, vocab: int = 100
) -> tuple[list[tuple[str, tuple[int, ...], int, int]], int]:
    """F32 tensors for raw_llama_kvs (token_embd, output_norm, one weight per block); also returns
    the data size they need."""
    tensors = []
    off = 0
    for name, shape in [
        ("token_embd.weight", (n_embd, vocab)),
        ("output_norm.weight", (n_embd,)),
    ] + [(f"blk.{i}.attn_norm.weight", (n_embd,)) for i in range(n_layers)]:
        tensors.append((name, shape, 0, off))
        n = 1
        for d in shape:
            n *= d
        off += (n * 4 + 31) // 32 * 32
    return tensors, off


def write_gguf_plan(
    path: Path,
    arch: ModelArch,
    plan: list[tuple[str, tuple[int, ...], GGMLQuantizationType]],
    file_type: int = 1,
    name: str = "test-model",
) -> Path:
    """A sparse GGUF of an explicit tensor plan: (name, numpy shape, type) per tensor.

    For per-tensor type mixes: take ``tensor_plan(arch, quant)`` and change the types. Metadata
    as in ``write_gguf``; the tensor data is a hole (the file is truncated to its full size).
    """
    w = _writer(path, arch, file_type, name)
    return _write_sparse(w, path, plan)


def write_gguf_kvs(
    path: Path,
    architecture: str,
    kvs: list[tuple[str, str, object]],
    plan: list[tuple[str, tuple[int, ...], GGMLQuantizationType]],
    vocab: int | None = None,
) -> Path:
    """A sparse GGUF with exactly these metadata keys (``(key, kind, value)``, kind a GGUFWriter
    ``add_<kind>`` such as ``uint32``/``string``/``array``) and tensors (numpy shape, type): for
    architectures whose keys ``_writer`` does not write (MLA, MTP blocks, gated DeltaNet).
    ``vocab``: also a byte-level tokenizer of that many tokens, so llama.cpp can load the file."""
    w = GGUFWriter(str(path), architecture)
    for key, kind, value in kvs:
        getattr(w, f"add_{kind}")(key, value)
    if vocab is not None:
        _add_tokenizer(w, vocab)
    return _write_sparse(w, path, plan)
