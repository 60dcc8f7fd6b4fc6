"""Process bookkeeping from /proc and cgroups: memory, OOM evidence, child reaping, and the
processes of a runtime the agent did not start (external mode).

All reads are best effort: a process may vanish between two reads, and some files are
missing on older kernels or sandboxed nodes; then the caller gets 0 / nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol

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


_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _statm_kb(statm: bytes) -> int:
    """Resident set (VmRSS) from statm's second field. Like VmRSS it counts mapped pages
    only: files written to a tmpfs /tmp with write() are page cache, not counted."""
    fields = statm.split(None, 2)
    return int(fields[1]) * _PAGE_KB if len(fields) > 1 else 0


def _children(pid: int) -> list[int]:
    return [int(c) for c in _read(f"/proc/{pid}/task/{pid}/children").split()]


class Probe(Protocol):
    """Memory of a runtime's processes."""

    def peak_kb(self, reset: bool = False) -> int: ...

    def rss_kb(self) -> int: ...

    def close(self) -> None: ...


class MemoryProbe:
    """Memory of one runtime's process tree: peak RSS (VmHWM) read on every invocation,
    current RSS sampled every few milliseconds while an invocation runs (the memory cap).

    The root's /proc files stay open: re-reading an open procfs file costs a fraction of
    opening it again. Descendants (rare for runtimes) are looked up through
    /proc/<pid>/task/<pid>/children, which needs CONFIG_PROC_CHILDREN; without it only the
    root process is measured.
    """

    def __init__(self, pid: int) -> None:
        self._status = _open(f"/proc/{pid}/status", os.O_RDONLY)
        self._statm = _open(f"/proc/{pid}/statm", os.O_RDONLY)
        self._children = _open(f"/proc/{pid}/task/{pid}/children", os.O_RDONLY)
        self._clear_refs = _open(f"/proc/{pid}/clear_refs", os.O_WRONLY)
        # Every file opened: peak_kb reads them straight (it runs after every invocation).
        self._all_open = min(self._status, self._children, self._clear_refs) >= 0

    def _descendants(self, children: bytes | None = None) -> list[int]:
        """``children``: the root's children file, if just read."""
        if children is None:
            children = _pread(self._children)
        found = [int(c) for c in children.split()]
        i = 0
        while i < len(found):
            found.extend(_children(found[i]))
            i += 1
        return found

    def peak_kb(self, reset: bool = False) -> int:
        """The tree's peak RSS; with ``reset``, restart accounting for the next invocation.
        Read after every invocation: the common case (one process) is written out inline."""
        total, children = self._root_peak_kb(reset)
        if not children:
            return total
        descendants = self._descendants(children)
        for pid in descendants:
            total += _status_kb(_read(f"/proc/{pid}/status"), b"VmHWM:")
        if reset:
            for pid in descendants:
                fd = _open(f"/proc/{pid}/clear_refs", os.O_WRONLY)
                _write_quietly(fd, b"5")
                _close_quietly(fd)
        return total

    def _root_peak_kb(self, reset: bool) -> tuple[int, bytes]:
        """The root process's VmHWM and its children file; ``reset`` restarts its VmHWM."""
        if self._all_open:
            try:
                total = _status_kb(os.pread(self._status, 4096, 0), b"VmHWM:")
                children = os.pread(self._children, 4096, 0)
                if reset:
                    os.write(self._clear_refs, b"5")
                return total, children
            except OSError:  # the process is gone: the quiet reads below give 0 / nothing
                pass
        total = _status_kb(_pread(self._status), b"VmHWM:")
        children = _pread(self._children)
        if reset:
            _write_quietly(self._clear_refs, b"5")
        return total, children

    def rss_kb(self) -> int:
        """The tree's resident set now."""
        total = _statm_kb(_pread(self._statm))
        for pid in self._descendants():
            total += _statm_kb(_read(f"/proc/{pid}/statm"))
        return total

    def close(self) -> None:
        for fd in (self._status, self._statm, self._children, self._clear_refs):
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


# --- external mode: the runtime runs in another container of the pod ------------------------


class ProcStat(NamedTuple):
    """The fields of /proc/<pid>/stat the agent uses."""

    state: bytes
    ppid: int
    start_ticks: int  # clock ticks after boot
    exit_code: int  # waitpid status of a zombie; 0 while alive or when not permitted


def read_stat(path: str) -> ProcStat | None:
    data = _read(path)
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    if len(fields) < 20:
        return None
    exit_code = int(fields[49]) if len(fields) > 49 else 0
    return ProcStat(fields[0], int(fields[1]), int(fields[19]), exit_code)


