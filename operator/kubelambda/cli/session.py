"""What every command gets: the cluster, the platform, the namespace and the streams."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO, TypeVar

from kubelambda.cli.errors import WaitTimeout
from kubelambda.cli.kube import Kube
from kubelambda.cli.output import Format
from kubelambda.cli.platform import Platform

T = TypeVar("T")
POLL_INTERVAL_S = 1.0


@dataclass
class Session:
    kube: Kube
    platform: Platform
    namespace: str
    stdout: TextIO
    stderr: TextIO
    stdin: BinaryIO
    output: Format | None = None
    """-o, when given."""
    monotonic: Callable[[], float] = field(default=time.monotonic)
    sleep: Callable[[float], None] = field(default=time.sleep)

    def format(self, default: Format = Format.TABLE) -> Format:
        return self.output or default

    def note(self, message: str) -> None:
        """Progress and context for people: stderr, so stdout stays the result alone."""
        self.stderr.write(message + "\n")
        self.stderr.flush()

    def wait_for(self, probe: Callable[[], tuple[T | None, str]], timeout: float, what: str) -> T:
        """Polls ``probe`` (-> result or None, and how things stand) until a result comes;
        WaitTimeout after ``timeout`` seconds, saying how things stood last."""
        deadline = self.monotonic() + timeout
        while True:
            result, state = probe()
            if result is not None:
                return result
            if self.monotonic() >= deadline:
                raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}: {state}")
            self.sleep(POLL_INTERVAL_S)
