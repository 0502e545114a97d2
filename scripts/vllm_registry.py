"""Write entrypoint/gpu_preflight/data/vllm_registry.json from the pinned vLLM's own registry.

Run inside the vLLM venv (.ci/vllm.sh):

    VLLM_TARGET_DEVICE=cpu /var/cache/gpu-preflight/vllm-0.32.0/bin/python scripts/vllm_registry.py

Sources, all read from the installed packages (nothing typed by hand except the exceptions below,
each with its reason):
- vllm/model_executor/models/registry.py: ``_TEXT_GENERATION_MODELS`` (generators, "text"),
  ``_MULTIMODAL_MODELS`` ("multimodal"), ``_TRANSFORMERS_SUPPORTED_MODELS`` (generators vLLM runs
  through its Transformers backend), ``_EMBEDDING_MODELS`` and ``_CROSS_ENCODER_MODELS`` (pooling),
  ``_SPECULATIVE_DECODING_MODELS`` (drafters), ``_PREVIOUSLY_SUPPORTED_MODELS`` (removed);
- transformers' auto mappings (``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``,
  ``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES``, ``MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES``, ...):
  the config.json model_type(s) whose class name is the vLLM architecture.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "entrypoint/gpu_preflight/data/vllm_registry.json"

# Multimodal generators whose extra input is audio (or whose job is speech): the planner models
# vision towers and their encoder cache, not audio encoders. A name test on the architecture,
# checked by hand against each class's docstring in vLLM 0.32.
AUDIO_WORDS = ("Audio", "Speech", "Asr", "Voxtral", "Whisper", "Ultravox", "Kimia", "Dasheng")
# _MULTIMODAL_MODELS' "[Encoder-decoder]" section.
ENCODER_DECODER = (
    "CohereAsrForConditionalGeneration",
    "NemotronParseForConditionalGeneration",
    "WhisperForConditionalGeneration",
)
POOLING_TABLES = (
    "_EMBEDDING_MODELS",
    "_LATE_INTERACTION_MODELS",
    "_REWARD_MODELS",
    "_TOKEN_CLASSIFICATION_MODELS",
    "_SEQUENCE_CLASSIFICATION_MODELS",
    "_CROSS_ENCODER_MODELS",
)


def _mappings() -> dict[str, list[str]]:
    """architecture class name -> the model_types transformers builds it for."""
    from transformers.models.auto import modeling_auto as ma

    names = [n for n in dir(ma) if n.startswith("MODEL_") and n.endswith("_MAPPING_NAMES")]
    out: dict[str, set[str]] = {}
    for n in names:
        table = getattr(ma, n)
        if not isinstance(table, dict):
            continue
        for model_type, cls in table.items():
            for c in cls if isinstance(cls, (tuple, list)) else (cls,):
                if isinstance(c, str):
                    out.setdefault(c, set()).add(model_type)
    return {k: sorted(v) for k, v in out.items()}


def main() -> None:
    from transformers import CONFIG_MAPPING
    from vllm.model_executor.models import registry as r

    by_class = _mappings()
    known_types = set(CONFIG_MAPPING.keys())
    archs: dict[str, dict[str, object]] = {}
    refused: dict[str, str] = {}

    def add(arch: str, kind: str, module: str) -> None:
        types = [t for t in by_class.get(arch, []) if t in known_types]
        archs[arch] = {"kind": kind, "vllm_module": module, "model_types": types}

    for arch, (module, _cls) in r._TEXT_GENERATION_MODELS.items():
        add(arch, "text", module)
    for arch, (module, _cls) in r._TRANSFORMERS_SUPPORTED_MODELS.items():
        if any(w in arch for w in AUDIO_WORDS):
            refused[arch] = (
                "an audio-input model: its audio encoder's profiling pass is not modelled"
            )
        else:
            add(arch, "text" if "CausalLM" in arch else "multimodal", module)
    for arch, (module, _cls) in r._MULTIMODAL_MODELS.items():
        if arch in ENCODER_DECODER:
            refused[arch] = (
                "an encoder-decoder model: its encoder's cross-attention cache is not modelled"
            )
        elif any(w in arch for w in AUDIO_WORDS):
            refused[arch] = (
                "an audio-input model: its audio encoder's profiling pass is not modelled"
            )
        else:
            add(arch, "multimodal", module)
    pooling: dict[str, object] = {}
    for table in POOLING_TABLES:
        pooling.update(getattr(r, table, {}))
    for arch in pooling:
        if arch not in archs:
            refused[arch] = (
                "a pooling model (embedding, reward or classification): vLLM runs it with "
                "--runner pooling, which the planner does not plan"
            )
    for arch in r._SPECULATIVE_DECODING_MODELS:
        refused.setdefault(
            arch, "a draft/MTP head: vLLM runs it only beside its target (--speculative-config)"
        )
    for arch in r._TRANSFORMERS_BACKEND_MODELS:
        refused.setdefault(
            arch, "vLLM's generic Transformers backend: the model's own layers are not known"
        )
    for arch, ver in r._PREVIOUSLY_SUPPORTED_MODELS.items():
        refused.setdefault(arch, f"no longer in vLLM (last served by {ver})")
    for arch, url in getattr(r, "_OOT_SUPPORTED_MODELS", {}).items():
        refused.setdefault(arch, f"served only through an out-of-tree plugin ({url})")
    # A model_type every architecture of which is refused (a config without "architectures").
    refused_types: dict[str, str] = {}
    for arch, why in refused.items():
        for t in by_class.get(arch, []):
            if not any(t in v["model_types"] for v in archs.values()):  # type: ignore[operator]
                refused_types.setdefault(t, f"architecture {arch!r}: {why}")
    # The model_types vLLM can read a config.json of without the repo's own code: transformers'
    # CONFIG_MAPPING and vLLM's vllm/transformers_utils/config.py _CONFIG_REGISTRY. Any other
    # needs --trust-remote-code and the config's auto_map.
    from vllm.transformers_utils.config import _CONFIG_REGISTRY

    config_types = sorted(known_types | set(_CONFIG_REGISTRY.keys()))
    doc = {
        "vllm_version": version("vllm"),
        "transformers_version": version("transformers"),
        "generated_by": "scripts/vllm_registry.py",
        "counts": {
            "text": sum(1 for v in archs.values() if v["kind"] == "text"),
            "multimodal": sum(1 for v in archs.values() if v["kind"] == "multimodal"),
            "text_registry": len(r._TEXT_GENERATION_MODELS),
            "text_transformers_backend": sum(
                1
                for a in r._TRANSFORMERS_SUPPORTED_MODELS
                if archs.get(a, {}).get("kind") == "text"
            ),
            "multimodal_registry": len(r._MULTIMODAL_MODELS),
            "refused": len(refused),
        },
        "architectures": dict(sorted(archs.items())),
        "refused": dict(sorted(refused.items())),
        "refused_model_types": dict(sorted(refused_types.items())),
        "config_model_types": config_types,
    }
    text = json.dumps(doc, indent=1, sort_keys=False) + "\n"
    if len(sys.argv) > 1 and sys.argv[1] == "--check":
        if OUT.read_text() != text:
            sys.exit(f"{OUT} is not what vLLM {doc['vllm_version']}'s registry gives; re-run")
        return
    OUT.write_text(text)
    print(f"wrote {OUT}: {doc['counts']}")


if __name__ == "__main__":
    main()
