"""The Runtime API at the wire level: the test itself plays the runtime process.

The agent starts a `provided` runtime that only sleeps; the test then talks to that
runtime's Runtime API port with its own minimal client and checks exact status codes and
headers, while invocations go through the invoke endpoint from a thread.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import select
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from kubelambda.agent.invoke import new_request_id, new_trace_id

SLEEPER = {"bootstrap": "#!/bin/sh\nexec sleep 600\n"}
BASE = "/2018-06-01/runtime"


class RawRuntime:
    """A hand-written Runtime API client on one keep-alive connection."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def call(self, method, path, body=None, headers=None):
        self.conn.request(method, BASE + path, body, headers or {})
        resp = self.conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()

    def next(self):
        return self.call("GET", "/invocation/next")


@pytest.fixture
def runtime_side(start_agent):
    agent = start_agent("unused", SLEEPER, runtime="provided", wait=False)
    while agent.health() == 0:
        time.sleep(0.01)
    runtime = RawRuntime(agent.api_port)
    pool = ThreadPoolExecutor(4)

    def invoke(payload=b"{}", headers=None) -> Future:
        return pool.submit(agent.invoke, payload, headers)

    yield agent, runtime, invoke
    runtime.conn.close()
    pool.shutdown(wait=False, cancel_futures=True)


def test_next_delivers_the_event_with_lambda_headers(runtime_side):
    agent, runtime, invoke = runtime_side
    context = {"custom": {"a": "b"}}
    pending = invoke(
        b'{"k": [1, 2]}',
        {
            "X-Kubelambda-Request-Id": "id-1",
            "X-Amz-Client-Context": base64.b64encode(json.dumps(context).encode()).decode(),
            "X-Amzn-Trace-Id": "Root=1-5e1b4151-5ac6c58f5b5dbd6a0e5ba5a8;Parent=1;Sampled=1",
        },
    )
    before = int(time.time() * 1000)
    status, headers, body = runtime.next()
    assert status == 200
    assert body == b'{"k": [1, 2]}'  # the payload's bytes, untouched
    assert headers["content-type"] == "application/json"
    assert headers["lambda-runtime-aws-request-id"] == "id-1"
    assert before + 2000 < int(headers["lambda-runtime-deadline-ms"]) <= before + 3100
    assert headers["lambda-runtime-invoked-function-arn"] == (
        "arn:aws:lambda:us-east-1:000000000000:function:fn"
    )
    assert headers["lambda-runtime-trace-id"].startswith("Root=1-5e1b4151-")
    assert json.loads(headers["lambda-runtime-client-context"]) == context
    assert "lambda-runtime-cognito-identity" not in headers
    assert agent.health() == 200  # the runtime called /next: init finished

    status, headers, body = runtime.call("POST", "/invocation/id-1/response", b"[1, 2, 3]")
    assert (status, body) == (202, b'{"status":"OK"}')
    assert headers["content-type"] == "application/json"
    reply = pending.result(timeout=5)
    assert (reply.status, reply.body) == (200, b"[1, 2, 3]")

    # A second reply, an unknown id, and an error for a finished invocation: 400.
    assert runtime.call("POST", "/invocation/id-1/response", b"{}")[0] == 400
    assert runtime.call("POST", "/invocation/other/response", b"{}")[0] == 400
    assert runtime.call("POST", "/invocation/id-1/error", b"{}")[0] == 400


def test_generated_ids_and_optional_headers(runtime_side):
    _, runtime, invoke = runtime_side
    pending = invoke(b"", {"X-Kubelambda-Cognito-Identity": '{"cognitoIdentityId": "c"}'})
    _, headers, body = runtime.next()
    request_id = headers["lambda-runtime-aws-request-id"]
    assert len(request_id) == 36
    assert body == b"{}"
    assert "lambda-runtime-client-context" not in headers
    assert json.loads(headers["lambda-runtime-cognito-identity"]) == {"cognitoIdentityId": "c"}
    assert headers["lambda-runtime-trace-id"].startswith("Root=1-")
    runtime.call("POST", f"/invocation/{request_id}/response", b"1")
    assert pending.result(timeout=5).headers["x-amzn-requestid"] == request_id


