"""Invoker entry point: connects to NATS, watches Functions, runs the workers, the scheduler,
metrics and admin."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
import yaml
from pydantic import ValidationError

from kubelambda.invoker.admin import AdminApi
from kubelambda.invoker.broker import BrokerError
from kubelambda.invoker.config import ConfigError, InvokerConfig, load_config
from kubelambda.invoker.core import Invoker
from kubelambda.invoker.functions import (
    ApiDirectory,
    FunctionDirectory,
    FunctionSettings,
    StaticDirectory,
    settings_from_spec,
)
from kubelambda.invoker.jetstream import JetStreamBroker
from kubelambda.invoker.metrics import InvokerMetrics
from kubelambda.invoker.scheduler import Scheduler
from kubelambda.kubeapi import HttpKubeApi, connection_from_env

log = logging.getLogger("kubelambda.invoker")

_STREAMS_RETRY_S = 2.0


def load_functions_file(path: str) -> StaticDirectory:
    """Function manifests (one YAML/JSON document or many, or a List) for runs without a cluster."""
    functions: dict[tuple[str, str], FunctionSettings] = {}
    for document in yaml.safe_load_all(Path(path).read_text()):
        if not isinstance(document, dict):
            continue
        items: list[Any] = (
            (document.get("items") or []) if document.get("kind") == "List" else [document]
        )
        for item in items:
            metadata = item.get("metadata") or {}
            key = (str(metadata.get("namespace") or "default"), str(metadata["name"]))
            functions[key] = settings_from_spec(
                item.get("spec") or {}, str(metadata.get("uid") or "")
            )
    return StaticDirectory(functions)


async def _until_stopped_or_failed(stop: asyncio.Event, loops: list[asyncio.Task[None]]) -> bool:
    """Waits for the stop signal; True if one of the loops ended first (a bug: they run until
    cancelled). The invoker then exits non-zero, and the kubelet restarts it: a loop that died
    silently would leave the invoker up but stuck (no new function getting a worker, say)."""
    stopping = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([stopping, *loops], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    # Once stopping, the loops return on their own: that is no failure.
    ended = [] if stop.is_set() else [task for task in loops if task in done]
    for task in ended:
        error = None if task.cancelled() else task.exception()
        log.error("%s ended unexpectedly: %r; exiting", task.get_name(), error, exc_info=error)
    return bool(ended)


async def run(config: InvokerConfig, functions_file: str | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = InvokerMetrics()
    metrics_port = metrics.start_server(config.metrics_port)
    broker = await JetStreamBroker.connect(
        config.nats_url, "kubelambda-invoker", config.streams, config.consumers
    )
    ready = False
    admin = AdminApi(broker, config.admin_token, lambda: int(time.time() * 1000), lambda: ready)
    admin_port = await admin.start(config.admin_port)
    while True:
        try:
            await broker.ensure_streams(update=True)
            schedule_store = await broker.schedule_store()
            break
        except BrokerError as exc:
            log.warning("creating the streams: %s; retrying", exc)
            await asyncio.sleep(_STREAMS_RETRY_S)
    background: list[asyncio.Task[None]] = []
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector) as session:
        directory: FunctionDirectory
        api_directory: ApiDirectory | None = None
        if functions_file is not None:
            directory = load_functions_file(functions_file)
        else:
            api_directory = ApiDirectory(
                HttpKubeApi(connection_from_env(config.kubeconfig), session)
            )
            background.append(loop.create_task(api_directory.run(), name="the Function watch"))
            await api_directory.synced.wait()
            directory = api_directory
        invoker = Invoker(config, broker, directory, session, metrics=metrics)
        scheduler = Scheduler(
            broker, schedule_store, directory, region=config.region, metrics=metrics
        )
        scheduler.sync()
        if api_directory is not None:
            api_directory.subscribe(invoker.wake)
            api_directory.subscribe(scheduler.sync)
        background.append(loop.create_task(invoker.run(stop), name="the worker reconciler"))
        background.append(loop.create_task(invoker.run_sampler(stop), name="the queue sampler"))
        ready = True
        log.info(
            "kubelambda-invoker: NATS %s, gateway %s, admin port %d, metrics port %d",
            config.nats_url,
            config.gateway_url,
            admin_port,
            metrics_port,
        )
        failed = await _until_stopped_or_failed(stop, background)
        ready = False
        log.info("shutting down: finishing in-flight events")
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await scheduler.stop()
        await invoker.stop()
    await admin.stop()
    await broker.close()
    metrics.stop_server()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubelambda-invoker", description=__doc__)
    parser.add_argument(
        "--kubeconfig", help="kubeconfig for runs outside a cluster (default: $KUBECONFIG)"
    )
    parser.add_argument(
        "--functions",
        metavar="FILE",
        help="read Function manifests from FILE instead of the API server (local runs)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("KUBELAMBDA_INVOKER_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(os.environ, args.kubeconfig)
    except ConfigError as exc:
        print(f"kubelambda-invoker: {exc}", file=sys.stderr)
        return 2
    if args.functions is None:
        try:
            connection_from_env(config.kubeconfig)
        except (ValueError, KeyError, OSError) as exc:
            print(f"kubelambda-invoker: no API server connection: {exc!r}", file=sys.stderr)
            return 2
    else:
        try:
            load_functions_file(args.functions)
        except (OSError, yaml.YAMLError, KeyError, ValidationError, ValueError) as exc:
            print(f"kubelambda-invoker: {args.functions}: {exc}", file=sys.stderr)
            return 2
    with contextlib.suppress(KeyboardInterrupt):
        return uvloop.run(run(config, args.functions))
    return 0
