"""External mode (``KUBELAMBDA_RUNTIME=external``): the runtime is another container's
entrypoint, e.g. a container-image function running ``python -m awslambdaric app.handler``.

The pod shares its PID namespace (``shareProcessNamespace: true``) and both containers run
as the same UID, so the agent sees the runtime's processes in /proc: every process except
PID 1 (the pause process), the agent and the agent's descendants (``procs.scan_processes``).

- Init: from the agent's start, or the runtime's (re)start as /proc tells it, to the
  runtime's first /next. /healthz is ready after the first /next or /init/error.
- Timeout: ``Sandbox.Timedout`` as for managed runtimes, then every runtime process is
  SIGKILLed. The kubelet restarts the function container; the next invocation waits for the
  restarted runtime's /next, bounded by its own deadline. Repeated kills and crashes incur
  the kubelet's restart back-off (10 s doubling to 5 min), during which invocations time out.
  An invocation that times out before the runtime took it kills nothing, unless the runtime
  has been running for more than ``INIT_GRACE_S`` without asking for work (a hung init).
- Crash: while an invocation runs, /proc is checked every ``CRASH_POLL_S``; when none of the
  runtime's processes is left the invocation answers ``Runtime.ExitError``. The exit status
  is rarely known (the container runtime reaps the process at once): then the message is
  Lambda's "Runtime exited without providing a reason". The function container's cgroup OOM
  counter is not readable from the agent's container, so a kernel OOM kill is reported as
  ``Runtime.OutOfMemory`` only when the exit status (SIGKILL) and the sampled peak RSS show
  it; otherwise as ``Runtime.ExitError``. The agent's own memory cap reports it exactly.
- Memory: Max Memory Used sums VmHWM of the runtime's processes; the memory cap samples
  their RSS while an invocation runs (not during init, when nothing waits for it).
- Logs: the runtime's output goes to its own container's log; the agent's log and the
  ``Tail`` log result hold only START/END/REPORT and the platform's error lines.

Outside a PID namespace (local development without an injected ``KUBELAMBDA_PROC_ROOT``)
"every other process" would be the whole machine: the agent then watches and kills nothing.
"""

from __future__ import annotations

import os
import sys
import time

from kubelambda.agent import procs
from kubelambda.agent.config import AgentConfig
from kubelambda.agent.httpio import Connection, Request, Response
from kubelambda.agent.runtime import INIT_ERROR_EXIT_GRACE_S, INIT_GRACE_S, SAMPLE_S, RuntimeSlot

CRASH_POLL_S = 0.09  # a /proc scan: cheap, but not at the memory cap's rate


class ExternalSlot(RuntimeSlot):
    """The one runtime slot of external mode; the runtime is started by the kubelet."""

    def __init__(self, index: int, config: AgentConfig, reaper: procs.Reaper) -> None:
        super().__init__(index, config, reaper)
        self._processes = procs.RuntimeProcesses(config.proc_root, os.getpid())
        self._watch = not procs.is_host_pid_namespace(config.proc_root)
        self._init_from = time.perf_counter()
        self._generation: int | None = None  # start time of the runtime that initialized
        self._polls = 0
        self._polls_per_check = 1
        if self._watch:
            self._memory = self._processes
            self._sample_s = SAMPLE_S if config.enforce_memory else CRASH_POLL_S
            self._polls_per_check = max(1, round(CRASH_POLL_S / self._sample_s))
        else:
            self._sample_s = None
            print(
                f"kubelambda-agent: {config.proc_root} shows the host's processes, not a pod's:"
                " runtime processes are not watched or killed",
                file=sys.stderr,
                flush=True,
            )

    # --- no process of our own ---------------------------------------------------------------

    def spawn(self) -> None:
        """Nothing to start: the kubelet (re)starts the function container."""

    @property
    def alive(self) -> bool:
        return False  # shutdown waits for nothing: the kubelet stops the function container

    def kill(self) -> None:
        """Shutdown leaves the runtime to the kubelet."""

    def _oom_evidence(self) -> bool:
        return False  # the function container's cgroup is not visible from here

    def _restarting(self) -> None:
        """The runtime is gone; the first /next of its successor ends a new init."""
        self._initialized = False
        self._init_from = time.perf_counter()

    def _kill_runtime(self) -> None:
        if self._watch:
            self._processes.kill()
        self._restarting()

    def _kill_on_timeout(self) -> None:
        if self._delivered or self._init_hung():
            self._kill_runtime()

    def _init_hung(self) -> bool:
        if not self._watch:
            return False
        self._processes.rescan()
        age = self._processes.age_s()
        return age is not None and age > INIT_GRACE_S

    def _expect_exit(self) -> None:
        if self._watch:
            self._processes.rescan()
            self._loop.call_later(INIT_ERROR_EXIT_GRACE_S, procs.kill_all, self._processes.pids)
        self._restarting()

    # --- init --------------------------------------------------------------------------------

    def next_invocation(self, runtime: Connection) -> None:
        self._notice_restart(runtime)
        super().next_invocation(runtime)

    def post_init_error(self, request: Request) -> Response:
        self._notice_restart(None)
        return super().post_init_error(request)

    def _notice_restart(self, caller: Connection | None) -> None:
        """A runtime that crashed while idle in /next is noticed only when its successor
        calls: its held /next was abandoned."""
        waiter = self._waiter
        if (
            self._initialized
            and waiter is not None
            and waiter is not caller
            and waiter.abandoned
            and self._restarted()
        ):
            self._restarting()

    def _restarted(self) -> bool:
        """The runtime that waited in /next hung up and another calls it: a restarted
        runtime, or the same one on a new connection (told apart by process start time)."""
        if not self._watch:
            return True
        self._processes.rescan()
        return self._processes.oldest() != self._generation

    def _init_started(self) -> float:
        if not self._watch:
            return self._init_from
        self._processes.rescan()
        self._generation = self._processes.oldest()
        age = self._processes.age_s()
        if age is None:
            return self._init_from
        return max(self._init_from, time.perf_counter() - age)

    # --- while an invocation runs ------------------------------------------------------------

    def _sampling(self) -> bool:
        return self._delivered

    def _runtime_gone(self) -> bool:
        self._polls += 1
        if self._polls < self._polls_per_check:
            return False
        self._polls = 0
        gone, code = self._processes.exited()
        inv = self.current
        if not gone or inv is None:
            return False
        self._restarting()
        body, status, peak_kb = self._exit_error(inv, code)
        self._finish(inv, body, True, status, peak_kb)
        return True
