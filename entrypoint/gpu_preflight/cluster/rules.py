"""vLLM 0.32's own rules for one model over nodes (tensor parallel within a node, pipeline
parallel across them), checked before planning so a refusal names the rule and the numbers.

Each rule is the engine's (vLLM 0.32.0):
- attention heads divisible by TP: vllm/config/model.py ModelConfig.verify_with_parallel_config;
- KV heads divisible by TP, or TP a multiple of them (each then replicated):
  vllm/model_executor/layers/linear.py QKVParallelLinear.__init__ (divide(), which asserts);
- the vocabulary padded to 64 divisible by TP: vllm/model_executor/layers/vocab_parallel_embedding.py
  (DEFAULT_VOCAB_PADDING_SIZE, pad_vocab_size, VocabParallelEmbedding.__init__ divide());
- the architecture supports pipeline parallel (SupportsPP): vllm/model_executor/models/interfaces.py
  supports_pp, refused in ModelConfig.verify_with_parallel_config;
- at least one layer per stage: vllm/distributed/utils.py get_pp_indices;
- --nnodes divides the world TP x PP, and every node holds TP x PP / nnodes GPUs:
  vllm/config/parallel.py ParallelConfig (world_size, nnodes) and the mp executor's local ranks
  (vllm/v1/executor/multiproc_executor.py: local_world_size = world_size // nnodes).
"""

from __future__ import annotations

from gpu_preflight.models.types import ModelSpec
from gpu_preflight.plan.vllm import attention_heads

VOCAB_PADDING = 64  # vocab_parallel_embedding.py DEFAULT_VOCAB_PADDING_SIZE
# Our architecture names (GGUF general.architecture) -> the vLLM class the checkpoint names, and
# whether it implements SupportsPP in vLLM 0.32 (tests/cluster check this against vLLM's own
# ModelRegistry.is_pp_supported_model).
VLLM_CLASSES: dict[str, tuple[str, bool]] = {
    "llama": ("LlamaForCausalLM", True),
    "qwen2": ("Qwen2ForCausalLM", True),
    "qwen3": ("Qwen3ForCausalLM", True),
    "qwen3moe": ("Qwen3MoeForCausalLM", True),
    "qwen3next": ("Qwen3NextForCausalLM", True),
    "gemma2": ("Gemma2ForCausalLM", True),
    "gemma3": ("Gemma3ForCausalLM", True),
    "phi3": ("Phi3ForCausalLM", True),
    "gpt-oss": ("GptOssForCausalLM", True),
    "deepseek2": ("DeepseekV3ForCausalLM", True),
    "glm4moe": ("Glm4MoeForCausalLM", True),
}


def padded_vocab(vocab: int) -> int:
    """vocab_parallel_embedding.py pad_vocab_size: up to a multiple of 64."""
    return ((vocab + VOCAB_PADDING - 1) // VOCAB_PADDING) * VOCAB_PADDING


def broken_rules(spec: ModelSpec, tp: int, pp: int, nnodes: int, gpus_per_node: int) -> list[str]:
    """Each vLLM rule this layout breaks, with its numbers; [] when vLLM accepts it."""
    a = spec.arch
    out: list[str] = []
    heads = attention_heads(a)  # 0 for an attention-free model: nothing to divide
    if heads % tp:
        out.append(
            f"{spec.id} has {a.n_heads} attention heads, not divisible by tensor parallel {tp} "
            "(vLLM ModelConfig.verify_with_parallel_config)"
        )
    if heads and not (a.n_kv_heads % tp == 0 or tp % a.n_kv_heads == 0):
        out.append(
            f"{spec.id} has {a.n_kv_heads} KV heads: tensor parallel {tp} neither divides them "
            "nor is a multiple of them (vLLM QKVParallelLinear)"
        )
    if padded_vocab(a.vocab_size) % tp:
        out.append(
            f"{spec.id}'s vocabulary {a.vocab_size} padded to {padded_vocab(a.vocab_size)} is not "
            f"divisible by tensor parallel {tp} (vLLM VocabParallelEmbedding)"
        )
    if pp > 1:
        cls, supported = VLLM_CLASSES.get(a.architecture, (a.architecture, False))
        if not supported:
            out.append(
                f"{spec.id} ({cls}) does not support pipeline parallel in vLLM 0.32 "
                "(SupportsPP); it needs one node that holds it"
            )
        if pp > a.n_layers:
            out.append(
                f"{spec.id} has {a.n_layers} layers, fewer than {pp} pipeline stages "
                "(vLLM get_pp_indices)"
            )
    world = tp * pp
    if world % nnodes:
        out.append(
            f"--nnodes {nnodes} does not divide the world size {world} = TP {tp} x PP {pp} "
            "(vLLM ParallelConfig)"
        )
    elif world // nnodes != gpus_per_node:
        out.append(
            f"TP {tp} x PP {pp} over {nnodes} nodes is {world // nnodes} GPUs per pod, but each "
            f"node has {gpus_per_node}"
        )
    return out
