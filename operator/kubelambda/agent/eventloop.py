"""The agent's event loop: uvloop when the image has it, else asyncio's own.

Every invocation wakes the agent at least twice (the invoke request; the runtime's result,
with its next /next pipelined behind it by kubelambda's own runtimes). asyncio's pure-Python
loop costs about 25 µs more per wake-up than uvloop's C loop (measured with
``bench/agent_overhead.py``), so the runtime images ship uvloop next to the agent.
``KUBELAMBDA_AGENT_LOOP=asyncio`` forces the standard loop (to compare, or should uvloop
misbehave); the agent works the same on both.
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
    """uvloop's if importable and not declined, else asyncio's (``loop_name`` says which)."""
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


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """For the start-up line: which loop the agent ended up on."""
    return type(loop).__module__.split(".", 1)[0]


def on_child_exit(callback: Callable[[], None]) -> None:
    """Call ``callback`` on the running loop whenever a child process changes state.

    uvloop refuses a SIGCHLD handler (it keeps the signal for the children it spawns itself;
    the agent spawns with ``subprocess`` and reaps them itself, so it must never use
    ``loop.subprocess_exec``, whose libuv handler would take SIGCHLD over): there, a plain
    signal handler hands the call to the loop, which wakes on the signal through its wake-up
    fd. After the loop closed (shutdown), such a signal is ignored.
    """
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGCHLD, callback)
    except RuntimeError:

        def handler(_sig: int, _frame: object) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(callback)

        signal.signal(signal.SIGCHLD, handler)
        signal.siginterrupt(signal.SIGCHLD, False)  # as add_signal_handler: restart syscalls
