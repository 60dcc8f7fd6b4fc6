"""/proc readings: which processes are the runtime's in external mode, and their memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from kubelambda.agent import procs

TICKS = os.sysconf("SC_CLK_TCK")


def stat_line(
    pid: int, comm: str, state: str, ppid: int, *, start: int = 100, code: int = 0
) -> str:
    """A /proc/<pid>/stat line: fields 3..52 after the command name."""
    fields = ["0"] * 50
    fields[0], fields[1], fields[19], fields[49] = state, str(ppid), str(start), str(code)
    return f"{pid} ({comm}) {' '.join(fields)}\n"


def fake_proc(root: Path, entries: dict[int, tuple[str, str, int]]) -> Path:
    """pid -> (comm, state, ppid)."""
    for pid, (comm, state, ppid) in entries.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "stat").write_text(stat_line(pid, comm, state, ppid))
        (root / str(pid) / "comm").write_text(comm + "\n")
    for other in ("self", "stat", "sys"):
        (root / other).mkdir(parents=True, exist_ok=True)
    return root


POD = {
    1: ("pause", "S", 0),
    7: ("python3", "S", 0),  # the agent (its container's entrypoint: parent outside)
    9: ("sh", "S", 7),  # the agent's child ...
    10: ("sleep", "S", 9),  # ... and grandchild
    20: ("python", "S", 0),  # the function container's entrypoint
    21: ("worker", "R", 20),
    22: ("defunct", "Z", 20),
    30: ("a b) (c", "S", 1),  # an orphan of the runtime, re-parented to pause
}


def test_scan_selects_everything_but_pause_and_the_agent_tree(tmp_path):
    root = fake_proc(tmp_path / "proc", POD)
    found = procs.scan_processes(str(root), agent_pid=7)
    assert sorted(found) == [20, 21, 22, 30]
    assert found[22].state == b"Z"
    assert found[30].ppid == 1
    assert found[21].start_ticks == 100


def test_scan_of_a_missing_root_is_empty(tmp_path):
    assert procs.scan_processes(str(tmp_path / "nope"), agent_pid=7) == {}


def test_host_namespace_is_recognized_by_kthreadd(tmp_path):
    pod = fake_proc(tmp_path / "pod", POD)
    assert not procs.is_host_pid_namespace(str(pod))
    host = fake_proc(tmp_path / "host", {1: ("systemd", "S", 0), 2: ("kthreadd", "S", 0)})
    assert procs.is_host_pid_namespace(str(host))
    assert not procs.is_host_pid_namespace(str(tmp_path / "empty"))


def test_runtime_processes_exit_status_and_age(tmp_path):
    root = fake_proc(tmp_path / "proc", POD)
    now_ticks = int(time.clock_gettime(time.CLOCK_BOOTTIME) * TICKS)
    (root / "20" / "stat").write_text(stat_line(20, "python", "S", 0, start=now_ticks - TICKS))
    runtime = procs.RuntimeProcesses(str(root), agent_pid=7)
    assert runtime.exited() == (False, None)
    assert sorted(runtime.pids) == [20, 21, 30]  # zombies are not tracked
    assert runtime.oldest() == 100
    age = runtime.age_s()
    assert age is not None
    assert age > 1  # the oldest process started at tick 100 after boot
    # A process that exits is dropped; the runtime is there while one is left.
    for pid in (21, 30):
        (root / str(pid) / "stat").unlink()
    assert runtime.exited() == (False, None)
    assert runtime.pids == [20]
    runtime_age = runtime.age_s()
    assert runtime_age is not None
    assert 0.9 < runtime_age < 5
    # The last one, seen as a zombie: its waitpid status gives the exit code.
    (root / "20" / "stat").write_text(stat_line(20, "python", "Z", 0, code=1 << 8))
    assert runtime.exited() == (True, 1)
    assert runtime.pids == []
    assert runtime.exited() == (True, None)  # nothing there at all


def test_exit_by_signal_and_unknown_status(tmp_path):
    root = fake_proc(tmp_path / "proc", {20: ("python", "S", 0)})
    runtime = procs.RuntimeProcesses(str(root), agent_pid=7)
    runtime.rescan()
    (root / "20" / "stat").write_text(stat_line(20, "python", "Z", 0, code=9))
    assert runtime.exited() == (True, -9)
    runtime.rescan()
    (root / "20" / "stat").write_text(stat_line(20, "python", "S", 0))
    runtime.rescan()
    (root / "20" / "stat").unlink()  # reaped before the scan saw it
    assert runtime.exited() == (True, None)


def test_memory_of_real_processes(tmp_path):
    code = "import time; data = b'x' * (48 << 20); print('ok', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ok\n"
        probe = procs.MemoryProbe(child.pid)
        assert 48 * 1024 < probe.rss_kb() <= probe.peak_kb()
        probe.close()
        # The same process seen through an injected proc root (a symlink per process).
        root = tmp_path / "proc"
        root.mkdir()
        (root / str(child.pid)).symlink_to(f"/proc/{child.pid}")
        runtime = procs.RuntimeProcesses(str(root), agent_pid=1 << 30)  # not its parent
        runtime.rescan()
        assert runtime.pids == [child.pid]
        assert 48 * 1024 < runtime.rss_kb() <= runtime.peak_kb(reset=True)
        assert runtime.kill() == [child.pid]
        deadline = time.monotonic() + 5
        while not (outcome := runtime.exited())[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert outcome == (True, -9)  # seen as a zombie: not reaped yet
        assert child.wait(timeout=5) == -9
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
