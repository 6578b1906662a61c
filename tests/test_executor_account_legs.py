"""One account's legs, in order, through the real app in-process against the scripted broker: what comes after a
leg that failed or whose outcome is unknown, each leg's own debug line, and the journal while a cancel leg is at
the broker.

In-process on purpose: these are the executor's `_run_account` and `_leg` (mutation testing's `executor-core`
group, scripts/mutation.sh, sees only tests that run the code in this process).
"""

from __future__ import annotations

import asyncio
import csv
import json
import sqlite3
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from helpers import SECRET, alert, leg, refusing_writes, with_accounts
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs
from test_strategy_alerts import NIFTY_OPTION, on_paper, paper_orders

from tvbridge.broker import BrokerUnknownOutcomeError, OrderRequest
from tvbridge.config import AlertsConfig, RiskConfig, load_config
from tvbridge.journal import Journal
from tvbridge.keys import BROKERS, CREDENTIALS, JOURNAL
from tvbridge_brokers.paper import PaperBroker

if TYPE_CHECKING:
    from pathlib import Path

    from helpers import ClientFactory

    from tvbridge.config import Config


ALPHA_SECRET = "alpha-secret-0123456789abcdef"


def scripted(config: Config, **settings: Any) -> Config:
    return with_accounts(config, {"s": {"broker": "scripted", **settings}})


