"""Model errors: all are bad user input (exit 2), each naming the file or variable and the value."""

from __future__ import annotations

from gpu_preflight.inputs.errors import InvalidInput


class ModelError(InvalidInput):
    """A model cannot be resolved or read."""


class ModelFileError(ModelError):
    """A model file (GGUF, config.json, safetensors) is malformed, truncated or hostile."""


class CatalogError(ModelError):
    """The model catalog (built in or PREFLIGHT_MODELS_FILE) is unusable."""
