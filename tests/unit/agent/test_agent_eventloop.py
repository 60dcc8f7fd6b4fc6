"""The agent's event loop: uvloop unless KUBELAMBDA_AGENT_LOOP=asyncio, and child exits
reaching the loop on both (uvloop refuses a SIGCHLD handler of its own)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop

from kubelambda.agent import eventloop

OPERATOR = Path(__file__).resolve().parents[3] / "operator"

# Runs in its own process: a SIGCHLD handler must not outlive the check in pytest's process.
CHILD_EXIT = """
import asyncio, os, subprocess
from kubelambda.agent import eventloop

async def main():
    exits = asyncio.Queue()

    def reap():
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            exits.put_nowait(os.waitstatus_to_exitcode(status))

    eventloop.on_child_exit(reap)
    codes = []
    for code in (3, 0):
        subprocess.Popen(["sh", "-c", f"exit {code}"])
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
