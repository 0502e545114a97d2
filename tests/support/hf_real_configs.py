"""Published configs of the issue-19 "Done when" repos, as transformers config-class kwargs.

No Hub access here, so each is written from transformers' own config class for the model_type
(its defaults are in several cases the published model's: Glm4Config is GLM-4-9B, CohereConfig
is c4ai-command-r-v01, Qwen2_5_VLConfig is Qwen2.5-VL-7B, Llama4TextConfig is Llama-4-Scout's
text model) and the published config.json values where they differ (named per key below).
hf_full_layout.py builds each at its full size on the meta device.
"""

from __future__ import annotations

from typing import Any

# repo id -> (architecture, model_type, config kwargs)
REAL: dict[str, tuple[str, str, dict[str, Any]]] = {
    # THUDM/GLM-4-9B-0414: Glm4Config's defaults (hidden 4096, 40 layers, 32 heads, 2 KV heads,
    # head_dim 128, vocab 151552); the published max_position_embeddings 32768.
    "THUDM/GLM-4-9B-0414": (
        "Glm4ForCausalLM",
        "glm4",
        {"max_position_embeddings": 32768, "attention_bias": True},
    ),
    # ibm-granite/granite-3.1-8b-instruct config.json.
    "ibm-granite/granite-3.1-8b-instruct": (
        "GraniteForCausalLM",
        "granite",
        {
            "hidden_size": 4096,
            "intermediate_size": 12800,
            "num_hidden_layers": 40,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "vocab_size": 49155,
            "max_position_embeddings": 131072,
            "rope_theta": 10000000.0,
            "embedding_multiplier": 12.0,
            "logits_scaling": 16.0,
            "residual_multiplier": 0.22,
            "attention_multiplier": 0.0078125,
            "tie_word_embeddings": True,
        },
    ),
    # allenai/OLMo-2-1124-7B config.json (Olmo2Config defaults but vocab and context).
    "allenai/OLMo-2-1124-7B": (
        "Olmo2ForCausalLM",
        "olmo2",
        {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 100352,
            "max_position_embeddings": 4096,
            "rope_theta": 500000.0,
            "rms_norm_eps": 1e-6,
        },
    ),
    # CohereForAI/c4ai-command-r-v01: CohereConfig's defaults (hidden 8192, 40 layers, 64 heads,
    # 64 KV heads, vocab 256000, 8192 positions, tied embeddings).
    "CohereForAI/c4ai-command-r-v01": (
        "CohereForCausalLM",
        "cohere",
        {"rope_theta": 8000000.0, "logit_scale": 0.0625},
    ),
    # meta-llama/Llama-4-Scout-17B-16E-Instruct: Llama4TextConfig's defaults are Scout's text model
    # (hidden 5120, 48 layers, 40 heads, 8 KV heads, 16 experts, top-1, chunked attention 8192);
    # the vision tower of the published config.json.
    "meta-llama/Llama-4-Scout-17B-16E-Instruct": (
        "Llama4ForConditionalGeneration",
        "llama4",
        {
            "text_config": {
                "max_position_embeddings": 10485760,
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 16.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 1.0,
                    "original_max_position_embeddings": 8192,
                },
                "rope_theta": 500000.0,
            },
            "vision_config": {
                "hidden_size": 1408,
                "intermediate_size": 5632,
                "num_hidden_layers": 34,
                "num_attention_heads": 16,
                "image_size": 336,
                "patch_size": 14,
                "vision_output_dim": 4096,
                "projector_input_dim": 4096,
                "projector_output_dim": 4096,
                "pixel_shuffle_ratio": 0.5,
            },
        },
    ),
    # mistralai/Mistral-Small-3.1-24B-Instruct-2503 config.json.
    "mistralai/Mistral-Small-3.1-24B-Instruct-2503": (
        "Mistral3ForConditionalGeneration",
        "mistral3",
        {
            "text_config": {
                "model_type": "mistral",
                "hidden_size": 5120,
                "intermediate_size": 32768,
                "num_hidden_layers": 40,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "head_dim": 128,
                "vocab_size": 131072,
                "max_position_embeddings": 131072,
                "rope_theta": 1000000000.0,
                "sliding_window": None,
            },
            "vision_config": {
                "model_type": "pixtral",
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "image_size": 1540,
                "patch_size": 14,
                "head_dim": 64,
            },
            "spatial_merge_size": 2,
            "multimodal_projector_bias": False,
            "image_token_index": 10,
        },
    ),
    # Qwen/Qwen2.5-VL-7B-Instruct config.json (Qwen2_5_VLConfig's text defaults are the 72B's).
    "Qwen/Qwen2.5-VL-7B-Instruct": (
        "Qwen2_5_VLForConditionalGeneration",
        "qwen2_5_vl",
        {
            "text_config": {
                "hidden_size": 3584,
                "intermediate_size": 18944,
                "num_hidden_layers": 28,
                "num_attention_heads": 28,
                "num_key_value_heads": 4,
                "vocab_size": 152064,
                "max_position_embeddings": 128000,
                "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
                "rope_theta": 1000000.0,
                "tie_word_embeddings": False,
            },
            "vision_config": {
                "depth": 32,
                "hidden_size": 1280,
                "intermediate_size": 3420,
                "num_heads": 16,
                "out_hidden_size": 3584,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "window_size": 112,
                "fullatt_block_indexes": [7, 15, 23, 31],
                "tokens_per_second": 2,
            },
        },
    ),
}
