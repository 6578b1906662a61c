"""Strategies' risk limits in the risk guard (`RiskGuard`, issue 19), where the webhook's own checks cannot see
them: a strategy's halt set while its alert is on its way stops its next leg; its daily count holds on a broker
that does not join the journal (the leg's own `sending` mark is never counted against it); an alert that was
never recorded gives the strategy's count back."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

import attrs
import pytest
from helpers import ClientFactory, alert, leg, with_accounts
from test_strategies import (
    intraday,
    make_config_fixture,  # noqa: F401 - the `make_config` fixture, used by name
    net,
    post,
    start,
)
from test_strategies_review import manual

from tvbridge.config import StrategyConfig
from tvbridge.halt import halt_path, set_halt
from tvbridge.keys import JOURNAL
from tvbridge.models import Exchange, Instrument, OrderLeg, OrderType, Product, Side
from tvbridge.risk import RiskGuard, RiskLimitError
from tvbridge.sessions import EXCHANGE_TZ
from tvbridge.strategies import strategy_halt_path, use_strategy

if TYPE_CHECKING:
    from pathlib import Path

    from test_strategies import MakeConfig

    from tvbridge.config import Config
    from tvbridge.journal import Journal

ALPHA = "alpha-secret-0123456789abcdef"
BETA = "beta-secret-0123456789abcdef"


def order_leg(quantity: int = 10, symbol: str = "RELIANCE", side: Side = Side.BUY) -> OrderLeg:
    return OrderLeg(
        side=side,
        order_type=OrderType.LIMIT,
        quantity=quantity,
        exchange=Exchange.NSE,
        symbol=symbol,
        instrument=Instrument.EQUITY,
        product=Product.INTRADAY,
        price=Decimal(2900),
    )


def received(config: Config, account: str = "s") -> list[dict[str, Any]]:
    """The orders the scripted broker of `account` received, in order (its JSON-lines file)."""
    path = config.data_path(f"scripted-{account}.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_a_strategys_halt_stops_its_leg_already_on_its_way(tmp_path: Path) -> None:
    """`POST /admin/halt {"strategy": "alpha"}` after alpha's alert was accepted: alpha's next leg is refused
    "strategy alpha halted (REASON): nothing was sent" (the guard reads alpha's own switch before every leg, not
    only the global one), while beta's legs and the default strategy's still pass."""
    guard = RiskGuard(
        limits={},
        brokers={},
        journal=cast("Journal", object()),  # no daily count here: the journal is never asked
        halt_file=halt_path(tmp_path),
        clock=lambda: datetime(2026, 12, 7, 10, tzinfo=EXCHANGE_TZ),
        strategies={"alpha": StrategyConfig(secret=ALPHA), "beta": StrategyConfig(secret=BETA)},
    )
    with use_strategy("alpha"):
        await guard.before_send("s", order_leg())
    set_halt(strategy_halt_path(tmp_path, "alpha"), reason="drawdown", by="test")
    with use_strategy("alpha"), pytest.raises(RiskLimitError) as caught:
        await guard.before_send("s", order_leg())
    assert str(caught.value) == "strategy alpha halted (drawdown): nothing was sent"
    with use_strategy("beta"):
        await guard.before_send("s", order_leg())
    await guard.before_send("s", order_leg())
    assert (guard.halted("alpha"), guard.halted("beta")) == ("strategy alpha halted (drawdown): nothing was sent", None)


async def test_a_strategys_daily_count_on_a_remote_broker_sends_exactly_its_limit(
    make_client: ClientFactory, config: Config
) -> None:
    """alpha (`max_orders_per_day = 2`) trades on a broker that does not join the journal (the scripted broker,
    as Dhan): one order, a restart (the count is read again from the journal), a second order, and the third is
    refused naming alpha's limit; the broker received two orders. (A first leg marked `sending` with its alert
    before the count is read would count itself: alpha could send only one a day.)"""
    config = attrs.evolve(
        with_accounts(config, {"s": {"broker": "scripted"}}),
        strategies={"alpha": StrategyConfig(secret=ALPHA, accounts=("s",), max_orders_per_day=2)},
    )
    client = await make_client(config)
    first = await (await client.post("/webhook", json=alert(leg(symbol="A"), secret=ALPHA))).json()
    assert first["status"] == "success", first
    await client.close()
    client = await make_client(config)
    second = await (await client.post("/webhook", json=alert(leg(symbol="B"), secret=ALPHA))).json()
    assert second["status"] == "success", second
    third = await (await client.post("/webhook", json=alert(leg(symbol="C"), secret=ALPHA))).json()
    assert [(r["status"], r["message"]) for r in third["results"]] == [
        ("failed", "risk: 2 order(s) already sent today by strategy alpha; max_orders_per_day is 2")
    ]
    assert [o["symbol"] for o in received(config)] == ["A", "B"]


async def test_a_strategys_order_with_an_unknown_outcome_counts_in_its_daily_limit_after_a_restart(
    make_client: ClientFactory, config: Config
) -> None:
    """alpha (`max_orders_per_day = 1`): its first order's answer is lost (unknown outcome, no order id: it may be
    at the broker). After a restart the day's count, read from the journal, must include it: the next alert is
    refused by alpha's limit, not sent as if the day were empty."""
    config = attrs.evolve(
        with_accounts(config, {"s": {"broker": "scripted", "unknown_symbols": ["A"]}}),
        strategies={"alpha": StrategyConfig(secret=ALPHA, accounts=("s",), max_orders_per_day=1)},
    )
    client = await make_client(config)
    first = await (await client.post("/webhook", json=alert(leg(symbol="A"), secret=ALPHA))).json()
    assert [(r["status"], r["order_id"]) for r in first["results"]] == [("unknown", None)], first
    await client.close()
    client = await make_client(config)
    second = await (await client.post("/webhook", json=alert(leg(symbol="B"), secret=ALPHA))).json()
    assert [(r["status"], r["message"]) for r in second["results"]] == [
        ("failed", "risk: 1 order(s) already sent today by strategy alpha; max_orders_per_day is 1")
    ]
    assert received(config) == []


