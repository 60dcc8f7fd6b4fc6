"""What the function-pod agent adds to a noop invocation, and the agent's memory.

    .venv/bin/python -m bench.agent_overhead [--requests 3000] [--warmup 300]

Local processes on 127.0.0.1 only; no cluster. Targets from the issue: the agent adds
<= 0.2 ms p50 to a noop invocation over the runtime's own handling; agent RSS <= 30 MB.

Every scenario drives the same ``runtime-images/python/bootstrap.py`` (same interpreter and
environment the agent gives it, via ``kubelambda.agent.config``) with the same noop handler
and the same 1 KiB JSON event, over sequential keep-alive requests:

agent   client -> agent invoke endpoint -> Runtime API -> bootstrap -> handler, and back
relay   the same path through a stand-in for the agent that is as cheap as a Python
        relay gets: the agent's event loop (``--loop``), bare protocols, no validation, no
        logs, no timers, constant ids (``--relay`` below, run as its own process)
direct  no middle process: this script serves the Runtime API itself (blocking sockets) and
        times from writing the event to /next until it has read the /response; this is the
        runtime's own handling plus one loopback exchange each way
inproc  the handler step of bootstrap.py called in this process (context, JSON in and out),
        no I/O at all

The timed requests run in rounds that rotate through the scenarios, so drift on the machine
hits all of them alike. Per-process CPU time (/proc/<pid>/task/*/schedstat) is sampled around
every block. Agent memory is VmRSS/VmHWM from /proc/<pid>/status: idle after start, after
the warm-up, after the timed run. ``--concurrency 4`` (default) then compares agent and relay
with 4 runtimes each (``KUBELAMBDA_CONCURRENCY=4``) and 4 client threads.

Where the agent's time goes, without touching the agent: ``--anatomy`` times single steps of
its per-invocation work (header parsing, ids, /proc reads, log writes) with its own functions,
and replays whole invocations through its real classes (and the relay's) on fake transports,
which gives each one's user-space cost without sockets. ``--profile-agent`` runs the agents
under cProfile instead (latencies then inflated).
Results: bench/results/agent_overhead-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import fcntl
import gc
import http.client
import importlib.util
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, BinaryIO, cast

from tests.unit.ports import free_port_range

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
OPERATOR_DIR = REPO_ROOT / "operator"
PYTHON_RUNTIME_DIR = REPO_ROOT / "runtime-images" / "python"
FUNCTION = "bench-noop"
INVOKE_PATH = f"/2015-03-31/functions/{FUNCTION}/invocations"
HANDLERS = {
    "noop": "def handler(event, context):\n    return None\n",
    "echo": "def handler(event, context):\n    return event\n",
}
TARGET_ADDED_P50_MS = 0.2
# The interpreter the runtime images run the agent and the Python runtime on: Debian
# bookworm's python3 (hack/base-images.sh installs the same package with debootstrap).
IMAGE_PYTHON = Path("/usr/bin/python3")
TARGET_RSS_MB = 30.0
# Same shape as the agent's generated trace ids; the relay and direct scenarios send it as is.
TRACE_ID = "Root=1-00000000-000000000000000000000000;Parent=0000000000000000;Sampled=0"
ARN = f"arn:aws:lambda:us-east-1:000000000000:function:{FUNCTION}"
_ACCEPTED_BODY = b'{"status":"OK"}'
ACCEPTED = (
    b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    % (
        len(_ACCEPTED_BODY),
        _ACCEPTED_BODY,
    )
)


class BenchError(RuntimeError):
    """A scenario failed (bad answer, timeout, process gone): the run is not valid."""


# --- small helpers -------------------------------------------------------------------------


def summary_us(samples_ns: Sequence[int]) -> dict[str, float | int]:
    # Imported here: bench.common imports the kubernetes client, which the relay process
    # (this module under --python, possibly without the venv's packages) must not need.
    from bench.common import percentile  # noqa: PLC0415

    if not samples_ns:
        return {"n": 0}
    us = [s / 1000 for s in samples_ns]
    return {
        "n": len(us),
        "p50": round(percentile(us, 0.50), 1),
        "p90": round(percentile(us, 0.90), 1),
        "p99": round(percentile(us, 0.99), 1),
        "min": round(min(us), 1),
        "max": round(max(us), 1),
        "mean": round(statistics.fmean(us), 1),
    }


def proc_status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) of a process; empty if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def cpu_ns(pid: int) -> int:
    """CPU time of all threads of a process so far (schedstat, nanoseconds)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        with suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command may contain spaces and parentheses: fields start after the last ')'.
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry))
    return found


def make_event(size: int) -> bytes:
    """A JSON object of exactly `size` bytes."""
    base = {"id": "bench", "items": [1, 2, 3], "pad": ""}
    overhead = len(json.dumps(base, separators=(",", ":")))
    if size < overhead:
        raise BenchError(f"--payload-bytes must be >= {overhead}")
    base["pad"] = "x" * (size - overhead)
    body = json.dumps(base, separators=(",", ":")).encode()
    assert len(body) == size
    return body


def next_response(request_id: str, event: bytes, deadline_ms: int) -> bytes:
    """A Runtime API /next answer with the agent's header set."""
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Lambda-Runtime-Aws-Request-Id: %s\r\nLambda-Runtime-Deadline-Ms: %d\r\n"
        b"Lambda-Runtime-Invoked-Function-Arn: %s\r\nLambda-Runtime-Trace-Id: %s\r\n"
        b"Content-Length: %d\r\n\r\n%s"
        % (request_id.encode(), deadline_ms, ARN.encode(), TRACE_ID.encode(), len(event), event)
    )


