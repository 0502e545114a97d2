"""scale_layout: a derived layout fitted to a listed size keeps token_embd/output at the
quantizer's rule size and never shrinks a part below what the listed size leaves it."""

from __future__ import annotations

from gpu_preflight.models.catalog import load_catalog
from gpu_preflight.models.layout import derive_layout, scale_layout

CATALOG = load_catalog()


def _arch(model_id: str):  # type: ignore[no-untyped-def]
    spec = CATALOG.get(model_id)
    assert spec is not None
    return spec.arch


def test_a_smaller_listed_size_keeps_the_rule_sized_embeddings() -> None:
    derived = derive_layout(_arch("llama-3.1-8b-instruct"), "Q4_K_M", "llama.cpp")
    listed = int(derived.total_bytes * 0.93)
    s = scale_layout(derived, listed)
    assert s.token_embd_bytes == derived.token_embd_bytes
    assert s.output_bytes == derived.output_bytes
    assert sum(s.per_layer_bytes) >= int(sum(derived.per_layer_bytes) * 0.93) - len(
        s.per_layer_bytes
    )
    assert s.total_bytes >= listed
    # the excess is the embeddings' unscaled share, kept as over-prediction
    excess = s.total_bytes - listed
    assert excess <= 0.07 * (derived.token_embd_bytes + derived.output_bytes) + 64


def test_a_larger_listed_size_gives_every_part_its_share() -> None:
    derived = derive_layout(_arch("qwen3-8b"), "Q4_K_M", "llama.cpp")
    listed = int(derived.total_bytes * 1.04)
    s = scale_layout(derived, listed)
    assert s.token_embd_bytes >= int(derived.token_embd_bytes * 1.04)
    # the layers get what the listed size leaves after rule-sized embeddings
    left = listed - derived.token_embd_bytes - derived.output_bytes - s.other_bytes
    assert sum(s.per_layer_bytes) >= left - len(s.per_layer_bytes)
    assert s.total_bytes >= listed


def test_an_exact_size_changes_nothing() -> None:
    derived = derive_layout(_arch("gemma-2-9b-it"), "Q4_K_M", "llama.cpp")
    s = scale_layout(derived, derived.total_bytes)
    assert s == derived


def test_tied_q4_k_m_embeddings_are_q6_k() -> None:
    # Command-R's tied token_embd printed 1640.62 MiB = 256000 x 8192 x 6.5625 / 8
    arch = _arch("gemma-2-9b-it")
    layout = derive_layout(arch, "Q4_K_M", "llama.cpp")
    assert layout.token_embd_bytes == int(arch.vocab_size * arch.hidden_size * 6.5625 / 8)
