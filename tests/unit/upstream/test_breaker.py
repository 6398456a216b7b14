"""The per-upstream circuit breaker, on a fake clock."""

from __future__ import annotations

from scoring.upstream.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_n_consecutive_failures_and_recovers_after_cool_down():
    clock = Clock()
    b = CircuitBreaker(failures=3, cooldown=2.0, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    b.success()  # a success resets the count: failures must be consecutive
    for _ in range(3):
        assert b.state == CLOSED and b.allow()
        b.failure()
    assert b.state == OPEN and not b.allow() and b.opened == 1
    clock.t += 1.9
    assert not b.allow()
    clock.t += 0.2
    assert b.state == HALF_OPEN
    assert b.allow()          # one probe...
    assert not b.allow()      # ...at a time
    b.success()
    assert b.state == CLOSED and b.allow() and b.consecutive_failures == 0


def test_failed_probe_reopens_for_another_cool_down():
    clock = Clock()
    b = CircuitBreaker(failures=1, cooldown=1.0, clock=clock)
    b.failure()
    clock.t += 1.0
    assert b.allow()
    b.failure()
    assert b.state == OPEN and not b.allow() and b.opened == 2
    clock.t += 1.0
    assert b.allow()
    b.release()  # a cancelled probe frees the slot
    assert b.allow()
