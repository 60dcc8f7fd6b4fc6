"""The gateway's part in autoscaling: telling the autoscaler about demand, and routing to new pods
the moment they can serve.

``AutoscalerClient`` posts this gateway's demand per version (the peak of running plus waiting
invocations) about once a second, sooner when invocations start waiting, and asks for a wake-up
the moment a request finds a version without pods. Nothing is sent per request.

While invocations of a version wait for a pod, the client also long-polls the autoscaler for
pods of that version that announced themselves ready (their agents do, the moment their
runtimes are initialised) and routes to them at once: the EndpointSlice lists a new pod only
after the kubelet has posted its IP and its readiness probe passed, a second or two later.

``SharedCounter`` makes reserved concurrency hold over every gateway replica: the autoscaler
counts those slots (one round trip per invocation of a function with a reserved cap), and the
reports say which ones this gateway still holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import aiohttp

from kubelambda.gateway.concurrency import (
    LOCAL,
    PLATFORM_LIMIT,
    RESERVED_LIMIT,
    LocalCounter,
    Slot,
)
from kubelambda.gateway.routing import FunctionKey, RoutingTable, VersionKey

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 1.0
EARLY_REPORT_DELAY_S = 0.05  # lets a burst's waiting invocations land in one report
WAKE_REPEAT_S = 1.0  # one wake-up per version per second is plenty
POST_TIMEOUT_S = 2.0
POLL_WAIT_S = 20.0  # the autoscaler holds a poll for news this long
STALE_NEWS_PAUSE_S = 0.2  # announced pods are known but every one is busy: poll gently
FAILURE_LOG_INTERVAL_S = 60.0
ACQUIRE_TIMEOUT_S = 0.2  # an invocation waits no longer for the autoscaler's slot
LOCAL_AFTER_FAILURE_S = 1.0  # then reserved caps are counted here for this long
THROTTLE_REASONS = frozenset((RESERVED_LIMIT, PLATFORM_LIMIT))


class AutoscalerClient:
    def __init__(
        self,
        url: str,
        take_demand: Callable[[], dict[VersionKey, int]],
        session: aiohttp.ClientSession,
        *,
        table: RoutingTable,
        waiting: Callable[[VersionKey], bool],
        reporter: str | None = None,
        leases: Callable[[], Mapping[str, object]] | None = None,
        demand_now: Callable[[], dict[VersionKey, int]] = dict,
    ) -> None:
        """``leases``: this gateway's account of its reserved slots, sent with each report
        (``SharedCounter.held_leases``; its reporter must be the counter's holder).
        ``demand_now``: running plus waiting invocations at the moment of a report."""
        self._url = url.rstrip("/")
        self._take_demand = take_demand
        self._demand_now = demand_now
        self._leases = leases
        self._session = session
        self._table = table
        self._waiting = waiting
        self._following: dict[VersionKey, asyncio.Task[None]] = {}
        self.reporter = reporter or f"{socket.gethostname()}-{id(self):x}"
        self._woken: dict[VersionKey, float] = {}
        self._early = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._failing = False
        self._last_failure_log = -FAILURE_LOG_INTERVAL_S

    # --- Waker -----------------------------------------------------------------------------

    def wake(self, namespace: str, function: str, version: str) -> None:
        key = (namespace, function, version)
        now = time.monotonic()
        if now - self._woken.get(key, -WAKE_REPEAT_S) < WAKE_REPEAT_S:
            return
        self._woken[key] = now
        body = {"namespace": namespace, "function": function, "version": version}
        task = asyncio.get_running_loop().create_task(self._post("/v1/wake", body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def demand_rising(self, key: VersionKey) -> None:
        """Invocations started waiting for a pod: report soon, not at the next interval, and
        route to new pods of ``key`` as soon as they announce themselves."""
        self._early.set()
        if key not in self._following:
            task = asyncio.get_running_loop().create_task(self._follow_started(key))
            self._following[key] = task
            task.add_done_callback(lambda _: self._following.pop(key, None))

    def close(self) -> None:
        for task in list(self._following.values()):
            task.cancel()

    async def _follow_started(self, key: VersionKey) -> None:
        namespace, function, version = key
        params = {"namespace": namespace, "function": function, "version": version}
        params["wait"] = str(POLL_WAIT_S)
        timeout = aiohttp.ClientTimeout(total=POLL_WAIT_S + POST_TIMEOUT_S)
        while self._waiting(key):
            try:
                async with self._session.get(
                    self._url + "/v1/started", params=params, timeout=timeout
                ) as response:
                    news = await response.json() if response.status == 200 else {}
            except (aiohttp.ClientError, TimeoutError, ValueError):
                news = {}
            fresh = False
            for text in news.get("addresses") or ():
                host, _, port = str(text).rpartition(":")
                if port.isdigit():
                    address = (host, int(port))
                    fresh = fresh or address not in self._table.endpoints(key)
                    self._table.announce(key, address)
            if not fresh:
                await asyncio.sleep(STALE_NEWS_PAUSE_S)

    # --- reports ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Report until cancelled."""
        while True:
            try:
                await asyncio.wait_for(self._early.wait(), REPORT_INTERVAL_S)
                await asyncio.sleep(EARLY_REPORT_DELAY_S)
            except TimeoutError:
                pass
            self._early.clear()
            try:
                await self.report()
            except Exception:  # a bug here must not end reporting for good
                log.exception("demand report failed")

    async def report(self) -> None:
        current = self._demand_now()
        versions = [
            {
                "namespace": key[0],
                "function": key[1],
                "version": key[2],
                "peak": peak,
                "now": min(current.get(key, 0), peak),
            }
            for key, peak in self._take_demand().items()
        ]
        body: dict[str, object] = {"reporter": self.reporter, "versions": versions}
        if self._leases is not None:
            body["leases"] = self._leases()
        await self._post("/v1/report", body)

    async def _post(self, path: str, body: Mapping[str, object]) -> None:
        try:
            async with self._session.post(
                self._url + path,
                data=json.dumps(body),
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S),
            ) as response:
                if response.status >= 400:
                    raise aiohttp.ClientResponseError(
                        response.request_info, (), status=response.status
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            # At most once a minute: the next report carries the same demand anyway.
            now = time.monotonic()
            if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_S:
                log.warning("autoscaler at %s%s: %r", self._url, path, exc)
                self._last_failure_log = now
            self._failing = True
            return
        if self._failing:
            log.info("autoscaler at %s reachable again", self._url)
        self._failing = False


class SharedCounter:
    """``ConcurrencyCounter`` whose reserved caps hold over every gateway replica.

    A function without a reserved cap, or with a cap of 0 (always throttled), is admitted here
    alone, as by ``LocalCounter``: no round trip. One with a cap asks the autoscaler for a slot
    (``POST /v1/acquire`` with a lease number this counter gives out, counting up) and gives it
    back after the invocation (``POST /v1/release``), in the background: the response does not
    wait for it. The ``AutoscalerClient``'s reports carry ``held_leases``, from which the
    autoscaler frees this gateway's slots whose release got lost; if this gateway dies, the
    autoscaler frees all its slots once its reports have stopped for a few seconds.

    The platform limit (``limit``) is this replica's own: each replica admits up to ``limit``
    invocations, the platform up to ``limit`` times the replicas. Splitting it (limit divided
    by the replicas) would throttle a busy replica while another idles: clients' kept-alive
    connections do not spread evenly over replicas.

    The autoscaler never fails an invocation: when it does not answer within ACQUIRE_TIMEOUT_S
    (down, restarting, overloaded), the invocation is admitted against the reserved cap counted
    in this process (as by ``LocalCounter``), and so is every one of the next
    LOCAL_AFTER_FAILURE_S, so that an unreachable autoscaler costs one wait per period, not one
    per invocation; failures are logged once a minute. Meanwhile a cap holds per replica only.
    """

    def __init__(
        self, url: str, session: aiohttp.ClientSession, limit: int, holder: str | None = None
    ) -> None:
        url = url.rstrip("/")
        self._acquire_url = url + "/v1/acquire"
        self._release_url = url + "/v1/release"
        self._session = session
        # Every admitted invocation is counted here too: for the platform limit, and for the
        # reserved cap when the autoscaler does not answer.
        self._local = LocalCounter(limit)
        self.holder = holder or f"{socket.gethostname()}-{os.urandom(4).hex()}"
        """Names this process to the autoscaler: the reporter of its reports too."""
        self._last = 0
        self._live: set[int] = set()  # leases granted or awaiting the answer, not released
        self._releasing: set[asyncio.Task[None]] = set()
        self._local_until = -LOCAL_AFTER_FAILURE_S  # time.monotonic() before which: local only
        self._failing = False
        self._last_failure_log = -FAILURE_LOG_INTERVAL_S
        self._acquire_timeout = aiohttp.ClientTimeout(total=ACQUIRE_TIMEOUT_S)
        self._release_timeout = aiohttp.ClientTimeout(total=POST_TIMEOUT_S)

    def try_acquire(
        self, function: FunctionKey, reserved: int | None
    ) -> Slot | str | Coroutine[Any, Any, Slot | str]:
        if not reserved or time.monotonic() < self._local_until:
            return self._local.try_acquire(function, reserved)
        return self._acquire(function, reserved)

    def release(self, function: FunctionKey, slot: Slot) -> None:
        self._local.release(function)
        if slot == LOCAL:
            return
        self._live.discard(slot)
        task = asyncio.get_running_loop().create_task(self._release(slot))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    def held_leases(self) -> dict[str, object]:
        """A report's ``leases``: the last lease number given out, and the leases still held or
        awaiting an answer. The autoscaler frees this gateway's other leases up to that number
        (it keeps later ones: their acquire may overtake the report)."""
        return {"last": self._last, "held": list(self._live)}

    async def close(self) -> None:
        """Let the releases under way finish (before the session closes)."""
        await asyncio.gather(*self._releasing)

    async def _acquire(self, function: FunctionKey, reserved: int) -> Slot | str:
        # Counted before the round trip, so concurrent ones cannot overshoot the platform limit.
        admitted = self._local.try_acquire(function, None)
        if isinstance(admitted, str):
            return admitted
        self._last += 1
        lease = self._last
        self._live.add(lease)
        try:
            reason = await self._ask(lease, function, reserved)
        except BaseException as exc:
            # Unanswered or cancelled. Granted after all? Not listed, the next report frees it.
            self._live.discard(lease)
            self._local.release(function)
            if not isinstance(exc, (aiohttp.ClientError, TimeoutError, ValueError)):
                raise
            self._unreachable(self._acquire_url, exc)
            return self._local.try_acquire(function, reserved)
        if reason is not None:
            self._live.discard(lease)
            self._local.release(function)
            return reason
        return lease

    async def _ask(self, lease: int, function: FunctionKey, reserved: int) -> str | None:
        """None: granted; or the throttle reason."""
        body = {
            "holder": self.holder,
            "lease": lease,
            "namespace": function[0],
            "function": function[1],
            "reserved": reserved,
        }
        async with self._session.post(
            self._acquire_url, json=body, timeout=self._acquire_timeout
        ) as response:
            response.raise_for_status()
            answer = await response.json()
        if not isinstance(answer, dict):
            raise ValueError(f"not an acquire answer: {answer!r}")
        if self._failing:
            log.info("autoscaler reachable again: reserved concurrency is shared")
            self._failing = False
        if answer.get("granted") is True:
            return None
        reason = answer.get("reason")
        return reason if isinstance(reason, str) and reason in THROTTLE_REASONS else RESERVED_LIMIT

    async def _release(self, lease: int) -> None:
        try:
            async with self._session.post(
                self._release_url,
                json={"holder": self.holder, "lease": lease},
                timeout=self._release_timeout,
            ) as response:
                response.raise_for_status()
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The lease is no longer listed: the next report that gets through frees it.
            self._unreachable(self._release_url, exc)

    def _unreachable(self, url: str, exc: Exception) -> None:
        now = time.monotonic()
        self._local_until = now + LOCAL_AFTER_FAILURE_S
        self._failing = True
        if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_S:
            log.warning("autoscaler at %s: %r; reserved concurrency counted per replica", url, exc)
            self._last_failure_log = now