def read_message(reader: BinaryIO) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """(start line, lower-cased headers, body) of one HTTP/1.1 message with Content-Length."""
    start = reader.readline()
    if not start:
        raise BenchError("connection closed by peer")
    headers: dict[bytes, bytes] = {}
    while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", b"0"))
    body = reader.read(length) if length else b""
    if len(body) != length:
        raise BenchError("short body")
    return start, headers, body


# --- the stand-in relay (baseline), run as its own process ----------------------------------


_READ_BUFFER = memoryview(bytearray(256 * 1024))


class _MiniConn(asyncio.BufferedProtocol):
    """Just enough HTTP/1.1: Content-Length bodies, keep-alive, no pipelining guarantees.
    Reads into one shared buffer, as the agent does (a plain Protocol costs an mmap, an
    mremap and a munmap per read)."""

    def __init__(self, on_request: Callable[[_MiniConn, bytes, bytes], None]) -> None:
        self.on_request = on_request
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        buf = self.buffer
        buf += _READ_BUFFER[:nbytes]
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else None])
            total = end + 4 + length
            if len(buf) < total:
                return
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            self.on_request(self, head[: head.find(b" http/")], body)


class Relay:
    """Invoke endpoint + Runtime API for `count` runtimes, with nothing but the routing."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.waiters: deque[_MiniConn] = deque()  # runtimes blocked in /next
        self.pending: deque[tuple[_MiniConn, bytes]] = deque()  # events with no runtime yet
        self.inflight: dict[bytes, _MiniConn] = {}
        self.seen: set[int] = set()
        self.counter = 0

    def invoke(self, conn: _MiniConn, line: bytes, body: bytes) -> None:
        if line.startswith(b"get "):  # /healthz: every runtime has called /next once
            ok = len(self.seen) >= self.count
            status = b"200 OK" if ok else b"503 Service Unavailable"
            conn.write(b"HTTP/1.1 %s\r\nContent-Length: 0\r\n\r\n" % status)
        elif self.waiters:
            self.deliver(self.waiters.popleft(), conn, body)
        else:
            self.pending.append((conn, body))

    def runtime(self, conn: _MiniConn, line: bytes, body: bytes) -> None:
        if line.startswith(b"get "):  # /invocation/next
            self.seen.add(id(conn))
            if self.pending:
                self.deliver(conn, *self.pending.popleft())
            else:
                self.waiters.append(conn)
            return
        # POST /2018-06-01/runtime/invocation/<id>/response (or /error)
        path = line.split(b" ", 1)[1]
        request_id, _, action = path[len(b"/2018-06-01/runtime/invocation/") :].rpartition(b"/")
        client = self.inflight.pop(request_id)
        extra = b"X-Amz-Function-Error: Unhandled\r\n" if action == b"error" else b""
        client.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-amzn-RequestId: %s\r\n"
            b"X-Amz-Executed-Version: $LATEST\r\n%sContent-Length: %d\r\n\r\n%s"
            % (request_id, extra, len(body), body)
        )
        conn.write(ACCEPTED)

    def deliver(self, runtime: _MiniConn, client: _MiniConn, event: bytes) -> None:
        self.counter += 1
        request_id = f"{os.getpid():08x}-0000-4000-8000-{self.counter:012x}"
        self.inflight[request_id.encode()] = client
        deadline_ms = int((time.time() + 3) * 1000)
        runtime.write(next_response(request_id, event, deadline_ms))


async def _serve_relay(invoke_port: int, api_port: int, count: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    relay = Relay(count)
    servers = [
        await loop.create_server(lambda: _MiniConn(relay.runtime), "127.0.0.1", api_port + i)
        for i in range(count)
    ]
    servers.append(
        await loop.create_server(lambda: _MiniConn(relay.invoke), "127.0.0.1", invoke_port)
    )
    await stop.wait()
    for server in servers:
        server.close()


def relay_main(invoke_port: int, api_port: int, count: int) -> int:
    """On the agent's own event loop (uvloop unless KUBELAMBDA_AGENT_LOOP=asyncio)."""
    from kubelambda.agent import eventloop  # noqa: PLC0415 (the agent's package path)

    eventloop.run(_serve_relay(invoke_port, api_port, count))
    return 0


# --- processes --------------------------------------------------------------------------------


@dataclass
class Proc:
    role: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_bytes()[-2000:].decode(errors="replace")
            raise BenchError(f"{self.role} exited with {self.popen.returncode}:\n{tail}")


