"""Async invocation throughput on local processes only (no cluster, no gateway).

    .venv/bin/python -m bench.async_throughput_local [--events 10000] [--concurrency 256]

A real ``nats-server -js`` (from ``hack/nats.sh``), the gateway's ``NatsPublisher`` and a
``python -m kubelambda.invoker`` process delivering to a noop stub that answers every Invoke
API call at once (what the invoker costs, without a function behind it).

- accepted/s: ``NatsPublisher.publish`` (each returns after JetStream's ack, as a 202 would)
  with ``--concurrency`` publishes in flight, from this process, the invoker stopped;
- delivered/s: the invoker then drains the backlog to the stub (one function, 64 at once);
- queue-to-start latency with free capacity: events published one at a time, 20 ms apart,
  the stub noting when each arrives (p50 / p99; target p50 <= 20 ms).

Results: bench/results/async_throughput_local-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

from kubelambda.gateway.publisher import AsyncInvocation
from kubelambda.gateway.publisher_nats import NatsPublisher
from kubelambda.invoker.jetstream import JetStreamBroker

REPO = Path(__file__).resolve().parents[1]
FUNCTIONS = """
kind: Function
metadata: {name: noop, namespace: bench}
spec: {runtime: python3.11, handler: app.handler, code: {inline: {app.py: x}}}
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _nats_server() -> str:
    cache = Path(os.environ.get("KUBELAMBDA_CACHE") or Path.home() / ".cache" / "kubelambda")
    binary = cache / "bin" / "current" / "nats-server"
    found = str(binary) if binary.exists() else shutil.which("nats-server")
    if not found:
        sys.exit("nats-server not found: run hack/nats.sh")
    return found


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _invocation(i: int) -> AsyncInvocation:
    return AsyncInvocation(f"bench-{i}", "bench", "noop", None, b'{"n":1}', int(time.time() * 1000))


async def bench(events: int, concurrency: int, work: Path) -> dict[str, Any]:  # noqa: PLR0915 (one scenario, read top to bottom)
    arrivals: dict[str, float] = {}

    async def invoke(request: web.Request) -> web.Response:
        arrivals[request.headers["X-Kubelambda-Request-Id"]] = time.time()
        await request.read()
        return web.Response(body=b"null")

    app = web.Application()
    app.router.add_post("/namespaces/{ns}/2015-03-31/functions/{fn}/invocations", invoke)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stub_port = _port()
    await web.TCPSite(runner, "127.0.0.1", stub_port).start()

    nats_port = _port()
    nats_url = f"nats://127.0.0.1:{nats_port}"
    nats = subprocess.Popen(
        [_nats_server(), "-js", "-a", "127.0.0.1", "-p", str(nats_port), "-sd", str(work / "js")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (work / "functions.yaml").write_text(FUNCTIONS)
    invoker: subprocess.Popen[bytes] | None = None
    publisher = NatsPublisher(nats_url)
    try:
        await asyncio.wait_for(publisher.wait_connected(), 10)
        broker = await JetStreamBroker.connect(nats_url, "bench")

        # 1. accepted/s, nothing consuming.
        semaphore = asyncio.Semaphore(concurrency)

        async def publish(i: int) -> None:
            async with semaphore:
                await publisher.publish(_invocation(i))

        started = time.perf_counter()
        await asyncio.gather(*(publish(i) for i in range(events)))
        accepted_s = events / (time.perf_counter() - started)

        # 2. delivered/s: an invoker drains the backlog.
        env = os.environ | {
            "KUBELAMBDA_NATS_URL": nats_url,
            "KUBELAMBDA_INVOKER_GATEWAY_URL": f"http://127.0.0.1:{stub_port}",
            "KUBELAMBDA_INVOKER_ADMIN_PORT": "0",
            "KUBELAMBDA_INVOKER_METRICS_PORT": "0",
            "KUBELAMBDA_INVOKER_LOG_LEVEL": "WARNING",
        }
        started = time.perf_counter()
        invoker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubelambda.invoker",
                "--functions",
                str(work / "functions.yaml"),
            ],
            env=env,
        )
        while not arrivals:
            await asyncio.sleep(0.001)
        cpu_at_first = _cpu_s(invoker.pid)
        while len(arrivals) < events:
            await asyncio.sleep(0.01)
        # CPU the invoker spent per delivered event (not its start-up): what the cores bound.
        invoker_cpu_ms = (_cpu_s(invoker.pid) - cpu_at_first) * 1000 / events
        first = min(arrivals.values())
        delivered_s = events / (max(arrivals.values()) - first)
        startup_s = first - (time.time() - (time.perf_counter() - started))
        while any((await broker.queue_depths()).values()):
            await asyncio.sleep(0.05)

        # 3. queue-to-start latency with free capacity.
        latencies = []
        for i in range(300):
            invocation = _invocation(events + i)
            await publisher.publish(invocation)
            while invocation.request_id not in arrivals:
                await asyncio.sleep(0.0005)
            latencies.append(
                (arrivals[invocation.request_id] - invocation.received_ms / 1000) * 1000
            )
            await asyncio.sleep(0.02)
        latencies.sort()
        await broker.close()
    finally:
        await publisher.close()
        if invoker is not None:
            invoker.send_signal(signal.SIGTERM)
            invoker.wait(30)
        nats.terminate()
        nats.wait(10)
        await runner.cleanup()
    return {
        "events": events,
        "publish_concurrency": concurrency,
        "accepted_per_s": round(accepted_s),
        "delivered_per_s": round(delivered_s),
        "invoker_cpu_ms_per_event": round(invoker_cpu_ms, 3),
        "invoker_startup_s": round(startup_s, 2),
        "queue_to_start_ms": {
            "p50": round(statistics.median(latencies), 2),
            "p99": round(latencies[int(len(latencies) * 0.99) - 1], 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = uvloop.run(bench(args.events, args.concurrency, Path(tmp)))
    result["time"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps(result, indent=2))
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"async_throughput_local-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
