"""The strategies' reads of the journal, each filter against the row it must find and the rows it must leave out,
on both stores (a real SQLite file, a real PostgreSQL database), after the writes the alert path makes
(`record_alert`, `mark_sending`, `finish_alert`, order follow-up's `set_order_state`).

These filters compare text inside SQL quotes (JSON paths, order and leg states) byte for byte: a filter that
finds nothing looks, to every other test, like a strategy with nothing open. Issue 24's `journal` mutation group
(docs/testing.md): each test names the mistakes it catches. What a user sees of them (a strategy's cancel, its
square-off after a restart, its daily count after a crash) is in the tests further down and in
`tests/test_crash_recovery.py`.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from durability_server import KillableServer, alert_record, journal_rows, post_alert, scripted_orders
from helpers import SECRET, STORES, alert, in_time_zone, leg
from structlog.testing import capture_logs
from test_one_commit import entry as one_leg_entry
from test_strategies import (
    ALPHA,
    BETA,
    MONDAY_10,
    Clock,
    csv_rows,
    intraday,
    make_config_fixture,  # noqa: F401 - the `make_config` fixture, used by name
    net,
    post,
    start,
)

from tvbridge.alerts.records import Finished
from tvbridge.journal import MAX_MARKS_WAITING, Journal, OrderStateRecord, PlannedLeg
from tvbridge.keys import BROKERS, SQUARE_OFF
from tvbridge.models import LegResult, LegStatus
from tvbridge.store.postgres import PostgresStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from test_strategies import MakeConfig

    from tvbridge.store import Store

KEY = "NSE|RELIANCE|EQ||||I"
OTHER_KEY = "NSE|INFY|EQ||||I"
OPEN_BRACKET: tuple[dict[str, str | None], ...] = (
    {"part": "entry", "order_id": "E", "state": "filled"},
    {"part": "target", "order_id": "T", "state": "open"},
    {"part": "stop_loss", "order_id": "S", "state": "trigger_pending"},
)
CLOSED_BRACKET: tuple[dict[str, str | None], ...] = (
    {"part": "entry", "order_id": "E", "state": "filled"},
    {"part": "target", "order_id": "T", "state": "filled"},
    {"part": "stop_loss", "order_id": "S", "state": "cancelled"},
)


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened: Store
    if request.param == "sqlite":
        opened = Journal(tmp_path / "journal.sqlite3")
    else:
        opened = PostgresStore(request.getfixturevalue("pg_url"))
    await opened.open()
    yield opened
    await opened.close()


def placed(cid: str, **fields: Any) -> LegResult:
    """A leg the broker took: a RELIANCE NSE intraday BUY of 10 on `paper`, its order open, in contract KEY."""
    base: dict[str, Any] = {
        "leg_number": 1,
        "account": "paper",
        "broker": "paper",
        "symbol": "RELIANCE",
        "exchange": "NSE",
        "transaction": "B",
        "quantity": "10",
        "order_type": "LMT",
        "product_type": "I",
        "price": "2900",
        "status": LegStatus.SUCCESS,
        "message": "placed",
        "order_id": f"ord-{cid}",
        "client_order_id": cid,
        "order_state": "open",
        "filled_quantity": 0,
        "position_key": KEY,
    }
    return LegResult(**{**base, **fields})


async def alert_with(store: Store, alert_id: str, strategy: str, *results: LegResult) -> None:
    """One alert of `strategy` whose legs are `results`, as the executor journals it: recorded with its legs
    pending, each leg `sending` before its broker call, then the answers."""
    await store.record_alert(
        alert_id=alert_id,
        alert_type="multi_leg_order",
        payload={"alertType": "multi_leg_order"},
        dedupe_key=None,
        source="127.0.0.1",
        legs=[
            PlannedLeg(account=r.account, leg_number=r.leg_number, client_order_id=r.client_order_id) for r in results
        ],
        strategy=strategy,
    )
    results = tuple(attrs.evolve(r, strategy=strategy) for r in results)
    for r in results:
        await store.mark_sending(alert_id, r.account, r.leg_number, None)
    await store.finish_alert(alert_id, "success", {"status": "success"}, results)


async def test_the_fills_still_open_are_the_open_orders_and_open_bracket_parts_of_the_contract(store: Store) -> None:
    """What order follow-up must settle before a strategy's share of a contract is read: the legs in that
    contract whose order is not final (an open order; a bracket whose entry filled and whose stop still rests),
    not a filled order, not a bracket with every part closed, not another contract or account. Once follow-up
    finds the open order filled, it is no longer listed.

    Kills `unsettled` 11 and 14 (the position key's JSON path upper-cased: nothing found), 17 (the order states
    upper-cased: the open order missed), 23 and 25 (a bracket part's state path or names upper-cased: the
    resting stop missed)."""
    await alert_with(store, "A1", "alpha", placed("open"))
    await alert_with(store, "A2", "alpha", placed("filled", order_state="filled", filled_quantity=10))
    await alert_with(
        store, "A3", "alpha", placed("bracket", order_state="filled", filled_quantity=10, bracket=OPEN_BRACKET)
    )
    await alert_with(
        store, "A4", "alpha", placed("closed-bracket", order_state="filled", filled_quantity=10, bracket=CLOSED_BRACKET)
    )
    await alert_with(store, "A5", "beta", placed("other-contract", symbol="INFY", position_key=OTHER_KEY))
    await alert_with(store, "A6", "alpha", placed("other-account", account="live"))

    assert await store.unsettled("paper", KEY) == {"open", "bracket"}
    assert await store.unsettled("paper", OTHER_KEY) == {"other-contract"}
    assert await store.unsettled("paper") == {"open", "bracket", "other-contract"}
    assert await store.unsettled("live", KEY) == {"other-account"}

    await store.set_order_state("A1", "paper", 1, OrderStateRecord(state="filled", filled_quantity=10))
    await store.set_order_state("A3", "paper", 1, OrderStateRecord(state="filled", bracket=CLOSED_BRACKET))
    assert await store.unsettled("paper", KEY) == set()


async def test_a_strategys_cancel_by_symbol_finds_its_own_open_orders_by_exchange_and_side(store: Store) -> None:
    """A strategy's `cancel_order` by symbol: its own orders in that symbol that may still be open (a bracket's
    entry while its stop rests), narrowed by exchange and side when the leg names them; never a filled order, a
    closed bracket, another strategy's order or another account's.

    Kills `open_orders_of` 23 (the side's JSON path upper-cased: a side given finds nothing), 32 and 34 (a
    bracket part's state path or names upper-cased: the entry of a bracket whose stop rests is missed)."""
    await alert_with(store, "A1", "alpha", placed("buy", order_id="O-BUY"))
    await alert_with(store, "A2", "alpha", placed("sell", order_id="O-SELL", transaction="S"))
    await alert_with(store, "A3", "alpha", placed("bse", order_id="O-BSE", exchange="BSE"))
    await alert_with(store, "A4", "alpha", placed("filled", order_id="O-FILLED", order_state="filled"))
    await alert_with(
        store, "A5", "alpha", placed("bracket", order_id="O-BRACKET", order_state="filled", bracket=OPEN_BRACKET)
    )
    await alert_with(
        store, "A6", "alpha", placed("closed", order_id="O-CLOSED", order_state="filled", bracket=CLOSED_BRACKET)
    )
    await alert_with(store, "A7", "beta", placed("beta", order_id="O-BETA"))
    await alert_with(store, "A8", "alpha", placed("live", order_id="O-LIVE", account="live"))

    async def of(strategy: str = "alpha", exchange: str | None = None, side: str | None = None) -> set[str]:
        return set(await store.open_orders_of(strategy, "paper", symbol="reliance", exchange=exchange, side=side))

    assert await of() == {"O-BUY", "O-SELL", "O-BSE", "O-BRACKET"}
    assert await of(side="B") == {"O-BUY", "O-BSE", "O-BRACKET"}
    assert await of(side="S") == {"O-SELL"}
    assert await of(exchange="NSE") == {"O-BUY", "O-SELL", "O-BRACKET"}
    assert await of(exchange="BSE", side="B") == {"O-BSE"}
    assert await of(exchange="BSE", side="S") == set()
    assert await of("beta") == {"O-BETA"}


async def test_whose_order_an_id_is_includes_a_brackets_stop_and_target(store: Store) -> None:
    """A strategy's `cancel_order` by order id is allowed for its own orders only: the id of its bracket's stop or
    target is its own (placed by its entry), a plain order's id is its placer's, an id tvbridge never placed on
    that account is no one's.

    Kills `order_strategies_14` (a bracket part's order id path upper-cased: the stop would be no one's, and any
    strategy, `default` included, could cancel it)."""
    parts = tuple({**part, "order_id": f"B-{part['part']}"} for part in OPEN_BRACKET)
    await alert_with(store, "A1", "alpha", placed("bracket", order_id="B-entry", order_state="filled", bracket=parts))
    await alert_with(store, "A2", "default", placed("plain", order_id="P-1"))

    assert await store.order_strategies("paper", "B-stop_loss") == {"alpha"}
    assert await store.order_strategies("paper", "B-target") == {"alpha"}
    assert await store.order_strategies("paper", "B-entry") == {"alpha"}
    assert await store.order_strategies("paper", "P-1") == {"default"}
    assert await store.order_strategies("paper", "never-placed") == set()
    assert await store.order_strategies("live", "B-stop_loss") == set()


async def test_the_brackets_square_off_cancels_are_the_open_ones_with_their_quantity(store: Store) -> None:
    """Square-off cancels a strategy's brackets by entry order id (order id, contract, side, quantity): those
    with a part still open, not a closed one, not another strategy's. An entry whose result carries no quantity
    reads as 0 units, never as a made-up 1.

    Kills `bracket_entries` 33 (`or` made `and`: every quantity read as 0) and 35 (no quantity read as 1)."""
    await alert_with(
        store, "A1", "alpha", placed("open", order_id="E-OPEN", order_state="filled", bracket=OPEN_BRACKET)
    )
    await alert_with(
        store, "A2", "alpha", placed("closed", order_id="E-CLOSED", order_state="filled", bracket=CLOSED_BRACKET)
    )
    await alert_with(
        store,
        "A3",
        "alpha",
        placed("no-quantity", order_id="E-NOQTY", transaction="S", quantity="", bracket=OPEN_BRACKET),
    )
    await alert_with(store, "A4", "beta", placed("beta", order_id="E-BETA", bracket=OPEN_BRACKET))

    assert sorted(await store.bracket_entries("alpha", "paper")) == [
        ("E-NOQTY", KEY, "S", 0),
        ("E-OPEN", KEY, "B", 10),
    ]
    assert await store.bracket_entries("beta", "paper") == [("E-BETA", KEY, "B", 10)]


async def flatten_run(store: Store, alert_id: str, *, strategy: str, source: str, account: str) -> None:
    """A flatten-type run journaled as `tvbridge.flatten.execute` journals it (its plan under `flatten`)."""
    await store.record_alert(
        alert_id=alert_id,
        alert_type="flatten",
        payload={"flatten": {"account": account, "cancel": [], "close": [], "notes": []}},
        dedupe_key=None,
        source=source,
        legs=[PlannedLeg(account=account, leg_number=1, client_order_id=f"{alert_id}-1")],
        status="running",
        strategy=strategy,
    )


async def test_a_square_off_journaled_today_has_run_for_its_strategy_and_account_only(store: Store) -> None:
    """The daily square-off runs once a day across restarts: a run journaled (finished or not) for alpha on
    paper under today's source has run; another day, account or strategy has not.

    Kills `has_run` 1 and 3 (the read replaced by None: never "has run", so every restart that day squares off
    again)."""
    today = "square_off 2026-12-07"
    await flatten_run(store, "F1", strategy="alpha", source=today, account="paper")

    assert await store.has_run(strategy="alpha", source=today, account="paper") is True
    assert await store.has_run(strategy="alpha", source="square_off 2026-12-08", account="paper") is False
    assert await store.has_run(strategy="alpha", source=today, account="live") is False
    assert await store.has_run(strategy="beta", source=today, account="paper") is False


async def test_a_strategys_day_count_holds_the_legs_that_may_be_at_the_broker(store: Store) -> None:
    """The strategy's own `max_orders_per_day`, read from the journal at a restart: legs placed, with an unknown
    outcome, or still `sending` (handed to the broker when the process died: the order may exist) count; a
    refused leg, a leg never sent and another strategy's do not.

    Kills `count_strategy_orders_20` (`'sending'` upper-cased: a leg at the broker when the process died is
    left out, and the limit lets one more order through after a crash)."""
    since = datetime.now(UTC) - timedelta(seconds=5)
    legs = [PlannedLeg(account="paper", leg_number=n, client_order_id=f"A1-{n}") for n in (1, 2, 3, 4, 5)]
    await store.record_alert(
        alert_id="A1",
        alert_type="multi_leg_order",
        payload={"alertType": "multi_leg_order"},
        dedupe_key=None,
        source="127.0.0.1",
        legs=legs,
        strategy="alpha",
    )
    for n in (1, 2, 3, 4):
        await store.mark_sending("A1", "paper", n, None)
    await store.record_leg("A1", placed("A1-1", leg_number=1, strategy="alpha"))
    await store.record_leg(
        "A1", placed("A1-3", leg_number=3, status=LegStatus.UNKNOWN, order_id=None, order_state=None, strategy="alpha")
    )
    await store.record_leg(
        "A1", placed("A1-4", leg_number=4, status=LegStatus.FAILED, order_id=None, order_state=None, strategy="alpha")
    )
    # leg 2 stays `sending`, leg 5 `pending`
    await alert_with(store, "B1", "beta", placed("B1-1"))

    assert await store.count_strategy_orders("alpha", since=since) == 3
    assert await store.count_strategy_orders("beta", since=since) == 1
    assert await store.count_strategy_orders("alpha", since=datetime.now(UTC) + timedelta(seconds=5)) == 0


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "America/New_York"])
async def test_a_strategys_day_count_is_the_same_on_a_server_outside_utc(store: Store, zone: str) -> None:
    """The day's start is an instant, compared with the journal's UTC stamps: on a server whose local zone is
    IST (ahead of UTC) the legs sent in the last minute count; on one in New York (behind it) none counts from
    a start a minute ahead.

    Kills `count_strategy_orders_2` (the start written in the host's zone: in IST it reads as hours later than
    the stamps, in New York as hours earlier)."""
    await alert_with(store, "A1", "alpha", placed("A1-1"), placed("A1-2", leg_number=2))
    now = datetime.now(UTC)
    with in_time_zone(zone):
        assert await store.count_strategy_orders("alpha", since=now - timedelta(minutes=1)) == 2
        assert await store.count_strategy_orders("alpha", since=now + timedelta(minutes=1)) == 0


