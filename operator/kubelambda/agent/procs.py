"""Process bookkeeping from /proc and cgroups: peak memory, OOM evidence, child reaping.

All reads are best effort: a process may vanish between two reads, and some files are
missing on older kernels or sandboxed nodes; then the caller gets 0 / nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable

_CGROUP_OOM_FILES = (
    ("/sys/fs/cgroup/memory.events", b"oom_kill "),  # cgroup v2
    ("/sys/fs/cgroup/memory/memory.oom_control", b"oom_kill "),  # cgroup v1
)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _status_kb(status: bytes, field: bytes) -> int:
    start = status.find(field)
    if start < 0:
        return 0
    return int(status[start + len(field) : status.index(b"kB", start)])


def _open(path: str, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError:
        return -1


def _pread(fd: int) -> bytes:
    try:
        return os.pread(fd, 4096, 0) if fd >= 0 else b""
    except OSError:
        return b""


def _children(pid: int) -> list[int]:
    return [int(c) for c in _read(f"/proc/{pid}/task/{pid}/children").split()]


class MemoryProbe:
    """Peak RSS (VmHWM) of one runtime's process tree, read on every invocation.

    The root's /proc files stay open: re-reading an open procfs file costs a fraction of
    opening it again. Descendants (rare for runtimes) are looked up through
    /proc/<pid>/task/<pid>/children, which needs CONFIG_PROC_CHILDREN; without it only the
    root process is measured.
    """

    def __init__(self, pid: int) -> None:
        self._status = _open(f"/proc/{pid}/status", os.O_RDONLY)
        self._children = _open(f"/proc/{pid}/task/{pid}/children", os.O_RDONLY)
        self._clear_refs = _open(f"/proc/{pid}/clear_refs", os.O_WRONLY)

    def _descendants(self) -> list[int]:
        found = [int(c) for c in _pread(self._children).split()]
        i = 0
        while i < len(found):
            found.extend(_children(found[i]))
            i += 1
        return found

    def peak_kb(self, reset: bool = False) -> int:
        """The tree's peak RSS; with ``reset``, restart accounting for the next invocation."""
        total = _status_kb(_pread(self._status), b"VmHWM:")
        descendants = self._descendants()
        for pid in descendants:
            total += _status_kb(_read(f"/proc/{pid}/status"), b"VmHWM:")
        if reset:
            _write_quietly(self._clear_refs, b"5")
            for pid in descendants:
                fd = _open(f"/proc/{pid}/clear_refs", os.O_WRONLY)
                _write_quietly(fd, b"5")
                _close_quietly(fd)
        return total

    def close(self) -> None:
        for fd in (self._status, self._children, self._clear_refs):
            _close_quietly(fd)


def _write_quietly(fd: int, data: bytes) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.write(fd, data)


def _close_quietly(fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


def prefer_for_oom_kill(pid: int) -> None:
    """Make the kernel OOM killer pick the runtime, never the agent (raising is unprivileged)."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "wb", buffering=0) as f:
            f.write(b"1000")
    except OSError:
        pass


def cgroup_oom_kills() -> int:
    """The container cgroup's OOM-kill counter, or 0 if not readable."""
    for path, key in _CGROUP_OOM_FILES:
        data = _read(path)
        start = data.find(key)
        if start >= 0:
            end = data.find(b"\n", start)
            return int(data[start + len(key) : end if end >= 0 else None])
    return 0


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def describe_exit(code: int) -> str:
    """Go's os.ProcessState wording, as in Lambda's messages: 'exit status 1', 'signal: killed'."""
    if code >= 0:
        return f"exit status {code}"
    try:
        name = signal.strsignal(-code) or f"signal {-code}"
    except ValueError:
        name = f"signal {-code}"
    return f"signal: {name.lower()}"


class Reaper:
    """Reaps every child on SIGCHLD and routes the exit codes of the registered ones.

    The agent is PID 1 in the pod, so it also collects orphans re-parented to it.
    """

    def __init__(self) -> None:
        self._callbacks: dict[int, Callable[[int], None]] = {}

    def watch(self, pid: int, on_exit: Callable[[int], None]) -> None:
        self._callbacks[pid] = on_exit

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            callback = self._callbacks.pop(pid, None)
            if callback is not None:
                callback(os.waitstatus_to_exitcode(status))
