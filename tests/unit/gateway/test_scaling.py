"""The gateway's part in autoscaling: demand peaks, announced pods, the autoscaler client."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kubelambda.gateway import routing
from kubelambda.gateway.concurrency import Dispatcher
from kubelambda.gateway.routing import ENDPOINT_SLICE, RoutingTable
from kubelambda.gateway.scaling import AutoscalerClient
from tests.unit.gateway.objects import add, slice_obj

KEY = ("default", "fn", "$LATEST")
POD = ("10.0.0.7", 8080)


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

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/report", self._report)
        app.router.add_post("/v1/wake", self._wake)
        app.router.add_get("/v1/started", self._started)
        return app

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
                    {"namespace": "default", "function": "fn", "version": "$LATEST", "peak": 4}
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
