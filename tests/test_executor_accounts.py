"""The executor's run of one alert across its accounts (`Executor._run`), seen where an operator sees it: the
answer, the broker's orders, `GET /alerts/<id>`, the order log, the `account.failed` and `alert.done` log lines,
the arrival-to-broker histogram on `/metrics` and the journal's commits.

Issue 24's mutation testing found these unwatched: an account whose run breaks past every handler of its own
(`_account_crashed`), what the second and later accounts get besides the alert (its arrival, the premarked
`sending` marks, the per-leg timings), and the arithmetic of `alert.done`'s two times.
"""

from __future__ import annotations

import csv
import json
import time
from typing import TYPE_CHECKING, Any

import pytest
import tvbridge_testbrokers
from helpers import ClientFactory, alert, leg, with_accounts
from prometheus_client.parser import text_string_to_metric_families
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from tvbridge.broker import OrderResult, OrderState
from tvbridge.journal import Journal
from tvbridge.keys import CREDENTIALS, JOURNAL

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.test_utils import TestClient

    from tvbridge.broker import CancelRequest, OrderRequest
    from tvbridge.config import Config
    from tvbridge.models import OrderLeg

    Client = TestClient[web.Request, web.Application]

UNKNOWN = "outcome unknown (internal error while sending): check the broker before resending"


def accounts(config: Config, *names: str) -> Config:
    """Scripted accounts that can read positions (flat), so an EXIT_ALL leg reaches the executor's exit."""
    return with_accounts(config, {name: {"broker": "scripted", "positions_answer": "flat"} for name in names})


def orders_received(config: Config, account: str) -> list[str]:
    """The client order ids the account's broker received, in order."""
    path = config.data_path(f"scripted-{account}.jsonl")
    if not path.exists():
        return []
    return [json.loads(line)["client_order_id"] for line in path.read_text().splitlines()]


def order_log(config: Config) -> list[tuple[str, str, str, str]]:
    with config.data_path("webhook_orders.csv").open(newline="") as f:
        return [(r["account"], r["leg_number"], r["status"], r["client_order_id"]) for r in csv.DictReader(f)]


def admin(client: Client) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.app[CREDENTIALS].admin_token}"}


def metric(text: str, name: str) -> float:
    [value] = [s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]
    return value


def buy_then_exit() -> dict[str, Any]:
    """Leg 1 buys 10 RELIANCE; leg 2 closes the position EXIT_ALL finds (none: the accounts read flat). Built when
    the test runs: a leg's `meta.timenow` is the moment it is built."""
    return alert(leg(), leg(transactionType="S", quantity="", manage_position="EXIT_ALL", sort_order="2"))


@pytest.mark.parametrize("names", [("a",), ("a", "b")], ids=["alone", "beside-another-account"])
async def test_an_account_whose_run_breaks_has_its_legs_unknown_and_the_others_go_on(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...]
) -> None:
    """A plugin bug no handler of the account's run catches (account `a`'s `positions()` answers dicts, not
    positions: it breaks where EXIT_ALL works out the closing order, after the read's own handler): the account's
    legs are answered `unknown` with their client order ids (leg 1 did reach its broker), logged `account.failed`
    with the error, journaled and in the order log; another account of the same alert is untouched."""

    async def garbage(self: tvbridge_testbrokers.ScriptedPositionsBroker, leg: OrderLeg | None = None) -> Any:
        return [{"net_quantity": 10}] if self.context.account == "a" else []

    monkeypatch.setattr(tvbridge_testbrokers.ScriptedPositionsBroker, "positions", garbage)
    config = accounts(config, *names)
    client = await make_client(config)
    with capture_logs(processors=[merge_contextvars]) as events:
        response = await client.post("/webhook", json=buy_then_exit())
        body = await response.json()
    alert_id = body["alert_id"]
    assert response.status == 200, body
    assert body["status"] == ("failed" if names == ("a",) else "partial")  # no leg answered placed
    crashed = [
        (r["account"], r["leg_number"], r["status"], r["message"], r["client_order_id"]) for r in body["results"]
    ]
    assert crashed[:2] == [("a", n, "unknown", UNKNOWN, f"{alert_id}-{n}") for n in (1, 2)]
    [failed] = [e for e in events if e["event"] == "account.failed"]
    assert {k: failed[k] for k in ("log_level", "alert_id", "account", "error")} == {
        "log_level": "error",
        "alert_id": alert_id,
        "account": "a",
        "error": "AttributeError: 'dict' object has no attribute 'product'",
    }
    assert orders_received(config, "a") == [f"{alert_id}-1"]  # sent before the break: hence "check the broker"
    record = await (await client.get(f"/alerts/{alert_id}", headers=admin(client))).json()
    states = [(r["account"], r["leg_number"], r["state"]) for r in record["legs"]]
    logged = order_log(config)
    assert states[:2] == [("a", 1, "unknown"), ("a", 2, "unknown")]
    assert logged[:2] == [("a", str(n), "unknown", f"{alert_id}-{n}") for n in (1, 2)]
    if names == ("a", "b"):
        assert [(r["account"], r["leg_number"], r["status"]) for r in body["results"][2:]] == [
            ("b", 1, "success"),
            ("b", 2, "success"),
        ]
        assert orders_received(config, "b") == [f"{alert_id}-1"]
        assert states[2:] == [("b", 1, "placed"), ("b", 2, "placed")]
        assert logged[2:] == [("b", str(n), "success", f"{alert_id}-{n}") for n in (1, 2)]
    assert len(states) == len(logged) == len(body["results"]) == 2 * len(names)


