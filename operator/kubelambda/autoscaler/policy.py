"""How many instances a function version should run: a pure function of its demand history.

Demand is the number of invocations in flight or waiting for an instance, summed over every
gateway that reports it (each report carries the peak of its last interval, so a burst shorter
than an interval still counts). Two windows, as in Knative's autoscaler:

- the **panic window** is the newest sample: scale-up follows it at once, so a burst gets its
  instances on the next decision (no averaging delays a cold burst);
- the **stable window** is ``idle_seconds``: an instance is removed only once demand stayed
  below it for that long, and at most half of the instances go per decision.

After ``idle_seconds`` without any demand only one instance stays; it lingers
``linger_seconds`` more, then the version goes to its minimum (zero unless provisioned).
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ScalingPolicy:
    """What a version's spec (and its aliases' provisioned concurrency) allows."""

    per_instance: int = 1
    min_replicas: int = 0
    max_replicas: int | None = None
    """From scaling.maxInstances and reserved concurrency; None: unbounded."""
    idle_seconds: float = 60.0
    linger_seconds: float = 0.0

    def to_json(self) -> str:
        """The form the operator writes on each version's Deployment (an annotation)."""
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> ScalingPolicy:
        """The annotation read back; defaults where it is missing or unreadable (a Deployment
        written by an older operator must still scale)."""
        try:
            fields = json.loads(text or "{}")
            values = {k: fields[k] for k in asdict(cls()) if k in fields}
        except (TypeError, ValueError):
            return cls()
        numbers = all(
            isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
            for k, v in values.items()
            if not (k == "max_replicas" and v is None)
        )
        if not numbers or values.get("per_instance", 1) < 1:
            return cls()
        return cls(**values)


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str


class DemandHistory:
    """Samples of one version's demand, oldest first, kept for the stable window."""

    def __init__(self, now: float) -> None:
        self.samples: deque[tuple[float, int]] = deque()
        # Until demand is seen, count the version as active from when we first knew it: a new
        # Deployment (or an operator restart) keeps its instances for a full idle period.
        self.last_active = now

    def add(self, now: float, demand: int, keep_seconds: float) -> None:
        self.samples.append((now, demand))
        if demand > 0:
            self.last_active = now
        horizon = now - keep_seconds
        while len(self.samples) > 1 and self.samples[0][0] < horizon:
            self.samples.popleft()

    def peak_since(self, since: float) -> int:
        return max((d for t, d in self.samples if t >= since), default=0)

    @property
    def latest(self) -> int:
        return self.samples[-1][1] if self.samples else 0


def instances_for(demand: int, per_instance: int) -> int:
    return math.ceil(demand / per_instance)


def decide(history: DemandHistory, policy: ScalingPolicy, current: int, now: float) -> Decision:
    """The replicas a version should have now, and why (for status and logs)."""
    idle_for = now - history.last_active
    burst = instances_for(history.latest, policy.per_instance)
    stable = instances_for(history.peak_since(now - policy.idle_seconds), policy.per_instance)
    if history.latest or idle_for < policy.idle_seconds:
        wanted = max(burst, stable, 1)
        if wanted > current:
            reason = f"{history.latest} invocations in flight or waiting"
        elif wanted < current:
            # Scale down gradually: at most half of the instances per decision.
            wanted = max(wanted, current // 2)
            reason = f"demand below {current} instances for {policy.idle_seconds:g} s"
        else:
            reason = ""
    elif idle_for < policy.idle_seconds + policy.linger_seconds:
        wanted, reason = 1, f"idle for {policy.idle_seconds:g} s, last instance lingers"
    else:
        wanted, reason = 0, f"idle for {idle_for:.0f} s"
    wanted = max(wanted, policy.min_replicas)
    if policy.max_replicas is not None and wanted > policy.max_replicas:
        wanted = policy.max_replicas
        reason = f"capped at {policy.max_replicas} instances"
    if wanted == policy.min_replicas and wanted != current and policy.min_replicas:
        reason = f"{policy.min_replicas} provisioned instances"
    return Decision(wanted, reason)
