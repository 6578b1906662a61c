"""Strategy alerts on paper, through the real app: target positions (`position_size`, `market_position`), options
chosen relative to the market (`strike_price: ATM+N`, `expiry_date: current_week`) and sizing (`quantity_type`,
`quantity_multiplier`). Paper reads Dhan's shipped sample master, so the contracts are the ones Dhan would take."""

from __future__ import annotations

import asyncio
import csv
import json
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from helpers import alert, leg, now_iso, with_accounts
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from tvbridge.app import create_app
from tvbridge.config import ExtraSession, load_config
from tvbridge.errors import ConfigError, JournalError
from tvbridge.keys import BROKERS, CREDENTIALS, JOURNAL
from tvbridge.secretstore import resolve_credentials
from tvbridge.sessions import EXCHANGE_TZ
from tvbridge_brokers.dhan.instruments import sample_master_path

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from aiohttp.test_utils import TestClient
    from helpers import ClientFactory

    from tvbridge.config import Config
    from tvbridge_brokers.paper import PaperBroker
    from tvbridge_brokers.paper.models import PaperOrder

PRICES = {"RELIANCE": 2900, "INFY": 1500}


def on_paper(config: Config, **extra: Any) -> Config:
    account = {"broker": "paper", "prices": PRICES, "instruments_path": str(sample_master_path()), **extra}
    return with_accounts(config, {"paper": account})


def target(size: int | None = None, n: int = 0, **overrides: Any) -> dict[str, Any]:
    """A Pine strategy's leg: no transactionType, no quantity, the position it wants; `n` makes each alert
    distinct (a real strategy's alerts differ in time), so dedupe does not answer for tvbridge."""
    body = leg(**overrides)
    body.pop("transactionType")
    body.pop("quantity")
    if size is not None:
        body["position_size"] = str(size)
    body["meta"] = {"interval": "5", "time": f"2026-12-01T09:{15 + n:02d}:00Z", "timenow": now_iso()}
    return body


async def post(client: Any, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = await client.post("/webhook", json=body)
    assert response.status == status, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


def csv_rows(config: Config) -> list[dict[str, str]]:
    with config.data_path(config.order_log.file).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


async def positions(client: Any, account: str = "paper") -> dict[str, int]:
    found = await client.app[BROKERS][account].positions()
    return {p.contract.symbol: p.net_quantity for p in found}


async def paper_orders(client: Any, account: str = "paper") -> list[PaperOrder]:
    paper: PaperBroker = client.app[BROKERS][account]
    return await paper.orders()


async def stored(client: Any, alert_id: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {client.app[CREDENTIALS].admin_token}"}
    answer: dict[str, Any] = await (await client.get(f"/alerts/{alert_id}", headers=headers)).json()
    return answer


# target positions


async def test_long_10_short_10_flat_each_one_alert(make_client: ClientFactory, config: Config) -> None:
    """Long 10 buys 10; short 10 is one SELL of 20 (a reversal); flat buys 10 back. The response, the order log
    and the journal show the position before, the target and what was sent."""
    config = on_paper(config)
    client = await make_client(config)

    sent, messages = [], []
    for n, size in enumerate((10, -10, 0)):
        body = await post(client, alert(target(size, n)))
        [result] = body["results"]
        assert result["status"] == "success", result
        sent.append((result["transaction"], result["quantity"], result["position_before"], result["position_target"]))
        messages.append(result["message"])
        assert (await positions(client)).get("RELIANCE", 0) == size
    assert sent == [("B", "10", 0, 10), ("S", "20", 10, -10), ("B", "10", -10, 0)]
    assert messages[1].startswith("position 10 in NSE RELIANCE (C), target -10: SELL 20 (a reversal, in one order)")
    journal = await stored(client, body["alert_id"])
    assert (journal["legs"][0]["result"]["position_before"], journal["legs"][0]["result"]["position_target"]) == (
        -10,
        0,
    )
    rows = csv_rows(config)
    assert [(r["transaction"], r["quantity"]) for r in rows] == [("B", "10"), ("S", "20"), ("B", "10")]
    assert "position 10 in NSE RELIANCE (C), target -10: SELL 20" in rows[1]["message"]


async def test_market_position_with_its_size_is_the_same_target(make_client: ClientFactory, config: Config) -> None:
    """`market_position: short` with `market_position_size: 5` is a target of -5; `flat` closes it."""
    client = await make_client(on_paper(config))

    short = await post(client, alert(target(n=1, market_position="short", market_position_size="5")))
    flat = await post(client, alert(target(n=2, market_position="flat")))

    assert [(r["transaction"], r["quantity"]) for b in (short, flat) for r in b["results"]] == [("S", "5"), ("B", "5")]
    assert await positions(client) == {}


async def test_the_same_target_twice_sends_once(make_client: ClientFactory, config: Config) -> None:
    """A resent target (a TradingView retry, a strategy repeating itself) finds the position there: nothing sent,
    success, and the message says so."""
    config = on_paper(config)
    client = await make_client(config)

    first = await post(client, alert(target(10, 1)))
    second = await post(client, alert(target(10, 2)))

    assert first["results"][0]["quantity"] == "10"
    [again] = second["results"]
    assert (again["status"], again["transaction"], again["quantity"], again["order_id"]) == ("success", "", "0", None)
    assert again["message"] == "position 10 in NSE RELIANCE (C), target 10: already there, no order sent"
    assert (again["account"], again["leg_number"], again["client_order_id"]) == ("paper", 1, f"{second['alert_id']}-1")
    assert len(await paper_orders(client)) == 1
    assert await positions(client) == {"RELIANCE": 10}


async def test_a_target_already_there_records_no_quantity_even_when_the_alert_sends_pines(
    make_client: ClientFactory, config: Config
) -> None:
    """Pine's `quantity` ({{strategy.order.contracts}}) may come with the target (docs/strategy-alerts.md: "send
    them or leave them out"). Already at the target nothing is sent, so the answer, the journal and the order log
    row say quantity 0, not the alert's 10: a row claiming 10 for an order never sent misleads a reconciliation."""
    config = on_paper(config)
    client = await make_client(config)

    def with_pines(n: int) -> dict[str, Any]:
        return {**target(10, n), "transactionType": "B", "quantity": "10"}

    await post(client, alert(with_pines(1)))
    second = await post(client, alert(with_pines(2)))

    [again] = second["results"]
    assert (again["status"], again["transaction"], again["quantity"], again["order_id"]) == ("success", "", "0", None)
    journal = await stored(client, second["alert_id"])
    assert (journal["legs"][0]["result"]["quantity"], journal["legs"][0]["result"]["transaction"]) == ("0", "")
    rows = csv_rows(config)
    assert [(r["alert_id"], r["transaction"], r["quantity"]) for r in rows] == [
        (rows[0]["alert_id"], "B", "10"),
        (second["alert_id"], "", "0"),
    ]
    assert len(await paper_orders(client)) == 1
    assert await positions(client) == {"RELIANCE": 10}


async def test_a_lost_alert_is_corrected_by_the_next(make_client: ClientFactory, config: Config) -> None:
    """Long 10, then the strategy goes flat (that alert is lost), then short 10: the short alert sells 20, so the
    account ends where the strategy is."""
    client = await make_client(on_paper(config))

    await post(client, alert(target(10, 1)))
    # alert(target(0, 2)) never arrives
    body = await post(client, alert(target(-10, 3, transactionType="S", quantity="10")))

    [result] = body["results"]
    assert (result["transaction"], result["quantity"], result["position_before"]) == ("S", "20", 10)
    assert await positions(client) == {"RELIANCE": -10}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"position_size": "-10", "market_position": "long"},
            "order_legs[0].market_position: long contradicts position_size -10",
        ),
        (
            {"position_size": "10", "market_position": "long", "market_position_size": "5"},
            "order_legs[0].market_position_size: 5 contradicts position_size 10",
        ),
        (
            {"market_position": "flat", "market_position_size": "5"},
            "order_legs[0].market_position_size: 5 contradicts market_position flat",
        ),
        (
            {"position_size": "0", "manage_position": "EXIT_ALL"},
            "order_legs[0].manage_position: EXIT_ALL contradicts a target position (position_size 0 closes it)",
        ),
    ],
)
async def test_a_contradiction_is_refused_showing_both(
    make_client: ClientFactory, config: Config, fields: dict[str, str], expected: str
) -> None:
    """An alert that says two different things about the target is a 422 naming both values; nothing is sent."""
    client = await make_client(on_paper(config))

    body = await post(client, alert({**target(), **fields}), status=422)

    assert expected in body["errors"], body["errors"]
    assert await paper_orders(client) == []


