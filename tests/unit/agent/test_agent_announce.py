"""The agent tells the autoscaler it serves once its runtime has initialised (not before)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

SLOW_INIT_APP = """
import time
time.sleep(0.5)  # a slow init: the announcement must wait for it

def handler(event, context):
    return "ok"
"""


class Autoscaler:
    """Records announcements, answers like the real one (204), or fails the first ones."""

    def __init__(self, failures: int = 0) -> None:
        self.announcements: list[tuple[float, dict[str, Any]]] = []
        self.failures = failures
        autoscaler = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/v1/started"
                status = 204
                if autoscaler.failures:
                    autoscaler.failures -= 1
                    status = 503
                else:
                    autoscaler.announcements.append((time.monotonic(), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, count: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.announcements) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return [body for _, body in self.announcements]


@pytest.fixture
def autoscaler() -> Iterator[Autoscaler]:
    server = Autoscaler()
    yield server
    server.close()


def announce_env(url: str) -> dict[str, str]:
    return {
        "KUBELAMBDA_ANNOUNCE_URL": url,
        "KUBELAMBDA_ANNOUNCE_TOKEN": "token-from-the-operator",
        "KUBELAMBDA_NAMESPACE": "team",
        "KUBELAMBDA_POD_IP": "10.1.2.3",
    }


def test_announces_once_the_runtime_is_ready(
    start_agent: Callable[..., Any], autoscaler: Autoscaler
) -> None:
    started = time.monotonic()
    agent = start_agent(files={"app.py": SLOW_INIT_APP}, **announce_env(autoscaler.url))
    [body] = autoscaler.wait()
    assert body == {
        "namespace": "team",
        "function": "fn",
        "version": "$LATEST",
        "address": f"10.1.2.3:{agent.port}",
        "token": "token-from-the-operator",
    }
    announced_at = autoscaler.announcements[0][0]
    assert announced_at - started >= 0.5, "announced before the runtime's init finished"
    assert agent.health() == 200


def test_retries_when_the_autoscaler_fails(start_agent: Callable[..., Any]) -> None:
    flaky = Autoscaler(failures=2)
    try:
        start_agent(files={"app.py": SLOW_INIT_APP}, **announce_env(flaky.url))
        assert len(flaky.wait()) == 1
    finally:
        flaky.close()


def test_no_announcement_without_its_settings(
    start_agent: Callable[..., Any], autoscaler: Autoscaler
) -> None:
    env = announce_env(autoscaler.url)
    del env["KUBELAMBDA_POD_IP"]
    agent = start_agent(files={"app.py": SLOW_INIT_APP}, **env)
    agent.wait_ready()
    time.sleep(0.3)
    assert autoscaler.announcements == []
