"""Retrying API calls the server asked us to repeat: 429 (honouring Retry-After), 5xx, resets.

A `RetryPolicy` decides, as a pure function of (attempt, error), whether and how long to wait;
`call_with_retries` is the small async loop around it. Which errors qualify:

- 429 Too Many Requests (API Priority and Fairness, a busy etcd): always retried, even for a
  create, because the server promises it did nothing; the wait is its Retry-After (bounded).
- 500/502/503/504 and "never answered" (connection refused/reset; status 0): retried only
  for idempotent calls (get, list, delete), since a create or a conditional patch that got no
  answer may have happened (repeated, it would fail as a conflict). A 5xx with Retry-After
  waits that long, as client-go does.
- Anything else (400, 401, 403, 404, 409, 422...) is an answer, not a hiccup: raised at once.

Errors are read through attributes `bridge.kube.client.ApiError` carries: `status` (HTTP status, 0 =
no answer), the optional `retry_after` (seconds, from the header) and `permanent` (a TLS failure
or a request that already used its whole timeout: retrying would only multiply the wait).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

import anyio

T = TypeVar("T")

RETRY_5XX = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # calls in all, the first included
    base: float = 0.25  # first back-off, doubled each attempt...
    cap: float = 4.0  # ...up to this
    max_retry_after: float = 30.0  # a longer Retry-After is shortened to this
    jitter: float = 0.2  # +- this fraction, so many clients do not retry in step
    within: float | None = None  # no retry that would start later than this after the first call

    def delay(self, attempt: int, status: int, retry_after: float | None, *,
              idempotent: bool = True, rand: Callable[[], float] = random.random
              ) -> float | None:
        """Seconds to wait before attempt `attempt + 1` after attempt `attempt` (1-based)
        failed with `status`, or None to give up and raise."""
        if attempt >= self.attempts:
            return None
        if status == 429:
            pass
        elif status in RETRY_5XX or status == 0:
            if not idempotent:
                return None
        else:
            return None
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_retry_after)
        backoff = min(self.cap, self.base * (2 ** (attempt - 1)))
        return max(0.0, backoff * (1 + self.jitter * (2 * rand() - 1)))


DEFAULT = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or
    unreadable (the header comes from the server: never trusted to be well formed)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value[:6]))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    reference = time.time() if now is None else now
    return max(0.0, when.timestamp() - reference)


async def call_with_retries(call: Callable[[], Awaitable[T]], *,
                            policy: RetryPolicy = DEFAULT, idempotent: bool = True,
                            on_retry: Callable[[BaseException, float], None] | None = None,
                            sleep: Callable[[float], Awaitable[None]] = anyio.sleep) -> T:
    """`await call()`, retried as `policy` says; the last error is raised when it gives up.

    Only exceptions with an integer `status` attribute are considered; others propagate.
    `on_retry(error, delay)` is told before each wait (for a progress line)."""
    attempt = 1
    give_up = None if policy.within is None else anyio.current_time() + policy.within
    while True:
        try:
            return await call()
        except Exception as e:
            status = getattr(e, "status", None)
            if not isinstance(status, int) or getattr(e, "permanent", False) is True:
                raise
            retry_after = getattr(e, "retry_after", None)
            wait = policy.delay(attempt, status,
                                retry_after if isinstance(retry_after, (int, float)) else None,
                                idempotent=idempotent)
            if wait is None or (give_up is not None and anyio.current_time() + wait > give_up):
                raise
            if on_retry is not None:
                on_retry(e, wait)
            await sleep(wait)
            attempt += 1
