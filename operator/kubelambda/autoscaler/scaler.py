"""The autoscaler's memory: demand reports, wake-ups and the function Deployments it scales.

Fed from three sides, all in one event loop: gateways report demand per version about once a
second (``report``) and ask for an instance the moment a request finds none (``wake``); the
operator's Deployment watch says which versions exist, their replicas and their scaling policy
(``observe``). ``decisions`` turns that into the replica changes to make now.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubelambda.autoscaler.policy import Decision, DemandHistory, ScalingPolicy, decide

VersionKey = tuple[str, str, str]
"""(namespace, function, version)."""

# A reporter that went quiet for this long (gateway gone) no longer counts.
REPORT_TTL_S = 3.0
# A wake-up counts as one waiting invocation until the gateway's own reports take over.
WAKE_HOLD_S = 3.0
# A pod's own "I am ready" is news until its EndpointSlice has caught up (a second or two).
STARTED_NEWS_S = 10.0


@dataclass
class ScaledVersion:
    """One version's Deployment, as the watch last saw it (and as we last scaled it)."""

    policy: ScalingPolicy
    replicas: int
    ready: int = 0
    history: DemandHistory | None = None
    last_reason: str = ""


@dataclass
class _Report:
    received: float
    peaks: dict[VersionKey, int] = field(default_factory=dict)
    current: dict[VersionKey, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ScaleAction:
    key: VersionKey
    current: int
    decision: Decision


class Autoscaler:
    def __init__(self) -> None:
        self._reports: dict[str, _Report] = {}
        self._woken: dict[VersionKey, float] = {}
        self._started: dict[VersionKey, dict[str, float]] = {}
        self.workloads: dict[VersionKey, ScaledVersion] = {}

    # --- inputs --------------------------------------------------------------------------

    def report(
        self,
        reporter: str,
        peaks: Mapping[VersionKey, int],
        now: float,
        current: Mapping[VersionKey, int] | None = None,
    ) -> None:
        """A gateway's demand per version: the peak of in-flight plus waiting invocations over
        its last interval (versions without demand are left out), and their number when it
        reported (``current``; a version missing there counts its peak)."""
        kept = {k: v for k, v in peaks.items() if v > 0}
        self._reports[reporter] = _Report(now, kept, {k: v for k, v in (current or kept).items()})

    def wake(self, key: VersionKey, now: float) -> bool:
        """A request waits for an instance of ``key``; True when none is asked for yet."""
        self._woken[key] = now
        workload = self.workloads.get(key)
        return workload is not None and workload.replicas == 0

    def observe(self, key: VersionKey, policy: ScalingPolicy, replicas: int, ready: int) -> None:
        workload = self.workloads.get(key)
        if workload is None:
            self.workloads[key] = ScaledVersion(policy, replicas, ready)
        else:
            workload.policy, workload.replicas, workload.ready = policy, replicas, ready

    def forget(self, key: VersionKey) -> None:
        self.workloads.pop(key, None)
        self._woken.pop(key, None)
        self._started.pop(key, None)

    def started(self, key: VersionKey, address: str, now: float) -> bool:
        """A pod of ``key`` announced that it serves at ``address`` (host:port). Not news if
        the version is at zero: the pod finished initialising after its scale-down, it is on
        its way out (a scale from zero asks for instances before any of them announces). True if
        it is news."""
        workload = self.workloads.get(key)
        if workload is not None and workload.replicas == 0:
            return False
        self._started.setdefault(key, {})[address] = now
        return True

    def recently_started(self, key: VersionKey, now: float) -> list[str]:
        """Addresses of ``key`` announced in the last STARTED_NEWS_S, newest first."""
        pods = self._started.get(key)
        if not pods:
            return []
        for address, when in list(pods.items()):
            if now - when > STARTED_NEWS_S:
                del pods[address]
        if not pods:
            del self._started[key]
        return sorted(pods, key=pods.__getitem__, reverse=True)

    # --- output --------------------------------------------------------------------------

    def demand(self, now: float) -> dict[VersionKey, int]:
        """Invocations in flight or waiting per version over live reporters: the larger of the
        sum of their current counts and the highest single peak.

        Peaks are not summed: sequential calls spread over two gateways peak at 1 on each in
        the same second, yet never run together. The sum of current counts sees concurrency
        spread over gateways; the highest peak sees a burst shorter than a report interval."""
        total: dict[VersionKey, int] = {}
        summed: dict[VersionKey, int] = {}
        for reporter, report in list(self._reports.items()):
            if now - report.received > REPORT_TTL_S:
                del self._reports[reporter]
                continue
            for key, peak in report.peaks.items():
                total[key] = max(total.get(key, 0), peak)
                summed[key] = summed.get(key, 0) + report.current.get(key, peak)
        for key, count in summed.items():
            total[key] = max(total[key], count)
        for key, woken in list(self._woken.items()):
            if now - woken > WAKE_HOLD_S:
                del self._woken[key]
            elif not total.get(key):
                total[key] = 1
        return total

    def decisions(self, now: float) -> list[ScaleAction]:
        """Sample demand into every version's history; the replica changes to make."""
        demand = self.demand(now)
        actions = []
        for key, workload in self.workloads.items():
            policy = workload.policy
            if workload.history is None:
                workload.history = DemandHistory(now)
            workload.history.add(now, demand.get(key, 0), policy.idle_seconds)
            decision = decide(workload.history, policy, workload.replicas, now)
            if decision.replicas != workload.replicas:
                actions.append(ScaleAction(key, workload.replicas, decision))
            if decision.replicas < workload.replicas:
                # Fewer pods: an announced one may be among those going away.
                self._started.pop(key, None)
        return actions

    def scaled(self, action: ScaleAction) -> None:
        """The Deployment now asks for ``action``'s replicas (before the watch says so)."""
        workload = self.workloads.get(action.key)
        if workload is not None:
            workload.replicas = action.decision.replicas
            workload.last_reason = action.decision.reason

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """The state per version, for the debug endpoint and tests."""
        demand = self.demand(now)
        return [
            {
                "namespace": key[0],
                "function": key[1],
                "version": key[2],
                "replicas": workload.replicas,
                "ready": workload.ready,
                "demand": demand.get(key, 0),
                "lastReason": workload.last_reason,
            }
            for key, workload in sorted(self.workloads.items())
        ]


def peaks_from_json(entries: Iterable[Any]) -> tuple[dict[VersionKey, int], dict[VersionKey, int]]:
    """The ``versions`` list of a report: peaks, and current counts (``now``, optional); raises
    ValueError on a malformed entry."""
    peaks: dict[VersionKey, int] = {}
    current: dict[VersionKey, int] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("each version must be an object")
        namespace, function, version = (entry.get(k) for k in ("namespace", "function", "version"))
        peak = entry.get("peak")
        if not all(isinstance(v, str) and v for v in (namespace, function, version)):
            raise ValueError("namespace, function and version must be non-empty strings")
        if not isinstance(peak, int) or isinstance(peak, bool) or peak < 0:
            raise ValueError("peak must be a non-negative integer")
        key = (str(namespace), str(function), str(version))
        peaks[key] = peaks.get(key, 0) + peak
        count = entry.get("now", peak)
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= peak:
            raise ValueError("now must be an integer from 0 to the peak")
        current[key] = current.get(key, 0) + count
    return peaks, current
