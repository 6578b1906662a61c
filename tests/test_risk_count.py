"""The daily order count given back (`RiskGuard.give_back`): a leg whose checks took one of today's orders but whose
alert was never recorded (its journal write failed: 503, nothing booked, nothing sent) is not one of today's
orders. Given back to the exchange-time (IST) day it was taken from, and never below what was taken."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo

import attrs
import pytest
from helpers import SECRET, ClientFactory, alert, leg, with_accounts

from tvbridge.app import create_app
from tvbridge.config import RiskConfig, StrategyConfig
from tvbridge.keys import JOURNAL
from tvbridge.models import Exchange, Instrument, OrderLeg, OrderType, Product, Side
from tvbridge.parsing import make_converter
from tvbridge.risk import RiskGuard, RiskLimitError
from tvbridge.secretstore import resolve_credentials

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tvbridge.config import Config
    from tvbridge.journal import Journal

ALPHA = "alpha-secret-0123456789abcdef"
BETA = "beta-secret-0123456789abcdef"


def order_leg() -> OrderLeg:
    return OrderLeg(
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=10,
        exchange=Exchange.NSE,
        symbol="RELIANCE",
        instrument=Instrument.EQUITY,
        product=Product.CNC,
        price=Decimal(2900),
    )


def ist(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 12, day, hour, minute, second, tzinfo=ZoneInfo("Asia/Kolkata"))


class NothingSentYet:
    """The journal's side of the daily count: no order of account `s` was sent before the guard started."""

    async def count_orders(self, account: str, *, since: datetime) -> int:
        assert (account, since.tzinfo is not None) == ("s", True)
        return 0


@pytest.fixture
def utc_machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine's own time zone is UTC (as on most servers): a count keyed by the machine's date instead of
    the exchange's is then a different day from 18:30 UTC (IST midnight) to UTC midnight."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("utc_machine")
async def test_a_count_given_back_is_that_of_the_exchanges_day(tmp_path: Path) -> None:
    """`max_orders_per_day = 1`. At 00:30 IST (19:00 UTC the day before) a leg takes the day's one order and its
    alert is not recorded: given back, the next leg passes and the one after is refused. A leg taken at 23:59:59
    IST whose give-back runs after IST midnight gives nothing back and fails nothing: the new day's count is
    untouched (its one order still passes, the next is refused)."""
    now = [ist(7, 0, 30)]
    guard = RiskGuard(
        limits={"s": RiskConfig(max_orders_per_day=1)},
        brokers={},
        journal=cast("Journal", NothingSentYet()),
        halt_file=tmp_path / "HALTED",
        clock=lambda: now[0].astimezone(UTC),  # the app's clock is UTC
    )
    await guard.before_send("s", order_leg())
    guard.give_back("s")
    now[0] = ist(7, 0, 31)
    await guard.before_send("s", order_leg())
    with pytest.raises(RiskLimitError, match=r"^risk: 1 order\(s\) already sent today on account s;"):
        await guard.before_send("s", order_leg())

    now[0] = ist(7, 23, 59, 59)
    guard = RiskGuard(  # a fresh day's guard: the journal says nothing was sent
        limits={"s": RiskConfig(max_orders_per_day=1)},
        brokers={},
        journal=cast("Journal", NothingSentYet()),
        halt_file=tmp_path / "HALTED",
        clock=lambda: now[0].astimezone(UTC),
    )
    await guard.before_send("s", order_leg())
    now[0] = ist(8, 0, 0, 1)
    guard.give_back("s")  # yesterday's leg: nothing of today's count to give back
    await guard.before_send("s", order_leg())
    with pytest.raises(RiskLimitError, match=r"^risk: 1 order\(s\) already sent today on account s;"):
        await guard.before_send("s", order_leg())


