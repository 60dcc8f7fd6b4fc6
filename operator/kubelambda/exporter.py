"""The Prometheus ``/metrics`` endpoint a platform process (gateway, invoker) serves."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


class MetricsEndpoint:
    """Serves one registry on its own thread; stopped cleanly at shutdown (and in tests)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, port: int, host: str = "0.0.0.0") -> int:
        """Returns the bound port (``port`` 0 picks a free one)."""
        self._server, self._thread = start_http_server(port, host, registry=self._registry)
        bound: int = self._server.server_port
        return bound

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None
