"""llama.cpp's memory, predicted the way llama.cpp itself allocates it (pure arithmetic).

Sources, in the llama.cpp tree vendored by llama-cpp-python 0.3.36:
- Context sizes (src/llama-context.cpp): n_ctx is padded to 256; without a unified KV each of the
  n_seq streams gets n_ctx_seq = pad(n_ctx / n_seq, 256) cells (llama-server passes -np, so its
  KV is not unified).
- KV (src/llama-kv-cache.cpp): per layer a K tensor of row_size(type_k, n_embd_k_gqa) x cells and
  a V tensor likewise, on the device of the layer. Sliding-window layers
  (src/llama-kv-cache-iswa.cpp) get pad(min(n_ctx_seq, n_swa + n_ubatch), 256) cells per stream.
- Weights: exact per tensor from the GGUF header; token embeddings stay in host RAM, the output
  layer sits with the last offloaded layer (-ngl counts it as layer n_layer), --n-cpu-moe keeps
  the routed experts of the first N layers in host RAM. Tied embeddings: the output layer is
  token_embd loaded a second time (TENSOR_DUPLICATED, src/llama-model-loader.cpp create_tensor)
  unless both land in the same buffer type; see tied_output_duplicated for when they do not.
- CPU repack (ggml/src/ggml-cpu/repack.cpp): the CPU_REPACK buffer type allocates
  ggml_nbytes per tensor (its get_alloc_size is the default), so repacking moves weights from
  the mapped CPU buffer into CPU_REPACK without changing their total. llama-fit-params' "Host"
  line leaves CPU_REPACK out (that buffer type has no is_host, common/fit.cpp
  common_get_device_memory_data_impl), but the memory is host RAM all the same: it is counted.
- Compute buffer: the worst of two phases of the reserve graph - the output phase (logits of a
  whole ubatch, f32) and the attention phase (without flash attention the f32 KQ matrix of
  n_kv x n_ubatch x n_head plus its mask). Fitted against llama-fit-params' breakdown; see
  bench/results/llamacpp-memory.md for the measured error.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gpu_preflight.memory.types import DeviceMemory, Estimate
from gpu_preflight.models.types import Artifact, ModelArch, ModelSpec, WeightLayout

MIB = 2**20
PAD = 256
# (block size, bytes per block) of each KV cache type, from ggml's type traits.
CACHE_TYPES: dict[str, tuple[int, int]] = {
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "iq4_nl": (32, 18),
    "q5_0": (32, 22),
    "q5_1": (32, 24),
}
# CUDA context, cuBLAS workspace and llama.cpp's CUDA pools per GPU. Not measurable without a GPU:
# an assumption kept on the high side until bench/ measures it on a lent machine.
CUDA_OVERHEAD = 512 * MIB
# ggml-backend.cpp: input copies the scheduler keeps per split under pipeline parallelism.
SCHED_MAX_COPIES = 4
# Graph tensors besides the big ones (norm outputs, rope, residuals): a fixed allowance.
COMPUTE_SLACK = 32 * MIB
# src/models/gemma3n.cpp, gemma4.cpp load_arch_tensors: the tied output is created (as
# TENSOR_DUPLICATED of token_embd) before token_embd itself, which is then created again with no
# flag, so the file's one tensor is loaded twice (llama-fit-params: +1 copy of token_embd).
OUTPUT_BEFORE_EMBD = frozenset({"gemma3n", "gemma4"})
# src/llama-context.cpp llama_init_from_model: "flash_attn is not compatible with Grok - forcing
# off", whatever -fa says (and a quantized V cache is then refused).
NO_FLASH_ATTN = frozenset({"grok"})


@dataclass(frozen=True)
class LlamaCppConfig:
    context: int  # -c: all slots together
    parallel: int = 1  # -np
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: bool = True
    n_batch: int = 2048
    n_ubatch: int = 512
    n_gpu_layers: int = -1  # -1: all layers and the output layer; 0: CPU only
    n_cpu_moe: int = 0
    tensor_split: tuple[float, ...] = ()  # per GPU; empty: even over gpu_count (one GPU: all)
    kv_unified: bool = False
    # Logit rows the context reserves; None: a whole ubatch. A draft context reserves one per slot.
    n_outputs: int | None = None
    # --repack (llama.cpp's default) / --no-repack, which turns off every CPU extra buffer type
    # (CPU_REPACK, AMX): common/common.cpp mparams.use_extra_bufts = !params.no_extra_bufts
    repack: bool = True
    mmap: bool = True  # --no-mmap (or --mlock's load without mmap) sets False
    host_isa: str = "x86_64"  # the CPU the llama.cpp build targets: "x86_64" or "aarch64"
    op_offload: bool = True  # --op-offload (llama.cpp's default) / --no-op-offload
    amx: bool = False  # the host CPU has AMX-INT8 (cpuinfo flag amx_int8) and llama.cpp uses it
    # --swa-full: the sliding-window layers get the whole context's cells, as the other layers
    # (src/llama-kv-cache-iswa.cpp: size_swa = size_base when swa_full), and llama-server then
    # treats the model as a non-SWA one, so it makes no SWA checkpoints (tools/server/
    # server-context.cpp: n_swa = 0 when swa_full)
    swa_full: bool = False


# (block, bytes per block) of GGUF weight types, from ggml's type traits (ggml/src/ggml.c
# type_traits): used to tell a tensor's type from its byte count when only bytes are known.
WEIGHT_TYPES: dict[str, tuple[int, int]] = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "Q1_0": (128, 18),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
    "IQ2_XXS": (256, 66),
    "IQ2_XS": (256, 74),
    "IQ2_S": (256, 82),
    "IQ3_XXS": (256, 98),
    "IQ3_S": (256, 110),
    "IQ1_S": (256, 50),
    "IQ1_M": (256, 56),
    "IQ4_NL": (32, 18),
    "IQ4_XS": (256, 136),
    "TQ1_0": (256, 54),
    "TQ2_0": (256, 66),
    "MXFP4": (32, 17),
    "NVFP4": (64, 36),
}
# Weight types the CPU backend repacks into CPU_REPACK for MUL_MAT / MUL_MAT_ID, and the multiple
# of rows (ne[1]) each needs: ggml/src/ggml-cpu/repack.cpp ggml_repack_get_optimal_repack_type.
# x86_64 (AVX2, which .ci/llama-cpp.sh's GGML_NATIVE=OFF build enables): Q4_0, Q4_K, IQ4_NL,
# MXFP4 (8 rows); Q2_K needs AVX512 (off in that build, on in native builds): counted, since the
# build is not known here. aarch64 (NEON dotprod / i8mm): Q4_0, IQ4_NL, MXFP4, Q8_0, Q1_0
# (4 rows), Q4_K, Q5_K, Q6_K (8 rows).
REPACK_ROWS: dict[str, dict[str, int]] = {
    "x86_64": {"Q4_0": 8, "Q4_K": 8, "IQ4_NL": 8, "MXFP4": 8, "Q2_K": 8},
    "aarch64": {
        "Q4_0": 4,
        "IQ4_NL": 4,
        "MXFP4": 4,
        "Q8_0": 4,
        "Q1_0": 4,
        "Q4_K": 8,
        "Q5_K": 8,
        "Q6_K": 8,
    },
}
# Artifacts with a derived layout (no header read): quants whose tied embedding is known not to
# be repacked. Anything else is assumed repacked (the duplicate is counted).
_NO_REPACK_QUANTS = {
    "x86_64": {"F32", "F16", "BF16", "Q8_0", "Q6_K"},
    "aarch64": {"F32", "F16", "BF16"},
}


# AMX (ggml/src/ggml-cpu/amx/amx.cpp, extra_buffer_type::supports_op): MUL_MAT only (so not the
# 3-D experts), rows (ne[1]) a multiple of 32, and these types with ne[0] a multiple of the value.
# ggml_backend_cpu_get_extra_buffer_types lists AMX before CPU_REPACK, so it wins where both apply.
AMX_TYPES: dict[str, int] = {
    "Q4_0": 32,
    "Q4_1": 32,
    "Q8_0": 32,
    "Q4_K": 256,
    "Q5_K": 256,
    "Q6_K": 256,
    "IQ4_XS": 256,
    "F16": 16,
}
# ggml_backend_amx_get_alloc_size (amx/mmq.cpp get_row_size) stores rows packed: Q8_0 gains an
# int32 compensation per 32-block (34 -> 38 bytes), Q4_K/Q5_K 4 bytes and IQ4_XS 2 bytes per
# 256-block. Tensor types are not in the layout, so the worst ratio is applied.
AMX_GROWTH = (38, 34)


def weight_types_for(n_elements: int, n_bytes: int) -> set[str]:
    """The GGUF types a tensor of n_elements could have, given its size in bytes."""
    return {
        name
        for name, (block, size) in WEIGHT_TYPES.items()
        if n_elements % block == 0 and n_elements // block * size == n_bytes
    }


def tied_output_duplicated(
    arch: ModelArch, layout: WeightLayout, quant: str, cfg: LlamaCppConfig, gpu_count: int
) -> bool:
    """Whether a tied output layer kept in host RAM is a second copy of token_embd.

    llama.cpp creates the output as token_embd with TENSOR_DUPLICATED and reuses the tensor only
    if the output's buffer type is the one token_embd got (src/llama-model-loader.cpp
    create_tensor: ``ggml_get_tensor(ctx_for_buft(buft), name)``). token_embd is used by
    GET_ROWS, the output by MUL_MAT, and select_weight_buft picks the first buffer type of the
    CPU list that supports the op (src/llama-model.cpp make_cpu_buft_list: accelerators, the
    GPU's host buffer, the CPU extra buffers, CPU):
    - no GPU in the model's device list: no host buffer type, so the output goes to CPU_REPACK
      when its type is repacked (REPACK_ROWS; CPU_REPACK supports only MUL_MAT, so token_embd
      stays in CPU): a duplicate.
    - with GPUs: the output takes the GPU host buffer (CUDA_Host), which mmap turns back into
      CPU ("avoid using a host buffer when using mmap"), the same as token_embd: shared. Without
      mmap it stays in CUDA_Host while a K-quant token_embd (no CUDA GET_ROWS) stays in CPU:
      counted as a duplicate.
    - architectures that create the tied output before token_embd (OUTPUT_BEFORE_EMBD): the
      later token_embd (flags 0) is a tensor of its own, so there are always two.
    """
    if not arch.tied_embeddings or layout.output_bytes:
        return False
    if arch.architecture in OUTPUT_BEFORE_EMBD:
        return True
    if gpu_count > 0:
        return not cfg.mmap
    if not cfg.repack:
        return False
    if cfg.amx:
        if not layout.exact:
            return True
        amx = weight_types_for(arch.vocab_size * arch.hidden_size, layout.token_embd_bytes)
        if not amx or any(
            t in AMX_TYPES and arch.vocab_size % 32 == 0 and arch.hidden_size % AMX_TYPES[t] == 0
            for t in amx
        ):
            return True
    rows = REPACK_ROWS.get(cfg.host_isa, REPACK_ROWS["aarch64"] | REPACK_ROWS["x86_64"])
    if not layout.exact:
        return quant.upper() not in _NO_REPACK_QUANTS.get(cfg.host_isa, set())
    types = weight_types_for(arch.vocab_size * arch.hidden_size, layout.token_embd_bytes)
    if not types:
        return True  # an unknown type: assume the worst
    return any(t in rows and arch.vocab_size % rows[t] == 0 for t in types)


def pad(n: int, to: int = PAD) -> int:
    return (n + to - 1) // to * to


def row_bytes(cache_type: str, n: int) -> int:
    if cache_type not in CACHE_TYPES:
        raise ValueError(f"unknown KV cache type {cache_type!r}; known: {', '.join(CACHE_TYPES)}")
    block, size = CACHE_TYPES[cache_type]
    if n % block:
        raise ValueError(
            f"KV cache type {cache_type} needs a row width divisible by {block}, got {n}"
        )
    return n // block * size


def context_cells(cfg: LlamaCppConfig) -> tuple[int, int, int]:
    """(n_ctx, cells per stream, streams) as llama.cpp sets them up."""
    n_ctx = pad(cfg.context)
    if cfg.kv_unified or cfg.parallel <= 1:
        return n_ctx, n_ctx, 1
    per = pad(n_ctx // cfg.parallel)
    return per * cfg.parallel, per, cfg.parallel


def effective_ubatch(cfg: LlamaCppConfig) -> int:
    """n_ubatch as the context uses it: the llama_context constructor (src/llama-context.cpp)
    caps n_batch at the requested n_ctx (causal models; before n_ctx is padded) and n_ubatch at
    n_batch."""
    n_batch = min(cfg.n_batch, cfg.context) if cfg.context > 0 else cfg.n_batch
    return min(cfg.n_ubatch, n_batch)


def kv_layer_cells(arch: ModelArch, cfg: LlamaCppConfig) -> list[int]:
    """KV cells each layer allocates (all streams together)."""
    _, per, streams = context_cells(cfg)
    swa = set(arch.sliding_window_layers) if arch.sliding_window and not cfg.swa_full else set()
    out = []
    for il in range(arch.n_layers):
        if il in swa:
            assert arch.sliding_window is not None
            window = arch.sliding_window * (cfg.parallel if cfg.kv_unified else 1)
            out.append(pad(min(per, window + effective_ubatch(cfg))) * streams)
        else:
            out.append(per * streams)
    return out


def kv_row_widths(arch: ModelArch) -> tuple[int, int]:
    """(K, V) elements one token stores in the widest attention layer's cache: see
    layer_kv_widths, which gives them per layer."""
    widths = [layer_kv_widths(arch, il) for il in range(arch.n_layers)]
    return max(k for k, _ in widths), max(v for _, v in widths)


def layer_kv_widths(arch: ModelArch, il: int) -> tuple[int, int]:
    """(K, V) elements one token stores in layer il's cache.

    src/llama-kv-cache.cpp (the llama_kv_cache constructor): K of n_embd_k_gqa(il) and, unless
    the model is MLA, V of n_embd_v_gqa(il) (llama-hparams.cpp): the layer's KV heads (one per
    layer where head_count_kv is an array; 0 for a layer without attention) times its head size
    (key_length_swa / value_length_swa on sliding-window layers). With MLA (deepseek2 with *_mla
    keys) there is no V tensor at all (has_v = !is_mla) and K is the GGUF's key_length x
    head_count_kv = the latent (kv_lora_rank) plus the rope key (qk_rope_head_dim) of one
    shared head.
    """
    if arch.is_mla:
        assert arch.kv_lora_rank is not None and arch.qk_rope_head_dim is not None
        return arch.kv_lora_rank + arch.qk_rope_head_dim, 0
    n = arch.kv_heads_of(il)
    swa = bool(arch.sliding_window) and il in arch.sliding_window_layers
    hk = (arch.swa_head_dim if swa else None) or arch.head_dim
    hv = (arch.swa_head_dim_v if swa else None) or arch.v_head_dim
    return n * hk, n * hv


def recurrent_state_bytes(arch: ModelArch) -> int:
    """Bytes of one sequence's recurrent state in one recurrent layer (0 without any).

    src/llama-memory-recurrent.cpp: per layer an r tensor of n_embd_r() and an s tensor of
    n_embd_s() per cell, both GGML_TYPE_F32 (llama-model.cpp create_memory). A GGUF gives them
    through the reader (recurrent_state_elems, llama-hparams.cpp for Mamba, RWKV, LFM2, Kimi);
    for gated DeltaNet from the linear_* fields, n_embd_r = (ssm_d_conv - 1) x (ssm_d_inner +
    2 x ssm_n_group x ssm_d_state) and n_embd_s = ssm_d_state x ssm_d_inner, i.e. the conv
    window over q, k and v and the k x v state of every value head.
    """
    if not arch.recurrent_layers:
        return 0
    if arch.recurrent_state_elems is not None:
        return 4 * sum(arch.recurrent_state_elems)
    kd = (arch.linear_k_heads or 0) * (arch.linear_k_head_dim or 0)
    vd = (arch.linear_v_heads or 0) * (arch.linear_v_head_dim or 0)
    n_embd_r = ((arch.linear_conv_kernel or 1) - 1) * (vd + 2 * kd)
    n_embd_s = (arch.linear_k_head_dim or 0) * vd
    return 4 * (n_embd_r + n_embd_s)


def recurrent_cells(cfg: LlamaCppConfig) -> int:
    """Recurrent-state cells: one per sequence, max(1, n_seq_max) (llama-model.cpp
    create_memory, recurrent_rs_size; n_rs_seq rollback snapshots are 0 without speculative
    decoding), and llama-server's n_seq_max is -np."""
    return max(1, cfg.parallel)