async def test_a_target_in_lots_times_the_multiplier_on_one_of_two_accounts(
    make_client: ClientFactory, config: Config
) -> None:
    """Two paper accounts, `quantity_multiplier = 2` on one: position_size 1 lot of NIFTY futures is 65 units on
    the shadow and 130 on the doubled account, each read and moved on its own."""
    master = str(sample_master_path())
    accounts: dict[str, dict[str, Any]] = {
        "live": {"broker": "paper", "instruments_path": master, "quantity_multiplier": 2, "quantity_unit": "lots"},
        "shadow": {"broker": "paper", "instruments_path": master, "quantity_unit": "lots"},
    }
    client = await make_client(with_accounts(config, accounts))
    nifty = {"exchange": "NFO", "symbol": "NIFTY1!", "instrument": "FUT", "productType": "M", "price": "24000"}

    body = await post(client, alert(target(1, 1, orderType="LMT", **nifty)))
    again = await post(client, alert(target(-1, 2, orderType="LMT", **nifty)))

    quantities = {r["account"]: (r["transaction"], r["quantity"]) for r in body["results"]}
    assert quantities == {"live": ("B", "130"), "shadow": ("B", "65")}
    reversed_ = {r["account"]: (r["transaction"], r["quantity"], r["position_target"]) for r in again["results"]}
    assert reversed_ == {"live": ("S", "260", -130), "shadow": ("S", "130", -65)}
    assert "target 1 lot(s) x quantity_multiplier 2 = 130 units" in body["results"][0]["message"]


# sizing


@pytest.mark.parametrize(
    ("fields", "quantity", "note"),
    [
        (
            {"quantity_type": "capital", "quantity": "100000", "price": "2900"},
            "34",
            "sized: capital 100000 / price 2900 = 34.48 units, rounded down to 34",
        ),
        (
            {"quantity_type": "percent_of_funds", "quantity": "10", "price": "2900"},
            "6",
            "sized: 10% of funds 200000 = 20000 / price 2900 = 6.9 units, rounded down to 6",
        ),
        (
            {"quantity_type": "risk", "quantity": "1000", "price": "2900", "triggerPrice": "2880"},
            "50",
            "sized: risk 1000 / |price 2900 - stop 2880| 20 = 50 units, rounded down to 50",
        ),
    ],
)
async def test_each_sizing_type_on_equity(
    make_client: ClientFactory, config: Config, fields: dict[str, str], quantity: str, note: str
) -> None:
    """capital, percent_of_funds (paper's `funds` setting) and risk: the units sent, and how they were computed
    in the answer and the order log."""
    config = on_paper(config, funds=200000)
    client = await make_client(config)

    body = await post(client, alert(leg(orderType="LMT", **fields)))

    [result] = body["results"]
    assert (result["status"], result["quantity"]) == ("success", quantity), result
    assert result["message"].startswith(f"{note}; "), result["message"]  # then the broker's own message
    assert "contract" not in result  # no contract was chosen: the leg named its own
    [order] = await paper_orders(client)
    assert order.quantity == int(quantity)
    [row] = csv_rows(config)
    assert (row["quantity"], row["message"].startswith(note)) == (quantity, True)


