"""The Kubernetes API, as the commands use it; the only module that calls the kubernetes client.

Every failure the client can raise for an expected reason (no kubeconfig, API server down,
forbidden, not found) leaves here as a ``CliError`` with a one-line message.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.stream import portforward

from kubelambda.api import GROUP, VERSION
from kubelambda.cli.errors import CliError, ExitCode, NotFound, UsageError
from kubelambda.cli.http import ConnectionHttp, Http, ServiceProxyHttp

FIELD_MANAGER = "kubelambda-cli"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
LOG_CHUNK = 16 * 1024


@dataclass(frozen=True)
class Kind:
    """A kubelambda.io custom resource."""

    kind: str
    plural: str


FUNCTION = Kind("Function", "functions")
ALIAS = Kind("Alias", "aliases")
API_ROUTE = Kind("ApiRoute", "apiroutes")


class Kube(Protocol):
    """What the commands need from the cluster (unit tests pass a fake)."""

    def get(self, kind: Kind, name: str, namespace: str) -> dict[str, Any] | None: ...

    def list_objects(self, kind: Kind, namespace: str) -> list[dict[str, Any]]: ...

    def apply(self, kind: Kind, body: Mapping[str, Any], namespace: str) -> dict[str, Any]: ...

    def merge_patch(
        self, kind: Kind, name: str, namespace: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    def delete(self, kind: Kind, name: str, namespace: str) -> bool: ...

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...

    def pod_log(
        self,
        namespace: str,
        pod: str,
        container: str,
        *,
        follow: bool,
        since_seconds: int | None,
        tail_lines: int | None,
    ) -> Iterator[bytes]: ...

    def service(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def secret_value(self, namespace: str, name: str, key: str) -> str | None: ...

    def service_proxy(self, namespace: str, service: str, port: str, description: str) -> Http: ...

    def port_forward(self, namespace: str, service: str, port: str, description: str) -> Http: ...


def default_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the kubeconfig's (current) context; in a pod its own; else default."""
    try:
        contexts, current = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=kubeconfig
        )
    except (ConfigException, OSError):
        if SERVICE_ACCOUNT_NAMESPACE.exists():
            return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        return "default"
    chosen = next((c for c in contexts if c["name"] == context), current) if context else current
    return str((chosen or {}).get("context", {}).get("namespace") or "default")