def kv_layer_bytes(arch: ModelArch, cfg: LlamaCppConfig) -> list[int]:
    """Cache bytes each layer allocates on its device: K/V cells of attention layers, the
    recurrent state of every sequence for recurrent layers (both for a parallel hybrid),
    nothing for MTP blocks (the main context's KV filter is il < n_layer(), llama-model.cpp
    create_memory) or layers reading another layer's cache.

    Without flash attention V is stored transposed and every layer's V row is padded to the
    widest layer's (llama-kv-cache.cpp: ``!v_trans ? n_embd_v_gqa(il) : n_embd_v_gqa_max()``,
    TAG_V_CACHE_VARIABLE), so a layer of 0 KV heads still holds a V of that width.
    """
    v_max = max(layer_kv_widths(arch, il)[1] for il in range(arch.n_layers))
    recurrent = set(arch.recurrent_layers)
    state = recurrent_state_bytes(arch) * recurrent_cells(cfg)
    out = []
    for il, cells in enumerate(kv_layer_cells(arch, cfg)):
        b = state if il in recurrent else 0
        if arch.has_kv(il):
            k, v = layer_kv_widths(arch, il)
            if not arch.is_mla and not cfg.flash_attn:
                v = v_max
            b += cells * (
                row_bytes(cfg.cache_type_k, k) + (row_bytes(cfg.cache_type_v, v) if v else 0)
            )
        out.append(b)
    return out


