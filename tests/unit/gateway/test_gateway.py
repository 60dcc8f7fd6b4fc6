"""The gateway end to end: boto3 -> gateway -> real agents running the Python runtime."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from kubelambda.gateway.invoke import InvokeApi
from kubelambda.gateway.metrics import GatewayMetrics
from kubelambda.gateway.publisher import AsyncInvocation, PublishRejected
from tests.unit.gateway.conftest import RunningGateway, lambda_client
from tests.unit.gateway.objects import add_alias, add_function, add_slice
from tests.unit.ports import free_port

ARN = "arn:aws:lambda:us-east-1:000000000000:function"


def payload(reply: dict[str, Any]) -> Any:
    return json.loads(reply["Payload"].read())


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[int, str, str]:
    response = excinfo.value.response
    return (
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Code"],
        response["Error"]["Message"],
    )


def setup(gateway: RunningGateway, fn: str, version: str, port: int, **function: Any) -> None:
    """Route ``fn``'s ``version`` to the agent on ``port``."""

    def feed() -> None:
        if function:
            add_function(gateway.table, fn, **function)
        add_slice(
            gateway.table, fn, version, ["127.0.0.1"], port=port, name=f"{fn}-{version}-{port}"
        )

    gateway.call(feed)


@pytest.fixture
def gw(start_gateway, agents) -> RunningGateway:
    gateway = start_gateway()
    setup(gateway, "fn", "$LATEST", agents().port, versions=("1", "2"))
    setup(gateway, "fn", "1", agents(version="1").port)
    setup(gateway, "fn", "2", agents(version="2").port)

    def aliases() -> None:
        add_alias(gateway.table, "fn", "live", "1")
        add_alias(gateway.table, "fn", "canary", "1", additional="2", weight=0.5)

    gateway.call(aliases)
    return gateway


def test_request_response(gw):
    client = lambda_client(gw.url)
    reply = client.invoke(FunctionName="fn", Payload=b'{"a": 1}')
    assert reply["StatusCode"] == 200
    assert reply["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in reply
    out = payload(reply)
    assert out["event"] == {"a": 1}
    assert out["version"] == "$LATEST"
    assert out["arn"] == f"{ARN}:fn"
    assert out["request_id"] == reply["ResponseMetadata"]["RequestId"]
    assert 2000 < out["remaining"] <= 3000  # the gateway's deadline: now + timeoutSeconds


def test_empty_payload_is_an_empty_event(gw):
    assert payload(lambda_client(gw.url).invoke(FunctionName="fn"))["event"] == {}


def test_dry_run(gw):
    reply = lambda_client(gw.url).invoke(FunctionName="fn", InvocationType="DryRun")
    assert reply["StatusCode"] == 204


def test_log_tail_and_client_context(gw):
    context = base64.b64encode(json.dumps({"custom": {"k": "v"}}).encode()).decode()
    reply = lambda_client(gw.url).invoke(
        FunctionName="fn",
        LogType="Tail",
        ClientContext=context,
        Payload=json.dumps({"print": "hello-from-the-function"}),
    )
    log = base64.b64decode(reply["LogResult"]).decode()
    assert "hello-from-the-function" in log
    assert "REPORT RequestId: " in log
    assert payload(reply)["client_context"] == {"k": "v"}


def test_function_error(gw):
    reply = lambda_client(gw.url).invoke(FunctionName="fn", Payload=b'{"fail": true}')
    assert reply["StatusCode"] == 200
    assert reply["FunctionError"] == "Unhandled"
    out = payload(reply)
    assert out["errorType"] == "ValueError"
    assert out["errorMessage"] == "asked to fail"


@pytest.mark.parametrize(
    ("name", "qualifier", "version", "arn"),
    [
        ("fn:1", None, "1", f"{ARN}:fn:1"),
        ("fn", "2", "2", f"{ARN}:fn:2"),
        ("fn", "$LATEST", "$LATEST", f"{ARN}:fn:$LATEST"),
        ("fn:live", None, "1", f"{ARN}:fn:live"),
        ("fn", "live", "1", f"{ARN}:fn:live"),
        (f"{ARN}:fn:2", None, "2", f"{ARN}:fn:2"),
        (f"{ARN}:fn", None, "$LATEST", f"{ARN}:fn"),
        ("000000000000:function:fn:live", None, "1", f"{ARN}:fn:live"),
    ],
)
def test_qualifiers(gw, name, qualifier, version, arn):
    kwargs = {"Qualifier": qualifier} if qualifier else {}
    reply = lambda_client(gw.url).invoke(FunctionName=name, Payload=b"{}", **kwargs)
    assert reply["ExecutedVersion"] == version
    out = payload(reply)
    assert out["version"] == version
    assert out["arn"] == arn


def test_alias_weights_reach_both_versions(gw):
    client = lambda_client(gw.url)
    seen = {client.invoke(FunctionName="fn:canary")["ExecutedVersion"] for _ in range(40)}
    assert seen == {"1", "2"}


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"FunctionName": "nope"},
            (404, "ResourceNotFoundException", f"Function not found: {ARN}:nope"),
        ),
        (
            {"FunctionName": "fn", "Qualifier": "7"},
            (404, "ResourceNotFoundException", f"Function not found: {ARN}:fn:7"),
        ),
        (
            {"FunctionName": "fn:1", "Qualifier": "2"},
            (
                400,
                "InvalidParameterValueException",
                "The derived qualifier from the function name does not match the specified"
                " qualifier.",
            ),
        ),
        (
            {"FunctionName": "fn", "Payload": b"not json"},
            (
                400,
                "InvalidRequestContentException",
                "Could not parse request body into json: the payload is not valid JSON",
            ),
        ),
        (
            {"FunctionName": "fn", "Payload": b'"' + b"x" * 6_291_455 + b'"'},
            (
                413,
                "RequestEntityTooLargeException",
                "Request must be smaller than 6291456 bytes for the InvokeFunction operation",
            ),
        ),
        (
            {"FunctionName": "fn", "InvocationType": "Event"},
            (
                501,
                "ServiceException",
                "Asynchronous (Event) invocation is not available: this gateway has no event"
                " queue configured.",
            ),
        ),
    ],
)
def test_service_errors(gw, kwargs, expected):
    with pytest.raises(ClientError) as excinfo:
        lambda_client(gw.url).invoke(**kwargs)
    assert error_of(excinfo) == expected
    assert excinfo.value.response["ResponseMetadata"]["RequestId"]


