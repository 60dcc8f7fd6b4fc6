"""Gateway memory with many functions and routes (local processes only, no cluster).

    .venv/bin/python -m bench.gateway_memory [--functions 1000] [--routes 1000]

Runs the real gateway (``python -m kubelambda.gateway``) against a fake Kubernetes API on
this host that lists ``--functions`` Functions (each with one ready pod in an EndpointSlice),
an Alias per function and ``--routes`` ApiRoutes spread over 10 HTTP APIs, then holds every
watch open. RSS of the gateway process (VmRSS) with an empty API, and with all of that once the
gateway says it is ready; target: <= 150 MB with 1,000 functions and 1,000 routes.

Results: bench/results/gateway_memory-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp import web
from tests.unit.gateway.apiobjects import route_obj
from tests.unit.gateway.objects import alias_obj, function_obj, slice_obj

from bench.async_throughput_local import _port
from bench.common import machine, write_results

NAMESPACE = "bench"


def objects(functions: int, routes: int) -> dict[str, list[dict[str, Any]]]:
    """What the fake API lists, by resource path."""
    names = [f"fn-{i:04d}" for i in range(functions)]
    return {
        "/apis/kubelambda.io/v1alpha1/functions": [
            function_obj(name, NAMESPACE, versions=("1",)) for name in names
        ],
        "/apis/kubelambda.io/v1alpha1/aliases": [
            alias_obj(name, "live", "1", namespace=NAMESPACE) for name in names
        ],
        "/apis/discovery.k8s.io/v1/endpointslices": [
            slice_obj(name, "$LATEST", [f"10.1.{i // 250}.{i % 250}"], namespace=NAMESPACE)
            for i, name in enumerate(names)
        ],
        "/apis/kubelambda.io/v1alpha1/apiroutes": [
            route_obj(
                f"GET /items{i}/{{id}}",
                name=f"route-{i:04d}",
                namespace=NAMESPACE,
                api=f"api-{i % 10}",
                function=names[i % len(names)] if names else "fn",
            )
            for i in range(routes)
        ],
    }


class FakeApi:
    """Lists, then watch streams that stay open and quiet; no Secrets."""

    def __init__(self, listed: dict[str, list[dict[str, Any]]]) -> None:
        self.listed = listed
        self.runner = web.AppRunner(self.app())

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{path:.*}", self.get)
        return app

    async def get(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch"):
            response = web.StreamResponse()
            await response.prepare(request)
            await asyncio.sleep(3600)
            return response
        if "/secrets/" in request.path:  # no access keys in the namespace: calls unsigned
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        items = self.listed.get(request.path, [])
        return web.json_response({"metadata": {"resourceVersion": "1"}, "items": items})


def http_status(request: str | urllib.request.Request, timeout: float) -> int:
    """Blocking: run it in a thread (the fake API answers on the event loop)."""
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return int(reply.status)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def measure(functions: int, routes: int, work: Path) -> float:
    api = FakeApi(objects(functions, routes))
    await api.runner.setup()
    api_port, gateway_port = _port(), _port()
    await web.TCPSite(api.runner, "127.0.0.1", api_port).start()
    kubeconfig = work / f"kubeconfig-{functions}"
    kubeconfig.write_text(
        json.dumps(
            {
                "current-context": "fake",
                "contexts": [{"name": "fake", "context": {"cluster": "fake"}}],
                "clusters": [
                    {
                        "name": "fake",
                        "cluster": {
                            "server": f"http://127.0.0.1:{api_port}",
                            "insecure-skip-tls-verify": True,
                        },
                    }
                ],
            }
        )
    )
    env = os.environ | {
        "KUBECONFIG": str(kubeconfig),
        "KUBELAMBDA_GATEWAY_PORT": str(gateway_port),
        "KUBELAMBDA_GATEWAY_METRICS_PORT": str(_port()),
        "KUBELAMBDA_GATEWAY_LOG_LEVEL": "WARNING",
    }
    gateway = subprocess.Popen([sys.executable, "-m", "kubelambda.gateway"], env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                await asyncio.to_thread(http_status, f"http://127.0.0.1:{gateway_port}/readyz", 1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        if functions:  # the table really holds them: the last function is found (DryRun 204)
            last = f"fn-{functions - 1:04d}"
            dry_run = urllib.request.Request(
                f"http://127.0.0.1:{gateway_port}/namespaces/{NAMESPACE}"
                f"/2015-03-31/functions/{last}/invocations?Qualifier=live",
                data=b"{}",
                headers={"X-Amz-Invocation-Type": "DryRun"},
            )
            # In a thread: the gateway reads the namespace's access keys from the fake API,
            # which answers on this loop.
            status = await asyncio.to_thread(http_status, dry_run, 10)
            assert status == 204, status
        await asyncio.sleep(2)  # let the allocator settle after the lists
        return rss_mib(gateway.pid)
    finally:
        gateway.terminate()
        gateway.wait(10)
        await api.runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--functions", type=int, default=1000)
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        empty = asyncio.run(measure(0, 0, Path(work)))
        loaded = asyncio.run(measure(args.functions, args.routes, Path(work)))
    result = {
        "machine": machine(),
        "functions": args.functions,
        "routes": args.routes,
        "rss_mib_empty": round(empty, 1),
        "rss_mib_loaded": round(loaded, 1),
        "target_mib": 150,
    }
    print(json.dumps(result, indent=2))
    write_results("gateway_memory", args.output, result)


if __name__ == "__main__":
    main()
