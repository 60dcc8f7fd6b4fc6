"""External mode: the runtime is a process the agent did not start (an image function's
container in the pod), speaking the Runtime API to the agent.

There is no shared PID namespace here, so the agent gets an injected proc root holding only
the runtime processes these tests start (a symlink to /proc/<pid> each): what it kills is
limited to them.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from kubelambda.agent.config import build_runtime_env

# A hand-written Runtime API client, as a separate process.
RAW_RUNTIME = """
import http.client, json, os, sys, time

host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
time.sleep(float(os.environ.get("INIT_SECONDS", "0")))
conn = http.client.HTTPConnection(host, int(port))
while True:
    conn.request("GET", "/2018-06-01/runtime/invocation/next")
    resp = conn.getresponse()
    event = json.loads(resp.read())
    request_id = resp.getheader("Lambda-Runtime-Aws-Request-Id")
    action = event.get("action")
    if action == "sleep":
        time.sleep(event["seconds"])
    elif action == "exit":
        os._exit(3)
    elif action == "hold":
        data = b"x" * (event["mb"] << 20)
        time.sleep(0.5)
    body = json.dumps({"pid": os.getpid(), "event": event}).encode()
    conn.request("POST", f"/2018-06-01/runtime/invocation/{request_id}/response", body)
    conn.getresponse().read()
"""

APP = """
import os, time

def handler(event, context):
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("exit"):
        os._exit(1)
    return {"pid": os.getpid(), "request_id": context.aws_request_id, "event": event}
