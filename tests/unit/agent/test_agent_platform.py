"""Platform behaviour of the agent: timeouts, crashes, limits, logs, concurrency, shutdown."""

from __future__ import annotations

import base64
import http.client
import json
import re
import signal
import threading
import time

import pytest

REPORT_RE = (
    r"REPORT RequestId: (?P<id>[0-9a-zA-Z-]+)\tDuration: \d+\.\d{2} ms"
    r"\tBilled Duration: \d+ ms\tMemory Size: (?P<memory>\d+) MB\tMax Memory Used: \d+ MB"
    r"(?P<init>\tInit Duration: \d+\.\d{2} ms)?(?P<status>\tStatus: [^\n]*)?\n"
)

APP = """
import os, signal, sys, time

def handler(event, context):
    action = event.get("action")
    if action == "sleep":
        time.sleep(event["seconds"])
    elif action == "exit":
        sys.stdout.write("about to exit\\n")
        os._exit(event.get("code", 1))
    elif action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "hog":
        hog = b"x" * (event["mb"] << 20)
        time.sleep(0.6)  # long enough for the agent's memory sampler
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "big":
        return "x" * event["size"]
    elif action == "print":
        print("y" * event["size"])
    return {"pid": os.getpid()}
"""


# The runtime images run the agent on uvloop; asyncio's own loop is the fallback. Killing and
# reaping runtimes (SIGCHLD) is where the two loops differ, so both run those tests.
LOOPS = pytest.mark.parametrize("loop", ["uvloop", "asyncio"])


@LOOPS
def test_timeout_kills_and_restarts(start_agent, loop):
    agent = start_agent(
        files={"app.py": APP}, KUBELAMBDA_TIMEOUT_SECONDS="1", KUBELAMBDA_AGENT_LOOP=loop
    )
    first = agent.invoke({}).json()["pid"]
    started = time.monotonic()
    reply = agent.invoke(
        {"action": "sleep", "seconds": 5},
        {"X-Kubelambda-Request-Id": "slow-1", "X-Amz-Log-Type": "Tail"},
    )
    assert time.monotonic() - started < 2.5
    assert reply.status == 200
    assert reply.headers["x-amz-function-error"] == "Unhandled"
    assert reply.body == (
        b'{"errorType":"Sandbox.Timedout",'
        b'"errorMessage":"RequestId: slow-1 Error: Task timed out after 1.00 seconds"}'
    )
    tail = base64.b64decode(reply.headers["x-amz-log-result"]).decode()
    assert "Task timed out after 1.00 seconds" in tail
    assert "\tStatus: timeout\n" in tail
    # The next invocation runs on a fresh runtime: a cold start again.
    reply = agent.invoke({}, {"X-Amz-Log-Type": "Tail"})
    assert reply.status == 200
    assert reply.json()["pid"] != first
    tail = base64.b64decode(reply.headers["x-amz-log-result"]).decode()
    assert "\tInit Duration: " in tail
    reply = agent.invoke({}, {"X-Amz-Log-Type": "Tail"})
    assert "Init Duration" not in base64.b64decode(reply.headers["x-amz-log-result"]).decode()


def test_timeout_of_an_invocation_after_earlier_fast_ones(start_agent):
    # One timer per runtime, left running by fast invocations: when it fires for one that
    # completed, it moves on to the deadline of the invocation running then.
    agent = start_agent(files={"app.py": APP}, KUBELAMBDA_TIMEOUT_SECONDS="1")
    agent.invoke({})
    time.sleep(0.6)
    started = time.monotonic()
    reply = agent.invoke({"action": "sleep", "seconds": 5})
    elapsed = time.monotonic() - started
    assert reply.json()["errorType"] == "Sandbox.Timedout"
    assert 0.95 < elapsed < 2.5


def test_a_deadline_sooner_than_the_running_timer(start_agent):
    agent = start_agent(files={"app.py": APP}, KUBELAMBDA_TIMEOUT_SECONDS="30")
    agent.invoke({})  # leaves the runtime's timer set 30 s ahead
    started = time.monotonic()
    deadline = int(time.time() * 1000) + 400
    reply = agent.invoke(
        {"action": "sleep", "seconds": 5}, {"X-Kubelambda-Deadline-Ms": str(deadline)}
    )
    elapsed = time.monotonic() - started
    assert reply.json()["errorType"] == "Sandbox.Timedout"
    assert 0.35 < elapsed < 2.0


