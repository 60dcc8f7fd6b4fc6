"""What the gateway adds to an invocation, on local processes only (no cluster).

    .venv/bin/python -m bench.gateway_overhead_local [--requests 3000] [--warmup 300]

Processes on 127.0.0.1: a real agent running a noop Python handler (``KUBELAMBDA_CONCURRENCY``
32), a stub pod (a bare uvloop server answering every POST at once: a proxy's cost without a
runtime behind it), the gateway (``Gateway`` with a routing table fed directly, as in the unit
tests) and, as the floor the issue names, a bare proxy (uvicorn with httptools and uvloop, one
aiohttp connection pool, nothing else). Both proxies route ``noop`` to the agent and ``stub``
to the stub. Every request carries the same 1 KiB JSON event over keep-alive connections.

The servers (agent and its runtimes, stub, both proxies) run on ``--python``: by default
Debian's ``/usr/bin/python3``, the interpreter of the platform and runtime images, with this
venv's packages on its path (the images carry the same manylinux wheels). The clients run here.

- concurrency 1: one blocking client, rounds alternating direct, gateway and bare-proxy calls
  (drift hits all alike); p50/p99 and the added p50 (target <= 0.3 ms).
- concurrency 32: a uvloop load process with 32 connections, in rounds alternating direct,
  gateway and bare proxy, to the agent and to the stub; latency percentiles, throughput and the
  CPU the proxy process used (``/proc/<pid>/stat``). Twice: first with every process free to
  run on every CPU (the proxy's CPU is taken from the runtimes), then with the proxy alone on
  one CPU and the load and the upstreams on the others, as a gateway with its own CPU in a
  cluster. Through the stub, the proxy is the bottleneck: its requests per CPU second are its
  requests per second per core (target >= 10k).

Results: bench/results/gateway_overhead_local-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httptools
import uvicorn
import uvloop
from tests.unit.gateway.objects import add_function, add_slice
from tests.unit.ports import free_port, free_port_range

from bench.agent_overhead import IMAGE_PYTHON, python_version
from kubelambda.gateway.config import GatewayConfig
from kubelambda.gateway.httpserver import Request, Response, serve
from kubelambda.gateway.main import Gateway

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PAYLOAD = json.dumps({"data": "x" * 1000}).encode()  # 1 KiB event
assert 1000 < len(PAYLOAD) <= 1024
NOOP = "def handler(event, context):\n    return {}\n"
INVOKE = "/2015-03-31/functions/{}/invocations"
LOAD_CONCURRENCY = 32
WARMUP_PER_CONNECTION = 3


def wait_port(port: int, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def env() -> dict[str, str]:
    # The venv's packages last: for a server on another interpreter, they stand in for the
    # images' site-packages (the same wheels).
    paths = (REPO / "operator", REPO, sysconfig.get_paths()["purelib"])
    return os.environ | {"PYTHONPATH": os.pathsep.join(map(str, paths))}


def cpu_seconds(pid: int) -> float:
    """CPU time of all of a process's threads, in nanoseconds' resolution (``schedstat``;
    ``stat``'s utime and stime move in 10 ms steps, a tenth of a short round's)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return total / 1e9


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- roles run as subprocesses ---------------------------------------------------------------


def run_stub(port: int) -> None:
    answer = Response(
        200, b"Content-Type: application/json\r\nX-Amz-Executed-Version: $LATEST\r\n", b"{}"
    )

    def handle(request: Request) -> Response:
        return answer

    async def main() -> None:
        await serve(handle, "127.0.0.1", port, 1 << 23, 10000)
        await asyncio.Event().wait()

    uvloop.run(main())


def run_gateway(port: int, agent_port: int, stub_port: int) -> None:
    async def main() -> None:
        gateway = Gateway(GatewayConfig(port=port, metrics_port=0))
        table = gateway.table
        add_function(table, "noop", per_instance=LOAD_CONCURRENCY, timeout=30)
        add_slice(table, "noop", "$LATEST", ["127.0.0.1"], port=agent_port)
        add_function(table, "stub", per_instance=10000, timeout=30)
        add_slice(table, "stub", "$LATEST", ["127.0.0.1"], port=stub_port)
        await gateway.start("127.0.0.1")
        gateway.api.synced = True
        await asyncio.Event().wait()

    uvloop.run(main())