class Processes:
    """Every process this script starts; all stopped (and their groups killed) at exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.extra_pids: set[int] = set()  # runtimes the agents spawned (own sessions)

    def start(self, role: str, argv: list[str], env: dict[str, str], cwd: Path) -> Proc:
        log = self.workdir / f"{role}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(role, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 10) -> None:
        self.extra_pids.update(children_of(proc.pid))
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid)
                proc.popen.wait(timeout=timeout)
        _killpg(proc.pid)  # anything left in its group

    def stop_all(self) -> list[int]:
        """Stop everything; returns pids that were still alive and had to be killed."""
        for proc in reversed(self.procs):
            try:
                self.stop(proc)
            except Exception as exc:
                print(f"warning: stopping {proc.role}: {exc}", file=sys.stderr)
        leftovers = []
        for pid in sorted(self.extra_pids):
            if Path(f"/proc/{pid}").exists() and _is_ours(pid):
                leftovers.append(pid)
                _killpg(pid)
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        return leftovers


def _is_ours(pid: int) -> bool:
    """A recorded runtime pid that is still a bootstrap.py (not a recycled pid)."""
    try:
        return b"bootstrap.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _killpg(pgid: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def base_env(pythonpath: Path) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "KUBELAMBDA_AGENT_LOOP")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONPATH"] = str(pythonpath)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def agent_env(task_root: Path, invoke_port: int, api_port: int, concurrency: int) -> dict[str, str]:
    return base_env(OPERATOR_DIR) | {
        "AWS_LAMBDA_FUNCTION_NAME": FUNCTION,
        "_HANDLER": "app.handler",
        "KUBELAMBDA_RUNTIME": "python3.11",
        "KUBELAMBDA_RUNTIME_DIR": str(PYTHON_RUNTIME_DIR),
        "KUBELAMBDA_TASK_ROOT": str(task_root),
        "KUBELAMBDA_INVOKE_PORT": str(invoke_port),
        "KUBELAMBDA_RUNTIME_API_PORT": str(api_port),
        "KUBELAMBDA_CONCURRENCY": str(concurrency),
    }


def runtime_spec(env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The command and environment the agent itself would give its runtimes."""
    if str(OPERATOR_DIR) not in sys.path:
        sys.path.insert(0, str(OPERATOR_DIR))
    from kubelambda.agent.config import load_config  # noqa: PLC0415 (needs the path above)

    config = load_config(env)
    return list(config.command), dict(config.runtime_env)


# --- HTTP client ----------------------------------------------------------------------------


class Client:
    """Keep-alive HTTP/1.1 client on raw sockets (as cheap per request as Python gets)."""

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def call(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        start, _, body = read_message(self.reader)
        return int(start[9:12]), body

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def invoke_request(event: bytes) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (INVOKE_PATH.encode(), len(event), event)
    )


