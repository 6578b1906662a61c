"""`cancel_order` alerts through the real app, in-process, against the scripted broker told how to answer a
cancel: what the trader sees in the answer, the journal and the order log for each way a broker can answer
(cancelled, dry run, refused, answer lost, plugin bug, no cancel capability at all).

In-process on purpose: the executor's cancel path is part of mutation testing's `executor` group
(scripts/mutation.sh), which can only see tests that run the code in this process.
"""

from __future__ import annotations

import asyncio
import csv
from typing import TYPE_CHECKING, Any

import pytest
from helpers import alert, leg, with_accounts
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from tvbridge.errors import JournalError
from tvbridge.keys import BROKERS, JOURNAL

if TYPE_CHECKING:
    from helpers import ClientFactory

    from tvbridge.config import Config


def scripted(config: Config, **settings: Any) -> Config:
    return with_accounts(config, {"sim": {"broker": "scripted", **settings}})


async def post(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/webhook", json=body)
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


def cancel(**fields: Any) -> dict[str, Any]:
    return alert(fields, alert_type="cancel_order")


def order_log_rows(config: Config) -> list[dict[str, str]]:
    with config.data_path(config.order_log.file).open(newline="") as f:
        return list(csv.DictReader(f))


async def journal_legs(client: Any, alert_id: str) -> list[dict[str, Any]]:
    record = await client.app[JOURNAL].get_alert(alert_id)
    assert record is not None
    return list(record["legs"])


async def test_cancel_by_symbol_cancels_each_order_and_names_them(make_client: ClientFactory, config: Config) -> None:
    """Two INFY orders and a TCS order held: cancelling INFY asks the broker once, for INFY, with the alert's id
    and leg number; the answer, the journal and the order log name both cancelled orders, and only those."""
    config = scripted(config, cancel_answer="cancel")
    client = await make_client(config)
    for quantity, symbol in enumerate(("INFY", "TCS", "INFY"), start=1):  # distinct alerts: no dedupe
        await post(client, alert(leg(symbol=symbol, quantity=str(quantity))))
    body = await post(client, cancel(symbol="INFY", exchange="NSE"))
    [result] = body["results"]
    assert (body["status"], result["status"]) == ("success", "success")
    assert result["message"] == "cancelled 2 order(s): S00001, S00003"
    assert result["order_id"] == "S00001,S00003"
    assert result["client_order_id"] is None  # a cancel places nothing under a client order id
    broker: Any = client.app[BROKERS]["sim"]
    [request] = broker.cancel_requests
    assert (request.alert_id, request.leg_number, request.leg.symbol) == (body["alert_id"], 1, "INFY")
    [journaled] = await journal_legs(client, body["alert_id"])
    assert (journaled["state"], journaled["order_id"]) == ("cancelled", "S00001,S00003")
    row = order_log_rows(config)[-1]
    assert (row["alert_id"], row["status"], row["order_id"]) == (body["alert_id"], "success", "S00001,S00003")
    assert [row[c] for c in ("symbol", "exchange", "transaction", "quantity", "order_type", "price")] == [
        "INFY",
        "NSE",
        "",
        "",
        "CANCEL",
        "",
    ]
    assert (row["client_order_id"], row["message"]) == ("", "cancelled 2 order(s): S00001, S00003")


async def test_cancel_by_order_id_cancels_that_order(make_client: ClientFactory, config: Config) -> None:
    config = scripted(config, cancel_answer="cancel")
    client = await make_client(config)
    await post(client, alert(leg(symbol="INFY", quantity="1")))
    await post(client, alert(leg(symbol="INFY", quantity="2")))
    body = await post(client, cancel(order_id="S00002", transactionType="B"))
    [result] = body["results"]
    assert (result["status"], result["message"], result["order_id"]) == (
        "success",
        "cancelled 1 order(s): S00002",
        "S00002",
    )
    broker: Any = client.app[BROKERS]["sim"]
    assert [r.leg.order_id for r in broker.cancel_requests] == ["S00002"]
    # the leg named only the order and its side: the row's other cells are empty, not made up
    row = order_log_rows(config)[-1]
    assert [row[c] for c in ("symbol", "exchange", "transaction", "quantity", "order_type", "product_type")] == [
        "",
        "",
        "B",
        "",
        "CANCEL",
        "",
    ]


async def test_a_cancel_that_finds_nothing_succeeds_with_no_order_id(
    make_client: ClientFactory, config: Config
) -> None:
    config = scripted(config, cancel_answer="cancel")
    client = await make_client(config)
    body = await post(client, cancel(symbol="INFY"))
    [result] = body["results"]
    assert (result["status"], result["message"], result["order_id"]) == ("success", "cancelled 0 order(s)", None)


async def test_a_dry_run_cancel_is_test_mode(make_client: ClientFactory, config: Config) -> None:
    """A broker answering its cancels as dry runs cancelled nothing for real: the leg is `test_mode`."""
    config = scripted(config, cancel_answer="dry_run")
    client = await make_client(config)
    await post(client, alert(leg(symbol="INFY")))
    body = await post(client, cancel(symbol="INFY"))
    [result] = body["results"]
    assert (result["status"], result["message"], result["order_id"]) == (
        "test_mode",
        "cancelled 1 order(s): S00001",
        "S00001",
    )


async def test_a_cancel_the_broker_refuses_fails_with_its_reason(make_client: ClientFactory, config: Config) -> None:
    config = scripted(config, cancel_answer="rejected")
    client = await make_client(config)
    body = await post(client, cancel(order_id="S00001"))
    [result] = body["results"]
    assert (body["status"], result["status"], result["message"]) == ("failed", "failed", "the order is already filled")
    [journaled] = await journal_legs(client, body["alert_id"])
    assert (journaled["state"], journaled["message"]) == ("failed", "the order is already filled")


async def test_a_refused_cancel_is_journaled_before_the_alerts_results(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alert's results are lost (as by a crash before their commit): the journal already has the refused
    cancel `failed` with the broker's reason, so a restart's recovery settles it as refused and never asks the
    broker to cancel again (the trader was told the cancel failed, and may have acted on it)."""
    config = scripted(config, cancel_answer="rejected")
    client = await make_client(config)
    journal = client.app[JOURNAL]

    async def lost(*_args: Any) -> bool:
        return False

    monkeypatch.setattr(journal, "record_results", lambda *args: asyncio.ensure_future(lost(*args)))
    body = await post(client, cancel(order_id="S00001"))
    assert body["status"] == "failed"
    record = await journal.get_alert(body["alert_id"])
    assert record is not None
    assert record["status"] == "accepted"  # the results were never written
    assert [(leg_["state"], leg_["message"]) for leg_ in record["legs"]] == [("failed", "the order is already filled")]


async def test_a_cancel_whose_answer_is_lost_is_unknown(make_client: ClientFactory, config: Config) -> None:
    """The broker may have cancelled: never reported as failed (the trader would send it again) nor as done."""
    config = scripted(config, cancel_answer="unknown")
    client = await make_client(config)
    body = await post(client, cancel(symbol="INFY"))
    [result] = body["results"]
    assert result["status"] == "unknown"
    assert result["message"] == (
        "cancel outcome unknown (connection dropped after the cancel was sent): check the broker"
    )
    assert (result["leg_number"], result["account"]) == (1, "sim")
    assert [(row["status"], row["leg_number"], row["account"]) for row in order_log_rows(config)] == [
        ("unknown", "1", "sim")
    ]


async def test_a_plugin_bug_in_cancel_is_unknown_and_names_the_plugin(
    make_client: ClientFactory, config: Config
) -> None:
    """Some orders may be cancelled already when a plugin raises: unknown, the plugin named, the trace logged."""
    config = scripted(config, cancel_answer="bug")
    client = await make_client(config)
    with capture_logs(processors=[merge_contextvars]) as logs:
        body = await post(client, cancel(symbol="INFY"))
    [result] = body["results"]
    assert result["status"] == "unknown"
    assert result["message"] == (
        "cancel outcome unknown (the 'scripted' broker plugin raised RuntimeError: cancel table missing):"
        " check the broker"
    )
    assert (result["leg_number"], result["account"]) == (1, "sim")
    [line] = [e for e in logs if e["event"] == "broker.unexpected_error"]
    assert (line["log_level"], line["alert_id"], line["leg"], line["account"]) == ("error", body["alert_id"], 1, "sim")
    assert "exc_info" in line


async def test_a_broker_that_cannot_cancel_is_never_asked(make_client: ClientFactory, config: Config) -> None:
    config = scripted(config, cancel=False, cancel_answer="cancel")
    client = await make_client(config)
    await post(client, alert(leg(symbol="INFY")))
    body = await post(client, cancel(symbol="INFY"))
    [result] = body["results"]
    assert result["status"] == "failed"
    assert result["message"] == "this broker cannot cancel orders"
    broker: Any = client.app[BROKERS]["sim"]
    assert broker.cancel_requests == []


async def test_legs_whose_sending_mark_fails_are_not_sent(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leg is marked `sending` (committed) before its broker call; when the journal refuses the mark, the leg is
    not sent (unmarked, a crash could send it twice), fails with the journal's reason, and one `leg.not_sent`
    error line says so. A plain order's second leg keeps its client order id; a cancel has none and cancels
    nothing. (A plain order's first leg is marked with the alert itself.)"""
    config = scripted(config, cancel_answer="cancel")
    client = await make_client(config)
    await post(client, alert(leg(symbol="INFY")))  # an order for the cancel to find

    async def refused(*args: Any, **kwargs: Any) -> None:
        raise JournalError("journal unwritable")

    monkeypatch.setattr(client.app[JOURNAL], "mark_sending", refused)
    with capture_logs(processors=[merge_contextvars]) as logs:
        orders = await post(client, alert(leg(symbol="TCS"), leg(symbol="SBIN", sort_order="2")))
        cancelled = await post(client, cancel(symbol="INFY", exchange="NSE"))

    first, second = orders["results"]
    assert (first["status"], first["symbol"]) == ("success", "TCS")
    assert (second["status"], second["message"], second["symbol"]) == ("failed", "not sent: journal unwritable", "SBIN")
    assert (second["account"], second["leg_number"], second["client_order_id"]) == (
        "sim",
        2,
        f"{orders['alert_id']}-2",
    )
    [result] = cancelled["results"]
    assert (result["status"], result["message"], result["client_order_id"]) == (
        "failed",
        "not sent: journal unwritable",
        None,
    )
    assert client.app[BROKERS]["sim"].cancel_requests == []  # type: ignore[attr-defined]  # the scripted broker
    lines = [
        (e["log_level"], e["alert_id"], e["leg"], e["account"], e["error"])
        for e in logs
        if e["event"] == "leg.not_sent"
    ]
    assert lines == [
        ("error", orders["alert_id"], 2, "sim", "journal unwritable"),
        ("error", cancelled["alert_id"], 1, "sim", "journal unwritable"),
    ]
