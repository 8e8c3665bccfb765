"""Pacing, pure (the caller passes the time): a token bucket, and the delay
before the next try of something that failed (webhooks, push gateways)."""

from __future__ import annotations


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are enough; True when allowed."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False


def retry_delay(attempts: int, base: float, cap: float, jitter: float = 1.0) -> float:
    """Seconds before the next try after ``attempts`` failed ones: base, 2*base,
    4*base ... never above ``cap``; ``jitter`` in [0.5, 1] spreads retries of
    many events out (the caller draws it)."""
    if attempts < 1:
        return 0.0
    delay = min(cap, base * 2.0 ** min(attempts - 1, 62))
    return delay * min(1.0, max(0.5, jitter))