def run_bare_proxy(port: int, agent_port: int, stub_port: int) -> None:
    """The floor the issue names: uvicorn (httptools, uvloop) and one aiohttp connection pool,
    forwarding the request body and answering with the upstream's status and body. No checks,
    no headers relayed, no timeouts, cookies, concurrency caps or metrics: the function name in
    the path picks the upstream."""
    sessions: list[aiohttp.ClientSession] = []
    upstreams = {"noop": agent_port, "stub": stub_port}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not sessions:  # made in the server's loop; as lean as aiohttp gets
            sessions.append(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0),
                    cookie_jar=aiohttp.DummyCookieJar(),
                    timeout=aiohttp.ClientTimeout(total=None),
                    skip_auto_headers=("User-Agent",),
                )
            )
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        upstream = upstreams[path.split("/")[3]]
        async with sessions[0].post(f"http://127.0.0.1:{upstream}{path}", data=body) as reply:
            payload = await reply.read()
            status = reply.status
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        server_header=False,
        date_header=False,
        log_level="warning",
    )


def run_load(port: int, function: str, concurrency: int, requests: int, proxy_pid: int = 0) -> None:
    """Keep-alive load from ``concurrency`` connections; prints latencies (s) as JSON, and the
    CPU seconds ``proxy_pid`` used meanwhile. Each connection's first ``WARMUP_PER_CONNECTION``
    requests are not counted, and the counted ones begin together once every connection is
    warm: the connections' set-up is not a latency."""
    head = (
        f"POST {INVOKE.format(function)} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(PAYLOAD)}\r\n\r\n"
    ).encode()
    request = head + PAYLOAD
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    warm: list[Conn] = []
    started = [0.0]
    proxy_cpu = [0.0]

    class Conn(asyncio.Protocol):
        def __init__(self, done: asyncio.Future[None]) -> None:
            self.parser = httptools.HttpResponseParser(self)
            self.done = done
            self.transport: Any = None
            self.sent = 0.0
            self.warmup = WARMUP_PER_CONNECTION

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.send()

        def send(self) -> None:
            self.sent = time.perf_counter()
            self.transport.write(request)

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.done.done():  # closed by the server before the load was through
                self.done.set_exception(ConnectionError(f"connection lost: {exc}"))

        def on_message_complete(self) -> None:
            if self.warmup:
                self.warmup -= 1
                if self.warmup:
                    self.send()
                    return
                warm.append(self)
                if len(warm) == concurrency:
                    proxy_cpu[0] = cpu_seconds(proxy_pid) if proxy_pid else 0.0
                    started[0] = time.perf_counter()
                    for conn in warm:
                        conn.send()
                return
            latencies.append(time.perf_counter() - self.sent)
            status = self.parser.get_status_code()
            statuses[status] = statuses.get(status, 0) + 1
            if len(latencies) >= requests:
                if not self.done.done():
                    self.done.set_result(None)
                return
            self.send()

    async def main() -> float:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        conns = [
            (await loop.create_connection(lambda: Conn(done), "127.0.0.1", port))[1]
            for _ in range(concurrency)
        ]
        await done
        elapsed = time.perf_counter() - started[0]
        if proxy_pid:
            proxy_cpu[0] = cpu_seconds(proxy_pid) - proxy_cpu[0]
        for conn in conns:
            conn.transport.close()
        return elapsed

    elapsed = uvloop.run(main())
    result = {"latencies": latencies, "elapsed": elapsed, "statuses": statuses}
    if proxy_pid:
        result["proxy_cpu_s"] = proxy_cpu[0]
    print(json.dumps(result))


# --- the benchmark ---------------------------------------------------------------------------


