"""Pure pieces: the message format, records, settings, configuration; the gateway publisher."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from kubelambda.api.function import Destination
from kubelambda.api.schedule import Schedule
from kubelambda.gateway.publisher import AsyncInvocation, PublishRejected
from kubelambda.gateway.publisher_nats import NatsPublisher
from kubelambda.invoker.config import ConfigError, load_config
from kubelambda.invoker.core import GatewayClient
from kubelambda.invoker.event import (
    DeadLetter,
    Event,
    MalformedEvent,
    dlq_subject,
    event_subject,
    subject_key,
)
from kubelambda.invoker.functions import FunctionSettings, settings_from_spec
from kubelambda.invoker.jetstream import EVENTS_STREAM, JetStreamBroker, StreamSettings
from kubelambda.invoker.main import load_functions_file
from kubelambda.invoker.records import Response, invocation_record

from .conftest import NatsServer, eventually, running_invoker

EVENT = Event(
    request_id="r-1",
    namespace="ns",
    function="fn",
    qualifier="live",
    payload=b'{"k": "v"}',
    enqueued_ms=1_700_000_000_123,
    attempts=2,
    throttles=5,
    not_before_ms=1_700_000_060_000,
    client_context="eyJjdXN0b20iOnt9fQ==",
    trace_id="Root=1-abc",
    last_status=200,
    last_error="ValueError: déjà\nvu 100%",
)


def test_event_headers_round_trip() -> None:
    headers = EVENT.headers()
    assert all(value.isascii() and "\n" not in value for value in headers.values())
    assert Event.from_message(headers, EVENT.payload) == EVENT
    minimal = Event("r", "ns", "fn", None, b"", 5)
    assert Event.from_message(minimal.headers(), b"") == minimal


def test_dead_letter_round_trip_truncates_to_1_kib() -> None:
    letter = DeadLetter(EVENT, "RetriesExhausted", "200", "é" * 2000, 1_700_000_100_000, 7)
    headers = letter.headers()
    assert headers["RequestID"] == "r-1"
    assert headers["Condition"] == "RetriesExhausted"
    assert headers["Attempts"] == "2"
    back = DeadLetter.from_message(headers, EVENT.payload, 7)
    assert back.error_message == "é" * 512  # 1024 bytes of UTF-8
    assert back.event == EVENT
    assert back.sequence == 7


def test_an_event_must_name_the_function_of_its_subject() -> None:
    """Whoever can publish to NATS must not reach another namespace's function through the
    invoker (it calls the gateway with the platform's own token)."""
    minimal = Event("r", "team-a", "fn", None, b"", 5)
    subject = event_subject("team-a", "fn")
    assert Event.from_message(minimal.headers(), b"", subject) == minimal
    with pytest.raises(MalformedEvent, match="the subject"):
        Event.from_message(minimal.headers(), b"", event_subject("mine", "fn"))
    forged = Event("r", "p%2Fx/y", "fn", None, b"", 5)
    with pytest.raises(MalformedEvent, match="not a namespace"):
        Event.from_message(forged.headers(), b"", event_subject("p%2Fx/y", "fn"))


def test_malformed_event() -> None:
    with pytest.raises(MalformedEvent):
        Event.from_message({"Kubelambda-Request-Id": "x"}, b"")
    with pytest.raises(MalformedEvent):
        Event.from_message(None, b"")


def test_subjects() -> None:
    assert event_subject("ns", "fn") == "kubelambda.events.ns.fn"
    assert subject_key("kubelambda.events.ns.fn") == ("ns", "fn")
    assert subject_key(dlq_subject("a", "b")) == ("a", "b")
    assert subject_key("kubelambda.events.ns") is None
    assert subject_key("other.events.ns.fn") is None


def test_invocation_record() -> None:
    event = Event("r-1", "ns", "fn", None, b'{"k": 1}', 0, attempts=1)
    record = json.loads(
        invocation_record(
            event=event,
            region="eu-west-1",
            condition="Success",
            response=Response(200, "3", None, b"not json"),
            now_ms=1_573_755_365_568,
        )
    )
    assert record == {
        "version": "1.0",
        "timestamp": "2019-11-14T18:16:05.568Z",
        "requestContext": {
            "requestId": "r-1",
            "functionArn": "arn:aws:lambda:eu-west-1:000000000000:function:fn:$LATEST",
            "condition": "Success",
            "approximateInvokeCount": 1,
        },
        "requestPayload": {"k": 1},
        "responseContext": {"statusCode": 200, "executedVersion": "3"},
        "responsePayload": "not json",
    }


def test_settings_from_spec() -> None:
    spec = {
        "timeoutSeconds": 30,
        "concurrency": {"reserved": 0},
        "async": {
            "maximumRetryAttempts": 0,
            "maximumEventAgeSeconds": 60,
            "onFailure": {"subject": "failed.events"},
        },
        "schedules": [{"name": "tick", "expression": "rate(10 seconds)", "enabled": False}],
    }
    assert settings_from_spec(spec, "uid-1") == FunctionSettings(
        reserved=0,
        timeout_s=30,
        max_retries=0,
        max_age_s=60,
        on_failure=Destination(subject="failed.events"),
        uid="uid-1",
        schedules=(Schedule(name="tick", expression="rate(10 seconds)", enabled=False),),
    )
    assert settings_from_spec({}, "") == FunctionSettings()
    with pytest.raises(ValueError, match=r"less than or equal to 2"):
        settings_from_spec({"async": {"maximumRetryAttempts": 3}}, "")
    twice = {"schedules": [{"name": "a", "expression": "rate(1 day)"}] * 2}
    with pytest.raises(ValueError, match=r"schedules names must be unique"):
        settings_from_spec(twice, "")


def test_functions_file(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(
        "kind: Function\nmetadata: {name: a, namespace: x, uid: u-a}\n"
        "spec: {async: {maximumRetryAttempts: 1}}\n---\n"
        "kind: List\nitems:\n- kind: Function\n  metadata: {name: b}\n  spec: {}\n"
    )
    directory = load_functions_file(str(path))
    assert sorted(directory.keys()) == [("default", "b"), ("x", "a")]
    settings = directory.get("x", "a")
    assert settings is not None
    assert settings.max_retries == 1
    assert settings.uid == "u-a"


def test_config() -> None:
    config = load_config(
        {
            "KUBELAMBDA_NATS_URL": "nats://a:4222,nats://b:4222",
            "KUBELAMBDA_NATS_REPLICAS": "3",
            "KUBELAMBDA_INVOKER_RETRY_BASE_SECONDS": "0.5",
            "KUBELAMBDA_INVOKER_GATEWAY_URL": "http://gw:8080/",
        }
    )
    assert config.nats_url == "nats://a:4222,nats://b:4222"
    assert config.streams.replicas == 3
    assert config.retry_base_s == 0.5
    assert config.gateway_url == "http://gw:8080"
    assert config.throttle_max_s == 300
    with pytest.raises(ConfigError, match="KUBELAMBDA_NATS_EVENTS_MAX_AGE_SECONDS"):
        load_config({"KUBELAMBDA_NATS_EVENTS_MAX_AGE_SECONDS": "3600"})
    with pytest.raises(ConfigError, match="integer"):
        load_config({"KUBELAMBDA_INVOKER_FUNCTION_CONCURRENCY": "1.5"})
    with pytest.raises(ConfigError, match="http://"):
        load_config({"KUBELAMBDA_INVOKER_GATEWAY_URL": "https://gw:8443"})


def test_the_gateway_request_head_drops_header_values_that_would_break_lines() -> None:
    async def build() -> bytes:
        client = GatewayClient("http://gw.example:8080")
        event = Event(
            request_id="rid-1",
            namespace="ns",
            function="fn",
            qualifier=None,
            payload=b'{"a": 1}',
            enqueued_ms=0,
            client_context="e30=",
            trace_id="Root=1-x\r\nX-Forged: yes",
        )
        return client.head("/namespaces/ns/2015-03-31/functions/fn/invocations", event)

    head = asyncio.run(build())
    assert head == (
        b"POST /namespaces/ns/2015-03-31/functions/fn/invocations HTTP/1.1\r\n"
        b"Host: gw.example:8080\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: 8\r\n"
        b"X-Kubelambda-Request-Id: rid-1\r\n"
        b"X-Amz-Client-Context: e30=\r\n"
        b"\r\n"
    )


def _invocation(request_id: str, payload: bytes = b"{}") -> AsyncInvocation:
    return AsyncInvocation(
        request_id=request_id,
        namespace="ns",
        function="fn",
        qualifier="2",
        payload=payload,
        received_ms=int(time.time() * 1000),
        client_context="Y3R4",
        trace_id="Root=1",
    )


def test_publisher_stores_events_once(nats_server: NatsServer) -> None:
    async def scenario() -> None:
        publisher = NatsPublisher(nats_server.url)
        await publisher.wait_connected()
        broker = await JetStreamBroker.connect(nats_server.url, "test")
        try:
            invocation = _invocation("dup")
            await publisher.publish(invocation)
            await publisher.publish(invocation)  # a repeat within the duplicate window
            assert await broker.queue_depths() == {("ns", "fn"): 1}
            consumer = await broker.consumer("ns", "fn")
            [delivery] = await consumer.fetch(5, 1.0)
            assert delivery.event == Event(
                "dup", "ns", "fn", "2", b"{}", invocation.received_ms,
                client_context="Y3R4", trace_id="Root=1",
            )  # fmt: skip
            assert await broker.oldest_enqueued_ms("ns", "fn") == invocation.received_ms
            await delivery.ack()
            await consumer.close()
        finally:
            await broker.close()
            await publisher.close()

    asyncio.run(scenario())


def test_publisher_refuses_when_full_or_unreachable(nats_server: NatsServer) -> None:
    async def scenario() -> None:
        not_started = NatsPublisher(nats_server.url)
        with pytest.raises(PublishRejected) as unavailable:
            await not_started.publish(_invocation("early"))
        assert not unavailable.value.throttled

        small = StreamSettings(events_max_bytes=4096)
        publisher = NatsPublisher(nats_server.url, small)
        await publisher.wait_connected()
        try:
            refused = None
            for i in range(10):
                try:
                    await publisher.publish(_invocation(f"big-{i}", b'"%s"' % (b"x" * 1000)))
                except PublishRejected as exc:
                    refused = exc
                    break
            assert refused is not None, "a 4 KiB stream takes ten 1 KB events"
            assert refused.throttled
        finally:
            await publisher.close()

        broker = await JetStreamBroker.connect(nats_server.url, "test")
        try:
            await broker.ensure_streams(update=True)  # the invoker's settings win
            info = await broker.client.jetstream().stream_info(EVENTS_STREAM)
            assert info.config.max_bytes == -1
        finally:
            await broker.close()

    asyncio.run(scenario())


def test_malformed_message_goes_to_the_dlq(nats_server: NatsServer) -> None:
    async def scenario() -> None:
        async with running_invoker(nats_server, {}) as h:
            js = h.broker.client.jetstream()
            await js.publish("kubelambda.events.team-a.junk", b"?", headers={"X": "y"})

            async def failed() -> bool:
                return len(await h.broker.dead_letters(None, None, 0, 10)) == 1

            await eventually(failed, 10, "the dead letter")
            [letter] = await h.broker.dead_letters("team-a", "junk", 0, 10)
            assert letter.error_code == "400"
            assert letter.event.payload == b"?"

    asyncio.run(scenario())
