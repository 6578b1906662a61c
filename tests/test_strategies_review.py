"""Strategies (issue 19), the defects an independent review found, each through the real app on paper: a
strategy's share never exceeds what the broker holds, yesterday's intraday fills are gone, a flatten's close is
nobody's, square-off cancels brackets and respects halts and sessions, exits pass every strategy rule, ..."""

from __future__ import annotations

import asyncio
import csv
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from helpers import alert
from server_process import run_cli
from structlog.testing import capture_logs
from test_strategies import (
    ALPHA,
    BETA,
    MONDAY_10,
    Clock,
    admin,
    exit_all,
    intraday,
    make_config_fixture,  # noqa: F401 - the `make_config` fixture, used by name
    net,
    post,
    start,
)

from tvbridge.broker import OrderRequest
from tvbridge.config import load_config
from tvbridge.errors import ConfigError, JournalError
from tvbridge.keys import BROKERS, JOURNAL, SCHEDULER, SQUARE_OFF
from tvbridge.models import Exchange, Instrument, OrderLeg, OrderType, Product, Side
from tvbridge.parsing import make_converter
from tvbridge.secretstore import resolve_credentials

if TYPE_CHECKING:
    from test_strategies import MakeConfig


async def manual(client: Any, side: Side, quantity: int, client_id: str = "MANUAL-1") -> None:
    """An order outside tvbridge (the broker's terminal, its risk desk's square-off)."""
    order = OrderLeg(
        side=side,
        order_type=OrderType.MARKET,
        quantity=quantity,
        exchange=Exchange.NSE,
        symbol="RELIANCE",
        instrument=Instrument.EQUITY,
        product=Product.INTRADAY,
        price=Decimal(2900),
    )
    await client.app[BROKERS]["paper"].place(
        OrderRequest(client_order_id=client_id, alert_id="MANUAL", leg_number=1, leg=order)
    )


async def backdate_journal(client: Any, days: int = 1) -> None:
    """Every alert so far received `days` earlier (the journal stamps wall time): yesterday's fills. Portable SQL
    through the store, so this runs on either store."""
    store = client.app[JOURNAL]
    rows = await store.fetch("SELECT alert_id, received_at FROM alerts")
    earlier = [(row[0], (datetime.fromisoformat(row[1]) - timedelta(days=days)).isoformat()) for row in rows]
    await store.run(
        [("UPDATE alerts SET received_at = ? WHERE alert_id = ?", (at, alert_id)) for alert_id, at in earlier]
    )


# 1. the broker, not the journal, says what can be closed


