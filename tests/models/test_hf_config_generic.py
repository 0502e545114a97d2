"""The generic config.json reader (issue 19 item 2) and catalog matching on the full
architecture (item 6). No vLLM venv needed: these read config dicts and sparse checkpoints.
The wide check against vLLM itself is tests/models/test_vllm_coverage.py."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from tests.models.test_architectures import DEEPSEEK_V3
from tests.plan.conftest import CATALOG
from tests.support.fake_hub import hf_tensors, safetensors_repo

from gpu_preflight.memory.vllm import VllmConfig, kv_bytes_per_token, kv_layout, state_bytes
from gpu_preflight.models.catalog import same_architecture
from gpu_preflight.models.errors import ModelFileError
from gpu_preflight.models.hf_dir import arch_from_config
from gpu_preflight.models.registry import load_registry
from gpu_preflight.models.resolve import resolve_model
from gpu_preflight.models.types import Artifact, ModelArch, ModelSpec

# https://huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 32000,
}
# https://huggingface.co/mistralai/Mixtral-8x7B-Instruct-v0.1/blob/main/config.json
MIXTRAL_8X7B = {
    **MISTRAL_7B,
    "architectures": ["MixtralForCausalLM"],
    "model_type": "mixtral",
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "sliding_window": None,
}
# https://huggingface.co/state-spaces/mamba-130m-hf/blob/main/config.json (abridged)
MAMBA_130M = {
    "architectures": ["MambaForCausalLM"],
    "model_type": "mamba",
    "hidden_size": 768,
    "intermediate_size": 1536,
    "state_size": 16,
    "conv_kernel": 4,
    "num_hidden_layers": 24,
    "vocab_size": 50280,
}


def _spec(arch: ModelArch) -> ModelSpec:
    art = Artifact(engine="vllm", repo="x/y", quant="bf16", weight_bytes=10**9)
    return ModelSpec("x", "x", "x/y", 1.0, None, arch, (art,), "test")


def test_a_dense_mistral_7b_directory_is_not_labelled_mixtral(tmp_path) -> None:
    # Same family, depth, widths, heads and vocabulary as Mixtral-8x7B: only the experts differ.
    arch = arch_from_config(MISTRAL_7B, "config.json")
    safetensors_repo(tmp_path / "Mistral-7B-v0.1", json.dumps(MISTRAL_7B), hf_tensors(arch))
    spec = resolve_model(str(tmp_path / "Mistral-7B-v0.1"), CATALOG, "VLLM_MODEL")
    assert spec.id == "mistral-7b-v0.1" and "mixtral" not in spec.name.lower()
    mixtral = CATALOG.get("mixtral-8x7b-instruct")
    assert mixtral is not None and not same_architecture(arch, mixtral.arch)
    assert same_architecture(arch_from_config(MIXTRAL_8X7B, "config.json"), mixtral.arch)


def test_the_model_type_is_checked_before_any_key() -> None:
    with pytest.raises(ModelFileError, match="model_type 'brand_new'") as info:
        arch_from_config({"model_type": "brand_new", "architectures": ["BrandNewLM"]}, "c.json")
    assert "num_hidden_layers" not in str(info.value)
    # A served architecture that lacks a key names its model_type first, then the key.
    with pytest.raises(ModelFileError, match=r"model_type 'llama': lacks 'vocab_size'"):
        arch_from_config(
            {k: v for k, v in MISTRAL_7B.items() if k != "vocab_size"}
            | {"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
            "c.json",
        )


def test_pure_mamba_is_read_as_recurrent_state_not_as_a_broken_file() -> None:
    a = arch_from_config(MAMBA_130M, "config.json")
    assert a.kv_layer_count == 0 and len(a.recurrent_layers) == 24
    assert a.state_kind == "mamba1"
    # vLLM mamba_utils.py mamba1_state_shape: conv (4 - 1) x 1536, temporal 1536 x 16, bf16.
    assert state_bytes(a, 1) == (3 * 1536 + 1536 * 16) * 2
    assert kv_bytes_per_token(_spec(a)) == 0
    layout = kv_layout(a, VllmConfig(max_model_len=4096, gpu_total_bytes=24 * 2**30))
    assert layout.page_bytes == state_bytes(a, 1) and layout.state_layers == 24


def test_kimi_k2_is_deepseek_v3s_latent_attention() -> None:
    kimi: dict[str, Any] = {**DEEPSEEK_V3, "model_type": "kimi_k2"}
    a = arch_from_config(kimi, "config.json")
    assert a.is_mla and (a.kv_lora_rank, a.qk_rope_head_dim) == (512, 64)
    assert kv_bytes_per_token(_spec(a)) == a.n_layers * (512 + 64) * 2


def test_the_registry_is_vllms_and_names_its_refusals() -> None:
    reg = load_registry()
    assert reg.vllm_version == "0.32.0"
    assert reg.resolve(("LlamaForCausalLM",), "llama") == ("LlamaForCausalLM", "")
    assert reg.resolve(("Qwen2_5_VLForConditionalGeneration",), "qwen2_5_vl")[0]
    arch, why = reg.resolve(("BertModel",), "bert")
    assert arch is None and "pooling" in why
    arch, why = reg.resolve(("WhisperForConditionalGeneration",), "whisper")
    assert arch is None and "encoder-decoder" in why


def test_weights_per_rank_follow_each_tensors_sharding(tmp_path) -> None:
    from gpu_preflight.memory.vllm import WEIGHT_EXTRA_BYTES, weights_per_rank
    from gpu_preflight.models.hf_dir import spec_from_hf_dir

    cfg = {**MISTRAL_7B, "num_hidden_layers": 2, "num_key_value_heads": 2, "vocab_size": 1024}
    arch = arch_from_config(cfg, "config.json")
    tensors = hf_tensors(arch)
    safetensors_repo(tmp_path / "m", json.dumps(cfg), tensors)
    spec = spec_from_hf_dir(tmp_path / "m")
    art = spec.artifacts[0]
    layout = art.layout
    assert layout is not None and layout.replicated_bytes is not None
    norms = sum(2 * s[0] for n, s, _ in tensors if len(s) == 1)
    kv = sum(2 * s[0] * s[1] for n, s, _ in tensors if ".k_proj." in n or ".v_proj." in n)
    assert (layout.replicated_bytes, layout.kv_proj_bytes) == (norms, kv)
    rest = art.weight_bytes - norms - kv
    assert weights_per_rank(spec, art, 1) == art.weight_bytes + WEIGHT_EXTRA_BYTES
    # TP 2: everything split but the norms; TP 4 > 2 KV heads: each rank keeps one K/V head.
    extra = WEIGHT_EXTRA_BYTES
    assert weights_per_rank(spec, art, 2) == math.ceil(rest / 2 + norms + kv / 2 + extra)
    assert weights_per_rank(spec, art, 4) == math.ceil(rest / 4 + norms + kv / 2 + extra)
