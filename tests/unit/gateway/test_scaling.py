"""The gateway's part in autoscaling: demand peaks, announced pods, the autoscaler client, and
reserved concurrency shared by the replicas through the autoscaler."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from botocore.exceptions import ClientError

from kubelambda.autoscaler.leases import ConcurrencyLeases
from kubelambda.autoscaler.scaler import Autoscaler, ScaleAction
from kubelambda.autoscaler.server import AutoscalerService
from kubelambda.gateway import routing, scaling
from kubelambda.gateway.concurrency import (
    LOCAL,
    PLATFORM_LIMIT,
    RESERVED_LIMIT,
    Dispatcher,
)
from kubelambda.gateway.metrics import OK
from kubelambda.gateway.routing import ENDPOINT_SLICE, RoutingTable
from kubelambda.gateway.scaling import AutoscalerClient, SharedCounter
from tests.unit.gateway.conftest import lambda_client
from tests.unit.gateway.objects import add, add_function, add_slice, slice_obj

KEY = ("default", "fn", "$LATEST")
FN = ("default", "fn")
OTHER = ("default", "other")
POD = ("10.0.0.7", 8080)
UNREACHABLE = "http://127.0.0.1:9"


def test_demand_is_the_peak_of_running_plus_waiting_since_the_last_take() -> None:
    async def body() -> None:
        pods: list[tuple[str, int]] = [POD]
        dispatcher = Dispatcher(lambda key: pods, queue_length=10)
        waiting: list[object] = []
        dispatcher.on_waiting = waiting.append
        first = dispatcher.try_acquire(KEY, 1, set())
        assert first == POD
        queued = [asyncio.create_task(dispatcher.wait(KEY, 1, set(), 5)) for _ in range(2)]
        await asyncio.sleep(0)
        assert waiting == [KEY, KEY]
        assert dispatcher.take_demand() == {KEY: 3}
        dispatcher.release(KEY, POD)  # the first waiter takes the slot
        await asyncio.sleep(0)
        dispatcher.release(KEY, POD)  # the second one too
        await asyncio.sleep(0)
        # Each period's peak starts from the count at its start (3), not from zero...
        assert dispatcher.take_demand() == {KEY: 3}
        # ...which is now one running invocation.
        assert dispatcher.take_demand() == {KEY: 1}
        dispatcher.release(KEY, POD)
        assert dispatcher.take_demand() == {KEY: 1}
        assert dispatcher.take_demand() == {}
        await asyncio.gather(*queued)

    asyncio.run(body())


def test_an_announced_pod_serves_until_its_slice_takes_over() -> None:
    table = RoutingTable()
    changed: list[object] = []
    table.on_endpoints_changed = changed.append
    table.announce(KEY, POD)
    assert table.endpoints(KEY) == (POD,)
    assert changed == [KEY]
    # Listed but not ready yet by the kubelet: still routed.
    add(table, ENDPOINT_SLICE, slice_obj("fn", "$LATEST", [POD[0]], ready=False))
    assert table.endpoints(KEY) == (POD,)
    # Ready in the slice: one entry, from the slice.
    add(table, ENDPOINT_SLICE, slice_obj("fn", "$LATEST", [POD[0]], ready=True))
    assert table.endpoints(KEY) == (POD,)
    table.announce(KEY, POD)  # old news changes nothing
    assert table.endpoints(KEY) == (POD,)


def test_a_terminating_pod_is_not_kept_by_its_announcement() -> None:
    table = RoutingTable()
    table.announce(KEY, POD)
    obj = slice_obj("fn", "$LATEST", [POD[0]])
    obj["endpoints"][0]["conditions"] = {"ready": False, "terminating": True}
    add(table, ENDPOINT_SLICE, obj)
    assert table.endpoints(KEY) == ()


def test_an_announced_pod_its_slice_stops_listing_is_gone() -> None:
    """Deleted while still "starting" in its slice (scaled down before the kubelet found it
    ready): the slice drops it without a terminating state; the announcement goes with it."""
    table = RoutingTable()
    table.announce(KEY, POD)
    add(table, ENDPOINT_SLICE, slice_obj("fn", "$LATEST", [POD[0]], ready=False))
    assert table.endpoints(KEY) == (POD,)
    add(table, ENDPOINT_SLICE, slice_obj("fn", "$LATEST", []))
    assert table.endpoints(KEY) == ()


def test_an_announced_pod_no_slice_lists_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    table = RoutingTable()
    table.announce(KEY, POD)
    monkeypatch.setattr(routing, "ANNOUNCED_TTL_S", -1.0)
    add(table, ENDPOINT_SLICE, slice_obj("fn", "$LATEST", ["10.0.0.8"]))
    assert table.endpoints(KEY) == (("10.0.0.8", 8080),)


def test_an_undeliverable_announced_pod_is_dropped() -> None:
    table = RoutingTable()
    table.announce(KEY, POD)
    table.unannounce(KEY, POD)
    assert table.endpoints(KEY) == ()


class FakeAutoscaler:
    def __init__(self) -> None:
        self.reports: list[Any] = []
        self.wakes: list[Any] = []
        self.news: asyncio.Future[list[str]] | None = None
        self.acquires: list[Any] = []
        self.releases: list[Any] = []
        self.grant = True
        self.delay_s = 0.0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/report", self._report)
        app.router.add_post("/v1/wake", self._wake)
        app.router.add_get("/v1/started", self._started)
        app.router.add_post("/v1/acquire", self._acquire)
        app.router.add_post("/v1/release", self._release)
        return app

    async def _acquire(self, request: web.Request) -> web.Response:
        self.acquires.append(await request.json())
        await asyncio.sleep(self.delay_s)
        if self.grant:
            return web.json_response({"granted": True})
        return web.json_response({"granted": False, "reason": RESERVED_LIMIT})

    async def _release(self, request: web.Request) -> web.Response:
        self.releases.append(await request.json())
        return web.Response(status=204)

    async def _report(self, request: web.Request) -> web.Response:
        self.reports.append(await request.json())
        return web.Response(status=204)

    async def _wake(self, request: web.Request) -> web.Response:
        self.wakes.append(await request.json())
        return web.Response(status=202)

    async def _started(self, request: web.Request) -> web.Response:
        assert request.query["wait"]
        addresses = await self.news if self.news is not None else []
        return web.json_response({"addresses": addresses})


def test_client_reports_wakes_once_a_second_and_routes_announced_pods() -> None:
    async def body() -> None:
        fake = FakeAutoscaler()
        fake.news = asyncio.get_running_loop().create_future()
        runner = web.AppRunner(fake.app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        table = RoutingTable()
        waiting = {KEY}
        async with aiohttp.ClientSession() as session:
            client = AutoscalerClient(
                url,
                lambda: {KEY: 4},
                session,
                table=table,
                waiting=lambda key: key in waiting,
                reporter="gw-test",
                demand_now=lambda: {KEY: 3},
            )
            client.wake(*KEY)
            client.wake(*KEY)  # deduplicated
            await client.report()
            client.demand_rising(KEY)
            await asyncio.sleep(0.1)
            assert table.endpoints(KEY) == ()
            fake.news.set_result([f"{POD[0]}:{POD[1]}"])
            for _ in range(100):
                if table.endpoints(KEY):
                    break
                await asyncio.sleep(0.01)
            assert table.endpoints(KEY) == (POD,)
            waiting.clear()
            client.close()
        await runner.cleanup()
        assert len(fake.wakes) == 1
        assert fake.wakes[0] == {"namespace": "default", "function": "fn", "version": "$LATEST"}
        assert fake.reports == [
            {
                "reporter": "gw-test",
                "versions": [
                    {
                        "namespace": "default",
                        "function": "fn",
                        "version": "$LATEST",
                        "peak": 4,
                        "now": 3,
                    }
                ],
            }
        ]

    asyncio.run(body())


def test_client_survives_an_unreachable_autoscaler() -> None:
    async def body() -> None:
        async with aiohttp.ClientSession() as session:
            client = AutoscalerClient(
                "http://127.0.0.1:9",
                dict,
                session,
                table=RoutingTable(),
                waiting=lambda key: False,
            )
            await client.report()  # logs, does not raise
            client.wake(*KEY)
            await asyncio.sleep(0.05)

    asyncio.run(body())


# --- reserved concurrency shared by the replicas ---------------------------------------------


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` on a free local port; its URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def fake_autoscaler() -> AsyncIterator[tuple[FakeAutoscaler, str]]:
    fake = FakeAutoscaler()
    async with serving(fake.app()) as url:
        yield fake, url


async def admit(counter: SharedCounter, function: tuple[str, str], reserved: int | None) -> Any:
    """What ``try_acquire`` answers, awaited if it takes a round trip."""
    admitted = counter.try_acquire(function, reserved)
    return admitted if isinstance(admitted, int | str) else await admitted


def test_shared_counter_admits_functions_without_a_cap_here() -> None:
    async def body() -> None:
        async with aiohttp.ClientSession() as session:
            counter = SharedCounter(UNREACHABLE, session, limit=2)
            # Decided at once, no awaitable: nothing is asked of the autoscaler.
            assert counter.try_acquire(FN, None) == LOCAL
            assert counter.try_acquire(FN, 0) == RESERVED_LIMIT
            assert counter.try_acquire(OTHER, None) == LOCAL
            assert counter.try_acquire(OTHER, None) == PLATFORM_LIMIT
            counter.release(OTHER, LOCAL)
            assert counter.try_acquire(OTHER, None) == LOCAL
            assert counter.held_leases() == {"last": 0, "held": []}

    asyncio.run(body())


def test_shared_counter_asks_for_reserved_slots_and_releases_them_in_the_background() -> None:
    async def body() -> None:
        async with fake_autoscaler() as (fake, url), aiohttp.ClientSession() as session:
            counter = SharedCounter(url, session, limit=1, holder="gw-test")
            admitted = counter.try_acquire(FN, 2)
            assert not isinstance(admitted, int | str)
            slot = await admitted
            assert slot == 1
            assert fake.acquires == [
                {
                    "holder": "gw-test",
                    "lease": 1,
                    "namespace": "default",
                    "function": "fn",
                    "reserved": 2,
                }
            ]
            assert counter.held_leases() == {"last": 1, "held": [1]}
            # The platform limit (1) counts the slot the autoscaler granted.
            assert counter.try_acquire(OTHER, None) == PLATFORM_LIMIT
            counter.release(FN, slot)
            assert counter.held_leases() == {"last": 1, "held": []}
            await counter.close()
            assert fake.releases == [{"holder": "gw-test", "lease": 1}]
            fake.grant = False
            assert await admit(counter, FN, 2) == RESERVED_LIMIT
            assert counter.held_leases() == {"last": 2, "held": []}
            assert counter.try_acquire(OTHER, None) == LOCAL  # the refusal counted nothing

    asyncio.run(body())


def test_shared_counter_throttles_at_the_platform_limit_without_asking() -> None:
    async def body() -> None:
        async with fake_autoscaler() as (fake, url), aiohttp.ClientSession() as session:
            counter = SharedCounter(url, session, limit=1)
            assert counter.try_acquire(OTHER, None) == LOCAL
            assert await admit(counter, FN, 2) == PLATFORM_LIMIT
            assert fake.acquires == []

    asyncio.run(body())


def test_shared_counter_counts_here_while_the_autoscaler_is_unreachable(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body() -> None:
        async with aiohttp.ClientSession() as session:
            counter = SharedCounter(UNREACHABLE, session, limit=10)
            assert await admit(counter, FN, 1) == LOCAL  # the invocation is not failed
            # For a while every answer is given here, at once: the reserved cap per replica.
            assert counter.try_acquire(FN, 1) == RESERVED_LIMIT
            counter.release(FN, LOCAL)  # nothing to send
            assert counter.try_acquire(FN, 1) == LOCAL
            counter.release(FN, LOCAL)
            # Once the while is over, it asks again; the failure is not logged again.
            monkeypatch.setattr(counter, "_local_until", 0.0)
            admitted = counter.try_acquire(FN, 1)
            assert not isinstance(admitted, int | str)
            assert await admitted == LOCAL
            assert counter.held_leases() == {"last": 2, "held": []}

    with caplog.at_level(logging.WARNING, logger="kubelambda.gateway.scaling"):
        asyncio.run(body())
    assert len(caplog.records) == 1
    assert "reserved concurrency counted per replica" in caplog.records[0].getMessage()


def test_a_slow_autoscaler_is_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scaling, "ACQUIRE_TIMEOUT_S", 0.05)

    async def body() -> None:
        async with fake_autoscaler() as (fake, url), aiohttp.ClientSession() as session:
            fake.delay_s = 0.3
            counter = SharedCounter(url, session, limit=10)
            started = time.monotonic()
            assert await admit(counter, FN, 2) == LOCAL
            assert time.monotonic() - started < 0.25
            # Granted after all? Not listed as held: the next report frees it.
            assert counter.held_leases() == {"last": 1, "held": []}
            counter.release(FN, LOCAL)

    asyncio.run(body())


def test_a_cancelled_acquire_counts_nothing() -> None:
    async def body() -> None:
        async with fake_autoscaler() as (fake, url), aiohttp.ClientSession() as session:
            fake.delay_s = 0.3
            counter = SharedCounter(url, session, limit=1)
            waiting = asyncio.create_task(admit(counter, FN, 2))
            while not fake.acquires:
                await asyncio.sleep(0.01)
            assert counter.held_leases() == {"last": 1, "held": [1]}  # it may yet be granted
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert counter.held_leases() == {"last": 1, "held": []}
            assert counter.try_acquire(OTHER, None) == LOCAL

    asyncio.run(body())


def test_reports_carry_the_held_leases() -> None:
    async def body() -> None:
        async with fake_autoscaler() as (fake, url), aiohttp.ClientSession() as session:
            client = AutoscalerClient(
                url,
                dict,
                session,
                table=RoutingTable(),
                waiting=lambda key: False,
                reporter="gw-test",
                leases=lambda: {"last": 3, "held": [3]},
            )
            await client.report()
            assert fake.reports == [
                {"reporter": "gw-test", "versions": [], "leases": {"last": 3, "held": [3]}}
            ]

    asyncio.run(body())


async def _applied(action: ScaleAction) -> bool:
    return True


@asynccontextmanager
async def real_autoscaler(ttl_s: float) -> AsyncIterator[tuple[AutoscalerService, str]]:
    service = AutoscalerService(Autoscaler(), _applied, leases=ConcurrencyLeases(ttl_s=ttl_s))
    async with serving(service.app()) as url:
        yield service, url


def test_two_replicas_share_a_reserved_cap_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    ttl_s = 0.5

    async def body() -> None:
        async with (
            real_autoscaler(ttl_s) as (service, url),
            aiohttp.ClientSession() as session_a,
            aiohttp.ClientSession() as session_b,
        ):
            a = SharedCounter(url, session_a, limit=100, holder="gw-a")
            b = SharedCounter(url, session_b, limit=100, holder="gw-b")
            replicas = [a, b] * 5
            answers = await asyncio.gather(*(admit(c, FN, 2) for c in replicas))
            granted = [
                (c, s) for c, s in zip(replicas, answers, strict=True) if s != RESERVED_LIMIT
            ]
            assert len(granted) == 2, answers
            assert all(isinstance(slot, int) and slot > 0 for _, slot in granted)
            assert answers.count(RESERVED_LIMIT) == 8

            # Released (in the background): granted again, to either replica.
            for counter, slot in granted:
                counter.release(FN, slot)
            await asyncio.gather(a.close(), b.close())
            slot_a, slot_b = await admit(a, FN, 2), await admit(b, FN, 2)
            assert isinstance(slot_a, int)
            assert isinstance(slot_b, int)
            assert await admit(a, FN, 2) == RESERVED_LIMIT

            # a's release is lost; its next report (which no longer lists the lease) frees it.
            async def lost(lease: int) -> None:
                pass

            monkeypatch.setattr(a, "_release", lost)
            a.release(FN, slot_a)
            assert await admit(b, FN, 2) == RESERVED_LIMIT
            client = AutoscalerClient(
                url,
                dict,
                session_a,
                table=RoutingTable(),
                waiting=lambda key: False,
                reporter=a.holder,
                leases=a.held_leases,
            )
            await client.report()
            slot_b2 = await admit(b, FN, 2)
            assert isinstance(slot_b2, int)

            # b goes silent holding both slots: freed once its TTL has passed.
            assert await admit(a, FN, 2) == RESERVED_LIMIT
            assert service.leases.held(time.monotonic()) == {FN: 2}
            await asyncio.sleep(ttl_s + 0.1)
            slot = await admit(a, FN, 2)
            assert isinstance(slot, int)
            assert service.leases.held(time.monotonic()) == {FN: 1}

    asyncio.run(body())


# --- the same, through two whole gateways in front of a real agent ---------------------------


class AutoscalerThread:
    """The real autoscaler endpoint on its own event loop, as the operator runs it."""

    def __init__(self) -> None:
        self.service = AutoscalerService(Autoscaler(), _applied)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = web.AppRunner(self.service.app())
        self.run(self.runner.setup())
        self.run(web.TCPSite(self.runner, "127.0.0.1", 0).start())
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def run(self, coro: Awaitable[Any]) -> Any:
        async def wrapper() -> Any:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    async def held(self) -> dict[tuple[str, str], int]:
        return self.service.leases.held(time.monotonic())

    def stop(self) -> None:
        self.run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def autoscaler() -> Iterator[AutoscalerThread]:
    running = AutoscalerThread()
    yield running
    running.stop()


def test_two_gateways_admit_exactly_the_reserved_concurrency(
    autoscaler: AutoscalerThread,
    start_gateway: Callable[..., Any],
    agents: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Exact counting while the autoscaler answers is what is tested here: on a loaded machine
    # its answer can take longer than the production bound, after which each gateway counts
    # on its own (that fallback has its own test).
    monkeypatch.setattr(scaling, "ACQUIRE_TIMEOUT_S", 5.0)
    port = agents(concurrency=2).port
    gateways = [start_gateway(autoscaler_url=autoscaler.url) for _ in range(2)]
    for gateway in gateways:

        def feed(table: RoutingTable = gateway.table) -> None:
            add_function(table, "capped", reserved=2, per_instance=2)
            add_slice(table, "capped", "$LATEST", ["127.0.0.1"], port=port)

        gateway.call(feed)
    clients = [lambda_client(gateways[i % 2].url) for i in range(10)]

    def invoke(client: Any) -> str:
        try:
            client.invoke(FunctionName="capped", Payload=b'{"sleep": 1}')
        except ClientError as exc:
            response = exc.response
            return f"{response['ResponseMetadata']['HTTPStatusCode']} {response.get('Reason')}"
        return "ok"

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(invoke, clients))
    assert sorted(outcomes) == [f"429 {RESERVED_LIMIT}"] * 8 + ["ok"] * 2
    # Every slot was given back: both gateways are admitted again.
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(invoke, clients[:2])) == ["ok", "ok"]
    # The HTTP APIs' way in shares the cap too, and gives its slot back.
    gateway = gateways[0]
    target = gateway.call(lambda: gateway.table.resolve("default", "capped", None))
    response, outcome = gateway.run(gateway.gateway.api.invoke(target, b"{}", "request-1"))
    assert (response.status, outcome) == (200, OK)
    for _ in range(100):
        if not autoscaler.run(autoscaler.held()):
            break
        time.sleep(0.01)
    assert autoscaler.run(autoscaler.held()) == {}


def test_a_pod_busy_with_another_replicas_call_is_waited_for(
    start_gateway: Callable[..., Any], agents: Callable[..., Any]
) -> None:
    """Each replica counts only its own calls to a pod: with one slot per pod, the second
    replica's call finds the agent busy. It waits and gets the slot; nobody sees a 429."""
    port = agents(concurrency=1).port
    gateways = [start_gateway() for _ in range(2)]
    for gateway in gateways:

        def feed(table: RoutingTable = gateway.table) -> None:
            add_function(table, "single", per_instance=1)
            add_slice(table, "single", "$LATEST", ["127.0.0.1"], port=port)

        gateway.call(feed)
    clients = [lambda_client(gateways[i % 2].url) for i in range(4)]

    def invoke(client: Any) -> int:
        response = client.invoke(FunctionName="single", Payload=b'{"sleep": 0.3}')
        return int(response["StatusCode"])

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(invoke, clients)) == [200] * 4