def start(python: str, args: list[str], **extra_env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([python, *args], env=env() | extra_env, stdout=subprocess.DEVNULL)


def sequential(port: int, function: str, count: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = []
    path = INVOKE.format(function)
    try:
        for _ in range(count):
            started = time.perf_counter()
            conn.request("POST", path, PAYLOAD)
            response = conn.getresponse()
            response.read()
            out.append(time.perf_counter() - started)
            assert response.status == 200, response.status
    finally:
        conn.close()
    return out


def load(
    port: int,
    function: str,
    requests: int,
    proxy_pid: int | None,
    cpus: set[int] | None = None,
) -> dict[str, Any]:
    """Runs the load process (on ``cpus`` if given); with ``proxy_pid``, the result has the
    CPU seconds that process used while the counted requests ran."""
    role = ["--role", "load", port, function, LOAD_CONCURRENCY, requests, proxy_pid or 0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.gateway_overhead_local", *map(str, role)],
        env=env(),
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    if cpus is not None:
        pin(proc.pid, cpus)  # before it has imported anything, let alone connected
    output, _ = proc.communicate(timeout=300)
    if proc.returncode:
        raise RuntimeError(f"the load process failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(output)
    return result


def ms(value: float) -> str:
    return f"{value * 1000:.3f} ms"


def report_latency(name: str, values: list[float]) -> dict[str, float]:
    p50, p99 = statistics.median(values), percentile(values, 0.99)
    print(f"  {name:<28} p50 {ms(p50)}  p99 {ms(p99)}  (n={len(values)})")
    return {"p50_ms": p50 * 1000, "p99_ms": p99 * 1000}


def start_agent(python: str, tmp: Path, port: int) -> subprocess.Popen[bytes]:
    """The noop function's agent, its runtimes on the same interpreter (their `python3`), as
    in the images."""
    task = tmp / "task"
    task.mkdir()
    (task / "app.py").write_text(NOOP)
    bindir = tmp / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(python)
    return start(
        python,
        ["-m", "kubelambda.agent"],
        PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        AWS_LAMBDA_FUNCTION_NAME="noop",
        _HANDLER="app.handler",
        KUBELAMBDA_RUNTIME="python3.11",
        KUBELAMBDA_RUNTIME_DIR=str(REPO / "runtime-images" / "python"),
        KUBELAMBDA_TASK_ROOT=str(task),
        KUBELAMBDA_INVOKE_PORT=str(port),
        KUBELAMBDA_RUNTIME_API_PORT=str(free_port_range(LOAD_CONCURRENCY)),
        KUBELAMBDA_CONCURRENCY=str(LOAD_CONCURRENCY),
        KUBELAMBDA_TIMEOUT_SECONDS="30",
    )


PROXIES = ("gateway", "bare proxy")


def label(path: str, upstream: str = "agent") -> str:
    return f"{upstream} {path}" if path == "direct" else f"{upstream} via {path}"


def port_of(ports: dict[str, int], path: str, upstream: str = "agent") -> int:
    """Where a request on ``path`` (direct, or a proxy's name) to ``upstream`` goes first."""
    return ports[upstream if path == "direct" else path]


def pin(pid: int, cpus: set[int]) -> None:
    """Pins a process, its threads and its descendants (the agent's runtimes) to ``cpus``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(parent, []).append(int(stat.parent.name))
    todo = [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue  # gone meanwhile
        for task in tasks:
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except OSError:
                continue  # the thread ended meanwhile


def compare(
    results: dict[str, Any],
    section: str,
    ports: dict[str, int],
    pids: dict[str, int],
    requests: int,
    *,
    load_cpus: set[int] | None = None,
    rounds: int = 5,
) -> None:
    """Concurrency 32 to the agent and to the stub: direct and through each proxy, in
    ``rounds`` alternating rounds (drift hits every path alike)."""
    entries: dict[str, Any] = results.setdefault(section, {})
    for upstream, function in (("agent", "noop"), ("stub", "stub")):
        paths = ("direct", *PROXIES)
        runs: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
        for _ in range(rounds):
            for path in paths:
                port = port_of(ports, path, upstream)
                runs[path].append(
                    load(port, function, max(1, requests // rounds), pids.get(path), load_cpus)
                )
        for path in paths:
            latencies = [value for run in runs[path] for value in run["latencies"]]
            elapsed = sum(run["elapsed"] for run in runs[path])
            statuses: dict[str, int] = {}
            for run in runs[path]:
                for status, count in run["statuses"].items():
                    statuses[status] = statuses.get(status, 0) + count
            if set(statuses) != {"200"}:  # a failed request's latency is no proxy's cost
                raise RuntimeError(f"{label(path, upstream)}: statuses {statuses}")
            entry: dict[str, Any] = report_latency(label(path, upstream), latencies)
            entry["statuses"] = statuses
            entry["rps"] = len(latencies) / elapsed
            line = f"  {'':<28} {entry['rps']:,.0f} req/s, statuses {statuses}"
            if path in pids:
                cpu_s = sum(run["proxy_cpu_s"] for run in runs[path])
                entry["proxy_cores"] = cpu_s / elapsed
                entry["rps_per_cpu_s"] = len(latencies) / cpu_s if cpu_s else math.nan
                line += (
                    f"; the {path} used {entry['proxy_cores']:.2f} cores,"
                    f" {entry['rps_per_cpu_s']:,.0f} req per CPU second"
                )
            print(line)
            entries[f"{upstream} {path}"] = entry
        direct = entries[f"{upstream} direct"]
        for path in PROXIES:
            via = entries[f"{upstream} {path}"]
            via["added_p50_ms"] = via["p50_ms"] - direct["p50_ms"]
            via["added_p99_ms"] = via["p99_ms"] - direct["p99_ms"]
            print(
                f"  {upstream} via {path}: added p50 {via['added_p50_ms']:.3f} ms,"
                f" p99 {via['added_p99_ms']:.3f} ms;"
                f" throughput ratio {via['rps'] / direct['rps']:.2f}"
            )


def benchmark(requests: int, warmup: int, python: str) -> dict[str, Any]:
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, Any] = {"servers_python": python_version(python)}
    print(f"servers on Python {results['servers_python']}, clients on {sys.executable}")
    with tempfile.TemporaryDirectory() as tmp:
        ports = {name: free_port() for name in ("agent", "stub", *PROXIES)}
        try:
            agent = start_agent(python, Path(tmp), ports["agent"])
            procs.append(agent)
            role = ["-m", "bench.gateway_overhead_local", "--role"]
            stub = start(python, [*role, "stub", str(ports["stub"])])
            procs.append(stub)
            upstreams = (str(ports["agent"]), str(ports["stub"]))
            gateway = start(python, [*role, "gateway", str(ports["gateway"]), *upstreams])
            bare = start(python, [*role, "bare-proxy", str(ports["bare proxy"]), *upstreams])
            procs += (gateway, bare)
            pids = {"gateway": gateway.pid, "bare proxy": bare.pid}
            for port in ports.values():
                wait_port(port)
            wait_ready(ports["agent"])

            print(f"concurrency 1, {requests} sequential requests per path, 1 KiB event:")
            c1: dict[str, list[float]] = {"direct": [], **{path: [] for path in PROXIES}}
            for path in c1:
                sequential(port_of(ports, path), "noop", warmup)
            rounds = 10
            for _ in range(rounds):
                for path, samples in c1.items():
                    samples.extend(sequential(port_of(ports, path), "noop", requests // rounds))
            results["c1"] = {path: report_latency(label(path), c1[path]) for path in c1}
            for path in PROXIES:
                added = statistics.median(c1[path]) - statistics.median(c1["direct"])
                results["c1"][path]["added_p50_ms"] = added * 1000
                print(f"  added by the {path}: p50 {ms(added)}")

            for path in PROXIES:
                load(ports[path], "noop", warmup * 4, None)
                load(ports[path], "stub", warmup * 4, None)
            print(
                f"\nconcurrency {LOAD_CONCURRENCY}, {requests * 4} requests per path,"
                " every process on every CPU:"
            )
            compare(results, "c32_shared", ports, pids, requests * 4)

            cpus = set(os.sched_getaffinity(0))
            if len(cpus) >= 2:
                proxy_cpus = {max(cpus)}
                rest = cpus - proxy_cpus
                print(
                    f"\nconcurrency {LOAD_CONCURRENCY}, the proxy alone on CPU {max(cpus)}, the"
                    f" load and the upstreams on CPUs {sorted(rest)}:"
                )
                for proc in (agent, stub):
                    pin(proc.pid, rest)
                for pid in pids.values():
                    pin(pid, proxy_cpus)
                compare(results, "c32_own_core", ports, pids, requests * 4, load_cpus=rest)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return results


def wait_ready(port: int, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise RuntimeError("agent not ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument(
        "--python",
        default=str(IMAGE_PYTHON),
        help="interpreter of the servers (default: Debian's, as in the images)",
    )
    roles = ("stub", "gateway", "bare-proxy", "load")
    parser.add_argument("--role", choices=roles, help=argparse.SUPPRESS)
    parser.add_argument("role_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "stub":
        run_stub(int(args.role_args[0]))
    elif args.role == "gateway":
        run_gateway(*(int(a) for a in args.role_args))
    elif args.role == "bare-proxy":
        run_bare_proxy(*(int(a) for a in args.role_args))
    elif args.role == "load":
        port, function, concurrency, requests, proxy_pid = args.role_args
        run_load(int(port), function, int(concurrency), int(requests), int(proxy_pid))
    else:
        results = benchmark(args.requests, args.warmup, args.python)
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS / f"gateway_overhead_local-{stamp}.json"
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults: {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
