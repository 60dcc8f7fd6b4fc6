"""Warm pool mode: the agent of a generic pod of a runtime image, waiting to be given a function.

With ``KUBELAMBDA_POOL_TOKEN`` set the agent starts with no function. It serves, on
0.0.0.0:``KUBELAMBDA_INVOKE_PORT`` (default 8080):

``GET /healthz`` - 200 ``{"status":"pool"}`` while waiting, 503 while being specialised (or
when a failed attempt left files it could not remove: the pod is then of no further use).

``POST /v1/specialize`` with ``Authorization: Bearer <KUBELAMBDA_POOL_TOKEN>`` and
``{"env": {name: value}, "unpack": <plan of unpack.run>}``: ``env`` is the function's
environment as a function pod would have it. The agent unpacks the code (in a thread), makes
everything under the plan's ``roots`` read-only, answers 200 ``{"status":"specialized"}``
(and closes the connection), closes this server, and then runs exactly as if it had started
with its own environment overlaid with ``env``: ``main.serve`` binds the same port, and
``/healthz`` turns 200 once the runtime has initialised, when it also announces itself.

Errors, as ``{"errorMessage": ...}``: 401 missing or wrong token; 400 a body that is not
JSON, ``env`` not an object of strings, ``unpack`` not a plan, an environment the agent
cannot start with; 422 the code could not be unpacked (the reason worded for the Function's
status, as the init container's); 409 while being specialised (or, once specialised, on a
connection kept alive across the switch: a new connection reaches the function's endpoint,
which answers this path 404); 413 a body over ``MAX_BODY_BYTES``. After a 400 or 422 the
contents of the plan's roots are removed and the pod is back in the pool.

SIGTERM or SIGINT while waiting in the pool: exit 0 at once (while being specialised: once
the unpack thread has finished).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hmac
import json
import os
import shutil
import signal
import socket
import stat
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubelambda.agent import unpack
from kubelambda.agent.config import (
    POOL_TOKEN_ENV,
    AgentConfig,
    ConfigError,
    _int,
    load_config,
)
from kubelambda.agent.httpio import Connection, Request, Response, json_response
from kubelambda.agent.httpio import serve as serve_http
from kubelambda.agent.unpack import UnpackError

POOL_DIR_ENV = "KUBELAMBDA_POOL_DIR"
SPECIALIZE_PATH = "/v1/specialize"
HEALTH_PATH = "/healthz"
MAX_BODY_BYTES = 16 * 1024 * 1024  # inline code travels in the body
FLUSH_LIMIT_S = 5.0
PORT_RELEASE_LIMIT_S = 2.0
_POLL_S = 0.002  # the switch to the function's server waits on this: keep it short

_WAITING = json_response(200, b'{"status":"pool"}')
_SPECIALIZING = json_response(503, b'{"status":"specializing"}')
_SPECIALIZED = json_response(200, b'{"status":"specialized"}')
_UNUSABLE = json_response(503, b'{"status":"unusable"}')
_NOT_FOUND = json_response(404, b'{"message":"Not Found"}')
_NOT_ALLOWED = json_response(405, b'{"message":"Method Not Allowed"}')


class _State(enum.Enum):
    WAITING = enum.auto()
    SPECIALIZING = enum.auto()
    SPECIALIZED = enum.auto()
    UNUSABLE = enum.auto()


class BadRequest(ValueError):
    """A specialisation request the agent cannot act on: answered 400."""


def _error(status: int, message: str) -> Response:
    return json_response(status, json.dumps({"errorMessage": message}).encode())


def parse_specialization(body: bytes) -> tuple[dict[str, str], dict[str, Any]]:
    """The posted ``(env, unpack plan)``; BadRequest says what is wrong with them."""
    try:
        document = json.loads(body)
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object")
    env, plan = document.get("env"), document.get("unpack")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise BadRequest("env must be an object of strings")
    if not isinstance(plan, dict):
        raise BadRequest("unpack must be an object (an unpack plan)")
    roots, steps = plan.get("roots", []), plan.get("steps")
    # The roots are emptied when a specialisation fails: nothing relative or odd.
    if not isinstance(roots, list) or not all(
        isinstance(r, str) and os.path.isabs(r) for r in roots
    ):
        raise BadRequest("unpack.roots must be a list of absolute paths")
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise BadRequest("unpack.steps must be a list of objects")
    return env, plan


def confine(plan: Mapping[str, Any], pool_dir: str) -> None:
    """A pool pod takes code from zip packages and inline files only, and writes it under its
    pool directory (when one is set): a plan cannot copy the pod's own files, nor write or
    empty anything else."""
    for step in plan["steps"]:
        if not ("zip" in step or "inline" in step):
            raise BadRequest("a pool pod takes zip and inline steps only")
    if not pool_dir:
        return
    base = os.path.realpath(pool_dir) + os.sep
    paths = [*plan.get("roots", []), *(step.get("target") for step in plan["steps"])]
    for path in paths:
        if not isinstance(path, str) or not os.path.realpath(path).startswith(base):
            raise BadRequest(f"{path!r} is not under the pool directory {pool_dir}")


def make_read_only(roots: Iterable[str]) -> None:
    """Function code is read-only, as on Lambda: no write bit on anything under the roots
    (nor on the roots), exec bits kept. Symlinks are skipped (chmod would follow them)."""
    for root in roots:
        for directory, dirnames, filenames in os.walk(root):
            for name in filenames:
                path = os.path.join(directory, name)
                mode = os.lstat(path).st_mode
                if not stat.S_ISLNK(mode):
                    os.chmod(path, stat.S_IMODE(mode) & ~0o222)
            for name in dirnames:
                path = os.path.join(directory, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o555)
        # An emptyDir mount point belongs to root: a pod running as another user cannot
        # change it (what is inside is read-only all the same).
        with contextlib.suppress(FileNotFoundError, PermissionError):
            os.chmod(root, 0o555)


def empty_roots(roots: Iterable[str]) -> None:
    """Remove what a failed specialisation left, keeping the roots (they are mount points)."""
    for root in roots:
        try:
            entries = list(os.scandir(root))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


class PoolEndpoint:
    """The pool pod's HTTP handler and its one specialisation."""

    def __init__(self, environ: Mapping[str, str], token: str) -> None:
        self._base_env = {k: v for k, v in environ.items() if k != POOL_TOKEN_ENV}
        self._expected = f"Bearer {token}".encode()
        self._state = _State.WAITING
        self._task: asyncio.Task[None] | None = None
        self.specialized: asyncio.Future[AgentConfig] = asyncio.get_running_loop().create_future()

    def handle(self, request: Request, conn: Connection) -> None:
        if self._state is _State.SPECIALIZED:
            # Whatever still reaches this server on a kept-alive connection: the client's
            # next request should open a new one, to the function's server.
            request.keep_alive = False
        path = request.target.split("?", 1)[0]
        if path == HEALTH_PATH:
            if request.method != "GET":
                conn.respond(_NOT_ALLOWED)
            else:
                conn.respond(self._health())
        elif path == SPECIALIZE_PATH:
            if request.method != "POST":
                conn.respond(_NOT_ALLOWED)
            else:
                self._specialize(request, conn)
        else:
            conn.respond(_NOT_FOUND)

    def _health(self) -> Response:
        if self._state is _State.WAITING:
            return _WAITING
        return _UNUSABLE if self._state is _State.UNUSABLE else _SPECIALIZING

    def _specialize(self, request: Request, conn: Connection) -> None:
        authorization = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(authorization, self._expected):
            conn.respond(_error(401, "a pool pod is specialised with its pool's token"))
            return
        if self._state is not _State.WAITING:
            conn.respond(_error(409, f"this pod is {self._state.name.lower()}, not in the pool"))
            return
        if request.too_large:
            conn.respond(_error(413, f"the request must be smaller than {MAX_BODY_BYTES} bytes"))
            return
        try:
            env, plan = parse_specialization(request.body)
            confine(plan, self._base_env.get(POOL_DIR_ENV, ""))
            environ = self._base_env | env
            # Checked before anything is downloaded; loaded again once the code is in place
            # (a custom runtime's bootstrap is looked up among the files).
            load_config(environ)
        except ValueError as problem:  # BadRequest, ConfigError
            conn.respond(_error(400, str(problem)))
            return
        self._state = _State.SPECIALIZING
        self._task = asyncio.create_task(self._apply(environ, plan, request, conn))

    async def _apply(
        self,
        environ: Mapping[str, str],
        plan: Mapping[str, Any],
        request: Request,
        conn: Connection,
    ) -> None:
        started = time.monotonic()
        roots = [str(root) for root in plan.get("roots", [])]
        try:
            await asyncio.to_thread(unpack.run, plan)
            config = load_config(environ)
            await asyncio.to_thread(make_read_only, roots)
        except UnpackError as problem:
            failure = _error(422, str(problem))
        except OSError as problem:  # ENOSPC and friends, worded as the init container does
            failure = _error(422, f"unpacking failed: {problem}")
        except ConfigError as problem:
            failure = _error(400, str(problem))
        except (AttributeError, LookupError, TypeError, ValueError) as problem:
            failure = _error(400, f"malformed unpack plan: {problem!r}")
        except Exception as problem:
            # A corrupt zip entry, an unsupported compression...: the attempt must still
            # end, or the pod would stay out of the pool with the request unanswered.
            traceback.print_exc(file=sys.stderr)
            failure = _error(422, f"unpacking failed: {problem!r}")
        else:
            posted = {k: v for k, v in environ.items() if self._base_env.get(k) != v}
            save_specialization(self._base_env, posted)
            self._state = _State.SPECIALIZED
            request.keep_alive = False  # the next request goes to the function's server
            conn.respond(_SPECIALIZED)
            elapsed_ms = (time.monotonic() - started) * 1000
            print(
                f"kubelambda-agent: specialised as {config.function_name}:{config.version}"
                f" in {elapsed_ms:.0f} ms",
                file=sys.stderr,
                flush=True,
            )
            self.specialized.set_result(config)
            return
        try:
            await asyncio.to_thread(empty_roots, roots)
        except OSError:
            traceback.print_exc(file=sys.stderr)
            # Leftovers would count against the next function's budget, or be its code.
            self._state = _State.UNUSABLE
        else:
            self._state = _State.WAITING
        conn.respond(failure)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def _wait_until(condition: Callable[[], bool], limit_s: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not condition() and loop.time() < end:
        await asyncio.sleep(_POLL_S)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        # As asyncio's servers do: a closed connection's TIME_WAIT does not hold the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _state_file(environ: Mapping[str, str]) -> str | None:
    pool_dir = environ.get(POOL_DIR_ENV, "")
    return os.path.join(pool_dir, "state", "specialization.json") if pool_dir else None


def save_specialization(environ: Mapping[str, str], posted: Mapping[str, str]) -> None:
    """Keep the posted environment next to the code (emptyDirs outlive a container): an
    agent restarted in this pod (OOM, crash) comes back as the function, not as a pool pod."""
    path = _state_file(environ)
    if path is not None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as state:
            json.dump(dict(posted), state)


def saved_specialization(environ: Mapping[str, str]) -> dict[str, str] | None:
    path = _state_file(environ)
    if path is None or not os.path.exists(path):
        return None
    with open(path) as state:
        saved: dict[str, str] = json.load(state)
    return saved


async def wait_for_specialization(environ: Mapping[str, str]) -> AgentConfig | None:
    """Serve the pool endpoint until specialised: the function's configuration, with its code
    in place and the port free again; None on SIGTERM or SIGINT. An agent restarted in a pod
    specialised before is that function again at once.

    The signal handlers stay installed when this returns: ``serve`` replaces them before
    the loop runs again, so a signal during the switch is never lost."""
    saved = saved_specialization(environ)
    if saved is not None:
        own = {k: v for k, v in environ.items() if k != POOL_TOKEN_ENV}
        config = load_config(own | saved)
        print(
            f"kubelambda-agent: restarted as {config.function_name}:{config.version}"
            " (specialised before)",
            file=sys.stderr,
            flush=True,
        )
        return config
    port = _int(environ, "KUBELAMBDA_INVOKE_PORT", 8080, 0)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    endpoint = PoolEndpoint(environ, environ[POOL_TOKEN_ENV])
    server = await serve_http(endpoint.handle, "0.0.0.0", port, MAX_BODY_BYTES)
    print(f"kubelambda-agent: in the pool, invoke port {port}", file=sys.stderr, flush=True)
    stopping = asyncio.create_task(stop.wait())
    waiting: set[asyncio.Future[Any]] = {stopping, endpoint.specialized}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not endpoint.specialized.done():
        # An unpack thread still running keeps the process until it ends (the runner
        # joins it); nothing else is waited for.
        endpoint.cancel()
        server.close()
        return None
    await _wait_until(lambda: server.flushed, FLUSH_LIMIT_S)
    server.close()
    await _wait_until(lambda: _port_free(port), PORT_RELEASE_LIMIT_S)
    # Terminated during the switch: the pod is going away, nothing to start.
    return None if stop.is_set() else endpoint.specialized.result()