@pytest.mark.sqlite_only
async def test_the_days_only_order_refused_503_is_given_back(make_client: ClientFactory, config: Config) -> None:
    """`max_orders_per_day = 1` on paper (booked in the alert's commit): the day's first alert's journal write
    fails (503: not recorded, nothing booked) after its checks took the day's one order. It is given back: the
    next alert is booked, the one after is refused by the limit, and the book holds that one order."""
    config = attrs.evolve(config, risk=RiskConfig(max_orders_per_day=1))
    client = await make_client(config)
    journal: Any = client.app[JOURNAL]  # the SQLite journal, whose database the test breaks for one write
    await journal.database.write(
        lambda conn: conn.execute(
            "CREATE TRIGGER fail_alerts AFTER INSERT ON alerts BEGIN SELECT RAISE(ROLLBACK, 'disk gone'); END"
        )
    )
    first = await client.post("/webhook", json=alert(leg(symbol="TCS", price="100")))
    assert first.status == 503, await first.text()
    await journal.database.write(lambda conn: conn.execute("DROP TRIGGER fail_alerts"))
    second = await (await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))).json()
    assert second["status"] == "success", second
    third = await (await client.post("/webhook", json=alert(leg(symbol="WIPRO", price="100")))).json()
    assert [(r["status"], r["message"]) for r in third["results"]] == [
        ("failed", "risk: 1 order(s) already sent today on account paper; max_orders_per_day is 1")
    ]
    await journal.settle()
    conn = sqlite3.connect(config.server.data_dir / "tvbridge.sqlite3")
    try:
        booked = conn.execute("SELECT client_order_id FROM paper_orders ORDER BY id").fetchall()
    finally:
        conn.close()
    assert booked == [(f"{second['alert_id']}-1",)]


async def commits_of(client: Any, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The answer to `body`, and how many journal commits it cost (its results handed over committed too)."""
    journal = client.app[JOURNAL]
    before = journal.database.batches
    response = await client.post("/webhook", json=body)
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    await journal.settle()
    return answer, journal.database.batches - before


@pytest.mark.sqlite_only
@pytest.mark.usefixtures("utc_machine")
async def test_with_daily_counts_a_paper_alert_is_one_commit_once_the_days_counts_are_read(
    aiohttp_client: Any, config: Config
) -> None:
    """The paper account and strategy alpha have a daily count, strategy beta has none, at 19:00 UTC (00:30 IST:
    the exchange's day is the machine's next). Once an alert of each has read today's counts, the next one is
    ONE journal commit (the alert, its order booked, its result: issue 22), as without a count: a count keyed
    by another day, or a strategy without a count taken for one still unread, would cost every alert two more."""
    config = attrs.evolve(
        config,
        risk=RiskConfig(max_orders_per_day=100),
        strategies={
            "alpha": StrategyConfig(secret=ALPHA, max_orders_per_day=100),
            "beta": StrategyConfig(secret=BETA),
        },
    )
    app = create_app(
        config, make_converter(), resolve_credentials(config), clock=lambda: datetime(2026, 12, 6, 19, tzinfo=UTC)
    )
    client = await aiohttp_client(app)
    for secret in (SECRET, ALPHA, BETA):
        first, _ = await commits_of(client, alert(leg(symbol="SBIN", price="100"), secret=secret))
        assert first["status"] == "success", first
        answer, cost = await commits_of(client, alert(leg(symbol="INFY", price="100"), secret=secret))
        assert (answer["status"], cost) == ("success", 1), secret


@pytest.mark.sqlite_only
@pytest.mark.parametrize(("settings", "expected"), [({}, 2), ({"max_orders_per_day": 100}, 3)])
async def test_a_remote_brokers_alert_without_a_daily_count_marks_its_leg_with_the_alert(
    make_client: ClientFactory, config: Config, settings: dict[str, Any], expected: int
) -> None:
    """A broker that does not join the journal (the scripted broker, as Dhan), no daily count: the alert is
    recorded with its first leg already `sending` (one commit), then its result (one more). With a daily count the
    leg is recorded `pending` and marked `sending` only once its checks pass: a third commit."""
    client = await make_client(with_accounts(config, {"s": {"broker": "scripted", **settings}}))
    await commits_of(client, alert(leg(symbol="SBIN")))
    answer, cost = await commits_of(client, alert(leg(symbol="INFY")))
    assert (answer["status"], cost) == ("success", expected)
