"""The user's model as resolved before planning: the request, and the user's own draft model."""

from __future__ import annotations

from dataclasses import dataclass

from gpu_preflight.models.types import Artifact, ModelSpec

# Tokens drafted per step: llama-server's default (--spec-draft-n-max 3), and the same for vLLM's
# num_speculative_tokens so both engines verify the same amount of speculation per step.
DRAFT_TOKENS = 3


@dataclass(frozen=True)
class Draft:
    """A speculative-decoding draft model served next to the target, in the same process."""

    spec: ModelSpec
    artifact: Artifact
    tokens: int = DRAFT_TOKENS
    user: str | None = None  # where the user named it; None: the catalog pairing


@dataclass(frozen=True)
class ModelRequest:
    """The user's model, resolved before planning (by the pipeline, which may read a file)."""

    spec: ModelSpec
    quant: str | None  # "id@Q8_0", a repo's :QUANT or VLLM_QUANTIZATION: that quant only
    source: str  # env:PREFLIGHT_MODEL, arg:--model, ...
    # The exact artifact the user named (a repo, a file, a path): it is served as named, never
    # swapped for another artifact of the same model.
    artifact: Artifact | None = None
    draft: Draft | None = None  # the user's own draft model (-md, -hfd, --speculative-config)
    extra_gpu_bytes: int = 0  # the user's --mmproj / --lora files
    local_copy: str | None = None  # a sparse copy of the GGUF header, for llama.cpp's dry run
    revision: str | None = None  # a Hub commit the model was named at (org/repo@rev)
