"""Strategy alerts on Dhan: the real dhanhq client against the fake Dhan API, through the real app. Target
positions read Dhan's positions (and the open orders tvbridge sent), relative strikes come from Dhan's instrument
master, percent_of_funds reads Dhan's fund limits; live and dry-run."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest
from fake_dhan import Misbehave
from helpers import alert, leg, now_iso, with_accounts

from tvbridge.app import create_app
from tvbridge.secretstore import resolve_credentials
from tvbridge.sessions import EXCHANGE_TZ

if TYPE_CHECKING:
    from pathlib import Path

    from aiohttp.test_utils import TestClient
    from fake_dhan import FakeDhan
    from helpers import ClientFactory

    from tvbridge.config import Config

RELIANCE = "2885"
NIFTY_DEC = "52175"
GRID = {  # the sample master's NIFTY 2026-12-08 options: strike -> (CE, PE) security ids
    strike: (str(44001 + 2 * i), str(44002 + 2 * i)) for i, strike in enumerate(range(23800, 24201, 50))
}


def on_dhan(config: Config, settings: dict[str, object], **extra: object) -> Config:
    return with_accounts(config, {"dhan": {"broker": "dhan", **settings, **extra}})


def target(size: int, n: int, **overrides: Any) -> dict[str, Any]:
    """A Pine strategy's leg: the position it wants, no side or quantity; `n` keeps alerts distinct."""
    body = leg(**overrides)
    body.pop("transactionType")
    body.pop("quantity")
    body["position_size"] = str(size)
    body["meta"] = {"interval": "5", "time": f"2026-12-01T09:{15 + n:02d}:00Z", "timenow": now_iso()}
    return body


