"""How order follow-up paces its look-ups, driven step by step on a clock the test moves (no waiting): the
backoff doubles while nothing changes and is capped, look-ups on one account are spaced, a failing or silent
broker is asked again later, and journals from before follow-up open with their open orders followed.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import TYPE_CHECKING

import attrs
import pytest
from structlog.testing import capture_logs

from tvbridge.broker import BrokerUnavailableError, OrderResult, OrderState
from tvbridge.config import FollowupConfig
from tvbridge.followup import FollowUp
from tvbridge.journal import Journal, PlannedLeg
from tvbridge.models import LegResult, LegStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@attrs.define
class Clock:
    now: float = 0.0
    slept: list[float] = attrs.field(factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


@attrs.define
class Venue:
    """A broker's order book as `lookup()` sees it: the test sets what each client order id answers."""

    answers: dict[str, OrderResult | BaseException | None] = attrs.field(factory=dict)
    asked: list[tuple[float, str]] = attrs.field(factory=list)
    clock: Clock = attrs.field(factory=Clock)
    hang: bool = False

    async def lookup(self, client_order_id: str) -> OrderResult | None:
        self.asked.append((self.clock.now, client_order_id))
        if self.hang:
            await asyncio.Event().wait()
        answer = self.answers.get(client_order_id)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def leg_result(number: int, state: str = "open") -> LegResult:
    return LegResult(
        leg_number=number,
        account="acct",
        broker="stub",
        symbol="RELIANCE",
        exchange="NSE",
        transaction="B",
        quantity="10",
        order_type="LMT",
        product_type="C",
        price="2800",
        status=LegStatus.SUCCESS,
        message="order open",
        order_id=f"O{number}",
        client_order_id=f"A-{number}",
        order_state=state,
        filled_quantity=0,
    )


def open_order(number: int) -> OrderResult:
    return OrderResult(order_id=f"O{number}", state=OrderState.OPEN, client_order_id=f"A-{number}")


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    journal = Journal(tmp_path / "journal.sqlite3")
    await journal.open()
    yield journal
    await journal.close()


def make(journal: Journal, venue: Venue, *, lookup_timeout_s: float = 10.0, enabled: bool = True) -> FollowUp:
    settings = FollowupConfig(
        enabled=enabled,
        first_interval_s=1.0,
        max_interval_s=30.0,
        max_lookups_per_s=2.0,
        lookup_timeout_s=lookup_timeout_s,
    )
    return FollowUp(
        journal=journal,
        brokers={"acct": venue},  # type: ignore[dict-item]  # only lookup() is called
        config=settings,
        clock=venue.clock,
        sleep=venue.clock.sleep,
    )


async def step(followup: FollowUp, venue: Venue) -> float | None:
    """Move the clock to the next due look-up and run the pass; the seconds until the one after."""
    delay = await followup.check_due("acct")
    if delay is not None:
        venue.clock.now += delay
    return delay


