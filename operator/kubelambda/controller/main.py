"""Entry point: ``python -m kubelambda.controller`` runs the operator."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import kopf

from kubelambda.controller import handlers  # noqa: F401  (importing registers the handlers)
from kubelambda.controller.autoscaling import serve_autoscaler
from kubelambda.controller.config import OperatorConfig

PREFIX = "kubelambda.io"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Handler progress lives in annotations under our own prefix (status fields not in the CRD
    # schema would be pruned); no finalizers: children go with their owner through garbage
    # collection, so a stopped operator never blocks a delete.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    # Watches must not hang forever on a silently dropped connection.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 8
    settings.peering.standalone = True


def main() -> None:
    config = OperatorConfig.from_env()
    # kopf's formatter prefixes each object's messages with "[namespace/name]".
    kopf.configure(log_format=kopf.LogFormat.FULL, log_prefix=True)
    logging.getLogger().setLevel(config.log_level.upper())
    # One line per liveness probe is noise.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(run(config))


async def run(config: OperatorConfig) -> None:
    """kopf and the autoscaler in one event loop; the autoscaler stops with kopf."""
    autoscaler = asyncio.create_task(
        serve_autoscaler(config.autoscaler_port, config.store_signing_key)
    )
    try:
        await kopf.operator(
            clusterwide=not config.watch_namespaces,
            namespaces=list(config.watch_namespaces),
            liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz",
            standalone=True,
            # kopf would derive this from the user name, which a bare UID (10001) lacks.
            identity=f"kubelambda-operator@{socket.gethostname()}",  # type: ignore[arg-type]
        )
    finally:
        autoscaler.cancel()


if __name__ == "__main__":
    main()