def test_reserved_concurrency_zero_throttles(gw, agents):
    setup(gw, "off", "$LATEST", agents().port, reserved=0)
    with pytest.raises(ClientError) as excinfo:
        lambda_client(gw.url).invoke(FunctionName="off")
    assert error_of(excinfo) == (429, "TooManyRequestsException", "Rate Exceeded.")
    assert excinfo.value.response["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"


def test_namespace_prefix(gw, agents):
    def feed() -> None:
        add_function(gw.table, "team-fn", namespace="team-a")
        add_slice(
            gw.table, "team-fn", "$LATEST", ["127.0.0.1"], port=agents().port, namespace="team-a"
        )

    gw.call(feed)
    reply = lambda_client(gw.url + "/namespaces/team-a").invoke(FunctionName="team-fn")
    assert payload(reply)["arn"] == f"{ARN}:team-fn"
    with pytest.raises(ClientError) as excinfo:
        lambda_client(gw.url).invoke(FunctionName="team-fn")  # not in the default namespace
    assert error_of(excinfo)[0] == 404
    with pytest.raises(ClientError) as excinfo:
        lambda_client(gw.url + "/namespaces/team-a").invoke(FunctionName="fn")
    assert error_of(excinfo)[0] == 404


def test_event_is_published(start_gateway, agents):
    published: list[AsyncInvocation] = []

    class Publisher:
        async def publish(self, invocation: AsyncInvocation) -> None:
            if invocation.payload == b'{"full": true}':
                raise PublishRejected("queue full", throttled=True)
            published.append(invocation)

        async def close(self) -> None:
            pass

    gateway = start_gateway(publisher=Publisher())
    setup(gateway, "fn", "$LATEST", agents().port, versions=("1",))
    client = lambda_client(gateway.url)
    reply = client.invoke(
        FunctionName="fn:1", InvocationType="Event", Payload=b'{"k": 1}', ClientContext="e30="
    )
    assert reply["StatusCode"] == 202
    (event,) = published
    assert event.request_id == reply["ResponseMetadata"]["RequestId"]
    assert (event.namespace, event.function, event.qualifier) == ("default", "fn", "1")
    assert event.payload == b'{"k": 1}'
    assert event.client_context == "e30="
    assert abs(event.received_ms / 1000 - time.time()) < 5
    with pytest.raises(ClientError) as excinfo:
        client.invoke(FunctionName="fn", InvocationType="Event", Payload=b"x" * 262_145)
    assert error_of(excinfo)[:2] == (413, "RequestEntityTooLargeException")
    with pytest.raises(ClientError) as excinfo:
        client.invoke(FunctionName="fn", InvocationType="Event", Payload=b'{"full": true}')
    assert error_of(excinfo) == (429, "TooManyRequestsException", "queue full")


def test_busy_pod_queues_invocations(start_gateway, agents):
    gateway = start_gateway()
    setup(gateway, "slow", "$LATEST", agents(timeout=5).port, timeout=5)
    client = lambda_client(gateway.url)
    started = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        calls = [
            pool.submit(client.invoke, FunctionName="slow", Payload=b'{"sleep": 0.3}')
            for _ in range(3)
        ]
        time.sleep(0.15)
        assert gateway.call(gateway.gateway.dispatcher.in_flight) == {
            ("default", "slow", "$LATEST"): 1
        }
        assert gateway.call(gateway.gateway.dispatcher.queued) == {
            ("default", "slow", "$LATEST"): 2
        }
        replies = [call.result() for call in calls]
    assert [r["StatusCode"] for r in replies] == [200, 200, 200]
    assert time.monotonic() - started >= 0.9  # one at a time: perInstance 1


def test_full_queue_throttles(start_gateway, agents):
    gateway = start_gateway(queue_length=0)
    setup(gateway, "slow", "$LATEST", agents(timeout=5).port, timeout=5)
    client = lambda_client(gateway.url)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.invoke, FunctionName="slow", Payload=b'{"sleep": 0.5}')
        time.sleep(0.2)
        with pytest.raises(ClientError) as excinfo:
            client.invoke(FunctionName="slow")
        assert first.result()["StatusCode"] == 200
    assert error_of(excinfo)[:2] == (429, "TooManyRequestsException")
    assert excinfo.value.response["Reason"] == "FunctionInvocationRateLimitExceeded"


