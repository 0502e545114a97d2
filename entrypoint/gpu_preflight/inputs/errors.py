"""Typed errors of user inputs and planning (the hierarchy lives in gpu_preflight.errors)."""

from __future__ import annotations

from gpu_preflight.errors import InvalidInput, PreflightError, SetupError
from gpu_preflight.inputs.flags import FlagValueError

__all__ = [
    "EngineMissing",
    "FlagValueError",
    "InvalidInput",
    "OverrideError",
    "PreflightError",
    "TierTableError",
]

# One class for a bad value of any row of the flag table (env, engine flag or CLI option).
OverrideError = FlagValueError


class TierTableError(InvalidInput):
    """The tier table (built in, or PREFLIGHT_TIERS_FILE) is unusable."""


class EngineMissing(SetupError):
    """The plan needs an engine binary this image does not have. Exit 2 (a setup problem)."""
