"""Risk limits: an over-limit leg is refused before anything reaches the broker, with a message naming the limit."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo

import attrs
import pytest
from helpers import STORES, ClientFactory, alert, leg, on_store, with_accounts

from tvbridge.config import Config, RiskConfig
from tvbridge.errors import ConfigError
from tvbridge.models import Exchange, Instrument, OrderLeg, OrderType, Product, Side
from tvbridge.parsing import make_converter
from tvbridge.risk import RiskGuard, RiskLimitError, check_leg

if TYPE_CHECKING:
    from pathlib import Path

    from tvbridge.journal import Journal


@pytest.fixture(params=STORES)
def config(config: Config, request: pytest.FixtureRequest) -> Config:
    """Every test here that uses the default config runs on the SQLite journal and on PostgreSQL."""
    return on_store(config, request)


def received(config: Config, account: str = "s") -> list[dict[str, Any]]:
    path = config.data_path(f"scripted-{account}.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def order_leg(quantity: int = 10, price: str = "0", symbol: str = "RELIANCE") -> OrderLeg:
    return OrderLeg(
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=quantity,
        exchange=Exchange.NSE,
        symbol=symbol,
        instrument=Instrument.EQUITY,
        product=Product.CNC,
        price=Decimal(price),
    )


@pytest.mark.parametrize(
    ("limits", "the_leg", "price", "message"),
    [
        (
            RiskConfig(max_qty_per_order=1000),
            order_leg(5000),
            None,
            "risk: quantity 5000 is over max_qty_per_order 1000",
        ),
        (
            RiskConfig(max_notional_per_order=Decimal(100000)),
            order_leg(50, "2900"),
            Decimal(2900),
            "risk: notional 145000 (50 x 2900) is over max_notional_per_order 100000",
        ),
        (
            RiskConfig(max_notional_per_order=Decimal(100000)),
            order_leg(50),
            None,
            (
                "risk: no price to check max_notional_per_order against (a market order without a price in the"
                " alert or a reference price): nothing was sent"
            ),
        ),
        (
            RiskConfig(blocked_symbols=("yesbank",)),
            order_leg(symbol="YESBANK"),
            None,
            "risk: symbol YESBANK is in blocked_symbols",
        ),
        (RiskConfig(allowed_symbols=("INFY",)), order_leg(), None, "risk: symbol RELIANCE is not in allowed_symbols"),
    ],
)
def test_check_leg_names_the_limit(limits: RiskConfig, the_leg: OrderLeg, price: Decimal | None, message: str) -> None:
    """Each limit refuses with a message that names it and the values compared."""
    with pytest.raises(RiskLimitError) as caught:
        check_leg(limits, the_leg, price)
    assert str(caught.value) == message


def test_check_leg_passes_within_limits() -> None:
    """A leg inside every limit passes."""
    limits = RiskConfig(
        max_qty_per_order=100,
        max_notional_per_order=Decimal(50000),
        allowed_symbols=("RELIANCE",),
        blocked_symbols=("X",),
    )
    check_leg(limits, order_leg(10, "2900"), Decimal(2900))


async def test_over_limit_leg_reaches_no_broker(make_client: ClientFactory, config: Config) -> None:
    """quantity over [risk] max_qty_per_order: leg failed with the limit named, the broker received nothing, and the
    later leg of the bracket is skipped."""
    config = attrs.evolve(with_accounts(config, {"s": {"broker": "scripted"}}), risk=RiskConfig(max_qty_per_order=1000))
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(quantity="5000"), leg(sort_order="2", symbol="INFY")))
    body = await response.json()
    assert response.status == 200
    assert body["status"] == "failed"
    assert [(r["status"], r["message"]) for r in body["results"]] == [
        ("failed", "risk: quantity 5000 is over max_qty_per_order 1000"),
        ("skipped", "skipped: leg 1 failed"),
    ]
    assert received(config) == []


async def test_account_limits_override_the_risk_section(make_client: ClientFactory, config: Config) -> None:
    """A limit in [accounts.NAME] applies to that account only; the table still builds the plugin (the risk
    keys are taken out before the broker sees them)."""
    config = with_accounts(config, {"s": {"broker": "scripted", "max_qty_per_order": 5}, "t": {"broker": "scripted"}})
    client = await make_client(config)
    body = await (await client.post("/webhook", json=alert(leg(quantity="10")))).json()
    by_account = {r["account"]: (r["status"], r["message"]) for r in body["results"]}
    assert by_account == {
        "s": ("failed", "risk: quantity 10 is over max_qty_per_order 5"),
        "t": ("success", "filled"),
    }
    assert received(config, "s") == []
    assert len(received(config, "t")) == 1


async def test_notional_uses_the_paper_reference_price(make_client: ClientFactory, config: Config) -> None:
    """A market order with price 0 on paper is valued at the account's reference price."""
    config = with_accounts(
        config,
        {"paper": {"broker": "paper", "prices": {"RELIANCE": 2900}, "max_notional_per_order": 10000}},
    )
    client = await make_client(config)
    body = await (await client.post("/webhook", json=alert(leg(quantity="4")))).json()
    assert body["results"][0]["message"] == "risk: notional 11600 (4 x 2900) is over max_notional_per_order 10000"
    body = await (await client.post("/webhook", json=alert(leg(quantity="3")))).json()
    assert body["results"][0]["status"] == "success"