def start_server(data_dir: Path, env: dict[str, str] | None, name: str) -> KillableServer:
    return KillableServer(data_dir, env, name=name).start()


FINISHED = Finished(status="success", response={"status": "success"}, results=())


@pytest.mark.sqlite_only  # the SQLite journal's own marks (PostgreSQL has none)
async def test_marks_a_failed_commit_keeps_are_logged_with_their_count(tmp_path: Path) -> None:
    """Many alerts finished in their own commit (`MAX_MARKS_WAITING`) with their order log rows written, and the
    disk refusing the commit meant to clear their marks: the operator's warning
    `journal.order_log_marks_kept` says how many wait (docs/logging.md); the marks stay (recovery would find the
    rows), and the next write that succeeds clears them.

    Kills `_flush_marks` 2 to 6 (the warning's event name lost or changed, its `waiting` count lost or None)."""
    journal = Journal(tmp_path / "journal.sqlite3")
    await journal.open()
    try:
        ids = [f"A{n}" for n in range(MAX_MARKS_WAITING)]
        for alert_id in ids:
            await journal.record_plan(one_leg_entry(alert_id), join=lambda _: FINISHED)
        write = journal.database.write

        async def refused(fn: object) -> None:
            raise OSError("disk I/O error")

        with pytest.MonkeyPatch.context() as patch, capture_logs() as events:
            patch.setattr(journal.database, "write", refused)
            for alert_id in ids:
                journal.order_log_written(alert_id)
            await journal.settle()  # waits for the marks' own commit
        assert journal.database.write == write
        kept = [e for e in events if e.get("event") == "journal.order_log_marks_kept"]
        assert kept == [{"event": "journal.order_log_marks_kept", "waiting": MAX_MARKS_WAITING, "log_level": "warning"}]
        assert len(await journal.pending_order_log()) == MAX_MARKS_WAITING
        await journal.record_alert(
            alert_id="B1", alert_type="multi_leg_order", payload={}, dedupe_key=None, source=None, legs=[]
        )
        assert await journal.pending_order_log() == []
    finally:
        await journal.close()