async def test_an_account_whose_cancel_breaks_reports_the_cancel_unknown_without_a_client_order_id(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin bug past every handler of a cancel leg (the broker answers its cancel with an order id that is a
    number, not text: it breaks where the answer's message names the ids): the leg is `unknown` (the cancel may
    have gone through), and, a cancel placing nothing under a client order id, none is made up for it: not in
    the answer, not in the order log."""

    async def numbered(self: tvbridge_testbrokers.ScriptedBroker, request: CancelRequest) -> list[OrderResult]:
        return [OrderResult(order_id=7, state=OrderState.CANCELLED, message="cancelled")]  # type: ignore[arg-type]

    monkeypatch.setattr(tvbridge_testbrokers.ScriptedBroker, "cancel", numbered)
    config = with_accounts(config, {"a": {"broker": "scripted"}})
    client = await make_client(config)
    with capture_logs(processors=[merge_contextvars]) as events:
        response = await client.post(
            "/webhook", json=alert({"symbol": "INFY", "exchange": "NSE"}, alert_type="cancel_order")
        )
        body = await response.json()
    assert response.status == 200, body
    [result] = body["results"]
    assert (result["account"], result["leg_number"], result["status"], result["message"]) == (
        "a",
        1,
        "unknown",
        UNKNOWN,
    )
    assert result["client_order_id"] is None
    assert [e["account"] for e in events if e["event"] == "account.failed"] == ["a"]
    assert order_log(config) == [("a", "1", "unknown", "")]


@pytest.mark.sqlite_only  # counts the SQLite journal's commits
async def test_every_account_of_an_alert_gets_its_arrival_its_leg_time_and_no_second_sending_mark(
    make_client: ClientFactory, config: Config
) -> None:
    """Two accounts (run side by side), one leg each: each leg's time is in `alert.done`, within the alert's own;
    each order's time from the request's arrival is in the arrival-to-broker histogram, within the alert's time
    since arrival; and each account's leg, marked `sending` in the alert's own commit, is not marked again: the
    alert costs two journal commits, its own and its results'."""
    config = with_accounts(config, {"a": {"broker": "scripted"}, "b": {"broker": "scripted"}})
    client = await make_client(config)
    journal = client.app[JOURNAL]
    assert isinstance(journal, Journal)
    # one alert first: what a server writes once after its start (the closed-market queue's first look) is not
    # this alert's
    assert (await client.post("/webhook", json=alert(leg(symbol="SBIN")))).status == 200
    await journal.settle()
    commits = journal.database.batches
    before = await (await client.get("/metrics")).text()
    with capture_logs(processors=[merge_contextvars]) as events:
        response = await client.post("/webhook", json=alert(leg()))
        body = await response.json()
    await journal.settle()
    assert journal.database.batches - commits == 2
    assert response.status == 200
    assert [(r["account"], r["status"], r["order_id"]) for r in body["results"]] == [
        ("a", "success", "S00002"),
        ("b", "success", "S00002"),
    ]
    [done] = [e for e in events if e["event"] == "alert.done"]
    legs = [(line["account"], line["leg"], line["latency_ms"]) for line in done["legs"]]
    assert [(account, number) for account, number, _ in legs] == [("a", 1), ("b", 1)]
    assert all(isinstance(ms, float) and 0 < ms <= done["latency_ms"] for _, _, ms in legs), done
    after = await (await client.get("/metrics")).text()
    count, total = (
        metric(after, f"tvbridge_alert_to_broker_seconds_{part}")
        - metric(before, f"tvbridge_alert_to_broker_seconds_{part}")
        for part in ("count", "sum")
    )
    assert count == 2
    assert 0 < total * 1000 < 2 * done["since_arrival_ms"]


class Clock:
    """`time.perf_counter` standing still until the test moves it: the process's clock for durations."""

    def __init__(self) -> None:
        self.at = 1000.0

    def __call__(self) -> float:
        return self.at


async def test_alert_done_times_are_the_milliseconds_the_clock_moved(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`alert.done`'s `latency_ms` is the executor's time (here the broker's 12.3456 ms), `since_arrival_ms` the
        time since the request arrived (the alert's own commit's 500 ms before it too), each rounded to the
        microsecond; the arrival-to-broker histogram has the 500 ms, and the request's `request_ms` the 512.346 ms
    (nothing moved the clock after the broker). No sleep: `time.perf_counter` moves only when the test says."""
    config = with_accounts(config, {"s": {"broker": "scripted"}})
    client = await make_client(config)
    clock = Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    journal = client.app[JOURNAL]
    record_plan = journal.record_plan
    place = tvbridge_testbrokers.ScriptedBroker.place

    async def slow_commit(*args: Any, **kwargs: Any) -> None:
        clock.at += 0.5
        await record_plan(*args, **kwargs)

    async def slow_place(self: tvbridge_testbrokers.ScriptedBroker, request: OrderRequest) -> OrderResult:
        clock.at += 0.0123456
        return await place(self, request)

    monkeypatch.setattr(journal, "record_plan", slow_commit)
    monkeypatch.setattr(tvbridge_testbrokers.ScriptedBroker, "place", slow_place)
    with capture_logs(processors=[merge_contextvars]) as events:
        response = await client.post("/webhook", json=alert(leg()))
        body = await response.json()
    assert response.status == 200
    assert body["status"] == "success"
    [done] = [e for e in events if e["event"] == "alert.done"]
    assert [line["latency_ms"] for line in done["legs"]] == [12.346]
    assert (done["latency_ms"], done["since_arrival_ms"], done["request_ms"]) == (12.346, 512.346, 512.346)
    found = await (await client.get("/metrics")).text()
    assert metric(found, "tvbridge_alert_to_broker_seconds_count") == 1
    assert metric(found, "tvbridge_alert_to_broker_seconds_sum") == 0.5