async def test_orders_per_day_survive_a_restart(make_client: ClientFactory, config: Config) -> None:
    """max_orders_per_day counts today's orders from the journal: a restart does not give a fresh allowance."""
    config = attrs.evolve(with_accounts(config, {"s": {"broker": "scripted"}}), risk=RiskConfig(max_orders_per_day=2))
    client = await make_client(config)
    for symbol in ("A", "B"):
        body = await (await client.post("/webhook", json=alert(leg(symbol=symbol)))).json()
        assert body["status"] == "success"
    await client.close()
    client = await make_client(config)
    body = await (await client.post("/webhook", json=alert(leg(symbol="C")))).json()
    assert body["results"][0]["message"] == (
        "risk: 2 order(s) already sent today on account s; max_orders_per_day is 2"
    )
    assert [o["symbol"] for o in received(config)] == ["A", "B"]


def test_bad_account_limit_stops_the_start(tmp_path: Any) -> None:
    """A bad per-account limit is a config error naming the account."""
    from tvbridge.config import load_config  # noqa: PLC0415 - only here

    env = {
        "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path),
        "TVBRIDGE_ACCOUNTS__PAPER__BROKER": "paper",
        "TVBRIDGE_ACCOUNTS__PAPER__MAX_QTY_PER_ORDER": "0",
    }
    with pytest.raises(ConfigError, match=r"accounts.paper: max_qty_per_order must be > 0, got 0"):
        load_config(None, make_converter(), env, tmp_path)


def test_stop_market_is_valued_at_its_trigger_price() -> None:
    """An SL-M leg has no price: its trigger price values it for max_notional_per_order."""
    from tvbridge.risk import reference_price  # noqa: PLC0415 - only here

    stop = attrs.evolve(order_leg(100), order_type=OrderType.STOP_LOSS_MARKET, trigger_price=Decimal(2800))
    assert reference_price(None, stop) == Decimal(2800)
    with pytest.raises(RiskLimitError, match="notional 280000"):
        check_leg(RiskConfig(max_notional_per_order=Decimal(100000)), stop, reference_price(None, stop))


def test_a_leg_exactly_at_a_limit_passes() -> None:
    """The limits are maxima: a quantity equal to max_qty_per_order and a notional equal to
    max_notional_per_order are sent; one more unit is refused."""
    limits = RiskConfig(max_qty_per_order=10, max_notional_per_order=Decimal(29000))
    check_leg(limits, order_leg(10, "2900"), Decimal(2900))
    with pytest.raises(RiskLimitError, match="quantity 11 is over max_qty_per_order 10"):
        check_leg(limits, order_leg(11, "2900"), Decimal(2900))
    with pytest.raises(RiskLimitError, match=r"notional 29000.010 \(10 x 2900.001\)"):
        check_leg(limits, order_leg(10, "2900.001"), Decimal("2900.001"))


