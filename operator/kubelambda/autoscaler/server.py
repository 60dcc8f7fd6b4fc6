"""The autoscaler's endpoint and decision loop (run inside the operator process).

Gateways ``POST /v1/report`` their demand about once a second and ``POST /v1/wake`` the moment
a request finds no instance. Either one triggers a decision pass at once, so scaling from zero
and a burst's scale-up never wait for the next tick; the tick (every second) is what scales
down. New function pods ``POST /v1/started`` when their runtimes are initialised; gateways
waiting on a cold start long-poll ``GET /v1/started`` for those addresses, which arrive well
before the pod's EndpointSlice lists it. ``GET /v1/state`` shows what the autoscaler believes,
``GET /metrics`` exports it.

Reserved concurrency is counted here too, over every gateway (``leases``): a gateway invoking a
function with a reserved cap first ``POST /v1/acquire``s a slot and ``POST /v1/release``s it
afterwards; its reports list the slots it still holds, which frees those whose release was lost.
Both are answered from memory at once: they sit on an invocation's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kubelambda.autoscaler.leases import (
    ConcurrencyLeases,
    FunctionKey,
    held_from_json,
    number_from_json,
)
from kubelambda.autoscaler.scaler import Autoscaler, ScaleAction, VersionKey, peaks_from_json
from kubelambda.autoscaler.tokens import valid_announce_token

log = logging.getLogger(__name__)

TICK_S = 1.0
MAX_REPORT_BYTES = 1 << 20  # about 10,000 versions per report
MAX_POLL_S = 25.0
# The one reason the autoscaler refuses a slot for (the gateway's 429 names it).
RESERVED_LIMIT = "ReservedFunctionConcurrentInvocationLimitExceeded"

Apply = Callable[[ScaleAction], Awaitable[bool]]
"""Makes a decision real; False when the version's Deployment is gone."""


class _StateCollector(Collector):
    def __init__(self, scaler: Autoscaler) -> None:
        self._scaler = scaler

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["namespace", "function", "version"]
        replicas = GaugeMetricFamily(
            "kubelambda_autoscaler_desired_replicas",
            "Replicas the autoscaler asks for",
            None,
            labels,
        )
        demand = GaugeMetricFamily(
            "kubelambda_autoscaler_demand",
            "Invocations in flight or waiting, summed over gateways",
            None,
            labels,
        )
        now = time.monotonic()
        current = self._scaler.demand(now)
        for key, workload in self._scaler.workloads.items():
            replicas.add_metric(list(key), workload.replicas)
            demand.add_metric(list(key), current.get(key, 0))
        yield replicas
        yield demand