def kv_bytes_per_token(
    arch: ModelArch, cache_type_k: str = "f16", cache_type_v: str = "f16"
) -> int:
    """K+V bytes one token costs summed over the attention layers (sliding layers counted at
    full width; recurrent layers and MTP blocks cost nothing per token)."""
    total = 0
    for il in range(arch.n_layers):
        if arch.has_kv(il):
            k, v = layer_kv_widths(arch, il)
            total += row_bytes(cache_type_k, k) + (row_bytes(cache_type_v, v) if v else 0)
    return total


def _layer_devices(
    n_layers: int, ngl: int, gpu_count: int, split: tuple[float, ...]
) -> tuple[list[int], int]:
    """Device of each repeating layer (-1 = CPU) and of the output layer, as llama.cpp assigns them."""
    if gpu_count == 0 or ngl == 0:
        return [-1] * n_layers, -1
    n_off = n_layers + 1 if ngl < 0 else min(ngl, n_layers + 1)
    start = n_layers + 1 - n_off  # llama.cpp offloads the last layers first
    fractions = list(split) if split else [1.0] * gpu_count
    total = sum(fractions) or 1.0
    cum = []
    acc = 0.0
    for f in fractions:
        acc += f / total
        cum.append(acc)
    devices = []
    for il in range(n_layers + 1):
        if il < start:
            devices.append(-1)
            continue
        pos = (il - start) / n_off
        devices.append(
            next(i for i, c in enumerate(cum) if pos < c - 1e-9) if pos < cum[-1] else gpu_count - 1
        )
    return devices[:n_layers], devices[n_layers]


