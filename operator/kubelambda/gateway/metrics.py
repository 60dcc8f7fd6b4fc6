"""Prometheus metrics of the gateway, served on their own port.

Label sets are bounded by construction: function and version labels only ever come from a
resolved ``Target`` (a Function that exists, a version it serves); anything answered before
resolution counts in ``kubelambda_gateway_rejected_requests_total`` by error code alone
(as do the gateway's own errors after it).
Per-version invocation counts are plain integers exported by a collector at scrape time, so
the hot path does a dict lookup and a few additions, no locks.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from kubelambda.exporter import MetricsEndpoint
from kubelambda.gateway.routing import FunctionKey, VersionKey

VERSION_LABELS = ("namespace", "function", "version")
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
)
COLD_START_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)

# Outcomes of an invocation that reached a pod (or waited for one).
OK = "ok"
FUNCTION_ERROR = "function"  # X-Amz-Function-Error: the function (or its runtime) failed
SERVICE_ERROR = "service"  # the pod failed, or no pod became ready


class _VersionStats:
    """Counts of one function version's synchronous invocations, updated without locks."""

    __slots__ = (
        "buckets",
        "duration_sum",
        "events",
        "function_errors",
        "invocations",
        "service_errors",
    )

    def __init__(self) -> None:
        self.invocations = 0
        self.events = 0
        self.function_errors = 0
        self.service_errors = 0
        self.duration_sum = 0.0
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # per bucket, not cumulative


class _Collector(Collector):
    """Exports the per-version counts and the current in-flight / queued gauges at scrape time.

    Plain integers on the hot path (the scrape, in the server's thread, reads them under the
    GIL; a scrape may see one invocation half-counted, never a corrupt value).
    """

    def __init__(
        self,
        stats: dict[VersionKey, _VersionStats],
        in_flight: Callable[[], dict[VersionKey, int]],
        queued: Callable[[], dict[VersionKey, int]],
    ) -> None:
        self._stats = stats
        self._in_flight = in_flight
        self._queued = queued

    def collect(self) -> Iterator[Metric]:
        invocations = CounterMetricFamily(
            "kubelambda_gateway_invocations",
            "Invocations that reached a function (RequestResponse) or its queue (Event)",
            labels=[*VERSION_LABELS, "type"],
        )
        errors = CounterMetricFamily(
            "kubelambda_gateway_invocation_errors",
            "Synchronous invocations that failed: kind=function (the function's error) or"
            " service (pod failure, timeout, no ready pod)",
            labels=[*VERSION_LABELS, "kind"],
        )
        duration = HistogramMetricFamily(
            "kubelambda_gateway_invocation_duration_seconds",
            "Synchronous invocations, from arrival to the answer (waiting included)",
            labels=VERSION_LABELS,
        )
        for key, stats in list(self._stats.items()):
            invocations.add_metric([*key, "RequestResponse"], stats.invocations)
            invocations.add_metric([*key, "Event"], stats.events)
            errors.add_metric([*key, FUNCTION_ERROR], stats.function_errors)
            errors.add_metric([*key, SERVICE_ERROR], stats.service_errors)
            cumulative, buckets = 0, []
            for bound, count in zip((*DURATION_BUCKETS, math.inf), stats.buckets, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else str(float(bound)), cumulative))
            duration.add_metric(list(key), buckets, stats.duration_sum)
        yield from (invocations, errors, duration)
        running = GaugeMetricFamily(
            "kubelambda_gateway_in_flight",
            "Invocations running on a function pod now",
            labels=VERSION_LABELS,
        )
        for key, count in self._in_flight().items():
            running.add_metric(key, count)
        yield running
        waiting = GaugeMetricFamily(
            "kubelambda_gateway_queued",
            "Invocations waiting for a free or ready function pod now",
            labels=VERSION_LABELS,
        )
        for key, count in self._queued().items():
            waiting.add_metric(key, count)
        yield waiting


class GatewayMetrics:
    def __init__(
        self,
        in_flight: Callable[[], dict[VersionKey, int]],
        queued: Callable[[], dict[VersionKey, int]],
    ) -> None:
        self.registry = CollectorRegistry()
        self._throttles = Counter(
            "kubelambda_gateway_throttles",
            "Invocations refused with 429, by reason",
            ["namespace", "function", "reason"],
            registry=self.registry,
        )
        self._rejected = Counter(
            "kubelambda_gateway_rejected_requests",
            "Requests the gateway itself answered with a service error, by error code",
            ["code"],
            registry=self.registry,
        )
        self._cold_starts = Histogram(
            "kubelambda_gateway_cold_start_seconds",
            "Waits of invocations that found no pod of their version (scale from zero), from"
            " arrival until a pod took them",
            VERSION_LABELS,
            buckets=COLD_START_BUCKETS,
            registry=self.registry,
        )
        self._stats: dict[VersionKey, _VersionStats] = {}
        self.registry.register(_Collector(self._stats, in_flight, queued))
        self._endpoint = MetricsEndpoint(self.registry)

    def _of(self, key: VersionKey) -> _VersionStats:
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = _VersionStats()
        return stats

    def invoked(self, key: VersionKey, outcome: str, seconds: float) -> None:
        """One synchronous invocation finished."""
        stats = self._of(key)
        stats.invocations += 1
        stats.duration_sum += seconds
        stats.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        if outcome == FUNCTION_ERROR:
            stats.function_errors += 1
        elif outcome == SERVICE_ERROR:
            stats.service_errors += 1

    def cold_start(self, key: VersionKey, seconds: float) -> None:
        self._cold_starts.labels(*key).observe(seconds)

    def queued_event(self, key: VersionKey) -> None:
        self._of(key).events += 1

    def throttled(self, function: FunctionKey, reason: str) -> None:
        self._throttles.labels(*function, reason).inc()

    def rejected(self, code: str) -> None:
        self._rejected.labels(code).inc()

    def start_server(self, port: int, host: str = "0.0.0.0") -> int:
        return self._endpoint.start(port, host)

    def stop_server(self) -> None:
        self._endpoint.stop()
