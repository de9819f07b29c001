"""Optional per-key rate limits (issue 25): a token bucket a key, in each process.

FACEVERIFY_RATE_LIMIT_PER_SECOND refills each key's bucket; FACEVERIFY_RATE_LIMIT_BURST
is its size (0: one second's worth, at least 1). A request finding the bucket empty is
answered 429 ``rate_limited`` with Retry-After. Every answer to a limited key carries
(added by app/api/observability.py) the fields of draft-ietf-httpapi-ratelimit-headers-10:
``RateLimit-Policy: "per-key";q=BURST;w=SECONDS``, ``RateLimit: "per-key";r=LEFT;t=SECONDS``.
Per process: with N workers or replicas a key may get N times the rate (say so in the
setting; a shared limiter would put the database on every request's path).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

POLICY = "per-key"
# Buckets kept at most; a full bucket is dropped first (it holds no state worth keeping).
MAX_BUCKETS = 100_000


@dataclass(frozen=True)
class Allowance:
    allowed: bool
    remaining: int
    # Seconds until a request would be allowed (0 when allowed) / the bucket is full.
    retry_after: float
    reset: float

    def headers(self, burst: int, rate: float) -> dict[str, str]:
        window = max(1, math.ceil(burst / rate))
        return {
            "RateLimit-Policy": f'"{POLICY}";q={burst};w={window}',
            "RateLimit": f'"{POLICY}";r={self.remaining};t={max(0, math.ceil(self.reset))}',
        }


class RateLimiter:
    """Token buckets by key id: ``rate`` tokens a second, at most ``burst``."""

    def __init__(
        self, rate: float, burst: int = 0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst or max(1, math.ceil(rate))
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str) -> Allowance:
        now = self.clock()
        with self._lock:
            tokens, when = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - when) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            if len(self._buckets) >= MAX_BUCKETS and key not in self._buckets:
                self._forget_full(now)
            self._buckets[key] = (tokens, now)
        return Allowance(
            allowed=allowed,
            remaining=int(tokens),
            retry_after=0.0 if allowed else (1.0 - tokens) / self.rate,
            reset=(self.burst - tokens) / self.rate,
        )

    def _forget_full(self, now: float) -> None:
        full = [k for k, (t, w) in self._buckets.items() if t + (now - w) * self.rate >= self.burst]
        for k in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[k]
