"""Async (Event) invocations on the real cluster: boto3 -> gateway -> JetStream -> invoker.

The e2e platform runs the invoker with a 2 s retry base (Lambda's 1-2 min would make the test
take minutes; see conftest). Destination records are POSTed to an HTTP server on this host,
which the invoker reaches at the node's address; dead letters are read from the invoker's
admin API.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial
from typing import Any

import pytest

from tests.e2e.kube import (
    PLATFORM_NAMESPACE,
    apply,
    get,
    kubectl,
    lambda_client,
    names,
    wait_until,
    wait_until_routable,
)
from tests.e2e.test_runtimes import await_function, function, is_ready

EVENTS = 1000
FLAKY = """
import json, random

def handler(event, context):
    if event.get("fail") or random.random() < event.get("failure_rate", 0):
        raise RuntimeError("flaky failure")
    return {"ok": event.get("n")}
"""


class RecordSink:
    """Collects destination records (Lambda invocation records) POSTed by the invoker."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with sink.lock:
                    sink.records.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        node = get("nodes")["items"][0]
        address = next(a for a in node["status"]["addresses"] if a["type"] == "InternalIP")
        self.url = f"http://{address['address']}:{self.server.server_address[1]}/records"

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.records)


class Dlq:
    def __init__(self) -> None:
        service = get("service", "kubelambda-invoker", PLATFORM_NAMESPACE)
        self.host = service["spec"]["clusterIP"]
        secret = get("secret", "kubelambda-invoker", PLATFORM_NAMESPACE)
        self.token = base64.b64decode(secret["data"]["adminToken"]).decode()

    def call(self, method: str, path: str) -> Any:
        conn = http.client.HTTPConnection(self.host, 8081, timeout=30)
        try:
            conn.request(method, path, headers={"Authorization": f"Bearer {self.token}"})
            response = conn.getresponse()
            body = response.read()
            assert response.status < 300, (response.status, body)
            return json.loads(body) if body else None
        finally:
            conn.close()

    def letters(self, namespace: str, function: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.call(
                "GET", f"/dlq?namespace={namespace}&function={function}&after={after}&limit=500"
            )
            found += page["deadLetters"]
            if page["next"] is None:
                return found
            after = page["next"]


@pytest.fixture(scope="module")
def async_namespace() -> Iterator[str]:
    name = f"e2e-async-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="module")
def lam(async_namespace: str) -> Any:
    return lambda_client(async_namespace, read_timeout=60, connections=16)


def flaky(name: str, **spec: Any) -> dict[str, Any]:
    return function(
        name,
        {
            "runtime": "python3.11",
            "handler": "app.handler",
            "code": {"inline": {"app.py": FLAKY}},
            **spec,
        },
    )


def send_events(lam: Any, name: str, events: list[dict[str, Any]]) -> list[str]:
    def send(event: dict[str, Any]) -> str:
        response = lam.invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps(event))
        assert response["StatusCode"] == 202
        return str(response["ResponseMetadata"]["RequestId"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(send, events))


def test_every_event_ends_in_exactly_one_of_success_or_dlq(
    lam: Any, async_namespace: str, sink: RecordSink
) -> None:
    ns = async_namespace
    apply(
        flaky(
            "flaky",
            scaling={"minInstances": 2},
            **{"async": {"maximumRetryAttempts": 2, "onSuccess": {"url": sink.url}}},
        ),
        ns,
    )
    await_function(ns, "flaky")
    started = time.monotonic()
    ids = send_events(lam, "flaky", [{"n": i, "failure_rate": 0.3} for i in range(EVENTS)])
    accepted_s = time.monotonic() - started
    assert len(set(ids)) == EVENTS
    dlq = Dlq()

    def settled() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        successes = [r for r in sink.snapshot() if r["requestContext"]["requestId"] in ids]
        letters = dlq.letters(ns, "flaky")
        done = {r["requestContext"]["requestId"] for r in successes}
        done |= {d["requestId"] for d in letters}
        return (successes, letters) if done >= set(ids) else None

    successes, letters = wait_until(settled, 240, "every event settled", interval=2)
    success_ids = Counter(r["requestContext"]["requestId"] for r in successes)
    dead_ids = Counter(d["requestId"] for d in letters)
    # Exactly one outcome per request id (duplicate deliveries would show as counts > 1).
    assert not set(success_ids) & set(dead_ids)
    assert max(success_ids.values()) == 1, success_ids.most_common(3)
    assert max(dead_ids.values(), default=1) == 1
    assert set(success_ids) | set(dead_ids) == set(ids)
    # 0.3^3 of 1,000 events fail all three attempts: a few, not none of them and not many.
    assert len(dead_ids) < 100
    for record in successes:
        context = record["requestContext"]
        assert record["version"] == "1.0"
        assert context["condition"] == "Success"
        assert context["functionArn"].endswith(":function:flaky:$LATEST")
        assert 1 <= context["approximateInvokeCount"] <= 3
        assert record["responseContext"]["statusCode"] == 200
        assert record["responsePayload"] == {"ok": record["requestPayload"]["n"]}
    for letter in letters:
        assert letter["condition"] == "RetriesExhausted"
        assert letter["attempts"] == 3
        assert letter["errorMessage"]
    print(f"\naccepted {EVENTS} events in {accepted_s:.1f} s; dead letters: {len(letters)}")


def test_no_event_is_lost_across_scale_down_and_back(
    lam: Any, async_namespace: str, sink: RecordSink
) -> None:
    """Waves of events around a short idle period: each wave is sent the moment the function
    starts scaling down after the previous one, so events are queued and delivered while its
    pods go away, and from zero. With no retry allowed, an attempt lost to a pod going away
    would end in the DLQ."""
    ns = async_namespace
    apply(
        flaky(
            "waves",
            scaling={"idleSeconds": 2},
            **{"async": {"maximumRetryAttempts": 0, "onSuccess": {"url": sink.url}}},
        ),
        ns,
    )
    # Its first pod may be gone again by the time one looks: Ready=True is enough.
    wait_until(lambda: is_ready("function", "waves", ns), 90, "waves Ready")
    dlq = Dlq()

    def replicas() -> int:
        return int(get("deployment", "fn-waves-latest", ns)["spec"].get("replicas") or 0)

    def delivered() -> set[str]:
        return {
            r["requestContext"]["requestId"]
            for r in sink.snapshot()
            if r["requestContext"]["functionArn"].endswith(":function:waves:$LATEST")
        }

    def settled(expected: set[str]) -> bool:
        return delivered() >= expected or bool(dlq.letters(ns, "waves"))

    def below(peak: int) -> bool:
        return replicas() < peak

    ids: list[str] = []
    for wave in range(4):
        wave_ids = send_events(lam, "waves", [{"n": wave * 100 + i} for i in range(25)])
        ids += wave_ids
        wait_until(partial(settled, set(wave_ids)), 90, f"wave {wave} delivered")
        wait_until(partial(below, max(replicas(), 1)), 60, f"a scale-down after wave {wave}")
    wait_until(partial(settled, set(ids)), 90, "every event")
    assert dlq.letters(ns, "waves") == []
    assert delivered() >= set(ids)
    # The last scale-down took it to zero: the next event starts it from nothing.
    wait_until(lambda: replicas() == 0, 60, "zero instances")
    last = send_events(lam, "waves", [{"n": 999}])
    wait_until(lambda: delivered() >= set(last), 90, "an event at zero instances delivered")
    assert dlq.letters(ns, "waves") == []


def test_reserved_zero_goes_to_dlq_then_redrive_succeeds(
    lam: Any, async_namespace: str, sink: RecordSink
) -> None:
    ns = async_namespace
    manifest = flaky(
        "parked",
        concurrency={"reserved": 0},
        **{"async": {"maximumEventAgeSeconds": 60, "onSuccess": {"url": sink.url}}},
    )
    apply(manifest, ns)
    wait_until_routable(ns, "parked")
    ids = send_events(lam, "parked", [{"n": i} for i in range(5)])
    dlq = Dlq()

    def five_letters() -> list[dict[str, Any]] | None:
        found = dlq.letters(ns, "parked")
        return found if len(found) == 5 else None

    letters = wait_until(five_letters, 120, "5 dead letters")
    assert {d["requestId"] for d in letters} == set(ids)
    # Lambda sends events of a function with reserved concurrency 0 straight to failure.
    assert {d["errorCode"] for d in letters} == {"429"}
    one = dlq.call("GET", f"/dlq/{letters[0]['sequence']}")
    assert one["payload"] == {"n": int(one["payload"]["n"])}

    # Fix the function (lift the cap), redrive: every event succeeds, the DLQ empties.
    manifest["spec"]["concurrency"] = {}
    apply(manifest, ns)
    # No instance yet (the cap kept it at zero): the redriven events wake it.

    def succeeded() -> set[str]:
        return {
            r["requestContext"]["requestId"]
            for r in sink.snapshot()
            if r["requestContext"]["functionArn"].endswith(":function:parked:$LATEST")
        }

    # The invoker re-reads Function settings every few seconds: a redrive that still saw the
    # old cap lands the events back in the DLQ, where the next redrive picks them up.
    deadline = time.monotonic() + 120
    while not succeeded() >= set(ids):
        assert time.monotonic() < deadline, f"redriven events did not succeed: {succeeded()}"
        dlq.call("POST", f"/dlq/redrive?namespace={ns}&function=parked&limit=100")
        time.sleep(5)
    assert dlq.letters(ns, "parked") == []


KILL_EVENTS = 2000
# Accepted-event counts at which the invoker, then NATS, then a gateway pod is force-killed.
KILLS = (
    (400, "app.kubernetes.io/component=invoker"),
    (900, "app.kubernetes.io/component=queue"),
    (1400, "app.kubernetes.io/component=gateway"),
)


def force_kill(selector: str) -> None:
    pods = names("pods", PLATFORM_NAMESPACE, selector)
    assert pods, selector
    kubectl("delete", "pod", "-n", PLATFORM_NAMESPACE, "--grace-period=0", "--force", *pods)


# When a gateway dies mid-response, urllib3 (inside boto3) drops that connection without closing
# it; the socket is only closed by the garbage collector, which pytest reports as unraisable.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_killing_invoker_nats_and_gateway_loses_no_event(
    lam: Any, async_namespace: str, sink: RecordSink
) -> None:
    """Every accepted event reaches an outcome although each platform part dies mid-run.

    A send whose answer is lost when its gateway dies is sent again (as any client would), so an
    event may be accepted twice: duplicates are allowed and counted, losses are not.
    """
    ns = async_namespace
    apply(
        flaky("steady", scaling={"minInstances": 2}, **{"async": {"onSuccess": {"url": sink.url}}}),
        ns,
    )
    await_function(ns, "steady")
    accepted: list[int] = []
    lock = threading.Lock()
    client_retries = Counter[str]()
    kills: list[threading.Thread] = []

    killed_ms: list[int] = []

    def send(n: int) -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                response = lam.invoke(
                    FunctionName="steady", InvocationType="Event", Payload=json.dumps({"n": n})
                )
                if response["StatusCode"] == 202:
                    break
                client_retries[str(response["StatusCode"])] += 1
            except Exception as exc:  # the gateway or NATS is being replaced: send again
                client_retries[type(exc).__name__] += 1
            assert time.monotonic() < deadline, f"event {n} not accepted in 120 s"
            time.sleep(0.5)
        with lock:
            accepted.append(n)
            for at, selector in KILLS:
                if len(accepted) == at:
                    killed_ms.append(int(time.time() * 1000))
                    kill = threading.Thread(target=force_kill, args=(selector,))
                    kill.start()
                    kills.append(kill)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, range(KILL_EVENTS)))
    for kill in kills:
        kill.join()
    dlq = Dlq()

    def outcomes() -> tuple[Counter[int], list[dict[str, Any]]] | None:
        successes = Counter(
            int(r["requestPayload"]["n"])
            for r in sink.snapshot()
            if r["requestContext"]["functionArn"].endswith(":function:steady:$LATEST")
        )
        letters = dlq.letters(ns, "steady")
        if letters:  # the function never fails: a dead letter is a platform bug
            return successes, letters
        return (successes, letters) if set(successes) >= set(range(KILL_EVENTS)) else None

    successes, letters = wait_until(outcomes, 300, "an outcome for every event", interval=3)
    reasons = Counter((d["condition"], d["errorCode"], d["errorMessage"][:120]) for d in letters)
    if letters:
        failed = sorted(d["failedTime"] for d in letters)
        sample = dlq.call("GET", f"/dlq/{letters[0]['sequence']}")
        raise AssertionError(
            f"{len(letters)} dead letters: {reasons.most_common(5)}; kills at {killed_ms},"
            f" failures from {failed[0]} to {failed[-1]}; first: {sample}"
        )
    duplicates = sum(count - 1 for count in successes.values())
    print(
        f"\n{KILL_EVENTS} events, kills at {[at for at, _ in KILLS]}: none lost;"
        f" {duplicates} duplicate deliveries; client re-sends {dict(client_retries)}"
    )


