"""A real ``nats-server -js`` for unit tests (the invoker's queue, the gateway's quota counts).

nats-server is built by ``hack/nats.sh`` into ``$KUBELAMBDA_CACHE/bin/current`` (default
``~/.cache/kubelambda``); ``PATH`` is searched too. Without it the tests fail, saying so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.unit.ports import free_port


def nats_server_binary() -> str:
    cache = Path(os.environ.get("KUBELAMBDA_CACHE") or Path.home() / ".cache" / "kubelambda")
    candidate = cache / "bin" / "current" / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    pytest.fail(
        f"nats-server not found in {candidate.parent} nor on PATH: build it with hack/nats.sh",
        pytrace=False,
    )


class NatsServer:
    def __init__(self, store: Path) -> None:
        self.binary = nats_server_binary()
        self.store = store
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.store.parent / "nats.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)],
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None