def test_error_report(runtime_side):
    _, runtime, invoke = runtime_side
    pending = invoke(b"{}", {"X-Kubelambda-Request-Id": "id-e"})
    runtime.next()
    document = b'{"errorMessage":"m","errorType":"Custom","stackTrace":[]}'
    status, _, body = runtime.call(
        "POST",
        "/invocation/id-e/error",
        document,
        {"Lambda-Runtime-Function-Error-Type": "Custom"},
    )
    assert (status, body) == (202, b'{"status":"OK"}')
    reply = pending.result(timeout=5)
    assert reply.headers["x-amz-function-error"] == "Unhandled"
    assert reply.body == document


def test_error_without_a_body(runtime_side):
    _, runtime, invoke = runtime_side
    pending = invoke(b"{}", {"X-Kubelambda-Request-Id": "id-e2"})
    runtime.next()
    headers = {"Lambda-Runtime-Function-Error-Type": "Runtime.Custom"}
    assert runtime.call("POST", "/invocation/id-e2/error", b"", headers)[0] == 202
    assert pending.result(timeout=5).json() == {"errorType": "Runtime.Custom", "errorMessage": ""}


def test_response_too_large_is_413(runtime_side):
    _, runtime, invoke = runtime_side
    pending = invoke(b"{}", {"X-Kubelambda-Request-Id": "id-big"})
    runtime.next()
    status, _, body = runtime.call("POST", "/invocation/id-big/response", b"x" * 6_291_557)
    assert status == 413
    assert json.loads(body)["errorType"] == "RequestEntityTooLarge"
    reply = pending.result(timeout=5)
    assert reply.json()["errorType"] == "Function.ResponseSizeTooLarge"
    # The connection stays usable and the runtime serves the next invocation.
    pending = invoke(b"{}", {"X-Kubelambda-Request-Id": "id-next"})
    assert runtime.next()[1]["lambda-runtime-aws-request-id"] == "id-next"
    assert runtime.call("POST", "/invocation/id-next/response", b"x" * 6_291_556)[0] == 202
    assert len(pending.result(timeout=5).body) == 6_291_556


def test_init_error_before_next(runtime_side):
    agent, runtime, invoke = runtime_side
    pending = invoke(b"{}")
    time.sleep(0.1)  # the invocation is assigned and waits for the cold start
    document = b'{"errorMessage":"cannot start","errorType":"Runtime.Broken","stackTrace":[]}'
    headers = {"Lambda-Runtime-Function-Error-Type": "Runtime.Broken"}
    status, _, body = runtime.call("POST", "/init/error", document, headers)
    assert (status, body) == (202, b'{"status":"OK"}')
    reply = pending.result(timeout=5)
    assert reply.headers["x-amz-function-error"] == "Unhandled"
    assert reply.body == document
    assert agent.health() == 200


def test_init_error_after_next_is_refused(runtime_side):
    _, runtime, invoke = runtime_side
    pending = invoke(b"{}", {"X-Kubelambda-Request-Id": "id-i"})
    runtime.next()
    assert runtime.call("POST", "/init/error", b"{}")[0] == 403
    runtime.call("POST", "/invocation/id-i/response", b"1")
    assert pending.result(timeout=5).body == b"1"


def test_unknown_routes(runtime_side):
    _, runtime, _ = runtime_side
    assert runtime.call("GET", "/invocation/x/response")[0] == 405
    assert runtime.call("POST", "/invocation/x/nope", b"")[0] == 404
    assert runtime.call("GET", "/../../etc")[0] == 404
    assert runtime.call("POST", "/invocation/next", b"")[0] == 405


def raw_exchange(port: int, data: bytes, expect_parts: int = 1) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while received.count(b"HTTP/1.1 ") < expect_parts or not received.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def read_reply(reader) -> tuple[int, dict[str, str], bytes]:
    """One Content-Length answer from a raw socket's reader."""
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, reader.read(int(headers.get("content-length", "0")))