@pytest.mark.sqlite_only
async def test_a_strategys_alert_refused_503_gives_its_daily_count_back(
    make_client: ClientFactory, config: Config
) -> None:
    """alpha (`max_orders_per_day = 2`) on paper, whose book joins the alert's commit: one order booked, then an
    alert whose journal write fails (503: not recorded, nothing booked). The checks took alpha's count before the
    write; it is given back, so the third alert is booked and the fourth is refused by alpha's limit: two orders
    were sent today, not three."""
    config = attrs.evolve(config, strategies={"alpha": StrategyConfig(secret=ALPHA, max_orders_per_day=2)})
    client = await make_client(config)
    journal: Any = client.app[JOURNAL]  # the SQLite journal, whose database the test breaks for one write
    first = await (await client.post("/webhook", json=alert(leg(symbol="INFY", price="100"), secret=ALPHA))).json()
    assert first["status"] == "success", first
    await journal.database.write(
        lambda conn: conn.execute(
            "CREATE TRIGGER fail_alerts AFTER INSERT ON alerts BEGIN SELECT RAISE(ROLLBACK, 'disk gone'); END"
        )
    )
    second = await client.post("/webhook", json=alert(leg(symbol="TCS", price="100"), secret=ALPHA))
    assert second.status == 503
    await journal.database.write(lambda conn: conn.execute("DROP TRIGGER fail_alerts"))
    third = await (await client.post("/webhook", json=alert(leg(symbol="WIPRO", price="100"), secret=ALPHA))).json()
    assert third["status"] == "success", third
    fourth = await (await client.post("/webhook", json=alert(leg(symbol="SBIN", price="100"), secret=ALPHA))).json()
    assert [(r["status"], r["message"]) for r in fourth["results"]] == [
        ("failed", "risk: 2 order(s) already sent today by strategy alpha; max_orders_per_day is 2")
    ]


async def test_a_strategys_notional_limit_values_the_leg_at_its_price(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """alpha's own max_notional_per_order 30000: 10 x 2900 is sent, 11 x 2900 is refused naming alpha's limit and
    the notional (the leg's price values it, as for an account's limit)."""
    client = await start(aiohttp_client, make_config(alpha="max_notional_per_order = 30000"))
    assert (await post(client, alert(intraday(quantity="10"), secret=ALPHA)))["results"][0]["status"] == "success"
    over = (await post(client, alert(intraday(quantity="11"), secret=ALPHA)))["results"][0]
    assert (over["status"], over["message"]) == (
        "failed",
        "strategy alpha: risk: notional 31900 (11 x 2900) is over max_notional_per_order 30000",
    )
    assert await net(client) == 10


async def test_at_its_daily_count_a_strategy_still_closes_with_a_plain_order(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """alpha's max_orders_per_day 2, both used by BUYs of 10 and 5: a plain SELL of 5 (it only reduces alpha's
    own long) is sent and counted; a SELL of 20 (a reversal into a short) and a BUY are refused by the count."""
    client = await start(aiohttp_client, make_config(alpha="max_orders_per_day = 2"))
    for quantity in ("10", "5"):
        assert (await post(client, alert(intraday(quantity=quantity), secret=ALPHA)))["status"] == "success"
    closing = (await post(client, alert(intraday(quantity="5", transactionType="S"), secret=ALPHA)))["results"][0]
    assert closing["status"] == "success", closing
    reversal = (await post(client, alert(intraday(quantity="20", transactionType="S"), secret=ALPHA)))["results"][0]
    entry = (await post(client, alert(intraday(quantity="1"), secret=ALPHA)))["results"][0]
    for refused in (reversal, entry):
        assert (refused["status"], refused["message"]) == (
            "failed",
            "risk: 3 order(s) already sent today by strategy alpha; max_orders_per_day is 2",
        )
    assert await net(client) == 10


async def test_a_strategys_side_rule_judges_the_share_the_broker_still_holds(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """alpha (long_only) bought 10, then 6 were sold outside tvbridge: alpha's SELL of 10 would open a short of 6
    at the broker, so it is an entry and refused; a SELL of 4 closes what is left."""
    client = await start(aiohttp_client, make_config(alpha='allowed_sides = "long_only"'))
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    await manual(client, Side.SELL, 6)
    refused = (await post(client, alert(intraday(quantity="10", transactionType="S"), secret=ALPHA)))["results"][0]
    assert refused["status"] == "failed"
    assert refused["message"].startswith("strategy: allowed_sides is long_only"), refused
    closing = (await post(client, alert(intraday(quantity="4", transactionType="S"), secret=ALPHA)))["results"][0]
    assert closing["status"] == "success", closing
    assert await net(client) == 0


async def test_a_symbol_outside_a_strategys_symbols_is_refused_whatever_its_side(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """alpha: symbols ["RELIANCE"], long_only. A BUY of INFY passes the side rule but not the symbols: refused,
    nothing sent (the side rule passing does not clear the symbols' refusal)."""
    client = await start(aiohttp_client, make_config(alpha='symbols = ["RELIANCE"]\nallowed_sides = "long_only"'))
    infy = (await post(client, alert(intraday(symbol="INFY"), secret=ALPHA)))["results"][0]
    assert (infy["status"], infy["message"]) == (
        "failed",
        "strategy: symbol INFY is not in this strategy's symbols; nothing was sent",
    )
    assert await net(client) == 0
