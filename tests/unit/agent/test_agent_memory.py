"""The memory cap: the agent kills a runtime whose RSS exceeds the function's memory size."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

APP = """
import os, time

if os.environ.get("INIT_MB"):
    AT_INIT = b"i" * (int(os.environ["INIT_MB"]) << 20)

def handler(event, context):
    action = event.get("action")
    if action == "hold":
        data = b"x" * (event["mb"] << 20)  # allocated and touched
        time.sleep(0.5)
        return {"held": len(data) >> 20}
    if action == "write":
        chunk = b"y" * (1 << 20)
        with open(event["path"], "wb") as f:
            for _ in range(event["mb"]):
                f.write(chunk)
        time.sleep(0.3)
        return {"written": os.path.getsize(event["path"]) >> 20}
    return {"pid": os.getpid()}
"""

MEMORY_MB = 64


def _start(start_agent, **env: str):
    return start_agent(files={"app.py": APP}, AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(MEMORY_MB), **env)


def test_twice_the_memory_size_is_killed_and_the_next_call_works(start_agent):
    agent = _start(start_agent)
    first = agent.invoke({}).json()["pid"]
    reply = agent.invoke(
        {"action": "hold", "mb": 2 * MEMORY_MB},
        {"X-Kubelambda-Request-Id": "oom-1", "X-Amz-Log-Type": "Tail"},
    )
    assert reply.status == 200
    assert reply.headers["x-amz-function-error"] == "Unhandled"
    assert reply.json() == {
        "errorType": "Runtime.OutOfMemory",
        "errorMessage": "RequestId: oom-1 Error: Runtime exited with error: signal: killed",
    }
    tail = base64.b64decode(reply.headers["x-amz-log-result"]).decode()
    assert (
        "RequestId: oom-1 Error: Runtime exited with error: signal: killed\n"
        "Runtime.OutOfMemory\nEND RequestId: oom-1\n"
    ) in tail
    assert f"\tMax Memory Used: {MEMORY_MB} MB\t" in tail
    after = agent.invoke({}, {"X-Amz-Log-Type": "Tail"})
    assert after.status == 200
    assert after.json()["pid"] != first  # a fresh runtime, with a cold start
    assert "\tInit Duration: " in base64.b64decode(after.headers["x-amz-log-result"]).decode()


def test_half_the_memory_size_is_fine(start_agent):
    agent = _start(start_agent)
    reply = agent.invoke({"action": "hold", "mb": MEMORY_MB // 2})
    assert reply.json() == {"held": MEMORY_MB // 2}
    assert "x-amz-function-error" not in reply.headers


def test_files_in_tmp_do_not_count(start_agent, tmp_path: Path):
    # /tmp is a memory-backed emptyDir: files written there are page cache, not RSS.
    where = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else tmp_path
    path = where / f"kubelambda-test-{os.getpid()}.bin"
    agent = _start(start_agent)
    try:
        reply = agent.invoke({"action": "write", "path": str(path), "mb": 2 * MEMORY_MB})
    finally:
        path.unlink(missing_ok=True)
    assert reply.json() == {"written": 2 * MEMORY_MB}


def test_the_cap_can_be_turned_off(start_agent):
    agent = _start(start_agent, KUBELAMBDA_ENFORCE_MEMORY="0")
    assert agent.invoke({"action": "hold", "mb": 2 * MEMORY_MB}).json() == {"held": 128}


def test_init_over_the_memory_size(start_agent):
    agent = _start(start_agent, INIT_MB=str(2 * MEMORY_MB))  # ready: the failed init settled
    log = agent.wait_log("Runtime.OutOfMemory")
    assert re.search(r"\nError: Runtime exited with error: signal: killed \(init used \d+ MB", log)
    for _ in range(2):  # each invocation re-runs the init, which is killed again
        reply = agent.invoke({}, {"X-Amz-Log-Type": "Tail"})
        assert reply.json()["errorType"] == "Runtime.OutOfMemory"
        tail = base64.b64decode(reply.headers["x-amz-log-result"]).decode()
        assert tail.startswith("START RequestId: ")
        assert "\nRuntime.OutOfMemory\nEND RequestId: " in tail
