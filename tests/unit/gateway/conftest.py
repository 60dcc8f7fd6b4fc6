"""A real gateway (in a thread, on its own event loop) in front of real local agent processes.

The routing table is fed directly (no Kubernetes): tests add Functions, Aliases and
EndpointSlices pointing at agents on 127.0.0.1, the same way the watches would.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
import uvloop
from botocore.config import Config
from botocore.response import StreamingBody

from kubelambda.gateway.config import GatewayConfig
from kubelambda.gateway.main import Gateway
from kubelambda.gateway.routing import RoutingTable
from tests.unit.ports import free_port, free_port_range

REPO = Path(__file__).resolve().parents[3]
PYTHON_RUNTIME_DIR = REPO / "runtime-images" / "python"

T = TypeVar("T")

APP = """
import json, os, time

def handler(event, context):
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("fail"):
        raise ValueError("asked to fail")
    if event.get("print"):
        print(event["print"])
    return {
        "event": event,
        "version": context.function_version,
        "arn": context.invoked_function_arn,
        "request_id": context.aws_request_id,
        "remaining": context.get_remaining_time_in_millis(),
        "client_context": None if context.client_context is None else context.client_context.custom,
        "pid": os.getpid(),
    }
"""


class Agent:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    def wait_ready(self, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"agent not ready:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_agent(
    directory: Path,
    *,
    version: str = "$LATEST",
    concurrency: int = 1,
    timeout: int = 3,
    code: str = APP,
    vendor: tuple[str, ...] = (),
    **env: str,
) -> Agent:
    """An agent serving ``code`` (``APP``) as app.py with the Python runtime (as
    tests/unit/agent does). ``vendor``: top-level modules of this environment put into the
    task root, as a deployment package bundles its libraries."""
    task_root = directory / "task"
    task_root.mkdir(parents=True, exist_ok=True)
    (task_root / "app.py").write_text(textwrap.dedent(code))
    for module in vendor:
        spec = importlib.util.find_spec(module)
        assert spec is not None, module
        assert spec.origin is not None, module
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (task_root / source.name).symlink_to(source)
    port = free_port()
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    full_env = {k: v for k, v in os.environ.items() if k in keep} | {
        "PYTHONPATH": str(REPO / "operator"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "AWS_LAMBDA_FUNCTION_NAME": "fn",
        "AWS_LAMBDA_FUNCTION_VERSION": version,
        "_HANDLER": "app.handler",
        "KUBELAMBDA_RUNTIME": "python3.11",
        "KUBELAMBDA_RUNTIME_DIR": str(PYTHON_RUNTIME_DIR),
        "KUBELAMBDA_TASK_ROOT": str(task_root),
        "KUBELAMBDA_INVOKE_PORT": str(port),
        "KUBELAMBDA_RUNTIME_API_PORT": str(free_port()),
        "KUBELAMBDA_CONCURRENCY": str(concurrency),
        "KUBELAMBDA_TIMEOUT_SECONDS": str(timeout),
    }
    if concurrency > 1:
        full_env["KUBELAMBDA_RUNTIME_API_PORT"] = str(free_port_range(concurrency))
    full_env.update(env)
    log = directory / f"agent-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubelambda.agent"],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    agent = Agent(proc, port, log)
    agent.wait_ready()
    return agent


class RunningGateway:
    """A Gateway on a uvloop loop in a background thread; ``call`` runs code on that loop."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(gateway.start("127.0.0.1"))
        gateway.api.synced = True
        self.url = f"http://127.0.0.1:{gateway.port}"

    @property
    def table(self) -> RoutingTable:
        return self.gateway.table

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return fn()

        return self.run(wrapper())

    def stop(self) -> None:
        async def stop() -> None:
            await self.gateway.drain()
            await asyncio.sleep(0.05)  # let closed transports finish

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


_clients: list[Any] = []


def lambda_client(url: str, read_timeout: float = 60) -> Any:
    """A boto3 Lambda client as the tests use it; closed after the test (no leaked sockets)."""
    client = boto3.client(
        "lambda",
        endpoint_url=url,
        config=Config(retries={"max_attempts": 0}, read_timeout=read_timeout),
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    client.meta.events.register("after-call.lambda.Invoke", _buffer_payload)
    _clients.append(client)
    return client


def _buffer_payload(parsed: dict[str, Any], **_: Any) -> None:
    """Read every reply's body at once, so its connection goes back to the pool (and is closed
    with the client) even when a test looks at the status alone."""
    if "Payload" in parsed:
        data = parsed["Payload"].read()
        parsed["Payload"] = StreamingBody(io.BytesIO(data), len(data))


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


@pytest.fixture
def start_gateway() -> Iterator[Callable[..., RunningGateway]]:
    running: list[RunningGateway] = []

    def start(**settings: Any) -> RunningGateway:
        hooks = {
            k: settings.pop(k)
            for k in ("publisher", "waker", "read_secret", "authenticator", "quota_counter")
            if k in settings
        }
        config = GatewayConfig(**({"port": 0, "metrics_port": 0} | settings))
        gateway = RunningGateway(Gateway(config, **hooks))
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        gateway.stop()


@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("agents")


@pytest.fixture(scope="module")
def agents(agent_dir: Path) -> Iterator[Callable[..., Agent]]:
    """Agents shared by a module's tests, keyed by their settings."""
    started: dict[tuple[Any, ...], Agent] = {}

    def get(**settings: Any) -> Agent:
        key = tuple(sorted(settings.items()))
        if key not in started:
            started[key] = start_agent(agent_dir / f"a{len(started)}", **settings)
        return started[key]

    yield get
    for agent in started.values():
        agent.stop()
