"""Architectures beyond layers x KV heads x head size: MLA, MTP blocks, gated DeltaNet hybrids,
vision towers.

Each architecture is read from its real published config.json (the values copied from the
model's Hugging Face repo, URL beside it; keys the memory model does not read are left out) or
from a GGUF carrying the keys llama.cpp's converter writes for it, and its KV bytes are checked
against numbers derived by hand from the engine's own formula (source file and function cited at
each). Weights derived from the architecture are checked against the published parameter
counts; weights read from files against the tensors written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType, Keys
from tests.support.fake_hub import (
    FakeHub,
    safetensors_repo,
    tensor_bytes,
)
from tests.support.gguf_factory import write_gguf, write_gguf_kvs

from gpu_preflight.cli.main import main
from gpu_preflight.memory import llamacpp as lc
from gpu_preflight.memory import vllm as vm
from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.errors import ModelError, ModelFileError
from gpu_preflight.models.gguf_file import mmproj_bytes, mmproj_compute_bytes, read_gguf
from gpu_preflight.models.hf_dir import arch_from_config, read_hf_dir
from gpu_preflight.models.hub import resolve_hub_model
from gpu_preflight.models.layout import (
    GGUF_ARCHITECTURES,
    HF_MODEL_TYPES,
    count_params,
    derive_layout,
)
from gpu_preflight.models.types import Artifact, ModelArch, ModelSpec

GIB = 2**30
F16, F32, Q4K = GGMLQuantizationType.F16, GGMLQuantizationType.F32, GGMLQuantizationType.Q4_K

# https://huggingface.co/deepseek-ai/DeepSeek-R1/blob/main/config.json (DeepSeek-V3's
# config.json, https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json, has the same
# architecture values).
DEEPSEEK_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "first_k_dense_replace": 3,
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "kv_lora_rank": 512,
    "max_position_embeddings": 163840,
    "model_type": "deepseek_v3",
    "moe_intermediate_size": 2048,
    "moe_layer_freq": 1,
    "n_group": 8,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "num_attention_heads": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 61,
    "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1,
    "q_lora_rank": 1536,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "quantization_config": {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    },
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "v_head_dim": 128,
    "vocab_size": 129280,
}
# https://huggingface.co/deepseek-ai/DeepSeek-V2.5/blob/main/config.json
DEEPSEEK_V2_5 = {
    "architectures": ["DeepseekV2ForCausalLM"],
    "first_k_dense_replace": 1,
    "hidden_size": 5120,
    "intermediate_size": 12288,
    "kv_lora_rank": 512,
    "max_position_embeddings": 163840,
    "model_type": "deepseek_v2",
    "moe_intermediate_size": 1536,
    "moe_layer_freq": 1,
    "n_routed_experts": 160,
    "n_shared_experts": 2,
    "num_attention_heads": 128,
    "num_experts_per_tok": 6,
    "num_hidden_layers": 60,
    "num_key_value_heads": 128,
    "q_lora_rank": 1536,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "v_head_dim": 128,
    "vocab_size": 102400,
}
# https://huggingface.co/zai-org/GLM-4.6/blob/main/config.json
GLM_4_6 = {
    "architectures": ["Glm4MoeForCausalLM"],
    "attention_bias": True,
    "first_k_dense_replace": 3,
    "head_dim": 128,
    "hidden_size": 5120,
    "intermediate_size": 12288,
    "max_position_embeddings": 202752,
    "model_type": "glm4_moe",
    "moe_intermediate_size": 1536,
    "n_routed_experts": 160,
    "n_shared_experts": 1,
    "num_attention_heads": 96,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 92,
    "num_key_value_heads": 8,
    "num_nextn_predict_layers": 1,
    "partial_rotary_factor": 0.5,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_qk_norm": True,
    "vocab_size": 151552,
}
# https://huggingface.co/Qwen/Qwen3-Next-80B-A3B-Instruct/blob/main/config.json
QWEN3_NEXT = {
    "architectures": ["Qwen3NextForCausalLM"],
    "decoder_sparse_step": 1,
    "full_attention_interval": 4,
    "head_dim": 256,
    "hidden_size": 2048,
    "intermediate_size": 5120,
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "linear_value_head_dim": 128,
    "max_position_embeddings": 262144,
    "mlp_only_layers": [],
    "model_type": "qwen3_next",
    "moe_intermediate_size": 512,
    "num_attention_heads": 16,
    "num_experts": 512,
    "num_experts_per_tok": 10,
    "num_hidden_layers": 48,
    "num_key_value_heads": 2,
    "partial_rotary_factor": 0.25,
    "shared_expert_intermediate_size": 512,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_sliding_window": False,
    "vocab_size": 151936,
}
# https://huggingface.co/google/gemma-3-4b-it/blob/main/config.json
GEMMA_3_4B_IT = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "mm_tokens_per_image": 256,
    "model_type": "gemma3",
    "text_config": {
        "head_dim": 256,
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "model_type": "gemma3_text",
        "num_attention_heads": 8,
        "num_hidden_layers": 34,
        "num_key_value_heads": 4,
        "sliding_window": 1024,
        "vocab_size": 262208,
    },
    "torch_dtype": "bfloat16",
    "vision_config": {
        "hidden_size": 1152,
        "image_size": 896,
        "intermediate_size": 4304,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "patch_size": 14,
    },
}
# https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/blob/main/config.json (abridged)
QWEN2_5_VL_3B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "hidden_size": 2048,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 16,
    "num_hidden_layers": 36,
    "num_key_value_heads": 2,
    "text_config": {"model_type": "qwen2_5_vl_text"},
    "vision_config": {"depth": 32, "hidden_size": 1280, "model_type": "qwen2_5_vl"},
    "vocab_size": 151936,
}


def _arch(config: dict[str, Any]) -> ModelArch:
    return arch_from_config(
        {**config, **config.get("text_config", {})}
        if isinstance(config.get("text_config"), dict)
        else config,
        "config.json",
    )


def _spec(arch: ModelArch, weight_bytes: int = 10 * GIB, quant: str = "bf16") -> ModelSpec:
    art = Artifact(engine="vllm", repo="x/y", quant=quant, weight_bytes=weight_bytes)
    return ModelSpec("x", "x", "x/y", 1.0, None, arch, (art,), "test")


def _vcfg(**kw: Any) -> vm.VllmConfig:
    return vm.VllmConfig(**{"max_model_len": 32768, "gpu_total_bytes": 80 * GIB, **kw})


# -- DeepSeek-V2/V3: multi-head latent attention ---------------------------------------------------


def test_deepseek_v3_config_is_mla_with_dense_lead_layers() -> None:
    a = _arch(DEEPSEEK_V3)
    assert (a.architecture, a.n_layers, a.n_heads, a.head_dim, a.v_head_dim) == (
        "deepseek2",
        61,
        128,
        128 + 64,  # qk_nope_head_dim + qk_rope_head_dim
        128,
    )
    assert (a.kv_lora_rank, a.qk_rope_head_dim, a.q_lora_rank) == (512, 64, 1536)
    assert (a.n_experts, a.n_shared_experts, a.expert_intermediate_size) == (256, 1, 2048)
    assert a.n_dense_layers == 3 and a.intermediate_size == 18432
    assert a.n_nextn_layers == 0  # num_hidden_layers counts the trunk only


@pytest.mark.parametrize(
    ("kv_dtype", "per_layer"),
    [
        # vllm/model_executor/layers/attention/mla_attention.py MLAAttention.get_kv_cache_spec:
        # MLAAttentionSpec(num_kv_heads=1, head_size=kv_lora_rank + qk_rope_head_dim), no V
        # (head_size_v = 0, vllm/v1/kv_cache_interface.py): (512 + 64) x 2 bytes in bf16.
        ("auto", 576 * 2),
        ("fp8", 576 * 1),
    ],
)
def test_deepseek_v3_vllm_kv_is_latent_plus_rope(kv_dtype: str, per_layer: int) -> None:
    spec = _spec(_arch(DEEPSEEK_V3))
    assert vm.kv_bytes_per_token(spec, kv_dtype) == 61 * per_layer
    # max_tp_shards=1: every rank holds the whole latent, so tensor parallel does not divide it.
    assert vm.kv_bytes_per_token(spec, kv_dtype, tp=8) == 61 * per_layer
    layout = vm.kv_layout(spec.arch, _vcfg(kv_cache_dtype=kv_dtype, tensor_parallel_size=8))
    assert layout.page_bytes == 16 * per_layer and layout.group_size == 61
    # Not heads x head_dim: that would be 128 x (192 + 128) x 2 = 81920 bytes a layer.
    assert per_layer < 128 * (192 + 128) * 2 // 50


def test_deepseek_v2_5_config_and_kv() -> None:
    a = _arch(DEEPSEEK_V2_5)
    assert (a.architecture, a.n_layers, a.kv_lora_rank, a.qk_rope_head_dim) == (
        "deepseek2",
        60,
        512,
        64,
    )
    assert a.n_dense_layers == 1 and a.n_shared_experts == 2
    assert vm.kv_bytes_per_token(_spec(a)) == 60 * 576 * 2


def test_deepseek_parameter_counts_match_the_published_ones() -> None:
    # DeepSeek-V3 README: "671B of the Main Model weights and 14B of the Multi-Token Prediction
    # (MTP) Module weights"; the main model is 671,026,419,200 parameters exactly.
    assert count_params(_arch(DEEPSEEK_V3)).total == 671_026_419_200
    # DeepSeek-V2.5 model card: 236B total parameters.
    assert count_params(_arch(DEEPSEEK_V2_5)).total == pytest.approx(236e9, rel=0.005)
    c = count_params(_arch(DEEPSEEK_V3))
    assert c.expert_per_layer[:3] == (0, 0, 0) and c.expert_per_layer[3] > 0
    assert c.dense_ffn_per_layer[0] == 3 * 7168 * 18432  # first_k_dense_replace layers
    assert c.dense_ffn_per_layer[3] == 3 * 7168 * 2048  # the shared expert


def _deepseek_gguf_kvs(mla: bool, nextn: int) -> list[tuple[str, str, object]]:
    """The keys convert_hf_to_gguf.py (DeepseekV2Model.set_gguf_parameters) writes for
    DeepSeek-V3: with MLA the cache view (head_count_kv 1, key_length = kv_lora_rank + rope,
    value_length = kv_lora_rank) and the per-head *_mla lengths; legacy files have neither."""
    a = "deepseek2"
    kvs: list[tuple[str, str, object]] = [
        (Keys.LLM.BLOCK_COUNT.format(arch=a), "uint32", 61 + nextn),
        (Keys.LLM.CONTEXT_LENGTH.format(arch=a), "uint32", 163840),
        (Keys.LLM.EMBEDDING_LENGTH.format(arch=a), "uint32", 7168),
        (Keys.LLM.FEED_FORWARD_LENGTH.format(arch=a), "uint32", 18432),
        (Keys.Attention.HEAD_COUNT.format(arch=a), "uint32", 128),
        (Keys.Attention.Q_LORA_RANK.format(arch=a), "uint32", 1536),
        (Keys.Attention.KV_LORA_RANK.format(arch=a), "uint32", 512),
        (Keys.Rope.DIMENSION_COUNT.format(arch=a), "uint32", 64),
        (Keys.LLM.LEADING_DENSE_BLOCK_COUNT.format(arch=a), "uint32", 3),
        (Keys.LLM.EXPERT_COUNT.format(arch=a), "uint32", 256),
        (Keys.LLM.EXPERT_USED_COUNT.format(arch=a), "uint32", 8),
        (Keys.LLM.EXPERT_FEED_FORWARD_LENGTH.format(arch=a), "uint32", 2048),
        (Keys.LLM.EXPERT_SHARED_COUNT.format(arch=a), "uint32", 1),
    ]
    if mla:
        kvs += [
            (Keys.Attention.HEAD_COUNT_KV.format(arch=a), "uint32", 1),
            (Keys.Attention.KEY_LENGTH.format(arch=a), "uint32", 512 + 64),
            (Keys.Attention.VALUE_LENGTH.format(arch=a), "uint32", 512),
            (Keys.Attention.KEY_LENGTH_MLA.format(arch=a), "uint32", 192),
            (Keys.Attention.VALUE_LENGTH_MLA.format(arch=a), "uint32", 128),
        ]
    else:
        kvs += [
            (Keys.Attention.HEAD_COUNT_KV.format(arch=a), "uint32", 128),
            (Keys.Attention.KEY_LENGTH.format(arch=a), "uint32", 192),
            (Keys.Attention.VALUE_LENGTH.format(arch=a), "uint32", 128),
        ]
    if nextn:
        kvs.append((Keys.LLM.NEXTN_PREDICT_LAYERS.format(arch=a), "uint32", nextn))
    return kvs


def _blocks(
    n: int, h: int, extra: dict[int, list[tuple[str, tuple[int, ...], GGMLQuantizationType]]]
) -> list[tuple[str, tuple[int, ...], GGMLQuantizationType]]:
    """A minimal tensor table: embeddings, output, one norm per block, plus the given extras."""
    plan: list[tuple[str, tuple[int, ...], GGMLQuantizationType]] = []
    for i in range(n):
        plan.append((f"blk.{i}.attn_norm.weight", (h,), F32))
        plan += [(f"blk.{i}.{name}", shape, t) for name, shape, t in extra.get(i, [])]
    return plan


def _deepseek_gguf(path: Path, mla: bool = True, nextn: int = 1) -> Path:
    h, vocab = 7168, 129280
    extra = {
        3: [("ffn_gate_exps.weight", (256, 2048, h), Q4K)],
        # the MTP block: convert writes it as blk.61 with its nextn.* tensors
        61: [("nextn.eh_proj.weight", (h, 2 * h), F16)],
    }
    plan = [
        ("token_embd.weight", (vocab, h), F16),
        ("output_norm.weight", (h,), F32),
        ("output.weight", (vocab, h), F16),
        *_blocks(61 + nextn, h, extra if nextn else {3: extra[3]}),
    ]
    return write_gguf_kvs(path, "deepseek2", _deepseek_gguf_kvs(mla, nextn), plan)


def test_deepseek2_gguf_mla_kv_is_one_k_row_of_latent_plus_rope(tmp_path) -> None:
    arch, art = read_gguf(_deepseek_gguf(tmp_path / "DeepSeek-V3-Q4_K_M.gguf"))
    assert (arch.architecture, arch.n_layers, arch.n_nextn_layers) == ("deepseek2", 62, 1)
    assert (arch.kv_lora_rank, arch.qk_rope_head_dim, arch.head_dim, arch.v_head_dim) == (
        512,
        64,
        192,
        128,
    )
    assert arch.n_dense_layers == 3 and arch.n_kv_heads == 128
    # src/llama-kv-cache.cpp (llama_kv_cache constructor): K of n_embd_k_gqa = key_length x
    # head_count_kv = 576 elements, and no V tensor (has_v = !is_mla); the MTP block (il >=
    # n_layer()) is filtered out of the main context's cache (llama-model.cpp create_memory).
    assert lc.kv_bytes_per_token(arch) == 61 * 576 * 2
    assert lc.kv_bytes_per_token(arch, "q8_0", "q8_0") == 61 * (576 // 32 * 34)
    cfg = lc.LlamaCppConfig(context=4096)
    per = lc.kv_layer_bytes(arch, cfg)
    assert per[:61] == [4096 * 576 * 2] * 61 and per[61] == 0
    # The MTP block's tensors are created with TENSOR_SKIP (llama-model.cpp, not load_mtp):
    # not loaded, so not in the weights.
    assert art.layout is not None
    assert art.layout.skipped_bytes == 7168 * 4 + 7168 * 2 * 7168 * 2
    assert art.layout.per_layer_bytes[61] == 0
    assert art.layout.per_layer_expert_bytes[3] == 256 * 2048 * 7168 // 256 * 144
    assert art.weight_bytes == sum(art.layout.per_layer_bytes) + art.layout.token_embd_bytes + (
        art.layout.output_bytes + art.layout.other_bytes
    )


def test_deepseek2_gguf_without_mla_keys_runs_as_multi_head(tmp_path) -> None:
    # Older conversions have no *_mla keys: llama.cpp runs them with a K and a V of every head
    # (llama-hparams.cpp is_mla() false), the size their head counts say.
    arch, _ = read_gguf(_deepseek_gguf(tmp_path / "legacy.gguf", mla=False, nextn=0))
    assert not arch.is_mla and arch.n_nextn_layers == 0
    assert lc.kv_bytes_per_token(arch) == 61 * (128 * 192 + 128 * 128) * 2


# -- GLM-4.5 / 4.6 ---------------------------------------------------------------------------------


def test_glm4_moe_config_kv_and_weights() -> None:
    a = _arch(GLM_4_6)
    assert (a.architecture, a.n_layers, a.n_kv_heads, a.head_dim) == ("glm4moe", 92, 8, 128)
    assert (a.n_dense_layers, a.n_shared_experts, a.n_experts) == (3, 1, 160)
    # Plain GQA (partial_rotary_factor only changes how much of each head is rotated):
    # vllm/model_executor/models/glm4_moe.py Glm4MoeAttention is an Attention of
    # num_kv_heads x head_dim, so a page is block x kv_heads_per_rank x (128 + 128) x 2.
    spec = _spec(a)
    assert vm.kv_bytes_per_token(spec) == 92 * 8 * 256 * 2
    assert vm.kv_bytes_per_token(spec, tp=8) == 92 * 1 * 256 * 2
    # z.ai: "355 billion total parameters"; the MTP block (num_nextn_predict_layers) is not
    # counted: vLLM skips it (models/utils.py skip_spec_layers).
    assert count_params(a).total == pytest.approx(355e9, rel=0.01)


def test_glm4moe_gguf_mtp_block_has_no_kv_and_is_not_loaded(tmp_path) -> None:
    g = "glm4moe"
    kvs: list[tuple[str, str, object]] = [
        (Keys.LLM.BLOCK_COUNT.format(arch=g), "uint32", 93),  # 92 + the MTP block
        (Keys.LLM.NEXTN_PREDICT_LAYERS.format(arch=g), "uint32", 1),
        (Keys.LLM.CONTEXT_LENGTH.format(arch=g), "uint32", 202752),
        (Keys.LLM.EMBEDDING_LENGTH.format(arch=g), "uint32", 5120),
        (Keys.LLM.FEED_FORWARD_LENGTH.format(arch=g), "uint32", 12288),
        (Keys.Attention.HEAD_COUNT.format(arch=g), "uint32", 96),
        (Keys.Attention.HEAD_COUNT_KV.format(arch=g), "uint32", 8),
        (Keys.Attention.KEY_LENGTH.format(arch=g), "uint32", 128),
        (Keys.Attention.VALUE_LENGTH.format(arch=g), "uint32", 128),
        (Keys.Rope.DIMENSION_COUNT.format(arch=g), "uint32", 64),
        (Keys.LLM.LEADING_DENSE_BLOCK_COUNT.format(arch=g), "uint32", 3),
        (Keys.LLM.EXPERT_COUNT.format(arch=g), "uint32", 160),
        (Keys.LLM.EXPERT_USED_COUNT.format(arch=g), "uint32", 8),
        (Keys.LLM.EXPERT_FEED_FORWARD_LENGTH.format(arch=g), "uint32", 1536),
        (Keys.LLM.EXPERT_SHARED_COUNT.format(arch=g), "uint32", 1),
    ]
    h, vocab = 5120, 151552
    plan = [
        ("token_embd.weight", (vocab, h), F16),
        ("output_norm.weight", (h,), F32),
        ("output.weight", (vocab, h), F16),
        *_blocks(93, h, {92: [("nextn.eh_proj.weight", (h, 2 * h), F16)]}),
    ]
    arch, art = read_gguf(write_gguf_kvs(tmp_path / "GLM-4.6-Q4_K_M.gguf", g, kvs, plan))
    assert (arch.n_layers, arch.n_nextn_layers, arch.n_dense_layers) == (93, 1, 3)
    assert arch.kv_layer_count == 92 and not arch.is_mla
    # llama-model.cpp create_memory: filter il < n_layer() for the main context.
    assert lc.kv_bytes_per_token(arch) == 92 * 8 * 256 * 2
    cfg = lc.LlamaCppConfig(context=8192, parallel=2)
    per = lc.kv_layer_bytes(arch, cfg)
    assert per[92] == 0 and per[0] == 8192 * 8 * 256 * 2
    assert art.layout is not None and art.layout.skipped_bytes == 5120 * 4 + 5120 * 10240 * 2


# -- Qwen3-Next: gated DeltaNet hybrid ---------------------------------------------------------------

# One sequence's state in one gated DeltaNet layer, by hand from the config:
# conv_dim = 2 x 16 x 128 + 32 x 128 = 8192; conv window 4 - 1 = 3; state 32 x 128 x 128.
QN_CONV = 3 * 8192
QN_SSM = 32 * 128 * 128


def test_qwen3_next_config_marks_every_fourth_layer_full_attention() -> None:
    a = _arch(QWEN3_NEXT)
    assert a.architecture == "qwen3next" and a.n_layers == 48
    # transformers Qwen3NextConfig: layer_types[i] = "full_attention" if (i + 1) % 4 == 0
    assert tuple(i for i in range(48) if i not in a.recurrent_layers) == tuple(range(3, 48, 4))
    assert a.kv_layer_count == 12 and a.recurrent_layer_count == 36
    assert (a.n_experts, a.shared_expert_intermediate_size, a.n_shared_experts) == (512, 512, 1)
    assert a.intermediate_size == 0  # every layer MoE (mlp_only_layers = [])
    # Qwen: "80B total parameters (3B activated)"
    assert count_params(a).total == pytest.approx(80e9, rel=0.01)


def test_qwen3_next_vllm_state_pages_and_block_size() -> None:
    a = _arch(QWEN3_NEXT)
    spec = _spec(a, 150 * GIB)
    # Only the 12 full-attention layers cost KV per token: 2 heads x (256 + 256) x 2 bytes.
    assert vm.kv_bytes_per_token(spec) == 12 * 2 * 512 * 2
    # mamba_utils.py gated_delta_net_state_shape / gated_delta_net_state_dtype ("auto": bf16).
    assert vm.state_bytes(a, 1) == (QN_CONV + QN_SSM) * 2 == 1_097_728
    assert vm.state_bytes(a, 2) == (QN_CONV + QN_SSM) // 2 * 2
    # platforms/interface.py _align_hybrid_block_size: 16 x cdiv(state, 16 x 2048) = 16 x 34.
    cfg = _vcfg(gpu_total_bytes=141 * GIB, tensor_parallel_size=1)
    layout = vm.kv_layout(a, cfg)
    assert layout.block_size == 544 and layout.page_bytes == 544 * 2048
    assert layout.page_bytes >= vm.state_bytes(a, 1)
    # _get_kv_cache_groups_uniform_page_size: 12 full + 36 linear -> groups of 12: 1 + 3.
    assert (layout.group_size, layout.full_groups, layout.state_groups) == (12, 1, 3)
    # A request: cdiv(32768, 544) = 61 blocks of the full group, and 2 state blocks per
    # linear group in mamba_cache_mode "align" (prefix caching on, MambaSpec
    # .max_memory_usage_bytes), 1 with prefix caching off.
    assert vm.request_blocks(layout, 32768, 8192) == 61 + 2 * 3
    off = vm.kv_layout(a, _vcfg(prefix_caching=False))
    assert vm.request_blocks(off, 32768, 8192) == 61 + 3
    assert vm.min_kv_bytes_needed(spec, cfg) == 12 * 544 * 2048 * 67
    # TP 2: the same block size, the state padded by 1.49% (vLLM logs "Padding mamba page size
    # by 1.49%" for Qwen3-Next at TP 2); TP 4: one replicated KV head, half the state: 272.
    tp2 = vm.kv_layout(a, _vcfg(tensor_parallel_size=2))
    assert tp2.block_size == 544
    assert round(100 * (tp2.page_bytes / vm.state_bytes(a, 2) - 1), 2) == 1.49
    assert vm.kv_layout(a, _vcfg(tensor_parallel_size=4)).block_size == 272
    e = vm.estimate_vllm(spec, spec.artifacts[0], cfg)
    assert any("linear-attention" in n for n in e.notes)


def _qwen3next_gguf(path: Path) -> Path:
    q = "qwen3next"
    kvs: list[tuple[str, str, object]] = [
        (Keys.LLM.BLOCK_COUNT.format(arch=q), "uint32", 49),  # 48 + the MTP block
        (Keys.LLM.NEXTN_PREDICT_LAYERS.format(arch=q), "uint32", 1),
        (Keys.LLM.CONTEXT_LENGTH.format(arch=q), "uint32", 262144),
        (Keys.LLM.EMBEDDING_LENGTH.format(arch=q), "uint32", 2048),
        (Keys.LLM.FEED_FORWARD_LENGTH.format(arch=q), "uint32", 5120),
        (Keys.Attention.HEAD_COUNT.format(arch=q), "uint32", 16),
        (Keys.Attention.HEAD_COUNT_KV.format(arch=q), "uint32", 2),
        (Keys.Attention.KEY_LENGTH.format(arch=q), "uint32", 256),
        (Keys.Attention.VALUE_LENGTH.format(arch=q), "uint32", 256),
        (Keys.Rope.DIMENSION_COUNT.format(arch=q), "uint32", 64),
        (Keys.LLM.EXPERT_COUNT.format(arch=q), "uint32", 512),
        (Keys.LLM.EXPERT_USED_COUNT.format(arch=q), "uint32", 10),
        (Keys.LLM.EXPERT_FEED_FORWARD_LENGTH.format(arch=q), "uint32", 512),
        (Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH.format(arch=q), "uint32", 512),
        (Keys.SSM.CONV_KERNEL.format(arch=q), "uint32", 4),
        (Keys.SSM.STATE_SIZE.format(arch=q), "uint32", 128),
        (Keys.SSM.GROUP_COUNT.format(arch=q), "uint32", 16),
        (Keys.SSM.TIME_STEP_RANK.format(arch=q), "uint32", 32),
        (Keys.SSM.INNER_SIZE.format(arch=q), "uint32", 4096),
        (Keys.LLM.FULL_ATTENTION_INTERVAL.format(arch=q), "uint32", 4),
    ]
    h, vocab = 2048, 151936
    plan = [
        ("token_embd.weight", (vocab, h), F16),
        ("output_norm.weight", (h,), F32),
        ("output.weight", (vocab, h), F16),
        *_blocks(49, h, {}),
    ]
    return write_gguf_kvs(path, q, kvs, plan)


def test_qwen3next_gguf_recurrent_state_replaces_kv_per_sequence(tmp_path) -> None:
    arch, _ = read_gguf(_qwen3next_gguf(tmp_path / "Qwen3-Next-80B-A3B-Q4_K_M.gguf"))
    # src/models/qwen3next.cpp load_arch_hparams: recurrent = il < n_layer() and
    # (il + 1) % full_attention_interval != 0.
    assert arch.recurrent_layers == tuple(i for i in range(48) if (i + 1) % 4)
    assert (arch.linear_k_heads, arch.linear_v_heads, arch.linear_k_head_dim) == (16, 32, 128)
    assert arch.linear_v_head_dim == 128 and arch.kv_layer_count == 12
    # llama-hparams.cpp: n_embd_r = (d_conv - 1) x (d_inner + 2 x n_group x d_state) = 3 x 8192,
    # n_embd_s = d_state x d_inner = 128 x 4096; llama-memory-recurrent.cpp keeps both in F32.
    assert lc.recurrent_state_bytes(arch) == 4 * (3 * (4096 + 2 * 16 * 128) + 128 * 4096)
    assert lc.recurrent_state_bytes(arch) == 4 * (QN_CONV + QN_SSM) == 2_195_456
    assert lc.kv_bytes_per_token(arch) == 12 * 2 * 512 * 2
    cfg = lc.LlamaCppConfig(context=16384, parallel=4)
    per = lc.kv_layer_bytes(arch, cfg)
    # A recurrent layer holds max(1, n_seq_max) = 4 states whatever the context; a full
    # attention layer 4 streams x 4096 cells; the MTP block nothing.
    assert per[0] == 4 * 2_195_456 and per[3] == 16384 * 2 * 512 * 2 and per[48] == 0
    assert sum(per) == 36 * 4 * 2_195_456 + 12 * 16384 * 2048
    # One slot's context checkpoint is its recurrent state (llama-memory-hybrid.cpp
    # state_write with LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY skips the attention KV).
    assert lc.checkpoint_bytes(arch, cfg) == 36 * 2_195_456
    layout = derive_layout(arch, "Q4_K_M", "llama.cpp")
    assert layout.per_layer_bytes[48] == 0  # the MTP block: nothing loaded
    assert layout.per_layer_bytes[0] != layout.per_layer_bytes[3]  # DeltaNet vs attention
    spec = ModelSpec(
        "qn",
        "qn",
        "Qwen/Qwen3-Next-80B-A3B-Instruct",
        80.0,
        3.0,
        arch,
        (Artifact(engine="llama.cpp", repo="x", quant="Q4_K_M", weight_bytes=layout.total_bytes),),
        "test",
    )
    e = lc.estimate_llamacpp(spec, spec.artifacts[0], cfg, gpu_count=1)
    assert e.devices[0].kv_cache_bytes == sum(per)


# -- vision towers -------------------------------------------------------------------------------


def _gemma3_vision_tensors() -> tuple[list[tuple[str, tuple[int, ...], str]], int]:
    """Gemma3ForConditionalGeneration's checkpoint names (transformers modeling_gemma3 /
    SigLIP), the language model cut to 2 layers; returns the tensors and the vision bytes."""
    vh, vi, th = 1152, 4304, 2560
    vision: list[tuple[str, tuple[int, ...], str]] = [
        ("vision_tower.vision_model.embeddings.patch_embedding.weight", (vh, 3, 14, 14), "BF16"),
        ("vision_tower.vision_model.embeddings.position_embedding.weight", (4096, vh), "BF16"),
        ("vision_tower.vision_model.post_layernorm.weight", (vh,), "BF16"),
        ("multi_modal_projector.mm_input_projection_weight", (vh, th), "BF16"),
        ("multi_modal_projector.mm_soft_emb_norm.weight", (vh,), "BF16"),
    ]
    for i in range(27):
        b = f"vision_tower.vision_model.encoder.layers.{i}."
        vision += [
            (b + "self_attn.q_proj.weight", (vh, vh), "BF16"),
            (b + "self_attn.k_proj.weight", (vh, vh), "BF16"),
            (b + "self_attn.v_proj.weight", (vh, vh), "BF16"),
            (b + "self_attn.out_proj.weight", (vh, vh), "BF16"),
            (b + "mlp.fc1.weight", (vi, vh), "BF16"),
            (b + "mlp.fc2.weight", (vh, vi), "BF16"),
        ]
    text: list[tuple[str, tuple[int, ...], str]] = [
        ("language_model.model.embed_tokens.weight", (262208, th), "BF16"),
        ("language_model.model.norm.weight", (th,), "BF16"),
    ]
    for i in range(2):
        b = f"language_model.model.layers.{i}."
        text += [
            (b + "self_attn.q_proj.weight", (8 * 256, th), "BF16"),
            (b + "mlp.down_proj.weight", (th, 10240), "BF16"),
        ]
    return vision + text, tensor_bytes(vision)


def test_vision_tower_weights_are_counted_for_vllm(tmp_path) -> None:
    cfg = json.loads(json.dumps(GEMMA_3_4B_IT))
    cfg["text_config"]["num_hidden_layers"] = 2
    tensors, vision = _gemma3_vision_tensors()
    safetensors_repo(tmp_path / "g", json.dumps(cfg), tensors)
    arch, art = read_hf_dir(tmp_path / "g")
    assert arch.has_vision and arch.architecture == "gemma3"
    assert art.layout is not None and art.layout.vision_bytes == vision
    # vLLM loads the tower with the language model: every byte is in the weights, and none of
    # the tower's 27 encoder layers is mistaken for a language-model layer.
    assert art.weight_bytes == tensor_bytes(tensors)
    assert art.layout.other_bytes >= vision
    assert sum(art.layout.per_layer_bytes) == 2 * (8 * 256 * 2560 + 2560 * 10240) * 2
    assert vision > 400 * 2**20  # SigLIP-So400m: ~0.8 GB in bf16


def test_a_qwen2_5_vl_config_is_planned_through_its_language_model() -> None:
    # Issue 19: vLLM's registry serves Qwen2_5_VLForConditionalGeneration, so it is planned
    # (this config keeps the text keys at the top level, as Qwen2.5-VL's does).
    a = _arch(QWEN2_5_VL_3B)
    assert (a.n_layers, a.n_kv_heads, a.head_dim, a.has_vision) == (36, 2, 128, True)
    assert a.hf_architecture == "Qwen2_5_VLForConditionalGeneration"


def test_a_vision_model_vllm_does_not_serve_is_refused_by_model_type() -> None:
    cfg = {**QWEN2_5_VL_3B, "architectures": ["NoSuchVLForConditionalGeneration"]}
    cfg["model_type"] = "no_such_vl"
    with pytest.raises(ModelFileError, match="model_type 'no_such_vl'"):
        arch_from_config(cfg, "config.json")


def test_real_gemma3_vision_config_keeps_the_text_model_and_its_windows() -> None:
    a = _arch(GEMMA_3_4B_IT)
    assert (a.architecture, a.n_layers, a.n_kv_heads, a.head_dim, a.has_vision) == (
        "gemma3",
        34,
        4,
        256,
        True,
    )
    assert a.sliding_window == 1024 and len(a.sliding_window_layers) == 34 - 34 // 6


# -- checkpoints with MTP blocks (what vLLM skips) ---------------------------------------------------


def _mla_tiny_config(layers: int = 2) -> dict[str, Any]:
    return {
        **DEEPSEEK_V3,
        "hidden_size": 64,
        "intermediate_size": 128,
        "kv_lora_rank": 32,
        "q_lora_rank": 48,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "v_head_dim": 16,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "moe_intermediate_size": 32,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "num_hidden_layers": layers,
        "first_k_dense_replace": 1,
        "vocab_size": 256,
        "quantization_config": None,
    }


def _deepseek_tensors(n: int, with_mtp: bool) -> list[tuple[str, tuple[int, ...], str]]:
    """DeepseekV3ForCausalLM names (modeling_deepseek.py); the MTP block is layer n with its
    enorm/hnorm/eh_proj/shared_head tensors."""
    h = 64
    out: list[tuple[str, tuple[int, ...], str]] = [("model.embed_tokens.weight", (256, h), "BF16")]
    for i in range(n + (1 if with_mtp else 0)):
        b = f"model.layers.{i}."
        out += [
            (b + "input_layernorm.weight", (h,), "BF16"),
            (b + "self_attn.q_a_proj.weight", (48, h), "BF16"),
            (b + "self_attn.q_b_proj.weight", (4 * 24, 48), "BF16"),
            (b + "self_attn.kv_a_proj_with_mqa.weight", (32 + 8, h), "BF16"),
            (b + "self_attn.kv_b_proj.weight", (4 * (16 + 16), 32), "BF16"),
            (b + "self_attn.o_proj.weight", (h, 4 * 16), "BF16"),
            (b + "mlp.experts.0.up_proj.weight", (32, h), "BF16"),
        ]
        if i == n:
            out += [
                (b + "eh_proj.weight", (h, 2 * h), "BF16"),
                (b + "embed_tokens.weight", (256, h), "BF16"),
                (b + "shared_head.head.weight", (256, h), "BF16"),
            ]
    out += [("model.norm.weight", (h,), "BF16"), ("lm_head.weight", (256, h), "BF16")]
    return out


def test_mtp_block_in_a_checkpoint_is_not_counted_for_vllm(tmp_path) -> None:
    cfg = _mla_tiny_config()
    tensors = _deepseek_tensors(2, with_mtp=True)
    safetensors_repo(tmp_path / "ds", json.dumps(cfg), tensors)
    arch, art = read_hf_dir(tmp_path / "ds")
    mtp = [t for t in tensors if t[0].startswith("model.layers.2.")]
    assert art.layout is not None and art.layout.skipped_bytes == tensor_bytes(mtp)
    assert art.weight_bytes == tensor_bytes(tensors) - tensor_bytes(mtp)
    assert arch.kv_lora_rank == 32 and vm.kv_bytes_per_token(_spec(arch)) == 2 * (32 + 8) * 2


# -- refusals and the fake Hub ---------------------------------------------------------------------


def test_unknown_architectures_are_refused_by_name() -> None:
    # Issue 19: the model_type and architecture are checked before any key, against vLLM's own
    # registry (data/vllm_registry.json); an architecture vLLM serves whose config lacks a key
    # its reader needs names the model_type first, then the key.
    for model_type in ("totally_new", "deepseek_v99"):
        cfg = {**DEEPSEEK_V3, "model_type": model_type, "architectures": ["NewForCausalLM"]}
        with pytest.raises(ModelFileError, match=f"model_type '{model_type}'"):
            arch_from_config(cfg, "config.json")
    with pytest.raises(ModelFileError, match="model_type 'granitemoehybrid': lacks 'layer_types'"):
        arch_from_config(
            {**DEEPSEEK_V3, "model_type": "granitemoehybrid", "architectures": []}, "config.json"
        )
    assert {"deepseek_v2", "deepseek_v3", "glm4_moe", "qwen3_next"} <= set(HF_MODEL_TYPES)
    assert {"deepseek2", "glm4moe", "qwen3next"} <= GGUF_ARCHITECTURES


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"moe_layer_freq": 2}, "moe_layer_freq"),
        ({"kv_lora_rank": None}, "kv_lora_rank"),
        ({"qk_rope_head_dim": "64"}, "qk_rope_head_dim"),
    ],
)
def test_mla_configs_it_cannot_plan_name_the_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(ModelFileError, match=key):
        arch_from_config({**DEEPSEEK_V3, **change}, "config.json")


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"linear_num_value_heads": None}, "linear_num_value_heads"),
        ({"mlp_only_layers": [0]}, "mlp_only_layers"),
        ({"layer_types": ["full_attention"] * 3}, "layer_types"),
    ],
)
def test_qwen3_next_configs_it_cannot_plan_name_the_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(ModelFileError, match=key):
        arch_from_config({**QWEN3_NEXT, **change}, "config.json")


def test_new_architectures_resolve_through_the_fake_hub(tmp_path) -> None:
    files_ds = safetensors_repo(
        tmp_path / "ds", json.dumps(_mla_tiny_config()), _deepseek_tensors(2, with_mtp=True)
    )
    qn = tmp_path / "qn-gguf"
    qn.mkdir()
    qn_file = _qwen3next_gguf(qn / "Qwen3-Next-80B-A3B-Instruct-Q4_K_M.gguf")
    ds = tmp_path / "ds-gguf"
    ds.mkdir()
    ds_file = _deepseek_gguf(ds / "DeepSeek-V3-Q4_K_M.gguf")
    with FakeHub() as hub:
        hub.add("deepseek-ai/tiny-v3", files_ds)
        hub.add("unsloth/Qwen3-Next-80B-A3B-Instruct-GGUF", {qn_file.name: qn_file})
        hub.add("unsloth/DeepSeek-V3-GGUF", {ds_file.name: ds_file})
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home")}
        r = resolve_hub_model("deepseek-ai/tiny-v3", env, tmp_path / "h1")
        assert r.engine == "vllm" and r.spec.arch.is_mla
        layout = r.spec.artifacts[0].layout
        assert layout is not None and layout.skipped_bytes > 0
        r = resolve_hub_model(
            "unsloth/Qwen3-Next-80B-A3B-Instruct-GGUF:Q4_K_M", env, tmp_path / "h2"
        )
        assert r.engine == "llama.cpp" and r.spec.arch.recurrent_layer_count == 36
        r = resolve_hub_model("unsloth/DeepSeek-V3-GGUF:Q4_K_M", env, tmp_path / "h3")
        assert r.spec.arch.n_nextn_layers == 1 and lc.kv_bytes_per_token(r.spec.arch) == 61 * 1152
        assert r.bytes_fetched < 4 << 20


def test_a_bad_mla_gguf_is_refused(tmp_path) -> None:
    kvs = [
        kv
        for kv in _deepseek_gguf_kvs(mla=True, nextn=0)
        if kv[0] != Keys.Attention.KV_LORA_RANK.format(arch="deepseek2")
    ]
    plan = [("token_embd.weight", (129280, 7168), F16), *_blocks(61, 7168, {})]
    path = write_gguf_kvs(tmp_path / "bad.gguf", "deepseek2", kvs, plan)
    with pytest.raises(ModelError, match="kv_lora_rank"):
        read_gguf(path)


def test_weights_per_rank_count_replicated_mla_projections_and_routers() -> None:
    # deepseek_v2.py: the q/kv "a" projections (DeepSeekV2FusedQkvAProjLinear disable_tp=True)
    # and the router (GateLinear, a ReplicatedLinear) are whole on every rank; MLA's
    # num_key_value_heads (128) exceeds any TP size, so no replicated-head correction.
    arch = _arch(DEEPSEEK_V3)
    total = 642 * GIB
    spec = ModelSpec(
        "ds",
        "ds",
        "deepseek-ai/DeepSeek-V3",
        671.0,
        37.0,
        arch,
        (Artifact(engine="vllm", repo="x", quant="fp8", weight_bytes=total),),
        "test",
    )
    lowrank = 61 * 7168 * (1536 + 512 + 64) * total / 671e9
    routers = 58 * 256 * 7168 * 2
    expected = total / 8 + vm.WEIGHT_EXTRA_BYTES + (lowrank + routers) * (1 - 1 / 8)
    assert vm.weights_per_rank(spec, spec.artifacts[0], 8) == math.ceil(expected)
    assert vm.weights_per_rank(spec, spec.artifacts[0], 1) == math.ceil(
        total + vm.WEIGHT_EXTRA_BYTES
    )


def test_llama_cpp_projector_is_counted_or_not_loaded_or_refused(tmp_path, monkeypatch) -> None:
    """llama.cpp keeps the vision tower in a separate --mmproj GGUF. -hf would download and load
    the repo's projector by default (common/arg.cpp --mmproj-auto), so the plan ships
    --no-mmproj; a local --mmproj FILE is counted on the GPU; --mmproj-auto is refused, the
    projector's size not being known. Nothing is loaded uncounted."""
    for var in list(__import__("os").environ):
        if var.startswith(("PREFLIGHT_", "VLLM_", "LLAMA_ARG_", "HF_")):
            monkeypatch.delenv(var, raising=False)
    model = write_gguf(
        tmp_path / "gemma-3-12b-it-Q4_K_M.gguf", load_catalog().get("gemma-3-12b-it").arch
    )
    # A projector GGUF (general.architecture clip) of 854 MiB of F16 tensors, sparse.
    mmproj = write_gguf_kvs(
        tmp_path / "mmproj-gemma-3-12b-it-F16.gguf",
        "clip",
        [("clip.has_vision_encoder", "bool", True)],
        [("mm.0.weight", (1 << 20, 427), 1)],
    )
    with FakeHub() as hub:
        hub.add("google/gemma-3-12b-it-GGUF", {model.name: model, mmproj.name: mmproj})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        args = ["plan", "--simulate", "rtx-4090", "--model", "google/gemma-3-12b-it-GGUF:Q4_K_M"]
        runner = CliRunner()
        plain = runner.invoke(main, [*args, "--json"])
        assert plain.exit_code == 0, plain.output
        doc = json.loads(plain.output)
        assert "--no-mmproj" in doc["argv"]
        monkeypatch.setenv("LLAMA_ARG_MMPROJ", str(mmproj))
        with_mm = runner.invoke(main, [*args, "--json"])
        assert with_mm.exit_code == 0, with_mm.output
        doc_mm = json.loads(with_mm.output)
        assert "--no-mmproj" not in doc_mm["argv"] and str(mmproj) in doc_mm["argv"]

        def gpu_weights(d: dict[str, Any]) -> int:
            return next(x for x in d["predicted"]["devices"] if x["device"] == "CUDA0")[
                "weights_bytes"
            ]

        # its tensors plus the allowance for the compute buffer of its warmup image
        extra = mmproj_bytes(mmproj) + mmproj_compute_bytes(mmproj)
        assert mmproj_bytes(mmproj) == 854 << 20
        assert gpu_weights(doc_mm) - gpu_weights(doc) == extra
        monkeypatch.delenv("LLAMA_ARG_MMPROJ")
        monkeypatch.setenv("LLAMA_ARG_MMPROJ_AUTO", "1")
        auto = runner.invoke(main, args)
        assert auto.exit_code == 2 and "mmproj" in auto.output
