"""Risk limits: an over-limit leg is refused before anything reaches the broker, with a message naming the limit."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import attrs
import pytest
from helpers import ClientFactory, alert, leg, with_accounts

from tvbridge.config import Config, RiskConfig
from tvbridge.errors import ConfigError
from tvbridge.models import Exchange, Instrument, OrderLeg, OrderType, Product, Side
from tvbridge.parsing import make_converter
from tvbridge.risk import RiskLimitError, check_leg


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