async def test_sizing_rounds_down_to_whole_lots_and_refuses_below_one_lot(
    make_client: ClientFactory, config: Config
) -> None:
    """capital 2,000,000 at 24000 is 83.33 NIFTY units: one lot of 65 is sent; 1,000,000 is 41.67 units, below
    one lot: refused with the numbers, nothing sent, never rounded up."""
    client = await make_client(on_paper(config))
    nifty = {"exchange": "NFO", "symbol": "NIFTY1!", "instrument": "FUT", "productType": "M", "orderType": "LMT"}

    one_lot = await post(client, alert(leg(quantity_type="capital", quantity="2000000", price="24000", **nifty)))
    too_small = await post(client, alert(leg(quantity_type="capital", quantity="1000000", price="24000", **nifty)))

    assert one_lot["results"][0]["quantity"] == "65"
    assert "rounded down to 65 (1 lot(s) of 65)" in one_lot["results"][0]["message"]
    [refused] = too_small["results"]
    assert refused["status"] == "failed"
    assert refused["message"] == (
        "not sent: quantity_type capital: capital 1000000 / price 24000 = 41.67 units, below one lot of 65 units"
        " of NIFTY1!: not sent (never rounded up)"
    )
    assert (refused["account"], refused["leg_number"], refused["client_order_id"]) == (
        "paper",
        1,
        f"{too_small['alert_id']}-1",
    )
    assert len(await paper_orders(client)) == 1


async def test_the_multiplier_scales_one_account_and_risk_limits_see_the_final_quantity(
    make_client: ClientFactory, config: Config
) -> None:
    """quantity 10 with `quantity_multiplier = 2` on one of two accounts: 20 there, 10 on the other; an account
    whose max_qty_per_order is under the multiplied quantity refuses it."""
    accounts: dict[str, dict[str, Any]] = {
        "live": {"broker": "paper", "prices": PRICES, "quantity_multiplier": 2},
        "shadow": {"broker": "paper", "prices": PRICES},
        "capped": {"broker": "paper", "prices": PRICES, "quantity_multiplier": 3, "max_qty_per_order": 25},
    }
    client = await make_client(with_accounts(config, accounts))

    body = await post(client, alert(leg(quantity="10")))

    results = {r["account"]: (r["status"], r["quantity"]) for r in body["results"]}
    assert results == {"live": ("success", "20"), "shadow": ("success", "10"), "capped": ("failed", "30")}
    capped = next(r for r in body["results"] if r["account"] == "capped")
    assert "risk: quantity 30 is over max_qty_per_order 25" in capped["message"]
    assert [o.quantity for o in await paper_orders(client, "live")] == [20]
    assert await paper_orders(client, "capped") == []


async def test_sizing_needs_a_price(make_client: ClientFactory, config: Config) -> None:
    """capital sizing without a price cannot be computed: 422 naming price."""
    client = await make_client(on_paper(config))

    body = await post(client, alert(leg(quantity_type="capital", quantity="100000")), status=422)

    assert "order_legs[0].price: must be > 0 for quantity_type capital (sizing uses it)" in body["errors"]


# options relative to the market

NIFTY_OPTION = {"exchange": "NFO", "symbol": "NIFTY", "instrument": "OPT", "productType": "M", "orderType": "LMT"}


@pytest.mark.parametrize(
    ("option_type", "strike", "expected"),
    [
        ("CE", "ATM", "24000"),
        ("CE", "ATM+2", "24100"),
        ("CE", "ATM-1", "23950"),
        ("PE", "ATM", "24000"),
        ("PE", "ATM+2", "23900"),
        ("PE", "ATM-1", "24050"),
    ],
)
async def test_atm_strikes_from_the_master_and_the_underlying_price(
    make_client: ClientFactory, config: Config, option_type: str, strike: str, expected: str
) -> None:
    """NIFTY at 24012.35 on the 2026-12-08 grid (50 apart): ATM is 24000; +N is out of the money (higher for CE,
    lower for PE), -N in the money. The chosen contract is in the answer, the journal and the order log row."""
    config = on_paper(config)
    client = await make_client(config)
    body_leg = leg(
        **NIFTY_OPTION,
        option_type=option_type,
        strike_price=strike,
        expiry_date="2026-12-08",
        underlying_price="24012.35",
        quantity="65",
        price="100",
    )

    with capture_logs(processors=[merge_contextvars]) as events:
        body = await post(client, alert(body_leg))

    [result] = body["results"]
    assert result["status"] == "success", result
    contract = f"NIFTY-Dec2026-{expected}-{option_type} (expiry 2026-12-08, strike {expected}, security_id "
    assert result["contract"].startswith(contract), result["contract"]
    assert result["message"].startswith(f"{result['contract']}; "), result["message"]
    [chosen] = [e for e in events if e["event"] == "leg.contract_chosen"]
    assert {k: chosen.get(k) for k in ("log_level", "alert_id", "leg", "account", "contract")} == {
        "log_level": "info",
        "alert_id": body["alert_id"],
        "leg": 1,
        "account": "paper",
        "contract": result["contract"],
    }
    [order] = await paper_orders(client)
    assert str(order.strike_price) == expected
    assert csv_rows(config)[0]["message"].startswith(contract)
    assert (await stored(client, body["alert_id"]))["legs"][0]["result"]["contract"] == result["contract"]