"""

REPORT = re.compile(
    r"REPORT RequestId: (\S+)\t[^\n]*?(?:\tInit Duration: ([\d.]+) ms)?(?:\tStatus: [^\n]*)?\n"
)


class Pod:
    """The agent in external mode plus the runtime processes a kubelet would (re)start."""

    def __init__(self, agent: Any, task_root: Path, proc_root: Path, env: dict[str, str]):
        self.agent = agent
        self.task_root = task_root
        self.proc_root = proc_root
        self.env = env
        self.runtimes: list[subprocess.Popen[bytes]] = []
        self.pool = ThreadPoolExecutor(2)

    def start_runtime(self, kind: str = "raw", handler: str = "app.handler", **env: str):
        if kind == "raw":
            argv = [sys.executable, str(self.task_root / "raw_runtime.py")]
        else:  # AWS's Python runtime interface client, unmodified
            argv = [sys.executable, "-m", "awslambdaric", handler]
        proc = subprocess.Popen(
            argv, env=self.env | {"_HANDLER": handler} | env, cwd=self.task_root
        )
        self.runtimes.append(proc)
        (self.proc_root / str(proc.pid)).symlink_to(f"/proc/{proc.pid}")
        return proc

    def invoke(self, payload: Any = None, headers: dict[str, str] | None = None) -> Future[Any]:
        return self.pool.submit(self.agent.invoke, payload or {}, headers)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in self.runtimes:
            proc.kill()
            proc.wait()


@pytest.fixture
def pod(start_agent: Any, tmp_path: Path, task_root: Path) -> Iterator[Any]:
    proc_root = tmp_path / "proc"
    proc_root.mkdir()
    (task_root / "app.py").write_text(APP)
    (task_root / "raw_runtime.py").write_text(RAW_RUNTIME)
    pods: list[Pod] = []

    def make(**env: str) -> Pod:
        agent = start_agent(
            runtime="external", wait=False, KUBELAMBDA_PROC_ROOT=str(proc_root), **env
        )
        while agent.health() == 0:
            time.sleep(0.01)
        memory = int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        # What the operator sets on the function container.
        runtime_env = build_runtime_env(
            {"PATH": "/usr/bin:/bin"},
            runtime="image",
            function_name="fn",
            version="$LATEST",
            memory_mb=memory,
            handler="",
            region="us-east-1",
            initialization_type="on-demand",
            task_root=str(task_root),
            runtime_dir=str(task_root),
        )
        runtime_env["AWS_LAMBDA_RUNTIME_API"] = f"127.0.0.1:{agent.api_port}"
        runtime_env["AWS_LAMBDA_LOG_STREAM_NAME"] = "2026/01/01/[$LATEST]0"
        made = Pod(agent, task_root, proc_root, runtime_env)
        pods.append(made)
        return made

    yield make
    for made in pods:
        made.close()


def reports(agent: Any) -> list[tuple[str, float | None]]:
    return [(m[1], float(m[2]) if m[2] else None) for m in REPORT.finditer(agent.logs())]


def wait_for(condition, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.01)


def test_ready_after_the_first_next_with_init_duration(pod):
    p = pod()
    assert p.agent.health() == 503  # no runtime yet
    p.start_runtime(INIT_SECONDS="0.4")
    time.sleep(0.2)
    assert p.agent.health() == 503  # the runtime is still in its init
    p.agent.wait_ready()
    for i in range(2):
        reply = p.invoke({"i": i}, {"X-Kubelambda-Request-Id": f"ext-{i}"}).result(5)
        assert reply.status == 200
        assert reply.json()["event"] == {"i": i}
        assert "x-amz-function-error" not in reply.headers
    p.agent.wait_log("REPORT RequestId: ext-1")
    (first, init_ms), (second, no_init) = reports(p.agent)
    assert (first, second) == ("ext-0", "ext-1")
    assert init_ms is not None
    assert 400 <= init_ms < 5000  # the runtime's start to its first /next
    assert no_init is None


def test_invocation_waits_for_the_runtime(pod):
    p = pod()
    pending = p.invoke({"early": True})
    time.sleep(0.2)
    assert not pending.done()
    p.start_runtime()
    assert pending.result(10).json()["event"] == {"early": True}


def test_timeout_kills_the_runtime_and_waits_for_its_restart(pod):
    p = pod(KUBELAMBDA_TIMEOUT_SECONDS="1")
    first = p.start_runtime()
    p.agent.wait_ready()
    started = time.monotonic()
    reply = p.invoke(
        {"action": "sleep", "seconds": 30}, {"X-Kubelambda-Request-Id": "slow-1"}
    ).result(10)
    assert time.monotonic() - started < 2.5
    assert reply.headers["x-amz-function-error"] == "Unhandled"
    assert reply.body == (
        b'{"errorType":"Sandbox.Timedout",'
        b'"errorMessage":"RequestId: slow-1 Error: Task timed out after 1.00 seconds"}'
    )
    assert first.wait(timeout=5) == -9  # the agent killed it
    # The kubelet restarts the container; an invocation meanwhile waits for its /next.
    pending = p.invoke({}, {"X-Kubelambda-Request-Id": "after", "X-Amz-Log-Type": "Tail"})
    time.sleep(0.3)
    assert not pending.done()
    second = p.start_runtime()
    reply = pending.result(10)
    assert reply.json()["pid"] == second.pid
    assert "\tInit Duration: " in base64.b64decode(reply.headers["x-amz-log-result"]).decode()
    assert p.agent.health() == 200


def test_a_crash_is_an_exit_error(pod):
    p = pod()
    runtime = p.start_runtime()
    p.agent.wait_ready()
    reply = p.invoke({"action": "exit"}, {"X-Kubelambda-Request-Id": "crash-1"}).result(10)
    assert reply.headers["x-amz-function-error"] == "Unhandled"
    assert reply.json()["errorType"] == "Runtime.ExitError"
    # The exit status shows when the zombie is seen before it is reaped (as here: this
    # process has not waited for it); in a pod the container runtime reaps it at once.
    assert reply.json()["errorMessage"] in (
        "RequestId: crash-1 Error: Runtime exited with error: exit status 3",
        "RequestId: crash-1 Error: Runtime exited without providing a reason",
    )
    assert runtime.wait(timeout=5) == 3
    p.start_runtime()
    assert p.invoke({"ok": 1}).result(10).json()["event"] == {"ok": 1}
    _, init_ms = reports(p.agent)[-1]
    assert init_ms is not None  # the restarted runtime's init


def test_an_idle_runtime_that_restarts_gets_a_new_init(pod):
    p = pod()
    first = p.start_runtime()
    p.agent.wait_ready()
    assert p.invoke({}).result(10).status == 200
    time.sleep(0.1)  # the runtime is back in /next
    first.kill()
    first.wait()
    p.start_runtime()
    assert p.invoke({}, {"X-Kubelambda-Request-Id": "new"}).result(10).status == 200
    p.agent.wait_log("REPORT RequestId: new")
    assert reports(p.agent)[-1][1] is not None


def test_an_idle_runtime_restarted_with_an_init_error(pod):
    p = pod()
    first = p.start_runtime("awslambdaric")
    p.agent.wait_ready()
    assert p.invoke({}).result(10).status == 200
    time.sleep(0.1)
    first.kill()
    first.wait()
    pending = p.invoke({})
    time.sleep(0.1)
    p.start_runtime("awslambdaric", "nomod.handler")
    assert pending.result(10).json()["errorType"] == "Runtime.ImportModuleError"


def test_over_the_memory_size_is_out_of_memory(pod):
    p = pod(AWS_LAMBDA_FUNCTION_MEMORY_SIZE="64")
    runtime = p.start_runtime()
    p.agent.wait_ready()
    reply = p.invoke({"action": "hold", "mb": 128}, {"X-Kubelambda-Request-Id": "oom"})
    assert reply.result(10).json() == {
        "errorType": "Runtime.OutOfMemory",
        "errorMessage": "RequestId: oom Error: Runtime exited with error: signal: killed",
    }
    assert runtime.wait(timeout=5) == -9
    p.start_runtime()
    assert p.invoke({"action": "hold", "mb": 16}).result(10).status == 200


def test_awslambdaric(pod):
    p = pod(KUBELAMBDA_TIMEOUT_SECONDS="1")
    p.start_runtime("awslambdaric")
    p.agent.wait_ready()
    reply = p.invoke({"x": 1}, {"X-Kubelambda-Request-Id": "ric-1"}).result(10)
    assert reply.json()["request_id"] == "ric-1"
    assert reply.json()["event"] == {"x": 1}
    # Timeout: killed, then restarted.
    ric = p.runtimes[-1]
    reply = p.invoke({"sleep": 10}).result(10)
    assert reply.json()["errorType"] == "Sandbox.Timedout"
    assert ric.wait(timeout=5) == -9
    p.start_runtime("awslambdaric")
    assert p.invoke({"y": 2}).result(10).json()["event"] == {"y": 2}
    # Crash: an exit error, then restarted.
    reply = p.invoke({"exit": True}).result(10)
    assert reply.json()["errorType"] == "Runtime.ExitError"
    p.start_runtime("awslambdaric")
    assert p.invoke({"z": 3}).result(10).json()["event"] == {"z": 3}


def test_awslambdaric_init_error(pod):
    p = pod()
    pending = p.invoke({})
    time.sleep(0.1)
    ric = p.start_runtime("awslambdaric", "nomod.handler")  # posts /init/error, then exits
    reply = pending.result(10)
    assert reply.headers["x-amz-function-error"] == "Unhandled"
    assert reply.json()["errorType"] == "Runtime.ImportModuleError"
    assert p.agent.health() == 200
    assert ric.wait(timeout=5) != 0
    # The container is restarted with working code.
    p.start_runtime("awslambdaric", "app.handler")
    assert p.invoke({"fixed": 1}).result(10).json()["event"] == {"fixed": 1}


def test_shutdown_leaves_the_runtime_alone(pod):
    p = pod()
    runtime = p.start_runtime()
    p.agent.wait_ready()
    assert p.agent.stop() == 0
    # Not killed (the kubelet stops the function container): it only lost its Runtime API.
    assert runtime.wait(timeout=5) == 1


def test_concurrent_invocation_is_refused(pod):
    p = pod()
    p.start_runtime()
    p.agent.wait_ready()
    slow = p.invoke({"action": "sleep", "seconds": 0.5})
    time.sleep(0.1)
    assert p.agent.invoke({}).status == 429
    assert slow.result(5).status == 200
