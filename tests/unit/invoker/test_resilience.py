"""The invoker keeps delivering through NATS restarts and its own bugs: no loop dies silently."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubelambda.invoker.broker import Delivery
from kubelambda.invoker.functions import FunctionSettings
from kubelambda.invoker.jetstream import JetStreamBroker
from kubelambda.invoker.main import _until_stopped_or_failed

from .conftest import NAMESPACE, NatsServer, eventually, running_invoker


def test_a_function_added_after_nats_restarted_gets_its_events(nats_server: NatsServer) -> None:
    async def scenario() -> None:
        async with running_invoker(nats_server, {"fn": FunctionSettings()}) as h:
            await h.publish("before", "fn")
            await eventually(lambda: "before" in h.gateway.successes(), 20, "the first event")
            nats_server.stop()
            await asyncio.sleep(1.5)
            nats_server.start()
            h.directory.functions[(NAMESPACE, "later")] = FunctionSettings()
            h.invoker.wake()

            async def published() -> bool:
                try:
                    await h.publish("after", "later")
                except Exception:  # the publisher is still reconnecting
                    return False
                return True

            await eventually(published, 20, "NATS back")
            await eventually(lambda: "after" in h.gateway.successes(), 30, "the new function's")

    asyncio.run(scenario())


class FailingOnce:
    """Wraps a real consumer; its first fetch raises ``error``."""

    def __init__(self, consumer: Any, error: BaseException) -> None:
        self._consumer = consumer
        self._error: BaseException | None = error

    async def fetch(self, batch: int, wait_s: float) -> list[Delivery]:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return await self._consumer.fetch(batch, wait_s)  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self._consumer.close()


@pytest.mark.parametrize(
    "error",
    [RuntimeError("a bug"), asyncio.CancelledError()],
    ids=["unexpected exception", "a NATS future cancelled under the worker"],
)
def test_a_worker_survives_a_failed_fetch(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    real_consumer = JetStreamBroker.consumer
    created: list[str] = []

    async def consumer(self: JetStreamBroker, namespace: str, function: str) -> Any:
        created.append(function)
        made = await real_consumer(self, namespace, function)
        return FailingOnce(made, error) if len(created) == 1 else made

    monkeypatch.setattr(JetStreamBroker, "consumer", consumer)

    async def scenario() -> None:
        async with running_invoker(nats_server, {"fn": FunctionSettings()}) as h:
            await h.publish("e1", "fn")
            await eventually(lambda: "e1" in h.gateway.successes(), 20, "the event")
            assert created == ["fn", "fn"], "the worker starts over with a fresh consumer"

    asyncio.run(scenario())


def test_the_reconciler_survives_a_failed_round(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_depths = JetStreamBroker.queue_depths
    calls: list[int] = []

    async def queue_depths(self: JetStreamBroker) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("a bug")
        return await real_depths(self)

    monkeypatch.setattr(JetStreamBroker, "queue_depths", queue_depths)

    async def scenario() -> None:
        async with running_invoker(nats_server, {"fn": FunctionSettings()}) as h:
            await h.publish("e1", "fn")
            await eventually(lambda: "e1" in h.gateway.successes(), 20, "the event")

    asyncio.run(scenario())


def test_the_invoker_exits_when_one_of_its_loops_ends() -> None:
    async def scenario() -> tuple[bool, bool]:
        stop = asyncio.Event()

        async def forever() -> None:
            await asyncio.Event().wait()

        async def broken() -> None:
            raise KeyError("a bug")

        loops = [asyncio.create_task(forever()), asyncio.create_task(broken())]
        failed = await _until_stopped_or_failed(stop, loops)
        loops[0].cancel()
        calm = [asyncio.create_task(forever())]
        asyncio.get_running_loop().call_later(0.05, stop.set)
        stopped = await _until_stopped_or_failed(stop, calm)
        calm[0].cancel()
        return failed, stopped

    assert asyncio.run(scenario()) == (True, False)