async def test_a_strike_off_the_grid_is_refused_with_the_nearest_listed(
    make_client: ClientFactory, config: Config
) -> None:
    """ATM+5 for CE at 24012.35 would be 24250; the grid ends at 24200: refused, the nearest strikes named."""
    client = await make_client(on_paper(config))
    body_leg = leg(
        **NIFTY_OPTION,
        option_type="CE",
        strike_price="ATM+5",
        expiry_date="2026-12-08",
        underlying_price="24012.35",
        quantity="65",
        price="100",
    )

    body = await post(client, alert(body_leg))

    [result] = body["results"]
    assert result["status"] == "failed"
    assert result["message"] == (
        "not sent: strike_price ATM+5: ATM is 24000 at underlying_price 24012.35, and NIFTY CE on 2026-12-08 lists"
        " no strike 5 step(s) above it (nearest listed: 23850, 23900, 23950, 24000, 24050, 24100, 24150); nothing"
        " was sent"
    )
    assert await paper_orders(client) == []


async def app_at(aiohttp_client: Any, converter: Any, config: Config, moment: datetime) -> TestClient[Any, Any]:
    """The real app standing at `moment` (the injected clock, as `TVBRIDGE_TEST_NOW` does for a process)."""
    app = create_app(config, converter, resolve_credentials(config), clock=lambda: moment)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return client


@pytest.mark.parametrize(
    ("moment", "ref", "expected"),
    [
        (datetime(2026, 12, 8, 10, 0, tzinfo=EXCHANGE_TZ), "current_week", "2026-12-08"),
        (datetime(2026, 12, 8, 15, 29, tzinfo=EXCHANGE_TZ), "current_week", "2026-12-08"),
        (datetime(2026, 12, 8, 15, 30, tzinfo=EXCHANGE_TZ), "current_week", "2026-12-15"),
        (datetime(2026, 12, 9, 9, 20, tzinfo=EXCHANGE_TZ), "current_week", "2026-12-15"),
        (datetime(2026, 12, 8, 10, 0, tzinfo=EXCHANGE_TZ), "next_week", "2026-12-15"),
        (datetime(2026, 12, 8, 10, 0, tzinfo=EXCHANGE_TZ), "current_month", "2026-12-29"),
    ],
)
async def test_relative_expiry_on_and_after_an_expiry_day(
    aiohttp_client: Any, converter: Any, config: Config, *, moment: datetime, ref: str, expected: str
) -> None:
    """An expiry day is current until the NSE close (15:30 IST) and the next weekly after it; current_month is the
    month's last listed expiry. Exchange time, from the app's injected clock."""
    client = await app_at(aiohttp_client, converter, on_paper(config), moment)
    body_leg = leg(
        **NIFTY_OPTION,
        option_type="CE",
        strike_price="24000",
        expiry_date=ref,
        quantity="65",
        price="100",
    )

    body = await post(client, alert(body_leg))

    [result] = body["results"]
    assert result["status"] == "success", result
    assert f"(expiry {expected}, strike 24000, security_id" in result["contract"]
    [order] = await paper_orders(client)
    assert order.expiry_date is not None
    assert order.expiry_date.isoformat() == expected


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 12, 8, 16, 30, tzinfo=EXCHANGE_TZ), "2026-12-08"),
        (datetime(2026, 12, 8, 17, 0, tzinfo=EXCHANGE_TZ), "2026-12-15"),
    ],
)
async def test_an_expiry_day_with_an_extra_session_after_the_close_is_current_until_that_session_ends(
    aiohttp_client: Any, converter: Any, config: Config, *, moment: datetime, expected: str
) -> None:
    """The expiry day's close comes from the app's sessions calendar, `[sessions] extra_sessions` included
    (`contracts.py`: "the close from the sessions calendar"): with a special session 16:00-17:00 on the
    2026-12-08 expiry day, current_week at 16:30 is still that day's contract; at 17:00 the next week's. An
    executor on a calendar without the config's sessions sent the 2026-12-15 option at 16:30."""
    special = ExtraSession(date=date(2026, 12, 8), open="16:00", close="17:00", name="special session")
    config = attrs.evolve(on_paper(config), sessions=attrs.evolve(config.sessions, extra_sessions=(special,)))
    client = await app_at(aiohttp_client, converter, config, moment)
    body_leg = leg(**NIFTY_OPTION, option_type="CE", strike_price="24000", expiry_date="current_week", price="100")
    body_leg["quantity"] = "65"

    [result] = (await post(client, alert(body_leg)))["results"]

    assert result["status"] == "success", result
    assert f"(expiry {expected}, strike 24000, security_id" in result["contract"]
    [order] = await paper_orders(client)
    assert order.expiry_date is not None
    assert order.expiry_date.isoformat() == expected


async def test_a_relative_expiry_that_is_not_listed_is_refused_with_the_listed_ones(
    aiohttp_client: Any, converter: Any, config: Config
) -> None:
    """next_month on 2026-12-08: the sample lists no January NIFTY options: refused, unexpired expiries named."""
    client = await app_at(aiohttp_client, converter, on_paper(config), datetime(2026, 12, 8, 10, tzinfo=EXCHANGE_TZ))
    body_leg = leg(**NIFTY_OPTION, option_type="PE", strike_price="24000", expiry_date="next_month", price="100")

    body = await post(client, alert(body_leg))

    assert body["results"][0]["message"] == (
        "not sent: expiry_date next_month: no such expiry listed at 2026-12-08 10:00 IST (unexpired listed:"
        " 2026-12-08, 2026-12-15, 2026-12-29); nothing was sent"
    )


