"""The gateway's part in autoscaling: telling the autoscaler about demand, and routing to new pods
the moment they can serve.

``AutoscalerClient`` posts this gateway's demand per version (the peak of running plus waiting
invocations) about once a second, sooner when invocations start waiting, and asks for a wake-up
the moment a request finds a version without pods. Nothing is sent per request.

While invocations of a version wait for a pod, the client also long-polls the autoscaler for
pods of that version that announced themselves ready (their agents do, the moment their
runtimes are initialised) and routes to them at once: the EndpointSlice lists a new pod only
after the kubelet has posted its IP and its readiness probe passed, a second or two later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping

import aiohttp

from kubelambda.gateway.routing import RoutingTable, VersionKey

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 1.0
EARLY_REPORT_DELAY_S = 0.05  # lets a burst's waiting invocations land in one report
WAKE_REPEAT_S = 1.0  # one wake-up per version per second is plenty
POST_TIMEOUT_S = 2.0
POLL_WAIT_S = 20.0  # the autoscaler holds a poll for news this long
STALE_NEWS_PAUSE_S = 0.2  # announced pods are known but every one is busy: poll gently
FAILURE_LOG_INTERVAL_S = 60.0


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
    ) -> None:
        self._url = url.rstrip("/")
        self._take_demand = take_demand
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
        versions = [
            {"namespace": key[0], "function": key[1], "version": key[2], "peak": peak}
            for key, peak in self._take_demand().items()
        ]
        await self._post("/v1/report", {"reporter": self.reporter, "versions": versions})

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
