"""The autoscaler's HTTP endpoint: reports, wake-ups, pods announcing themselves, long polls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from kubelambda.autoscaler.policy import ScalingPolicy
from kubelambda.autoscaler.scaler import Autoscaler, ScaleAction
from kubelambda.autoscaler.server import AutoscalerService
from kubelambda.autoscaler.tokens import announce_token

KEY = ("team", "hello", "$LATEST")
SIGNING_KEY = "test-signing-key"


class Running:
    def __init__(self, service: AutoscalerService, url: str, applied: list[ScaleAction]) -> None:
        self.service = service
        self.url = url
        self.applied = applied

    async def post(self, path: str, body: object) -> tuple[int, str]:
        data = body if isinstance(body, bytes) else json.dumps(body)
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.url + path, data=data) as r,
        ):
            return r.status, await r.text()

    async def get(self, path: str) -> tuple[int, object]:
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as r:
            return r.status, await r.json()


@asynccontextmanager
async def serving() -> AsyncIterator[Running]:
    applied: list[ScaleAction] = []

    async def apply(action: ScaleAction) -> bool:
        applied.append(action)
        return True

    service = AutoscalerService(Autoscaler(), apply, SIGNING_KEY)
    runner = web.AppRunner(service.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    decisions = asyncio.create_task(service.run())
    try:
        yield Running(service, f"http://127.0.0.1:{port}", applied)
    finally:
        decisions.cancel()
        await runner.cleanup()


def with_autoscaler(body: Callable[[Running], Awaitable[None]]) -> None:
    async def main() -> None:
        async with serving() as running:
            await body(running)

    asyncio.run(main())


ACQUIRE = {"holder": "gw-1", "lease": 1, "namespace": "team", "function": "hello", "reserved": 2}


def acquire(holder: str, lease: int, reserved: int = 2) -> dict[str, object]:
    return {**ACQUIRE, "holder": holder, "lease": lease, "reserved": reserved}


def announcement(**overrides: str) -> dict[str, str]:
    body = {
        "namespace": KEY[0],
        "function": KEY[1],
        "version": KEY[2],
        "address": "127.0.0.1:8080",
        "token": announce_token(SIGNING_KEY, *KEY),
    }
    body.update(overrides)
    return body


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 2 s")


def test_a_wake_up_scales_a_version_at_zero_at_once() -> None:
    async def body(running: Running) -> None:
        running.service.scaler.observe(KEY, ScalingPolicy(), replicas=0, ready=0)
        status, _ = await running.post(
            "/v1/wake", {"namespace": KEY[0], "function": KEY[1], "version": KEY[2]}
        )
        assert status == 202
        await until(lambda: bool(running.applied))
        assert running.applied[0].decision.replicas == 1

    with_autoscaler(body)


def test_a_report_scales_up_without_waiting_for_the_tick() -> None:
    async def body(running: Running) -> None:
        running.service.scaler.observe(KEY, ScalingPolicy(), replicas=1, ready=1)
        entry = {"namespace": KEY[0], "function": KEY[1], "version": KEY[2], "peak": 7}
        status, _ = await running.post("/v1/report", {"reporter": "gw-1", "versions": [entry]})
        assert status == 204
        await until(lambda: bool(running.applied))
        assert running.applied[0].decision.replicas == 7
        _, state = await running.get("/v1/state")
        assert state == {
            "versions": [
                {
                    "namespace": "team",
                    "function": "hello",
                    "version": "$LATEST",
                    "replicas": 7,
                    "ready": 1,
                    "demand": 7,
                    "lastReason": "7 invocations in flight or waiting",
                }
            ],
            "reserved": [],
        }

    with_autoscaler(body)


def test_malformed_requests_get_400() -> None:
    async def body(running: Running) -> None:
        for path, payload in [
            ("/v1/report", b"not json"),
            ("/v1/report", {"versions": []}),
            ("/v1/report", {"reporter": "", "versions": []}),
            ("/v1/report", {"reporter": "gw", "versions": [{"peak": 1}]}),
            ("/v1/wake", {"namespace": "team"}),
            ("/v1/wake", ["team", "hello"]),
            ("/v1/started", announcement(address="no-port")),
            ("/v1/started", {"namespace": "team"}),
            ("/v1/report", {"reporter": "gw", "leases": {"held": [1]}}),
            ("/v1/report", {"reporter": "gw", "leases": {"last": 2, "held": ["1"]}}),
            ("/v1/acquire", {"holder": "gw", "lease": 1, "namespace": "team", "function": "f"}),
            ("/v1/acquire", {**ACQUIRE, "holder": ""}),
            ("/v1/acquire", {**ACQUIRE, "lease": -1}),
            ("/v1/acquire", {**ACQUIRE, "reserved": "2"}),
            ("/v1/acquire", {**ACQUIRE, "function": ""}),
            ("/v1/acquire", [1, 2]),
            ("/v1/release", {"holder": "gw"}),
            ("/v1/release", {"holder": "gw", "lease": True}),
        ]:
            status, text = await running.post(path, payload)
            assert status == 400, (path, payload, text)
            assert "malformed" in json.loads(text)["message"]
        status, _ = await running.get("/v1/started?namespace=team&function=hello&version=1&wait=x")
        assert status == 400

    with_autoscaler(body)


def test_a_pod_can_announce_itself_only() -> None:
    async def body(running: Running) -> None:
        forged = announce_token(SIGNING_KEY, "team", "other", "$LATEST")
        status, text = await running.post("/v1/started", announcement(token=forged))
        assert status == 403, text
        status, text = await running.post("/v1/started", announcement(address="10.9.9.9:8080"))
        assert status == 403, text
        assert "not the caller" in text
        status, _ = await running.post("/v1/started", announcement())
        assert status == 204
        _, news = await running.get("/v1/started?namespace=team&function=hello&version=$LATEST")
        assert news == {"addresses": ["127.0.0.1:8080"]}

    with_autoscaler(body)


def test_without_a_signing_key_announcements_are_refused() -> None:
    async def body(running: Running) -> None:
        running.service.signing_key = ""
        status, _ = await running.post("/v1/started", announcement())
        assert status == 403

    with_autoscaler(body)


def test_a_long_poll_returns_as_soon_as_a_pod_announces() -> None:
    async def body(running: Running) -> None:
        query = "/v1/started?namespace=team&function=hello&version=$LATEST&wait=10"
        poll = asyncio.create_task(running.get(query))
        await asyncio.sleep(0.2)
        assert not poll.done()
        started = asyncio.get_running_loop().time()
        await running.post("/v1/started", announcement())
        status, news = await asyncio.wait_for(poll, 2)
        assert (status, news) == (200, {"addresses": ["127.0.0.1:8080"]})
        assert asyncio.get_running_loop().time() - started < 1

    with_autoscaler(body)


def test_a_long_poll_without_news_ends_empty() -> None:
    async def body(running: Running) -> None:
        query = "/v1/started?namespace=team&function=hello&version=$LATEST&wait=0.2"
        assert await running.get(query) == (200, {"addresses": []})

    with_autoscaler(body)


def test_metrics_show_replicas_and_demand() -> None:
    async def body(running: Running) -> None:
        running.service.scaler.observe(KEY, ScalingPolicy(), replicas=3, ready=2)
        async with aiohttp.ClientSession() as session, session.get(running.url + "/metrics") as r:
            text = await r.text()
        assert (
            'kubelambda_autoscaler_desired_replicas{function="hello",namespace="team",'
            'version="$LATEST"} 3.0' in text
        )

    with_autoscaler(body)


def test_slots_of_a_reserved_cap_are_granted_released_and_reconciled() -> None:
    granted = json.dumps({"granted": True})
    refused = json.dumps(
        {"granted": False, "reason": "ReservedFunctionConcurrentInvocationLimitExceeded"}
    )

    async def body(running: Running) -> None:
        assert await running.post("/v1/acquire", acquire("gw-1", 1)) == (200, granted)
        assert await running.post("/v1/acquire", acquire("gw-2", 1)) == (200, granted)
        assert await running.post("/v1/acquire", acquire("gw-2", 2)) == (200, refused)
        _, state = await running.get("/v1/state")
        assert state == {
            "versions": [],
            "reserved": [{"namespace": "team", "function": "hello", "held": 2}],
        }
        assert await running.post("/v1/release", {"holder": "gw-1", "lease": 1}) == (204, "")
        assert await running.post("/v1/acquire", acquire("gw-2", 3)) == (200, granted)
        # gw-2's release of lease 1 got lost: its report no longer lists it. An older gateway's
        # report (no leases) is still accepted and frees nothing.
        assert (await running.post("/v1/report", {"reporter": "gw-2", "versions": []}))[0] == 204
        _, state = await running.get("/v1/state")
        assert state["reserved"] == [{"namespace": "team", "function": "hello", "held": 2}]
        report = {"reporter": "gw-2", "versions": [], "leases": {"last": 3, "held": [3]}}
        assert (await running.post("/v1/report", report))[0] == 204
        _, state = await running.get("/v1/state")
        assert state["reserved"] == [{"namespace": "team", "function": "hello", "held": 1}]
        assert await running.post("/v1/acquire", acquire("gw-1", 2)) == (200, granted)

    with_autoscaler(body)
