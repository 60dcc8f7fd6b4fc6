"""aiohttp servers whose every error answer is ``{"message": ...}`` JSON, including those
aiohttp makes up itself: the code store and the invoker's admin API (neither is on the
invocation hot path, which has its own server)."""

from __future__ import annotations

import asyncio

from aiohttp import web

KEEPALIVE_TIMEOUT_S = 75.0  # above the usual proxies' 60 s idle timeout


class JsonErrorHandler(web.RequestHandler):
    """aiohttp's connection handler, but an error answer in text is made ``{"message": ...}``
    JSON, as the handlers' own. aiohttp makes some up itself, in text/plain: for a request it
    cannot parse (400, before any application code runs), for an ``Expect`` it does not know
    (417, before the middlewares), for routing (404, 405) and a handler that crashed (500).
    Every response passes ``finish_response``; no middleware sees them all."""

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if (
            resp.status >= 400
            and isinstance(resp, web.Response)
            and resp.content_type != "application/json"
        ):
            resp = _json_error(resp)
        return await super().finish_response(request, resp, start_time)


def _json_error(response: web.Response) -> web.Response:
    """The JSON version of aiohttp's text error: the first line of its text as the message
    (of a 5xx, the reason alone: no details of a crash)."""
    lines = (response.text or "").splitlines()
    detail = lines[0].removeprefix(f"{response.status}: ").rstrip(": ") if lines else ""
    message = detail if detail and response.status < 500 else response.reason
    headers = {  # the Allow of a 405, say
        name: value
        for name, value in response.headers.items()
        if name.lower() not in ("content-type", "content-length")
    }
    converted = web.json_response(
        {"message": message}, status=response.status, reason=response.reason, headers=headers
    )
    if response.keep_alive is False:  # aiohttp closes after what it could not parse
        converted.force_close()
    return converted


class JsonApiServer:
    """An aiohttp application on a port, its connections handled by ``JsonErrorHandler``."""

    def __init__(self, app: web.Application) -> None:
        self._runner = web.AppRunner(app)
        self._listener: asyncio.Server | None = None

    async def start(self, host: str | None, port: int) -> int:
        """Listen (all interfaces for ``host`` None); returns the port (``port`` 0: any)."""
        await self._runner.setup()
        manager = self._runner.server
        assert manager is not None
        loop = asyncio.get_running_loop()

        def connection() -> JsonErrorHandler:
            return JsonErrorHandler(
                manager,
                loop=loop,
                keepalive_timeout=KEEPALIVE_TIMEOUT_S,
                access_log=None,  # type: ignore[arg-type]  # None is aiohttp's "no access log"
            )

        self._listener = await loop.create_server(connection, host, port, backlog=128)
        return int(self._listener.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, give the requests in flight time to finish, close the rest."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        await self._runner.cleanup()