async def post(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/webhook", json=body)
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


def sent(fake: FakeDhan) -> list[tuple[str, int]]:
    return [(p["transactionType"], p["quantity"]) for p in fake.placed()]


def fill(fake: FakeDhan, body: dict[str, Any], position: int) -> None:
    """The exchange fills the order the alert placed, and Dhan's positions show it."""
    fake.trade(body["results"][0]["order_id"], price="2900")
    fake.set_position(RELIANCE, position, trading_symbol="RELIANCE")


async def test_long_short_flat_on_live_dhan(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """Long 10 -> short 10 -> flat, one alert each, each order filled before the next: BUY 10, SELL 20, BUY 10."""
    client = await make_client(on_dhan(config, dhan_settings))

    for n, size in enumerate((10, -10, 0)):
        body = await post(client, alert(target(size, n)))
        assert body["results"][0]["status"] == "success", body
        fill(fake_dhan, body, size)

    assert sent(fake_dhan) == [("BUY", 10), ("SELL", 20), ("BUY", 10)]
    assert body["results"][0]["position_before"] == -10


async def test_a_resend_while_the_order_is_still_open_sends_nothing_more(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """Live, Dhan's position moves only when the order fills: a target resent while tvbridge's order is open counts
    that order as on its way, so nothing more is sent; after the fill, the same target again sends nothing."""
    client = await make_client(on_dhan(config, dhan_settings))

    first = await post(client, alert(target(10, 1)))
    resent = await post(client, alert(target(10, 2)))
    fill(fake_dhan, first, 10)
    after = await post(client, alert(target(10, 3)))

    assert sent(fake_dhan) == [("BUY", 10)]
    order_id = first["results"][0]["order_id"]
    assert resent["results"][0]["message"] == (
        f"position 0 and +10 still to fill in open order(s) {order_id} in NSE RELIANCE (C), target 10: already"
        " there, no order sent"
    )
    assert after["results"][0]["message"] == "position 10 in NSE RELIANCE (C), target 10: already there, no order sent"


async def test_a_target_on_another_contract_does_not_make_tvbridge_forget_its_open_order(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """RELIANCE's target order is still open when a target on INFY comes (no order of tvbridge's there, so Dhan's
    open orders are not read for it); RELIANCE's target sent again still counts its open order: nothing more is
    sent (forgotten, a second BUY 10 would double the position once both fill)."""
    client = await make_client(on_dhan(config, dhan_settings))

    first = await post(client, alert(target(10, 1)))
    other = await post(client, alert(target(5, 2, symbol="INFY")))
    resent = await post(client, alert(target(10, 3)))

    assert [r["results"][0]["status"] for r in (first, other, resent)] == ["success"] * 3
    assert sent(fake_dhan) == [("BUY", 10), ("BUY", 5)]
    assert resent["results"][0]["message"].startswith(
        f"position 0 and +10 still to fill in open order(s) {first['results'][0]['order_id']} in NSE RELIANCE"
    )


async def test_a_lost_alert_is_corrected_on_dhan(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """The account is long 10 (the strategy's flat alert was lost); the strategy's short 10 sells 20."""
    fake_dhan.set_position(RELIANCE, 10, trading_symbol="RELIANCE")
    client = await make_client(on_dhan(config, dhan_settings))

    body = await post(client, alert(target(-10, 1)))

    assert sent(fake_dhan) == [("SELL", 20)]
    assert (body["results"][0]["position_before"], body["results"][0]["position_target"]) == (10, -10)


async def test_dry_run_reads_the_position_and_shows_the_difference(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """Dry-run: the position is read (reading sends nothing), the reversal is computed and shown, nothing placed."""
    fake_dhan.set_position(RELIANCE, 10, trading_symbol="RELIANCE")
    client = await make_client(on_dhan(config, dhan_settings, live=False))

    body = await post(client, alert(target(-10, 1)))

    [result] = body["results"]
    assert (result["status"], result["transaction"], result["quantity"]) == ("test_mode", "S", "20"), result
    assert result["message"].startswith("position 10 in NSE RELIANCE (C), target -10: SELL 20 (a reversal")
    assert '"transaction_type":"SELL","quantity":20' in result["message"]
    assert fake_dhan.placed() == []


async def test_atm_strikes_on_live_dhan(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """NIFTY at 24012.35: CE ATM+2 is 24100, PE ATM-1 is 24050 (in the money for a put): Dhan receives those
    security ids, and the answer names the contracts."""
    client = await make_client(on_dhan(config, dhan_settings))
    option = {
        "exchange": "NFO",
        "symbol": "NIFTY",
        "instrument": "OPT",
        "productType": "M",
        "orderType": "LMT",
        "price": "100",
        "quantity": "65",
        "expiry_date": "2026-12-08",
        "underlying_price": "24012.35",
    }

    body = await post(
        client,
        alert(
            leg(**option, option_type="CE", strike_price="ATM+2"),
            leg(**option, option_type="PE", strike_price="ATM-1", sort_order="2"),
        ),
    )

    assert [p["securityId"] for p in fake_dhan.placed()] == [GRID[24100][0], GRID[24050][1]]
    assert [r["contract"] for r in body["results"]] == [
        f"NIFTY-Dec2026-24100-CE (expiry 2026-12-08, strike 24100, security_id {GRID[24100][0]})",
        f"NIFTY-Dec2026-24050-PE (expiry 2026-12-08, strike 24050, security_id {GRID[24050][1]})",
    ]


async def test_current_week_after_the_expiry_close_on_dhan_dry_run(
    aiohttp_client: Any, converter: Any, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """At 15:31 IST on the 2026-12-08 expiry day, current_week is 2026-12-15: the dry run resolves that contract."""
    config = on_dhan(config, dhan_settings, live=False)
    moment = datetime(2026, 12, 8, 15, 31, tzinfo=EXCHANGE_TZ)
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(config, converter, resolve_credentials(config), clock=lambda: moment)
    )
    option = {"exchange": "NFO", "symbol": "NIFTY", "instrument": "OPT", "productType": "M", "quantity": "65"}

    body = await post(client, alert(leg(**option, option_type="CE", strike_price="24000", expiry_date="current_week")))

    [result] = body["results"]
    assert result["status"] == "test_mode", result
    assert result["contract"] == "NIFTY-Dec2026-24000-CE (expiry 2026-12-15, strike 24000, security_id 44103)"
    assert fake_dhan.placed() == []


async def test_percent_of_funds_reads_dhans_fund_limits(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """50% of Dhan's available balance (100000 on the fake) at price 2500 is 20 shares, sent live."""
    client = await make_client(on_dhan(config, dhan_settings))

    body = await post(
        client, alert(leg(orderType="LMT", price="2500", quantity_type="percent_of_funds", quantity="50"))
    )

    assert sent(fake_dhan) == [("BUY", 20)]
    assert body["results"][0]["message"].startswith("sized: 50% of funds 100000")
    assert any(r.path == "/v2/fundlimit" for r in fake_dhan.requests)


async def test_a_multiplier_on_the_dhan_account_only(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """Dhan live with quantity_multiplier 2 and a paper shadow with 1, both counting lots: one NIFTY lot is 130
    units on Dhan and 65 on paper; half a lot on paper would be refused, never rounded up."""
    from tvbridge_brokers.dhan.instruments import sample_master_path  # noqa: PLC0415 - only here

    accounts: dict[str, dict[str, Any]] = {
        "dhan": {"broker": "dhan", **dhan_settings, "quantity_multiplier": 2, "quantity_unit": "lots"},
        "shadow": {"broker": "paper", "instruments_path": str(sample_master_path()), "quantity_unit": "lots"},
    }
    client = await make_client(with_accounts(config, accounts))
    future = {"exchange": "NFO", "symbol": "NIFTY1!", "instrument": "FUT", "productType": "M"}

    body = await post(client, alert(leg(**future, orderType="LMT", price="24000", quantity="1")))

    assert {r["account"]: r["quantity"] for r in body["results"]} == {"dhan": "130", "shadow": "65"}
    assert [(p["securityId"], p["quantity"]) for p in fake_dhan.placed()] == [(NIFTY_DEC, 130)]


async def test_unreadable_fund_limits_refuse_the_leg(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """Fund limits that cannot be read are not "no funds" and not a guess: the leg fails, nothing is placed."""
    client = await make_client(on_dhan(config, dhan_settings))
    fake_dhan.next_reply("funds", Misbehave.html())

    body = await post(
        client, alert(leg(orderType="LMT", price="2500", quantity_type="percent_of_funds", quantity="50"))
    )

    [result] = body["results"]
    assert result["status"] == "failed"
    assert result["message"].startswith("not sent: cannot read Dhan's fund limits"), result["message"]
    assert fake_dhan.placed() == []


async def test_paper_funds_must_be_a_positive_amount(tmp_path: Path) -> None:
    """A paper account's `funds` is checked like a price: a typo stops the start naming the key."""
    from tvbridge.broker import BrokerContext  # noqa: PLC0415 - only here
    from tvbridge_brokers.paper import PaperBroker  # noqa: PLC0415 - only here

    with pytest.raises(ValueError, match=r"^funds: 'lots' is not a price"):
        PaperBroker.from_settings({"funds": "lots"}, BrokerContext(account="paper", data_dir=tmp_path))


async def test_a_flat_target_after_an_exit_that_is_still_open_sends_nothing(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """EXIT_ALL and targets are one mechanism: a flat target arriving while tvbridge's EXIT_ALL order is still open
    counts that exit as on its way, so the position is not closed twice."""
    fake_dhan.set_position(RELIANCE, 10, trading_symbol="RELIANCE")
    client = await make_client(on_dhan(config, dhan_settings))
    exit_leg = {**leg(), "manage_position": "EXIT_ALL"}
    exit_leg.pop("quantity")

    await post(client, alert(exit_leg))
    flat = await post(client, alert(target(0, 1)))

    assert sent(fake_dhan) == [("SELL", 10)]
    assert "-10 still to fill in open order(s)" in flat["results"][0]["message"]
    assert flat["results"][0]["message"].endswith("target 0: already there, no order sent")


@pytest.mark.parametrize(
    ("fields", "units"),
    [
        ({"quantity_type": "capital", "quantity": "2000000", "price": "24000"}, 65),  # 83.33 x 1.5 = 125
        ({"quantity_type": "risk", "quantity": "13000", "price": "24000", "triggerPrice": "23900"}, 195),  # 130 x 1.5
        ({"quantity_type": "percent_of_funds", "quantity": "50", "price": "300"}, 195),  # 166.67 x 1.5 = 250
        ({"quantity": "1", "price": "24000"}, 65),  # 1 lot = 65 x 1.5 = 97.5
    ],
)
async def test_each_sizing_type_in_lots_on_dhan_dry_run(
    make_client: ClientFactory,
    config: Config,
    fake_dhan: FakeDhan,
    dhan_settings: dict[str, object],
    *,
    fields: dict[str, str],
    units: int,
) -> None:
    """NIFTY futures (lot 65) on a dry-run account counting lots, with quantity_multiplier 1.5: each sizing type's
    result is multiplied and rounded down to whole lots, and that is the quantity of the place_order Dhan would
    get (funds read from Dhan's fund limits: 100000 on the fake)."""
    config = on_dhan(config, dhan_settings, live=False, quantity_multiplier=1.5, quantity_unit="lots")
    client = await make_client(config)
    future = {"exchange": "NFO", "symbol": "NIFTY1!", "instrument": "FUT", "productType": "M", "orderType": "LMT"}

    body = await post(client, alert(leg(**{**future, **fields})))

    [result] = body["results"]
    assert (result["status"], result["quantity"]) == ("test_mode", str(units)), result
    assert f'"quantity":{units},' in result["message"]
    assert "x quantity_multiplier 1.5" in result["message"]
    assert fake_dhan.placed() == []


async def test_below_one_lot_is_refused_on_dhan(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """Risk 1000 over 100 points is 10 units x 1.5 = 15, below one NIFTY lot of 65: refused with the numbers."""
    client = await make_client(on_dhan(config, dhan_settings, quantity_multiplier=1.5))
    future = {"exchange": "NFO", "symbol": "NIFTY1!", "instrument": "FUT", "productType": "M", "orderType": "LMT"}

    body = await post(
        client, alert(leg(**future, quantity_type="risk", quantity="1000", price="24000", triggerPrice="23900"))
    )

    assert body["results"][0]["message"] == (
        "not sent: quantity_type risk: risk 1000 / |price 24000 - stop 23900| 100 x quantity_multiplier 1.5 = 15"
        " units, below one lot of 65 units of NIFTY1!: not sent (never rounded up)"
    )
    assert fake_dhan.placed() == []
