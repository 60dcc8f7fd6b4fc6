"""API keys with usage plans on the cluster: a quota that holds across both gateway replicas
(counted in NATS JetStream), a throttle per key, and the key's id in the 1.0 event."""

from __future__ import annotations

import base64
import http.client
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.kube import apply, gateway_pod_urls, kubectl, wait_until
from tests.e2e.test_runtimes import await_function, function

pytestmark = pytest.mark.e2e

CODE = """
import json

def handler(event, context):
    return {"statusCode": 200, "body": json.dumps(event["requestContext"]["identity"])}
"""
QUOTA = 4
Reply = tuple[int, bytes]


def route(name: str, route_key: str, plan: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "ApiRoute",
        "metadata": {"name": name},
        "spec": {
            "api": "metered",
            "routeKey": route_key,
            "target": {"function": {"name": "who"}},
            "payloadFormatVersion": "1.0",
            "auth": {
                "type": "API_KEY",
                "apiKey": {"secretName": "partner-keys", "usagePlan": plan},
            },
        },
    }


@pytest.fixture(scope="module")
def metered() -> Iterator[str]:
    namespace = f"e2e-plan-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", namespace)
    keys = {"alice": b"alice-secret-key", "bob": b"bob-secret-key"}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "partner-keys"},
        "data": {key_id: base64.b64encode(value).decode() for key_id, value in keys.items()},
    }
    apply(
        [
            secret,
            function(
                "who",
                {
                    "runtime": "python3.11",
                    "handler": "app.handler",
                    "code": {"inline": {"app.py": CODE}},
                },
            ),
            route("quota", "GET /quota", {"quota": {"limit": QUOTA, "period": "DAY"}}),
            route("throttle", "GET /throttle", {"throttle": {"rateLimit": 0.01, "burstLimit": 1}}),
        ],
        namespace,
    )
    await_function(namespace, "who")
    yield namespace
    kubectl("delete", "namespace", namespace, "--wait=false")


def get(host: str, path: str, key: str | None) -> Reply:
    conn = http.client.HTTPConnection(host, timeout=60)
    try:
        conn.request("GET", path, headers={} if key is None else {"x-api-key": key})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_quota_is_exact_across_gateway_replicas_and_throttle_is_per_key(metered: str) -> None:
    hosts = [url.removeprefix("http://") for url in gateway_pod_urls()]
    assert len(hosts) == 2, "the chart runs 2 gateway replicas"
    base = f"/apis/{metered}/metered"
    # Each replica learns the routes through its watch: a keyless call is 403 once it has them.
    for host in hosts:
        for path in ("/quota", "/throttle"):
            wait_until(
                lambda h=host, p=path: get(h, base + p, None)[0] == 403,
                60,
                f"{path} on {host}",
            )

    # Alternate replicas: a count per replica would admit every one of these.
    replies = [get(hosts[i % 2], f"{base}/quota", "alice-secret-key") for i in range(QUOTA + 2)]
    assert [status for status, _ in replies] == [200] * QUOTA + [429, 429], replies
    assert json.loads(replies[-1][1]) == {"message": "Limit Exceeded"}
    identity = json.loads(replies[0][1])
    assert (identity["apiKeyId"], identity["apiKey"]) == ("alice", "alice-secret-key")
    assert get(hosts[1], f"{base}/quota", "bob-secret-key")[0] == 200  # bob has his own count
    assert get(hosts[0], f"{base}/quota", "mallory")[0] == 403

    # A burst of one per key (and replica): alice's second call is throttled, bob's first is not.
    assert get(hosts[0], f"{base}/throttle", "alice-secret-key")[0] == 200
    throttled = get(hosts[0], f"{base}/throttle", "alice-secret-key")
    assert throttled == (429, b'{"message": "Too Many Requests"}')
    assert get(hosts[0], f"{base}/throttle", "bob-secret-key")[0] == 200