def test_per_instance_concurrency_uses_one_pod_twice(start_gateway, agents):
    gateway = start_gateway()
    setup(
        gateway, "wide", "$LATEST", agents(concurrency=2, timeout=5).port, per_instance=2, timeout=5
    )
    client = lambda_client(gateway.url)
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        calls = [
            pool.submit(client.invoke, FunctionName="wide", Payload=b'{"sleep": 0.5}')
            for _ in range(2)
        ]
        pids = {payload(call.result())["pid"] for call in calls}
    assert len(pids) == 2  # both runtimes of the one pod, at once
    assert time.monotonic() - started < 0.95


def test_scale_from_zero_holds_the_request(start_gateway, agents):
    woken: list[tuple[str, str, str]] = []

    class Waker:
        def wake(self, namespace: str, function: str, version: str) -> None:
            woken.append((namespace, function, version))

    gateway = start_gateway(waker=Waker())
    gateway.call(lambda: add_function(gateway.table, "cold"))
    client = lambda_client(gateway.url)
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(client.invoke, FunctionName="cold")
        time.sleep(0.3)
        assert not call.done()
        setup(gateway, "cold", "$LATEST", agents().port)
        assert call.result(timeout=10)["StatusCode"] == 200
    assert woken == [("default", "cold", "$LATEST")]


def test_no_ready_pod_in_time(start_gateway):
    gateway = start_gateway(cold_start_s=0.2)
    gateway.call(lambda: add_function(gateway.table, "cold", timeout=1))
    started = time.monotonic()
    with pytest.raises(ClientError) as excinfo:
        lambda_client(gateway.url).invoke(FunctionName="cold")
    status, code, message = error_of(excinfo)
    assert (status, code) == (502, "ResourceNotReadyException")
    assert message.startswith("Function cold:$LATEST has no ready instance")
    assert 0.9 < time.monotonic() - started < 3  # max(timeout, cold start)


def test_refused_pod_is_skipped(start_gateway, agents):
    gateway = start_gateway()
    setup(gateway, "fn", "$LATEST", free_port())  # nothing listens there
    setup(gateway, "fn", "$LATEST", agents().port, versions=())
    client = lambda_client(gateway.url)
    assert {client.invoke(FunctionName="fn")["StatusCode"] for _ in range(5)} == {200}


def test_function_timeout(start_gateway, agents):
    gateway = start_gateway()
    setup(gateway, "fn", "$LATEST", agents(timeout=1).port, timeout=1)
    started = time.monotonic()
    reply = lambda_client(gateway.url).invoke(FunctionName="fn", Payload=b'{"sleep": 5}')
    assert reply["FunctionError"] == "Unhandled"
    out = payload(reply)
    assert out["errorType"] == "Sandbox.Timedout"
    assert out["errorMessage"].endswith("Task timed out after 1.00 seconds")
    assert time.monotonic() - started < 3


def test_pod_that_never_answers(start_gateway):
    gateway = start_gateway(timeout_grace_s=0.2)
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        setup(gateway, "fn", "$LATEST", silent.getsockname()[1], timeout=1)
        with pytest.raises(ClientError) as excinfo:
            lambda_client(gateway.url).invoke(FunctionName="fn")
    assert error_of(excinfo) == (
        502,
        "ServiceException",
        "The function's pod did not answer in time.",
    )


