"""llama-server: its one settings record, the fit that chooses it, and the argv written from it.

Every value the argv carries comes from ``LlamaServerSettings``, and the prediction was made with
exactly those settings: the user's pinned values (``-ub``, ``-ts``, ``-c`` ...) are inputs of the
memory model, never dropped or re-spelled twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from gpu_preflight.inputs.flags import canonical
from gpu_preflight.inputs.model_request import Draft
from gpu_preflight.inputs.overrides import Overrides, per_slot_context
from gpu_preflight.memory.llamacpp import (
    NO_FLASH_ATTN,
    LlamaCppConfig,
    checkpoint_bytes,
    draft_config,
    estimate_llamacpp,
    layers_per_device,
    output_device,
    with_draft,
)
from gpu_preflight.memory.types import DeviceMemory, Estimate
from gpu_preflight.models.types import Artifact, ModelSpec
from gpu_preflight.plan.common import (
    Fit,
    FitResult,
    Miss,
    Mode,
    Wants,
    context_range,
    gib,
    label,
    largest_context,
    moe_read_fraction,
)
from gpu_preflight.plan.forecast import forecast_decode
from gpu_preflight.plan.settings import LlamaServerSettings
from gpu_preflight.plan.targets import GpuTarget, HostTarget
from gpu_preflight.plan.types import ModelChoice

# llama-server's prompt cache keeps finished prompts' KV state in host RAM, up to --cache-ram MiB
# (common.h cache_ram_mib = 8192; tools/server/server-context.cpp server_prompt_cache). The
# planner passes it explicitly: the user's value, or llama.cpp's default cut to the host RAM the
# plan leaves free, so the cache cannot grow the server out of memory ten minutes in.
DEFAULT_CACHE_RAM_MIB = 8192
DEFAULT_CTX_CHECKPOINTS = 32  # common.h n_ctx_checkpoints
# llama-server 0.3.36's own defaults for what a typed command leaves open (`estimate`, issue 20),
# from the llama-cpp-python 0.3.36 sdist's vendor/llama.cpp:
# -np unset is -1, "auto" (common/arg.cpp common_params_parser_init: LLAMA_EXAMPLE_SERVER sets
# params.n_parallel = -1), which tools/server/server.cpp main resolves to 4 slots and a unified
# KV, whatever --kv-unified says ("n_parallel is set to auto, using n_parallel = 4 and
# kv_unified = true").
SERVER_AUTO_SLOTS = 4
# --fit on by default (common.h fit_params = true): common/fit.cpp common_params_fit_impl reads
# -c 0/unset as the trained context for every stream (n_ctx = n_ctx_train x n_streams, one stream
# with a unified KV), and where that does not fit it lowers -c, never under fit_params_min_ctx
# (common.h: 4096) per stream; a -c 0 the user typed sets that minimum to UINT32_MAX (common/arg.cpp
# -c handler): no reduction. Then, only where -ngl was not set, it moves layers/experts to host.
FIT_MIN_CTX = 4096
MIB = 2**20
_UNQUANTIZED_V = ("f16", "f32", "bf16")


def _cpu(e: Estimate) -> int:
    d = e.device("CPU")
    return d.total_bytes if d else 0


def _proportional_split(gpus: tuple[GpuTarget, ...]) -> tuple[float, ...]:
    if len(gpus) < 2:
        return ()
    total = sum(g.usable_bytes for g in gpus) or 1
    # Proportional to what each card has free: an even split would overflow the smaller card.
    return tuple(round(g.usable_bytes / total, 3) for g in gpus)


def _room_split(fit: LlamaFit) -> tuple[float, ...]:
    """Layers in proportion to the room each GPU has for them: its usable memory less what it
    holds whatever its share (its compute buffer, runtime overhead, and on the last GPU the
    output layer). A split in proportion to free memory alone overflows the smaller card of a
    mixed pair.

    Where the output layer and the biggest compute buffer go is llama.cpp's rule, not -mg's: in
    layer split mode src/llama-model.cpp ``load_tensors`` assigns the output layer
    ``get_layer_buft_list(n_layer)``, the device past the last split point, i.e. the last device
    with a share of the layers, and that device also computes the logits (the output phase of
    its compute buffer). ``--main-gpu`` is read only for --split-mode none (src/llama.cpp
    ``llama_model_load_from_file_impl`` keeps that one device) and row; in layer mode it moves
    nothing (tests/memory/test_vulkan_main_gpu.py checks both on two lavapipe devices). So the
    planner never writes -mg (a user's -mg is passed as given): the card that holds the output
    and the logits is the last one of the device list, and its share here is what is left after
    them, so that card has the room for them whichever card it is. Which card is last is chosen
    by fit_llamacpp (device_orders, written as --device)."""
    lo = context_range(fit.spec, fit.w)[0]
    e = fit.worst(lo, -1, 0)
    layout = fit.art.layout
    out_bytes = (layout.output_bytes or layout.token_embd_bytes) if layout else 0
    room = []
    for i, (g, name) in enumerate(zip(fit.gpus, fit.names, strict=True)):
        d = e.device(name)
        fixed = (d.compute_bytes + d.overhead_bytes) if d else 0
        if i == len(fit.gpus) - 1:
            fixed += out_bytes
        room.append(max(1, g.usable_bytes - fixed))
    total = sum(room)
    return tuple(round(r / total, 3) for r in room)


def _planner_split(fit: LlamaFit) -> LlamaFit:
    """The fit with the planner's own split (_room_split) over the cards that get layers from it.
    A card the split gives no layers would still be opened (a CUDA context) if listed: it is
    left out of the list, and so out of --device, and the rest are split again."""
    fit = replace(fit, split=_room_split(fit))
    held = layers_per_device(fit.spec.arch.n_layers, fit.split)
    kept = tuple(g for g, n in zip(fit.gpus, held, strict=True) if n > 0)
    if len(kept) == len(fit.gpus):
        return fit
    fit = replace(fit, gpus=kept, split=_proportional_split(kept))
    return _planner_split(fit) if len(kept) > 1 else fit


def _bytes_per_token(spec: ModelSpec, art: Artifact, e: Estimate, context: int) -> tuple[int, int]:
    """Bytes a decoded token reads on the GPUs and in host RAM: active weights + the KV it attends."""
    arch = spec.arch
    active = 1.0
    if arch.is_moe and arch.n_experts and arch.n_experts_per_token:
        active = arch.n_experts_per_token / arch.n_experts
    gpu_w = sum(d.weights_bytes for d in e.devices if d.device != "CPU")
    cpu_w = sum(d.weights_bytes for d in e.devices if d.device == "CPU")
    if active < 1.0:
        # Routed experts dominate MoE weights; a token reads only its experts' share of them.
        gpu_w = int(gpu_w * moe_read_fraction(art, active))
        cpu_w = int(cpu_w * moe_read_fraction(art, active))
    # Token embeddings are a row lookup, and norms are noise: neither is read whole per token.
    emb = (art.layout.token_embd_bytes + art.layout.other_bytes) if art.layout else 0
    cpu_w = max(0, cpu_w - emb)
    kv = e.kv_bytes_per_token * context
    gpu_kv = sum(d.kv_cache_bytes for d in e.devices if d.device != "CPU")
    cpu_kv = sum(d.kv_cache_bytes for d in e.devices if d.device == "CPU")
    total_kv = gpu_kv + cpu_kv or 1
    return gpu_w + kv * gpu_kv // total_kv, cpu_w + kv * cpu_kv // total_kv


def _with_host_cache(e: Estimate, cache: int) -> Estimate:
    """The prompt cache's host RAM, as overhead on the host (it is not a llama.cpp buffer)."""
    if cache <= 0:
        return e
    devs = [
        replace(d, overhead_bytes=d.overhead_bytes + cache, total_bytes=d.total_bytes + cache)
        if d.device == "CPU"
        else d
        for d in e.devices
    ]
    if not any(d.device == "CPU" for d in e.devices):
        devs.append(DeviceMemory("CPU", 0, 0, 0, cache, cache))
    return replace(e, devices=tuple(devs))


def _with_extra(e: Estimate, extra: int, device: str) -> Estimate:
    """The user's projector / LoRA files: their bytes as weights on the main device."""
    if extra <= 0:
        return e
    devs = []
    for d in e.devices:
        grown = d.weights_bytes + extra, d.total_bytes + extra
        devs.append(
            replace(d, weights_bytes=grown[0], total_bytes=grown[1]) if d.device == device else d
        )
    if not any(d.device == device for d in e.devices):
        devs.append(DeviceMemory(device, extra, 0, 0, 0, extra))
    return replace(e, devices=tuple(devs))


@dataclass(frozen=True)
class LlamaFit:
    """One llama.cpp fit: a model artifact, the devices, and what the caller wants.

    ``gpus`` is the model's device list in llama.cpp's order (``--device``, or the CUDA ordinals
    without it): the tensor split, the per-device estimate and the budgets all follow it, and
    every device is named as llama.cpp names it (``CUDA<ordinal>``, see ``device_name``).
    """

    spec: ModelSpec
    art: Artifact
    gpus: tuple[GpuTarget, ...]
    host: HostTarget
    w: Wants
    draft: Draft | None
    ck: str
    cv: str
    split: tuple[float, ...]
    unified: bool

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(device_name(g) for g in self.gpus)

    @property
    def name(self) -> str:
        base = label(self.spec, self.art, "llama.cpp")
        if self.draft is not None:
            base += f" + draft {self.draft.spec.id} {self.draft.artifact.quant}"
        return base

    def total_cells(self, ctx: int) -> int:
        """-c for a per-sequence context (or the user's -c, exactly as given)."""
        if self.w.ctx_total is not None:
            return self.w.ctx_total
        return ctx if self.unified else ctx * self.w.parallel

    def config(self, ctx: int, ngl: int, ncmoe: int, flash: bool) -> LlamaCppConfig:
        total = self.total_cells(ctx)
        # llama-context.cpp (llama_context ctor): n_batch = min(n_ctx, n_batch) for causal
        # models, n_ubatch = min(n_batch, n_ubatch).
        n_batch = min(total, self.w.n_batch)
        return LlamaCppConfig(
            context=total,
            parallel=self.w.parallel,
            cache_type_k=self.ck,
            cache_type_v=self.cv,
            flash_attn=flash,
            n_batch=n_batch,
            n_ubatch=min(n_batch, self.w.n_ubatch),
            n_gpu_layers=ngl if self.gpus else 0,
            n_cpu_moe=ncmoe,
            tensor_split=self.split,
            kv_unified=self.unified,
            repack=self.w.repack if self.w.repack is not None else True,
            mmap=self.w.load_mode not in ("none", "mlock", "dio"),
            op_offload=self.w.op_offload is not False,
            swa_full=self.w.swa_full,
        )

    def estimate(self, ctx: int, ngl: int, ncmoe: int, flash: bool) -> Estimate:
        cfg = self.config(ctx, ngl, ncmoe, flash)
        names = self.names
        e = estimate_llamacpp(self.spec, self.art, cfg, len(self.gpus), names)
        # --mmproj goes to the first device of the list (common/arg.cpp: mmproj_device =
        # params.devices.front(); without --device clip.cpp takes the first GPU, CUDA0)
        e = _with_extra(e, self.w.extra_gpu_bytes, names[0] if names and ngl != 0 else "CPU")
        e = _with_host_cache(e, (self.w.cache_ram_mib or 0) * MIB)
        if self.w.ctx_checkpoints is not None:
            e = _with_host_cache(e, self.w.ctx_checkpoints * self.checkpoint(cfg))
        if self.draft is None:
            return e
        # The draft's KV uses the target's cache types (passed as --spec-draft-type-k/-v).
        d = estimate_llamacpp(
            self.draft.spec,
            self.draft.artifact,
            draft_config(cfg, self.ck, self.cv),
            len(self.gpus),
            names,
        )
        return with_draft(e, d, f"{self.draft.spec.id} {self.draft.artifact.quant}")

    def worst(self, ctx: int, ngl: int, ncmoe: int) -> Estimate:
        # "auto" flash attention is decided by llama.cpp at load time: plan for the bigger case.
        if self.w.flash_attn == "auto":
            a, b = self.estimate(ctx, ngl, ncmoe, True), self.estimate(ctx, ngl, ncmoe, False)
            return a if a.gpu_total_bytes + _cpu(a) >= b.gpu_total_bytes + _cpu(b) else b
        return self.estimate(ctx, ngl, ncmoe, self.w.flash_attn != "off")

    def budgets(self) -> dict[str, int]:
        out = {device_name(g): g.usable_bytes for g in self.gpus}
        if self.host.usable_bytes is not None:
            out["CPU"] = self.host.usable_bytes
        return out

    def over(self, e: Estimate) -> list[str]:
        """Devices whose prediction exceeds their budget, in words (empty: fits)."""
        b = self.budgets()
        out = []
        for d in e.devices:
            limit = b.get(d.device)
            if limit is None or d.total_bytes <= limit:
                continue
            where = next((g.label for g in self.gpus if device_name(g) == d.device), "host RAM")
            out.append(
                f"{gib(d.total_bytes)} on {where}, {gib(limit)} usable "
                f"(short by {gib(d.total_bytes - limit)})"
            )
        return out

    def fits(self, ctx: int, ngl: int, ncmoe: int) -> bool:
        return not self.over(self.worst(ctx, ngl, ncmoe))

    def settings(self, ctx: int, ngl: int, ncmoe: int) -> LlamaServerSettings:
        w = self.w
        return LlamaServerSettings(
            n_ctx_total=self.total_cells(ctx),
            parallel=w.parallel,
            n_gpu_layers=ngl if self.gpus else 0,
            n_cpu_moe=ncmoe,
            flash_attn=w.flash_attn,
            cache_type_k=self.ck,
            cache_type_v=self.cv,
            n_batch=w.n_batch,
            n_ubatch=w.n_ubatch,
            tensor_split=self.split if w.tensor_split is None else w.tensor_split,
            split_mode=w.split_mode,
            main_gpu=w.main_gpu,
            devices=self.device_flag(),
            kv_unified=w.kv_unified,
            repack=w.repack,
            load_mode=w.load_mode,
            fit=w.fit or "off",
            op_offload=w.op_offload,
            swa_full=w.swa_full,
        )

    def device_flag(self) -> str | None:
        """--device: the user's value as given; the planner's order where it is not llama.cpp's
        own (every CUDA device by ordinal); None (not written) otherwise.

        With --split-mode none, llama.cpp's own list written out when there are several CUDA
        devices: --main-gpu indexes the same list, but without --device src/llama.cpp reads
        every GPU's properties to drop duplicates, which opens a CUDA context on each (its free
        memory, cudaMemGetInfo), while from a --device list it keeps the main one before it
        reads any."""
        if self.w.devices is not None:
            return self.w.devices
        if not self.gpus:
            return None
        every = max(len(self.gpus), self.host.cuda_devices)
        own = tuple(f"CUDA{i}" for i in range(every))
        if self.w.split_mode == "none":
            return ",".join(own) if every > 1 else None
        names = self.names
        # llama.cpp's own list is every device it enumerates: the same list needs no flag.
        return None if names == own else ",".join(names)

    def checkpoint(self, cfg: LlamaCppConfig) -> int:
        """Host bytes of one checkpoint of every slot."""
        return checkpoint_bytes(self.spec.arch, cfg) * self.w.parallel

    def checkpoints(self, e: Estimate, ctx: int) -> tuple[int | None, int]:
        """(--ctx-checkpoints, their host bytes): the user's, or llama.cpp's 32 cut to the host
        RAM left; None for a model without sliding-window layers (it makes none)."""
        each = self.checkpoint(self.config(ctx, -1, 0, True))
        if each == 0:
            return self.w.ctx_checkpoints, 0
        if self.w.ctx_checkpoints is not None:
            return self.w.ctx_checkpoints, 0  # already in the estimate
        cpu = e.device("CPU")
        left = (self.host.usable_bytes or 0) - (cpu.total_bytes if cpu else 0)
        # At most half of what is left: the other half is the prompt cache's (--cache-ram).
        n = max(0, min(DEFAULT_CTX_CHECKPOINTS, left // 2 // each))
        return n, n * each

    def cache_ram(self, e: Estimate) -> int:
        """--cache-ram in MiB: the user's, or llama.cpp's default cut to the host RAM left."""
        if self.w.cache_ram_mib is not None:
            return self.w.cache_ram_mib
        cpu = e.device("CPU")
        if self.host.usable_bytes is None:
            return 0  # host RAM unknown: no room can be promised to a cache
        left = self.host.usable_bytes - (cpu.total_bytes if cpu else 0)
        return max(0, min(DEFAULT_CACHE_RAM_MIB, left // MIB))

    def settle(self, ctx: int, ngl: int, ncmoe: int, mode: Mode) -> Fit:
        e = self.worst(ctx, ngl, ncmoe)
        n_ckpt, ckpt_bytes = self.checkpoints(e, ctx)
        e = _with_host_cache(e, ckpt_bytes)
        cache = self.cache_ram(e)
        if self.w.cache_ram_mib is None:
            e = _with_host_cache(e, cache * MIB)
        host_notes = [
            f"host RAM for llama-server's prompt cache: --cache-ram {cache} MiB "
            "(counted as host overhead)"
        ]
        one = self.checkpoint(self.config(ctx, ngl, ncmoe, True)) if n_ckpt is not None else 0
        if n_ckpt is not None and (one > 0 or not self.w.as_typed):
            host_notes.append(
                f"host RAM for sliding-window checkpoints: --ctx-checkpoints {n_ckpt} x "
                f"{one // MIB} MiB (every slot's window KV, tools/server create_checkpoint)"
            )
        gpu_bpt, cpu_bpt = _bytes_per_token(self.spec, self.art, e, ctx)
        gbw = min((g.bandwidth_gb_s or 0.0) for g in self.gpus) if self.gpus else None
        fc = forecast_decode(gpu_bpt, cpu_bpt, gbw or None, self.host.bandwidth_gb_s)
        return Fit(
            spec=self.spec,
            artifact=self.art,
            engine="llama.cpp",
            mode=mode,
            context=ctx,
            parallel=self.w.parallel,
            estimate=e,
            gpus=self.gpus,  # in device order, as the estimate's devices
            budgets=self.budgets(),
            forecast=fc,
            settings=replace(
                self.settings(ctx, ngl, ncmoe), cache_ram_mib=cache, ctx_checkpoints=n_ckpt
            ),
            draft=self.draft,
            notes=tuple(host_notes),
        )

    def speed_miss(self, fit: Fit) -> Miss | None:
        w = self.w
        if w.min_tok_s <= 0:
            return None  # no floor (estimate): memory alone decides
        if fit.forecast is None:
            return Miss(
                self.spec,
                self.art,
                "llama.cpp",
                f"{self.name}: {fit.mode} decode speed cannot be forecast (a memory bandwidth is "
                f"unknown), so the floor of {w.min_tok_s:g} tok/s (PREFLIGHT_MIN_TOKS) cannot be "
                "confirmed",
            )
        if fit.forecast.low_tok_s < w.min_tok_s:
            return Miss(
                self.spec,
                self.art,
                "llama.cpp",
                f"{self.name}: forecast {fit.forecast.low_tok_s:.1f}-{fit.forecast.high_tok_s:.1f} "
                f"tok/s ({fit.mode}, {fit.context} tokens) is under the floor of {w.min_tok_s:g} "
                "tok/s (PREFLIGHT_MIN_TOKS)",
                fit.forecast,
                fit,
            )
        return None

    def miss(self, why: str) -> Miss:
        return Miss(self.spec, self.art, "llama.cpp", f"{self.name}: {why}")

    def needs(self, ctx: int, ngl: int, ncmoe: int) -> str:
        """What did not fit, with the whole configuration tried (issue 13: every reason says it)."""
        layers = "all layers" if ngl < 0 or ngl > self.spec.arch.n_layers else f"-ngl {ngl}"
        moe = f", experts of {ncmoe} layers in host RAM" if ncmoe else ""
        where = f"{len(self.gpus)} GPU(s)" if self.gpus else "the CPU"
        return (
            "needs "
            + "; ".join(self.over(self.worst(ctx, ngl, ncmoe)))
            + f" at {ctx} tokens x {self.w.parallel} slot(s), KV {self.ck}/{self.cv}, "
            f"{layers}{moe} on {where}"
        )


def _cache_types(w: Wants) -> tuple[str, str] | str:
    k, v = w.cache_type_k or "f16", w.cache_type_v or "f16"
    for t in (k, v):
        if t.startswith("fp8") or t == "auto":
            return f"cache type {t} is a vLLM KV type; llama.cpp takes f16, q8_0, q4_0, ..."
    return (k, v)


def device_name(g: GpuTarget) -> str:
    """llama.cpp's name of a CUDA device: CUDA<ordinal> (ggml-cuda.cu: the device context's
    name is GGML_CUDA_NAME + its device number), what --device takes and its logs print."""
    return f"CUDA{g.cuda_ordinal}"


_DEVICE_NAME = re.compile(r"[A-Za-z_]+([0-9]+)")


def pinned_devices(gpus: tuple[GpuTarget, ...], value: str) -> tuple[GpuTarget, ...] | str:
    """The user's --device list as the GPUs it names, in its order, or why it cannot be planned.

    A name is matched by its number to a GPU's CUDA ordinal: the image's llama.cpp is a CUDA
    build, whose devices are CUDA0.. (another backend's name, Vulkan1, is taken as the same
    device number; llama-server itself refuses a name it does not know). "none": no GPU
    (common/arg.cpp parse_device_list).
    """
    if value.strip().lower() == "none":
        return ()
    by_ordinal = {g.cuda_ordinal: g for g in gpus}
    out: list[GpuTarget] = []
    for name in value.split(","):
        m = _DEVICE_NAME.fullmatch(name.strip())
        g = by_ordinal.get(int(m[1])) if m else None
        if g is None:
            have = ", ".join(device_name(x) for x in sorted(gpus, key=lambda x: x.cuda_ordinal))
            return (
                f"--device {value} names {name}, which is not a GPU planned on ({have or 'none'})"
            )
        if g in out:
            return f"--device {value} names {name} twice"
        out.append(g)
    return tuple(out)


def device_orders(gpus: tuple[GpuTarget, ...], w: Wants) -> list[tuple[GpuTarget, ...]] | None:
    """The device lists worth planning, llama.cpp's own order (by CUDA ordinal) first; None where
    the order is not the planner's to choose, or every order plans the same.

    In layer split mode the output layer and the logits, the biggest compute buffer, go to the
    last device of the list with a share of the layers (src/llama-model.cpp load_tensors:
    dev_output = get_layer_buft_list(n_layer), past the last split point), and --main-gpu moves
    neither (tests/memory/test_vulkan_main_gpu.py). --device CUDAa,CUDAb,.. makes the list, in
    that order (common/arg.cpp parse_device_list; src/llama.cpp llama_prepare_model_devices keeps
    params.devices as given), and --tensor-split follows it. So each card is tried as the last
    one, the others before it by ordinal; orders whose cards have the same budgets position by
    position plan the same and are tried once. A user's --device, --tensor-split or --main-gpu
    pins the devices, and --split-mode none uses one.
    """
    base = tuple(sorted(gpus, key=lambda g: g.cuda_ordinal))
    pinned = w.devices is not None or w.tensor_split is not None or w.main_gpu is not None
    if len(base) < 2 or pinned or w.split_mode == "none":
        return None
    out = [base]
    seen = {tuple(g.usable_bytes for g in base)}
    for last in base[:-1]:
        order = (*(g for g in base if g is not last), last)
        key = tuple(g.usable_bytes for g in order)
        if key not in seen:
            seen.add(key)
            out.append(order)
    return out if len(out) > 1 else None  # identical cards: one order, nothing to choose


def make_llama_fit(
    spec: ModelSpec,
    art: Artifact,
    gpus: tuple[GpuTarget, ...],
    host: HostTarget,
    w: Wants,
    draft: Draft | None = None,
    order: tuple[GpuTarget, ...] | None = None,
) -> LlamaFit | Miss:
    """The fit record for these devices, or why the user's settings rule llama.cpp out.

    ``order``: the device list to plan (device_orders); None: the user's --device, or without
    it llama.cpp's own, every CUDA device by ordinal (ggml-cuda.cu
    ggml_backend_cuda_reg_get_device), which --tensor-split and --main-gpu then index.
    """
    types = _cache_types(w)
    if isinstance(types, str):
        return Miss(spec, art, "llama.cpp", f"{label(spec, art, 'llama.cpp')}: {types}")
    ck, cv = types
    if order is not None:
        gpus = order
    elif w.devices is not None:
        pinned = pinned_devices(gpus, w.devices)
        if isinstance(pinned, str):
            return Miss(spec, art, "llama.cpp", f"{label(spec, art, 'llama.cpp')}: {pinned}")
        gpus = pinned
    else:
        gpus = tuple(sorted(gpus, key=lambda g: g.cuda_ordinal))
    if w.split_mode == "none" and gpus:
        main = w.main_gpu or 0
        if main >= len(gpus):
            return Miss(
                spec,
                art,
                "llama.cpp",
                f"{label(spec, art, 'llama.cpp')}: --main-gpu {main} with --split-mode none, "
                f"but {len(gpus)} GPU(s) are planned on",
            )
        gpus = (gpus[main],)
    split = _proportional_split(gpus)
    if w.tensor_split is not None and len(gpus) > 1:
        if len(w.tensor_split) > len(gpus):
            return Miss(
                spec,
                art,
                "llama.cpp",
                f"{label(spec, art, 'llama.cpp')}: --tensor-split has {len(w.tensor_split)} "
                f"entries for {len(gpus)} GPU(s)",
            )
        padded = list(w.tensor_split) + [0.0] * (len(gpus) - len(w.tensor_split))
        total = sum(padded)
        split = tuple(x / total for x in padded)
    unified = bool(w.kv_unified)
    fit = LlamaFit(spec, art, gpus, host, w, draft, ck, cv, split, unified)
    if w.tensor_split is None and len(gpus) > 1 and not w.as_typed:
        # (a command as typed keeps llama.cpp's own split without -ts: in proportion to each
        # device's free memory, src/llama-model.cpp load_tensors; _proportional_split above)
        fit = _planner_split(fit)
    if w.flash_attn == "off" and cv not in _UNQUANTIZED_V:
        return fit.miss(f"a quantized V cache ({cv}) needs flash attention, which is set off")
    if spec.arch.architecture in NO_FLASH_ATTN and cv not in _UNQUANTIZED_V:
        # src/llama-context.cpp llama_init_from_model turns flash attention off for these
        # architectures whatever -fa says, and then refuses a quantized V cache.
        return fit.miss(
            f"a quantized V cache ({cv}) needs flash attention, which llama.cpp always turns off "
            f"for {spec.arch.architecture}"
        )
    return fit


def _rank(r: FitResult, n_layers: int) -> tuple[int, ...]:
    """How good a fit is, for choosing the device order: a fit over none, then the longer
    context, more slots, all on the GPUs over offload, more layers and fewer expert layers on
    the GPUs."""
    if isinstance(r, Miss) or not isinstance(r.settings, LlamaServerSettings):
        return (0,)
    ngl = r.settings.n_gpu_layers
    layers = n_layers + 1 if ngl < 0 or ngl > n_layers else ngl
    mode = {"gpu": 2, "offload": 1}.get(r.mode, 0)
    return (1, r.context, r.parallel, mode, layers, -r.settings.n_cpu_moe)


def _figures(r: FitResult) -> str:
    if isinstance(r, Miss) or not isinstance(r.settings, LlamaServerSettings):
        return "does not fit"
    out = f"{r.context} tokens x {r.parallel}"
    if r.mode == "offload":
        ngl = r.settings.n_gpu_layers
        out += (
            f" with offload (-ngl {'all' if ngl < 0 else ngl}, --n-cpu-moe {r.settings.n_cpu_moe})"
        )
    return out


def _output_on(order: tuple[GpuTarget, ...], r: FitResult, n_layers: int) -> str:
    """Where a fit in this device order puts the output layer, in words."""
    if isinstance(r, Miss) or not isinstance(r.settings, LlamaServerSettings):
        return f"{order[-1].label} last"
    s = r.settings
    i = output_device(n_layers, s.n_gpu_layers, len(order), s.tensor_split)
    return f"output on {order[i].label}" if i >= 0 else "output in host RAM"


def _order_note(
    orders: list[tuple[GpuTarget, ...]],
    results: list[FitResult],
    chosen: int,
    n_layers: int,
    skipped: bool,
) -> str:
    """Which card holds the output layer and why, with every order's figures."""

    def order(i: int) -> str:
        names = ",".join(device_name(g) for g in orders[i])
        return f"--device {names}" if i else "the CUDA order (no --device)"

    head = (
        "device order: llama.cpp puts the output layer and the biggest compute buffer (the "
        "logits) on the last device of its list that has a share of the layers "
        "(src/llama-model.cpp load_tensors); "
    )
    where = _output_on(orders[chosen], results[chosen], n_layers)
    if skipped:
        return head + (
            f"kept {order(0)}, {where}: it already gives the whole target "
            f"({_figures(results[0])}) with every layer on the GPUs"
        )
    others = "; ".join(
        f"{order(i)} ({_output_on(orders[i], results[i], n_layers)}): {_figures(results[i])}"
        for i in range(len(orders))
        if i != chosen
    )
    return head + (
        f"{'kept' if chosen == 0 else 'chose'} {order(chosen)}, {where}, the order that plans "
        f"the most: {_figures(results[chosen])}; against {others}"
    )


def _truthy(v: str | None) -> bool:
    # common/arg.cpp is_truthy / is_falsey for --fit: on|enabled|true|1 / off|disabled|false|0
    return (v or "on").strip().lower() in ("on", "enabled", "true", "1")


def typed_defaults_llama(spec: ModelSpec, w: Wants) -> Wants:
    """``estimate``'s llama-server command as typed: what the user left open is llama-server
    0.3.36's own default or what it resolves itself, never a value the planner chooses.

    - ``-np`` unset: 4 slots sharing one unified KV (tools/server/server.cpp main);
    - ``-c`` unset or 0 with ``--fit on`` (the default): the trained context per stream
      (common/fit.cpp common_params_fit_impl), lowered by the fit down to 4096 per stream where
      it does not fit, except after a typed ``-c 0``; with ``--fit off``: ``n_ctx_train`` in all
      (src/llama-context.cpp llama_context: n_ctx = n_ctx_train when 0), split among the
      streams of a KV that is not unified;
    - ``-ngl`` unset: ``--fit on`` moves layers to host RAM where the GPUs are short (the
      planner's offload search stands for it); ``--fit off``: every layer (src/llama-model.cpp
      n_gpu_layers: a negative value is n_layer + 1);
    - ``-b``/``-ub`` 2048/512, ``-fa auto`` (request.py), ``--cache-ram`` 8192 MiB and
      ``--ctx-checkpoints`` 32 (common/common.h).
    """
    if not w.as_typed:
        return w
    parallel, unified = w.parallel, bool(w.kv_unified)
    if not w.parallel_pinned:
        parallel, unified = SERVER_AUTO_SLOTS, True
    fit_on = _truthy(w.fit)
    trained = spec.arch.max_position_embeddings
    out = replace(
        w,
        parallel=parallel,
        kv_unified=unified,
        fit="on" if fit_on else "off",
        cache_ram_mib=DEFAULT_CACHE_RAM_MIB if w.cache_ram_mib is None else w.cache_ram_mib,
        ctx_checkpoints=(
            DEFAULT_CTX_CHECKPOINTS if w.ctx_checkpoints is None else w.ctx_checkpoints
        ),
        n_gpu_layers=w.n_gpu_layers if w.n_gpu_layers is not None or fit_on else -1,
    )
    if w.ctx_total is not None:
        return out  # -c N: exactly as typed
    typed_zero = w.fixed_context  # request.py: a typed -c 0 is the trained context, fixed
    if not fit_on:
        # n_ctx_train cells in all; a split KV gives each stream its share (llama-context.cpp).
        return replace(out, ctx_total=trained, fixed_context=True, target_context=trained)
    if typed_zero:
        return replace(out, fixed_context=True, target_context=trained, min_context=trained)
    return replace(
        out,
        fixed_context=False,
        target_context=trained,
        min_context=min(FIT_MIN_CTX, trained),
    )


def fit_llamacpp(
    spec: ModelSpec,
    art: Artifact,
    gpus: tuple[GpuTarget, ...],
    host: HostTarget,
    w: Wants,
    allow_offload: bool,
    draft: Draft | None = None,
) -> FitResult:
    """The best llama.cpp fit on these devices, over the device orders worth trying
    (device_orders): the longest context, then more slots and layers on the GPUs; a tie keeps
    llama.cpp's own order, so --device is written only where another order plans better.
    ``estimate`` (a command as typed) plans llama.cpp's own order and the typed values only."""
    w = typed_defaults_llama(spec, w)
    if w.as_typed:
        got = _fit_in_order(spec, art, gpus, host, w, allow_offload, draft, None)
        return _with_resolved_note(got, w) if isinstance(got, Fit) else got
    orders = device_orders(gpus, w)
    if orders is None:
        return _fit_in_order(spec, art, gpus, host, w, allow_offload, draft, None)
    n_layers = spec.arch.n_layers
    first = _fit_in_order(spec, art, gpus, host, w, allow_offload, draft, orders[0])
    if isinstance(first, Fit) and first.mode == "gpu":
        hi = context_range(spec, w)[1]
        if w.ctx_total is not None or first.context >= hi:
            # the whole target, all on the GPUs: no order can rank higher, a tie keeps this one
            note = _order_note(orders, [first], 0, n_layers, skipped=True)
            return _with_order_note(first, note)
    results: list[FitResult] = [first]
    results += [
        _fit_in_order(spec, art, gpus, host, w, allow_offload, draft, o) for o in orders[1:]
    ]
    chosen = max(range(len(results)), key=lambda i: (_rank(results[i], n_layers), -i))
    best = results[chosen]
    if isinstance(best, Miss):
        return results[0]
    return _with_order_note(best, _order_note(orders, results, chosen, n_layers, skipped=False))


def _with_resolved_note(fit: Fit, w: Wants) -> Fit:
    """``estimate``: the values llama-server resolves for the command as typed, in its terms."""
    s = fit.settings
    assert isinstance(s, LlamaServerSettings)
    trained = fit.spec.arch.max_position_embeddings
    how = "as typed"
    if w.ctx_total is None and s.n_ctx_total < trained * (1 if w.kv_unified else w.parallel):
        how = (
            f"the trained {trained} per stream lowered by llama-server's own --fit to what fits "
            "(common/fit.cpp common_params_fit_impl; its own figure may differ slightly)"
        )
    elif w.ctx_total is None:
        how = "the trained context (-c 0/unset)"
    ngl = "all" if s.n_gpu_layers < 0 else str(s.n_gpu_layers)
    note = (
        f"llama-server 0.3.36 resolves the command as: -c {s.n_ctx_total} ({how}), "
        f"-np {s.parallel} ({'unified KV' if w.kv_unified else 'a KV stream per slot'}), "
        f"-ngl {ngl}{f', --n-cpu-moe {s.n_cpu_moe}' if s.n_cpu_moe else ''}, -b {s.n_batch}, "
        f"-ub {s.n_ubatch}, -fa {s.flash_attn}, KV {s.cache_type_k}/{s.cache_type_v}, "
        f"--cache-ram {s.cache_ram_mib}, --fit {s.fit}"
    )
    return replace(fit, notes=(*fit.notes, note))


def _with_order_note(fit: Fit, note: str) -> Fit:
    # With the estimate's notes: a fit redone with a draft model (plan/draft.py) re-chooses the
    # order, and its estimate (and this note) replaces the target's.
    return replace(fit, estimate=replace(fit.estimate, notes=(*fit.estimate.notes, note)))


def _fit_in_order(
    spec: ModelSpec,
    art: Artifact,
    gpus: tuple[GpuTarget, ...],
    host: HostTarget,
    w: Wants,
    allow_offload: bool,
    draft: Draft | None,
    order: tuple[GpuTarget, ...] | None,
) -> FitResult:
    made = make_llama_fit(spec, art, gpus, host, w, draft, order)
    if isinstance(made, Miss):
        return made
    f = made
    gpus = f.gpus
    lo, hi = context_range(spec, w)
    if w.ctx_total is not None:
        lo = hi = per_slot_context(w.ctx_total, w.parallel, f.unified)
    n_layers = spec.arch.n_layers

    # estimate, -c left to llama-server's own --fit: the context it resolves, then the verdict.
    by_fit = w.as_typed and lo < hi
    if not gpus:
        if host.usable_bytes is None:
            return f.miss("host RAM unknown, cannot plan a CPU run")
        ctx = _fit_resolved_context(f, lo, hi, 0, 0) if by_fit else None
        if by_fit and not f.fits(ctx or lo, 0, 0):
            return f.miss(f.needs(ctx or lo, 0, 0))
        ctx = ctx or largest_context(lo, hi, lambda c: f.fits(c, 0, 0))
        if ctx is None:
            return f.miss(f.needs(lo, 0, 0))
        fit = f.settle(ctx, 0, 0, "cpu")
        return f.speed_miss(fit) or fit

    # Full offload first (or the user's own layer pins, checked as given).
    pinned = w.n_gpu_layers is not None or w.n_cpu_moe is not None
    ngl0 = w.n_gpu_layers if w.n_gpu_layers is not None else -1
    ncmoe0 = w.n_cpu_moe or 0
    if by_fit:
        ctx = _fit_resolved_context(f, lo, hi, ngl0, ncmoe0)
        if ctx is not None and not f.fits(ctx, ngl0, ncmoe0):
            # llama-server's fit is content at this -c (it leaves the layers where they are);
            # what it does not count (host caches) does not fit: the verdict is no.
            return f.miss(f.needs(ctx, ngl0, ncmoe0))
        if ctx is None:
            hi = lo  # the fit lowers -c to its minimum before it moves any layer
    else:
        ctx = largest_context(lo, hi, lambda c: f.fits(c, ngl0, ncmoe0))
    if ctx is not None:
        full = ngl0 < 0 or ngl0 > n_layers
        fit = f.settle(ctx, ngl0, ncmoe0, "gpu" if full and ncmoe0 == 0 else "offload")
        if fit.mode == "gpu":
            return fit
        return f.speed_miss(fit) or fit
    first_miss = f.needs(lo, ngl0, ncmoe0)
    if pinned or not allow_offload:
        return f.miss(first_miss)
    why_not = _offload_blocked(host)
    if why_not:
        return f.miss(f"{first_miss}; offload to host RAM not planned: {why_not}")

    # Offload: routed experts to the CPU first (they are read least per token), then whole layers.
    best: Fit | None = None
    for c in sorted({hi, lo}, reverse=True):
        placement = _offload_placement(spec, n_layers, f, c)
        if placement is None:
            continue
        ngl, nc = placement
        fit = f.settle(c, ngl, nc, "offload")
        pin_issue = _pinned_issue(fit, host)
        if pin_issue:
            return f.miss(pin_issue)
        if f.speed_miss(fit) is None:
            return fit
        best = best or fit
    if best is not None:
        miss = f.speed_miss(best)
        assert miss is not None
        return miss
    all_cpu = f.worst(lo, 0, n_layers if spec.arch.is_moe else 0).device("CPU")
    need = all_cpu.total_bytes if all_cpu else 0
    return f.miss(
        f"{first_miss}; offloading to host RAM needs up to {gib(need)} "
        f"there, {gib(host.usable_bytes or 0)} usable"
    )


def _fit_resolved_context(f: LlamaFit, lo: int, hi: int, ngl: int, ncmoe: int) -> int | None:
    """The per-stream context llama-server's own --fit gives a -c left unset, or None where even
    its minimum does not fit (it then moves layers at that minimum).

    common/fit.cpp common_params_fit_impl: it keeps the trained context where the model's buffers
    (weights, KV, compute) leave its margin free on every device, else lowers -c toward
    fit_params_min_ctx. It counts llama.cpp's buffers only, not llama-server's host caches
    (--cache-ram, context checkpoints), so those are left out here and counted by the verdict.
    Its own figure comes from a linear interpolation on its own measurements; this is the
    largest context (a multiple of 256) that the estimator fits."""
    bare = replace(f, w=replace(f.w, cache_ram_mib=0, ctx_checkpoints=None))
    return largest_context(lo, hi, lambda c: bare.fits(c, ngl, ncmoe))


def _offload_blocked(host: HostTarget) -> str | None:
    if host.usable_bytes is None:
        return "host RAM is unknown"
    if host.wsl2 and host.pinned_ceiling_bytes is None:
        return (
            "on WSL2 the pinned-memory ceiling was not confirmed by the probe (CUDA driver API "
            "unavailable), and WSL2 cannot oversubscribe GPU memory"
        )
    return None


def _pinned_issue(fit: Fit, host: HostTarget) -> str | None:
    cpu = fit.estimate.device("CPU")
    if cpu is None or host.pinned_ceiling_bytes is None:
        return None
    # llama.cpp copies host-resident weights through pinned staging buffers; on a machine whose
    # page-lockable memory is smaller than what we park in host RAM, transfers fall back or fail.
    if cpu.weights_bytes > host.pinned_ceiling_bytes and host.wsl2:
        return (
            f"offload puts {gib(cpu.weights_bytes)} of weights in host RAM but only "
            f"{gib(host.pinned_ceiling_bytes)} could be pinned on this WSL2 machine"
        )
    return None


def _offload_placement(
    spec: ModelSpec, n_layers: int, f: LlamaFit, ctx: int
) -> tuple[int, int] | None:
    """(n_gpu_layers, n_cpu_moe) keeping the most on the GPU; None if nothing fits."""
    if spec.arch.is_moe and f.fits(ctx, -1, n_layers):
        a, b = 0, n_layers  # not fits(-1, a) (full failed), fits(-1, b)
        while b - a > 1:
            mid = (a + b) // 2
            if f.fits(ctx, -1, mid):
                b = mid
            else:
                a = mid
        return -1, b
    ncmoe = n_layers if spec.arch.is_moe else 0
    # Small -ngl values are not monotonic: at -ngl 0 the output layer stays on the host and is
    # op-offloaded to the first GPU for prompt batches (its logits and a copy of its weight,
    # memory/llamacpp.py), and the first few offloaded slots (the output among them) can all
    # land on one GPU of a split. So look for the first -ngl that fits among the smallest few
    # before bisecting upward, where more layers only cost more.
    lowest = range(min(n_layers + 1, len(f.gpus) + 3))
    first = next((n for n in lowest if f.fits(ctx, n, ncmoe)), None)
    if first is None:
        return None
    a, b = first, n_layers + 1  # fits(a), not fits(b) (b = all layers + output)
    while b - a > 1:
        mid = (a + b) // 2
        if f.fits(ctx, mid, ncmoe):
            a = mid
        else:
            b = mid
    return a, ncmoe


# ---------------------------------------------------------------------------------------------
# argv


def _flag(knob: str) -> str:
    return canonical(knob, "llama.cpp")


def llama_server_argv(model: ModelChoice, s: LlamaServerSettings, o: Overrides) -> tuple[str, ...]:
    """The command: every planned value once, canonically spelled; the user's other args last.

    ``estimate`` (``o.as_typed``): the command exactly as typed; the plan's settings are its values
    and what llama-server resolves for the rest (typed_defaults_llama)."""
    if o.as_typed and o.user_args:
        return tuple(o.user_args)
    argv: list[str] = ["llama-server"]
    if model.path:
        argv += [_flag("model"), model.path]
    else:
        argv += [_flag("hf_repo"), model.repo]
        if model.file:
            argv += [_flag("hf_file"), model.file]
    argv += [_flag("fit"), s.fit]
    argv += [_flag("ctx_total"), str(s.n_ctx_total)]
    argv += [_flag("parallel"), str(s.parallel)]
    argv += [_flag("n_gpu_layers"), "all" if s.n_gpu_layers < 0 else str(s.n_gpu_layers)]
    if s.n_cpu_moe:
        argv += [_flag("n_cpu_moe"), str(s.n_cpu_moe)]
    argv += [_flag("flash_attn"), s.flash_attn]
    argv += [_flag("cache_type_k"), s.cache_type_k, _flag("cache_type_v"), s.cache_type_v]
    argv += [_flag("batch"), str(s.n_batch), _flag("ubatch"), str(s.n_ubatch)]
    if s.tensor_split:
        argv += [_flag("tensor_split"), ",".join(f"{x:g}" for x in s.tensor_split)]
    if s.split_mode is not None:
        argv += [_flag("split_mode"), s.split_mode]
    if s.main_gpu is not None:
        argv += [_flag("main_gpu"), str(s.main_gpu)]
    if s.devices is not None:
        argv += [_flag("device"), s.devices]
    if s.kv_unified is not None:
        argv.append(_flag("kv_unified") if s.kv_unified else "--no-kv-unified")
    if s.repack is not None:
        argv.append(_flag("repack") if s.repack else "--no-repack")
    if s.load_mode is not None:
        argv += [_flag("load_mode"), s.load_mode]
    if s.op_offload is not None:
        argv.append(_flag("op_offload") if s.op_offload else "--no-op-offload")
    if s.swa_full:
        argv.append(_flag("swa_full"))
    for flag, value in s.extra:
        argv += [flag, value]
    argv += [_flag("cache_ram"), str(s.cache_ram_mib)]
    if s.ctx_checkpoints is not None:
        argv += [_flag("ctx_checkpoints"), str(s.ctx_checkpoints)]
    if s.no_mmproj:
        argv.append("--no-mmproj")
    if s.spec_type is not None:
        argv += [_flag("spec_type"), s.spec_type]
    if s.draft is not None:
        d = s.draft
        # Without --spec-type, llama-server (2026) loads the draft but never drafts with it.
        if s.spec_type is None:
            argv += [_flag("spec_type"), "draft-simple"]
        if d.path:
            argv += [_flag("draft_model"), d.path]
        else:
            argv += [_flag("draft_hf"), d.repo]
            if d.file:
                # With --spec-draft-hf, --spec-draft-model names the file inside the repo.
                argv += [_flag("draft_model"), d.file]
        # The planner's choice where unset: all draft layers with the target on the GPU, and
        # the target's KV types.
        ngl = o.draft_ngl.value if o.draft_ngl else (-1 if s.n_gpu_layers != 0 else 0)
        argv += [_flag("draft_ngl"), "all" if ngl < 0 else str(ngl)]
        argv += [_flag("draft_type_k"), o.draft_type_k.value if o.draft_type_k else s.cache_type_k]
        argv += [_flag("draft_type_v"), o.draft_type_v.value if o.draft_type_v else s.cache_type_v]
        argv += [_flag("draft_n_max"), str(d.tokens)]
    argv += [_flag("host"), s.host, _flag("port"), str(s.port)]
    argv += [_flag("alias"), s.alias or model.id]
    argv += list(o.passthrough)
    return tuple(argv)
