"""Gateway entry point: wires routing, watches, the HTTP server, metrics and shutdown."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time

import aiohttp
import uvloop

from kubelambda.gateway.access import AccessKeyAuthenticator
from kubelambda.gateway.apiauth import ReadSecret
from kubelambda.gateway.auth import Authenticator
from kubelambda.gateway.concurrency import ConcurrencyCounter, Dispatcher, LocalCounter
from kubelambda.gateway.config import ConfigError, GatewayConfig, load_config
from kubelambda.gateway.httpapi import MAX_PAYLOAD_BYTES, HttpApi
from kubelambda.gateway.httpserver import ServerState
from kubelambda.gateway.httpserver import serve as serve_http
from kubelambda.gateway.invoke import InvokeApi
from kubelambda.gateway.metrics import GatewayMetrics
from kubelambda.gateway.publisher import AsyncPublisher
from kubelambda.gateway.publisher_nats import NatsPublisher
from kubelambda.gateway.routing import KINDS, RoutingTable, VersionKey
from kubelambda.gateway.scaling import AutoscalerClient, SharedCounter
from kubelambda.gateway.upstream import UpstreamPool
from kubelambda.gateway.usage import QuotaCounter
from kubelambda.gateway.usage_nats import NatsQuotaCounter
from kubelambda.gateway.waker import Waker
from kubelambda.gateway.watch import RESOURCES
from kubelambda.kubeapi import HttpKubeApi, KubeConnection, ResourceWatch, connection_from_env

log = logging.getLogger("kubelambda.gateway")

_POLL_S = 0.02


class Gateway:
    """One gateway: started by ``run`` (with watches) or by tests (with a table they feed)."""

    def __init__(
        self,
        config: GatewayConfig,
        table: RoutingTable | None = None,
        *,
        counter: ConcurrencyCounter | None = None,
        publisher: AsyncPublisher | None = None,
        waker: Waker | None = None,
        authenticator: Authenticator | None = None,
        read_secret: ReadSecret | None = None,
        quota_counter: QuotaCounter | None = None,
    ) -> None:
        self.config = config
        self.table = table or RoutingTable(config.region)
        # Replaced in start() by a SharedCounter when there is an autoscaler to share with.
        self.counter: ConcurrencyCounter = counter or LocalCounter(config.max_concurrency)
        self._counter_given = counter is not None
        self._shared: SharedCounter | None = None
        self._leases_session: aiohttp.ClientSession | None = None
        self.dispatcher = Dispatcher(self.table.endpoints, config.queue_length)
        self.table.on_endpoints_changed = self.dispatcher.endpoints_changed
        self.metrics = GatewayMetrics(self.dispatcher.in_flight, self.dispatcher.queued)
        self._publisher = publisher
        self._waker = waker
        self._authenticator = authenticator
        self._read_secret = read_secret
        self._quota_counter = quota_counter
        self._session: aiohttp.ClientSession | None = None
        self._http_api: HttpApi | None = None
        self._server: asyncio.Server | None = None
        self._state: ServerState | None = None
        self._pool: UpstreamPool | None = None
        self._api: InvokeApi | None = None
        self.autoscaler: AutoscalerClient | None = None
        self._reporting: asyncio.Task[None] | None = None
        self._autoscaler_session: aiohttp.ClientSession | None = None
        self.port = 0
        self.metrics_port = 0

    @property
    def api(self) -> InvokeApi:
        assert self._api is not None, "start() first"
        return self._api

    async def start(self, host: str = "0.0.0.0") -> None:
        self._pool = UpstreamPool()
        # HTTP backends, JWKS documents, the autoscaler: not function pods, so a general client.
        self._session = aiohttp.ClientSession(auto_decompress=False)
        if self.config.autoscaler_url and self._waker is None:
            # A fresh connection per post: a kept-alive one could outlive the operator pod it
            # reached (seen after upgrades: every later report went astray).
            self._autoscaler_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)
            )
            if not self._counter_given:
                # Reserved caps over every replica: a round trip on the invocation's path, so
                # kept-alive connections (one to an operator gone fails within the acquire's
                # timeout, and is closed).
                self._leases_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector())
                self._shared = SharedCounter(
                    self.config.autoscaler_url, self._leases_session, self.config.max_concurrency
                )
                self.counter = self._shared
            self.autoscaler = AutoscalerClient(
                self.config.autoscaler_url,
                self.dispatcher.take_demand,
                self._autoscaler_session,
                table=self.table,
                waiting=lambda key: bool(self.dispatcher.queued().get(key)),
                reporter=None if self._shared is None else self._shared.holder,
                leases=None if self._shared is None else self._shared.held_leases,
                demand_now=self.dispatcher.demand_now,
            )
            self._waker = self.autoscaler
            self._reporting = asyncio.get_running_loop().create_task(self.autoscaler.run())
        self.dispatcher.on_waiting = self._demand_waiting
        self._api = InvokeApi(
            self.config,
            self.table,
            counter=self.counter,
            dispatcher=self.dispatcher,
            pool=self._pool,
            metrics=self.metrics,
            waker=self._waker,
            publisher=self._publisher,
            authenticator=self._authenticator,
        )
        self._http_api = HttpApi(
            self.config,
            self.table,
            self._api,
            self._session,
            read_secret=self._read_secret,
            quota_counter=self._quota_counter,
        )
        self._api.fallback = self._http_api.handle
        # The HTTP API limit; the Invoke API checks its own, lower one.
        self._server, self._state = await serve_http(
            self._api.handle, host, self.config.port, MAX_PAYLOAD_BYTES, self.config.max_connections
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.metrics_port = self.metrics.start_server(self.config.metrics_port, host)

    def _demand_waiting(self, key: VersionKey) -> None:
        if self.autoscaler is not None:
            self.autoscaler.demand_rising(key)

    async def drain(self) -> None:
        """Graceful stop: unready, stop accepting, finish in-flight requests, close."""
        assert self._server is not None
        assert self._state is not None
        assert self._pool is not None
        self.api.draining = True
        # Give endpoints controllers time to take this pod out of the Service first.
        await asyncio.sleep(self.config.drain_delay_s)
        self._server.close()
        self._state.draining = True
        self._state.close_idle()
        while self._state.busy:
            await asyncio.sleep(_POLL_S)
        self._state.close_idle()
        if self._shared is not None:
            await self._shared.close()
        if self._leases_session is not None:
            await self._leases_session.close()
        assert self._http_api is not None
        assert self._session is not None
        if self.autoscaler is not None:
            self.autoscaler.close()
        if self._reporting is not None:
            self._reporting.cancel()
            await asyncio.gather(self._reporting, return_exceptions=True)
        if self._autoscaler_session is not None:
            await self._autoscaler_session.close()
        await self._http_api.close()
        await self._session.close()
        self._pool.close()
        if self._quota_counter is not None:
            await self._quota_counter.close()  # before the connection it uses closes
        if self._publisher is not None:
            await self._publisher.close()
        self.metrics.stop_server()


async def run(config: GatewayConfig, connection: KubeConnection) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pending = set(KINDS)

    def synced(kind: str) -> None:
        pending.discard(kind)
        if not pending and not gateway.api.synced:
            gateway.api.synced = True
            log.info("routing state synced: ready")

    async with aiohttp.ClientSession() as session:
        kube = HttpKubeApi(connection, session)
        # Event invocations need JetStream; without KUBELAMBDA_NATS_URL they get a clear 501.
        publisher = NatsPublisher.from_env(os.environ)
        quota_counter = None
        if publisher is not None:
            publisher.start()  # connects in the background; Events get 503 until then
            # API key quotas are counted in JetStream too, on the same connection.
            quota_counter = NatsQuotaCounter(lambda: publisher.client, publisher.replicas)
        table = RoutingTable(config.region)
        authenticator = None
        if config.sigv4 != "off":
            authenticator = AccessKeyAuthenticator(
                kube.read_secret,
                time.monotonic,
                config.internal_token,
                config.sigv4,
                has_functions=table.has_functions,
            )
        gateway = Gateway(
            config,
            table,
            read_secret=kube.read_secret,
            publisher=publisher,
            authenticator=authenticator,
            quota_counter=quota_counter,
        )
        await gateway.start()
        watches = [
            loop.create_task(ResourceWatch(kube, resource, gateway.table, synced).run())
            for resource in RESOURCES
        ]
        log.info(
            "kubelambda-gateway: port %d, metrics port %d, default namespace %s",
            gateway.port,
            gateway.metrics_port,
            config.default_namespace,
        )
        await stop.wait()
        log.info("shutting down: draining in-flight invocations")
        await gateway.drain()
        for task in watches:
            task.cancel()
        await asyncio.gather(*watches, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubelambda-gateway", description=__doc__)
    parser.add_argument(
        "--kubeconfig", help="kubeconfig for runs outside a cluster (default: $KUBECONFIG)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("KUBELAMBDA_GATEWAY_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(os.environ, args.kubeconfig)
    except ConfigError as exc:
        print(f"kubelambda-gateway: {exc}", file=sys.stderr)
        return 2
    try:
        connection = connection_from_env(config.kubeconfig)
    except (ValueError, KeyError, OSError) as exc:
        print(f"kubelambda-gateway: no API server connection: {exc!r}", file=sys.stderr)
        return 2
    uvloop.run(run(config, connection))
    return 0
