"""Invoker settings, read once from the environment (see the package docstring)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kubelambda.envconfig import ConfigError, env_int, env_number
from kubelambda.invoker.jetstream import ConsumerSettings, StreamSettings

# ConfigError is exported with the loaders, which raise it, so callers (the gateway's NATS
# publisher too) import it from here with them.
__all__ = ["ConfigError", "InvokerConfig", "load_config", "load_stream_settings"]


@dataclass(frozen=True)
class InvokerConfig:
    nats_url: str = "nats://127.0.0.1:4222"
    gateway_url: str = "http://127.0.0.1:8080"
    admin_port: int = 8081
    metrics_port: int = 9090
    admin_token: str | None = None
    internal_token: str = ""
    """Presented to the gateway instead of a SigV4 signature (namespaces may require one)."""
    region: str = "us-east-1"
    function_concurrency: int = 64
    retry_base_s: float = 60.0
    throttle_min_s: float = 1.0
    throttle_max_s: float = 300.0
    invoke_grace_s: float = 45.0
    fetch_wait_s: float = 5.0
    functions_refresh_s: float = 10.0
    sample_interval_s: float = 15.0
    destination_timeout_s: float = 10.0
    shutdown_grace_s: float = 25.0
    streams: StreamSettings = field(default_factory=StreamSettings)
    consumers: ConsumerSettings = field(default_factory=ConsumerSettings)
    kubeconfig: str | None = None


def load_stream_settings(env: Mapping[str, str]) -> StreamSettings:
    """``KUBELAMBDA_NATS_*`` stream settings, shared by the invoker and the gateway."""
    n = "KUBELAMBDA_NATS_"
    return StreamSettings(
        replicas=env_int(env, n + "REPLICAS", 1, 1),
        # Above the longest maximumEventAgeSeconds, so events expire in the DLQ, not the stream.
        events_max_age_s=env_number(env, n + "EVENTS_MAX_AGE_SECONDS", 86400.0, 21600.0 + 60.0),
        events_max_bytes=env_int(env, n + "EVENTS_MAX_BYTES", -1, -1),
        dlq_max_age_s=env_number(env, n + "DLQ_MAX_AGE_SECONDS", 14 * 86400.0, 60.0),
        dlq_max_bytes=env_int(env, n + "DLQ_MAX_BYTES", -1, -1),
    )


def load_config(env: Mapping[str, str], kubeconfig: str | None = None) -> InvokerConfig:
    p = "KUBELAMBDA_INVOKER_"
    throttle_min = env_number(env, p + "THROTTLE_MIN_SECONDS", 1.0, 0.001)
    gateway_url = (env.get(p + "GATEWAY_URL") or "http://127.0.0.1:8080").rstrip("/")
    if not gateway_url.startswith("http://"):
        # The gateway is reached in the cluster, over its lean plain-HTTP client.
        raise ConfigError(f"{p}GATEWAY_URL must be an http:// URL, got {gateway_url!r}")
    return InvokerConfig(
        nats_url=env.get("KUBELAMBDA_NATS_URL") or "nats://127.0.0.1:4222",
        gateway_url=gateway_url,
        admin_port=env_int(env, p + "ADMIN_PORT", 8081, 0),
        metrics_port=env_int(env, p + "METRICS_PORT", 9090, 0),
        admin_token=env.get(p + "ADMIN_TOKEN") or None,
        internal_token=env.get(p + "INTERNAL_TOKEN") or "",
        region=env.get("AWS_REGION") or "us-east-1",
        function_concurrency=env_int(env, p + "FUNCTION_CONCURRENCY", 64, 1),
        retry_base_s=env_number(env, p + "RETRY_BASE_SECONDS", 60.0, 0.001),
        throttle_min_s=throttle_min,
        throttle_max_s=env_number(env, p + "THROTTLE_MAX_SECONDS", 300.0, throttle_min),
        invoke_grace_s=env_number(env, p + "INVOKE_GRACE_SECONDS", 45.0, 0.0),
        fetch_wait_s=env_number(env, p + "FETCH_WAIT_SECONDS", 5.0, 0.1),
        functions_refresh_s=env_number(env, p + "FUNCTIONS_REFRESH_SECONDS", 10.0, 0.1),
        sample_interval_s=env_number(env, p + "SAMPLE_INTERVAL_SECONDS", 15.0, 0.1),
        destination_timeout_s=env_number(env, p + "DESTINATION_TIMEOUT_SECONDS", 10.0, 0.1),
        shutdown_grace_s=env_number(env, p + "SHUTDOWN_GRACE_SECONDS", 25.0, 0.0),
        streams=load_stream_settings(env),
        consumers=ConsumerSettings(
            ack_wait_s=env_number(env, p + "ACK_WAIT_SECONDS", 30.0, 1.0),
            max_ack_pending=env_int(env, p + "MAX_ACK_PENDING", 10_000, 1),
            inactive_threshold_s=env_number(env, p + "CONSUMER_INACTIVE_SECONDS", 3600.0, 60.0),
        ),
        kubeconfig=kubeconfig or env.get("KUBECONFIG") or None,
    )