async def test_futures_by_month(aiohttp_client: Any, converter: Any, config: Config) -> None:
    """Futures are monthly: current_month is December's NIFTY future, next_month January's."""
    client = await app_at(aiohttp_client, converter, on_paper(config), datetime(2026, 12, 8, 10, tzinfo=EXCHANGE_TZ))
    future = {**NIFTY_OPTION, "instrument": "FUT", "quantity": "65", "price": "24000"}

    current = await post(client, alert(leg(**future, expiry_date="current_month")))
    following = await post(client, alert(leg(**future, expiry_date="next_month", sort_order="2")))

    assert current["results"][0]["contract"] == "NIFTY-Dec2026-FUT (expiry 2026-12-29, security_id 52175)"
    assert following["results"][0]["contract"] == "NIFTY-Jan2027-FUT (expiry 2027-01-25, security_id 52181)"


async def test_relative_contracts_need_a_master(make_client: ClientFactory, config: Config) -> None:
    """A paper account without instruments_path lists no strikes: the leg fails before sending, naming the
    capability."""
    client = await make_client(with_accounts(config, {"paper": {"broker": "paper"}}))
    body_leg = leg(**NIFTY_OPTION, option_type="CE", strike_price="ATM", expiry_date="2026-12-08", price="100")

    body = await post(client, alert({**body_leg, "underlying_price": "24000"}))

    [result] = body["results"]
    assert result["status"] == "failed"
    assert "needs the broker capability `listings`" in result["message"]


async def test_exit_all_closes_the_whole_position_whatever_the_multiplier(
    make_client: ClientFactory, config: Config
) -> None:
    """An EXIT_ALL leg on an account with quantity_multiplier 3 closes the position it finds, not 3 times it."""
    client = await make_client(on_paper(config, quantity_multiplier=3))
    await post(client, alert(leg(quantity="5")))  # 15 bought: the multiplier applies to orders

    exit_leg = {**leg(), "manage_position": "EXIT_ALL"}
    exit_leg.pop("quantity")
    body = await post(client, alert(exit_leg))

    assert body["results"][0]["quantity"] == "15", body
    assert await positions(client) == {}


async def test_a_broker_without_positions_or_funds_refuses_before_sending(
    make_client: ClientFactory, config: Config
) -> None:
    """The scripted test broker declares neither `positions` nor `funds`: a target and a percent_of_funds leg
    fail naming the capability, and nothing reaches the broker."""
    client = await make_client(with_accounts(config, {"sim": {"broker": "scripted"}}))

    body = await post(
        client,
        alert(
            target(10, 1),
            leg(quantity_type="percent_of_funds", quantity="10", price="100", sort_order="2"),
        ),
    )

    first, second = body["results"]
    assert first["status"] == "failed"
    assert "needs the broker capability `positions`" in first["message"]
    assert second["status"] == "skipped"
    body = await post(client, alert(leg(quantity_type="percent_of_funds", quantity="10", price="101")))
    assert "needs the broker capability `funds`" in body["results"][0]["message"]


def exit_all_leg() -> dict[str, Any]:
    body = {**leg(), "manage_position": "EXIT_ALL"}
    body.pop("quantity")
    return body