@LOOPS
def test_crash_is_an_exit_error_then_recovers(start_agent, loop):
    agent = start_agent(files={"app.py": APP}, KUBELAMBDA_AGENT_LOOP=loop)
    reply = agent.invoke({"action": "exit"}, {"X-Kubelambda-Request-Id": "crash-1"})
    assert reply.headers["x-amz-function-error"] == "Unhandled"
    assert reply.json() == {
        "errorType": "Runtime.ExitError",
        "errorMessage": "RequestId: crash-1 Error: Runtime exited with error: exit status 1",
    }
    assert "about to exit" in agent.logs()
    assert agent.invoke({}).status == 200
    reply = agent.invoke({"action": "kill"}, {"X-Kubelambda-Request-Id": "crash-2"})
    assert reply.json()["errorMessage"] == (
        "RequestId: crash-2 Error: Runtime exited with error: signal: killed"
    )
    assert reply.json()["errorType"] == "Runtime.ExitError"
    assert agent.invoke({}).status == 200


@pytest.mark.parametrize("enforce", ["1", "0"])  # killed by the agent's cap / by the "kernel"
def test_sigkill_near_the_memory_size_is_out_of_memory(start_agent, enforce):
    agent = start_agent(
        files={"app.py": APP},
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="64",
        KUBELAMBDA_ENFORCE_MEMORY=enforce,
    )
    reply = agent.invoke(
        {"action": "hog", "mb": 64},
        {"X-Kubelambda-Request-Id": "oom-1", "X-Amz-Log-Type": "Tail"},
    )
    assert reply.json() == {
        "errorType": "Runtime.OutOfMemory",
        "errorMessage": "RequestId: oom-1 Error: Runtime exited with error: signal: killed",
    }
    # Logged like Lambda: the error lines, and the memory size as Max Memory Used.
    tail = base64.b64decode(reply.headers["x-amz-log-result"]).decode()
    assert (
        "RequestId: oom-1 Error: Runtime exited with error: signal: killed\n"
        "Runtime.OutOfMemory\nEND RequestId: oom-1\n"
    ) in tail
    assert "\tMemory Size: 64 MB\tMax Memory Used: 64 MB\t" in tail
    assert "\tStatus: error\tError Type: Runtime.OutOfMemory\n" in tail
    assert agent.invoke({}).status == 200


def test_response_size_limit(start_agent):
    agent = start_agent(files={"app.py": APP})
    # JSON adds two quotes: 6,291,556 bytes is the largest accepted response.
    reply = agent.invoke({"action": "big", "size": 6_291_554})
    assert reply.status == 200
    assert len(reply.body) == 6_291_556
    assert "x-amz-function-error" not in reply.headers
    reply = agent.invoke({"action": "big", "size": 6_291_555})
    assert reply.headers["x-amz-function-error"] == "Unhandled"
    assert reply.json()["errorType"] == "Function.ResponseSizeTooLarge"
    assert agent.invoke({}).status == 200


def test_request_size_limit(start_agent):
    agent = start_agent(files={"app.py": APP})
    reply = agent.invoke(b"x" * 6_291_457)
    assert reply.status == 413
    assert reply.headers["x-amzn-errortype"] == "RequestEntityTooLargeException"


def test_tail_is_the_last_4kb_of_the_invocation_log(start_agent):
    agent = start_agent(files={"app.py": APP})
    headers = {"X-Amz-Log-Type": "Tail", "X-Kubelambda-Request-Id": "tail-1"}
    small = agent.invoke({"action": "print", "size": 10}, headers)
    log = base64.b64decode(small.headers["x-amz-log-result"]).decode()
    assert log.startswith("START RequestId: tail-1 Version: $LATEST\nyyyyyyyyyy\n")
    assert "\nEND RequestId: tail-1\nREPORT RequestId: tail-1\t" in log
    headers["X-Kubelambda-Request-Id"] = "tail-2"
    big = agent.invoke({"action": "print", "size": 10_000}, headers)
    log = base64.b64decode(big.headers["x-amz-log-result"]).decode()
    assert len(log) == 4096
    assert log.startswith("y")
    assert re.search(REPORT_RE, log)
    assert "START" not in log
    assert "x-amz-log-result" not in agent.invoke({}).headers


