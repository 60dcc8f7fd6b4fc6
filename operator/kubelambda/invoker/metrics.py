"""Prometheus metrics of the invoker (``kubelambda_invoker_*``), served on their own port.

Counters move as events are handled; queue and DLQ gauges are sampled from the streams every
``KUBELAMBDA_INVOKER_SAMPLE_INTERVAL_SECONDS`` (they describe the shared queue, so every
replica reports the same values: aggregate them with ``max``, not ``sum``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kubelambda.exporter import MetricsEndpoint
from kubelambda.invoker.broker import FunctionKey

LABELS = ("namespace", "function")
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)

# Outcomes of queueing one scheduled fire.
QUEUED = "queued"
DUPLICATE = "duplicate"

# Outcomes of one try.
SUCCESS = "success"
FUNCTION_ERROR = "function_error"
THROTTLED = "throttled"
SERVICE_ERROR = "service_error"
REJECTED = "rejected"


class InvokerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.deliveries = Counter(
            "kubelambda_invoker_deliveries",
            "Tries to run an event, by outcome"
            " (success, function_error, throttled, service_error, rejected).",
            (*LABELS, "outcome"),
            registry=r,
        )
        self.retries = Counter(
            "kubelambda_invoker_retries",
            "Events scheduled for another try, by reason (function_error, throttled).",
            (*LABELS, "reason"),
            registry=r,
        )
        self.completed = Counter(
            "kubelambda_invoker_events_completed",
            "Events settled, by condition (Success, RetriesExhausted, EventAgeExceeded) and"
            " where their record went (none, destination, dlq).",
            (*LABELS, "condition", "target"),
            registry=r,
        )
        self.destination_failures = Counter(
            "kubelambda_invoker_destination_failures",
            "Records a destination did not take after every try, by kind (onSuccess, onFailure).",
            (*LABELS, "kind"),
            registry=r,
        )
        self.schedule_fires = Counter(
            "kubelambda_invoker_schedule_fires",
            "Scheduled events this replica queued, by outcome (queued; duplicate: another"
            " replica, or this one before a restart, had queued that fire already).",
            (*LABELS, "schedule", "outcome"),
            registry=r,
        )
        self.schedule_failures = Counter(
            "kubelambda_invoker_schedule_failures",
            "Tries to queue a scheduled event that failed (queue unreachable or full);"
            " retried while that fire time is the latest one due.",
            (*LABELS, "schedule"),
            registry=r,
        )
        self.queue_latency = Histogram(
            "kubelambda_invoker_queue_latency_seconds",
            "From the gateway receiving an event to its first try.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "kubelambda_invoker_in_flight",
            "Events this replica is running now.",
            LABELS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "kubelambda_invoker_queue_depth",
            "Events stored for a function: waiting, running or in backoff (sampled).",
            LABELS,
            registry=r,
        )
        self.oldest_age = Gauge(
            "kubelambda_invoker_oldest_event_age_seconds",
            "Age of the first stored event of a function (sampled).",
            LABELS,
            registry=r,
        )
        self.dlq_depth = Gauge(
            "kubelambda_invoker_dlq_depth",
            "Dead letters stored for a function (sampled).",
            LABELS,
            registry=r,
        )
        self._endpoint = MetricsEndpoint(self.registry)

    def set_sampled(
        self,
        depths: dict[FunctionKey, int],
        oldest_age_s: dict[FunctionKey, float],
        dlq: dict[FunctionKey, int],
    ) -> None:
        # Replaced wholesale, so functions whose queue emptied (or that are gone) drop out.
        for gauge, values in (
            (self.queue_depth, depths),
            (self.oldest_age, oldest_age_s),
            (self.dlq_depth, dlq),
        ):
            gauge.clear()
            for key, value in values.items():
                gauge.labels(*key).set(value)

    def start_server(self, port: int, host: str = "0.0.0.0") -> int:
        return self._endpoint.start(port, host)

    def stop_server(self) -> None:
        self._endpoint.stop()
