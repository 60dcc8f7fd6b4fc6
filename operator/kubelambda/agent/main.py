"""Agent entry point: wires the servers, the runtime slots and shutdown together."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Mapping

from kubelambda.agent import eventloop
from kubelambda.agent.announce import announce
from kubelambda.agent.config import (
    POOL_TOKEN_ENV,
    AgentConfig,
    Announcement,
    ConfigError,
    load_config,
)
from kubelambda.agent.errors import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES
from kubelambda.agent.external import ExternalSlot
from kubelambda.agent.httpio import serve as serve_http
from kubelambda.agent.invoke import InvokeEndpoint
from kubelambda.agent.procs import Reaper
from kubelambda.agent.runtime import RuntimeSlot
from kubelambda.agent.runtime_api import RuntimeApi

TICK_S = 0.25  # held log lines, peak-RSS sampling of running invocations (OOM evidence)
TERM_GRACE_S = 1.0  # SIGTERM -> SIGKILL for runtimes at shutdown
FLUSH_LIMIT_S = 5.0  # at shutdown, for answers still being written to slow clients
_POLL_S = 0.02
SETTLE_POLL_S = 0.002  # a cold start waits on this poll: keep it short (startup only)


async def _tick(slots: list[RuntimeSlot]) -> None:
    while True:
        await asyncio.sleep(TICK_S)
        for slot in slots:
            slot.tick()


async def _wait_until(
    condition: Callable[[], bool], limit_s: float, poll_s: float = _POLL_S
) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not condition() and loop.time() < end:
        await asyncio.sleep(poll_s)


async def _announce_when_settled(
    config: AgentConfig, announcement: Announcement, slots: list[RuntimeSlot]
) -> None:
    """Once every runtime has initialised (or failed to: invocations then get the init error,
    as on Lambda), tell the autoscaler this instance serves."""
    await _wait_until(lambda: all(slot.settled for slot in slots), float("inf"), SETTLE_POLL_S)
    await announce(config, announcement)


async def _stop_runtimes(slots: list[RuntimeSlot]) -> None:
    for slot in slots:
        slot.terminate()
    await _wait_until(lambda: not any(s.alive for s in slots), TERM_GRACE_S)
    for slot in slots:
        slot.kill()
    await _wait_until(lambda: not any(s.alive for s in slots), TERM_GRACE_S)


async def serve(config: AgentConfig) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reaper = Reaper()
    eventloop.on_child_exit(reaper.reap)

    slot_type = ExternalSlot if config.external else RuntimeSlot
    slots = [slot_type(i, config, reaper) for i in range(config.concurrency)]
    api_servers = [
        await serve_http(
            RuntimeApi(slot).handle, "127.0.0.1", slot.port, MAX_RESPONSE_BYTES, cork=True
        )
        for slot in slots
    ]
    endpoint = InvokeEndpoint(config, slots)
    server = await serve_http(endpoint.handle, "0.0.0.0", config.invoke_port, MAX_REQUEST_BYTES)
    for slot in slots:  # only once every port is bound: a bind failure leaves no orphans
        slot.spawn()
    ticker = asyncio.create_task(_tick(slots))
    announcing = None
    if config.announce is not None:
        announcing = asyncio.create_task(_announce_when_settled(config, config.announce, slots))
    print(
        f"kubelambda-agent: {config.function_name}:{config.version} ({config.runtime}), "
        f"{config.concurrency} runtime(s), invoke port {config.invoke_port}, "
        f"{eventloop.loop_name(loop)} loop",
        file=sys.stderr,
        flush=True,
    )

    try:
        await stop.wait()
        # Graceful shutdown: refuse new work, let in-flight invocations finish (each is
        # bounded by its timeout), then stop the runtimes.
        server.close()
        endpoint.draining = True
        await _wait_until(lambda: endpoint.active == 0, float("inf"))
        await _wait_until(lambda: server.flushed, FLUSH_LIMIT_S)
        ticker.cancel()
        if announcing is not None:
            announcing.cancel()
        await _stop_runtimes(slots)
    finally:
        for slot in slots:
            slot.flush_log()  # the last END/REPORT lines, held for a few milliseconds
    for api_server in api_servers:
        api_server.close()


async def serve_when_specialized(environ: Mapping[str, str]) -> None:
    """Warm pool mode: wait in the pool, then serve the function it was given."""
    # Imported here: the unpacking (zipfile, urllib, hashlib: about 3 MB of RSS) is a pool
    # pod's job, so it stays out of every other function pod's agent.
    from kubelambda.agent.pool import wait_for_specialization  # noqa: PLC0415

    config = await wait_for_specialization(environ)
    if config is not None:
        await serve(config)


def main() -> int:
    try:
        if os.environ.get(POOL_TOKEN_ENV):
            eventloop.run(serve_when_specialized(os.environ))
            return 0
        config = load_config(os.environ)
    except ConfigError as exc:
        print(f"kubelambda-agent: {exc}", file=sys.stderr)
        return 2
    eventloop.run(serve(config))
    return 0