class AutoscalerService:
    def __init__(
        self,
        scaler: Autoscaler,
        apply: Apply,
        signing_key: str = "",
        leases: ConcurrencyLeases | None = None,
    ) -> None:
        self.scaler = scaler
        self.leases = leases or ConcurrencyLeases()
        self._apply = apply
        self.signing_key = signing_key
        """Key of the pods' announcement tokens; empty: announcements are refused."""
        self._started_waiters: dict[VersionKey, set[asyncio.Future[None]]] = {}
        self._poked = asyncio.Event()
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(scaler))
        self._decisions = Counter(
            "kubelambda_autoscaler_decisions",
            "Replica changes made, by direction",
            ["direction"],
            registry=self.registry,
        )
        self._reports = Counter(
            "kubelambda_autoscaler_reports", "Demand reports received", registry=self.registry
        )
        self._announcements = Counter(
            "kubelambda_autoscaler_announcements",
            "Function pods announcing themselves ready, by outcome (accepted or refused)",
            ["outcome"],
            registry=self.registry,
        )
        self._wakes = Counter(
            "kubelambda_autoscaler_wakes",
            "Wake-ups that asked a version at zero for an instance",
            registry=self.registry,
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REPORT_BYTES)
        app.router.add_post("/v1/report", self._report)
        app.router.add_post("/v1/wake", self._wake)
        app.router.add_post("/v1/started", self._started)
        app.router.add_post("/v1/acquire", self._acquire)
        app.router.add_post("/v1/release", self._release)
        app.router.add_get("/v1/started", self._poll_started)
        app.router.add_get("/v1/state", self._state)
        app.router.add_get("/metrics", self._metrics)
        return app

    def poke(self) -> None:
        self._poked.set()

    async def run(self) -> None:
        """Decide every tick, and at once after a report or wake-up."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), TICK_S)
            self._poked.clear()
            try:
                await self.decide_once()
            except Exception:  # one failed pass (API server hiccup) must not stop scaling
                log.exception("autoscaler decision pass failed")

    async def decide_once(self) -> None:
        actions = self.scaler.decisions(time.monotonic())
        for action in actions:
            self.scaler.scaled(action)
        for action, applied in zip(
            actions, await asyncio.gather(*(self._apply(a) for a in actions)), strict=True
        ):
            if not applied:
                self.scaler.forget(action.key)
                continue
            new = action.decision.replicas
            self._decisions.labels("up" if new > action.current else "down").inc()

    async def _report(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            reporter = body["reporter"]
            if not isinstance(reporter, str) or not reporter:
                raise ValueError("reporter must be a non-empty string")
            peaks, current = peaks_from_json(body.get("versions") or [])
            # Optional: only gateways that acquire slots send it.
            held = None if body.get("leases") is None else held_from_json(body["leases"])
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f"malformed report: {exc}")
        now = time.monotonic()
        self.scaler.report(reporter, peaks, now, current)
        self.leases.report(reporter, held, now)
        self._reports.inc()
        self.poke()
        return web.Response(status=204)

    async def _acquire(self, request: web.Request) -> web.Response:
        """A slot of a function with a reserved cap (body: holder, lease, namespace, function,
        reserved): ``{"granted": true}``, or false with the throttle reason."""
        try:
            body = await request.json()
            holder, lease = _holder_and_lease(body)
            function: FunctionKey = (body["namespace"], body["function"])
            if not all(isinstance(part, str) and part for part in function):
                raise ValueError("namespace and function must be non-empty strings")
            reserved = number_from_json(body["reserved"], "reserved")
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f"malformed acquire: {exc}")
        if self.leases.acquire(holder, lease, function, reserved, time.monotonic()):
            return web.json_response({"granted": True})
        return web.json_response({"granted": False, "reason": RESERVED_LIMIT})

    async def _release(self, request: web.Request) -> web.Response:
        """A slot's invocation ended (body: holder, lease)."""
        try:
            holder, lease = _holder_and_lease(await request.json())
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f"malformed release: {exc}")
        self.leases.release(holder, lease, time.monotonic())
        return web.Response(status=204)

    async def _wake(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            key: VersionKey = (body["namespace"], body["function"], body["version"])
            if not all(isinstance(part, str) and part for part in key):
                raise ValueError("namespace, function and version must be non-empty strings")
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f"malformed wake-up: {exc}")
        if self.scaler.wake(key, time.monotonic()):
            self._wakes.inc()
        self.poke()
        return web.Response(status=202)

    async def _started(self, request: web.Request) -> web.Response:
        """A pod announces it serves (body: namespace, function, version, address, token)."""
        try:
            body = await request.json()
            key: VersionKey = (body["namespace"], body["function"], body["version"])
            address, token = body["address"], body["token"]
            if not all(isinstance(part, str) and part for part in (*key, address, token)):
                raise ValueError("all fields must be non-empty strings")
            host, _, port = address.rpartition(":")
            if not port.isdigit():
                raise ValueError("address must be host:port")
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f"malformed announcement: {exc}")
        if not self.signing_key or not valid_announce_token(self.signing_key, token, *key):
            self._announcements.labels("refused").inc()
            return _error(403, "the token does not match this function version")
        if request.remote != host:
            # A pod announces itself, never another address.
            self._announcements.labels("refused").inc()
            log.warning("refused an announcement of %s from %s", host, request.remote)
            return _error(403, f"address {host} is not the caller ({request.remote})")
        self._announcements.labels("accepted").inc()
        if not self.scaler.started(key, address, time.monotonic()):
            return web.Response(status=204)
        for waiter in self._started_waiters.pop(key, set()):
            if not waiter.done():
                waiter.set_result(None)
        return web.Response(status=204)

    async def _poll_started(self, request: web.Request) -> web.Response:
        """Pods of a version announced lately; with ``wait=S``, waits up to S seconds for one."""
        query = request.query
        key = (query.get("namespace", ""), query.get("function", ""), query.get("version", ""))
        try:
            wait_s = min(float(query.get("wait", "0")), MAX_POLL_S)
        except ValueError:
            return _error(400, "wait must be a number of seconds")
        if not all(key):
            return _error(400, "namespace, function and version are required")
        addresses = self.scaler.recently_started(key, time.monotonic())
        if not addresses and wait_s > 0:
            waiter = asyncio.get_running_loop().create_future()
            self._started_waiters.setdefault(key, set()).add(waiter)
            try:
                await asyncio.wait_for(waiter, wait_s)
            except TimeoutError:
                pass
            finally:
                waiters = self._started_waiters.get(key)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._started_waiters[key]
            addresses = self.scaler.recently_started(key, time.monotonic())
        return web.json_response({"addresses": addresses})

    async def _state(self, _: web.Request) -> web.Response:
        now = time.monotonic()
        reserved = [
            {"namespace": key[0], "function": key[1], "held": held}
            for key, held in sorted(self.leases.held(now).items())
        ]
        return web.json_response({"versions": self.scaler.snapshot(now), "reserved": reserved})

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain")


def _holder_and_lease(body: Any) -> tuple[str, int]:
    holder = body["holder"]
    if not isinstance(holder, str) or not holder:
        raise ValueError("holder must be a non-empty string")
    return holder, number_from_json(body["lease"], "lease")


def _error(status: int, message: str) -> web.Response:
    body: dict[str, Any] = {"message": message}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")
