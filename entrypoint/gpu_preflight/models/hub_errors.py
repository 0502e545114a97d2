"""The errors of a model named by Hugging Face id: each a ModelError (exit 2) whose message
names the variable, the value and what is accepted; a token is never shown."""

from __future__ import annotations

from gpu_preflight.models.errors import ModelError, ModelFileError


class HubError(ModelError):
    """A model named by Hugging Face id cannot be resolved (exit 2)."""


class HubUnreachable(HubError):
    """The Hub (HF_ENDPOINT) did not answer in time, answered an error, or redirected in a loop."""


class HubOffline(HubError):
    """HF_HUB_OFFLINE is set (or the library is offline) and no cache holds the model."""


class HubRepoNotFound(HubError):
    """No such repo (or revision) on the endpoint."""


class HubGatedRepo(HubError):
    """The repo is gated and HF_TOKEN is missing or has no access."""


class HubQuantNotFound(HubError):
    """The repo has no GGUF file with that quant tag (or no such file)."""


class HubNotAModel(HubError):
    """The repo holds neither config.json + safetensors nor GGUF files."""


class HubFileError(HubError, ModelFileError):
    """A remote file is malformed, lies about its size, or exceeds a bound."""