def http(
    gateway: RunningGateway, path: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        gateway.url + path, method=method, data=b"" if method == "POST" else None
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def test_health_and_readiness(gw):
    assert http(gw, "/healthz")[0] == 200
    assert http(gw, "/readyz")[0] == 200

    def unsync() -> None:
        gw.gateway.api.synced = False

    gw.call(unsync)
    assert http(gw, "/readyz")[0] == 503


def test_other_paths(gw):
    # Not the Invoke API: an HTTP API request, and the default API has no routes.
    status, headers, body = http(gw, "/nope")
    assert (status, json.loads(body)) == (404, {"message": "Not Found"})
    assert headers["apigw-requestid"]
    assert http(gw, "/2015-03-31/functions/fn/invocations")[0] == 405
    assert http(gw, "/namespaces//2015-03-31/functions/fn/invocations", "POST")[0] == 404
    assert http(gw, "/2015-03-31/functions/fn%3A1/invocations", "POST")[0] == 200


def raw_exchange(gateway: RunningGateway, data: bytes, responses: int) -> bytes:
    with socket.create_connection(("127.0.0.1", gateway.gateway.port), timeout=10) as conn:
        conn.sendall(data)
        received = b""
        while received.count(b"HTTP/1.1 ") < responses or not received.endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
    return received


def test_pipelined_requests_are_answered_in_order(gw):
    def invoke(n: int) -> bytes:
        body = json.dumps({"n": n}).encode()
        return (
            b"POST /2015-03-31/functions/fn/invocations HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    received = raw_exchange(
        gw, invoke(1) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + invoke(2), 3
    )
    first, second, third = received.split(b"HTTP/1.1 ")[1:]
    assert b'"n": 1' in first
    assert b'"status":"ok"' in second
    assert b'"n": 2' in third


def test_chunked_request_body(gw):
    received = raw_exchange(
        gw,
        b"POST /2015-03-31/functions/fn/invocations HTTP/1.1\r\nHost: x\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n4\r\n: 7}\r\n0\r\n\r\n',
        1,
    )
    assert received.startswith(b"HTTP/1.1 200 OK")
    assert b'"event": {"a": 7}' in received


def test_malformed_request(gw):
    received = raw_exchange(gw, b"NOT HTTP AT ALL\r\n\r\n", 1)
    assert received.startswith(b"HTTP/1.1 400 Bad Request")
    assert b"Connection: close" in received


def test_metrics(gw):
    client = lambda_client(gw.url)
    client.invoke(FunctionName="fn")
    client.invoke(FunctionName="fn", Payload=b'{"fail": true}')
    with pytest.raises(ClientError):
        client.invoke(FunctionName="nope")
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.gateway.metrics_port}/metrics") as response:
        text = response.read().decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    fn = (("function", "fn"), ("namespace", "default"), ("version", "$LATEST"))

    def value(name: str, *extra: tuple[str, str]) -> float:
        return samples[(name, tuple(sorted(fn + extra)))]

    assert value("kubelambda_gateway_invocations_total", ("type", "RequestResponse")) == 2
    assert value("kubelambda_gateway_invocation_errors_total", ("kind", "function")) == 1
    assert value("kubelambda_gateway_invocation_duration_seconds_count") == 2
    rejected = (
        "kubelambda_gateway_rejected_requests_total",
        (("code", "ResourceNotFoundException"),),
    )
    assert samples[rejected] == 1


def test_drain_finishes_in_flight_invocations(start_gateway, agents):
    gateway = start_gateway()
    setup(gateway, "slow", "$LATEST", agents(timeout=5).port, timeout=5)
    client = lambda_client(gateway.url)
    with ThreadPoolExecutor(2) as pool:
        call = pool.submit(client.invoke, FunctionName="slow", Payload=b'{"sleep": 0.5}')
        time.sleep(0.2)
        drained = threading.Event()
        draining = pool.submit(lambda: (gateway.run(gateway.gateway.drain()), drained.set()))
        time.sleep(0.1)
        assert not drained.is_set()
        assert call.result()["StatusCode"] == 200
        draining.result(timeout=10)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", gateway.gateway.port), timeout=2).close()


def test_a_failure_while_relaying_still_answers_and_frees_the_slots(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path's answer is handled inside the upstream parser's callback, which would
    swallow an exception: the caller still gets a 500 and every slot is given back."""
    client = lambda_client(gw.url)
    client.invoke(FunctionName="fn", Payload=b"{}")  # an idle pooled connection to the agent

    def broken(*args: Any) -> Any:
        raise RuntimeError("relay bug")

    monkeypatch.setattr(InvokeApi, "_relay", broken)
    monkeypatch.setattr(GatewayMetrics, "invoked", broken)
    status, _, body = http(gw, "/2015-03-31/functions/fn/invocations", "POST")
    assert (status, body) == (500, b'{"message":"Internal Server Error"}')
    assert gw.call(gw.gateway.dispatcher.in_flight) == {}
    assert gw.call(lambda: gw.gateway.counter.total) == 0  # type: ignore[attr-defined]
