"""Failed credentials, counted per client and per user: a few in a window lock the key out for a while.

The login form and bearer tokens are guessable at the speed of the HTTP server (about a thousand a
second) unless wrong guesses cost something. :class:`FailureLimiter` counts failures per key (a
client address, a login name); ``max_failures`` within ``window_s`` locks the key for ``lockout_s``
(the caller answers 429 with Retry-After) and logs one WARNING per lock-out. A success clears the
user's count. Keys are kept in a bounded table, oldest dropped first, so that guessing names cannot
fill memory. Clients behind one proxy share its address: they share its lock-outs too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

__all__ = ["FailureLimiter"]

log = logging.getLogger("labelqa.auth")


class FailureLimiter:
    """Failures per key within a sliding window; a key with ``max_failures`` of them is locked out."""

    def __init__(self, max_failures: int = 5, window_s: float = 300.0, lockout_s: float = 300.0, *,
                 max_keys: int = 10000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures, self.window_s, self.lockout_s = int(max_failures), float(window_s), float(lockout_s)
        self.max_keys = int(max_keys)
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked: dict[str, float] = {}  # key -> until
        self._lock = threading.Lock()

    def retry_after(self, keys: Iterable[str]) -> float | None:
        """Seconds until the first of ``keys`` that is locked out is free again; None when none is."""
        now = self._clock()
        with self._lock:
            waits = []
            for k in keys:
                until = self._locked.get(k)
                if until is None:
                    continue
                if until <= now:
                    del self._locked[k]
                    continue
                waits.append(until - now)
            return max(waits) if waits else None

    def fail(self, keys: Iterable[str], what: str) -> bool:
        """Count one failure for each key; True when this one locked a key out (logged once, as ``what``)."""
        now = self._clock()
        locked_now = []
        with self._lock:
            for k in keys:
                q = self._failures.pop(k, None) or deque()
                self._failures[k] = q  # most recent last
                q.append(now)
                while q and q[0] <= now - self.window_s:
                    q.popleft()
                if len(q) >= self.max_failures and k not in self._locked:
                    self._locked[k] = now + self.lockout_s
                    q.clear()
                    locked_now.append(k)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        for k in locked_now:
            log.warning("%s: %s locked out for %.0f s after %d failures within %.0f s", what, k, self.lockout_s,
                        self.max_failures, self.window_s)
        return bool(locked_now)

    def succeed(self, keys: Iterable[str]) -> None:
        """Forget the failures of ``keys`` (a correct login)."""
        with self._lock:
            for k in keys:
                self._failures.pop(k, None)
