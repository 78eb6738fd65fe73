"""Outage warnings: once per interval, however many requests meet the failure."""

from __future__ import annotations

import time

from copilotedge.log_limits import Throttle


def test_ready_once_per_interval() -> None:
    throttle = Throttle(interval=0.05)
    assert [throttle.ready() for _ in range(3)] == [True, False, False]
    time.sleep(0.06)
    assert throttle.ready()


def test_reset_lets_the_next_one_through() -> None:
    throttle = Throttle()
    assert throttle.ready() and not throttle.ready()
    throttle.reset()
    assert throttle.ready()