def wait_listening(port: int, proc: Proc, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        proc.check()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise BenchError(f"{proc.role}: port {port} not listening after {timeout}s")


def wait_healthy(port: int, procs: Sequence[Proc], timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for proc in procs:
            proc.check()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.02)
    raise BenchError(f"port {port} not healthy after {timeout}s")


# --- scenarios --------------------------------------------------------------------------------


Call = Callable[[], int]
"""One invocation; returns its latency in ns, raises BenchError on a wrong answer."""


@dataclass
class Scenario:
    name: str
    call: Call
    pids: dict[str, int]  # role -> pid, for CPU accounting
    samples: list[int] = field(default_factory=list)
    cpu: dict[str, int] = field(default_factory=dict)  # role -> ns over the timed blocks


def http_call(client: Client, request: bytes, expected: bytes) -> Call:
    perf = time.perf_counter_ns

    def call() -> int:
        t0 = perf()
        status, body = client.call(request)
        t1 = perf()
        if status != 200 or body != expected:
            raise BenchError(f"unexpected answer {status}: {body[:200]!r}")
        return t1 - t0

    return call


class DirectRuntime:
    """Serves the Runtime API to one bootstrap from this process: no middle process."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port: int = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.reader: BinaryIO | None = None
        self.counter = 0

    def accept(self, proc: Proc) -> None:
        self.listener.settimeout(self.timeout)
        try:
            conn, _ = self.listener.accept()
        except TimeoutError:
            proc.check()
            raise BenchError("direct: the runtime did not connect") from None
        conn.settimeout(self.timeout)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn, self.reader = conn, conn.makefile("rb")
        start, _, _ = read_message(self.reader)
        if not start.startswith(b"GET "):
            raise BenchError(f"direct: expected /next, got {start!r}")

    def make_call(self, event: bytes, expected: bytes) -> Call:
        perf = time.perf_counter_ns
        assert self.conn is not None
        assert self.reader is not None
        conn, reader = self.conn, self.reader

        def call() -> int:
            self.counter += 1
            request_id = f"{os.getpid():08x}-0000-4000-8000-{self.counter:012x}"
            data = next_response(request_id, event, int((time.time() + 3) * 1000))
            t0 = perf()
            conn.sendall(data)
            start, _, body = read_message(reader)
            t1 = perf()
            conn.sendall(ACCEPTED)
            nxt, _, _ = read_message(reader)  # the runtime's next /next, untimed
            if b"/response " not in start or body != expected or not nxt.startswith(b"GET "):
                raise BenchError(f"direct: unexpected {start!r} {body[:200]!r} {nxt!r}")
            return t1 - t0

        return call

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


def load_bootstrap() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "kubelambda_bench_bootstrap", PYTHON_RUNTIME_DIR / "bootstrap.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inproc_call(handler_code: str, event: bytes, expected: bytes) -> Call:
    """bootstrap.handle() minus its two socket calls: context, event decode, handler, encode."""
    bootstrap = load_bootstrap()
    namespace: dict[str, Any] = {}
    exec(handler_code, namespace)
    handler = namespace["handler"]
    headers = {
        "content-type": "application/json",
        "lambda-runtime-aws-request-id": "00000000-0000-4000-8000-000000000000",
        "lambda-runtime-deadline-ms": str(int((time.time() + 3) * 1000)),
        "lambda-runtime-invoked-function-arn": ARN,
        "lambda-runtime-trace-id": TRACE_ID,
    }
    perf = time.perf_counter_ns

    def call() -> int:
        t0 = perf()
        os.environ["_X_AMZN_TRACE_ID"] = headers["lambda-runtime-trace-id"]
        context = bootstrap.make_context(headers)
        result = bootstrap.unmarshal_event(event, headers["content-type"])
        body, _ = bootstrap.marshal_response(handler(result, context))
        t1 = perf()
        if body != expected:
            raise BenchError(f"inproc: unexpected {body[:200]!r}")
        return int(t1 - t0)

    return call


def run_block(scenario: Scenario, count: int, deadline: float, timed: bool) -> None:
    call = scenario.call
    before = {role: cpu_ns(pid) for role, pid in scenario.pids.items()}
    samples = []
    gc.collect()
    gc.disable()
    try:
        for i in range(count):
            samples.append(call())
            if i % 256 == 0 and time.monotonic() > deadline:
                raise BenchError("--max-seconds exceeded")
    finally:
        gc.enable()
    if timed:
        scenario.samples += samples
        for role, pid in scenario.pids.items():
            scenario.cpu[role] = scenario.cpu.get(role, 0) + cpu_ns(pid) - before[role]


def cpu_per_invocation_us(scenario: Scenario) -> dict[str, float]:
    n = len(scenario.samples)
    return {role: round(ns / n / 1000, 1) for role, ns in scenario.cpu.items()} if n else {}


# --- concurrency ------------------------------------------------------------------------------


def run_concurrent(
    port: int,
    request: bytes,
    expected: bytes,
    *,
    threads: int,
    per_thread: int,
    warmup: int,
    timeout: float,
    deadline: float,
) -> dict[str, Any]:
    """`threads` clients, each sequential keep-alive; throughput and latency of all requests."""
    clients = [Client(port, timeout) for _ in range(threads)]
    calls = [http_call(c, request, expected) for c in clients]
    for call in calls:  # warm-up, sequential per client
        for _ in range(warmup):
            call()
    barrier = threading.Barrier(threads + 1, timeout=timeout)
    results: list[list[int]] = [[] for _ in range(threads)]
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        call = calls[index]
        barrier.wait()
        try:
            for i in range(per_thread):
                results[index].append(call())
                if i % 256 == 0 and time.monotonic() > deadline:
                    raise BenchError("--max-seconds exceeded")
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    gc.collect()
    gc.disable()
    try:
        barrier.wait()
        t0 = time.perf_counter()
        for w in workers:
            w.join(timeout=max(1.0, deadline - time.monotonic()))
        wall = time.perf_counter() - t0
    finally:
        gc.enable()
        for c in clients:
            c.close()
    if failures or any(w.is_alive() for w in workers):
        raise BenchError(f"concurrent run failed: {failures[:1] or 'timeout'}")
    samples = [s for r in results for s in r]
    return {
        "threads": threads,
        "requests": len(samples),
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(samples) / wall, 1),
        "latency_us": summary_us(samples),
    }


# --- anatomy: the agent's own per-invocation steps, timed in this process --------------------


def agent_anatomy(probe_pid: int, workdir: Path, count: int) -> dict[str, float]:
    """Median µs of steps the agent runs on every invocation, called here with its own code
    (read-only imports of kubelambda.agent; nothing is patched). Python work and syscalls
    only: the socket sends and epoll wake-ups that every relay pays are left out."""
    if str(OPERATOR_DIR) not in sys.path:
        sys.path.insert(0, str(OPERATOR_DIR))
    import uuid  # noqa: PLC0415

    from kubelambda.agent import httpio, invoke, logs, procs  # noqa: PLC0415

    invoke_head = invoke_request(b"")[: -len(b"\r\n\r\n")] + b"\r\n\r\n"
    api = b"Host: 127.0.0.1:9001\r\n"
    next_head = b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\n" + api
    next_head += b"Content-Length: 0\r\n\r\n"
    response_head = b"POST /2018-06-01/runtime/invocation/%s/response HTTP/1.1\r\n" % (
        str(uuid.uuid4()).encode()
    )
    response_head += api + b"Content-Type: application/json\r\nContent-Length: 4\r\n\r\n"
    probe = procs.MemoryProbe(probe_pid)
    log_fd = os.open(workdir / "anatomy.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    request_id = str(uuid.uuid4())

    pending = array.array("i", [0])

    def empty_pipe() -> None:
        fcntl.ioctl(read_fd, termios.FIONREAD, pending)

    def log_lines() -> None:
        os.write(
            log_fd,
            logs.start_line(request_id, "$LATEST")
            + logs.end_line(request_id)
            + logs.report_line(
                request_id,
                duration_ms=0.3,
                memory_mb=128,
                max_used_mb=14,
                init_ms=None,
                status=None,
            ),
        )

    steps: dict[str, Callable[[], object]] = {
        "parse_head x3 (invoke, /next, /response)": lambda: (
            httpio.parse_head(invoke_head),
            httpio.parse_head(next_head),
            httpio.parse_head(response_head),
        ),
        "request id: new_request_id()": invoke.new_request_id,
        "trace id: new_trace_id()": invoke.new_trace_id,
        "MemoryProbe.peak_kb(reset=True) (/proc status, children, clear_refs)": lambda: (
            probe.peak_kb(reset=True)
        ),
        # Held lines of back-to-back invocations share a write: at most one per invocation.
        "START + END/REPORT lines, one write to the log file": log_lines,
        "drain runtime output: FIONREAD on the empty pipe": empty_pipe,
    }
    out: dict[str, float] = {}
    perf = time.perf_counter_ns
    try:
        for name, step in steps.items():
            samples = []
            for _ in range(count):
                t0 = perf()
                step()
                samples.append(perf() - t0)
            out[name] = round(statistics.median(samples) / 1000, 1)
    finally:
        probe.close()
        for fd in (log_fd, read_fd, write_fd):
            os.close(fd)
    out["sum"] = round(sum(out.values()), 1)
    return out


class _FakeTransport(asyncio.Transport):
    """Collects what a protocol writes; for replaying the agent's code without sockets."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True


def _request_id(next_answer: bytearray) -> bytes:
    start = next_answer.index(b"Lambda-Runtime-Aws-Request-Id: ") + 31
    return bytes(next_answer[start : next_answer.index(b"\r\n", start)])


def _feed(protocol: asyncio.BufferedProtocol, data: bytes) -> None:
    """What the loop does when ``data`` arrives on the protocol's socket: reads of at most
    the buffer the protocol offers."""
    view = memoryview(data)
    while view:
        buffer = memoryview(protocol.get_buffer(len(view)))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        protocol.buffer_updated(size)
        view = view[size:]


async def _replay(kind: str, event: bytes, env: dict[str, str], count: int) -> list[int]:
    """Per invocation ns of one server's code, driven in-process through fake transports with
    the exact bytes the client and bootstrap send: no sockets, no event loop wake-ups."""
    runtime_t, client_t = _FakeTransport(), _FakeTransport()
    runtime: asyncio.BufferedProtocol
    client: asyncio.BufferedProtocol
    if kind == "agent":
        from kubelambda.agent import config, httpio, procs, runtime_api  # noqa: PLC0415
        from kubelambda.agent import invoke as agent_invoke  # noqa: PLC0415
        from kubelambda.agent.runtime import RuntimeSlot  # noqa: PLC0415

        cfg = config.load_config(env)
        slot = RuntimeSlot(0, cfg, procs.Reaper())
        endpoint = agent_invoke.InvokeEndpoint(cfg, [slot])
        runtime = httpio.Connection(runtime_api.RuntimeApi(slot).handle, 1 << 20, set())
        client = httpio.Connection(endpoint.handle, 1 << 20, set())
    else:
        relay = Relay(1)
        runtime, client = _MiniConn(relay.runtime), _MiniConn(relay.invoke)
    runtime.connection_made(runtime_t)
    client.connection_made(client_t)
    api = b"Host: 127.0.0.1:9001\r\n"
    next_request = b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\n" + api
    next_request += b"Content-Length: 0\r\n\r\n"
    invoke = invoke_request(event)
    response_tail = b"/response HTTP/1.1\r\n" + api
    response_tail += b"Content-Type: application/json\r\nContent-Length: 4\r\n\r\nnull"
    _feed(runtime, next_request)
    samples = []
    perf = time.perf_counter_ns
    for _ in range(count):
        runtime_t.written.clear()
        client_t.written.clear()
        t0 = perf()
        _feed(client, invoke)
        request_id = _request_id(runtime_t.written)
        _feed(runtime, b"POST /2018-06-01/runtime/invocation/" + request_id + response_tail)
        _feed(runtime, next_request)
        samples.append(perf() - t0)
        if not client_t.written.endswith(b"\r\n\r\nnull"):
            raise BenchError(f"replay {kind}: unexpected {bytes(client_t.written)!r}")
    return samples


def replay_us(event: bytes, env: dict[str, str], workdir: Path, count: int) -> dict[str, Any]:
    """The agent's and the relay's user-space cost per invocation (median µs). The agent writes
    its log lines to fd 1, which points at a file meanwhile."""
    if str(OPERATOR_DIR) not in sys.path:
        sys.path.insert(0, str(OPERATOR_DIR))
    out: dict[str, Any] = {}
    sys.stdout.flush()
    saved = os.dup(1)
    log_fd = os.open(workdir / "replay.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(log_fd, 1)
        for kind in ("agent", "relay"):
            samples = asyncio.run(_replay(kind, event, env, count))
            out[kind] = summary_us(samples)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(log_fd)
    return out


# --- the run --------------------------------------------------------------------------------


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def machine() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "kernel": platform.release(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def python_version(python: str) -> str:
    """``3.11.2 (/usr/bin/python3)``: the interpreter the agents and runtimes ran on."""
    code = "import platform; print(platform.python_version())"
    version = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return f"{version.stdout.strip()} ({python})"


def rss_mb(pid: int) -> dict[str, float]:
    return {k: round(v / 1024, 1) for k, v in proc_status_kb(pid).items()}


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, procs: Processes) -> None:
        self.args = args
        self.workdir = workdir
        self.procs = procs
        self.deadline = time.monotonic() + args.max_seconds
        self.event = make_event(args.payload_bytes)
        self.expected = b"null" if args.handler == "noop" else self.event
        self.request = invoke_request(self.event)
        self.task_root = workdir / "task"
        self.task_root.mkdir()
        (self.task_root / "app.py").write_text(HANDLERS[args.handler])
        self.python, self.uvloop_dir = self._interpreter(args.python, workdir)

    @staticmethod
    def _interpreter(python: Path, workdir: Path) -> tuple[str, Path]:
        """Make ``python`` the ``python3`` of every process started (first on PATH), and lay
        out uvloop for it as the images do: the package alone, next to the agent's code."""
        if not os.access(python, os.X_OK):
            raise BenchError(f"--python {python}: not an executable")
        bindir = workdir / "bin"
        bindir.mkdir()
        (bindir / "python3").symlink_to(python)
        os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
        uvloop_dir = workdir / "lib"
        uvloop_dir.mkdir()
        spec = importlib.util.find_spec("uvloop")
        if spec is not None and spec.submodule_search_locations:
            (uvloop_dir / "uvloop").symlink_to(spec.submodule_search_locations[0])
        return str(python), uvloop_dir

    def start_agent(
        self, role: str, concurrency: int, code: Path = OPERATOR_DIR
    ) -> tuple[Proc, int]:
        """An agent whose package is imported from `code` (another copy for --baseline)."""
        port, api_port = free_port_range(1), free_port_range(concurrency)
        env = agent_env(self.task_root, port, api_port, concurrency)
        env["PYTHONPATH"] = f"{code}{os.pathsep}{self.uvloop_dir}"
        entry = ["-m", "kubelambda.agent"]
        argv = [self.python, *entry]
        if self.args.profile_agent:
            profile = self.workdir / f"{role}.prof"
            argv = [self.python, "-m", "cProfile", "-o", str(profile), *entry]
        proc = self.procs.start(role, argv, env, REPO_ROOT)
        wait_healthy(port, [proc], self.args.timeout)
        return proc, port

    def start_relay(self, role: str, concurrency: int) -> tuple[Proc, list[Proc], int]:
        port, api_port = free_port_range(1), free_port_range(concurrency)
        argv = [self.python, "-m", "bench.agent_overhead"]
        argv += ["--relay", str(port), str(api_port), str(concurrency)]
        pythonpath = os.pathsep.join(map(str, (REPO_ROOT, OPERATOR_DIR, self.uvloop_dir)))
        relay_env = base_env(REPO_ROOT) | {"PYTHONPATH": pythonpath}
        relay = self.procs.start(role, argv, relay_env, REPO_ROOT)
        command, env = runtime_spec(agent_env(self.task_root, port, api_port, concurrency))
        wait_listening(port, relay, self.args.timeout)  # the API ports are bound before it
        runtimes = []
        for i in range(concurrency):
            runtime_env = env | {"AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{api_port + i}"}
            runtimes.append(
                self.procs.start(f"{role}-runtime-{i}", command, runtime_env, self.task_root)
            )
        wait_healthy(port, [relay, *runtimes], self.args.timeout)
        return relay, runtimes, port

    def start_direct(self) -> tuple[DirectRuntime, Proc]:
        direct = DirectRuntime(self.args.timeout)
        command, env = runtime_spec(agent_env(self.task_root, 1, 1, 1))
        env["AWS_LAMBDA_RUNTIME_API"] = f"127.0.0.1:{direct.port}"
        proc = self.procs.start("direct-runtime", command, env, self.task_root)
        direct.accept(proc)
        return direct, proc

    def sequential(self) -> dict[str, Any]:
        args = self.args
        out: dict[str, Any] = {}
        with ExitStack() as stack:
            agent, agent_port = self.start_agent("agent", 1)
            time.sleep(args.settle)
            agent_runtime = children_of(agent.pid)
            rss = {"idle_after_start": rss_mb(agent.pid)}
            relay, relay_runtimes, relay_port = self.start_relay("relay", 1)
            direct, direct_runtime = self.start_direct()
            stack.callback(direct.close)
            agent_client = Client(agent_port, args.timeout)
            stack.callback(agent_client.close)
            relay_client = Client(relay_port, args.timeout)
            stack.callback(relay_client.close)

            scenarios = [
                Scenario(
                    "agent",
                    http_call(agent_client, self.request, self.expected),
                    {"agent": agent.pid, "runtime": agent_runtime[0]}
                    if agent_runtime
                    else {"agent": agent.pid},
                ),
                Scenario(
                    "relay",
                    http_call(relay_client, self.request, self.expected),
                    {"relay": relay.pid, "runtime": relay_runtimes[0].pid},
                ),
                Scenario(
                    "direct",
                    direct.make_call(self.event, self.expected),
                    {"runtime": direct_runtime.pid},
                ),
                Scenario(
                    "inproc", inproc_call(HANDLERS[args.handler], self.event, self.expected), {}
                ),
            ]
            others = [relay, *relay_runtimes, direct_runtime]
            if args.baseline is not None:
                baseline, baseline_port = self.start_agent("baseline", 1, args.baseline)
                others.append(baseline)
                baseline_client = Client(baseline_port, args.timeout)
                stack.callback(baseline_client.close)
                scenarios.append(
                    Scenario(
                        "baseline",
                        http_call(baseline_client, self.request, self.expected),
                        {"agent": baseline.pid, "runtime": children_of(baseline.pid)[0]},
                    )
                )
            for scenario in scenarios:
                run_block(scenario, args.warmup, self.deadline, timed=False)
            rss["after_warmup"] = rss_mb(agent.pid)
            per_round = math.ceil(args.requests / args.rounds)
            for r in range(args.rounds):
                count = min(per_round, args.requests - r * per_round)
                if count <= 0:
                    break
                # Rotate the order so no scenario always follows the same one.
                for k in range(len(scenarios)):
                    scenario = scenarios[(r + k) % len(scenarios)]
                    run_block(scenario, count, self.deadline, timed=True)
                for proc in (agent, *others):
                    proc.check()
            rss["after_timed_run"] = rss_mb(agent.pid)
            out["rss_mb"] = {
                "agent": rss,
                "agent_runtime": rss_mb(agent_runtime[0]) if agent_runtime else {},
                "relay": rss_mb(relay.pid),
                "relay_runtime": rss_mb(relay_runtimes[0].pid),
            }
            out["scenarios"] = {
                s.name: {
                    "latency_us": summary_us(s.samples),
                    "cpu_us_per_invocation": cpu_per_invocation_us(s),
                }
                for s in scenarios
            }
            if args.anatomy:
                out["agent_anatomy_us"] = agent_anatomy(
                    relay_runtimes[0].pid, self.workdir, args.anatomy
                )
                env = agent_env(self.task_root, 1, 1, 1)
                out["replay_us"] = replay_us(self.event, env, self.workdir, args.anatomy)
            log = agent.log.stat().st_size
            out["agent_log_bytes_per_invocation"] = round(
                log / (args.warmup + args.requests + 1), 1
            )
        for proc in (agent, *others):
            self.procs.stop(proc)
        return out

    def concurrent(self) -> dict[str, Any]:
        args = self.args
        n = args.concurrency
        agent, agent_port = self.start_agent("agent-c", n)
        relay, relay_runtimes, relay_port = self.start_relay("relay-c", n)
        per_thread = math.ceil(args.concurrent_requests / n)
        out: dict[str, Any] = {"agent": [], "relay": []}
        for _ in range(2):  # interleaved: agent, relay, agent, relay
            for name, port in (("agent", agent_port), ("relay", relay_port)):
                out[name].append(
                    run_concurrent(
                        port,
                        self.request,
                        self.expected,
                        threads=n,
                        per_thread=per_thread // 2,
                        warmup=args.concurrent_warmup,
                        timeout=args.timeout,
                        deadline=self.deadline,
                    )
                )
        out["agent_rss_mb"] = rss_mb(agent.pid)
        for proc in (agent, relay, *relay_runtimes):
            self.procs.stop(proc)
        return out


def added(scenarios: dict[str, Any], base: str) -> dict[str, float]:
    a, b = scenarios["agent"]["latency_us"], scenarios[base]["latency_us"]
    return {
        "p50_us": round(a["p50"] - b["p50"], 1),
        "p99_us": round(a["p99"] - b["p99"], 1),
        "mean_us": round(a["mean"] - b["mean"], 1),
        "ratio_p50": round(a["p50"] / b["p50"], 2),
        "ratio_p99": round(a["p99"] / b["p99"], 2),
    }


def print_report(result: dict[str, Any]) -> None:
    seq = result["sequential"]
    print(
        f"\nsequential, 1 runtime, {result['config']['payload_bytes']} B event, "
        f"{result['config']['handler']} handler (µs; CPU µs per invocation); "
        f"agents and runtimes on Python {result['machine']['servers_python']}"
    )
    print(f"{'scenario':<8} {'n':>5} {'p50':>7} {'p90':>7} {'p99':>7} {'mean':>7}  cpu")
    for name, s in seq["scenarios"].items():
        lat = s["latency_us"]
        cpu = ", ".join(f"{k} {v}" for k, v in s["cpu_us_per_invocation"].items())
        print(
            f"{name:<8} {lat['n']:>5} {lat['p50']:>7} {lat['p90']:>7} {lat['p99']:>7} "
            f"{lat['mean']:>7}  {cpu}"
        )
    for base in ("relay", "direct", "baseline"):
        d = result["added"].get(f"over_{base}")
        if d is None:
            continue
        print(
            f"agent - {base:<6}: p50 {d['p50_us']:+.1f} µs, p99 {d['p99_us']:+.1f} µs, "
            f"mean {d['mean_us']:+.1f} µs; ratio p50 {d['ratio_p50']}, p99 {d['ratio_p99']}"
        )
    rss = seq["rss_mb"]
    agent = rss["agent"]
    print(
        "agent RSS MiB: idle {} / after warm-up {} / after run {} / peak (VmHWM) {}".format(
            agent["idle_after_start"].get("VmRSS"),
            agent["after_warmup"].get("VmRSS"),
            agent["after_timed_run"].get("VmRSS"),
            agent["after_timed_run"].get("VmHWM"),
        )
    )
    print(
        f"  (relay {rss['relay'].get('VmRSS')}, runtime under agent "
        f"{rss['agent_runtime'].get('VmRSS')} MiB)"
    )
    anatomy = seq.get("agent_anatomy_us", {})
    if anatomy:
        print("\nagent's own per-invocation steps, median µs each (in this process):")
        for name, value in anatomy.items():
            print(f"  {value:>7}  {name}")
    replay = seq.get("replay_us", {})
    if replay:
        print("user-space cost per invocation, code replayed in-process without sockets (µs):")
        for name, lat in replay.items():
            print(f"  {name:<6} p50 {lat['p50']:>6}  mean {lat['mean']:>6}")
    conc = result.get("concurrent")
    if conc:
        print(f"\nconcurrency {result['config']['concurrency']} (runtimes = client threads)")
        for name in ("agent", "relay"):
            for i, r in enumerate(conc[name]):
                lat = r["latency_us"]
                print(
                    f"{name:<6} #{i + 1}: {r['throughput_rps']:>7} req/s  p50 {lat['p50']} µs  "
                    f"p99 {lat['p99']} µs  (n {r['requests']})"
                )
        print(
            f"agent RSS MiB with {result['config']['concurrency']} runtimes: {conc['agent_rss_mb']}"
        )
    verdict = result["verdict"]
    print(
        f"\ntarget added p50 <= {TARGET_ADDED_P50_MS * 1000:.0f} µs: over relay "
        f"{'met' if verdict['added_p50_over_relay_met'] else 'NOT met'}, over direct "
        f"{'met' if verdict['added_p50_over_direct_met'] else 'NOT met'}; "
        f"agent RSS <= {TARGET_RSS_MB:.0f} MB: {'met' if verdict['rss_met'] else 'NOT met'}"
    )


def profile_summary(path: Path, limit: int = 25) -> str:
    import io  # noqa: PLC0415
    import pstats  # noqa: PLC0415

    stream = io.StringIO()
    pstats.Stats(str(path), stream=stream).sort_stats("tottime").print_stats(limit)
    return stream.getvalue()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.agent_overhead",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See bench/README.md for what each scenario measures.",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=3000,
        help="timed requests per scenario (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=300,
        help="untimed requests per scenario first (default: %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="the timed requests run in this many rounds that rotate through the scenarios"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--payload-bytes",
        type=int,
        default=1024,
        help="size of the JSON event (default: %(default)s)",
    )
    parser.add_argument(
        "--handler",
        choices=sorted(HANDLERS),
        default="noop",
        help="noop returns None, echo returns the event (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="runtimes and client threads of the concurrent part, 0 skips it"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrent-requests",
        type=int,
        default=8000,
        help="timed requests of the concurrent part, per scenario (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrent-warmup",
        type=int,
        default=100,
        help="untimed requests per client thread first (default: %(default)s)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds between agent ready and the idle RSS reading (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=15.0,
        help="limit for every wait: start-up, each request (default: %(default)s)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="limit for the whole run (default: %(default)s)",
    )
    parser.add_argument(
        "--anatomy",
        type=int,
        default=2000,
        help="repetitions of each agent step timed in-process, 0 skips (default: %(default)s)",
    )
    parser.add_argument(
        "--profile-agent",
        action="store_true",
        help="run the agents under cProfile and print the top functions"
        " (slows the agent: the latencies of such a run are not comparable)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON file to write (default: bench/results/agent_overhead-<UTC time>.json)",
    )
    parser.add_argument(
        "--relay",
        nargs=3,
        type=int,
        metavar=("INVOKE_PORT", "API_PORT", "COUNT"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="also time an agent imported from DIR (holding kubelambda/agent, e.g. a copy of"
        " the last commit's) as scenario 'baseline', in the same rounds",
    )
    parser.add_argument(
        "--python",
        type=Path,
        default=IMAGE_PYTHON,
        help="interpreter of the agents, the relay and every runtime (their `python3`): by"
        " default Debian's, as in the runtime images; a development build (e.g. pyenv's,"
        " without PGO/LTO) runs the same code about 20%% slower",
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop of the agents and the relay (KUBELAMBDA_AGENT_LOOP): uvloop, as in"
        " the runtime images, or asyncio's own",
    )
    args = parser.parse_args(argv)
    if args.relay is None:
        for name in ("requests", "warmup", "rounds", "payload_bytes"):
            if getattr(args, name) < (1 if name != "warmup" else 0):
                parser.error(f"--{name.replace('_', '-')} is too small")
        if args.concurrency < 0 or args.concurrency > 64:
            parser.error("--concurrency must be 0..64")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["KUBELAMBDA_AGENT_LOOP"] = args.loop  # for the agents and the relay
    if args.relay is not None:
        invoke_port, api_port, count = args.relay
        return relay_main(invoke_port, api_port, count)
    started = datetime.now(UTC)
    result: dict[str, Any] = {
        "benchmark": "agent_overhead",
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "relay"
        },
    }
    leftovers: list[int] = []
    with exit_on_sigterm(), tempfile.TemporaryDirectory(prefix="kl-agent-bench-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            bench = Bench(args, workdir, procs)
            result["machine"]["servers_python"] = python_version(bench.python)
            result["sequential"] = bench.sequential()
            if args.concurrency:
                result["concurrent"] = bench.concurrent()
        finally:
            leftovers = procs.stop_all()
            result["leftover_processes_killed"] = leftovers
        if args.profile_agent:
            for prof in sorted(workdir.glob("*.prof")):
                text = profile_summary(prof)
                print(f"\n--- {prof.stem} (cProfile, sorted by tottime) ---\n{text}")
                result.setdefault("profiles", {})[prof.stem] = text
    seq = result["sequential"]["scenarios"]
    bases = [base for base in ("relay", "direct", "baseline") if base in seq]
    result["added"] = {f"over_{base}": added(seq, base) for base in bases}
    agent_rss = result["sequential"]["rss_mb"]["agent"]
    peak = max(
        [v.get("VmHWM", 0.0) for v in agent_rss.values()]
        + [result.get("concurrent", {}).get("agent_rss_mb", {}).get("VmHWM", 0.0)]
    )
    result["verdict"] = {
        "added_p50_over_relay_met": result["added"]["over_relay"]["p50_us"]
        <= TARGET_ADDED_P50_MS * 1000,
        "added_p50_over_direct_met": result["added"]["over_direct"]["p50_us"]
        <= TARGET_ADDED_P50_MS * 1000,
        "agent_peak_rss_mib": peak,
        "rss_met": peak <= TARGET_RSS_MB,
    }
    result["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    result["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    path = args.output or RESULTS_DIR / f"agent_overhead-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    print(f"\nresults: {path}")
    if leftovers:
        print(f"warning: killed leftover runtime processes {leftovers}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
