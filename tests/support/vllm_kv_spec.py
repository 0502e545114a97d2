"""Run inside the vLLM venv: vLLM's own KV cache spec for a checkpoint directory.

For each directory (config.json + safetensors header, tests/support/hf_meta_layout.py), vLLM
resolves the config (EngineArgs.create_engine_config: its registry, ModelConfig, CacheConfig,
including the hybrid block-size alignment of vllm/model_executor/models/config.py), builds the
model class its registry names on the meta device (no weights, no memory) under a one-rank
process group, and asks every attention-like layer for its spec the way the model runner does
(vllm/v1/worker/gpu_model_runner.py get_kv_cache_spec: get_layers_from_vllm_config(...,
AttentionLayerBase) and layer.get_kv_cache_spec(vllm_config)). The CPU platform is selected
(VLLM_TARGET_DEVICE=cpu): this machine has no GPU; the spec classes and their page sizes are
the same on every platform.

Input: argv[1] a JSON file [{"architecture": ..., "dir": ...}, ...]. Output: one
"RESULT {json}" line each: {"architecture", "ok", "error", "attention_bytes_per_token" (K+V bytes
one token takes over every attention layer, from each spec's page_size_bytes / block_size),
"state_bytes" (one sequence's recurrent state summed over the Mamba-like layers, unpadded),
"layers": {kind: count}}.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
# Local directories only: no Hub lookups (a machine without network waits on each one).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
warnings.filterwarnings("ignore")


def _init_dist() -> None:
    from vllm.distributed import init_distributed_environment, initialize_model_parallel

    tmp = tempfile.mkdtemp()
    init_distributed_environment(
        world_size=1,
        rank=0,
        distributed_init_method=f"file://{tmp}/pg",
        local_rank=0,
        backend="gloo",
    )
    initialize_model_parallel(1, 1)


def _as_on_a_gpu() -> None:
    """vllm/platforms/cpu.py check_and_update_config resets mamba_ssm_cache_dtype to float32 on
    CPUs with AVX-512 BF16 (its accelerated GDN kernels); the CUDA platform keeps "auto" (the
    model dtype). The spec wanted is the GPU's, so that CPU-only reset is turned off."""
    import torch

    torch.cpu._is_avx512_bf16_supported = lambda: False  # type: ignore[attr-defined]
    # The registry inspects each model class in a fresh subprocess so that the parent never
    # initialises CUDA (registry.py _run_in_subprocess): ~30 s an architecture here. There is no
    # CUDA on the CPU platform, so it is inspected in this process instead.
    from vllm.model_executor.models import registry

    registry._run_in_subprocess = lambda fn: fn()  # type: ignore[assignment]


def _text_only_torchvision() -> None:
    """Let a text model whose vLLM file imports its multimodal sibling be inspected without
    torchvision. vllm/model_executor/models/qwen3_5.py imports qwen3_vl.py, which imports
    transformers' Qwen2-VL image processor module, whose first line is ``from
    torchvision.transforms.v2 import functional``; the vLLM venvs have no torchvision (.ci/vllm.sh
    removes PyPI's: it does not load beside the CPU torch), so the registry's inspection of
    Qwen3_5ForCausalLM / Qwen3_5MoeForCausalLM fails before any of vLLM's code runs. Empty
    modules stand in for that one import only, after vLLM and transformers have recorded that
    torchvision is absent (transformers' image utilities keep their non-torchvision paths); no
    KV cache spec reads an image processor."""
    import importlib
    import importlib.machinery
    import types

    for done in (
        "vllm.config",
        "transformers.image_utils",
        "transformers.image_processing_backends",
    ):
        importlib.import_module(done)

    try:
        import torchvision  # noqa: F401

        return
    except ImportError:
        pass
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.v2")
    for name in (*names, "torchvision.transforms.v2.functional"):
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
        m.__path__ = []
        sys.modules[name] = m
    for parent, child in zip(
        names, (*names[1:], "torchvision.transforms.v2.functional"), strict=True
    ):
        setattr(sys.modules[parent], child.rsplit(".", 1)[1], sys.modules[child])


