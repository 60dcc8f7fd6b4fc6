"""The agent's event loop: uvloop when the image has it, else asyncio's own.

Every invocation wakes the agent three times (the invoke request, the runtime's /response,
its next /next). asyncio's pure-Python loop costs about 25 µs more per wake-up than uvloop's
C loop (measured with ``bench/agent_overhead.py``), so the runtime images ship uvloop next to
the agent. ``KUBELAMBDA_AGENT_LOOP=asyncio`` forces the standard loop (to compare, or should
uvloop misbehave); the agent works the same on both.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

LOOP_ENV = "KUBELAMBDA_AGENT_LOOP"

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    if os.environ.get(LOOP_ENV, "uvloop") != "asyncio":
        try:
            import uvloop  # noqa: PLC0415 (optional: absent, the standard loop serves)
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the agent's loop."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


def on_child_exit(callback: Callable[[], None]) -> None:
    """Call ``callback`` on the running loop whenever a child process changes state.

    uvloop refuses a SIGCHLD handler (it keeps the signal for the children it spawns itself;
    the agent spawns with ``subprocess`` and reaps them itself): there, a plain signal
    handler hands the call to the loop, which wakes on the signal through its wake-up fd.
    """
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGCHLD, callback)
    except RuntimeError:
        signal.signal(signal.SIGCHLD, lambda _sig, _frame: loop.call_soon_threadsafe(callback))