async def test_the_wait_doubles_while_nothing_changes_up_to_the_cap(journal: Journal) -> None:
    """An order that stays open is asked about 1, 2, 4, 8, 16 s after each other, then every 30 s."""
    venue = Venue(answers={"A-1": open_order(1)})
    followup = make(journal, venue)
    followup.follow("A", [leg_result(1)])
    delays = [await step(followup, venue) for _ in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert [at for at, _ in venue.asked] == [1.0, 3.0, 7.0, 15.0, 31.0, 61.0, 91.0]


async def test_a_change_starts_the_wait_over_and_a_final_state_ends_it(journal: Journal) -> None:
    """After 1 + 2 + 4 s a partial fill is found: the next look-up is 1 s later; a fill ends the following."""
    await journal.record_alert(
        alert_id="A",
        alert_type="single_order",
        payload={},
        dedupe_key=None,
        source=None,
        legs=[PlannedLeg(account="acct", leg_number=1, client_order_id="A-1")],
    )
    venue = Venue(answers={"A-1": open_order(1)})
    followup = make(journal, venue)
    followup.follow("A", [leg_result(1)])
    assert [await step(followup, venue) for _ in range(3)] == [1.0, 2.0, 4.0]
    venue.answers["A-1"] = attrs.evolve(open_order(1), state=OrderState.PARTIALLY_FILLED, filled_quantity=3)
    assert await step(followup, venue) == 1.0
    venue.answers["A-1"] = attrs.evolve(open_order(1), state=OrderState.FILLED, filled_quantity=10)
    assert await step(followup, venue) is None
    asked = len(venue.asked)
    assert await followup.check_due("acct") is None
    assert len(venue.asked) == asked
    record = await journal.get_alert("A")
    assert record is not None
    assert (record["legs"][0]["order_state"], record["legs"][0]["filled_quantity"]) == ("filled", 10)


async def test_lookups_on_one_account_are_spaced(journal: Journal) -> None:
    """Three orders due at once, at most 2 look-ups a second: they go out 0.5 s apart."""
    venue = Venue(answers={f"A-{n}": open_order(n) for n in (1, 2, 3)})
    followup = make(journal, venue)
    followup.follow("A", [leg_result(n) for n in (1, 2, 3)])
    await step(followup, venue)
    await followup.check_due("acct")
    assert [at for at, _ in venue.asked] == [1.0, 1.5, 2.0]
    assert venue.clock.slept == [0.5, 0.5]


async def test_a_failing_lookup_is_logged_and_tried_again_later(journal: Journal) -> None:
    """A broker that cannot answer: logged with the error, asked again after a longer wait, never dropped."""
    venue = Venue(answers={"A-1": BrokerUnavailableError("Dhan unreachable: timeout")})
    followup = make(journal, venue)
    followup.follow("A", [leg_result(1)])
    with capture_logs() as logs:
        delays = [await step(followup, venue) for _ in range(3)]
    assert delays == [1.0, 2.0, 4.0]
    failed = [e for e in logs if e["event"] == "followup.lookup_failed"]
    assert [e["error"] for e in failed] == ["BrokerUnavailableError: Dhan unreachable: timeout"] * 2
    assert followup.followed("acct") == 1


async def test_a_lookup_that_hangs_times_out(journal: Journal) -> None:
    """`lookup_timeout_s` bounds every look-up: a hanging broker costs that long, and is asked again later."""
    venue = Venue(hang=True)
    followup = make(journal, venue, lookup_timeout_s=0.05)
    followup.follow("A", [leg_result(1)])
    venue.clock.now = 1.0
    with capture_logs() as logs:
        assert await followup.check_due("acct") == 2.0
    assert [e["error"] for e in logs if e["event"] == "followup.lookup_failed"] == ["timed out"]


async def test_an_order_the_broker_does_not_know_is_logged_once(journal: Journal) -> None:
    """`lookup()` answering None for an accepted order is odd: one warning, and it is still asked about."""
    venue = Venue()
    followup = make(journal, venue)
    followup.follow("A", [leg_result(1)])
    with capture_logs() as logs:
        for _ in range(4):
            await step(followup, venue)
    assert len([e for e in logs if e["event"] == "followup.not_found"]) == 1
    assert len(venue.asked) == 3
    assert followup.followed("acct") == 1


async def test_only_accepted_orders_that_are_not_final_are_followed(journal: Journal) -> None:
    """Filled, failed, dry-run and order-less legs are not followed; pending, open, trigger_pending and
    partially_filled are."""
    venue = Venue()
    followup = make(journal, venue)
    results = [
        leg_result(1, "pending"),
        leg_result(2, "open"),
        leg_result(3, "trigger_pending"),
        leg_result(4, "partially_filled"),
        leg_result(5, "filled"),
        leg_result(6, "dry_run"),
        attrs.evolve(leg_result(7), status=LegStatus.FAILED),
        attrs.evolve(leg_result(8), client_order_id=None),
    ]
    followup.follow("A", results)
    assert sorted(o.leg_number for o in followup.orders("acct")) == [1, 2, 3, 4]


async def test_disabled_follow_up_follows_nothing(journal: Journal) -> None:
    """`followup.enabled = false`: an open order is not followed and the broker is never asked."""
    venue = Venue(answers={"A-1": open_order(1)})
    followup = make(journal, venue, enabled=False)
    followup.follow("A", [leg_result(1)])
    venue.clock.now = 100.0
    assert await followup.check_due("acct") is None
    assert venue.asked == []


OLD_LEGS = """
CREATE TABLE legs (
    alert_id TEXT NOT NULL, account TEXT NOT NULL, leg_number INTEGER NOT NULL, client_order_id TEXT,
    state TEXT NOT NULL, order_id TEXT, message TEXT, result TEXT, updated_at TEXT NOT NULL,
    PRIMARY KEY (alert_id, account, leg_number)
)
"""
OLD_ALERTS = """
CREATE TABLE alerts (
    alert_id TEXT PRIMARY KEY, received_at TEXT NOT NULL, alert_type TEXT NOT NULL, dedupe_key TEXT, source TEXT,
    payload TEXT NOT NULL, status TEXT NOT NULL, response TEXT, updated_at TEXT NOT NULL
)
"""


async def test_a_journal_from_before_follow_up_opens_and_its_open_orders_are_followed(tmp_path: Path) -> None:
    """A journal written by the previous version (no order columns) opens; each leg's order state is taken
    from its stored result, so the orders it left open are followed after the upgrade (finished alerts only:
    unfinished ones belong to crash recovery)."""
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(OLD_ALERTS)
    conn.execute(OLD_LEGS)
    at = "2026-11-25T04:00:00+00:00"
    for alert_id, status in (("DONE", "success"), ("RUNNING", "accepted")):
        conn.execute(
            "INSERT INTO alerts VALUES (?, ?, 'single_order', NULL, NULL, '{}', ?, NULL, ?)", (alert_id, at, status, at)
        )
    rows = [("DONE", 1, "open"), ("DONE", 2, "filled"), ("RUNNING", 1, "open")]
    for alert_id, number, state in rows:
        result = {**attrs.asdict(leg_result(number, state)), "status": "success"}
        conn.execute(
            "INSERT INTO legs VALUES (?, 'acct', ?, ?, 'placed', ?, 'ok', ?, ?)",
            (alert_id, number, f"{alert_id}-{number}", f"O{number}", json.dumps(result), at),
        )
    conn.commit()
    conn.close()

    journal = Journal(path)
    await journal.open()
    try:
        record = await journal.get_alert("DONE")
        assert record is not None
        assert [leg["order_state"] for leg in record["legs"]] == ["open", "filled"]
        followup = make(journal, Venue())
        assert await followup.load() == 1
        assert [(o.alert_id, o.leg_number, o.what) for o in followup.orders("acct")] == [("DONE", 1, "B 10 RELIANCE")]
    finally:
        await journal.close()
    reopened = Journal(path)
    await reopened.open()  # a second open finds the columns there already
    await reopened.close()


async def test_on_a_shared_store_settle_looks_up_an_order_another_instance_placed(journal: Journal) -> None:
    """Several instances on one store: an order placed through another instance is in the store but not yet in
    this one's list (that takes one `recheck_s` round). A strategy's share is about to be read here, so `settle`
    looks it up now and records its fill, instead of reading the share without it."""
    await journal.record_alert(
        alert_id="A",
        alert_type="single_order",
        payload={},
        dedupe_key=None,
        source=None,
        legs=[PlannedLeg(account="acct", leg_number=1, client_order_id="A-1")],
    )
    await journal.finish_alert("A", "success", {}, [leg_result(1)])
    venue = Venue(answers={"A-1": attrs.evolve(open_order(1), state=OrderState.FILLED, filled_quantity=10)})

    async def follower() -> bool:
        return False

    followup = FollowUp(
        journal=journal,
        brokers={"acct": venue},  # type: ignore[dict-item]  # only lookup() is called
        config=FollowupConfig(first_interval_s=1.0, max_interval_s=30.0, max_lookups_per_s=2.0),
        clock=venue.clock,
        sleep=venue.clock.sleep,
        lead=follower,
    )
    await followup.settle("acct", ["A-1"])
    assert [coid for _, coid in venue.asked] == ["A-1"]
    record = await journal.get_alert("A")
    assert record is not None
    assert (record["legs"][0]["order_state"], record["legs"][0]["filled_quantity"]) == ("filled", 10)