def spec_of(d: Path) -> dict[str, Any]:
    from vllm.engine.arg_utils import EngineArgs

    def config(**kw: Any) -> Any:
        return EngineArgs(
            model=str(d),
            skip_tokenizer_init=True,
            load_format="dummy",
            enforce_eager=True,
            dtype="bfloat16",
            **kw,
        ).create_engine_config()

    try:
        vc = config()
    except ValueError as exc:
        if "--mamba-block-size can only be set" not in str(exc):
            raise
        # An MLA hybrid (KimiLinear): models/config.py HybridAttentionMambaModelConfig aligns
        # mamba_block_size to the block size for prefix caching, then vllm/platforms/cpu.py
        # check_and_update_config turns prefix caching off for MLA on a non-GPU platform and
        # VllmConfig.validate_mamba_block_size rejects the pair; on CUDA prefix caching stays
        # on. Asked without prefix caching, the same layers give the same per-token attention
        # pages and per-sequence state shapes (get_mamba_state_shape_from_config).
        vc = config(enable_prefix_caching=False)
    try:
        return _from_layers(vc)
    except Exception as exc:
        out = _from_model_config(vc)
        out["layers_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        return out


def _from_model_config(vc: Any) -> dict[str, Any]:
    """Where vLLM's model class cannot be built on the meta device on this CPU (a kernel only
    CUDA has, a config key vLLM's model file expects that transformers' default config lacks,
    a tensor copied at construction), the same figures from vLLM's own config code: ModelConfig
    get_num_layers_by_block_type / get_num_kv_heads / get_head_size / use_mla (vllm/config/
    model.py, the per-architecture ModelArchitectureConfig behind them) and, for hybrids, the
    model class's get_mamba_state_shape_from_config / get_mamba_state_dtype_from_config (what
    vllm/model_executor/models/config.py sizes the state pages with)."""
    import torch
    from vllm.config.model import _ATTENTION_LAYER_TYPES
    from vllm.model_executor.model_loader.utils import get_model_architecture

    mc, pc = vc.model_config, vc.parallel_config
    text = mc.hf_text_config
    cls, _ = get_model_architecture(mc)
    n_attn = mc.get_num_layers_by_block_type(pc, "attention")
    blocks = getattr(text, "layers_block_type", None)
    if isinstance(blocks, list) and not n_attn:
        # transformers 5 spells NemotronH's attention blocks "full_attention", which
        # get_num_layers_by_block_type compares with "attention"; the model file builds an
        # attention layer for every one of _ATTENTION_LAYER_TYPES.
        n_attn = sum(1 for b in blocks if b in _ATTENTION_LAYER_TYPES)
    # gpu_model_runner.get_kv_cache_spec: layers sharing another layer's cache have none.
    n_attn -= int(getattr(text, "num_kv_shared_layers", 0) or 0)
    per_layer = mc.get_num_kv_heads(pc) * mc.get_head_size() * (1 if mc.use_mla else 2)
    attn = n_attn * per_layer * torch.empty((), dtype=mc.dtype).element_size()
    index = getattr(text, "index_head_dim", None)
    if index:
        # deepseek_v2.py Indexer: every attention layer also holds a DeepseekV32IndexerCache of
        # head_dim index_head_dim + index_head_dim // quant_block_size (128) * 4, uint8.
        attn += n_attn * (index + index // 128 * 4)
    state = 0
    kinds = {"attention": n_attn}
    if hasattr(cls, "get_mamba_state_shape_from_config"):
        shapes = cls.get_mamba_state_shape_from_config(vc)
        dtypes = cls.get_mamba_state_dtype_from_config(vc)
        n_state = mc.get_num_layers_by_block_type(pc, "mamba") or (
            mc.get_num_layers_by_block_type(pc, "linear_attention")
        )
        one = sum(
            math.prod(sh) * torch.empty((), dtype=dt).element_size()
            for sh, dt in zip(shapes, dtypes, strict=True)
        )
        state = n_state * one
        kinds["state"] = n_state
    return {
        "attention_bytes_per_token": attn,
        "state_bytes": state,
        "layers": kinds,
        "block_size": vc.cache_config.block_size,
        "source": "model_config",
    }


def _from_layers(vc: Any) -> dict[str, Any]:
    import torch
    from vllm.config import get_layers_from_vllm_config, set_current_vllm_config
    from vllm.distributed import destroy_distributed_environment, destroy_model_parallel
    from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
    from vllm.model_executor.model_loader.utils import initialize_model

    # The parallel groups are made per model: which exist depends on it (the expert-parallel
    # group only for MoE models).
    with set_current_vllm_config(vc):
        _init_dist()
    try:
        with set_current_vllm_config(vc), torch.device("meta"):
            initialize_model(vllm_config=vc)
            layers = get_layers_from_vllm_config(vc, AttentionLayerBase)  # type: ignore[type-abstract]
            # gpu_model_runner.get_kv_cache_spec: a layer reading another layer's cache
            # (kv_sharing_target_layer_name, Gemma-3n) gets no cache of its own.
            specs = {
                name: layer.get_kv_cache_spec(vc)
                for name, layer in layers.items()
                if getattr(layer, "kv_sharing_target_layer_name", None) is None
            }
    finally:
        destroy_model_parallel()
        destroy_distributed_environment()
    attn, state, kinds, _ = spec_figures(specs.values())
    return {
        "attention_bytes_per_token": int(attn),
        "state_bytes": state,
        "layers": kinds,
        "block_size": vc.cache_config.block_size,
        "source": "layers",
    }


def spec_figures(specs: Any) -> tuple[float, int, dict[str, int], set[int]]:
    """Over the layers' KV cache specs: (K+V bytes one token takes over the attention layers,
    one sequence's recurrent state bytes, layers per spec kind ("none": no cache), the attention
    layers' KV heads). Also vllm_tp_spec.py's, per rank."""
    import torch
    from vllm.v1.kv_cache_interface import AttentionSpec, MambaSpec

    attn = 0.0
    state = 0
    kinds: dict[str, int] = {}
    heads: set[int] = set()
    for spec in specs:
        kind = "none" if spec is None else type(spec).__name__
        kinds[kind] = kinds.get(kind, 0) + 1
        if isinstance(spec, MambaSpec):
            state += sum(
                math.prod(shape) * torch.empty((), dtype=dt).element_size()
                for shape, dt in zip(spec.shapes, spec.dtypes, strict=True)
            )
        elif isinstance(spec, AttentionSpec):
            heads.add(spec.num_kv_heads)
            attn += getattr(spec, "real_page_size_bytes", spec.page_size_bytes) / spec.block_size
    return attn, state, kinds, heads


def main() -> None:
    _as_on_a_gpu()
    _text_only_torchvision()
    for case in json.loads(Path(sys.argv[1]).read_text()):
        out: dict[str, Any] = {"architecture": case["architecture"], "ok": False, "error": ""}
        try:
            out.update(spec_of(Path(case["dir"])))
            out["ok"] = True
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