# What a user sees of these reads: through the real app (paper, in process) and a real `kill -9`.


async def test_a_strategys_cancel_by_side_cancels_its_bracket_and_leaves_its_other_side(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """alpha holds a filled bracket entry (BUY 10, its target and stop resting) and a resting SELL; beta a
    resting BUY. alpha's `cancel_order` for RELIANCE BUY cancels its bracket (the stop and target go) and
    nothing else; its `cancel_order` for SELL then cancels its SELL; beta's order rests through both.

    Kills `open_orders_of` 23 (the side's path upper-cased: a cancel naming a side cancels nothing), 32 and 34
    (a bracket part's state upper-cased: the entry of a bracket whose stop rests is not found, and its stop and
    target stay at the broker)."""
    client = await start(aiohttp_client, make_config())
    broker = client.app[BROKERS]["paper"]
    # paper moves its price to each alert's: these stay between the stop (2800) and the target (3000)
    bracket = await post(
        client, alert(intraday(quantity="10", target_price="3000", stoploss_price="2800"), secret=ALPHA)
    )
    assert bracket["results"][0]["order_state"] == "filled", bracket
    sell = await post(
        client, alert(intraday(orderType="LMT", price="2950", quantity="1", transactionType="S"), secret=ALPHA)
    )
    theirs = await post(client, alert(intraday(orderType="LMT", price="2850", quantity="1"), secret=BETA))
    parts = {o.order_id for o in await broker.open_orders()} - {
        sell["results"][0]["order_id"],
        theirs["results"][0]["order_id"],
    }
    assert len(parts) == 2  # the bracket's target and stop rest

    by_side = {"symbol": "RELIANCE", "exchange": "NSE", "transactionType": "B"}
    body = await post(client, alert(by_side, secret=ALPHA, alertType="cancel_order"))

    [result] = body["results"]
    assert (result["status"], set(result["order_id"].split(","))) == ("success", parts), result
    assert {o.order_id for o in await broker.open_orders()} == {
        sell["results"][0]["order_id"],
        theirs["results"][0]["order_id"],
    }
    body = await post(client, alert({**by_side, "transactionType": "S"}, secret=ALPHA, alertType="cancel_order"))
    assert body["results"][0]["order_id"] == sell["results"][0]["order_id"], body
    assert [o.order_id for o in await broker.open_orders()] == [theirs["results"][0]["order_id"]]
    assert await net(client) == 10


async def test_a_square_off_done_before_a_restart_is_not_done_again_that_day(
    aiohttp_client: Any, make_config: MakeConfig
) -> None:
    """alpha (`square_off_at 15:15`) squares off its 10 at 15:16; at 15:20 it buys 3 again, and the server is
    restarted: the square-off journaled today is not run again (the 3 stay, the order log has one flatten); the
    next trading day it runs and closes them.

    Kills `has_run` 1 and 3 (the journal's "already ran" read lost: every restart that day squares off again)."""
    config = make_config(alpha='square_off_at = "15:15"')
    clock = Clock(MONDAY_10)
    client = await start(aiohttp_client, config, clock)
    await post(client, alert(intraday(quantity="10"), secret=ALPHA))
    clock.at = MONDAY_10.replace(hour=15, minute=16)
    [report] = await client.app[SQUARE_OFF].run_due()
    assert [(r.transaction, r.quantity) for r in report.results] == [("S", "10")]
    clock.at = MONDAY_10.replace(hour=15, minute=20)
    await post(client, alert(intraday(quantity="3"), secret=ALPHA))
    await client.close()

    client = await start(aiohttp_client, config, clock)
    assert await client.app[SQUARE_OFF].run_due() == []
    assert await net(client) == 3
    assert [(r["alert_type"], r["transaction"], r["quantity"]) for r in csv_rows(config)] == [
        ("multi_leg_order", "B", "10"),
        ("flatten", "S", "10"),
        ("multi_leg_order", "B", "3"),
    ]
    clock.at += timedelta(days=1)
    [report] = await client.app[SQUARE_OFF].run_due()
    assert [(r.transaction, r.quantity) for r in report.results] == [("S", "3")]


@pytest.mark.sqlite_only  # a `serve` subprocess on its SQLite journal, read straight from the file
async def test_a_strategys_leg_killed_while_sending_counts_in_its_day_after_the_restart(tmp_path: Path) -> None:
    """alpha (`max_orders_per_day = 1`) sends a two-leg alert to the unforgiving scripted broker; the process is
    killed (SIGKILL) after leg 1 is journaled `sending`, before its broker call. The restarted server resends
    leg 1 (the broker lacks it) and then checks leg 2, reading alpha's day from the journal while leg 1 is
    still `sending` there: leg 2 is refused by alpha's limit, as it was before the crash would have been. The
    broker got one order, and alpha's next alert is refused too.

    Kills `count_strategy_orders_20` (`'sending'` upper-cased: leg 1 left out of alpha's day, so leg 2 and the
    next alert are sent: three orders on a limit of one)."""
    (tmp_path / "config.toml").write_text(
        f'[strategies.alpha]\nsecret = "{ALPHA}"\naccounts = ["sim"]\nmax_orders_per_day = 1\n', encoding="utf-8"
    )
    two_legs = alert(leg(symbol="INFY"), leg(symbol="TCS", sort_order="2"), secret=ALPHA)
    server = await asyncio.to_thread(start_server, tmp_path, {"TVBRIDGE_TEST_CRASH_AT": "before_send"}, "crash")
    try:
        assert await post_alert(server.url, two_legs) is None  # killed: no answer
        assert await asyncio.to_thread(server.wait, 10) == -9
    finally:
        await asyncio.to_thread(server.kill)  # a server that did not die at its point is not left running
    alerts, legs, _ = journal_rows(tmp_path)
    (interrupted,) = alerts
    assert (legs[interrupted, 1], legs[interrupted, 2]) == ("sending", "pending")
    assert scripted_orders(tmp_path) == []

    restarted = await asyncio.to_thread(start_server, tmp_path, None, "restarted")
    try:
        record = await alert_record(restarted.url, interrupted)
        later = await post_alert(restarted.url, alert(leg(symbol="WIPRO"), secret=ALPHA))
    finally:
        assert await asyncio.to_thread(restarted.terminate) == 0
    assert [o["client_order_id"] for o in scripted_orders(tmp_path)] == [f"{interrupted}-1"]
    refusal = "risk: 1 order(s) already sent today by strategy alpha; max_orders_per_day is 1"
    assert [(leg["state"], leg["message"]) for leg in record["legs"]][1] == ("failed", refusal), record
    assert later is not None
    assert [(r["status"], r["message"]) for r in later[1]["results"]] == [("failed", refusal)]


async def test_a_brackets_stop_is_its_strategys_own_to_cancel(aiohttp_client: Any, make_config: MakeConfig) -> None:
    """alpha's bracket entry filled on paper, its stop resting: a `cancel_order` naming the stop's order id from
    beta, or from the global secret (`default`), is refused as another strategy's order and the stop keeps
    resting; alpha's own cancel of it goes through.

    Kills `order_strategies_14` (a part's order id path upper-cased: the stop is no one's, and `default`, which
    may cancel orders tvbridge did not place, cancels alpha's stop, leaving its 10 unprotected)."""
    client = await start(aiohttp_client, make_config())
    broker = client.app[BROKERS]["paper"]
    entry = await post(client, alert(intraday(quantity="10", target_price="3000", stoploss_price="2800"), secret=ALPHA))
    stop = next(part["order_id"] for part in entry["results"][0]["bracket"] if part["part"] == "stop_loss")
    resting = {o.order_id for o in await broker.open_orders()}
    assert stop in resting

    for secret, strategy in ((BETA, "beta"), (SECRET, "default")):
        body = await post(client, alert({"order_id": stop}, secret=secret, alertType="cancel_order"))
        refusal = f"not cancelled: order {stop} is another strategy's order; strategy {strategy} cancels only its own"
        assert [(r["status"], r["message"]) for r in body["results"]] == [("failed", f"{refusal} orders")], body
    assert {o.order_id for o in await broker.open_orders()} == resting

    body = await post(client, alert({"order_id": stop}, secret=ALPHA, alertType="cancel_order"))
    assert body["results"][0]["status"] == "success", body
    assert stop not in {o.order_id for o in await broker.open_orders()}