async def test_an_exit_never_closes_a_share_the_broker_no_longer_holds(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """alpha bought 10, then the position was closed outside tvbridge: alpha's EXIT_ALL and the global secret's
    EXIT_ALL send nothing (before: alpha sold 10 and opened a short, default bought 10 and opened a long)."""
    client = await start(aiohttp_client, make_config())
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    await manual(client, Side.SELL, 10)
    assert await net(client) == 0

    body = await post(client, alert(exit_all(), secret=ALPHA))
    assert body["results"][0]["message"].startswith("nothing to close"), body
    body = await post(client, alert(exit_all()))
    assert body["results"][0]["message"].startswith("nothing to close"), body
    assert await net(client) == 0


async def test_an_exit_closes_at_most_what_the_broker_holds(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """alpha bought 10, 6 were sold outside tvbridge: alpha's EXIT_ALL sells the 4 left, not 10."""
    client = await start(aiohttp_client, make_config())
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    await manual(client, Side.SELL, 6)

    body = await post(client, alert(exit_all(), secret=ALPHA))

    assert (body["results"][0]["transaction"], body["results"][0]["quantity"]) == ("S", "4"), body
    assert await net(client) == 0


async def test_square_off_closes_no_more_than_the_broker_holds(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """alpha's intraday 10 was closed outside tvbridge: its square-off sends no close (before: SELL 10)."""
    clock = Clock(MONDAY_10)
    client = await start(aiohttp_client, make_config(alpha='square_off_at = "15:15"'), clock)
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    await manual(client, Side.SELL, 10)
    clock.at = MONDAY_10.replace(hour=15, minute=16)

    [report] = await client.app[SQUARE_OFF].run_due()

    assert [r for r in report.results if r.order_type != "CANCEL"] == []
    assert await net(client) == 0


async def test_yesterdays_intraday_fills_are_not_todays_share(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """alpha's intraday 10 was bought yesterday (the broker still lists it: its own square-off is late): today it
    is not alpha's share any more (an intraday position lives one day); a long_only alpha's SELL 10 is an entry,
    refused; the global secret's EXIT_ALL owns and closes it."""
    client = await start(aiohttp_client, make_config(alpha='allowed_sides = "long_only"'))
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    await backdate_journal(client)

    body = await post(client, alert(intraday(quantity="10", transactionType="S"), secret=ALPHA))
    assert body["results"][0]["status"] == "failed", body
    assert "long_only" in body["results"][0]["message"]
    body = await post(client, alert(exit_all(), secret=ALPHA))
    assert body["results"][0]["message"].startswith("nothing to close"), body
    assert await net(client) == 10
    body = await post(client, alert(exit_all()))
    assert (body["results"][0]["transaction"], body["results"][0]["quantity"]) == ("S", "10"), body
    assert await net(client) == 0


async def test_admin_flatten_zeroes_every_strategys_share(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """alpha 10, then POST /admin/flatten closes it (journaled under `default`): every strategy's share in the
    contract is 0 after it, so when beta then buys 5, alpha's EXIT_ALL sends nothing (before: the books said
    alpha +10 / default -10 and alpha's EXIT_ALL sold beta's 5)."""
    client = await start(aiohttp_client, make_config())
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    response = await client.post("/admin/flatten", json={"account": "paper", "confirm": True}, headers=admin(client))
    assert response.status == 200, await response.text()
    status = await (await client.get("/status", headers={**admin(client), "Accept": "application/json"})).json()
    assert status["strategy_positions"] == []
    await post(client, alert(intraday(quantity="5"), secret=BETA))

    body = await post(client, alert(exit_all(), secret=ALPHA))

    assert body["results"][0]["message"].startswith("nothing to close"), body
    assert await net(client) == 5


# 3. square-off and brackets


async def test_square_off_cancels_the_strategys_brackets_before_closing(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """alpha's bracket entry (target 3000, stop 2800) filled: at square-off its target and stop are cancelled
    and the 10 closed; when the price later falls through 2800 nothing fills (before: the stop stayed resting
    and sold 10, opening a short)."""
    clock = Clock(MONDAY_10)
    client = await start(aiohttp_client, make_config(alpha='square_off_at = "15:15"'), clock)
    entry = await post(client, alert(intraday(quantity="10", target_price="3000", stoploss_price="2800"), secret=ALPHA))
    broker = client.app[BROKERS]["paper"]
    assert len(await broker.open_orders()) == 2  # the target and the stop rest
    clock.at = MONDAY_10.replace(hour=15, minute=16)

    [report] = await client.app[SQUARE_OFF].run_due()

    assert sorted((r.order_type, r.status.value) for r in report.results) == [
        ("CANCEL", "success"),
        ("MKT", "success"),
    ], report.lines
    assert [r.order_id for r in report.results if r.order_type == "CANCEL"] == [entry["results"][0]["order_id"]]
    assert await broker.open_orders() == []
    await post(client, alert(intraday(quantity="1", price="2700"), secret=BETA))  # the price falls through 2800
    assert await net(client) == 1


# 4. exits still to fill are each strategy's own


async def test_one_strategys_resting_exit_does_not_swallow_anothers(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """alpha 10, beta 4; alpha's EXIT_ALL rests as a limit SELL 10 at 3500; beta's EXIT_ALL sells beta's 4 (before:
    it found alpha's resting order and answered "nothing more to close"); alpha's repeated EXIT_ALL still sees
    its own resting one and sends nothing more."""
    client = await start(aiohttp_client, make_config())
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    await post(client, alert(intraday(quantity="4"), secret=BETA))
    resting = await post(client, alert(exit_all(orderType="LMT", price="3500"), secret=ALPHA))
    assert resting["results"][0]["order_state"] == "open", resting

    body = await post(client, alert(exit_all(transactionType="S"), secret=BETA))

    assert (body["results"][0]["transaction"], body["results"][0]["quantity"]) == ("S", "4"), body
    assert await net(client) == 10
    body = await post(client, alert(exit_all(orderType="LMT", price="3500"), secret=ALPHA))
    assert body["results"][0]["message"].startswith("nothing more to close"), body


# 5. a strategy credential that is the webhook secret in use


def test_a_strategy_secret_equal_to_the_generated_webhook_secret_stops_the_start(tmp_path: Path) -> None:
    """auth.secret is unset, so the server uses the generated webhook_secret.txt; a strategy whose secret is that
    same value (its alerts would run as `default`, under no rule of its) stops `serve` (resolve_credentials) and
    `check-config` (exit 2) with a config error naming the key, never the value."""
    generated = "generated-secret-0123456789abcdefXYZ"
    (tmp_path / "webhook_secret.txt").write_text(generated + "\n", encoding="utf-8")
    path = tmp_path / "config.toml"
    path.write_text(f'[strategies.alpha]\nsecret = "{generated}"\n', encoding="utf-8")
    env = {"WEBHOOK_SECRET": "", "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path)}
    config = load_config(path, make_converter(), env, tmp_path)

    with pytest.raises(ConfigError, match=r"strategies\.alpha\.secret: is the webhook secret in use") as caught:
        resolve_credentials(config)
    assert generated not in str(caught.value)

    result = run_cli(tmp_path, {**env, "TVBRIDGE_CONFIG": str(path)}, "check-config")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "strategies.alpha.secret: is the webhook secret in use" in result.stderr
    assert generated not in result.stdout + result.stderr


# 6. cancel_order by order id


async def test_cancel_by_order_id_cancels_only_the_strategys_own_orders(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """beta's resting order: alpha's cancel_order naming its order id fails with the reason and leaves it resting
    (before: alpha cancelled it); the global secret's cancel cannot take beta's either; beta cancels its own; the
    global secret's cancel still cancels an order tvbridge never placed."""
    client = await start(aiohttp_client, make_config())
    broker = client.app[BROKERS]["paper"]
    theirs = await post(client, alert(intraday(orderType="LMT", price="2000", quantity="1"), secret=BETA))
    beta_id = theirs["results"][0]["order_id"]

    body = await post(client, alert({"order_id": beta_id}, secret=ALPHA, alertType="cancel_order"))

    [result] = body["results"]
    assert result["status"] == "failed", result
    assert result["message"] == (
        f"not cancelled: order {beta_id} is another strategy's order; strategy alpha cancels only its own orders"
    )
    body = await post(client, alert({"order_id": beta_id}, alertType="cancel_order"))
    assert body["results"][0]["status"] == "failed", body
    assert [o.order_id for o in await broker.open_orders()] == [beta_id]
    body = await post(client, alert({"order_id": beta_id}, secret=BETA, alertType="cancel_order"))
    assert body["results"][0]["status"] == "success", body["results"][0]["message"]

    outside = OrderLeg(
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=1,
        exchange=Exchange.NSE,
        symbol="RELIANCE",
        instrument=Instrument.EQUITY,
        product=Product.INTRADAY,
        price=Decimal(1900),
    )
    placed = await broker.place(OrderRequest(client_order_id="MANUAL-2", alert_id="MANUAL", leg_number=1, leg=outside))
    body = await post(client, alert({"order_id": placed.order_id}, secret=ALPHA, alertType="cancel_order"))
    [result] = body["results"]  # a named strategy cannot take an order tvbridge never placed
    assert (result["status"], result["message"]) == (
        "failed",
        (
            f"not cancelled: order {placed.order_id} is an order tvbridge did not place under it; strategy alpha"
            " cancels only its own orders"
        ),
    )
    assert [o.order_id for o in await broker.open_orders()] == [placed.order_id]
    body = await post(client, alert({"order_id": placed.order_id}, alertType="cancel_order"))
    assert body["results"][0]["status"] == "success", body
    assert await broker.open_orders() == []


async def test_a_cancel_refused_as_another_strategys_order_is_journaled_before_the_results(
    aiohttp_client: Any, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alpha's cancel of beta's order is refused; the alert's results are lost (as by a crash before their
    commit): the journal already holds the cancel leg `failed` with the reason, so a restart's recovery settles it
    and never cancels beta's order on alpha's behalf."""
    client = await start(aiohttp_client, make_config())
    theirs = await post(client, alert(intraday(orderType="LMT", price="2000", quantity="1"), secret=BETA))
    beta_id = theirs["results"][0]["order_id"]
    journal = client.app[JOURNAL]
    await journal.settle()

    async def lost(*_args: Any) -> bool:
        return False

    monkeypatch.setattr(journal, "record_results", lambda *args: asyncio.ensure_future(lost(*args)))
    body = await post(client, alert({"order_id": beta_id}, secret=ALPHA, alertType="cancel_order"))
    assert body["results"][0]["status"] == "failed", body
    record = await journal.get_alert(body["alert_id"])
    assert record is not None
    assert record["status"] == "accepted"  # the results were never written
    assert [(leg_["state"], "another strategy's order" in leg_["message"]) for leg_ in record["legs"]] == [
        ("failed", True)
    ]


async def test_a_cancel_whose_owner_cannot_be_read_is_refused_not_unknown(
    aiohttp_client: Any, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alpha's cancel by order id while the journal cannot say whose order it is: refused (`failed`, the reason
    named), nothing asked of the broker, the order still resting; not an unknown outcome blamed on the plugin."""
    client = await start(aiohttp_client, make_config())
    broker = client.app[BROKERS]["paper"]
    mine = await post(client, alert(intraday(orderType="LMT", price="2000", quantity="1"), secret=ALPHA))
    order_id = mine["results"][0]["order_id"]

    async def unreadable(*_args: Any) -> list[str]:
        raise JournalError("disk I/O error")

    monkeypatch.setattr(client.app[JOURNAL], "order_strategies", unreadable)
    body = await post(client, alert({"order_id": order_id}, secret=ALPHA, alertType="cancel_order"))
    [result] = body["results"]
    assert (result["status"], result["message"].split("; the refusal")[0]) == (
        "failed",
        f"not cancelled: whose order {order_id} is could not be read from the journal (disk I/O error)",
    )
    assert [o.order_id for o in await broker.open_orders()] == [order_id]


# 7. a square-off whose journal entry fails


async def test_a_square_off_whose_journal_entry_fails_sends_nothing_and_does_not_repeat(
    aiohttp_client: Any, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal refuses the square-off's entry (disk full): nothing is sent, `strategy.square_off_not_recorded`
    is logged, and the next polls do not try again (before: it closed the position without a record, and every
    20 s poll found no record and closed again)."""
    clock = Clock(MONDAY_10)
    client = await start(aiohttp_client, make_config(alpha='square_off_at = "15:15"'), clock)
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    journal = client.app[JOURNAL]
    record_alert = journal.record_alert

    async def refuse_flatten(**kwargs: Any) -> None:
        if kwargs["alert_type"] == "flatten":
            raise JournalError("database or disk is full")
        await record_alert(**kwargs)

    monkeypatch.setattr(journal, "record_alert", refuse_flatten)
    clock.at = MONDAY_10.replace(hour=15, minute=16)

    with capture_logs() as events:
        assert await client.app[SQUARE_OFF].run_due() == []
        assert await client.app[SQUARE_OFF].run_due() == []

    assert [e["event"] for e in events if e["event"].startswith("strategy.square_off")] == [
        "strategy.square_off_not_recorded"
    ]
    assert await net(client) == 10


# 8. square-off, market hours and halts


async def test_a_square_off_missed_until_the_market_closed_does_not_run(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """alpha's intraday NSE 10; the server was down at 15:15 and starts at 23:00 (NSE closed): the square-off
    sends nothing for NSE (`strategy.square_off_skipped`, market closed) and the position stays (before: a
    market SELL went to a closed market)."""
    clock = Clock(MONDAY_10)
    client = await start(aiohttp_client, make_config(alpha='square_off_at = "15:15"'), clock)
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    clock.at = MONDAY_10.replace(hour=23)

    with capture_logs() as events:
        reports = await client.app[SQUARE_OFF].run_due()

    assert [r for report in reports for r in report.results] == []
    [skipped] = [e for e in events if e["event"] == "strategy.square_off_skipped"]
    assert skipped["reason"] == "market closed now: NSE"
    assert await net(client) == 10


async def test_a_halt_holds_the_square_off_until_it_is_lifted(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """At 15:16 alpha is halted, then the whole server: the square-off sends nothing (a halt means send
    nothing; logged once); resumed at 15:20 (market open), it closes alpha's 10."""
    clock = Clock(MONDAY_10)
    client = await start(aiohttp_client, make_config(alpha='square_off_at = "15:15"'), clock)
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    halt = await client.post("/admin/halt", json={"strategy": "alpha", "reason": "drawdown"}, headers=admin(client))
    assert halt.status == 200, await halt.text()
    clock.at = MONDAY_10.replace(hour=15, minute=16)
    square_off = client.app[SQUARE_OFF]

    with capture_logs() as events:
        assert await square_off.run_due() == []
        assert await square_off.run_due() == []
    reasons = [e["reason"] for e in events if e["event"] == "strategy.square_off_skipped"]
    assert reasons == ["strategy alpha halted: drawdown"]
    assert await net(client) == 10
    resumed = await client.post("/admin/resume", json={"strategy": "alpha"}, headers=admin(client))
    assert resumed.status == 200, await resumed.text()
    halt = await client.post("/admin/halt", json={"reason": "news"}, headers=admin(client))
    assert halt.status == 200, await halt.text()
    assert await square_off.run_due() == []
    assert await net(client) == 10

    resumed = await client.post("/admin/resume", json={}, headers=admin(client))
    assert resumed.status == 200, await resumed.text()
    clock.at = MONDAY_10.replace(hour=15, minute=20)
    [report] = await square_off.run_due()

    assert [(r.transaction, r.quantity) for r in report.results] == [("S", "10")]
    assert await net(client) == 0


# 9. a strategy's rules never refuse an exit


async def test_a_strategys_rules_never_refuse_an_exit(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """alpha holds 20 RELIANCE; restarted with symbols ["INFY"], max_qty_per_order 5 and max_orders_per_day 2:
    a BUY of RELIANCE is refused (an entry), but a target of 5 (SELL 15, over max_qty), a SELL of 3 and an
    EXIT_ALL (the third order of the day, over the count) all go, not in symbols either (before: each was
    refused, so the strategy could not close)."""
    client = await start(aiohttp_client, make_config())
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    await client.close()
    rules = 'symbols = ["INFY"]\nmax_qty_per_order = 5\nmax_orders_per_day = 2'
    client = await start(aiohttp_client, make_config(alpha=rules))

    body = await post(client, alert(intraday(quantity="1"), secret=ALPHA))
    assert body["results"][0]["status"] == "failed", body
    target = intraday(position_size="5")
    target.pop("quantity")
    body = await post(client, alert(target, secret=ALPHA))
    assert (body["results"][0]["status"], body["results"][0]["quantity"]) == ("success", "15"), body
    body = await post(client, alert(intraday(quantity="3", transactionType="S"), secret=ALPHA))
    assert body["results"][0]["status"] == "success", body
    body = await post(client, alert(exit_all(), secret=ALPHA))
    assert (body["results"][0]["status"], body["results"][0]["quantity"]) == ("success", "2"), body
    assert await net(client) == 0


# 10. a halted strategy's queued alerts wait


async def test_a_halted_strategys_queued_alert_waits_for_its_resume(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """alpha's alert on Sunday is queued for Monday's open; alpha is halted; at 09:20 Monday the queue sends
    nothing and the alert stays queued (before: it was taken from the queue and failed "strategy alpha
    halted"); resumed, it is sent."""
    config = make_config(sessions="enabled = true")
    clock = Clock(MONDAY_10 - timedelta(days=1))
    client = await start(aiohttp_client, config, clock)
    response = await client.post("/webhook", json=alert(intraday(quantity="10"), secret=ALPHA, id="queued-1"))
    assert response.status == 202, await response.text()
    alert_id = (await response.json())["alert_id"]
    halt = await client.post("/admin/halt", json={"strategy": "alpha", "reason": "drawdown"}, headers=admin(client))
    assert halt.status == 200, await halt.text()
    clock.at = MONDAY_10.replace(hour=9, minute=20)

    assert await client.app[SCHEDULER].run_due() == 0

    record = await (await client.get(f"/alerts/{alert_id}", headers=admin(client))).json()
    assert record["status"] == "queued", record
    assert await net(client) == 0
    resumed = await client.post("/admin/resume", json={"strategy": "alpha"}, headers=admin(client))
    assert resumed.status == 200, await resumed.text()
    await client.app[SCHEDULER].run_due()  # after the queue's own loop, woken by the resume, if it was first
    record = await (await client.get(f"/alerts/{alert_id}", headers=admin(client))).json()
    assert record["status"] == "success", record
    assert await net(client) == 10


# 11. the order log's header after an upgrade


async def test_an_order_log_with_an_older_header_is_set_aside_and_a_new_one_started(
    aiohttp_client: Any, tmp_path: Path, make_config: MakeConfig
) -> None:
    """webhook_orders.csv written by a version before strategies (no `strategy` column): at start it is kept as
    webhook_orders.old-header-<time>.csv, whole, `order_log.rotated` is logged, and the new file starts with
    the current header, so csv.DictReader reads the new rows with their strategy (before: new rows went under
    the old header and DictReader put the strategy under None)."""
    old_header = "timestamp,alert_type,symbol,exchange,transaction,quantity,order_type,product_type,price,status,"
    old_header += "order_id,message,alert_id,leg_number,account,broker,client_order_id,bracket"
    old_row = "2026-12-01T04:00:00+00:00,multi_leg_order,INFY,NSE,B,1,MKT,I,1500,success,P-1,ok,a1,1,paper,paper,c1,"
    (tmp_path / "webhook_orders.csv").write_text(f"{old_header}\n{old_row}\n", encoding="utf-8")
    config = make_config()

    with capture_logs() as events:
        client = await start(aiohttp_client, config)
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))

    [rotated] = [e for e in events if e["event"] == "order_log.rotated"]
    [kept] = list(tmp_path.glob("webhook_orders.old-header-*.csv"))
    assert rotated["kept_as"] == str(kept)
    assert kept.read_text(encoding="utf-8") == f"{old_header}\n{old_row}\n"
    with (tmp_path / "webhook_orders.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["symbol"], r["quantity"], r["strategy"]) for r in rows] == [("RELIANCE", "10", "alpha")]
    assert all(None not in r for r in rows)
    await client.close()
    await start(aiohttp_client, config)  # the current header: nothing set aside again
    assert len(list(tmp_path.glob("webhook_orders.old-header-*.csv"))) == 1


async def test_no_square_off_for_a_contract_whose_exchange_is_closed_that_day(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """A day NSE is closed while MCX trades (here a Sunday with an MCX session): it is a trading day, but
    alpha's intraday NSE position is not squared off (logged), since NSE has no session."""
    mcx_only = 'extra_sessions = [{date = 2026-12-06, open = "10:00", close = "23:00", exchanges = ["MCX"]}]'
    config = make_config(alpha='square_off_at = "15:15"', sessions=f"enabled = false\n{mcx_only}")
    sunday = MONDAY_10 - timedelta(days=1)
    clock = Clock(sunday)
    client = await start(aiohttp_client, config, clock)
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    clock.at = sunday.replace(hour=15, minute=16)

    with capture_logs() as events:
        reports = await client.app[SQUARE_OFF].run_due()

    assert [r for report in reports for r in report.results] == []
    assert [e["reason"] for e in events if e["event"] == "strategy.square_off_skipped"] == ["market closed now: NSE"]
    assert await net(client) == 10
