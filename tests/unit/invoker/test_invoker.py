"""The invoker against a real JetStream and a scripted gateway."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter

from kubelambda.api.function import Destination
from kubelambda.invoker.event import EVENT_AGE_EXCEEDED, RETRIES_EXHAUSTED, DeadLetter
from kubelambda.invoker.functions import FunctionSettings
from kubelambda.invoker.jetstream import ConsumerSettings, JetStreamBroker

from .conftest import (
    NAMESPACE,
    OK,
    Call,
    NatsServer,
    Reply,
    eventually,
    function_error,
    running_invoker,
    service_error,
)


async def all_dead_letters(broker: JetStreamBroker, function: str = "fn") -> list[DeadLetter]:
    return await broker.dead_letters(NAMESPACE, function, 0, 10_000)


def test_every_event_ends_in_success_or_dlq(nats_server: NatsServer) -> None:
    """200 events, 30% function errors and 10% throttles / 5xx per try, at random."""
    rng = random.Random(7)

    def script(call: Call) -> Reply:
        roll = rng.random()
        if roll < 0.05:
            return service_error(429, "TooManyRequestsException", "Rate Exceeded.")
        if roll < 0.10:
            return service_error(502, "ServiceException", "pod failed")
        if roll < 0.40:
            return function_error()
        return OK

    async def scenario() -> None:
        functions = {"fn": FunctionSettings(max_retries=2)}
        async with running_invoker(nats_server, functions, script) as h:
            ids = [f"req-{i:03d}" for i in range(200)]
            for request_id in ids:
                await h.publish(request_id)

            async def settled() -> bool:
                letters = await all_dead_letters(h.broker)
                return len(h.gateway.successes()) + len(letters) >= len(ids)

            await eventually(settled, 60, "every event settled")
            await asyncio.sleep(0.5)  # anything still moving would show up as a duplicate
            letters = await all_dead_letters(h.broker)
            successes = h.gateway.successes()
            dead = Counter(letter.event.request_id for letter in letters)
            assert set(successes) | set(dead) == set(ids)
            assert not set(successes) & set(dead), "an event both succeeded and failed"
            assert max(successes.values()) == 1
            assert max(dead.values()) == 1
            invocations = h.gateway.invocations()
            assert max(invocations.values()) <= 3  # 1 + maximumRetryAttempts
            assert letters, "with 30% failures some events must exhaust their retries"
            for letter in letters:
                assert letter.condition == RETRIES_EXHAUSTED
                assert letter.error_code == "200"
                assert letter.error_message == "ValueError: asked to fail"
                assert letter.event.attempts == 3 == invocations[letter.event.request_id]
                assert letter.event.payload == b'{"n":1}'
            throttled = [c for c, r in h.gateway.calls if r.status in (429, 502)]
            assert throttled, "the script throttles some tries"
            depths = await h.broker.queue_depths()
            assert not any(depths.values()), f"events left in the queue: {depths}"

    asyncio.run(scenario())


def test_retry_delays_follow_the_base(nats_server: NatsServer) -> None:
    async def scenario() -> None:
        functions = {"fn": FunctionSettings(max_retries=2)}
        script = lambda call: function_error()  # noqa: E731
        async with running_invoker(nats_server, functions, script, retry_base_s=0.4) as h:
            started = time.monotonic()
            await h.publish("slow-retries")
            await eventually(lambda: len(h.gateway.calls) == 3, 10, "three tries")
            elapsed = time.monotonic() - started
            assert elapsed >= 0.4 + 0.8  # 1x then 2x the base

            async def in_dlq() -> bool:
                return len(await all_dead_letters(h.broker)) == 1

            await eventually(in_dlq, 5, "the dead letter")

    asyncio.run(scenario())


def test_event_age_exceeded(nats_server: NatsServer) -> None:
    """Throttled until the maximum age: EventAgeExceeded with the last error."""

    async def scenario() -> None:
        functions = {"fn": FunctionSettings(max_age_s=60)}
        script = lambda call: service_error(429, "TooManyRequestsException", "Rate Exceeded.")  # noqa: E731
        async with running_invoker(nats_server, functions, script) as h:
            await h.publish("old", received_ms=int(time.time() * 1000) - 59_300)

            async def expired() -> bool:
                return len(await all_dead_letters(h.broker)) == 1

            await eventually(expired, 10, "the event in the DLQ")
            [letter] = await all_dead_letters(h.broker)
            assert letter.condition == EVENT_AGE_EXCEEDED
            assert letter.error_code == "429"
            assert "Rate Exceeded." in letter.error_message
            assert letter.event.attempts == 0
            assert letter.event.throttles >= 2
            assert h.gateway.invocations() == Counter()

    asyncio.run(scenario())


def test_reserved_concurrency_zero_fails_at_once(nats_server: NatsServer) -> None:
    async def scenario() -> None:
        functions = {"fn": FunctionSettings(reserved=0)}
        async with running_invoker(nats_server, functions) as h:
            await h.publish("blocked")

            async def failed() -> bool:
                return len(await all_dead_letters(h.broker)) == 1

            await eventually(failed, 10, "the event in the DLQ")
            [letter] = await all_dead_letters(h.broker)
            assert letter.condition == RETRIES_EXHAUSTED
            assert letter.error_code == "429"
            assert "ReservedFunctionConcurrentInvocationLimitExceeded" in letter.error_message
            assert h.gateway.calls == []

    asyncio.run(scenario())


def test_refused_event_is_not_retried(nats_server: NatsServer) -> None:
    async def scenario() -> None:
        script = lambda call: service_error(404, "ResourceNotFoundException", "Function not found")  # noqa: E731
        async with running_invoker(nats_server, {}, script) as h:
            await h.publish("gone", function="deleted-fn")

            async def failed() -> bool:
                return len(await all_dead_letters(h.broker, "deleted-fn")) == 1

            await eventually(failed, 10, "the event in the DLQ")
            [letter] = await all_dead_letters(h.broker, "deleted-fn")
            assert letter.error_code == "404"
            assert letter.error_message == "ResourceNotFoundException: Function not found"
            assert len(h.gateway.calls) == 1

    asyncio.run(scenario())


def test_a_4xx_not_from_the_gateway_is_retried(nats_server: NatsServer) -> None:
    """A proxy's bare 404 (no gateway pod ready behind the Service) is not the gateway refusing
    the event: it is retried, and the event succeeds once the gateway answers."""

    async def scenario() -> None:
        replies = iter([Reply(404, b"", {"Server": "some-proxy"})])
        script = lambda call: next(replies, OK)  # noqa: E731
        async with running_invoker(nats_server, {}, script) as h:
            await h.publish("through-a-proxy")

            async def delivered() -> bool:
                return len(h.gateway.calls) == 2 and sum(h.gateway.successes().values()) == 1

            await eventually(delivered, 10, "the event retried and delivered")
            assert await all_dead_letters(h.broker) == []
            # Not reused: a kept-alive connection to whatever answered (a transparent proxy
            # behind a Service VIP with no endpoint) would answer the same way forever.
            first, second = (call.peer_port for call, _ in h.gateway.calls)
            assert first != second

    asyncio.run(scenario())


def test_concurrency_is_bounded_by_reserved(nats_server: NatsServer) -> None:
    running = 0
    peak = 0

    async def script(call: Call) -> Reply:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return OK

    async def scenario() -> None:
        functions = {"fn": FunctionSettings(reserved=3)}
        async with running_invoker(nats_server, functions, script) as h:
            for i in range(30):
                await h.publish(f"c-{i}")
            await eventually(lambda: len(h.gateway.successes()) == 30, 20, "all events")
        assert peak == 3

    asyncio.run(scenario())


def test_request_id_qualifier_and_headers_reach_the_gateway(nats_server: NatsServer) -> None:
    async def scenario() -> None:
        async with running_invoker(nats_server, {"fn": FunctionSettings()}) as h:
            await h.publish("rid-1", qualifier="live", payload=b'{"a": [1, 2]}')
            await eventually(lambda: len(h.gateway.calls) == 1, 10, "the call")
            [(call, _)] = h.gateway.calls
            assert call.request_id == "rid-1"
            assert call.qualifier == "live"
            assert call.body == b'{"a": [1, 2]}'
            assert "X-Amz-Invocation-Type" not in call.headers

    asyncio.run(scenario())


def _check_record(record: dict[str, object], request_id: str, condition: str) -> None:
    assert set(record) == {
        "version",
        "timestamp",
        "requestContext",
        "requestPayload",
        "responseContext",
        "responsePayload",
    }
    assert record["version"] == "1.0"
    assert isinstance(record["timestamp"], str)
    assert record["timestamp"].endswith("Z")
    context = record["requestContext"]
    assert isinstance(context, dict)
    assert context["requestId"] == request_id
    assert context["condition"] == condition
    assert context["functionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:fn:$LATEST"
    response = record["responseContext"]
    assert isinstance(response, dict)
    assert set(response) >= {"statusCode", "executedVersion"}


def test_destinations_get_invocation_records(nats_server: NatsServer) -> None:
    def script(call: Call) -> Reply:
        if json.loads(call.body)["fail"]:
            return function_error("boom")
        return Reply(200, b'{"answer":42}', {"X-Amz-Executed-Version": "$LATEST"})

    async def scenario() -> None:
        subject_records: list[bytes] = []
        functions = {"fn": FunctionSettings(max_retries=1)}
        async with running_invoker(nats_server, functions, script) as h:
            gateway_url = h.gateway.url

            async def collect(msg: object) -> None:
                subject_records.append(msg.data)  # type: ignore[attr-defined]

            await h.broker.client.subscribe("records.success", cb=collect)
            h.directory.functions[(NAMESPACE, "fn")] = FunctionSettings(
                max_retries=1,
                on_success=Destination(url=f"{gateway_url}/destinations/ok"),
                on_failure=Destination(function="failures:live"),
            )
            h.directory.functions[(NAMESPACE, "fn2")] = FunctionSettings(
                on_success=Destination(subject="records.success"),
            )
            await h.publish("good", payload=b'{"fail": false}')
            await h.publish("bad", payload=b'{"fail": true}')
            await h.publish("good2", function="fn2", payload=b'{"fail": false}')
            await eventually(
                lambda: (
                    len(h.gateway.posts) == 1
                    and len(h.gateway.events) == 1
                    and len(subject_records) == 1
                ),
                15,
                "three records",
            )
            [(name, body)] = h.gateway.posts
            assert name == "ok"
            success = json.loads(body)
            _check_record(success, "good", "Success")
            assert success["requestContext"]["approximateInvokeCount"] == 1
            assert success["requestPayload"] == {"fail": False}
            assert success["responsePayload"] == {"answer": 42}
            assert success["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}

            [event] = h.gateway.events
            assert (event.namespace, event.function, event.qualifier) == (
                NAMESPACE,
                "failures",
                "live",
            )
            failure = json.loads(event.body)
            _check_record(failure, "bad", "RetriesExhausted")
            assert failure["requestContext"]["approximateInvokeCount"] == 2
            assert failure["responseContext"]["functionError"] == "Unhandled"
            assert failure["responsePayload"] == {"errorType": "ValueError", "errorMessage": "boom"}
            assert await all_dead_letters(h.broker) == []  # the destination took it

            other = json.loads(subject_records[0])
            assert other["requestContext"]["requestId"] == "good2"
            assert other["requestContext"]["functionArn"].endswith(":function:fn2:$LATEST")

    asyncio.run(scenario())


def test_failed_failure_destination_falls_back_to_the_dlq(nats_server: NatsServer) -> None:
    async def scenario() -> None:
        script = lambda call: function_error()  # noqa: E731
        async with running_invoker(nats_server, {}, script) as h:
            h.gateway.post_status = 500
            h.directory.functions[(NAMESPACE, "fn")] = FunctionSettings(
                max_retries=0, on_failure=Destination(url=f"{h.gateway.url}/destinations/x")
            )
            await h.publish("lost-destination")

            async def in_dlq() -> bool:
                return len(await all_dead_letters(h.broker)) == 1

            await eventually(in_dlq, 15, "the dead letter")
            assert len(h.gateway.posts) == 3  # every try of the destination
            value = h.invoker.metrics.destination_failures.labels(NAMESPACE, "fn", "onFailure")
            assert value._value.get() == 1

    asyncio.run(scenario())


def test_long_invocation_is_not_redelivered(nats_server: NatsServer) -> None:
    """An invocation longer than the ack wait keeps its event (in-progress acks)."""

    async def script(call: Call) -> Reply:
        await asyncio.sleep(2.5)
        return OK

    async def scenario() -> None:
        consumers = ConsumerSettings(ack_wait_s=1.0)
        async with running_invoker(
            nats_server, {"fn": FunctionSettings()}, script, consumers=consumers
        ) as h:
            await h.publish("long")
            await eventually(lambda: len(h.gateway.calls) == 1, 10, "the call")
            assert h.gateway.started["long"] == 1  # no second delivery while it ran

    asyncio.run(scenario())
