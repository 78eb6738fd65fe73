"""Warnings about an outage, at most once per interval rather than once per request."""

from __future__ import annotations

import math
import time


class Throttle:
    """:meth:`ready` is true at most once every ``interval`` seconds.

    When a cache or the channel layer is down, every request meets the same failure;
    one warning every 30 s says as much as thousands would.
    """

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        self._last = -math.inf

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        return True

    def reset(self) -> None:
        """Let the next call through (tests)."""
        self._last = -math.inf
