"""Exit codes scripts can rely on, and the errors that carry them to ``main``."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    """The function returned an error, or the operation failed."""
    USAGE = 2
    """Bad arguments or an invalid manifest (argparse uses 2 as well)."""
    NOT_FOUND = 3
    TIMEOUT = 4
    INTERRUPTED = 130


class CliError(Exception):
    """An expected failure: ``main`` prints the message on one line and exits with the code."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CliError):
    exit_code = ExitCode.USAGE


class NotFound(CliError):
    exit_code = ExitCode.NOT_FOUND


class WaitTimeout(CliError):
    exit_code = ExitCode.TIMEOUT