def test_report_lines(start_agent):
    agent = start_agent(files={"app.py": APP}, AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256")
    for i in range(3):
        agent.invoke({}, {"X-Kubelambda-Request-Id": f"rep-{i}"})
    log = agent.wait_log("REPORT RequestId: rep-2")
    reports = list(re.finditer(REPORT_RE, log))
    assert [m["id"] for m in reports] == ["rep-0", "rep-1", "rep-2"]
    assert all(m["memory"] == "256" for m in reports)
    assert [bool(m["init"]) for m in reports] == [True, False, False]
    for i in range(3):
        assert f"START RequestId: rep-{i} Version: $LATEST\nEND RequestId: rep-{i}\n" in log
    max_used = re.findall(r"Max Memory Used: (\d+) MB", log)
    assert all(5 < int(mb) < 256 for mb in max_used)


def test_concurrency_and_429(start_agent):
    agent = start_agent(files={"app.py": APP}, concurrency=2)
    results = []

    def call():
        results.append(agent.invoke({"action": "sleep", "seconds": 1}))

    started = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.4)
    busy = agent.invoke({})
    for t in threads:
        t.join()
    assert time.monotonic() - started < 1.9  # both ran in parallel
    assert [r.status for r in results] == [200, 200]
    assert len({r.json()["pid"] for r in results}) == 2
    assert busy.status == 429
    assert busy.headers["x-amzn-errortype"] == "TooManyRequestsException"
    assert busy.json()["Reason"] == "ConcurrentInvocationLimitExceeded"
    assert agent.invoke({}).status == 200


def test_not_ready_until_init_finished(start_agent):
    app = "import time\ntime.sleep(1)\ndef handler(e, c):\n    return 1\n"
    agent = start_agent(files={"app.py": app}, wait=False)
    while agent.health() == 0:  # not listening yet
        time.sleep(0.01)
    assert agent.health() == 503
    agent.wait_ready()
    assert agent.invoke({}).body == b"1"


def test_invocation_waits_for_a_cold_start(start_agent):
    app = "import time\ntime.sleep(0.5)\ndef handler(e, c):\n    return 1\n"
    agent = start_agent(files={"app.py": app}, wait=False)
    while agent.health() != 503:  # listening, runtime still in init
        time.sleep(0.01)
    reply = agent.invoke({}, {"X-Amz-Log-Type": "Tail"})
    assert reply.body == b"1"
    assert "Init Duration" in base64.b64decode(reply.headers["x-amz-log-result"]).decode()


def test_sigterm_finishes_in_flight_invocations(start_agent):
    agent = start_agent(files={"app.py": APP})
    result = []
    thread = threading.Thread(
        target=lambda: result.append(agent.invoke({"action": "sleep", "seconds": 1}))
    )
    thread.start()
    time.sleep(0.3)
    agent.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    assert agent.health() in (0, 503)  # listener closed, or draining
    thread.join()
    assert result[0].status == 200
    assert "pid" in result[0].json()
    assert agent.proc.wait(timeout=5) == 0


def test_unknown_paths(start_agent):
    agent = start_agent(files={"app.py": APP})
    assert agent.request("GET", "/nope").status == 404
    assert agent.request("GET", "/2015-03-31/functions/fn/invocations").status == 405


def test_deadline_passing_during_a_cold_start(start_agent):
    app = "import time\ntime.sleep(1.5)\ndef handler(e, c):\n    return 1\n"
    agent = start_agent(files={"app.py": app}, wait=False)
    while agent.health() != 503:
        time.sleep(0.01)
    deadline = int(time.time() * 1000) + 300
    reply = agent.invoke({}, {"X-Kubelambda-Deadline-Ms": str(deadline)})
    assert reply.json()["errorType"] == "Sandbox.Timedout"
    # The killed init is not this invocation's failure: it gets a fresh runtime.
    reply = agent.invoke({})
    assert reply.status == 200
    assert reply.body == b"1"


def test_keep_alive_connection_serves_many_invocations(start_agent):
    agent = start_agent(files={"app.py": APP})
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=10)
    try:
        for i in range(20):
            conn.request("POST", "/2015-03-31/functions/fn/invocations", b'{"i": %d}' % i)
            resp = conn.getresponse()
            assert resp.status == 200
            assert "pid" in json.loads(resp.read())
    finally:
        conn.close()
