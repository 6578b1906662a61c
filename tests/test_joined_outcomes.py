"""How the executor reads the outcome of a paper order booked inside the alert's own commit (`alerts/joined.py`,
`Executor._joined_result`): a refusal, a lost answer and a plugin bug each reach the answer, the order log and the
log as a `place()` call's would. Checked where a user sees them, through the real app on the SQLite journal."""

from __future__ import annotations

import csv
import sqlite3
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from helpers import alert, leg, with_accounts
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from tvbridge.broker import BrokerUnknownOutcomeError, OrderRequest
from tvbridge.config import RiskConfig, StrategyConfig
from tvbridge.halt import set_halt
from tvbridge.keys import BROKERS, JOINED, JOURNAL
from tvbridge.risk import RiskGuard
from tvbridge.strategies import strategy_halt_path
from tvbridge_brokers.paper import PaperBroker

if TYPE_CHECKING:
    from collections.abc import MutableMapping

    from helpers import ClientFactory

    from tvbridge.config import Config


ALPHA = "alpha-secret-0123456789abcdef"


@pytest.fixture(autouse=True)
def _sqlite_only(store_env: dict[str, str]) -> None:
    if store_env:
        pytest.skip("the paper book joins the SQLite journal only")


async def alert_on_one_account(
    make_client: ClientFactory, config: Config, account: str
) -> tuple[dict[str, Any], list[MutableMapping[str, Any]]]:
    """One INFY alert to `account` alone: `paper` (booked in the alert's commit) or the scripted remote `a` (sent
    after it). The answer and the log lines it wrote."""
    config = with_accounts(
        config, {account: dict(config.accounts["paper"]) if account == "paper" else {"broker": "scripted"}}
    )
    client = await make_client(config)
    with capture_logs(processors=[merge_contextvars]) as events:
        body: dict[str, Any] = await (await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))).json()
    return body, events


def assert_unknown_and_not_found(body: dict[str, Any], reason: str) -> None:
    """The alert's one leg is `unknown` for `reason`, looked up by its client order id and not found."""
    [result] = body["results"]
    client_id = f"{body['alert_id']}-1"
    assert (result["status"], result["client_order_id"]) == ("unknown", client_id)
    assert result["message"] == (
        f"outcome unknown ({reason}); the broker has no order {client_id} yet: check before resending"
    )


def assert_check_failed_logged(events: list[MutableMapping[str, Any]], alert_id: str, account: str) -> None:
    """One `leg.check_failed` error line, naming the alert, its first leg and the account."""
    [line] = [e for e in events if e["event"] == "leg.check_failed"]
    assert {k: line.get(k) for k in ("log_level", "alert_id", "leg", "account")} == {
        "log_level": "error",
        "alert_id": alert_id,
        "leg": 1,
        "account": account,
    }


def order_log(config: Config) -> list[dict[str, str]]:
    with config.data_path(config.order_log.file).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


async def test_a_booking_the_book_refuses_is_failed_under_its_client_order_id(
    make_client: ClientFactory, config: Config
) -> None:
    """A buy SL whose limit is under its trigger, refused by the book inside the commit: failed with the book's
    reason, under the leg's client order id in the answer and in the order log row (what an operator looks up)."""
    client = await make_client(config)
    joined = client.app[JOINED]
    assert sorted(joined) == ["paper"]
    bad = leg(symbol="INFY", orderType="SL", price="90", triggerPrice="100")
    body = await (await client.post("/webhook", json=alert(bad))).json()
    [result] = body["results"]
    client_id = f"{body['alert_id']}-1"
    assert (result["status"], result["client_order_id"]) == ("failed", client_id)
    assert "a buy SL needs price >= triggerPrice" in result["message"]
    assert [(row["status"], row["client_order_id"]) for row in order_log(config)] == [("failed", client_id)]


@pytest.mark.parametrize(
    ("error", "reason", "logged"),
    [
        (RuntimeError("plugin bug"), "the 'paper' broker plugin raised RuntimeError: plugin bug", True),
        (BrokerUnknownOutcomeError("connection dropped"), "connection dropped", False),
    ],
    ids=["plugin bug", "answer lost"],
)
async def test_a_booking_without_an_answer_is_looked_up_and_a_plugin_bug_is_logged(
    make_client: ClientFactory,
    config: Config,
    monkeypatch: pytest.MonkeyPatch,
    *,
    error: Exception,
    reason: str,
    logged: bool,
) -> None:
    """The booking raised before writing anything: the leg is `unknown` after the book's lookup found no order,
    its message names why (the plugin's bug, or the lost answer's own reason); only a plugin bug is a
    `broker.unexpected_error` line, naming the alert, leg, account and the error."""

    def raises(self: PaperBroker, conn: sqlite3.Connection, request: OrderRequest) -> Any:
        raise error

    monkeypatch.setattr(PaperBroker, "place_joined", raises)
    client = await make_client(config)
    with capture_logs(processors=[merge_contextvars]) as events:
        body = await (await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))).json()
    assert_unknown_and_not_found(body, reason)
    lines = [
        {k: e.get(k) for k in ("log_level", "alert_id", "leg", "account", "error")}
        for e in events
        if e["event"] == "broker.unexpected_error"
    ]
    expected = {"log_level": "error", "alert_id": body["alert_id"], "leg": 1, "account": "paper", "error": repr(error)}
    assert lines == ([expected] if logged else [])


