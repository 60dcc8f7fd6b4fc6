"""The token a function pod presents when it announces itself ready: an HMAC of its function
identity under the platform's signing key. The operator puts it in the pod's (agent-only)
environment; the autoscaler recomputes it, so a pod can announce itself and nothing else."""

from __future__ import annotations

import hashlib
import hmac


def announce_token(signing_key: str, namespace: str, function: str, version: str) -> str:
    message = f"started:{namespace}/{function}/{version}".encode()
    return hmac.new(signing_key.encode(), message, hashlib.sha256).hexdigest()


def valid_announce_token(
    signing_key: str, token: str, namespace: str, function: str, version: str
) -> bool:
    expected = announce_token(signing_key, namespace, function, version)
    return hmac.compare_digest(expected.encode(), token.encode("utf-8", "replace"))