def output_device(n_layers: int, ngl: int, gpu_count: int, split: tuple[float, ...]) -> int:
    """The position in the device list of the GPU that holds the output layer (-1: the host):
    the last one with a share of the layers, not always the last of the list (a share of 0)."""
    return _layer_devices(n_layers, ngl, gpu_count, split)[1]


def layers_per_device(n_layers: int, split: tuple[float, ...]) -> list[int]:
    """How many of the layers (the output layer counted) each GPU of the list holds with every
    layer offloaded: 0 for a share too small to reach a whole layer."""
    n_dev = max(len(split), 1)
    layers, out = _layer_devices(n_layers, -1, n_dev, split)
    return [sum(1 for x in [*layers, out] if x == d) for d in range(n_dev)]


def compute_bytes(arch: ModelArch, cfg: LlamaCppConfig, n_kv: int, with_output: bool) -> int:
    """Compute buffer of one device: the larger of the output phase and the attention phase."""
    ub = effective_ubatch(cfg)
    q_dim = arch.n_heads * arch.head_dim
    ff = arch.intermediate_size
    if arch.is_moe:
        ff = (arch.n_experts_per_token or 1) * (arch.expert_intermediate_size or 0) + (
            (arch.n_shared_experts or 0) * (arch.expert_intermediate_size or 0)
        )
    q_out = 2 * q_dim
    if arch.is_mla and arch.kv_lora_rank and arch.qk_rope_head_dim:
        # MLA with the absorption (src/models/deepseek2.cpp): per head the projected q
        # (head_dim), the absorbed query wk_b x q_nope ++ q_pe (kv_lora_rank + rope), the
        # attention output in the latent (kv_lora_rank) and its wv_b decompression
        # (v_head_dim). With 2 x heads x head_dim the compute came 64-478 MiB under
        # llama-fit-params on DeepSeek-V3's dimensions (n_ubatch 512-2048, flash attention
        # on/off); with these four it is 40-80 MiB over.
        q_out = arch.n_heads * (
            arch.head_dim + 2 * arch.kv_lora_rank + arch.qk_rope_head_dim + arch.v_head_dim
        )
    # q and attention output, the FFN intermediate and two residual streams (ub x hidden):
    # without them, large ubatches without flash attention came in 24-32 MiB under
    # llama-fit-params on gemma-2 and gpt-oss (n_ubatch 4096 and 16384).
    base = ub * 4 * (q_out + ff + 2 * arch.hidden_size) + COMPUTE_SLACK
    streams = context_cells(cfg)[2]
    tokens_per_stream = max(1, ub // streams)
    # the KQ mask (f32; cast to f16 for flash attention), and a second one over the sliding
    # window's cells for models with sliding-window layers (llama-graph.cpp build_attn_inp_kv_iswa)
    n_kv_swa = 0
    if arch.sliding_window and arch.sliding_window_layers:
        # --swa-full: the SWA cache is the whole context, and so is its mask
        n_kv_swa = n_kv if cfg.swa_full else min(n_kv, pad(arch.sliding_window + ub))
        if set(range(arch.n_layers)) <= set(arch.sliding_window_layers):
            n_kv, n_kv_swa = n_kv_swa, 0  # no full-attention layer: every KQ is the window's
    if cfg.flash_attn:
        attn = base + (n_kv + n_kv_swa) * ub * 2
    else:
        attn = (
            base
            + n_kv * tokens_per_stream * streams * arch.n_heads * 4
            + (n_kv + n_kv_swa) * ub * 4
        )
        if arch.is_mla and arch.kv_lora_rank:
            # MLA's V is a view of the K cache, so without flash attention llama-graph.cpp
            # build_attn_mha makes a transposed copy of it (ggml_cont(ggml_transpose(v))),
            # at least f16 wide
            elem = max(2, CACHE_TYPES.get(cfg.cache_type_k, (1, 2))[1])
            attn += n_kv * streams * arch.kv_lora_rank * elem
    rows = ub if cfg.n_outputs is None else min(ub, cfg.n_outputs)
    # MoE graphs leave a routed-expert intermediate (ub x k x n_ff_exp, f32) and a hidden state
    # of the last layer where ggml-alloc cannot reuse them for the logits, so they add to the
    # output phase (measured on gpt-oss: +83..90 MiB over logits + two hidden states at
    # n_ubatch 2048, growing with n_ubatch).
    moe_live = ub * 4 * (ff + arch.hidden_size) if arch.is_moe else 0
    out = (
        # logits, and three hidden-state tensors of the ubatch (two were 24 MiB short on gemma-2,
        # n_ubatch 4096, 4 slots, no flash attention: where ggml-alloc places them varies)
        arch.vocab_size * rows * 4 + 3 * ub * arch.hidden_size * 4 + moe_live + COMPUTE_SLACK
        if with_output
        else 0
    )
    return max(attn, out)


def _layout(spec: ModelSpec, art: Artifact) -> WeightLayout:
    if art.layout is not None:
        return art.layout
    from gpu_preflight.models.layout import derive_layout, scale_layout

    return scale_layout(derive_layout(spec.arch, art.quant, "llama.cpp"), art.weight_bytes)


def estimate_llamacpp(
    spec: ModelSpec,
    art: Artifact,
    cfg: LlamaCppConfig,
    gpu_count: int = 0,
    device_names: tuple[str, ...] = (),
) -> Estimate:
    """The memory of every device, the GPUs in the model's device order (the order of
    ``--device``, which the tensor split follows), then the host.

    ``device_names``: llama.cpp's name of each GPU in that order (``--device CUDA1,CUDA0`` gives
    ("CUDA1", "CUDA0")); empty: CUDA0.. by position, llama.cpp's order without ``--device``
    (src/llama.cpp ``llama_prepare_model_devices``: every GPU by registry order).
    """
    arch = spec.arch
    if arch.architecture in NO_FLASH_ATTN and cfg.flash_attn:
        cfg = replace(cfg, flash_attn=False)
    if device_names and len(device_names) != gpu_count:
        raise ValueError(f"{len(device_names)} device names for {gpu_count} GPU(s)")
    names = device_names or tuple(f"CUDA{i}" for i in range(gpu_count))
    layout = _layout(spec, art)
    n_layers = arch.n_layers
    if len(layout.per_layer_bytes) != n_layers:
        raise ValueError(
            f"{spec.id}: weight layout has {len(layout.per_layer_bytes)} layers, model {n_layers}"
        )
    layer_dev, out_dev = _layer_devices(n_layers, cfg.n_gpu_layers, gpu_count, cfg.tensor_split)
    n_dev = max(gpu_count, 0)
    weights = [0] * (n_dev + 1)  # index n_dev = CPU
    kv = [0] * (n_dev + 1)

    def slot(d: int) -> int:
        return n_dev if d < 0 else d

    kv_layers = kv_layer_bytes(arch, cfg)
    for il in range(n_layers):
        d = slot(layer_dev[il])
        lb, eb = layout.per_layer_bytes[il], layout.per_layer_expert_bytes[il]
        if d != n_dev and il < cfg.n_cpu_moe:
            weights[n_dev] += eb
            weights[d] += lb - eb
        else:
            weights[d] += lb
        kv[d] += kv_layers[il]
    weights[n_dev] += (
        layout.token_embd_bytes + layout.other_bytes
    )  # input embeddings stay on the host
    out_bytes = layout.output_bytes or layout.token_embd_bytes  # tied: a duplicate for the output
    if out_dev < 0 and layout.output_bytes == 0:
        # tied and on the CPU: one tensor serves both, unless their buffer types differ
        dup = tied_output_duplicated(arch, layout, art.quant, cfg, gpu_count)
        out_bytes = layout.token_embd_bytes if dup else 0
    weights[slot(out_dev)] += out_bytes
    if gpu_count == 0 and cfg.amx and cfg.repack:
        # AMX-packed 2-D matrices (everything on the host but token_embd, the experts and the
        # small tensors) grow by at most AMX_GROWTH
        packed = sum(layout.per_layer_bytes) - sum(layout.per_layer_expert_bytes) + out_bytes
        weights[n_dev] += -(-packed * (AMX_GROWTH[0] - AMX_GROWTH[1]) // AMX_GROWTH[1])
    if out_dev >= 0:
        # output_norm is an output-layer tensor (LLM_TENSOR_LAYER_OUTPUT): it sits with the
        # output; other_bytes also holds host-side tensors, so it is counted on both (a few KiB).
        weights[out_dev] += layout.other_bytes
    _, per, _ = context_cells(cfg)
    # Op offload (ggml-backend.cpp ggml_backend_sched_backend_id_from_cur, "1.off"): with weights
    # in host RAM, a prompt batch of at least GGML_OP_OFFLOAD_MIN_BATCH (32) rows runs their ops
    # on the first GPU (ggml-cuda.cu ggml_backend_cuda_device_offload_op), which copies each such
    # weight into its compute buffer. ggml_backend_sched_split_graph (pass 5) starts a new split
    # at every op whose weight lives elsewhere "so the memory of the previously offloaded weights
    # can be reused", and with one copy per input (no pipeline parallelism, which tensor overrides
    # and host layers turn off) the copy is freed after its split: the compute buffer holds the
    # largest single host-resident weight tensor, not a whole layer (Qwen3-235B-A22B Q6_K, experts
    # on the CPU: CUDA0 774 MiB against 630 MiB for one expert tensor and 1.9 GiB for a layer's
    # three; bench/results/gpu-logs.md). The layout has per-layer totals only, so half of a
    # layer's host-resident bytes stands for its largest tensor (a layer's routed experts are
    # three tensors, Q4_K_M's Q6_K ffn_down_exps being the largest at 42 %; a dense layer's
    # biggest matrix is under a third of it). An output layer left on the host (-ngl 0) is
    # offloaded the same way: CUDA0 then computes the logits too, next to a copy of the output
    # weight (Qwen3-0.6B at -ngl 0: 423 MiB = 297 MiB of logits + the 122 MiB tied output).
    # A GPU with no layers at all (-ngl 0) still gets a context and a compute buffer.
    host_layer = 0
    for il in range(n_layers):
        if layer_dev[il] < 0:
            host_layer = max(host_layer, layout.per_layer_bytes[il])
        elif il < cfg.n_cpu_moe:
            host_layer = max(host_layer, layout.per_layer_expert_bytes[il])
    offload = n_dev > 0 and cfg.op_offload and host_layer > 0 and effective_ubatch(cfg) >= 32
    host_tensor = -(-host_layer // 2)
    out_copy = (layout.output_bytes or layout.token_embd_bytes) if out_dev < 0 else 0
    weight_copy = max(host_tensor, out_copy) if offload else 0
    # Pipeline parallelism (src/llama-context.cpp, the llama_context constructor): on with more
    # than one device, every layer and the output offloaded, a layer split, the KV offloaded and
    # no tensor overrides (--n-cpu-moe is one). The scheduler then keeps GGML_SCHED_MAX_COPIES (4)
    # copies of each split's inputs (ggml-backend.cpp ggml_backend_sched_new, n_copies): the
    # hidden state coming from the previous device and the KQ mask(s), so every GPU's compute
    # buffer holds three more of them than a single copy.
    pipeline = n_dev > 1 and (cfg.n_gpu_layers < 0 or cfg.n_gpu_layers > n_layers)
    pipeline = pipeline and cfg.n_cpu_moe == 0
    ub = effective_ubatch(cfg)
    masks = 2 if arch.sliding_window_layers else 1
    split_inputs = ub * arch.hidden_size * 4 + masks * per * ub * 4
    copies = (SCHED_MAX_COPIES - 1) * split_inputs if pipeline else 0
    devices = []
    for d in range(n_dev):
        on = any(x == d for x in layer_dev) or out_dev == d or (offload and d == 0)
        logits = out_dev == d or (offload and d == 0 and out_dev < 0)
        comp = compute_bytes(arch, cfg, per, with_output=logits) if on else 0
        if offload and d == 0:
            comp += weight_copy
        if on:
            comp += copies
        # Every device of the list gets a CUDA context, with layers or without: src/llama.cpp
        # reads each one's free memory (ggml_backend_dev_get_props -> cudaSetDevice +
        # cudaMemGetInfo, ggml-cuda.cu) and llama_context inits a backend for each of
        # model.devices (src/llama-context.cpp). A share of 0 in -ts, or -ngl too small to
        # reach a device, still costs that device its context.
        over = CUDA_OVERHEAD
        tot = weights[d] + kv[d] + comp + over
        devices.append(DeviceMemory(names[d], weights[d], kv[d], comp, over, tot))
    cpu_layers = any(x < 0 for x in layer_dev)
    cpu_comp = (
        compute_bytes(arch, cfg, per, with_output=out_dev < 0)
        if (cpu_layers or out_dev < 0)
        # The host still holds the graph inputs (llama.cpp's CUDA_Host buffer): the ubatch's
        # input embeddings, and the KQ mask(s), f32 n_kv x n_ubatch each, which
        # ggml_backend_sched_backend_id_from_cur places on the CPU backend as graph inputs
        # (llama-graph.cpp build_attn_inp_kq_mask; cast to f16 on the GPU for flash attention).
        else (ub * 4 * arch.hidden_size * 3 + masks * per * ub * 4)
    )
    devices.append(
        DeviceMemory(
            "CPU", weights[n_dev], kv[n_dev], cpu_comp, 0, weights[n_dev] + kv[n_dev] + cpu_comp
        )
    )
    notes = [
        f"KV: {context_cells(cfg)[1]} cells x {context_cells(cfg)[2]} stream(s), "
        f"K {cfg.cache_type_k} / V {cfg.cache_type_v}"
    ]
    if n_dev:
        notes.append(
            f"CUDA runtime overhead assumed {CUDA_OVERHEAD // MIB} MiB per GPU in llama.cpp's "
            "device list"
        )
    if copies:
        notes.append(
            f"pipeline parallelism over {n_dev} GPUs: {SCHED_MAX_COPIES} copies of each split's "
            f"inputs, {copies // MIB} MiB more compute per GPU"
        )
    if offload:
        notes.append(
            # the first device of the list: ggml_backend_sched_backend_id_from_cur offers the op
            # to the backends in order, and llama_context creates them in model.devices order
            f"op offload: {names[0]}'s compute buffer holds {weight_copy // MIB} MiB of "
            "host-resident weights copied in for prompt batches (the largest tensor, bounded by "
            "half the largest host layer"
            + (", or the output layer" if out_copy else "")
            + "; --no-op-offload avoids it)"
        )
    if not layout.exact:
        notes.append("weight placement derived from the architecture (no file header read)")
    if out_dev < 0 and layout.output_bytes == 0 and out_bytes:
        why = "CPU_REPACK" if gpu_count == 0 else "no mmap"
        notes.append(f"tied embeddings: the output layer is a second copy of token_embd ({why})")
    return Estimate(
        engine="llama.cpp",
        context=context_cells(cfg)[0],
        parallel=cfg.parallel,
        devices=tuple(devices),
        kv_bytes_per_token=kv_bytes_per_token(arch, cfg.cache_type_k, cfg.cache_type_v),
        notes=tuple(notes),
    )


def draft_config(cfg: LlamaCppConfig, cache_type_k: str, cache_type_v: str) -> LlamaCppConfig:
    """The draft model's context as llama-server builds it (common_base_params_to_speculative).

    Same n_ctx, slots, batch sizes, flash attention and tensor split as the target; its own KV
    cache types (--spec-draft-type-k/-v) and all of its layers on the GPUs (--spec-draft-ngl all).
    """
    return LlamaCppConfig(
        context=cfg.context,
        parallel=cfg.parallel,
        cache_type_k=cache_type_k,
        cache_type_v=cache_type_v,
        flash_attn=cfg.flash_attn,
        n_batch=cfg.n_batch,
        n_ubatch=cfg.n_ubatch,
        n_gpu_layers=-1 if cfg.n_gpu_layers != 0 else 0,
        n_cpu_moe=0,
        tensor_split=cfg.tensor_split,
        kv_unified=cfg.kv_unified,
        n_outputs=cfg.parallel,  # n_outputs_max = n_parallel, one row per slot
        repack=cfg.repack,
        mmap=cfg.mmap,
        op_offload=cfg.op_offload,
        host_isa=cfg.host_isa,
        amx=cfg.amx,
    )


def with_draft(target: Estimate, draft: Estimate, draft_label: str) -> Estimate:
    """Target and draft in one llama-server process: buffers add up, the CUDA context does not."""
    by_name = {d.device: d for d in draft.devices}
    devices = []
    for t in target.devices:
        d = by_name.get(t.device)
        if d is None:
            devices.append(t)
            continue
        w = t.weights_bytes + d.weights_bytes
        kv = t.kv_cache_bytes + d.kv_cache_bytes
        comp = t.compute_bytes + d.compute_bytes
        over = max(t.overhead_bytes, d.overhead_bytes)
        devices.append(DeviceMemory(t.device, w, kv, comp, over, w + kv + comp + over))
    return Estimate(
        engine=target.engine,
        context=target.context,
        parallel=target.parallel,
        devices=tuple(devices),
        kv_bytes_per_token=target.kv_bytes_per_token + draft.kv_bytes_per_token,
        notes=(
            *target.notes,
            f"speculative decoding: draft {draft_label} with its own KV cache of the same "
            "context and its own compute buffer",
        ),
    )


def checkpoint_bytes(arch: ModelArch, cfg: LlamaCppConfig) -> int:
    """Host RAM one context checkpoint of one slot takes: what cannot be rolled back.

    llama-server saves a slot's partial state (LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) as a
    checkpoint in host RAM, up to --ctx-checkpoints per slot (tools/server/server-context.cpp
    create_checkpoint; common.h n_ctx_checkpoints = 32), for models with sliding-window layers
    (the SWA cache) or recurrent layers (llama-memory-hybrid.cpp state_write: the recurrent
    state of the sequence, the attention KV left out). 0 for a model with neither.
    """
    total = recurrent_state_bytes(arch) * len(arch.recurrent_layers)
    if not arch.sliding_window or not arch.sliding_window_layers or cfg.swa_full:
        return total
    # One sequence's SWA cells: the window plus one ubatch (llama-kv-cache.cpp prunes a
    # sequence's cells below pos - n_swa), whether the cache is split into streams or unified. A
    # unified cache holds every slot's window in one stream (kv_layer_cells), so the checkpoint of
    # one slot is its own share, not the whole stream (which over-counted by the slot count).
    per_layer = kv_layer_bytes(arch, cfg)
    cells = kv_layer_cells(arch, cfg)
    _, _, streams = context_cells(cfg)
    seq_cells = pad(arch.sliding_window + effective_ubatch(cfg))
    swa_bytes = 0
    for il in set(arch.sliding_window_layers):
        if il < len(cells) and cells[il] > 0:
            stream_cells = cells[il] // max(1, streams)
            swa_bytes += (
                per_layer[il] // max(1, streams) * min(seq_cells, stream_cells) // stream_cells
            )
    return total + swa_bytes
