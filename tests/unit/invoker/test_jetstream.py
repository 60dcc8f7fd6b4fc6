"""The JetStream broker on a real nats-server: dead letters that are not there, and names that
are not one subject token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from kubelambda.invoker.event import DeadLetter, Event
from kubelambda.invoker.jetstream import InvalidSubjectToken, JetStreamBroker

from .conftest import NatsServer


def dead_letter(namespace: str, function: str, request_id: str = "r") -> DeadLetter:
    event = Event(request_id, namespace, function, None, b"{}", 0)
    return DeadLetter(event, "RetriesExhausted", "200", "boom", 1)


@asynccontextmanager
async def broker_on(nats: NatsServer) -> AsyncIterator[JetStreamBroker]:
    broker = await JetStreamBroker.connect(nats.url, "test")
    await broker.ensure_streams()
    try:
        yield broker
    finally:
        await broker.close()


def test_dead_letter_that_is_not_there_is_not_found(nats_server: NatsServer) -> None:
    """Regression: deleting sequence 0, one past the last, or the first after it went (NATS
    answers those with a server error, not "not found") raised BrokerError: the admin API
    answered 503, as if the queue were down."""

    async def scenario() -> None:
        async with broker_on(nats_server) as broker:
            for i in range(3):
                await broker.publish_dead_letter(dead_letter("ns", "fn", f"r-{i}"))
            assert await broker.delete_dead_letter(1)
            for sequence in (0, -1, 1, 2**64, 2**64 - 1, 2**63, 4, 1000):
                assert not await broker.delete_dead_letter(sequence), sequence
                assert await broker.dead_letter(sequence) is None, sequence
            assert await broker.delete_dead_letter(2)
            assert not await broker.delete_dead_letter(2)  # within the stream, deleted already
            assert [x.event.request_id for x in await broker.dead_letters(None, None, 0, 10)] == [
                "r-2"
            ]

    asyncio.run(scenario())


NOT_TOKENS = ("*", ">", "a.b", "a b", "fn*", ">x", "tab\tbed")


@pytest.mark.parametrize("name", NOT_TOKENS)
def test_names_that_are_not_one_subject_token_are_refused(
    nats_server: NatsServer, name: str
) -> None:
    """Regression: a namespace of ``*`` made a purge filter that matched every function."""

    async def scenario() -> None:
        async with broker_on(nats_server) as broker:
            await broker.publish_dead_letter(dead_letter("ns", "fn", "r-1"))
            await broker.publish_dead_letter(dead_letter("other", "fn", "r-2"))
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: broker.purge_dead_letters(name, None),
                lambda: broker.purge_dead_letters(None, name),
                lambda: broker.purge_dead_letters("ns", name),
                lambda: broker.dead_letters(name, "fn", 0, 10),
                lambda: broker.dead_letters(None, name, 0, 10),
                lambda: broker.publish_dead_letter(dead_letter(name, "fn")),
                lambda: broker.publish_event(Event("e", "ns", name, None, b"{}", 0), "e"),
                lambda: broker.consumer(name, "fn"),
                lambda: broker.oldest_enqueued_ms("ns", name),
            ]
            for call in calls:
                with pytest.raises(InvalidSubjectToken):
                    await call()
            assert await broker.dead_letter_depths() == {("ns", "fn"): 1, ("other", "fn"): 1}
            assert await broker.queue_depths() == {}

    asyncio.run(scenario())


def test_messages_on_wildcard_looking_subjects_belong_to_no_function(
    nats_server: NatsServer,
) -> None:
    """JetStream stores what is published to ``kubelambda.dlq.*.fn`` under that very subject.
    Counted per function, it would hand back a key no broker call accepts."""

    async def scenario() -> None:
        async with broker_on(nats_server) as broker:
            js = broker.client.jetstream()
            await js.publish("kubelambda.events.*.fn", b"junk")
            await js.publish("kubelambda.dlq.ns.>", b"junk")
            await broker.publish_dead_letter(dead_letter("ns", "fn"))
            assert await broker.queue_depths() == {}
            assert await broker.dead_letter_depths() == {("ns", "fn"): 1}

    asyncio.run(scenario())
