"""The architectures the memory benchmark runs: real models from the catalog (config.json facts)."""

from __future__ import annotations

# (catalog id, GGUF quant written) - a 1B and a 3B, 7-8B GQA models, a 14B, a 70B, sliding-window
# models (Gemma 2 and 3), MoE models (Qwen3-30B-A3B, gpt-oss-20b, Mixtral).
BENCH_MODELS = [
    ("llama-3.2-1b-instruct", "Q8_0"),
    ("llama-3.2-3b-instruct", "Q4_K_M"),
    ("llama-3.1-8b-instruct", "Q4_K_M"),
    ("qwen2.5-7b-instruct", "Q4_K_M"),
    ("qwen3-14b", "Q4_K_M"),
    ("llama-3.1-70b-instruct", "Q4_K_M"),
    ("gemma-2-9b-it", "Q4_K_M"),
    ("gemma-3-12b-it", "Q4_K_M"),
    ("qwen3-30b-a3b", "Q4_K_M"),
    ("gpt-oss-20b", "MXFP4"),
]
CONTEXTS = [4096, 8192, 16384, 32768, 65536]
CACHE_TYPES = ["f16", "q8_0", "q4_0"]
FLASH_ATTN = ["on", "off"]