def orders_received(config: Config) -> list[dict[str, Any]]:
    path = config.data_path("scripted-s.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def order_log(config: Config) -> list[dict[str, str]]:
    with config.data_path(config.order_log.file).open(newline="") as f:
        return list(csv.DictReader(f))


async def stored(client: Any, alert_id: str) -> dict[str, Any]:
    """`GET /alerts/<id>`, as an operator reads it (admin token)."""
    headers = {"Authorization": f"Bearer {client.app[CREDENTIALS].admin_token}"}
    response = await client.get(f"/alerts/{alert_id}", headers=headers)
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


@pytest.mark.parametrize(
    ("settings", "status", "reason"),
    [
        ({"reject_symbols": ["FIRST"]}, "failed", "leg 1 failed"),
        ({"unknown_symbols": ["FIRST"]}, "unknown", "leg 1 has an unknown outcome"),
    ],
)
async def test_after_a_leg_that_failed_or_is_unknown_every_later_leg_is_skipped(
    make_client: ClientFactory, config: Config, settings: dict[str, Any], status: str, reason: str
) -> None:
    """Leg 1 of four is refused (or its outcome is lost): legs 2, 3 and 4 are each answered `skipped` with why,
    written to the order log, and never sent. Not only the next leg: every later one is in the answer, so the
    trader sees the whole alert and none of it goes to the broker."""
    config = scripted(config, **settings)
    client = await make_client(config)
    symbols = ["FIRST", "SECOND", "THIRD", "FOURTH"]
    legs = [leg(symbol=symbol, sort_order=str(n)) for n, symbol in enumerate(symbols, start=1)]
    response = await client.post("/webhook", json=alert(*legs))
    assert response.status == 200, await response.text()
    body = await response.json()
    assert [(r["leg_number"], r["symbol"], r["status"]) for r in body["results"]] == [
        (1, "FIRST", status),
        (2, "SECOND", "skipped"),
        (3, "THIRD", "skipped"),
        (4, "FOURTH", "skipped"),
    ]
    assert [r["message"] for r in body["results"][1:]] == [f"skipped: {reason}"] * 3
    assert orders_received(config) == []
    assert [(row["symbol"], row["status"]) for row in order_log(config)] == [
        ("FIRST", status),
        ("SECOND", "skipped"),
        ("THIRD", "skipped"),
        ("FOURTH", "skipped"),
    ]
    record = await stored(client, body["alert_id"])
    assert [(lg["leg_number"], lg["state"]) for lg in record["legs"]] == [
        (1, status),
        (2, "skipped"),
        (3, "skipped"),
        (4, "skipped"),
    ], record["legs"]


async def test_each_sent_leg_has_its_debug_line_with_its_facts_and_time(
    make_client: ClientFactory, config: Config
) -> None:
    """docs/logging.md: at debug, `leg.done` for a leg placed and `leg.failed` for one that was not, each with the
    alert id, leg number, account, broker, status, order id, message and the leg's own milliseconds: the same
    time `alert.done` gives the leg (to the microsecond, more than nothing, and all the legs' times within the
    alert's)."""
    config = attrs.evolve(scripted(config, reject_symbols=["BAD"]), alerts=AlertsConfig(on_leg_failure="continue"))
    client = await make_client(config)
    symbols = ["GOOD", "BAD", "ALSO", "MORE", "LAST"]
    legs = [leg(symbol=symbol, sort_order=str(n)) for n, symbol in enumerate(symbols, start=1)]
    with capture_logs(processors=[merge_contextvars]) as events:
        response = await client.post("/webhook", json=alert(*legs))
    assert response.status == 200, await response.text()
    body = await response.json()
    alert_id = body["alert_id"]
    placed = {o["symbol"]: o["order_id"] for o in orders_received(config)}
    assert list(placed) == ["GOOD", "ALSO", "MORE", "LAST"]
    lines = [e for e in events if e["event"] in {"leg.done", "leg.failed"}]
    fields = ("event", "log_level", "alert_id", "leg", "account", "broker", "status", "order_id", "message")
    assert [{k: line.get(k) for k in fields} for line in lines] == [
        {
            "event": "leg.failed" if symbol == "BAD" else "leg.done",
            "log_level": "debug",
            "alert_id": alert_id,
            "leg": n,
            "account": "s",
            "broker": "scripted",
            "status": "failed" if symbol == "BAD" else "success",
            "order_id": placed.get(symbol),
            "message": "BAD is not tradeable here" if symbol == "BAD" else "filled",
        }
        for n, symbol in enumerate(symbols, start=1)
    ]
    [done] = [e for e in events if e["event"] == "alert.done"]
    times = [line["latency_ms"] for line in lines]
    assert times == [line["latency_ms"] for line in done["legs"]]
    for time_ms in times:
        assert isinstance(time_ms, float), times
        assert time_ms > 0, times
        assert time_ms == round(time_ms, 3), times  # milliseconds to the microsecond
    assert sum(times) <= done["latency_ms"] + 0.001 * len(times), (times, done["latency_ms"])


async def test_while_a_cancel_leg_is_at_the_broker_the_earlier_legs_result_is_journaled(
    make_client: ClientFactory, config: Config
) -> None:
    """A `cancel_order` alert of two legs: leg 2's `sending` mark carries leg 1's result (one commit a leg, as
    for order legs). While the broker holds leg 2's cancel, `GET /alerts/<id>` already shows leg 1's cancel done
    with the order it cancelled, so a crash then finds leg 1 settled instead of leaving it `sending`; once the
    broker answers, both legs are done and each order was cancelled once."""
    config = scripted(config, cancel_answer="cancel", hold_legs=[2])
    config = attrs.evolve(config, server=attrs.evolve(config.server, response_deadline_s=60))
    client = await make_client(config)
    for symbol in ("INFY", "TCS"):
        placed = await client.post("/webhook", json=alert(leg(symbol=symbol)))
        assert placed.status == 200, await placed.text()
    order_ids = {o["symbol"]: o["order_id"] for o in orders_received(config)}
    broker: Any = client.app[BROKERS]["s"]  # the scripted broker, behind its guard
    cancels = alert({"symbol": "INFY"}, {"symbol": "TCS", "sort_order": "2"}, alert_type="cancel_order")
    response = asyncio.create_task(client.post("/webhook", json=cancels))
    try:
        async with asyncio.timeout(10):  # bounded: the broker has leg 2's cancel once leg 1's is answered
            await broker.holding.wait()
        [alert_id] = {request.alert_id for request in broker.cancel_requests}
        record = await stored(client, alert_id)
        assert [(lg["leg_number"], lg["state"], lg["order_id"]) for lg in record["legs"]] == [
            (1, "cancelled", order_ids["INFY"]),
            (2, "sending", None),
        ], record["legs"]
    finally:
        broker.release()
        answer = await response
    assert answer.status == 200, await answer.text()
    body = await answer.json()
    assert [(r["leg_number"], r["status"], r["order_id"]) for r in body["results"]] == [
        (1, "success", order_ids["INFY"]),
        (2, "success", order_ids["TCS"]),
    ]
    assert [(r.leg_number, r.leg.symbol) for r in broker.cancel_requests] == [(1, "INFY"), (2, "TCS")]


# the paper book joined into the alert's commit (`Executor._finish_joined`): one commit settles the whole alert


def journal_commits(client: Any) -> int:
    journal = client.app[JOURNAL]
    assert isinstance(journal, Journal)
    return journal.database.batches


async def posted(client: Any, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The answer to `body` (200), and the journal commits it cost, its results' hand-over included."""
    before = journal_commits(client)
    response = await client.post("/webhook", json=body)
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    await client.app[JOURNAL].settle()
    return answer, journal_commits(client) - before


async def warmed(client: Any) -> None:
    """One alert first: what a server writes once after its start is not counted as an alert's commit."""
    await posted(client, alert(leg(symbol="SBIN", quantity="1", price="100")))


def pending_rows(config: Config) -> dict[str, int]:
    """Alerts whose order log row may be missing (`order_log_pending`), read from the journal's file."""
    conn = sqlite3.connect(config.data_path("tvbridge.sqlite3"))
    try:
        return dict(conn.execute("SELECT alert_id, order_log_pending FROM alerts WHERE order_log_pending IS NOT NULL"))
    finally:
        conn.close()


@pytest.fixture
def sqlite_only(store_env: dict[str, str]) -> None:
    if store_env:
        pytest.skip("the paper book joins the SQLite journal only")


@pytest.mark.usefixtures("sqlite_only")
@pytest.mark.parametrize("synchronous", ["normal", "full"])
async def test_a_strategys_alert_settled_in_its_one_commit_is_recorded_under_its_strategy(
    make_client: ClientFactory, tmp_path: Path, converter: Any, synchronous: str
) -> None:
    """A paper alert of strategy `alpha`, settled inside its one commit: its leg's result is alpha's in
    `GET /alerts/<id>` and in the order log's strategy column. With `synchronous = "full"` the commit
    runs on the journal's own thread, where no alert's context is (the current strategy there is `default`), so
    the settling must run under the alert's own strategy, not whichever it finds."""
    (tmp_path / "config.toml").write_text(
        f'[journal]\nsynchronous = "{synchronous}"\n[strategies.alpha]\nsecret = "{ALPHA_SECRET}"\n', encoding="utf-8"
    )
    env = {"WEBHOOK_SECRET": SECRET, "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path), "TVBRIDGE_SESSIONS__ENABLED": "false"}
    config = load_config(tmp_path / "config.toml", converter, env, tmp_path)
    client = await make_client(config)
    await warmed(client)
    answer, cost = await posted(client, alert(leg(symbol="INFY", price="100"), secret=ALPHA_SECRET))
    assert cost == 1  # the one commit: settled inside it
    assert [r["status"] for r in answer["results"]] == ["success"]
    record = await stored(client, answer["alert_id"])
    assert record["strategy"] == "alpha"
    assert [lg["result"]["strategy"] for lg in record["legs"]] == ["alpha"]
    [row] = [row for row in order_log(config) if row["alert_id"] == answer["alert_id"]]
    assert row["strategy"] == "alpha"


@pytest.mark.usefixtures("sqlite_only")
async def test_two_paper_accounts_in_one_commit_each_leg_line_is_its_own_accounts(
    make_client: ClientFactory, config: Config
) -> None:
    """Two paper accounts (the second trades twice the alert's quantity), one leg, settled in one commit: each
    account's `leg.done` debug line has its own account's result, as the answer does (not the first account's
    result twice)."""
    practice = {"broker": "paper", "quantity_multiplier": 2}
    config = with_accounts(config, {"paper": {"broker": "paper"}, "practice": practice})
    client = await make_client(config)
    await warmed(client)
    with capture_logs(processors=[merge_contextvars]) as events:
        answer, cost = await posted(client, alert(leg(symbol="INFY", quantity="3", price="100")))
    assert cost == 1
    placed = [(r["account"], r["status"], r["order_id"], r["message"]) for r in answer["results"]]
    assert [(account, status) for account, status, _, _ in placed] == [("paper", "success"), ("practice", "success")]
    assert [r["quantity"] for r in answer["results"]] == ["3", "6"]
    lines = [e for e in events if e["event"] in {"leg.done", "leg.failed"}]
    assert sorted((e["account"], e["status"], e["order_id"], e["message"]) for e in lines) == placed


@pytest.mark.usefixtures("sqlite_only")
async def test_an_order_log_the_disk_refuses_after_the_one_commit_costs_no_answer_and_keeps_the_mark(
    make_client: ClientFactory, config: Config
) -> None:
    """The alert settled in its one commit, then its order log row cannot be written (a full disk): still
    answered 200 with its order, the failure is an `order_log.write_failed` error line with the alert's id and the
    traceback, and the alert keeps its "order log row pending" mark in the journal, so the next start writes the
    row."""
    client = await make_client(config)
    await warmed(client)
    order_log_file = config.data_path(config.order_log.file)
    with refusing_writes(order_log_file), capture_logs(processors=[merge_contextvars]) as logs:
        answer, cost = await posted(client, alert(leg(symbol="INFY", price="100")))
    assert cost == 1
    assert [r["status"] for r in answer["results"]] == ["success"]
    failed = [line for line in logs if line["event"] == "order_log.write_failed"]
    assert [(line["log_level"], line["alert_id"], line.get("exc_info")) for line in failed] == [
        ("error", answer["alert_id"], True)
    ]
    assert pending_rows(config) == {answer["alert_id"]: 1}
    assert answer["alert_id"] not in {row["alert_id"] for row in order_log(config)}


@pytest.mark.parametrize("how", ["below one lot", "sizing bug"])
async def test_a_chosen_contract_refused_for_its_size_is_named_in_the_refusal(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A relative option leg (ATM on the 2026-12-08 grid) whose contract is chosen, then refused while it is
    sized: below one lot (a capital of 1000 at a price of 100 is 10 units; a lot is 65), or by a bug in the sizing
    (it raises). The leg fails unsent, and the answer, the order log row and the journal still name the contract
    it was refused for (what the trader checks before resending)."""
    refusal = "not sent: quantity_type capital: capital 1000 / price 100 = 10 units, below one lot of 65 units"
    if how == "sizing bug":
        refusal = "not sent: the contract or quantity could not be worked out (ValueError)"

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise ValueError("no size")

        monkeypatch.setattr("tvbridge.executor.size", broken)
    config = on_paper(config)
    client = await make_client(config)
    body_leg = leg(
        **NIFTY_OPTION,
        option_type="CE",
        strike_price="ATM",
        expiry_date="2026-12-08",
        underlying_price="24012.35",
        quantity_type="capital",
        quantity="1000",
        price="100",
    )
    response = await client.post("/webhook", json=alert(body_leg))
    assert response.status == 200, await response.text()
    body = await response.json()
    [result] = body["results"]
    assert result["status"] == "failed", result
    contract = "NIFTY-Dec2026-24000-CE (expiry 2026-12-08, strike 24000, security_id "
    assert result["contract"].startswith(contract), result
    assert result["message"].startswith(f"{result['contract']}; {refusal}"), result["message"]
    assert await paper_orders(client) == []
    [row] = order_log(config)
    assert (row["status"], row["message"]) == ("failed", result["message"])
    assert (await stored(client, body["alert_id"]))["legs"][0]["result"]["contract"] == result["contract"]


# a joined booking's outcome read after the commit (`Executor._joined_result`)


@pytest.mark.usefixtures("sqlite_only")
async def test_a_booking_that_answers_garbage_after_booking_is_found_by_lookup_under_its_alert(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The paper book books the order in the alert's commit, then answers something that is not an order (a
    plugin bug): the booking stands, so the lookup finds it; the leg is placed with the book's order id, its
    message says it was found by lookup, and both the `broker.unexpected_error` and the `leg.resolved_by_lookup`
    lines name the alert, the leg and the account. One order in the book."""
    book = PaperBroker.place_joined

    def garbage(self: PaperBroker, conn: Any, request: OrderRequest) -> Any:
        book(self, conn, request)
        return {"order": "booked"}

    monkeypatch.setattr(PaperBroker, "place_joined", garbage)
    client = await make_client(config)
    with capture_logs(processors=[merge_contextvars]) as events:
        response = await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))
    assert response.status == 200, await response.text()
    body = await response.json()
    alert_id = body["alert_id"]
    [order] = await paper_orders(client)
    [result] = body["results"]
    assert (result["status"], result["order_id"], result["client_order_id"]) == (
        "success",
        order.order_id,
        f"{alert_id}-1",
    )
    assert result["message"].endswith("(found by lookup after: the booking's answer was lost)"), result
    fields = ("log_level", "alert_id", "leg", "account")
    lines = {
        e["event"]: {k: e.get(k) for k in fields}
        for e in events
        if e["event"] in {"broker.unexpected_error", "leg.resolved_by_lookup"}
    }
    assert lines == {
        "broker.unexpected_error": {"log_level": "error", "alert_id": alert_id, "leg": 1, "account": "paper"},
        "leg.resolved_by_lookup": {"log_level": "warning", "alert_id": alert_id, "leg": 1, "account": "paper"},
    }


@pytest.mark.usefixtures("sqlite_only")
async def test_a_leg_refused_before_its_commit_gives_back_no_daily_count(
    make_client: ClientFactory, config: Config
) -> None:
    """`max_orders_per_day = 1`: the first paper alert is booked; the second is refused by the limit (in its
    checks, before its commit: it never took a count), and so must the third be. Giving back a count for the
    refused leg would let the third through: two orders on a limit of one."""
    config = attrs.evolve(config, risk=RiskConfig(max_orders_per_day=1))
    client = await make_client(config)
    answers = []
    for symbol in ("INFY", "TCS", "SBIN"):
        response = await client.post("/webhook", json=alert(leg(symbol=symbol, price="100")))
        assert response.status == 200, await response.text()
        answers.append(await response.json())
    assert [r["status"] for body in answers for r in body["results"]] == ["success", "failed", "failed"]
    assert all("max_orders_per_day" in body["results"][0]["message"] for body in answers[1:]), answers
    assert [order.symbol for order in await paper_orders(client)] == ["INFY"]


@pytest.mark.usefixtures("sqlite_only")
async def test_a_sized_booking_whose_outcome_is_unknown_keeps_its_sizing_note(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paper account trading twice the alert's quantity (`quantity_multiplier = 2`); its booking loses its
    answer (an unknown outcome, nothing booked): the leg is `unknown` after the lookup, and its message still
    says how it was sized, as a placed leg's does."""

    def lost(self: PaperBroker, conn: Any, request: OrderRequest) -> Any:
        raise BrokerUnknownOutcomeError("the line went quiet")

    monkeypatch.setattr(PaperBroker, "place_joined", lost)
    config = with_accounts(config, {"paper": {**config.accounts["paper"], "quantity_multiplier": 2}})
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(symbol="INFY", quantity="10", price="100")))
    assert response.status == 200, await response.text()
    body = await response.json()
    [result] = body["results"]
    assert (result["status"], result["quantity"]) == ("unknown", "20"), result
    assert result["message"].startswith(
        "sized: 10 units x quantity_multiplier 2 = 20 units, rounded down to 20; outcome unknown (the line went quiet)"
    ), result["message"]
    assert await paper_orders(client) == []


@pytest.mark.usefixtures("sqlite_only")
async def test_an_alert_only_partly_booked_in_its_commit_logs_no_error(
    make_client: ClientFactory, config: Config
) -> None:
    """A two-leg paper alert: its first leg is booked in the alert's commit, its second after it, so the commit
    does not settle the alert (nothing to finish there). Both legs are placed, and the alert writes no error line
    (a `joined.finish_failed` would send an operator looking for a bug that is not there)."""
    client = await make_client(config)
    legs = alert(leg(symbol="INFY", price="100"), leg(symbol="TCS", price="100", sort_order="2"))
    with capture_logs(processors=[merge_contextvars]) as events:
        response = await client.post("/webhook", json=legs)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert [r["status"] for r in body["results"]] == ["success", "success"]
    assert [order.symbol for order in await paper_orders(client)] == ["INFY", "TCS"]
    assert [e["event"] for e in events if e["log_level"] in {"error", "critical"}] == []
