"""The agent's event loop: uvloop unless KUBELAMBDA_AGENT_LOOP=asyncio, and child exits
reaching the loop on both (uvloop refuses a SIGCHLD handler of its own)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest
import uvloop

from kubelambda.agent import eventloop
from kubelambda.agent.config import load_config
from kubelambda.agent.httpio import Connection
from kubelambda.agent.procs import Reaper
from kubelambda.agent.runtime import Invocation, RuntimeSlot

OPERATOR = Path(__file__).resolve().parents[3] / "operator"

# Runs in its own process: a SIGCHLD handler must not outlive the check in pytest's process.
CHILD_EXIT = """
import asyncio, subprocess
from kubelambda.agent import eventloop
from kubelambda.agent.procs import Reaper

async def main():
    exits = asyncio.Queue()
    reaper = Reaper()
    eventloop.on_child_exit(reaper.reap)
    codes, children = [], []
    for code in (3, 0):
        # Kept: a collected Popen would reap its own child (as the agent keeps its runtimes').
        children.append(subprocess.Popen(["sh", "-c", f"exit {code}"]))
        reaper.watch(children[-1].pid, exits.put_nowait)
        codes.append(await asyncio.wait_for(exits.get(), 5))
    print(type(asyncio.get_running_loop()).__module__, codes)

eventloop.run(main())
"""


def test_uvloop_by_default(monkeypatch):
    monkeypatch.delenv(eventloop.LOOP_ENV, raising=False)
    loop = eventloop.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_asyncio_on_request(monkeypatch):
    monkeypatch.setenv(eventloop.LOOP_ENV, "asyncio")
    loop = eventloop.new_event_loop()
    try:
        assert not isinstance(loop, uvloop.Loop)
        assert isinstance(loop, asyncio.SelectorEventLoop)
    finally:
        loop.close()


@pytest.mark.parametrize(("choice", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_child_exits_reach_the_loop(choice, module):
    env = dict(os.environ, PYTHONPATH=str(OPERATOR), **{eventloop.LOOP_ENV: choice})
    command = [sys.executable, "-c", CHILD_EXIT]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(None, 1)[0].startswith(module)
    assert done.stdout.split(None, 1)[1].strip() == "[3, 0]"


def test_deadline_timer_on_uvloop_below_a_millisecond(tmp_path, monkeypatch):
    monkeypatch.delenv(eventloop.LOOP_ENV, raising=False)
    # uvloop's clock counts whole milliseconds: for a delay that rounds to 0 ms its call_at
    # returns a plain Handle (no when()), and it fires timers up to 0.5 ms early. The slot's
    # one deadline timer must neither trip over the first nor spin on the second.
    config = load_config(
        {
            "AWS_LAMBDA_FUNCTION_NAME": "fn",
            "KUBELAMBDA_RUNTIME": "provided",
            "KUBELAMBDA_TASK_ROOT": str(tmp_path),
        }
    )
    timed_out: list[str] = []
    fired: list[float] = []

    async def main() -> None:
        slot = RuntimeSlot(0, config, Reaper())
        monkeypatch.setattr(slot, "_on_timeout", lambda inv: timed_out.append(inv.request_id))
        on_deadline = slot._on_deadline

        def count_and_fire() -> None:
            fired.append(asyncio.get_running_loop().time())
            on_deadline()

        monkeypatch.setattr(slot, "_on_deadline", count_and_fire)
        soon, later = invocation("soon"), invocation("later")
        slot._set_deadline(soon, 0.0004)
        slot._set_deadline(later, 1.0)  # compares with the armed time, not the handle's
        slot.current = soon
        await asyncio.sleep(0.05)

    eventloop.run(main())
    assert timed_out == ["soon"]
    assert len(fired) <= 3


def invocation(request_id: str) -> Invocation:
    def completed(inv: Invocation, body: bytes, error: bool) -> None:
        raise AssertionError("not answered in this test")

    return Invocation(
        request_id, b"{}", "arn", "trace", responder=cast(Connection, None), on_complete=completed
    )