def test_a_price_or_trigger_below_one_rupee_values_the_leg() -> None:
    """A penny stock's price (or an SL-M trigger) under 1 is still the leg's price for the notional limit; a
    price or trigger of 0 means "none" and the paper account's reference price is used instead."""
    from tvbridge.risk import reference_price  # noqa: PLC0415 - only here

    cheap = order_leg(1000, "0.5")
    assert reference_price(None, cheap) == Decimal("0.5")
    stop = attrs.evolve(order_leg(1000), order_type=OrderType.STOP_LOSS_MARKET, trigger_price=Decimal("0.4"))
    assert reference_price(None, stop) == Decimal("0.4")
    assert reference_price(None, order_leg(1000)) is None  # a market order, and no broker to ask
    paper = attrs.evolve(order_leg(3), trigger_price=Decimal(0))

    class Paper:  # the shape of the paper broker: settings.prices
        settings = attrs.make_class("Settings", {"prices": attrs.field(default={"NSE:RELIANCE": 2900})})()

    assert reference_price(Paper(), paper) == Decimal(2900)  # type: ignore[arg-type]


class SentOrders:
    """The journal's side of the daily count: the times orders were sent, counted from `since` on."""

    def __init__(self) -> None:
        self.sent: list[datetime] = []

    async def count_orders(self, account: str, *, since: datetime) -> int:
        assert account == "s"
        return sum(1 for at in self.sent if at >= since)


def ist(day: int, hour: int, minute: int = 0, second: int = 0, microsecond: int = 0) -> datetime:
    return datetime(2026, 12, day, hour, minute, second, microsecond, tzinfo=ZoneInfo("Asia/Kolkata"))


async def test_the_daily_order_count_starts_at_midnight_in_india(tmp_path: Path) -> None:
    """max_orders_per_day counts per exchange-time (IST) day: orders sent late yesterday do not count today, an
    order sent at 00:00:00.000000 IST does, and a restart (a fresh guard seeded from the journal) later that day
    counts exactly today's orders. IST midnight is 18:30 UTC, so a UTC day would get both wrong."""
    sent = SentOrders()
    now = [ist(6, 23)]

    def guard() -> RiskGuard:
        return RiskGuard(
            limits={"s": RiskConfig(max_orders_per_day=2)},
            brokers={},
            journal=cast("Journal", sent),
            halt_file=tmp_path / "HALT",
            clock=lambda: now[0].astimezone(UTC),  # the app's clock is UTC
        )

    async def send(risk: RiskGuard, at: datetime) -> None:
        now[0] = at
        await risk.before_send("s", order_leg())
        sent.sent.append(at)

    risk = guard()
    await send(risk, ist(6, 23))
    await send(risk, ist(6, 23, 30))
    with pytest.raises(RiskLimitError, match="2 order"):
        await send(risk, ist(6, 23, 59, 59, 999999))
    await send(risk, ist(7, 0))  # a new IST day: yesterday's two do not count
    risk = guard()  # a restart the same day
    await send(risk, ist(7, 5, 7, 9, 123456))  # today's one order from the journal, and this one
    with pytest.raises(RiskLimitError, match=r"risk: 2 order\(s\) already sent today on account s"):
        await send(risk, ist(7, 5, 8))
    assert [at.hour for at in sent.sent] == [23, 23, 0, 5]


async def test_a_halt_stops_a_leg_already_on_its_way(tmp_path: Path) -> None:
    """The kill switch is checked again before each leg is sent, so an alert accepted just before
    `POST /admin/halt` sends nothing more: the leg fails with "trading halted (REASON): nothing was sent"."""
    from tvbridge.halt import set_halt  # noqa: PLC0415 - only here

    risk = RiskGuard(
        limits={},
        brokers={},
        journal=cast("Journal", SentOrders()),
        halt_file=tmp_path / "HALT",
        clock=lambda: ist(7, 10),
    )
    await risk.before_send("s", order_leg())
    set_halt(tmp_path / "HALT", reason="fat finger", by="test")
    with pytest.raises(RiskLimitError) as caught:
        await risk.before_send("s", order_leg())
    assert str(caught.value) == "trading halted (fat finger): nothing was sent"