def scripted_orders(config: Config) -> list[dict[str, Any]]:
    path = config.data_path("scripted-sim.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize(
    ("answer", "kind", "message"),
    [
        ("unavailable", "target", "not sent: the current position could not be read: positions API down"),
        ("bug", "target", "not sent: reading the current position failed (RuntimeError: positions table missing)"),
        ("unavailable", "exit", "not sent: the position to close could not be read: positions API down"),
        ("bug", "exit", "not sent: reading the position to close failed (RuntimeError: positions table missing)"),
    ],
)
async def test_a_position_that_cannot_be_read_sends_nothing(
    make_client: ClientFactory, config: Config, answer: str, kind: str, message: str
) -> None:
    """A target or an EXIT_ALL sized from a position the broker cannot give: nothing is sent (a guess could
    double the position); the leg fails with the reason, under its account, number and client order id, in the
    answer and the journal; a plugin bug is logged with its trace."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "positions_answer": answer}})
    client = await make_client(config)
    with capture_logs(processors=[merge_contextvars]) as logs:
        body = await post(client, alert(target(10, 1) if kind == "target" else exit_all_leg()))
    alert_id = body["alert_id"]
    [result] = body["results"]
    assert (result["status"], result["message"]) == ("failed", message)
    assert (result["account"], result["leg_number"], result["client_order_id"], result["symbol"]) == (
        "sim",
        1,
        f"{alert_id}-1",
        "RELIANCE",
    )
    assert scripted_orders(config) == []
    journaled = (await stored(client, alert_id))["legs"][0]
    assert (journaled["state"], journaled["message"]) == ("failed", message)
    bugs = [
        (e["log_level"], e["alert_id"], e["leg"], e["account"]) for e in logs if e["event"] == "broker.unexpected_error"
    ]
    assert bugs == ([("error", alert_id, 1, "sim")] if answer == "bug" else [])


async def test_a_target_refused_by_its_risk_limit_is_journaled_failed_before_the_alerts_results(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target from flat to 10 on an account allowing 5 a order: the move's order (10) is refused by the limit,
    checked on what would be sent. The refusal is committed at once, under the alert, before the alert's
    results: with those lost (as by a crash before their commit), the journal still has the leg `failed` with
    the reason, not `sending`, so recovery never sends the target's order of an alert answered "refused"."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "positions_answer": "held", "max_qty_per_order": 5}})
    client = await make_client(config)
    journal = client.app[JOURNAL]

    async def lost(*_args: Any) -> bool:  # `record_results` as a crash before the results' commit leaves it
        return False

    monkeypatch.setattr(journal, "record_results", lambda *args: asyncio.ensure_future(lost(*args)))
    body = await post(client, alert(target(10, 1)))
    [result] = body["results"]
    assert (result["status"], result["transaction"], result["quantity"]) == ("failed", "B", "10"), result
    reason = "risk: quantity 10 is over max_qty_per_order 5"
    assert result["message"] == f"position 0 in NSE RELIANCE (C), target 10: BUY 10; {reason}"
    assert scripted_orders(config) == []
    record = await stored(client, body["alert_id"])
    assert record["status"] == "accepted"  # the alert's results were never written
    [journaled] = record["legs"]
    assert (journaled["state"], journaled["message"]) == ("failed", reason)  # the refusal, committed on its own


async def test_a_target_without_the_positions_capability_fails_under_its_leg(
    make_client: ClientFactory, config: Config
) -> None:
    client = await make_client(with_accounts(config, {"sim": {"broker": "scripted"}}))
    body = await post(client, alert(target(10, 1)))
    [result] = body["results"]
    assert (result["status"], result["account"], result["leg_number"], result["client_order_id"]) == (
        "failed",
        "sim",
        1,
        f"{body['alert_id']}-1",
    )


async def test_a_broker_that_lists_no_open_orders_is_never_asked_for_them(
    make_client: ClientFactory, config: Config
) -> None:
    """A broker that reads positions but does not declare `orders` (it cannot list open orders) is never asked
    for them, not even on a target after an earlier target or exit of this process (when one that does declare it
    is): the position alone decides. Long 10, long 10 again (already there), short 5 (one SELL of 15)."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "positions_answer": "held"}})
    client = await make_client(config)

    answers = [await post(client, alert(target(size, n))) for n, size in enumerate((10, 10, -5), start=1)]

    results = [body["results"][0] for body in answers]
    assert [(r["status"], r["transaction"], r["quantity"]) for r in results] == [
        ("success", "B", "10"),
        ("success", "", "0"),
        ("success", "S", "15"),
    ], results
    assert results[1]["message"] == "position 10 in NSE RELIANCE (C), target 10: already there, no order sent"
    assert [(o["side"], o["quantity"]) for o in scripted_orders(config)] == [("B", 10), ("S", 15)]


async def test_an_exit_on_a_broker_without_brackets_closes_and_says_only_that(
    make_client: ClientFactory, config: Config
) -> None:
    """A broker without the `brackets` capability has no brackets to cancel first: EXIT_ALL sends the close, and
    its message is what was found and sent, nothing about brackets."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "positions_answer": "held"}})
    client = await make_client(config)
    await post(client, alert(leg(quantity="10")))

    body = await post(client, alert(exit_all_leg()))

    [result] = body["results"]
    assert (result["status"], result["transaction"], result["quantity"]) == ("success", "S", "10")
    assert result["message"] == "EXIT_ALL closes the long position of 10 in NSE RELIANCE (C): SELL; filled"
    assert [(o["side"], o["quantity"]) for o in scripted_orders(config)] == [("B", 10), ("S", 10)]


async def test_a_target_logs_the_position_found_and_sends_the_difference(
    make_client: ClientFactory, config: Config
) -> None:
    """Flat, target 10: one BUY of 10 under the leg's client order id, and one `leg.target` line with the
    position before and the target."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "positions_answer": "flat"}})
    client = await make_client(config)
    with capture_logs(processors=[merge_contextvars]) as logs:
        body = await post(client, alert(target(10, 1)))
    alert_id = body["alert_id"]
    [result] = body["results"]
    assert (result["status"], result["transaction"], result["quantity"]) == ("success", "B", "10")
    assert (result["position_before"], result["position_target"]) == (0, 10)
    assert [(o["client_order_id"], o["side"], o["quantity"]) for o in scripted_orders(config)] == [
        (f"{alert_id}-1", "B", 10)
    ]
    [line] = [e for e in logs if e["event"] == "leg.target"]
    assert {k: line[k] for k in ("alert_id", "leg", "account", "before", "target")} == {
        "alert_id": alert_id,
        "leg": 1,
        "account": "sim",
        "before": 0,
        "target": 10,
    }


async def test_a_target_over_a_risk_limit_is_refused_before_sending(make_client: ClientFactory, config: Config) -> None:
    """Flat, target 10 with `max_qty_per_order = 5`: the move's own order (10) is checked like any order and
    refused; nothing reaches the broker and the journal never marks it `sending`."""
    settings = {"broker": "scripted", "positions_answer": "flat", "max_qty_per_order": 5}
    config = with_accounts(config, {"sim": settings})
    client = await make_client(config)
    body = await post(client, alert(target(10, 1)))
    alert_id = body["alert_id"]
    [result] = body["results"]
    assert (result["status"], result["account"], result["leg_number"], result["client_order_id"]) == (
        "failed",
        "sim",
        1,
        f"{alert_id}-1",
    )
    assert "max_qty_per_order" in result["message"], result["message"]
    assert scripted_orders(config) == []
    journaled = (await stored(client, alert_id))["legs"][0]
    assert journaled["state"] == "failed"


