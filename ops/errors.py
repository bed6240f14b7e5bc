"""The tool's errors. Each message says what happened and what to do; the exit status tells scripts which kind."""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ATTENTION = 3
EXIT_INTERRUPTED = 130


class OpsError(Exception):
    """Something failed; nothing more was done than the output says."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(OpsError):
    """The input is wrong: an unknown id, a bad filter, a missing setting or option."""

    exit_code = EXIT_USAGE


class NeedsAttention(OpsError):
    """The work ran, but some items were left for the operator (refused, or with an unknown outcome)."""

    exit_code = EXIT_ATTENTION