def api_error(error: ApiException, what: str) -> CliError:
    """A one-line CliError for a failed API call about ``what``."""
    try:
        message = str(json.loads(error.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        message = str(error.reason or error.status)
    if error.status == 404:
        return NotFound(f"{what} not found")
    if error.status == 422:
        return UsageError(f"{what} is invalid: {message}")
    if error.status in (401, 403):
        return CliError(f"{what}: not allowed: {message}")
    return CliError(f"{what}: {message}")


class KubeClient:
    """The cluster of the kubeconfig (``--kubeconfig``, ``KUBECONFIG``, ``~/.kube/config``), or
    the pod's service account inside a cluster."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        configuration = client.Configuration()
        try:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        except (ConfigException, OSError) as error:
            try:
                config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
            except ConfigException:
                raise CliError(f"no usable kubeconfig: {error}") from None
        self.api_client = client.ApiClient(configuration)
        self.host = str(configuration.host)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)

    @contextlib.contextmanager
    def calling(self, what: str) -> Iterator[None]:
        try:
            yield
        except ApiException as error:
            raise api_error(error, what) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            reason = getattr(error, "reason", None) or error
            raise CliError(
                f"cannot reach the Kubernetes API server at {self.host}: {reason}"
            ) from None

    @staticmethod
    def decoded(response: Any) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(response.data)
        return body

    def get(self, kind: Kind, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            with self.calling(f"{kind.kind} {namespace}/{name}"):
                return self.decoded(
                    self.custom.get_namespaced_custom_object(
                        GROUP, VERSION, namespace, kind.plural, name, _preload_content=False
                    )
                )
        except NotFound:
            return None

    def list_objects(self, kind: Kind, namespace: str) -> list[dict[str, Any]]:
        try:
            with self.calling(f"{kind.plural} in namespace {namespace}"):
                answer = self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, kind.plural, _preload_content=False
                )
        except NotFound:
            # Listing answers 404 only when the resource type itself is unknown.
            raise CliError(
                f"the cluster does not know {kind.plural}.{GROUP}: is kubelambda installed?"
            ) from None
        items: list[dict[str, Any]] = self.decoded(answer)["items"]
        return sorted(items, key=lambda item: str(item["metadata"]["name"]))

    def apply(self, kind: Kind, body: Mapping[str, Any], namespace: str) -> dict[str, Any]:
        """Server-side apply as ``kubelambda-cli``: fields it set before and omits now go."""
        name = str(body["metadata"]["name"])
        with self.calling(f"{kind.kind} {namespace}/{name}"):
            return self.decoded(
                self.custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    kind.plural,
                    name,
                    dict(body),
                    field_manager=FIELD_MANAGER,
                    force=True,
                    _content_type="application/apply-patch+yaml",
                    _preload_content=False,
                )
            )

    def merge_patch(
        self, kind: Kind, name: str, namespace: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        with self.calling(f"{kind.kind} {namespace}/{name}"):
            return self.decoded(
                self.custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    kind.plural,
                    name,
                    dict(patch),
                    field_manager=FIELD_MANAGER,
                    _content_type="application/merge-patch+json",
                    _preload_content=False,
                )
            )

    def delete(self, kind: Kind, name: str, namespace: str) -> bool:
        try:
            with self.calling(f"{kind.kind} {namespace}/{name}"):
                self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, kind.plural, name, _preload_content=False
                )
        except NotFound:
            return False
        return True

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        with self.calling(f"pods in namespace {namespace}"):
            answer = self.core.list_namespaced_pod(
                namespace, label_selector=selector, _preload_content=False
            )
        items: list[dict[str, Any]] = self.decoded(answer)["items"]
        return sorted(items, key=lambda pod: str(pod["metadata"]["name"]))

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
        """The log's bytes as they come; ends with the stream (or the pod)."""
        options: dict[str, Any] = {"container": container, "follow": follow}
        if since_seconds is not None:
            options["since_seconds"] = since_seconds
        if tail_lines is not None:
            options["tail_lines"] = tail_lines
        with self.calling(f"logs of pod {namespace}/{pod}"):
            # A urllib3 response with _preload_content=False, whatever the signature says.
            response: Any = self.core.read_namespaced_pod_log(
                pod, namespace, _preload_content=False, **options
            )
            try:
                yield from response.stream(LOG_CHUNK)
            finally:
                response.release_conn()

    def service(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            with self.calling(f"Service {namespace}/{name}"):
                return self.decoded(
                    self.core.read_namespaced_service(name, namespace, _preload_content=False)
                )
        except NotFound:
            return None

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        try:
            with self.calling(f"Secret {namespace}/{name}"):
                secret = self.decoded(
                    self.core.read_namespaced_secret(name, namespace, _preload_content=False)
                )
        except NotFound:
            return None
        encoded = (secret.get("data") or {}).get(key)
        if encoded is None:
            return None
        return base64.b64decode(encoded).decode()

    def auth_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        self.api_client.update_params_for_auth(headers, [], ["BearerToken"], "", "GET", None)
        return headers

    def service_proxy(self, namespace: str, service: str, port: str, description: str) -> Http:
        base = f"{self.host}/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy"
        return ServiceProxyHttp(
            self.api_client.rest_client.pool_manager,
            base,
            self.auth_headers,
            f"{description} (Service {namespace}/{service} through the API server)",
        )

    def port_forward(self, namespace: str, service: str, port: str, description: str) -> Http:
        where = f"{description} (Service {namespace}/{service})"
        pod, pod_port = self.ready_backend(namespace, service, port, where)

        def connect(timeout: float) -> http.client.HTTPConnection:
            with self.calling(f"port-forward to pod {namespace}/{pod}"):
                forward = portforward(
                    self.core.connect_get_namespaced_pod_portforward,
                    pod,
                    namespace,
                    ports=str(pod_port),
                )
            return ForwardedConnection(forward, pod_port, timeout)

        return ConnectionHttp(connect, "", f"{where} through a port-forward to pod {pod}")

    def ready_backend(self, namespace: str, service: str, port: str, where: str) -> tuple[str, int]:
        """A ready pod behind the Service and the container port its ``port`` targets."""
        body = self.service(namespace, service)
        if body is None:
            raise CliError(f"{where}: Service not found (is the platform installed there?)")
        spec = body["spec"]
        service_port = next((p for p in spec.get("ports", []) if p.get("name") == port), None)
        if service_port is None:
            raise CliError(f"{where}: the Service has no port named {port}")
        selector = ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items())
        target = service_port.get("targetPort", service_port["port"])
        for pod in self.pods(namespace, selector):
            conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            if conditions.get("Ready") != "True" or pod["metadata"].get("deletionTimestamp"):
                continue
            if isinstance(target, int):
                return pod["metadata"]["name"], target
            for container in pod["spec"]["containers"]:
                for container_port in container.get("ports", []):
                    if container_port.get("name") == target:
                        return pod["metadata"]["name"], int(container_port["containerPort"])
        raise CliError(f"{where}: no ready pod", ExitCode.FAILED)


class ForwardedConnection(http.client.HTTPConnection):
    """An HTTP connection over a port-forward websocket that is already open."""

    def __init__(self, forward: Any, port: int, timeout: float) -> None:
        super().__init__("localhost", port, timeout=timeout)
        self.forward = forward
        sock: socket.socket = forward.socket(port)
        sock.settimeout(timeout)
        self.sock = sock

    def connect(self) -> None:
        """Already connected: http.client calls this only once the socket is closed."""
        raise OSError("the port-forward connection is closed")

    def close(self) -> None:
        super().close()
        self.forward.close()