async def test_target_orders_count_toward_the_days_order_limit(make_client: ClientFactory, config: Config) -> None:
    """A target's order is an order like any other for `max_orders_per_day`: with a limit of 1, the first target's
    order goes, the next target's is refused before sending, and the broker has one order."""
    settings = {"broker": "scripted", "positions_answer": "held", "max_orders_per_day": 1}
    config = with_accounts(config, {"sim": settings})
    client = await make_client(config)
    first = await post(client, alert(target(10, 1)))
    second = await post(client, alert(target(20, 2)))
    assert first["results"][0]["status"] == "success"
    [refused] = second["results"]
    assert refused["status"] == "failed"
    assert "max_orders_per_day" in refused["message"], refused["message"]
    assert [(o["side"], o["quantity"]) for o in scripted_orders(config)] == [("B", 10)]


async def test_a_target_order_is_journaled_sending_while_the_broker_has_it(
    make_client: ClientFactory, config: Config
) -> None:
    """The move's order is marked `sending` (for its alert, account and leg) before the broker call, as every
    order is: a crash during the call is then looked up at the start, not resent or forgotten."""
    settings = {"broker": "scripted", "positions_answer": "flat", "hold_symbols": ["RELIANCE"]}
    config = with_accounts(config, {"sim": settings})
    config = attrs.evolve(config, server=attrs.evolve(config.server, response_deadline_s=0.2))
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(target(10, 1)))
    assert response.status == 202
    alert_id = (await response.json())["alert_id"]
    record = await stored(client, alert_id)
    assert (record["status"], [(lg["account"], lg["state"]) for lg in record["legs"]]) == (
        "accepted",
        [("sim", "sending")],
    )
    client.app[BROKERS]["sim"].release()  # type: ignore[attr-defined]  # the scripted broker, behind its guard
    async with asyncio.timeout(10):  # bounded: the result lands once the broker answers
        while True:
            record = await stored(client, alert_id)
            if record["status"] != "accepted":
                break
            await asyncio.sleep(0.05)
    assert [(lg["state"], lg["client_order_id"]) for lg in record["legs"]] == [("placed", f"{alert_id}-1")]


@pytest.mark.parametrize("kind", ["target", "exit"])
async def test_one_accounts_target_at_the_broker_does_not_hold_up_another_accounts(
    make_client: ClientFactory, config: Config, kind: str
) -> None:
    """The position lock (one reader of a position at a time) is per account: while account `a`'s target (or
    EXIT_ALL) order waits at its broker, under `a`'s lock, account `b`'s leg of the same alert reads its own
    position and reaches its broker too. One lock for every account would keep `b` waiting until `a`'s broker
    answered (one slow broker then delays every account's exits and targets). The exit closes what leg 1 bought."""
    # the host's bound on a plugin call (8 s, within the PostgreSQL pass's 10 s lease) outlasts the wait below
    held = {"broker": "scripted", "positions_answer": "held", "hold_legs": [2], "broker_timeout_s": 8}
    config = with_accounts(config, {"a": held, "b": held})
    config = attrs.evolve(config, server=attrs.evolve(config.server, response_deadline_s=60))
    client = await make_client(config)
    brokers: list[Any] = [client.app[BROKERS]["a"], client.app[BROKERS]["b"]]
    second = target(10, 1, symbol="INFY", sort_order="2") if kind == "target" else {**exit_all_leg(), "sort_order": "2"}
    response = asyncio.create_task(client.post("/webhook", json=alert(leg(quantity="10"), second)))
    try:
        async with asyncio.timeout(5):  # bounded: with one lock for both, the second waits for the first's answer
            await asyncio.gather(*(broker.holding.wait() for broker in brokers))
    finally:
        for broker in brokers:
            broker.release()
        answer = await response
    assert answer.status == 200, await answer.text()
    body = await answer.json()
    sent = ("INFY", "B", 10) if kind == "target" else ("RELIANCE", "S", 10)
    assert [(r["account"], r["leg_number"], r["status"]) for r in body["results"]] == [
        ("a", 1, "success"),
        ("a", 2, "success"),
        ("b", 1, "success"),
        ("b", 2, "success"),
    ]
    for name in ("a", "b"):
        lines = config.data_path(f"scripted-{name}.jsonl").read_text().splitlines()
        assert [(o["symbol"], o["side"], o["quantity"]) for o in map(json.loads, lines)] == [
            ("RELIANCE", "B", 10),
            sent,
        ]


@pytest.mark.parametrize("kind", ["plain", "target", "exit"])
async def test_while_a_later_leg_is_at_the_broker_the_earlier_legs_result_is_journaled(
    make_client: ClientFactory, config: Config, kind: str
) -> None:
    """Leg 2's `sending` mark carries leg 1's result (one commit a leg): while the broker holds leg 2, whether a
    plain order, a target or an EXIT_ALL, the journal already shows leg 1 placed with its order id, so a crash then
    finds leg 1 settled instead of asking the broker again; once leg 2 is answered both are placed."""
    settings = {"broker": "scripted", "positions_answer": "held", "hold_legs": [2]}
    config = with_accounts(config, {"sim": settings})
    config = attrs.evolve(config, server=attrs.evolve(config.server, response_deadline_s=0.2))
    client = await make_client(config)
    await post(client, alert(leg(quantity="10")))  # a RELIANCE position for the exit to close
    second = {
        "plain": leg(quantity="5", sort_order="2"),
        "target": target(20, 1, sort_order="2"),
        "exit": {**exit_all_leg(), "sort_order": "2"},
    }[kind]
    response = await client.post("/webhook", json=alert(leg(symbol="INFY", quantity="1"), second))
    assert response.status == 202, await response.text()
    alert_id = (await response.json())["alert_id"]
    [first_order] = [o["order_id"] for o in scripted_orders(config) if o["client_order_id"] == f"{alert_id}-1"]

    record = await stored(client, alert_id)
    assert [(lg["leg_number"], lg["state"], lg["order_id"]) for lg in record["legs"]] == [
        (1, "placed", first_order),
        (2, "sending", None),
    ], record["legs"]
    client.app[BROKERS]["sim"].release()  # type: ignore[attr-defined]  # the scripted broker, behind its guard
    async with asyncio.timeout(10):  # bounded: the result lands once the broker answers
        while True:
            record = await stored(client, alert_id)
            if record["status"] != "accepted":
                break
            await asyncio.sleep(0.05)
    assert [(lg["leg_number"], lg["state"]) for lg in record["legs"]] == [(1, "placed"), (2, "placed")]
    assert [(o["symbol"], o["side"], o["quantity"]) for o in scripted_orders(config)][1:] == [
        ("INFY", "B", 1),
        ("RELIANCE", {"plain": "B", "target": "B", "exit": "S"}[kind], {"plain": 5, "target": 10, "exit": 10}[kind]),
    ]