def scan_processes(proc_root: str, agent_pid: int) -> dict[int, ProcStat]:
    """Every process under ``proc_root`` except PID 1 (the pod's pause process), the agent
    and the agent's descendants: in a pod sharing its PID namespace, the function
    container's processes. Zombies are included (their exit status is evidence)."""
    try:
        names = os.listdir(proc_root)
    except OSError:
        return {}
    stats: dict[int, ProcStat] = {}
    for name in names:
        if name.isdigit():
            stat = read_stat(f"{proc_root}/{name}/stat")
            if stat is not None:
                stats[int(name)] = stat
    # pid -> belongs to the runtime. Orphans re-parented to the pause process do.
    verdict = {agent_pid: False, 1: True}

    def belongs(pid: int) -> bool:
        chain = []
        while pid not in verdict:
            chain.append(pid)
            stat = stats.get(pid)
            if stat is None:  # the parent is outside the namespace (ppid 0) or gone
                break
            pid = stat.ppid
        result = verdict.get(pid, True)
        for seen in chain:
            verdict[seen] = result
        return result

    return {pid: stat for pid, stat in stats.items() if pid != 1 and belongs(pid)}


def is_host_pid_namespace(proc_root: str) -> bool:
    """Kernel threads (kthreadd is PID 2) are visible only in the host's PID namespace. There,
    "every other process" would reach far beyond a pod, so external mode kills nothing."""
    stat = read_stat(f"{proc_root}/2/stat")
    return stat is not None and stat.ppid == 0 and _read(f"{proc_root}/2/comm") == b"kthreadd\n"


def _alive(stat: ProcStat) -> bool:
    return stat.state not in (b"Z", b"X")


class _ProcFiles:
    """One process's memory files, kept open between samples."""

    __slots__ = ("clear_refs", "statm", "status")

    def __init__(self, path: str) -> None:
        self.status = _open(f"{path}/status", os.O_RDONLY)
        self.statm = _open(f"{path}/statm", os.O_RDONLY)
        self.clear_refs = _open(f"{path}/clear_refs", os.O_WRONLY)

    def close(self) -> None:
        for fd in (self.status, self.statm, self.clear_refs):
            _close_quietly(fd)


class RuntimeProcesses:
    """The processes of a runtime the agent did not start, found by scanning ``proc_root``
    (see ``scan_processes``). Same memory interface as ``MemoryProbe``; same UID, so their
    /proc files are readable and they can be killed."""

    def __init__(self, proc_root: str, agent_pid: int) -> None:
        self._root = proc_root
        self._agent_pid = agent_pid
        self._files: dict[int, _ProcFiles] = {}
        self._started: dict[int, int] = {}

    @property
    def pids(self) -> list[int]:
        return list(self._files)

    def rescan(self) -> dict[int, ProcStat]:
        """Track the live processes now; returns the whole scan (zombies included)."""
        stats = scan_processes(self._root, self._agent_pid)
        live = {pid for pid, stat in stats.items() if _alive(stat)}
        for pid in [p for p in self._files if p not in live]:
            self._files.pop(pid).close()
            del self._started[pid]
        for pid in live:
            if pid not in self._files:
                self._files[pid] = _ProcFiles(f"{self._root}/{pid}")
                self._started[pid] = stats[pid].start_ticks
        return stats

    def exited(self) -> tuple[bool, int | None]:
        """(every tracked process is gone, exit code of the oldest if it was seen as a zombie).
        The code is rarely seen: the container runtime reaps a container's main process at
        once. Tracks the processes found now."""
        known = sorted(self._started, key=self._started.__getitem__)
        stats = self.rescan()
        if not known:
            return not self._files, None
        if any(pid in self._files for pid in known):
            return False, None
        oldest = stats.get(known[0])
        code = None
        if oldest is not None and not _alive(oldest) and oldest.exit_code:
            code = os.waitstatus_to_exitcode(oldest.exit_code)
        return True, code

    def oldest(self) -> int | None:
        """Start time (clock ticks after boot) of the oldest tracked process: identifies a
        runtime across container restarts."""
        return min(self._started.values(), default=None)

    def age_s(self) -> float | None:
        """Seconds since the oldest tracked process started (10 ms resolution)."""
        oldest = self.oldest()
        if oldest is None:
            return None
        return max(time.clock_gettime(time.CLOCK_BOOTTIME) - oldest / _CLOCK_TICKS, 0.0)

    def kill(self) -> list[int]:
        """SIGKILL every runtime process there is now; returns their pids."""
        self.rescan()
        pids = self.pids
        kill_all(pids)
        return pids

    def rss_kb(self) -> int:
        return sum(_statm_kb(_pread(f.statm)) for f in self._files.values())

    def peak_kb(self, reset: bool = False) -> int:
        total = 0
        for files in self._files.values():
            total += _status_kb(_pread(files.status), b"VmHWM:")
            if reset:
                _write_quietly(files.clear_refs, b"5")
        return total

    def close(self) -> None:
        for files in self._files.values():
            files.close()
        self._files.clear()
        self._started.clear()


def kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
