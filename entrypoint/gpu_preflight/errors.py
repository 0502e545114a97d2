"""gpu-preflight's one exception hierarchy. The CLI maps each family to one exit code.

- ``InvalidInput`` (exit 2): a value a user gave (variable, option, engine flag, file) is not
  acceptable. The message names where it came from, the value (masked if secret) and what is
  accepted.
- ``SetupError`` (exit 2): the image or machine lacks something the plan needs (an engine binary).
- A refusal is not an exception: it is a plan with verdict "refuse" (exit 3).
- Anything else reaching the CLI is a bug: it prints an internal-error line with a report hint.
"""

from __future__ import annotations


class PreflightError(Exception):
    """Base of every error gpu-preflight reports to a user (never shown as a traceback)."""

    exit_code = 1


class InvalidInput(PreflightError, ValueError):
    """A value a user gave is not acceptable. Exit 2."""

    exit_code = 2


class SetupError(PreflightError):
    """The plan needs something this image or machine does not have. Exit 2."""

    exit_code = 2
