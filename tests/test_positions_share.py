"""A strategy's own position summed from its fills (`positions.book`, `positions.book_key`, issue 19), through the
real app on paper: a bracket its target or stop closed is nobody's share any more; today's fills count after
yesterday's intraday ones and after a flatten; an option's contract is keyed by its strike as written. Each case is
one where a wrong sum makes a strategy's EXIT_ALL close another strategy's position (or none of its own)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from helpers import alert, leg
from test_strategies import (
    ALPHA,
    BETA,
    admin,
    exit_all,
    intraday,
    make_config_fixture,  # noqa: F401 - the `make_config` fixture, used by name
    net,
    post,
    start,
)
from test_strategies_review import backdate_journal

from tvbridge.models import Exchange, Instrument, OptionType, OrderLeg, OrderType, Product, Side
from tvbridge.positions import StrategyFill, book, book_key
from tvbridge.sessions import EXCHANGE_TZ

if TYPE_CHECKING:
    from test_strategies import MakeConfig


async def status_positions(client: Any) -> list[dict[str, Any]]:
    """`strategy_positions` of `GET /status` (JSON), as `tvbridge status` shows them."""
    response = await client.get("/status", headers={**admin(client), "Accept": "application/json"})
    assert response.status == 200, await response.text()
    rows: list[dict[str, Any]] = (await response.json())["strategy_positions"]
    return rows


async def bracket_parts(client: Any, alert_id: str) -> dict[str, str]:
    """part -> state of the alert's one leg, as `GET /alerts/<id>` shows the journal's record."""
    response = await client.get(f"/alerts/{alert_id}", headers=admin(client))
    assert response.status == 200, await response.text()
    (found,) = (await response.json())["legs"]
    return {part["part"]: part["state"] for part in found["bracket"]}


# a bracket closed by its own target or stop


@pytest.mark.parametrize(("closed_by", "price"), [("target", "3001"), ("stop_loss", "2799")])
async def test_a_bracket_its_target_or_stop_closed_is_not_the_strategys_share(
    aiohttp_client: Any, make_config: MakeConfig, closed_by: str, price: str
) -> None:
    """alpha's bracket (buy 10 intraday, target 3000, stop 2800) is closed by its target (or its stop); the global
    secret (`default`) holds 10 of its own in the same contract. alpha's entry still has 10 filled in the journal,
    but its target's (stop's) fill closed them: alpha's EXIT_ALL sends nothing and default's 10 stay; default's
    EXIT_ALL sells its own 10. (Counting the entry alone, alpha's EXIT_ALL sold default's 10 and default's sent
    nothing.)"""
    client = await start(aiohttp_client, make_config())
    entry = await post(client, alert(intraday(quantity="10", target_price="3000", stoploss_price="2800"), secret=ALPHA))
    await post(client, alert(intraday(quantity="10")))
    assert await net(client) == 20
    # paper has no feed: an order's price is the market its resting orders see; a CNC buy of 1 is another
    # product, so it is in neither intraday share
    await post(client, alert(leg(quantity="1", price=price, productType="C")))
    assert await net(client) == 1 + 10  # the CNC 1 and default's intraday 10: alpha's bracket is closed

    body = await post(client, alert(exit_all(), secret=ALPHA))

    assert body["results"][0]["message"].startswith("nothing to close"), body
    assert await net(client) == 1 + 10
    other = "stop_loss" if closed_by == "target" else "target"
    assert await bracket_parts(client, entry["alert_id"]) == {
        "entry": "filled",
        closed_by: "filled",
        other: "cancelled",
    }
    assert [(r["strategy"], r["contract"], r["net_quantity"]) for r in await status_positions(client)] == [
        ("default", "NSE|RELIANCE|EQ||||C", 1),
        ("default", "NSE|RELIANCE|EQ||||I", 10),
    ]
    body = await post(client, alert(exit_all()))
    assert (body["results"][0]["transaction"], body["results"][0]["quantity"]) == ("S", "10"), body
    assert await net(client) == 1


# what a day's fills add up to


async def test_todays_fills_count_after_yesterdays_intraday_ones(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """alpha bought 10 intraday yesterday (the broker still lists them: its own square-off is late), then 4
    today: alpha's share is today's 4, so its EXIT_ALL sells 4 and leaves yesterday's 10 to default (its
    EXIT_ALL sells them). (Stopping at the first fill of an earlier day, the book lost today's 4.)"""
    client = await start(aiohttp_client, make_config())
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    await backdate_journal(client)
    await post(client, alert(intraday(quantity="4"), secret=ALPHA))
    assert await net(client) == 14

    body = await post(client, alert(exit_all(), secret=ALPHA))

    assert (body["results"][0]["transaction"], body["results"][0]["quantity"]) == ("S", "4"), body
    assert await net(client) == 10
    body = await post(client, alert(exit_all()))
    assert (body["results"][0]["transaction"], body["results"][0]["quantity"]) == ("S", "10"), body
    assert await net(client) == 0


async def test_a_strategys_fills_after_a_flatten_are_its_share(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """alpha 10, `POST /admin/flatten` closes it (every share in the contract starts again from 0), then alpha
    buys 3 and beta 5: /status shows alpha 3 and beta 5, and alpha's EXIT_ALL sells its 3, not beta's 5. (A book
    that stopped at the flatten, or kept its zero as "none", lost alpha's 3 or failed on it.)"""
    client = await start(aiohttp_client, make_config())
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    response = await client.post("/admin/flatten", json={"account": "paper", "confirm": True}, headers=admin(client))
    assert response.status == 200, await response.text()
    assert await net(client) == 0
    await post(client, alert(intraday(quantity="3"), secret=ALPHA))
    await post(client, alert(intraday(quantity="5"), secret=BETA))

    assert {r["strategy"]: r["net_quantity"] for r in await status_positions(client)} == {"alpha": 3, "beta": 5}
    body = await post(client, alert(exit_all(), secret=ALPHA))

    assert (body["results"][0]["transaction"], body["results"][0]["quantity"]) == ("S", "3"), body
    assert await net(client) == 5


# an option's contract key


async def test_an_options_share_is_keyed_by_its_strike_as_written(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """alpha buys 75 NIFTY 24000 CE intraday: /status names the contract `NFO|NIFTY|OPT|2026-12-29|24000|CE|I`,
    the key journaled with the leg (`position_key`). The key is stored: the fills a journal already holds are
    summed with those after an upgrade only while 24000 is written `24000` (not `2.4E+4`), and the strike is
    what the trader reads on the status page. alpha's EXIT_ALL then sells its 75."""
    client = await start(aiohttp_client, make_config())
    option = {
        "exchange": "NFO",
        "symbol": "NIFTY",
        "instrument": "OPT",
        "option_type": "CE",
        "strike_price": "24000",
        "expiry_date": "2026-12-29",
        "productType": "I",
        "price": "120",
    }
    await post(client, alert(leg(**option, quantity="75"), secret=ALPHA))

    assert await status_positions(client) == [
        {"account": "paper", "strategy": "alpha", "contract": "NFO|NIFTY|OPT|2026-12-29|24000|CE|I", "net_quantity": 75}
    ]
    body = await post(client, alert({**leg(**option), "manage_position": "EXIT_ALL"}, secret=ALPHA))
    assert (body["results"][0]["transaction"], body["results"][0]["quantity"]) == ("S", "75"), body


# `book` itself, on fills as the journal gives them


RELIANCE_I = book_key(
    OrderLeg(
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=1,
        exchange=Exchange.NSE,
        symbol="RELIANCE",
        instrument=Instrument.EQUITY,
        product=Product.INTRADAY,
    )
)


def stamp(at: datetime) -> str:
    """A time as the journal stamps `received_at` (UTC ISO, microseconds only when not 0)."""
    return at.astimezone(UTC).isoformat()


def test_an_intraday_fill_at_the_very_start_of_the_day_is_todays() -> None:
    """The day starts at 00:00 exchange time (`intraday_since`, stamped like the journal's `received_at`): a fill
    received at that instant is today's, one received a microsecond before is yesterday's and left out; a fill
    after a left-out one still counts."""
    midnight = datetime(2026, 12, 7, tzinfo=EXCHANGE_TZ)
    fills = [
        StrategyFill(
            strategy="alpha", key=RELIANCE_I, side="B", quantity=10, at=stamp(midnight - timedelta(microseconds=1))
        ),
        StrategyFill(strategy="alpha", key=RELIANCE_I, side="B", quantity=4, at=stamp(midnight)),
        StrategyFill(strategy="alpha", key=RELIANCE_I, side="S", quantity=1, at=stamp(midnight + timedelta(hours=1))),
    ]
    assert book(fills, intraday_since=stamp(midnight)) == {("alpha", RELIANCE_I): 3}


def test_without_a_day_start_every_intraday_fill_counts() -> None:
    """`intraday_since` left out: no day cut, every fill counts (what a caller that gives no day gets)."""
    fills = [
        StrategyFill(strategy="alpha", key=RELIANCE_I, side="B", quantity=10, at="2026-12-04T04:00:00+00:00"),
        StrategyFill(strategy="beta", key=RELIANCE_I, side="S", quantity=2, at="2026-12-07T04:00:00.250000+00:00"),
    ]
    assert book(fills) == {("alpha", RELIANCE_I): 10, ("beta", RELIANCE_I): -2}


def test_an_option_key_names_its_strike_in_plain_digits() -> None:
    """The key every leg is journaled with: strikes in plain digits whatever their trailing zeros."""
    call = OrderLeg(
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=75,
        exchange=Exchange.NFO,
        symbol=" nifty ",
        instrument=Instrument.OPTION,
        option_type=OptionType.CALL,
        strike_price=Decimal("24000.00"),
        expiry_date=date(2026, 12, 29),
        product=Product.MARGIN,
    )
    assert book_key(call) == "NFO|NIFTY|OPT|2026-12-29|24000|CE|M"
