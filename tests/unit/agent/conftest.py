"""Runs the real agent as a subprocess, with a temporary task root, on 127.0.0.1 ports."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from tests.unit.ports import free_port_range

REPO = Path(__file__).resolve().parents[3]
PYTHON_RUNTIME_DIR = REPO / "runtime-images" / "python"
NODE_RUNTIME_DIR = REPO / "runtime-images" / "nodejs"
INVOKE_PATH = "/2015-03-31/functions/fn/invocations"


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Agent:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, api_port: int, log: Path):
        self.proc = proc
        self.port = port
        self.api_port = api_port
        self.log_path = log

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body, headers or {})
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def invoke(
        self, payload: Any = None, headers: dict[str, str] | None = None, timeout: float = 30
    ) -> Reply:
        if payload is None:
            body = b""
        elif isinstance(payload, bytes):
            body = payload
        else:
            body = json.dumps(payload).encode()
        return self.request("POST", INVOKE_PATH, body, headers, timeout)

    def health(self) -> int:
        try:
            return self.request("GET", "/healthz", timeout=2).status
        except OSError:
            return 0

    def wait_ready(self, timeout: float = 15) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.logs()}")
            if self.health() == 200:
                return
            time.sleep(0.02)
        raise AssertionError(f"agent not ready after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace")

    def wait_log(self, needle: str, timeout: float = 5) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self.logs()
            if needle in text:
                return text
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not in agent log:\n{self.logs()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


StartAgent = Callable[..., Agent]


@pytest.fixture
def task_root(tmp_path: Path) -> Path:
    root = tmp_path / "task"
    root.mkdir()
    return root


def write_code(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        if text.startswith("#!"):
            path.chmod(0o755)


def _base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONPATH"] = str(REPO / "operator")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture
def start_agent(tmp_path: Path, task_root: Path) -> Iterator[StartAgent]:
    agents: list[Agent] = []

    def start(
        handler: str = "app.handler",
        files: dict[str, str] | None = None,
        *,
        runtime: str = "python3.11",
        concurrency: int = 1,
        wait: bool = True,
        **env: str,
    ) -> Agent:
        write_code(task_root, files or {})
        port = free_port_range(1)
        api_port = free_port_range(concurrency)
        runtime_dir = NODE_RUNTIME_DIR if runtime.startswith("nodejs") else PYTHON_RUNTIME_DIR
        full_env = _base_env() | {
            "AWS_LAMBDA_FUNCTION_NAME": "fn",
            "_HANDLER": handler,
            "KUBELAMBDA_RUNTIME": runtime,
            "KUBELAMBDA_RUNTIME_DIR": str(runtime_dir),
            "KUBELAMBDA_TASK_ROOT": str(task_root),
            "KUBELAMBDA_INVOKE_PORT": str(port),
            "KUBELAMBDA_RUNTIME_API_PORT": str(api_port),
            "KUBELAMBDA_CONCURRENCY": str(concurrency),
        }
        full_env.update(env)
        log = tmp_path / f"agent-{len(agents)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kubelambda.agent"],
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        agent = Agent(proc, port, api_port, log)
        agents.append(agent)
        if wait:
            agent.wait_ready()
        return agent

    yield start
    for agent in agents:
        agent.stop()
