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
  the routed experts of the first N layers in host RAM.
- Compute buffer: the worst of two phases of the reserve graph - the output phase (logits of a
  whole ubatch, f32) and the attention phase (without flash attention the f32 KQ matrix of
  n_kv x n_ubatch x n_head plus its mask). Fitted against llama-fit-params' breakdown; see
  bench/results/llamacpp-memory.md for the measured error.
"""

from __future__ import annotations

from dataclasses import dataclass

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
# Graph tensors besides the big ones (norm outputs, rope, residuals): a fixed allowance.
COMPUTE_SLACK = 32 * MIB


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


def kv_layer_cells(arch: ModelArch, cfg: LlamaCppConfig) -> list[int]:
    """KV cells each layer allocates (all streams together)."""
    _, per, streams = context_cells(cfg)
    swa = set(arch.sliding_window_layers) if arch.sliding_window else set()
    out = []
    for il in range(arch.n_layers):
        if il in swa:
            assert arch.sliding_window is not None
            window = arch.sliding_window * (cfg.parallel if cfg.kv_unified else 1)
            out.append(pad(min(per, window + cfg.n_ubatch)) * streams)
        else:
            out.append(per * streams)
    return out


def kv_layer_bytes(arch: ModelArch, cfg: LlamaCppConfig) -> list[int]:
    k_row = row_bytes(cfg.cache_type_k, arch.n_kv_heads * arch.head_dim)
    v_row = row_bytes(cfg.cache_type_v, arch.n_kv_heads * arch.v_head_dim)
    return [cells * (k_row + v_row) for cells in kv_layer_cells(arch, cfg)]


def kv_bytes_per_token(
    arch: ModelArch, cache_type_k: str = "f16", cache_type_v: str = "f16"
) -> int:
    """K+V bytes one token costs summed over all layers (sliding layers counted at full width)."""
    k_row = row_bytes(cache_type_k, arch.n_kv_heads * arch.head_dim)
    v_row = row_bytes(cache_type_v, arch.n_kv_heads * arch.v_head_dim)
    return arch.n_layers * (k_row + v_row)


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


def compute_bytes(arch: ModelArch, cfg: LlamaCppConfig, n_kv: int, with_output: bool) -> int:
    """Compute buffer of one device: the larger of the output phase and the attention phase."""
    ub = min(cfg.n_ubatch, cfg.n_batch)
    q_dim = arch.n_heads * arch.head_dim
    ff = arch.intermediate_size
    if arch.is_moe:
        ff = (arch.n_experts_per_token or 1) * (arch.expert_intermediate_size or 0) + (
            (arch.n_shared_experts or 0) * (arch.expert_intermediate_size or 0)
        )
    base = ub * 4 * (2 * q_dim + ff) + COMPUTE_SLACK
    streams = context_cells(cfg)[2]
    tokens_per_stream = max(1, ub // streams)
    if cfg.flash_attn:
        attn = base + n_kv * ub * 2
    else:
        attn = base + n_kv * tokens_per_stream * streams * arch.n_heads * 4 + n_kv * ub * 4
    rows = ub if cfg.n_outputs is None else min(ub, cfg.n_outputs)
    out = (
        arch.vocab_size * rows * 4 + 2 * ub * arch.hidden_size * 4 + COMPUTE_SLACK
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
    spec: ModelSpec, art: Artifact, cfg: LlamaCppConfig, gpu_count: int = 0
) -> Estimate:
    arch = spec.arch
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
        out_bytes = 0  # tied and on the CPU: the same tensor serves both
    weights[slot(out_dev)] += out_bytes
    _, per, _ = context_cells(cfg)
    devices = []
    for d in range(n_dev):
        on = any(x == d for x in layer_dev) or out_dev == d
        comp = compute_bytes(arch, cfg, per, with_output=out_dev == d) if on else 0
        over = CUDA_OVERHEAD if on else 0
        tot = weights[d] + kv[d] + comp + over
        devices.append(DeviceMemory(f"CUDA{d}", weights[d], kv[d], comp, over, tot))
    cpu_layers = any(x < 0 for x in layer_dev)
    cpu_comp = (
        compute_bytes(arch, cfg, per, with_output=out_dev < 0)
        if (cpu_layers or out_dev < 0)
        # the host still stages the ubatch's input embeddings (llama.cpp's CUDA_Host buffer)
        else (min(cfg.n_ubatch, cfg.n_batch) * 4 * arch.hidden_size * 3)
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
        notes.append(f"CUDA runtime overhead assumed {CUDA_OVERHEAD // MIB} MiB per GPU in use")
    if not layout.exact:
        notes.append("weight placement derived from the architecture (no file header read)")
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
