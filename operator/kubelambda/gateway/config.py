"""Gateway settings, read once from the environment (see the package docstring)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kubelambda.envconfig import ConfigError, env_int, env_number

# ConfigError is exported with load_config, which raises it, so callers import both from here.
__all__ = ["ConfigError", "GatewayConfig", "load_config"]

SIGV4_MODES = ("off", "namespaces", "required")


@dataclass(frozen=True)
class GatewayConfig:
    port: int = 8080
    metrics_port: int = 9090
    default_namespace: str = "default"
    default_api: str = "default"  # the HTTP API served at the root, in default_namespace
    api_domain: str | None = None  # "<api>.<namespace>.<api_domain>" hosts address an HTTP API
    region: str = "us-east-1"
    max_concurrency: int = 1000
    queue_length: int = 100
    cold_start_s: float = 30.0
    timeout_grace_s: float = 2.0
    max_connections: int = 10000
    drain_delay_s: float = 0.0
    kubeconfig: str | None = None
    autoscaler_url: str | None = None  # the operator's autoscaler; None: no demand reports
    sigv4: str = "namespaces"  # off | namespaces | required (see access.py)
    internal_token: str = ""  # what the platform's own callers present instead of a signature


def load_config(env: Mapping[str, str], kubeconfig: str | None = None) -> GatewayConfig:
    prefix = "KUBELAMBDA_GATEWAY_"
    return GatewayConfig(
        port=env_int(env, prefix + "PORT", 8080, 0),
        metrics_port=env_int(env, prefix + "METRICS_PORT", 9090, 0),
        default_namespace=env.get(prefix + "DEFAULT_NAMESPACE") or "default",
        default_api=env.get(prefix + "DEFAULT_API") or "default",
        api_domain=(env.get(prefix + "API_DOMAIN") or "").strip(".").lower() or None,
        region=env.get("AWS_REGION") or "us-east-1",
        max_concurrency=env_int(env, prefix + "MAX_CONCURRENCY", 1000, 1),
        queue_length=env_int(env, prefix + "QUEUE_LENGTH", 100, 0),
        cold_start_s=env_number(env, prefix + "COLD_START_SECONDS", 30.0, 0.0),
        timeout_grace_s=env_number(env, prefix + "TIMEOUT_GRACE_SECONDS", 2.0, 0.0),
        max_connections=env_int(env, prefix + "MAX_CONNECTIONS", 10000, 1),
        drain_delay_s=env_number(env, prefix + "DRAIN_DELAY_SECONDS", 0.0, 0.0),
        kubeconfig=kubeconfig or env.get("KUBECONFIG") or None,
        autoscaler_url=env.get("KUBELAMBDA_AUTOSCALER_URL") or None,
        sigv4=_sigv4_mode(env.get(prefix + "SIGV4") or "namespaces"),
        internal_token=env.get(prefix + "INTERNAL_TOKEN") or "",
    )


def _sigv4_mode(raw: str) -> str:
    mode = raw.strip().lower()
    if mode not in SIGV4_MODES:
        raise ConfigError(
            f"KUBELAMBDA_GATEWAY_SIGV4 must be one of {', '.join(SIGV4_MODES)}, got {raw!r}"
        )
    return mode
