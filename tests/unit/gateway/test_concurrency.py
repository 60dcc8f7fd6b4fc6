"""Concurrency caps and pod slots: reserved and platform limits, per-instance, the wait queue."""

from __future__ import annotations

import asyncio

import pytest

from kubelambda.gateway.concurrency import (
    LOCAL,
    PLATFORM_LIMIT,
    RESERVED_LIMIT,
    Dispatcher,
    LocalCounter,
    QueueFull,
)

FN = ("default", "fn")
OTHER = ("default", "other")
KEY = ("default", "fn", "$LATEST")
A, B, C = ("10.0.0.1", 8080), ("10.0.0.2", 8080), ("10.0.0.3", 8080)


def test_reserved_concurrency_caps_the_function():
    counter = LocalCounter(limit=100)
    assert [counter.try_acquire(FN, 2) for _ in range(3)] == [LOCAL, LOCAL, RESERVED_LIMIT]
    assert counter.try_acquire(OTHER, 2) == LOCAL  # per function
    counter.release(FN, LOCAL)
    assert counter.try_acquire(FN, 2) == LOCAL
    assert counter.total == 3


def test_reserved_zero_always_throttles():
    counter = LocalCounter(limit=100)
    assert counter.try_acquire(FN, 0) == RESERVED_LIMIT
    assert counter.total == 0


def test_platform_limit():
    counter = LocalCounter(limit=2)
    assert counter.try_acquire(FN, None) == LOCAL
    assert counter.try_acquire(OTHER, None) == LOCAL
    assert counter.try_acquire(FN, None) == PLATFORM_LIMIT
    assert counter.try_acquire(FN, 1) == RESERVED_LIMIT  # the function's own cap is named first
    counter.release(OTHER)
    assert counter.try_acquire(FN, None) == LOCAL
    counter.release(FN)
    counter.release(FN)
    assert counter.total == 0


class Endpoints:
    def __init__(self, *addresses):
        self.addresses = list(addresses)

    def __call__(self, key):
        return self.addresses if key == KEY else []


def test_least_loaded_pod_within_per_instance():
    dispatcher = Dispatcher(Endpoints(A, B), queue_length=10)
    picks = [dispatcher.try_acquire(KEY, 2, set()) for _ in range(5)]
    assert picks == [A, B, A, B, None]
    assert dispatcher.in_flight() == {KEY: 4}
    dispatcher.release(KEY, B)
    assert dispatcher.try_acquire(KEY, 2, set()) == B
    assert dispatcher.try_acquire(KEY, 2, {B}) is None


def test_exclusion_and_no_endpoints():
    dispatcher = Dispatcher(Endpoints(A, B), queue_length=10)
    assert dispatcher.try_acquire(KEY, 1, {A}) == B
    assert dispatcher.try_acquire(("default", "none", "$LATEST"), 1, set()) is None


def test_release_forgets_idle_versions():
    dispatcher = Dispatcher(Endpoints(A), queue_length=10)
    assert dispatcher.try_acquire(KEY, 1, set()) == A
    dispatcher.release(KEY, A)
    assert dispatcher.in_flight() == {}


def test_waiters_get_freed_slots_in_order():
    async def scenario():
        dispatcher = Dispatcher(Endpoints(A), queue_length=10)
        assert dispatcher.try_acquire(KEY, 1, set()) == A
        first = asyncio.ensure_future(dispatcher.wait(KEY, 1, set(), 5))
        second = asyncio.ensure_future(dispatcher.wait(KEY, 1, set(), 5))
        await asyncio.sleep(0)
        assert dispatcher.queued() == {KEY: 2}
        # Late arrivals queue behind waiters rather than overtaking them.
        assert dispatcher.try_acquire(KEY, 1, set()) is None
        dispatcher.release(KEY, A)
        assert await first == A
        assert not second.done()
        dispatcher.release(KEY, A)
        assert await second == A
        assert dispatcher.in_flight() == {KEY: 1}

    asyncio.run(scenario())


def test_wait_ends_after_its_limit():
    async def scenario():
        dispatcher = Dispatcher(Endpoints(A), queue_length=10)
        dispatcher.try_acquire(KEY, 1, set())
        assert await dispatcher.wait(KEY, 1, set(), 0.01) is None
        assert dispatcher.queued() == {}

    asyncio.run(scenario())


def test_full_queue_raises():
    async def scenario():
        dispatcher = Dispatcher(Endpoints(A), queue_length=1)
        dispatcher.try_acquire(KEY, 1, set())
        waiting = asyncio.ensure_future(dispatcher.wait(KEY, 1, set(), 5))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await dispatcher.wait(KEY, 1, set(), 5)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(scenario())


def test_new_endpoints_wake_waiters():
    async def scenario():
        endpoints = Endpoints()
        dispatcher = Dispatcher(endpoints, queue_length=10)
        waiting = asyncio.ensure_future(dispatcher.wait(KEY, 1, set(), 5))
        await asyncio.sleep(0)
        dispatcher.endpoints_changed(KEY)  # still none: keeps waiting
        await asyncio.sleep(0)
        assert not waiting.done()
        endpoints.addresses = [C]
        dispatcher.endpoints_changed(KEY)
        assert await waiting == C

    asyncio.run(scenario())


def test_cancelled_waiter_gives_a_handed_slot_back():
    async def scenario():
        dispatcher = Dispatcher(Endpoints(A), queue_length=10)
        dispatcher.try_acquire(KEY, 1, set())
        waiting = asyncio.ensure_future(dispatcher.wait(KEY, 1, set(), 5))
        await asyncio.sleep(0)
        dispatcher.release(KEY, A)  # hands A to the waiter ...
        waiting.cancel()  # ... which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert dispatcher.in_flight() == {}
        assert dispatcher.try_acquire(KEY, 1, set()) == A

    asyncio.run(scenario())
