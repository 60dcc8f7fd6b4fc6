"""In-memory stand-ins for the cluster and the platform's HTTP services."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubelambda.cli.http import Body, HttpResponse, Upload
from kubelambda.cli.kube import Kind
from kubelambda.cli.output import Format
from kubelambda.cli.platform import Platform, PlatformSettings
from kubelambda.cli.session import Session


@dataclass
class Call:
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]


class FakeHttp:
    """Answers from a handler (method, path) -> HttpResponse; records the calls."""

    def __init__(self, handler: Callable[[str, str], HttpResponse], description: str = "fake"):
        self.handler = handler
        self.description = description
        self.calls: list[Call] = []

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Body = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> HttpResponse:
        data = b"".join(body) if isinstance(body, Upload) else body
        self.calls.append(Call(method, path, data, dict(headers or {})))
        return self.handler(method, path)


def reply(status: int, body: bytes = b"", **headers: str) -> HttpResponse:
    return HttpResponse(status, {k.replace("_", "-").lower(): v for k, v in headers.items()}, body)


@dataclass
class FakeKube:
    """Objects by (kind, namespace, name); ``on_get`` lets a test change them as time goes."""

    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    secrets: dict[tuple[str, str, str], str] = field(default_factory=dict)
    services: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pod_list: list[dict[str, Any]] = field(default_factory=list)
    logs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    http: dict[str, FakeHttp] = field(default_factory=dict)
    applied: list[dict[str, Any]] = field(default_factory=list)
    patches: list[dict[str, Any]] = field(default_factory=list)
    on_get: Callable[[dict[str, Any]], None] | None = None

    def put(self, kind: Kind, namespace: str, body: dict[str, Any]) -> None:
        body = copy.deepcopy(body)
        body["metadata"]["namespace"] = namespace
        self.objects[(kind.kind, namespace, body["metadata"]["name"])] = body

    def get(self, kind: Kind, name: str, namespace: str) -> dict[str, Any] | None:
        body = self.objects.get((kind.kind, namespace, name))
        if body is not None and self.on_get is not None:
            self.on_get(body)
        return copy.deepcopy(body)

    def list_objects(self, kind: Kind, namespace: str) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(body)
            for (k, ns, _), body in sorted(self.objects.items())
            if k == kind.kind and ns == namespace
        ]

    def apply(self, kind: Kind, body: Mapping[str, Any], namespace: str) -> dict[str, Any]:
        self.applied.append(copy.deepcopy(dict(body)))
        key = (kind.kind, namespace, body["metadata"]["name"])
        previous = self.objects.get(key, {})
        stored = copy.deepcopy(dict(body))
        generation = previous.get("metadata", {}).get("generation", 0) + 1
        stored["metadata"] = {
            **stored["metadata"],
            "namespace": namespace,
            "generation": generation,
        }
        if "status" in previous:
            stored["status"] = previous["status"]
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def merge_patch(
        self, kind: Kind, name: str, namespace: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        self.patches.append(copy.deepcopy(dict(patch)))
        body = self.objects[(kind.kind, namespace, name)]
        body["spec"].update(patch.get("spec", {}))
        body["metadata"]["generation"] = body["metadata"].get("generation", 1) + 1
        return copy.deepcopy(body)

    def delete(self, kind: Kind, name: str, namespace: str) -> bool:
        return self.objects.pop((kind.kind, namespace, name), None) is not None

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.last_selector = selector
        return copy.deepcopy(self.pod_list)

    def pod_log(
        self,
        namespace: str,
        pod: str,
        container: str,
        *,
        follow: bool,
        since_seconds: int | None,
        tail_lines: int | None,
    ) -> Iterator[bytes]:
        data = self.logs.get((pod, container), b"")
        yield from (data[i : i + 5] for i in range(0, len(data), 5))

    def service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.services.get((namespace, name))

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        return self.secrets.get((namespace, name, key))

    def service_proxy(self, namespace: str, service: str, port: str, description: str) -> FakeHttp:
        return self.http[service]

    def port_forward(self, namespace: str, service: str, port: str, description: str) -> FakeHttp:
        return self.http[service]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def make_session(
    kube: FakeKube,
    namespace: str = "team",
    output: Format | None = None,
    stdin: bytes = b"",
    settings: PlatformSettings | None = None,
) -> Session:
    clock = FakeClock()
    return Session(
        kube=kube,
        platform=Platform(kube, settings or PlatformSettings()),
        namespace=namespace,
        stdout=io.StringIO(),
        stderr=io.StringIO(),
        stdin=io.BytesIO(stdin),
        output=output,
        monotonic=clock.monotonic,
        sleep=clock.sleep,
    )


def out(session: Session) -> str:
    assert isinstance(session.stdout, io.StringIO)
    return session.stdout.getvalue()


def err(session: Session) -> str:
    assert isinstance(session.stderr, io.StringIO)
    return session.stderr.getvalue()