def assert_one_not_sent_line(logs: Sequence[Mapping[str, Any]], alert_id: str) -> None:
    """One `leg.not_sent` error line for leg 1 of account `sim`, naming the journal's refusal."""
    [line] = [e for e in logs if e["event"] == "leg.not_sent"]
    assert {k: line[k] for k in ("log_level", "alert_id", "leg", "account", "error")} == {
        "log_level": "error",
        "alert_id": alert_id,
        "leg": 1,
        "account": "sim",
        "error": "journal unwritable",
    }


async def test_a_target_whose_sending_mark_fails_is_not_sent(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move whose `sending` mark the journal refuses is not sent (unmarked, a crash could resend it): failed
    with the journal's reason, under its leg, and one `leg.not_sent` error line."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "positions_answer": "flat"}})
    client = await make_client(config)

    async def refused(*args: Any, **kwargs: Any) -> None:
        raise JournalError("journal unwritable")

    monkeypatch.setattr(client.app[JOURNAL], "mark_sending", refused)  # the store under test, either one
    with capture_logs(processors=[merge_contextvars]) as logs:
        body = await post(client, alert(target(10, 1)))
    alert_id = body["alert_id"]
    [result] = body["results"]
    assert (result["status"], result["message"], result["transaction"], result["quantity"]) == (
        "failed",
        "position 0 in NSE RELIANCE (C), target 10: BUY 10; not sent: journal unwritable",
        "B",
        "10",
    )
    assert (result["account"], result["leg_number"], result["client_order_id"]) == ("sim", 1, f"{alert_id}-1")
    assert scripted_orders(config) == []
    assert_one_not_sent_line(logs, alert_id)


@pytest.mark.parametrize("quantity", [None, "7"])
async def test_an_exit_when_flat_sends_nothing_under_its_client_order_id(
    make_client: ClientFactory, config: Config, quantity: str | None
) -> None:
    """EXIT_ALL with nothing held: success, quantity 0 (whatever quantity the alert gave: the position decides),
    no order, under the leg's client order id."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "positions_answer": "held"}})
    client = await make_client(config)
    body = await post(client, alert({**exit_all_leg(), **({"quantity": quantity} if quantity else {})}))
    [result] = body["results"]
    assert (result["status"], result["quantity"], result["order_id"]) == ("success", "0", None), result
    assert (result["account"], result["leg_number"], result["client_order_id"]) == ("sim", 1, f"{body['alert_id']}-1")
    assert result["message"].startswith("nothing to close"), result["message"]
    assert scripted_orders(config) == []


async def test_an_exit_whose_sending_mark_fails_is_not_sent(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close an EXIT_ALL worked out, whose `sending` mark the journal refuses, is not sent (unmarked, a crash
    could resend it): failed with the journal's reason and the close it would have sent, one `leg.not_sent`
    error line."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "positions_answer": "held"}})
    client = await make_client(config)
    await post(client, alert(leg(quantity="10")))

    async def refused(*args: Any, **kwargs: Any) -> None:
        raise JournalError("journal unwritable")

    monkeypatch.setattr(client.app[JOURNAL], "mark_sending", refused)
    with capture_logs(processors=[merge_contextvars]) as logs:
        body = await post(client, alert(exit_all_leg()))
    alert_id = body["alert_id"]
    [result] = body["results"]
    assert (result["status"], result["message"], result["transaction"], result["quantity"]) == (
        "failed",
        "not sent: journal unwritable",
        "S",
        "10",
    )
    assert (result["account"], result["leg_number"], result["client_order_id"]) == ("sim", 1, f"{alert_id}-1")
    assert [(o["side"], o["quantity"]) for o in scripted_orders(config)] == [("B", 10)]
    assert_one_not_sent_line(logs, alert_id)


@pytest.mark.parametrize("value", ["0", "-1", '"2"', "1001", "true"])
def test_a_bad_quantity_multiplier_stops_the_start(tmp_path: Path, converter: Any, value: str) -> None:
    """`quantity_multiplier` must be a number > 0 and <= 1000: anything else names the key and does not start."""
    path = tmp_path / "config.toml"
    path.write_text(f'[accounts.paper]\nbroker = "paper"\nquantity_multiplier = {value}\n')

    with pytest.raises(ConfigError) as caught:
        load_config(path, converter, {"WEBHOOK_SECRET": "x" * 32}, tmp_path)

    assert str(caught.value).startswith("accounts.paper.quantity_multiplier: must be a number > 0 and <= 1000")
