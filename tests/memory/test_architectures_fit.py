"""MLA, MTP blocks and gated DeltaNet layers against llama.cpp itself (llama-fit-params).

Small GGUFs with every tensor llama.cpp creates for deepseek2 (src/models/deepseek2.cpp) and
qwen3next (src/models/qwen3next.cpp), names from src/llama-arch.cpp, the tensor data a sparse
hole. llama-fit-params loads them without allocating and reports model / context / compute MiB;
the plan's KV (context) must be exact and its weights within llama.cpp's 1 MiB rounding, which
also checks that the MTP block is neither loaded nor given a cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGMLQuantizationType, Keys
from tests.support.gguf_factory import write_gguf_kvs
from tests.support.llama_fit import fit_params_binary, llama_fit

from gpu_preflight.memory.llamacpp import LlamaCppConfig, estimate_llamacpp, kv_layer_bytes
from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.resolve import resolve_model

MIB = 2**20
F16, F32 = GGMLQuantizationType.F16, GGMLQuantizationType.F32
Plan = list[tuple[str, tuple[int, ...], GGMLQuantizationType]]

pytestmark = pytest.mark.skipif(
    not fit_params_binary().exists(),
    reason="llama.cpp binaries not built: run `make llama-cpp` (.ci/llama-cpp.sh)",
)


def _u32(arch: str, key: str, value: int) -> tuple[str, str, object]:
    return (key.format(arch=arch), "uint32", value)


def _moe(b: str, h: int, n_exp: int, ff_exp: int, shexp: int) -> Plan:
    return [
        (b + "ffn_gate_inp.weight", (n_exp, h), F32),
        (b + "ffn_down_exps.weight", (n_exp, h, ff_exp), F16),
        (b + "ffn_gate_exps.weight", (n_exp, ff_exp, h), F16),
        (b + "ffn_up_exps.weight", (n_exp, ff_exp, h), F16),
        (b + "ffn_gate_shexp.weight", (shexp, h), F16),
        (b + "ffn_up_shexp.weight", (shexp, h), F16),
        (b + "ffn_down_shexp.weight", (h, shexp), F16),
    ]


def _nextn(b: str, h: int) -> Plan:
    return [
        (b + "nextn.eh_proj.weight", (h, 2 * h), F16),
        (b + "nextn.enorm.weight", (h,), F32),
        (b + "nextn.hnorm.weight", (h,), F32),
    ]


def _deepseek2(path: Path, real: bool = False) -> Path:
    """3 trunk blocks + 1 MTP block, MLA, 1 dense lead block: small, or DeepSeek-V3's own
    dimensions (https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json)."""
    a, h, heads, q_lora, kv_lora, rope, nope, v = "deepseek2", 512, 8, 128, 256, 32, 64, 64
    n_exp, used, ff_exp, ff, vocab, trunk = 4, 2, 128, 1024, 512, 3
    if real:
        h, heads, q_lora, kv_lora, rope, nope, v = 7168, 128, 1536, 512, 64, 128, 128
        n_exp, used, ff_exp, ff, vocab = 256, 8, 2048, 18432, 129280
    kvs = [
        _u32(a, Keys.LLM.BLOCK_COUNT, trunk + 1),
        _u32(a, Keys.LLM.NEXTN_PREDICT_LAYERS, 1),
        _u32(a, Keys.LLM.CONTEXT_LENGTH, 32768),
        _u32(a, Keys.LLM.EMBEDDING_LENGTH, h),
        _u32(a, Keys.LLM.FEED_FORWARD_LENGTH, ff),
        _u32(a, Keys.Attention.HEAD_COUNT, heads),
        _u32(a, Keys.Attention.HEAD_COUNT_KV, 1),
        _u32(a, Keys.Attention.KEY_LENGTH, kv_lora + rope),
        _u32(a, Keys.Attention.VALUE_LENGTH, kv_lora),
        _u32(a, Keys.Attention.KEY_LENGTH_MLA, nope + rope),
        _u32(a, Keys.Attention.VALUE_LENGTH_MLA, v),
        _u32(a, Keys.Attention.Q_LORA_RANK, q_lora),
        _u32(a, Keys.Attention.KV_LORA_RANK, kv_lora),
        _u32(a, Keys.Rope.DIMENSION_COUNT, rope),
        _u32(a, Keys.LLM.LEADING_DENSE_BLOCK_COUNT, 1),
        _u32(a, Keys.LLM.EXPERT_COUNT, n_exp),
        _u32(a, Keys.LLM.EXPERT_USED_COUNT, used),
        _u32(a, Keys.LLM.EXPERT_FEED_FORWARD_LENGTH, ff_exp),
        _u32(a, Keys.LLM.EXPERT_SHARED_COUNT, 1),
        (Keys.Attention.LAYERNORM_RMS_EPS.format(arch=a), "float32", 1e-6),
        _u32("", Keys.General.FILE_TYPE, 1),
    ]
    plan: Plan = [
        ("token_embd.weight", (vocab, h), F16),
        ("output_norm.weight", (h,), F32),
        ("output.weight", (vocab, h), F16),
    ]
    for i in range(trunk + 1):
        b = f"blk.{i}."
        plan += [
            (b + "attn_norm.weight", (h,), F32),
            (b + "attn_q_a_norm.weight", (q_lora,), F32),
            (b + "attn_kv_a_norm.weight", (kv_lora,), F32),
            (b + "attn_q_a.weight", (q_lora, h), F16),
            (b + "attn_q_b.weight", (heads * (nope + rope), q_lora), F16),
            (b + "attn_kv_a_mqa.weight", (kv_lora + rope, h), F16),
            (b + "attn_k_b.weight", (heads, kv_lora, nope), F16),
            (b + "attn_v_b.weight", (heads, v, kv_lora), F16),
            (b + "attn_output.weight", (h, heads * v), F16),
            (b + "ffn_norm.weight", (h,), F32),
        ]
        if i < 1:
            plan += [
                (b + "ffn_gate.weight", (ff, h), F16),
                (b + "ffn_up.weight", (ff, h), F16),
                (b + "ffn_down.weight", (h, ff), F16),
            ]
        else:
            plan += _moe(b, h, n_exp, ff_exp, ff_exp)
            plan.append((b + "exp_probs_b.bias", (n_exp,), F32))
        if i >= trunk:
            plan += _nextn(b, h)
    return write_gguf_kvs(path, a, kvs, plan, vocab=vocab)


def _qwen3next(path: Path, real: bool = False) -> Path:
    """8 trunk blocks (every 4th full attention) + 1 MTP block, gated DeltaNet elsewhere: small,
    or Qwen3-Next-80B-A3B's own dimensions
    (https://huggingface.co/Qwen/Qwen3-Next-80B-A3B-Instruct/blob/main/config.json)."""
    a, h, heads, kv_heads, hd = "qwen3next", 512, 4, 2, 128
    d_state, k_heads, v_heads, conv = 64, 4, 8, 4
    n_exp, used, ff_exp, vocab, trunk, rope = 4, 2, 128, 512, 8, 32
    if real:
        h, heads, hd, d_state, k_heads, v_heads = 2048, 16, 256, 128, 16, 32
        n_exp, used, ff_exp, vocab, rope = 512, 10, 512, 151936, 64
    key_dim, value_dim = d_state * k_heads, d_state * v_heads
    kvs = [
        _u32(a, Keys.LLM.BLOCK_COUNT, trunk + 1),
        _u32(a, Keys.LLM.NEXTN_PREDICT_LAYERS, 1),
        _u32(a, Keys.LLM.CONTEXT_LENGTH, 32768),
        _u32(a, Keys.LLM.EMBEDDING_LENGTH, h),
        _u32(a, Keys.LLM.FEED_FORWARD_LENGTH, 1024),
        _u32(a, Keys.Attention.HEAD_COUNT, heads),
        _u32(a, Keys.Attention.HEAD_COUNT_KV, kv_heads),
        _u32(a, Keys.Attention.KEY_LENGTH, hd),
        _u32(a, Keys.Attention.VALUE_LENGTH, hd),
        _u32(a, Keys.Rope.DIMENSION_COUNT, rope),
        _u32(a, Keys.LLM.EXPERT_COUNT, n_exp),
        _u32(a, Keys.LLM.EXPERT_USED_COUNT, used),
        _u32(a, Keys.LLM.EXPERT_FEED_FORWARD_LENGTH, ff_exp),
        _u32(a, Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH, ff_exp),
        _u32(a, Keys.SSM.CONV_KERNEL, conv),
        _u32(a, Keys.SSM.STATE_SIZE, d_state),
        _u32(a, Keys.SSM.GROUP_COUNT, k_heads),
        _u32(a, Keys.SSM.TIME_STEP_RANK, v_heads),
        _u32(a, Keys.SSM.INNER_SIZE, value_dim),
        _u32(a, Keys.LLM.FULL_ATTENTION_INTERVAL, 4),
        (Keys.Attention.LAYERNORM_RMS_EPS.format(arch=a), "float32", 1e-6),
        _u32("", Keys.General.FILE_TYPE, 1),
    ]
    plan: Plan = [
        ("token_embd.weight", (vocab, h), F16),
        ("output_norm.weight", (h,), F32),
        ("output.weight", (vocab, h), F16),
    ]
    for i in range(trunk + 1):
        b = f"blk.{i}."
        plan += [(b + "attn_norm.weight", (h,), F32), (b + "post_attention_norm.weight", (h,), F32)]
        if i >= trunk or (i + 1) % 4 == 0:
            plan += [
                (b + "attn_q.weight", (2 * heads * hd, h), F16),
                (b + "attn_k.weight", (kv_heads * hd, h), F16),
                (b + "attn_v.weight", (kv_heads * hd, h), F16),
                (b + "attn_output.weight", (h, heads * hd), F16),
                (b + "attn_q_norm.weight", (hd,), F32),
                (b + "attn_k_norm.weight", (hd,), F32),
            ]
        else:
            plan += [
                (b + "attn_qkv.weight", (2 * key_dim + value_dim, h), F16),
                (b + "attn_gate.weight", (value_dim, h), F16),
                (b + "ssm_conv1d.weight", (2 * key_dim + value_dim, conv), F32),
                (b + "ssm_dt.bias", (v_heads,), F32),
                (b + "ssm_a", (v_heads,), F32),
                (b + "ssm_ba.weight", (2 * v_heads, h), F16),
                (b + "ssm_norm.weight", (d_state,), F32),
                (b + "ssm_out.weight", (h, value_dim), F16),
            ]
        plan += _moe(b, h, n_exp, ff_exp, ff_exp)
        plan.append((b + "ffn_gate_inp_shexp.weight", (h,), F32))
        if i >= trunk:
            plan += _nextn(b, h)
    return write_gguf_kvs(path, a, kvs, plan, vocab=vocab)


@pytest.mark.parametrize(
    ("build", "real", "ctx", "parallel", "cache", "fa", "ubatch"),
    [
        (_deepseek2, False, 16384, 1, "f16", "on", 512),
        (_deepseek2, False, 8192, 2, "q8_0", "on", 512),
        (_qwen3next, False, 16384, 1, "f16", "on", 512),
        (_qwen3next, False, 8192, 4, "q8_0", "on", 512),
        # 32 sequences: the recurrent state (32 x 6 layers x 140 KiB) outweighs the KV
        (_qwen3next, False, 8192, 32, "f16", "on", 512),
        # the real models' widths: the compute buffer too (MLA's absorbed attention)
        (_deepseek2, True, 32768, 1, "f16", "on", 512),
        (_deepseek2, True, 32768, 4, "f16", "off", 512),
        (_deepseek2, True, 65536, 1, "f16", "on", 2048),
        (_qwen3next, True, 32768, 1, "f16", "on", 512),
        (_qwen3next, True, 32768, 4, "f16", "off", 512),
        (_qwen3next, True, 65536, 1, "f16", "on", 2048),
    ],
)
def test_kv_and_weights_agree_with_llama_fit_params(
    tmp_path, build, real, ctx, parallel, cache, fa, ubatch
) -> None:
    path = build(tmp_path / f"{build.__name__.strip('_')}{'-real' if real else ''}.gguf", real)
    argv = (
        "llama-server",
        "--model",
        str(path),
        "--fit",
        "off",
        "--ctx-size",
        str(ctx),
        "--parallel",
        str(parallel),
        "--n-gpu-layers",
        "0",
        "--flash-attn",
        fa,
        "--cache-type-k",
        cache,
        "--cache-type-v",
        cache,
        "--ubatch-size",
        str(ubatch),
    )
    ref = llama_fit(argv, timeout=120).host
    spec = resolve_model(str(path), load_catalog(), "test")
    cfg = LlamaCppConfig(
        context=ctx,
        parallel=parallel,
        cache_type_k=cache,
        cache_type_v=cache,
        n_gpu_layers=0,
        flash_attn=fa == "on",
        n_ubatch=ubatch,
    )
    e = estimate_llamacpp(spec, spec.artifacts[0], cfg)
    cpu = e.devices[-1]
    print(
        f"\n[fit] {path.name} ctx {ctx} x{parallel} {cache} fa {fa} ub {ubatch}: context {ref.context_mib} MiB "
        f"(plan {cpu.kv_cache_bytes / MIB:.2f}), model {ref.model_mib} MiB "
        f"(plan {cpu.weights_bytes / MIB:.2f}), compute {ref.compute_mib} MiB "
        f"(plan {cpu.compute_bytes / MIB:.2f})"
    )
    assert cpu.kv_cache_bytes == sum(kv_layer_bytes(spec.arch, cfg))
    assert cpu.kv_cache_bytes // MIB == ref.context_mib  # KV (and recurrent state) exact
    assert 0 <= cpu.weights_bytes // MIB - ref.model_mib <= 1
    assert cpu.compute_bytes // MIB >= ref.compute_mib  # never under
