"""Concurrency caps, and the choice of a pod with a free slot.

Two layers, both O(1)-ish per invocation:

``ConcurrencyCounter`` admits an invocation against the function's reserved concurrency and the
platform-wide limit, or names the throttle reason. ``LocalCounter`` counts this process only;
with several gateway replicas a reserved cap must hold over all of them, which takes a round trip
to the autoscaler (``scaling.SharedCounter``). So an answer may be an awaitable, and only for
functions with a reserved cap: the others are admitted here, in a few dict operations.

``Dispatcher`` hands out a pod address per version whose in-flight count is below the
function's per-instance concurrency (the least loaded one). When every pod is busy, or none is
ready yet (scaling from zero), the invocation waits in a bounded FIFO per version until a slot
frees, a pod appears, or its wait limit passes. A freed slot goes straight to the first waiter,
so late arrivals cannot overtake. ``take_demand()`` is what the autoscaler is fed: the peak of
running plus waiting invocations per version since the last call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Protocol

from kubelambda.gateway.routing import Address, FunctionKey, VersionKey

RESERVED_LIMIT = "ReservedFunctionConcurrentInvocationLimitExceeded"
PLATFORM_LIMIT = "ConcurrentInvocationLimitExceeded"

Slot = int
"""An admitted invocation's hold on its count, given back to ``release``: ``LOCAL`` (counted in
this process only) or the number of the autoscaler's lease."""
LOCAL: Slot = 0


class ConcurrencyCounter(Protocol):
    def try_acquire(
        self, function: FunctionKey, reserved: int | None
    ) -> Slot | str | Awaitable[Slot | str]:
        """Count one more invocation of ``function``: its slot; or the throttle reason, counting
        nothing; or, when the answer takes a round trip, an awaitable of one of those (awaited
        at once: a slot it grants must be released)."""

    def release(self, function: FunctionKey, slot: Slot) -> None:
        """Exactly once per slot, when its invocation ended."""


class LocalCounter:
    """Counts in this process only: the reserved caps and the platform limit hold per replica."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._total = 0
        self._per_function: dict[FunctionKey, int] = {}

    def try_acquire(self, function: FunctionKey, reserved: int | None) -> Slot | str:
        current = self._per_function.get(function, 0)
        if reserved is not None and current >= reserved:
            return RESERVED_LIMIT
        if self._total >= self._limit:
            return PLATFORM_LIMIT
        self._per_function[function] = current + 1
        self._total += 1
        return LOCAL

    def release(self, function: FunctionKey, slot: Slot = LOCAL) -> None:
        current = self._per_function[function] - 1
        if current:
            self._per_function[function] = current
        else:
            del self._per_function[function]
        self._total -= 1

    @property
    def total(self) -> int:
        return self._total


class QueueFull(Exception):
    """Every pod is busy and the version's wait queue is full."""


class _Waiter:
    __slots__ = ("exclude", "future", "per_instance")

    def __init__(
        self, future: asyncio.Future[Address | None], per_instance: int, exclude: set[Address]
    ) -> None:
        self.future = future
        self.per_instance = per_instance
        self.exclude = exclude


class _Pool:
    __slots__ = ("in_flight", "total", "waiters")

    def __init__(self) -> None:
        self.in_flight: dict[Address, int] = {}
        self.total = 0
        self.waiters: deque[_Waiter] = deque()


