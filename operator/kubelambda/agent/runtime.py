"""A runtime slot: one language runtime process and the invocation it is working on.

Lifecycle of a slot's process: spawned -> calls /next (initialized) -> serves invocations one
at a time. A timeout kills its process group and answers ``Sandbox.Timedout``; an unexpected
exit answers ``Runtime.ExitError`` / ``Runtime.OutOfMemory`` for the running invocation. After
either, an initialized runtime is restarted at once (the next REPORT carries Init Duration).
A runtime that fails during init is restarted lazily, by the next invocation assigned to it,
so a broken function re-runs its init per invocation like Lambda instead of crash-looping.

Memory cap: the container's memory limit is larger than the function's memory size (a tmpfs
/tmp is charged to it), so the kernel does not stop a runtime at the memory size; the agent
does. While an invocation runs, and during init, the runtime's process-tree RSS is sampled
every ``SAMPLE_S``; above the memory size the runtime is SIGKILLed and the invocation answers
``Runtime.OutOfMemory``. An allocation that comes and goes between two samples escapes the
cap; the container limit still bounds it.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import math
import os
import signal
import subprocess
import termios
import time
import uuid
from collections.abc import Callable

from kubelambda.agent import errors, logs, procs
from kubelambda.agent.config import AgentConfig
from kubelambda.agent.httpio import Connection, Request, Response, json_response

# Lambda's init phase limit: an invocation waiting for a cold start may use it on top of its
# timeout before the agent gives up on the runtime.
INIT_GRACE_S = 10.0
# How long a runtime that reported an init error may take to exit by itself.
INIT_ERROR_EXIT_GRACE_S = 1.0
# A SIGKILLed runtime whose sampled peak RSS reached this share of the memory size is
# reported as out of memory even without cgroup evidence.
OOM_RSS_SHARE = 0.9
# RSS sampling for the memory cap: fast enough to catch an allocation of a few hundred MB
# before it completes; one pread of an open statm file per sample.
SAMPLE_S = 0.015

_ACCEPTED = json_response(202, errors.STATUS_OK)
_INVALID_ID = json_response(400, errors.INVALID_REQUEST_ID)
_TOO_LARGE = json_response(413, errors.PAYLOAD_TOO_LARGE)
_INVALID_STATE = json_response(403, errors.INVALID_STATE)
_READ_SIZE = 65536
# Agent log lines wait at most this long, or until this many bytes, for a write they can
# join (see ``RuntimeSlot._log``).
LOG_HOLD_S = 0.005
LOG_HOLD_BYTES = 4096


class Invocation:
    """One synchronous invocation, from the invoke endpoint to the runtime and back."""

    __slots__ = (
        "client_context",
        "cognito_identity",
        "deadline",
        "deadline_ms",
        "event",
        "invoked_arn",
        "on_complete",
        "request_id",
        "responder",
        "started",
        "tail",
        "trace_id",
    )

    def __init__(
        self,
        request_id: str,
        event: bytes,
        invoked_arn: str,
        trace_id: str,
        *,
        responder: Connection,
        on_complete: Callable[[Invocation, bytes, bool], None],
        deadline_ms: int | None = None,
        client_context: str | None = None,
        cognito_identity: str | None = None,
        tail: bool = False,
    ) -> None:
        self.request_id = request_id
        self.event = event
        self.invoked_arn = invoked_arn
        self.trace_id = trace_id
        self.deadline_ms = deadline_ms
        self.client_context = client_context
        self.cognito_identity = cognito_identity
        self.tail: bytearray | None = bytearray() if tail else None
        self.responder = responder
        """The invoke endpoint's connection, answered by ``on_complete(inv, body, error)``."""
        self.on_complete = on_complete
        self.started = 0.0
        self.deadline = math.inf
        """Loop time at which the invocation times out (see ``RuntimeSlot._set_deadline``)."""

    def next_response(self) -> Response:
        """The Runtime API's answer to GET /runtime/invocation/next."""
        head = (
            "Content-Type: application/json\r\n"
            f"Lambda-Runtime-Aws-Request-Id: {self.request_id}\r\n"
            f"Lambda-Runtime-Deadline-Ms: {self.deadline_ms}\r\n"
            f"Lambda-Runtime-Invoked-Function-Arn: {self.invoked_arn}\r\n"
            f"Lambda-Runtime-Trace-Id: {self.trace_id}\r\n"
        )
        if self.client_context is not None:
            head += f"Lambda-Runtime-Client-Context: {self.client_context}\r\n"
        if self.cognito_identity is not None:
            head += f"Lambda-Runtime-Cognito-Identity: {self.cognito_identity}\r\n"
        return Response(200, head.encode(), self.event)


