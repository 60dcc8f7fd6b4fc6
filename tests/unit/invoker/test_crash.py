"""``python -m kubelambda.invoker`` killed mid-run, and NATS restarted: nothing is lost."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from pathlib import Path

from kubelambda.gateway.publisher import AsyncInvocation
from kubelambda.gateway.publisher_nats import NatsPublisher
from kubelambda.invoker.jetstream import JetStreamBroker

from .conftest import (
    NAMESPACE,
    OK,
    Call,
    FakeGateway,
    NatsServer,
    Reply,
    eventually,
    function_error,
)

FUNCTIONS = f"""
apiVersion: kubelambda.io/v1alpha1
kind: Function
metadata: {{name: fn, namespace: {NAMESPACE}}}
spec:
  runtime: python3.11
  handler: app.handler
  code: {{inline: {{app.py: "x"}}}}
  async: {{maximumRetryAttempts: 1}}
"""


async def start_invoker(
    nats_url: str, gateway_url: str, functions: Path
) -> asyncio.subprocess.Process:
    env = os.environ | {
        "KUBELAMBDA_NATS_URL": nats_url,
        "KUBELAMBDA_INVOKER_GATEWAY_URL": gateway_url,
        "KUBELAMBDA_INVOKER_ADMIN_PORT": "0",
        "KUBELAMBDA_INVOKER_METRICS_PORT": "0",
        "KUBELAMBDA_INVOKER_RETRY_BASE_SECONDS": "0.05",
        "KUBELAMBDA_INVOKER_THROTTLE_MIN_SECONDS": "0.05",
        "KUBELAMBDA_INVOKER_THROTTLE_MAX_SECONDS": "0.5",
        "KUBELAMBDA_INVOKER_ACK_WAIT_SECONDS": "2",
        "KUBELAMBDA_INVOKER_FETCH_WAIT_SECONDS": "0.5",
        "KUBELAMBDA_INVOKER_FUNCTION_CONCURRENCY": "8",
        "KUBELAMBDA_INVOKER_LOG_LEVEL": "WARNING",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kubelambda.invoker", "--functions", str(functions), env=env
    )


def test_invoker_killed_and_nats_restarted(nats_server: NatsServer, tmp_path: Path) -> None:
    rng = random.Random(3)

    async def script(call: Call) -> Reply:
        await asyncio.sleep(0.01)
        return function_error() if rng.random() < 0.2 else OK

    async def scenario() -> None:
        functions = tmp_path / "functions.yaml"
        functions.write_text(FUNCTIONS)
        gateway = FakeGateway(script)
        await gateway.start()
        publisher = NatsPublisher(nats_server.url)
        await publisher.wait_connected()
        ids = [f"k-{i:03d}" for i in range(300)]
        invoker = await start_invoker(nats_server.url, gateway.url, functions)
        try:
            for request_id in ids:
                await publisher.publish(
                    AsyncInvocation(
                        request_id, NAMESPACE, "fn", None, b"{}", int(time.time() * 1000)
                    )
                )
            await eventually(lambda: len(gateway.successes()) >= 60, 30, "some progress")
            invoker.send_signal(signal.SIGKILL)
            await invoker.wait()
            # NATS goes down too (its store survives, like the pod's volume).
            nats_server.stop()
            await asyncio.sleep(0.5)
            nats_server.start()
            invoker = await start_invoker(nats_server.url, gateway.url, functions)

            broker = await JetStreamBroker.connect(nats_server.url, "test-observer")
            try:

                async def settled() -> bool:
                    letters = await broker.dead_letters(NAMESPACE, "fn", 0, 10_000)
                    done = set(gateway.successes()) | {x.event.request_id for x in letters}
                    return done >= set(ids)

                await eventually(settled, 60, "every event settled after the crash")
                await eventually(lambda: _empty(broker), 20, "the queue to drain")
                letters = await broker.dead_letters(NAMESPACE, "fn", 0, 10_000)
            finally:
                await broker.close()
            successes = gateway.successes()
            duplicates = (
                sum(n - 1 for n in successes.values())
                + len(letters)
                - len({x.event.request_id for x in letters})
            )
            print(f"\n300 events, {len(letters)} dead letters, {duplicates} duplicate outcomes")
            assert set(successes) | {x.event.request_id for x in letters} == set(ids)
        finally:
            if invoker.returncode is None:
                invoker.send_signal(signal.SIGTERM)
                await asyncio.wait_for(invoker.wait(), 30)
            await publisher.close()
            await gateway.stop()
        assert invoker.returncode == 0

    asyncio.run(scenario())


async def _empty(broker: JetStreamBroker) -> bool:
    return not any((await broker.queue_depths()).values())