class Dispatcher:
    def __init__(
        self, endpoints: Callable[[VersionKey], Sequence[Address]], queue_length: int
    ) -> None:
        self._endpoints = endpoints
        self._queue_length = queue_length
        self._pools: dict[VersionKey, _Pool] = {}
        self._peaks: dict[VersionKey, int] = {}
        # Called when an invocation starts waiting (no free slot): demand outgrew the pods.
        self.on_waiting: Callable[[VersionKey], None] = lambda key: None

    def in_flight(self) -> dict[VersionKey, int]:
        """Invocations running now, per function version (with at least one)."""
        return {key: pool.total for key, pool in self._pools.items() if pool.total}

    def queued(self) -> dict[VersionKey, int]:
        """Invocations waiting for a pod, per function version (with at least one)."""
        return {key: len(pool.waiters) for key, pool in self._pools.items() if pool.waiters}

    def demand_now(self) -> dict[VersionKey, int]:
        """Running plus waiting invocations per version now (versions with none left out)."""
        return {
            key: pool.total + len(pool.waiters)
            for key, pool in self._pools.items()
            if pool.total or pool.waiters
        }

    def take_demand(self) -> dict[VersionKey, int]:
        """Peak of running plus waiting invocations per version since the last call (versions
        with none are left out); the peaks restart from the current counts."""
        peaks = self._peaks
        self._peaks = {
            key: pool.total + len(pool.waiters)
            for key, pool in self._pools.items()
            if pool.total or pool.waiters
        }
        for key, demand in self._peaks.items():
            if demand > peaks.get(key, 0):
                peaks[key] = demand
        return peaks

    def _note_demand(self, key: VersionKey, pool: _Pool) -> None:
        demand = pool.total + len(pool.waiters)
        if demand > self._peaks.get(key, 0):
            self._peaks[key] = demand

    def _pick(
        self, pool: _Pool, key: VersionKey, per_instance: int, exclude: AbstractSet[Address]
    ) -> Address | None:
        best, best_count = None, per_instance
        in_flight = pool.in_flight
        for address in self._endpoints(key):
            count = in_flight.get(address, 0)
            if count < best_count and address not in exclude:
                best, best_count = address, count
                if count == 0:
                    break
        if best is not None:
            in_flight[best] = best_count + 1
            pool.total += 1
            self._note_demand(key, pool)
        return best

    def try_acquire(
        self, key: VersionKey, per_instance: int, exclude: AbstractSet[Address]
    ) -> Address | None:
        """A free slot now, unless there is none or others are already waiting."""
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool()
        elif pool.waiters:
            return None
        return self._pick(pool, key, per_instance, exclude)

    async def wait(
        self, key: VersionKey, per_instance: int, exclude: set[Address], limit_s: float
    ) -> Address | None:
        """Queue for a slot; the address, or None after ``limit_s``. Raises ``QueueFull``."""
        pool = self._pools.setdefault(key, _Pool())
        if len(pool.waiters) >= self._queue_length:
            raise QueueFull
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), per_instance, exclude)
        pool.waiters.append(waiter)
        self._note_demand(key, pool)
        self.on_waiting(key)
        timer = loop.call_later(limit_s, _expire, waiter.future)
        try:
            return await waiter.future
        except BaseException:
            # Cancelled, possibly just after a slot was handed over: give it back.
            future = waiter.future
            if future.done() and not future.cancelled() and future.result() is not None:
                address = future.result()
                assert address is not None
                self.release(key, address)
            raise
        finally:
            timer.cancel()
            if waiter in pool.waiters:
                pool.waiters.remove(waiter)

    def release(self, key: VersionKey, address: Address) -> None:
        pool = self._pools[key]
        count = pool.in_flight[address] - 1
        if count:
            pool.in_flight[address] = count
        else:
            del pool.in_flight[address]
        pool.total -= 1
        if pool.waiters:
            self._hand_over(key, pool)
        elif not pool.total:
            del self._pools[key]

    def endpoints_changed(self, key: VersionKey) -> None:
        pool = self._pools.get(key)
        if pool is not None and pool.waiters:
            self._hand_over(key, pool)

    def _hand_over(self, key: VersionKey, pool: _Pool) -> None:
        """Give free slots to waiters, in arrival order."""
        while pool.waiters:
            waiter = pool.waiters[0]
            if waiter.future.done():  # expired or cancelled, not yet removed
                pool.waiters.popleft()
                continue
            # Off the queue before it takes the slot, so it is not counted twice as demand.
            pool.waiters.popleft()
            address = self._pick(pool, key, waiter.per_instance, waiter.exclude)
            if address is None:
                pool.waiters.appendleft(waiter)
                return
            waiter.future.set_result(address)


def _expire(future: asyncio.Future[Address | None]) -> None:
    if not future.done():
        future.set_result(None)