def log_stream_name(version: str) -> str:
    return f"{time.strftime('%Y/%m/%d', time.gmtime())}/[{version}]{uuid.uuid4().hex}"


class RuntimeSlot:
    def __init__(self, index: int, config: AgentConfig, reaper: procs.Reaper) -> None:
        self.index = index
        self.port = config.runtime_api_port + index
        self._config = config
        self._reaper = reaper
        self._loop = asyncio.get_running_loop()
        self._proc: subprocess.Popen[bytes] | None = None
        self._memory: procs.Probe | None = None
        self._fd = -1
        self._echo = logs.LineEcho()
        # Agent log lines not yet written: they go out with the runtime's next output or
        # at most LOG_HOLD_S later, so back-to-back invocations share one log write.
        self._held = b""
        self._log_timer: asyncio.TimerHandle | None = None
        self._pending = array.array("i", [0])  # FIONREAD answer: bytes waiting in the pipe
        self._spawned_at = 0.0
        self._initialized = False
        # The process is going away (it reported an init error, or the agent killed it);
        # an invocation assigned since then waits for a fresh process.
        self._doomed = False
        self._init_ms: float | None = None  # pending for the next REPORT
        self._oom_baseline = 0
        self._idle_kb = 0  # RSS after init: the floor of what a crashed runtime used
        self._peak_kb = 0  # sampled while an invocation runs
        self._limit_kb = config.memory_mb * 1024
        self._enforce = config.enforce_memory
        self._sample_s: float | None = SAMPLE_S if config.enforce_memory else None
        self._sampler: asyncio.TimerHandle | None = None
        # Fires at or before the current invocation's deadline; see _set_deadline.
        self._timer: asyncio.Handle | None = None
        self._timer_at = math.inf  # the loop time it is armed for
        self._waiter: Connection | None = None  # a runtime blocked in GET /next
        self._delivered = False
        self._stopping = False
        self.current: Invocation | None = None
        self.settled = False
        """The first init attempt has concluded (ready, failed or crashed)."""

    # --- state seen by the invoke endpoint -------------------------------------------------

    @property
    def free(self) -> bool:
        return self.current is None and not self._stopping

    @property
    def warm(self) -> bool:
        """A runtime is blocked in /next: an invocation starts without delay."""
        return self._waiter is not None and not self._waiter.abandoned

    @property
    def alive(self) -> bool:
        return self._proc is not None

    # --- process lifecycle -----------------------------------------------------------------

    def spawn(self) -> None:
        env = dict(self._config.runtime_env)
        env["AWS_LAMBDA_RUNTIME_API"] = f"127.0.0.1:{self.port}"
        env["AWS_LAMBDA_LOG_STREAM_NAME"] = log_stream_name(self._config.version)
        cwd = self._config.task_root if os.path.isdir(self._config.task_root) else None
        self._initialized = False
        self._doomed = False
        self._init_ms = None
        self._idle_kb = self._peak_kb = 0
        self._oom_baseline = procs.cgroup_oom_kills()
        self._spawned_at = time.perf_counter()
        try:
            proc = subprocess.Popen(
                self._config.command,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a timeout kills the whole process group
            )
        except OSError as exc:
            self._spawn_failed(exc)
            return
        assert proc.stdout is not None  # stdout=PIPE
        self._proc = proc
        self._memory = procs.MemoryProbe(proc.pid)
        procs.prefer_for_oom_kill(proc.pid)
        self._fd = proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._on_output)
        self._reaper.watch(proc.pid, self._on_exit)
        self._sample_soon()  # the cap applies during init too

    def _spawn_failed(self, exc: OSError) -> None:
        self.settled = True
        if self._config.bootstrap_candidates:
            candidates = " ".join(self._config.bootstrap_candidates)
            message = f"Couldn't find valid bootstrap(s): [{candidates}]"
        else:
            message = f"{exc.strerror}: {exc.filename}"
        self.flush_log()
        logs.write_stdout(f"Runtime.InvalidEntrypoint: {message}\n".encode())
        inv = self.current
        if inv is not None:
            status = "Status: error\tError Type: Runtime.InvalidEntrypoint"
            self._finish(inv, errors.invalid_entrypoint(inv.request_id, message), True, status)

    def terminate(self) -> None:
        """Shutdown: ask the runtime to exit; no restart after this."""
        self._stopping = True
        if self._proc is not None:
            procs.kill_group(self._proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        if self._proc is not None:
            procs.kill_group(self._proc.pid)

    def _kill_runtime(self) -> None:
        """Kill the runtime for good (timeout, memory): an invocation assigned from now on
        waits for a fresh one."""
        if self._proc is not None:
            procs.kill_group(self._proc.pid)
            self._doomed = True

    def _oom_evidence(self) -> bool:
        """The kernel OOM-killed something in this container since the runtime started."""
        return procs.cgroup_oom_kills() > self._oom_baseline

    def _on_exit(self, code: int) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.returncode = code  # reaped by the agent's Reaper, not by Popen
        self._close_output(proc)
        if self._memory is not None:
            self._memory.close()
            self._memory = None
        procs.kill_group(proc.pid)  # leftovers of the runtime's process group
        if self._waiter is not None:
            self._waiter.close()
            self._waiter = None
        inv = self.current
        initialized = self._initialized
        waiting = inv is not None and not (self._delivered or self._stopping)
        if waiting and (initialized or self._doomed):
            # Assigned after this process served its last invocation, reported its init
            # error or was killed: it gets a fresh process, not this one's failure.
            self.spawn()
            return
        if inv is not None:
            body, status, peak_kb = self._exit_error(inv, code)
            # Answering may hand this slot its next invocation, which spawns a process.
            self._finish(inv, body, True, status, peak_kb=peak_kb)
        if self._stopping:
            return
        if not initialized:
            self.settled = True  # restarted lazily, by the next invocation
        elif self._proc is None:
            self.spawn()

    def _exit_error(self, inv: Invocation, code: int | None) -> tuple[bytes, str, int]:
        """(body, REPORT status, peak KiB) for an invocation whose runtime exited (``code``
        None: with an unknown status); logs the error lines Lambda logs for it."""
        request_id = inv.request_id
        error_type = "Runtime.ExitError"
        peak_kb = self._peak_kb
        if code is None:
            body = errors.exited_without_reason(request_id)
            reason = "Runtime exited without providing a reason"
        else:
            how = procs.describe_exit(code)
            body = errors.exited(request_id, how)
            reason = f"Runtime exited with error: {how}"
            if code == -signal.SIGKILL and (
                self._oom_evidence() or peak_kb >= self._limit_kb * OOM_RSS_SHARE
            ):
                error_type = "Runtime.OutOfMemory"
                body = errors.out_of_memory(request_id)
                # Killed at the limit, usually between two samples of the peak: like
                # Lambda, the REPORT shows the whole memory size as used.
                peak_kb = self._limit_kb
        self._start_late(inv)
        self._log(inv, f"RequestId: {request_id} Error: {reason}\n{error_type}\n".encode())
        return body, f"Status: error\tError Type: {error_type}", peak_kb

    # --- memory cap ------------------------------------------------------------------------

    def _sample_soon(self) -> None:
        if self._sampler is None and self._sample_s is not None:
            self._sampler = self._loop.call_later(self._sample_s, self._sample)

    def _sampling(self) -> bool:
        """Whether the runtime is to be watched now: initializing or running an invocation.
        An idle runtime is not sampled; the sampler stops by itself then (not cancelled per
        invocation, which would cost a timer on every invocation's path)."""
        return (
            self._proc is not None
            and not self._doomed
            and (self._delivered or not self._initialized)
        )

    def _sample(self) -> None:
        self._sampler = None
        if not self._sampling() or self._runtime_gone():
            return
        if self._enforce and self._memory is not None:
            rss_kb = self._memory.rss_kb()
            if rss_kb > self._limit_kb:
                self._over_memory(rss_kb)
                return
        self._sample_soon()

    def _runtime_gone(self) -> bool:
        """External runtimes: detect and handle their exit (a child's is reaped instead)."""
        return False

    def _over_memory(self, rss_kb: int) -> None:
        """The runtime uses more than the memory size: kill it, like Lambda's OOM."""
        self._kill_runtime()
        inv = self.current
        how = "Runtime exited with error: signal: killed"
        if inv is None:  # during init, with no invocation waiting for it
            mb = (rss_kb + 1023) // 1024
            line = f"Error: {how} (init used {mb} MB)\nRuntime.OutOfMemory\n"
            self.flush_log()
            logs.write_stdout(line.encode())
            return
        self._start_late(inv)
        self._log(inv, f"RequestId: {inv.request_id} Error: {how}\nRuntime.OutOfMemory\n".encode())
        status = "Status: error\tError Type: Runtime.OutOfMemory"
        self._finish(inv, errors.out_of_memory(inv.request_id), True, status, self._limit_kb)

    # --- runtime output --------------------------------------------------------------------

    def _on_output(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._consume(data, self.current)
        else:
            self._loop.remove_reader(self._fd)

    def _log(self, inv: Invocation, line: bytes, hold: bool = False) -> None:
        if inv.tail is not None:
            inv.tail += line
        self._held += line
        if not hold or len(self._held) > LOG_HOLD_BYTES:
            self.flush_log()
        elif self._log_timer is None:
            self._log_timer = self._loop.call_later(LOG_HOLD_S, self.flush_log)

    def flush_log(self) -> None:
        if self._log_timer is not None:
            self._log_timer.cancel()
            self._log_timer = None
        if self._held:
            logs.write_stdout(self._held)
            self._held = b""

    def _consume(self, data: bytes, inv: Invocation | None) -> None:
        """Runtime output, belonging to ``inv`` (for its log result)."""
        self.flush_log()
        if inv is not None and inv.tail is not None:
            inv.tail += data
            if len(inv.tail) > 2 * logs.TAIL_BYTES:
                del inv.tail[: -logs.TAIL_BYTES]
        self._echo.feed(data)

    def _drain_output(self, inv: Invocation | None = None) -> None:
        """Take what the runtime wrote before its last Runtime API call, in order."""
        while self._fd >= 0:
            try:
                # Usually the pipe is empty: asking costs a fraction of a read that fails.
                fcntl.ioctl(self._fd, termios.FIONREAD, self._pending)
                if not self._pending[0]:
                    return
                data = os.read(self._fd, _READ_SIZE)
            except OSError:  # BlockingIOError included
                return
            if not data:
                return
            self._consume(data, inv)

    def _close_output(self, proc: subprocess.Popen[bytes]) -> None:
        self._drain_output()
        self._echo.flush()
        self._loop.remove_reader(self._fd)
        if proc.stdout is not None:
            proc.stdout.close()
        self._fd = -1

    # --- invocations -----------------------------------------------------------------------

    def assign(self, inv: Invocation) -> None:
        """Give the (free) slot an invocation; it starts as soon as the runtime asks for it."""
        self.current = inv
        self._delivered = False
        if inv.deadline_ms is not None:
            self._set_deadline(inv, inv.deadline_ms / 1000 - time.time())
        waiter = self._waiter
        if waiter is not None and not waiter.abandoned:
            self._waiter = None
            self._deliver(inv, waiter)
            return
        if inv.deadline_ms is None:
            self._set_deadline(inv, self._config.timeout_s + INIT_GRACE_S)
        self._await_runtime()

    def _await_runtime(self) -> None:
        """An invocation waits for the runtime's /next: start a runtime if there is none."""
        if self._proc is None and not self._stopping:
            self.spawn()

    def _set_deadline(self, inv: Invocation, delay: float) -> None:
        """Time the invocation out after ``delay`` seconds. One timer per slot, not one per
        invocation: it is left running when an invocation completes, and when it fires early
        (for an invocation since completed) it moves on to the current one's deadline. A fast
        invocation then costs no timer at all."""
        inv.deadline = self._loop.time() + max(delay, 0.0)
        if self._timer_at > inv.deadline:
            self._arm(inv.deadline)

    def _arm(self, when: float) -> None:
        """(Re)arm the slot's timer for loop time ``when``. The armed time is kept here, not
        read back with ``TimerHandle.when()``: for a delay that rounds to 0 ms, uvloop (whose
        clock counts whole milliseconds, and which fires timers up to 0.5 ms early) returns a
        plain ``Handle``. At least 1 ms ahead, a re-armed timer cannot spin either."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(max(when, self._loop.time() + 0.001), self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        inv = self.current
        if inv is None:
            return
        if inv.deadline > self._loop.time():
            self._arm(inv.deadline)
            return
        self._on_timeout(inv)

    def _deliver(self, inv: Invocation, runtime: Connection) -> None:
        """Answer the runtime's /next with the invocation; the bookkeeping that the runtime
        does not need comes after the answer."""
        if inv.deadline_ms is None:
            inv.deadline_ms = int((time.time() + self._config.timeout_s) * 1000)
            self._set_deadline(inv, self._config.timeout_s)
        self._delivered = True
        runtime.respond(inv.next_response())
        inv.started = time.perf_counter()
        self._peak_kb = self._idle_kb
        self._sample_soon()
        self._log(inv, logs.start_line(inv.request_id, self._config.version), hold=True)

    def next_invocation(self, runtime: Connection) -> None:
        """GET /next: answer with the assigned invocation, or hold the request until one."""
        if not self._initialized:
            self._initialized = True
            self.settled = True
            self._init_ms = (time.perf_counter() - self._init_started()) * 1000
            if self._memory is not None:
                self._idle_kb = self._memory.peak_kb()
        inv = self.current
        if inv is not None and not self._delivered:
            self._deliver(inv, runtime)
            return
        if self._waiter is not None and self._waiter is not runtime:
            self._waiter.close()  # a newer /next supersedes an abandoned one
        self._waiter = runtime

    def _init_started(self) -> float:
        """perf_counter() when the init that just finished began."""
        return self._spawned_at

    def _running(self, request_id: str) -> Invocation | None:
        inv = self.current
        if inv is None or not self._delivered or inv.request_id != request_id:
            return None
        return inv

    def post_response(self, request_id: str, request: Request, runtime: Connection) -> None:
        """POST /response; answers the runtime itself (see ``_finish``)."""
        inv = self._running(request_id)
        if inv is None:
            runtime.respond(_INVALID_ID)
        elif request.too_large:
            status = "Status: error\tError Type: Function.ResponseSizeTooLarge"
            self._finish(inv, errors.RESPONSE_TOO_LARGE, True, status, ack=(runtime, _TOO_LARGE))
        else:
            self._finish(inv, request.body, False, ack=(runtime, _ACCEPTED))

    def post_error(self, request_id: str, request: Request, runtime: Connection) -> None:
        inv = self._running(request_id)
        if inv is None:
            runtime.respond(_INVALID_ID)
        else:
            self._finish(inv, _error_body(request), True, ack=(runtime, _ACCEPTED))

    def post_init_error(self, request: Request) -> Response:
        if self._initialized:
            return _INVALID_STATE
        self.settled = True
        self._doomed = True
        self._expect_exit()
        inv = self.current
        if inv is not None:
            error_type = _error_type(request)
            status = f"Status: error\tError Type: {error_type}"
            self._finish(inv, _error_body(request), True, status)
        return _ACCEPTED

    def _expect_exit(self) -> None:
        """The runtime reported an init error: it exits by itself, or is killed soon."""
        proc = self._proc
        if proc is not None:
            self._loop.call_later(INIT_ERROR_EXIT_GRACE_S, self._kill_if_current, proc)

    def _kill_if_current(self, proc: subprocess.Popen[bytes]) -> None:
        if self._proc is proc:
            procs.kill_group(proc.pid)

    def _on_timeout(self, inv: Invocation) -> None:
        if self.current is not inv:
            return
        peak_kb = None
        if self._memory is not None:
            peak_kb = self._memory.peak_kb()
        self._kill_on_timeout()
        timeout = self._config.timeout_s
        line = f"{logs.timestamp()} {inv.request_id} Task timed out after {timeout:.2f} seconds\n"
        self._start_late(inv)
        self._log(inv, line.encode())
        self._finish(
            inv, errors.timed_out(inv.request_id, timeout), True, "Status: timeout", peak_kb
        )

    def _start_late(self, inv: Invocation) -> None:
        """START for an invocation that failed before the runtime took it (cold start)."""
        if not self._delivered and not inv.started:
            inv.started = time.perf_counter()
            self._log(inv, logs.start_line(inv.request_id, self._config.version), hold=True)

    def _kill_on_timeout(self) -> None:
        self._kill_runtime()

    def tick(self) -> None:
        """Periodic: write a held START line; sample the peak RSS of a running invocation
        (evidence for OOM detection)."""
        self.flush_log()
        if self._delivered and self._memory is not None:
            self._peak_kb = max(self._peak_kb, self._memory.peak_kb())

    def _finish(
        self,
        inv: Invocation,
        body: bytes,
        function_error: bool,
        status: str | None = None,
        peak_kb: int | None = None,
        *,
        ack: tuple[Connection, Response] | None = None,
    ) -> None:
        """Complete the current invocation and free the slot; ``ack`` is the runtime's
        request that completed it, and its answer."""
        self._start_late(inv)
        self.current = None
        self._delivered = False
        duration_ms = (time.perf_counter() - inv.started) * 1000
        init_ms, self._init_ms = self._init_ms, None
        if inv.tail is not None:  # the log result holds the output and END/REPORT
            self._wrap_up(inv, duration_ms, init_ms, status, peak_kb)
            inv.on_complete(inv, body, function_error)
            if ack is not None:
                ack[0].respond(ack[1])
            return
        # Answer first, the caller and then the runtime (so that it asks for the next
        # event): the output, /proc reads and log lines are on neither's path.
        inv.on_complete(inv, body, function_error)
        if ack is not None:
            ack[0].respond(ack[1])
        self._wrap_up(inv, duration_ms, init_ms, status, peak_kb)

    def _wrap_up(
        self,
        inv: Invocation,
        duration_ms: float,
        init_ms: float | None,
        status: str | None,
        peak_kb: int | None,
    ) -> None:
        """The invocation's last output, then its END and REPORT lines."""
        self._drain_output(inv)
        self._echo.flush()
        self._report(inv, duration_ms, init_ms, status, peak_kb)

    def _report(
        self,
        inv: Invocation,
        duration_ms: float,
        init_ms: float | None,
        status: str | None,
        peak_kb: int | None,
    ) -> None:
        if peak_kb is None:
            peak_kb = 0 if self._memory is None else self._memory.peak_kb(reset=True)
        max_used_mb = (peak_kb + 1023) // 1024
        self._log(
            inv,
            logs.end_line(inv.request_id)
            + logs.report_line(
                inv.request_id,
                duration_ms=duration_ms,
                memory_mb=self._config.memory_mb,
                max_used_mb=max_used_mb,
                init_ms=init_ms,
                status=status,
            ),
            hold=True,
        )


def _error_type(request: Request) -> str:
    return request.headers.get("lambda-runtime-function-error-type") or "Runtime.Unknown"


def _error_body(request: Request) -> bytes:
    """The runtime's error document, as Lambda returns it; synthesized if it sent none."""
    if request.body.strip():
        return request.body
    return errors.function_error(_error_type(request), "")