async def test_a_booking_whose_outcome_never_came_back_is_unknown_and_looked_up(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alert recorded but its booking's outcome not kept (a store that committed without running the join):
    the leg is never taken as placed or refused, it is `unknown`, looked up, and its message says why."""
    client = await make_client(config)
    journal = client.app[JOURNAL]
    record_plan = journal.record_plan

    async def without_the_booking(entry: Any, **kwargs: Any) -> Any:
        kwargs.pop("join", None)
        return await record_plan(entry, **kwargs)

    monkeypatch.setattr(journal, "record_plan", without_the_booking)
    body = await (await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))).json()
    assert_unknown_and_not_found(body, "the booking's answer was lost")


async def test_a_paper_account_after_another_account_is_still_booked_in_the_alerts_commit(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two accounts, the scripted `a` first in order and the joined paper book second: the paper leg is still
    booked inside the alert's commit (never through `place()`, which fails here), and both legs are placed."""

    def not_here(self: PaperBroker, request: OrderRequest) -> Any:
        raise RuntimeError("booked outside the alert's commit")

    monkeypatch.setattr(PaperBroker, "place", not_here)
    config = with_accounts(config, {"a": {"broker": "scripted"}, "paper": dict(config.accounts["paper"])})
    client = await make_client(config)
    body = await (await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))).json()
    assert [(r["account"], r["status"]) for r in body["results"]] == [("a", "success"), ("paper", "success")], body


@pytest.mark.parametrize("account", ["paper", "a"])
async def test_a_size_that_cannot_be_worked_out_is_refused_and_logged(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch, account: str
) -> None:
    """Sizing that fails with a bug (not a broker's refusal) never lets the leg through in the wrong size: refused,
    nothing sent, and a `leg.check_failed` line names the alert, leg and account; whether the leg would have been
    booked in the alert's commit (paper) or sent (the scripted `a`)."""

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("no size")

    monkeypatch.setattr("tvbridge.executor.size", broken)
    body, events = await alert_on_one_account(make_client, config, account)
    [result] = body["results"]
    assert (result["status"], result["message"]) == (
        "failed",
        "not sent: the contract or quantity could not be worked out (ValueError)",
    )
    assert_check_failed_logged(events, body["alert_id"], account)


async def test_a_refused_alert_that_is_not_recorded_gives_back_no_count_it_never_took(
    make_client: ClientFactory, config: Config
) -> None:
    """`max_orders_per_day = 1`, one order booked: the next alert's leg is refused by the limit, and then its
    journal write fails (503). The refused leg never took a count, so none is given back: a third alert is still
    refused by the limit, and the book holds one order."""
    config = attrs.evolve(config, risk=RiskConfig(max_orders_per_day=1))
    client = await make_client(config)
    journal: Any = client.app[JOURNAL]  # the SQLite journal, whose database the test breaks for one write
    first = await (await client.post("/webhook", json=alert(leg(symbol="INFY", price="100")))).json()
    assert first["status"] == "success"
    await journal.database.write(
        lambda conn: conn.execute(
            "CREATE TRIGGER fail_alerts AFTER INSERT ON alerts BEGIN SELECT RAISE(ROLLBACK, 'disk gone'); END"
        )
    )
    second = await client.post("/webhook", json=alert(leg(symbol="TCS", price="100")))
    assert second.status == 503
    await journal.database.write(lambda conn: conn.execute("DROP TRIGGER fail_alerts"))
    third = await (await client.post("/webhook", json=alert(leg(symbol="WIPRO", price="100")))).json()
    assert [(r["status"], r["message"]) for r in third["results"]] == [
        ("failed", "risk: 1 order(s) already sent today on account paper; max_orders_per_day is 1")
    ]
    await journal.settle()
    paper: Any = client.app[BROKERS]["paper"]  # the paper broker's own `orders()` (for tests and tools)
    assert [o.client_order_id for o in await paper.orders()] == [f"{first['alert_id']}-1"]


async def test_a_strategys_halt_set_while_its_alert_waits_for_its_commit_stops_it(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks passed, then, while strategy alpha's alert waits for its commit, alpha alone is halted: the commit
    asks alpha's halt again (not only the kill switch), so nothing is booked and the leg is failed with the halt."""
    config = attrs.evolve(config, strategies={"alpha": StrategyConfig(secret=ALPHA)})
    client = await make_client(config)
    journal: Any = client.app[JOURNAL]
    record_plan = journal.record_plan

    async def halt_alpha_then_record(entry: Any, **kwargs: Any) -> Any:
        set_halt(strategy_halt_path(config.server.data_dir, "alpha"), reason="alpha paused", by="test")
        return await record_plan(entry, **kwargs)

    monkeypatch.setattr(journal, "record_plan", halt_alpha_then_record)
    body = await (await client.post("/webhook", json=alert(leg(symbol="INFY", price="100"), secret=ALPHA))).json()
    assert [(r["status"], r["message"]) for r in body["results"]] == [
        ("failed", "strategy alpha halted (alpha paused): nothing was sent")
    ]
    await journal.settle()
    paper: Any = client.app[BROKERS]["paper"]
    assert await paper.orders() == []


@pytest.mark.parametrize("account", ["paper", "a"])
async def test_pre_send_checks_that_fail_with_a_bug_refuse_the_leg_and_log_it(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch, account: str
) -> None:
    """The risk checks failing with a bug (not a refusal) never let the leg through: failed, nothing sent, and a
    `leg.check_failed` line names the alert, leg and account; booked in the commit (paper) or sent (scripted)."""

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("no count")

    monkeypatch.setattr(RiskGuard, "before_send", broken)
    body, events = await alert_on_one_account(make_client, config, account)
    [result] = body["results"]
    assert (result["status"], result["message"]) == ("failed", "not sent: the pre-send checks failed (ValueError)")
    assert (result["account"], result["leg_number"], result["client_order_id"]) == (account, 1, f"{body['alert_id']}-1")
    assert_check_failed_logged(events, body["alert_id"], account)
