"""HTTP to the platform's services: directly by URL, or through the Kubernetes API server.

Two ways through the API server, both with the kubeconfig's credentials and nothing to start
beforehand: its service proxy (``/api/v1/namespaces/N/services/S:P/proxy/...``), used for the
gateway; and a port-forward to one ready pod of the service, used for the code store and the
invoker's admin API, whose bearer tokens travel in ``Authorization``, a header the API server
consumes and strips before proxying.
"""

from __future__ import annotations

import http.client
import json
import sys
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import urllib3

from kubelambda.cli.errors import CliError, WaitTimeout

DEFAULT_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 15.0
UPLOAD_BLOCK = 64 * 1024


class ProgressBar:
    """``[#######.............]  35%  1.2/3.4 MB`` redrawn in place; silent unless a TTY."""

    WIDTH = 30

    def __init__(self, label: str, total: int, stream: TextIO = sys.stderr) -> None:
        self.label = label
        self.total = total
        self.stream = stream
        self.enabled = stream.isatty()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        share = done / self.total if self.total else 1.0
        filled = int(share * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        megabytes = f"{done / 1e6:.1f}/{self.total / 1e6:.1f} MB"
        self.stream.write(f"\r{self.label} [{bar}] {share:4.0%}  {megabytes}")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


class Upload:
    """A request body read in blocks by the HTTP client, reporting how much went out."""

    def __init__(self, data: bytes, progress: Callable[[int], None]) -> None:
        self.data = data
        self.sent = 0
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        size = UPLOAD_BLOCK if size < 0 else min(size, UPLOAD_BLOCK)
        chunk = self.data[self.sent : self.sent + size]
        self.sent += len(chunk)
        self.progress(self.sent)
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read():
            yield chunk


Body = bytes | Upload | None


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    """Lower-case names."""
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise CliError(f"expected JSON, got HTTP {self.status}: {self.text()}") from None

    def text(self, limit: int = 300) -> str:
        text = self.body.decode(errors="replace").strip()
        return text if len(text) <= limit else text[:limit] + "..."

    def message(self) -> str:
        """The error message of a JSON error body (``message``, as all kubelambda services and
        Kubernetes answer), else the body's text."""
        try:
            answer = json.loads(self.body)
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            for key in ("message", "Message", "errorMessage"):
                if isinstance(answer.get(key), str):
                    return str(answer[key])
        return self.text() or f"HTTP {self.status}"


class Http(Protocol):
    description: str
    """What is called and how, for error messages: 'the code store (port-forward to ...)'."""

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Body = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> HttpResponse: ...


def request_headers(body: Body, headers: Mapping[str, str] | None) -> dict[str, str]:
    result = dict(headers or {})
    if isinstance(body, Upload):
        # A known length: http.client would otherwise switch a file-like body to chunked.
        result["Content-Length"] = str(len(body.data))
    return result


class ConnectionHttp:
    """One http.client connection per request: to a URL, or over a port-forward."""

    def __init__(
        self,
        connect: Callable[[float], http.client.HTTPConnection],
        base_path: str,
        description: str,
    ) -> None:
        self.connect = connect
        self.base_path = base_path.rstrip("/")
        self.description = description

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Body = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> HttpResponse:
        connection = self.connect(timeout)
        try:
            connection.request(
                method, self.base_path + path, body=body, headers=request_headers(body, headers)
            )
            response = connection.getresponse()
            data = response.read()
        except TimeoutError:
            raise WaitTimeout(f"{self.description} did not answer within {timeout:g} s") from None
        except (OSError, http.client.HTTPException) as error:
            raise CliError(f"{self.description} failed: {error or type(error).__name__}") from None
        finally:
            connection.close()
        headers_seen = {name.lower(): value for name, value in response.getheaders()}
        return HttpResponse(response.status, headers_seen, data)


def direct_http(url: str, description: str) -> ConnectionHttp:
    """A service reached at ``url`` (``http://host:port[/prefix]``), e.g. through an ingress."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise CliError(f"{description}: {url!r} is not an http(s) URL")
    host, port = parsed.hostname, parsed.port
    https = parsed.scheme == "https"

    def connect(timeout: float) -> http.client.HTTPConnection:
        if https:
            return http.client.HTTPSConnection(host, port, timeout=timeout)
        return http.client.HTTPConnection(host, port, timeout=timeout)

    return ConnectionHttp(connect, parsed.path, f"{description} at {url}")


def api_server_status(response: HttpResponse) -> str | None:
    """The message of a Kubernetes Status answer (e.g. 'no endpoints available for service')."""
    if not (response.header("content-type") or "").startswith("application/json"):
        return None
    try:
        answer = json.loads(response.body)
    except ValueError:
        return None
    if isinstance(answer, dict) and answer.get("kind") == "Status":
        return str(answer.get("message") or answer.get("reason") or "")
    return None


class ServiceProxyHttp:
    """Requests to a Service through the API server's service proxy."""

    def __init__(
        self,
        pool: urllib3.PoolManager,
        base_url: str,
        auth_headers: Callable[[], dict[str, str]],
        description: str,
    ) -> None:
        self.pool = pool
        self.base_url = base_url
        self.auth_headers = auth_headers
        self.description = description

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Body = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> HttpResponse:
        try:
            answer = self.pool.request(
                method,
                self.base_url + path,
                body=body,
                headers={**request_headers(body, headers), **self.auth_headers()},
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=timeout),
                retries=False,
            )
        except urllib3.exceptions.ReadTimeoutError:
            raise WaitTimeout(f"{self.description} did not answer within {timeout:g} s") from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise CliError(f"{self.description} failed: {error}") from None
        response = HttpResponse(
            answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.data
        )
        status = api_server_status(response)
        if status is not None:
            raise CliError(f"{self.description}: {status}")
        return response
