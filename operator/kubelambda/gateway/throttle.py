"""Token buckets: a route's throttling (rateLimit tokens per second, at most burstLimit).

Per gateway replica: with N replicas behind a Service a route admits up to N times its limits
(the same trade-off as the local concurrency counter).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable


class TokenBucket:
    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> bool:
        """One request's token, if there is one."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Throttles:
    """One bucket per key (a route); a changed limit starts a fresh, full bucket."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: dict[Hashable, TokenBucket] = {}

    def allow(self, key: Hashable, rate: float, burst: int) -> bool:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            bucket = self._buckets[key] = TokenBucket(rate, burst, now)
        return bucket.take(now)