def test_a_next_pipelined_behind_the_result_takes_the_following_event(runtime_side):
    # kubelambda's Python runtime sends each result and its next GET /next in one write.
    agent, runtime, invoke = runtime_side
    first = invoke(b'{"n":1}', {"X-Kubelambda-Request-Id": "id-p1"})
    runtime.next()
    next_request = b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", agent.api_port), timeout=5) as sock:
        reader = sock.makefile("rb")
        sock.sendall(
            b"POST /2018-06-01/runtime/invocation/id-p1/response HTTP/1.1\r\nHost: x\r\n"
            b'Content-Length: 5\r\n\r\n"one"' + next_request
        )
        assert first.result(timeout=5).body == b'"one"'
        # The 202 waits for the pipelined /next's answer, to go out in the same write.
        assert select.select([sock], [], [], 0.2)[0] == []
        second = invoke(b'{"n":2}', {"X-Kubelambda-Request-Id": "id-p2"})
        assert read_reply(reader)[0] == 202
        status, headers, body = read_reply(reader)
        assert (status, body) == (200, b'{"n":2}')
        assert headers["lambda-runtime-aws-request-id"] == "id-p2"
        sock.sendall(
            b"POST /2018-06-01/runtime/invocation/id-p2/error HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 0\r\n\r\n" + next_request
        )
        assert second.result(timeout=5).json()["errorType"] == "Runtime.Unknown"
        reader.close()


def test_chunked_and_expect_continue_bodies(runtime_side):
    agent, runtime, invoke = runtime_side
    pending = invoke(b"{}", {"X-Kubelambda-Request-Id": "id-c"})
    runtime.next()
    request = (
        b"POST /2018-06-01/runtime/invocation/id-c/response HTTP/1.1\r\n"
        b"Host: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4\r\n{"a"\r\n3;ext=1\r\n:1}\r\n0\r\n\r\n'
    )
    reply = raw_exchange(agent.api_port, request, expect_parts=2)
    assert reply.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\n")
    assert pending.result(timeout=5).body == b'{"a":1}'


def test_expect_continue_refused_when_too_large(runtime_side):
    agent, runtime, invoke = runtime_side
    pending = invoke(b"{}", {"X-Kubelambda-Request-Id": "id-x"})
    runtime.next()
    request = (
        b"POST /2018-06-01/runtime/invocation/id-x/response HTTP/1.1\r\n"
        b"Host: x\r\nExpect: 100-continue\r\nContent-Length: 7000000\r\n\r\n"
    )
    reply = raw_exchange(agent.api_port, request)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close\r\n" in reply
    assert pending.result(timeout=5).json()["errorType"] == "Function.ResponseSizeTooLarge"


def test_a_waiting_next_is_released_when_the_runtime_dies(start_agent):
    agent = start_agent("unused", SLEEPER, runtime="provided", wait=False)
    while agent.health() == 0:
        time.sleep(0.01)
    runtime = RawRuntime(agent.api_port)
    outcome = []
    waiter = threading.Thread(target=lambda: outcome.append(_try(runtime.next)))
    waiter.start()
    agent.wait_ready()
    agent.stop()
    waiter.join(timeout=5)
    runtime.conn.close()
    assert outcome
    assert isinstance(outcome[0], (ConnectionError, http.client.HTTPException))


def _try(fn):
    try:
        return fn()
    except Exception as exc:
        return exc


def test_generated_ids_are_version_4_uuids_and_distinct():
    ids = [new_request_id() for _ in range(500)]  # spans refills of the random pool
    assert len(set(ids)) == len(ids)
    for request_id in ids:
        parsed = uuid.UUID(request_id)
        assert str(parsed) == request_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    traces = {new_trace_id() for _ in range(300)}
    assert len(traces) == 300
    assert all(
        re.fullmatch(r"Root=1-[0-9a-f]{8}-[0-9a-f]{24};Parent=[0-9a-f]{16};Sampled=0", t)
        for t in traces
    )