def test_events_of_a_function_that_cannot_start_expire_to_the_dlq(
    lam: Any, async_namespace: str
) -> None:
    """At zero instances and unable to start one (its image cannot be pulled), the function's
    events are retried with backoff until their maximum age, then dead-lettered as
    EventAgeExceeded, as Lambda does for events it could not deliver in time."""
    ns = async_namespace
    apply(
        function(
            "unstartable",
            {
                "code": {"image": "kubelambda/does-not-exist:never"},
                "async": {"maximumEventAgeSeconds": 60, "maximumRetryAttempts": 0},
            },
        ),
        ns,
    )
    wait_until_routable(ns, "unstartable")
    ids = send_events(lam, "unstartable", [{"n": i} for i in range(3)])
    dlq = Dlq()

    def three_letters() -> list[dict[str, Any]] | None:
        found = dlq.letters(ns, "unstartable")
        return found if len(found) == 3 else None

    letters = wait_until(three_letters, 150, "3 dead letters", interval=3)
    assert {d["requestId"] for d in letters} == set(ids)
    for letter in letters:
        assert letter["condition"] == "EventAgeExceeded", letter
        assert letter["attempts"] == 0, letter
        enqueued = datetime.fromisoformat(letter["enqueuedTime"].replace("Z", "+00:00"))
        failed = datetime.fromisoformat(letter["failedTime"].replace("Z", "+00:00"))
        assert 60 <= (failed - enqueued).total_seconds() < 90, letter
        assert letter["errorCode"] in {"502", "503", "504"}, letter
