"""What the gateway adds to an invocation, on local processes only (no cluster).

    .venv/bin/python -m bench.gateway_overhead_local [--requests 3000] [--warmup 300]

Processes on 127.0.0.1: a real agent running a noop Python handler (``KUBELAMBDA_CONCURRENCY``
32), a stub pod (a bare uvloop server answering every POST at once: the gateway's cost without
a runtime behind it), and the gateway (``Gateway`` with a routing table fed directly, as in the
unit tests) routing ``noop`` to the agent and ``stub`` to the stub. Every request carries the
same 1 KiB JSON event over keep-alive connections.

The servers (agent and its runtimes, stub, gateway) run on ``--python``: by default Debian's
``/usr/bin/python3``, the interpreter of the platform and runtime images, with this venv's
packages on its path (the images carry the same manylinux wheels). The clients run here.

- concurrency 1: one blocking client, rounds alternating direct and through-the-gateway calls
  (drift hits both alike); p50/p99 and the added p50 (target <= 0.3 ms).
- concurrency 32: a uvloop load process with 32 connections, direct vs gateway, for the agent
  and for the stub; latency percentiles and throughput. The machine's cores are shared by the
  load process, the gateway and the upstream, so throughput is also given per CPU second the
  gateway process used (``/proc/<pid>/stat``): the gateway's req/s per core (target >= 10k).

Results: bench/results/gateway_overhead_local-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
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

import httptools
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
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def run_load(port: int, function: str, concurrency: int, requests: int) -> None:
    """Keep-alive load from ``concurrency`` connections; prints latencies (s) as JSON."""
    head = (
        f"POST {INVOKE.format(function)} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(PAYLOAD)}\r\n\r\n"
    ).encode()
    request = head + PAYLOAD
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    class Conn(asyncio.Protocol):
        def __init__(self, done: asyncio.Future[None]) -> None:
            self.parser = httptools.HttpResponseParser(self)
            self.done = done
            self.transport: Any = None
            self.sent = 0.0

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.send()

        def send(self) -> None:
            self.sent = time.perf_counter()
            self.transport.write(request)

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
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
        started = time.perf_counter()
        conns = [
            (await loop.create_connection(lambda: Conn(done), "127.0.0.1", port))[1]
            for _ in range(concurrency)
        ]
        await done
        elapsed = time.perf_counter() - started
        for conn in conns:
            conn.transport.close()
        return elapsed

    elapsed = uvloop.run(main())
    print(json.dumps({"latencies": latencies, "elapsed": elapsed, "statuses": statuses}))


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


def load(port: int, function: str, requests: int, gateway_pid: int | None) -> dict[str, Any]:
    before = cpu_seconds(gateway_pid) if gateway_pid else 0.0
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gateway_overhead_local",
            "--role",
            "load",
            str(port),
            function,
            str(LOAD_CONCURRENCY),
            str(requests),
        ],
        env=env(),
        capture_output=True,
        check=True,
        cwd=REPO,
    ).stdout
    result: dict[str, Any] = json.loads(output)
    if gateway_pid:
        result["gateway_cpu_s"] = cpu_seconds(gateway_pid) - before
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


def benchmark(requests: int, warmup: int, python: str) -> dict[str, Any]:
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, Any] = {"servers_python": python_version(python)}
    print(f"servers on Python {results['servers_python']}, clients on {sys.executable}")
    with tempfile.TemporaryDirectory() as tmp:
        agent_port, stub_port, gateway_port = free_port(), free_port(), free_port()
        try:
            procs.append(start_agent(python, Path(tmp), agent_port))
            role = ["-m", "bench.gateway_overhead_local", "--role"]
            procs.append(start(python, [*role, "stub", str(stub_port)]))
            ports = (gateway_port, agent_port, stub_port)
            gateway = start(python, [*role, "gateway", *map(str, ports)])
            procs.append(gateway)
            for port in (agent_port, stub_port, gateway_port):
                wait_port(port)
            wait_ready(agent_port)

            print(f"concurrency 1, {requests} sequential requests per path, 1 KiB event:")
            direct: list[float] = []
            through: list[float] = []
            sequential(agent_port, "noop", warmup)
            sequential(gateway_port, "noop", warmup)
            rounds = 10
            for _ in range(rounds):
                direct += sequential(agent_port, "noop", requests // rounds)
                through += sequential(gateway_port, "noop", requests // rounds)
            results["c1_direct"] = report_latency("agent direct", direct)
            results["c1_gateway"] = report_latency("agent via gateway", through)
            added = statistics.median(through) - statistics.median(direct)
            print(
                f"  added by the gateway: p50 {ms(added)}"
                f"  ratio {statistics.median(through) / statistics.median(direct):.2f}"
            )
            results["c1_added_p50_ms"] = added * 1000

            print(f"\nconcurrency {LOAD_CONCURRENCY}, {requests * 2} requests per path:")
            load(gateway_port, "noop", warmup * 4, None)
            for name, port, function, pid in (
                ("agent direct", agent_port, "noop", None),
                ("agent via gateway", gateway_port, "noop", gateway.pid),
                ("stub direct", stub_port, "stub", None),
                ("stub via gateway", gateway_port, "stub", gateway.pid),
            ):
                result = load(port, function, requests * 2, pid)
                rps = len(result["latencies"]) / result["elapsed"]
                entry = report_latency(name, result["latencies"])
                entry["rps"] = rps
                line = f"  {'':<28} {rps:,.0f} req/s, statuses {result['statuses']}"
                if pid:
                    per_core = len(result["latencies"]) / result["gateway_cpu_s"]
                    entry["gateway_rps_per_cpu_s"] = per_core
                    line += f", gateway {per_core:,.0f} req per CPU second"
                print(line)
                results[f"c32_{name.replace(' ', '_')}"] = entry
            for upstream in ("agent", "stub"):
                d, g = results[f"c32_{upstream}_direct"], results[f"c32_{upstream}_via_gateway"]
                print(
                    f"  {upstream}: p50 ratio {g['p50_ms'] / d['p50_ms']:.2f},"
                    f" throughput ratio {g['rps'] / d['rps']:.2f}"
                )
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
    parser.add_argument("--role", choices=("stub", "gateway", "load"), help=argparse.SUPPRESS)
    parser.add_argument("role_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "stub":
        run_stub(int(args.role_args[0]))
    elif args.role == "gateway":
        run_gateway(*(int(a) for a in args.role_args))
    elif args.role == "load":
        port, function, concurrency, requests = args.role_args
        run_load(int(port), function, int(concurrency), int(requests))
    else:
        results = benchmark(args.requests, args.warmup, args.python)
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS / f"gateway_overhead_local-{stamp}.json"
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults: {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
