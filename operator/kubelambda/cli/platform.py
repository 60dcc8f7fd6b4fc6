"""Where the platform's services and their tokens are: the Helm release's, or overrides.

The chart names everything after the release (``<release>-gateway``, ``-store``,
``-invoker``) in the release namespace; ``hack/install.sh`` installs release ``kubelambda``
in ``kubelambda-system``. A URL override (flag or environment) reaches a service directly,
e.g. through an ingress; token overrides come from the environment only, so they never show
in a process list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kubelambda.cli.errors import CliError
from kubelambda.cli.http import Http, direct_http
from kubelambda.cli.kube import Kube

DEFAULT_RELEASE = "kubelambda"
DEFAULT_RELEASE_NAMESPACE = "kubelambda-system"
GATEWAY_PORT = "http"
STORE_PORT = "http"
INVOKER_ADMIN_PORT = "admin"
STORE_TOKEN_ENV = "KUBELAMBDA_STORE_TOKEN"
INVOKER_TOKEN_ENV = "KUBELAMBDA_INVOKER_TOKEN"


@dataclass(frozen=True)
class PlatformSettings:
    release: str = DEFAULT_RELEASE
    namespace: str = DEFAULT_RELEASE_NAMESPACE
    gateway_url: str | None = None
    store_url: str | None = None
    invoker_url: str | None = None
    store_token: str | None = None
    invoker_token: str | None = None

    @classmethod
    def resolve(
        cls,
        environ: Mapping[str, str],
        *,
        release: str | None = None,
        namespace: str | None = None,
        gateway_url: str | None = None,
        store_url: str | None = None,
        invoker_url: str | None = None,
    ) -> PlatformSettings:
        """Flags first, then ``KUBELAMBDA_*`` environment variables, then the chart's defaults."""
        return cls(
            release=release or environ.get("KUBELAMBDA_RELEASE") or DEFAULT_RELEASE,
            namespace=namespace
            or environ.get("KUBELAMBDA_RELEASE_NAMESPACE")
            or DEFAULT_RELEASE_NAMESPACE,
            gateway_url=gateway_url or environ.get("KUBELAMBDA_GATEWAY_URL") or None,
            store_url=store_url or environ.get("KUBELAMBDA_STORE_URL") or None,
            invoker_url=invoker_url or environ.get("KUBELAMBDA_INVOKER_URL") or None,
            store_token=environ.get(STORE_TOKEN_ENV) or None,
            invoker_token=environ.get(INVOKER_TOKEN_ENV) or None,
        )


class Platform:
    """The release's services, connected to on first use."""

    def __init__(self, kube: Kube, settings: PlatformSettings) -> None:
        self.kube = kube
        self.settings = settings

    def service_name(self, component: str) -> str:
        return f"{self.settings.release}-{component}"

    def gateway(self) -> Http:
        if self.settings.gateway_url:
            return direct_http(self.settings.gateway_url, "the gateway")
        return self.kube.service_proxy(
            self.settings.namespace, self.service_name("gateway"), GATEWAY_PORT, "the gateway"
        )

    def store(self) -> Http:
        if self.settings.store_url:
            return direct_http(self.settings.store_url, "the code store")
        return self.kube.port_forward(
            self.settings.namespace, self.service_name("store"), STORE_PORT, "the code store"
        )

    def invoker(self) -> Http:
        if self.settings.invoker_url:
            return direct_http(self.settings.invoker_url, "the invoker's admin API")
        return self.kube.port_forward(
            self.settings.namespace,
            self.service_name("invoker"),
            INVOKER_ADMIN_PORT,
            "the invoker's admin API",
        )

    def token(self, component: str, key: str, override: str | None, variable: str) -> str:
        if override:
            return override
        secret = self.service_name(component)
        value = self.kube.secret_value(self.settings.namespace, secret, key)
        if value is None:
            raise CliError(
                f"no {key} in Secret {self.settings.namespace}/{secret}: is kubelambda installed"
                " there (see --release / --release-namespace)? Or set "
                f"{variable}"
            )
        return value

    def store_token(self) -> str:
        return self.token("store", "uploadToken", self.settings.store_token, STORE_TOKEN_ENV)

    def invoker_token(self) -> str:
        return self.token("invoker", "adminToken", self.settings.invoker_token, INVOKER_TOKEN_ENV)

    def gateway_url(self) -> str:
        """The gateway's base URL as callers inside the cluster (or the override) reach it."""
        if self.settings.gateway_url:
            return self.settings.gateway_url.rstrip("/")
        service = self.service_name("gateway")
        body = self.kube.service(self.settings.namespace, service)
        ports = (body or {}).get("spec", {}).get("ports", [])
        port = next((p["port"] for p in ports if p.get("name") == GATEWAY_PORT), 8080)
        return f"http://{service}.{self.settings.namespace}.svc:{port}"
