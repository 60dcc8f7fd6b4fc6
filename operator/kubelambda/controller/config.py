"""Operator settings from the environment (set by the Helm chart)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from kubelambda.api import Runtime

DEFAULT_IMAGE_TAG = "dev"


def default_runtime_images() -> dict[str, str]:
    return {
        runtime.value: f"kubelambda/runtime-{runtime.value}:{DEFAULT_IMAGE_TAG}"
        for runtime in Runtime
    }


@dataclass(frozen=True)
class OperatorConfig:
    runtime_images: dict[str, str] = field(default_factory=default_runtime_images)
    """Runtime name -> image of its function pods."""
    region: str = "us-east-1"
    """AWS_REGION that functions see (and the region part of their ARNs)."""
    watch_namespaces: tuple[str, ...] = ()
    """Namespaces to reconcile; empty means all."""
    health_port: int = 8081
    autoscaler_port: int = 8082
    """Where gateways report demand and ask for wake-ups."""
    autoscaler_url: str = ""
    """The autoscaler as function pods reach it (they announce themselves ready there)."""
    log_level: str = "info"
    store_url: str = ""
    """Base URL of the code store, as function pods reach it; empty: zip code needs a url."""
    store_signing_key: str = ""
    """Key of the per-blob read tokens the store accepts (shared with it through a Secret),
    and of the tokens function pods announce themselves ready with."""

    @property
    def agent_image(self) -> str:
        """The agent sidecar of image functions runs from the Python runtime image."""
        return self.runtime_images["python3.11"]

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorConfig:
        env = dict(os.environ) if env is None else env
        images = default_runtime_images()
        if env.get("KUBELAMBDA_RUNTIME_IMAGES"):
            images.update(json.loads(env["KUBELAMBDA_RUNTIME_IMAGES"]))
        namespaces = tuple(ns for ns in env.get("KUBELAMBDA_WATCH_NAMESPACES", "").split(",") if ns)
        return cls(
            runtime_images=images,
            region=env.get("KUBELAMBDA_REGION", "us-east-1"),
            watch_namespaces=namespaces,
            health_port=int(env.get("KUBELAMBDA_HEALTH_PORT", "8081")),
            autoscaler_port=int(env.get("KUBELAMBDA_AUTOSCALER_PORT", "8082")),
            autoscaler_url=env.get("KUBELAMBDA_AUTOSCALER_URL", "").rstrip("/"),
            log_level=env.get("KUBELAMBDA_LOG_LEVEL", "info"),
            store_url=env.get("KUBELAMBDA_STORE_URL", "").rstrip("/"),
            store_signing_key=env.get("KUBELAMBDA_STORE_SIGNING_KEY", ""),
        )
