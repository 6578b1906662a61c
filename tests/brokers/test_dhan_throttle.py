"""Our side of Dhan's order rate limit: a burst of orders is spread out instead of tripping DH-904."""

from __future__ import annotations

import pytest

from tvbridge_brokers.dhan.throttle import TokenBucket


class FakeTime:
    """A clock that only moves when the bucket sleeps, so the test never waits for real."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_a_burst_of_ten_passes_and_the_eleventh_waits() -> None:
    """At 10 orders/s, ten orders go at once; the eleventh waits a tenth of a second."""
    time = FakeTime()
    bucket = TokenBucket(10, clock=time.clock, sleep=time.sleep)

    waits = [await bucket.acquire() for _ in range(11)]

    assert waits[:10] == [0.0] * 10
    assert waits[10] == pytest.approx(0.1)


async def test_a_sustained_stream_runs_at_the_rate() -> None:
    """Thirty orders at 10/s take about two seconds after the initial burst of ten."""
    time = FakeTime()
    bucket = TokenBucket(10, clock=time.clock, sleep=time.sleep)

    for _ in range(30):
        await bucket.acquire()

    assert time.now - 100.0 == pytest.approx(2.0)


async def test_tokens_come_back_with_time() -> None:
    """After a quiet second the full burst is available again."""
    time = FakeTime()
    bucket = TokenBucket(2, clock=time.clock, sleep=time.sleep)
    await bucket.acquire()
    await bucket.acquire()

    time.now += 1.0

    assert [await bucket.acquire(), await bucket.acquire()] == [0.0, 0.0]
    assert time.sleeps == []


async def test_a_rate_below_one_per_second_still_allows_one_order() -> None:
    """max_orders_per_s = 0.5 means one order, then one every two seconds."""
    time = FakeTime()
    bucket = TokenBucket(0.5, clock=time.clock, sleep=time.sleep)

    first = await bucket.acquire()
    second = await bucket.acquire()

    assert first == 0.0
    assert second == pytest.approx(2.0)
