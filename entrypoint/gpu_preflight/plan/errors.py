"""The plan layer's exceptions. The CLI maps each family to one exit code."""

from __future__ import annotations


class PreflightError(Exception):
    """Base of every error gpu-preflight reports to a user (never shown as a traceback)."""

    exit_code = 1


class InvalidInput(PreflightError, ValueError):
    """A value a user gave (env var, CLI option, file) is not acceptable. Exit 2.

    The message always names where the value came from, the value, and what would be accepted.
    """

    exit_code = 2


class OverrideError(InvalidInput):
    def __init__(self, variable: str, value: str, accepted: str, why: str | None = None) -> None:
        self.variable = variable
        self.value = value
        self.accepted = accepted
        detail = f": {why}" if why else ""
        super().__init__(f"{variable}={value!r} is not valid{detail}. Accepted: {accepted}.")


class TierTableError(InvalidInput):
    """The tier table (built in, or PREFLIGHT_TIERS_FILE) is unusable."""


class EngineMissing(PreflightError):
    """The plan needs an engine binary this image does not have. Exit 2 (a setup problem)."""

    exit_code = 2
