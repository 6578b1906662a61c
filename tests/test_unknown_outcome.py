"""Unknown outcomes: a broker that takes the order and loses the answer is settled by client order id."""

from __future__ import annotations

import csv
from typing import TYPE_CHECKING

from durability_server import scripted_orders
from helpers import alert, leg, with_accounts
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

if TYPE_CHECKING:
    from pathlib import Path

    from helpers import ClientFactory

    from tvbridge.config import Config


async def test_lost_answer_is_reconciled_without_a_second_order(
    make_client: ClientFactory, config: Config, tmp_path: Path
) -> None:
    """The broker places the order, then the connection drops (`BrokerUnknownOutcomeError`): tvbridge looks
    the order up by its client order id, reports it placed with the broker's order id, and sends nothing
    again; the next leg runs normally."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "lose_answer_symbols": ["TCS"]}})
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(symbol="TCS"), leg(symbol="INFY", sort_order="2")))
    body = await response.json()
    assert response.status == 200
    alert_id = body["alert_id"]
    orders = scripted_orders(tmp_path)  # the strict broker: a second place() would be a second line here
    assert [o["client_order_id"] for o in orders] == [f"{alert_id}-1", f"{alert_id}-2"], "placed again"
    assert body["status"] == "success"
    assert [(r["symbol"], r["status"]) for r in body["results"]] == [("TCS", "success"), ("INFY", "success")]
    assert body["results"][0]["order_id"] == orders[0]["order_id"]


async def test_rejected_leg_stops_the_rest_and_the_journal_says_so(make_client: ClientFactory, config: Config) -> None:
    """A rejected first leg is `failed`, the next is `skipped` (never sent), in the answer and the journal."""
    from tvbridge.keys import JOURNAL  # noqa: PLC0415 - only this test reads the journal directly

    config = with_accounts(config, {"sim": {"broker": "scripted", "reject_symbols": ["TCS"]}})
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(symbol="TCS"), leg(symbol="INFY", sort_order="2")))
    body = await response.json()
    assert [r["status"] for r in body["results"]] == ["failed", "skipped"]
    record = await client.app[JOURNAL].get_alert(body["alert_id"])
    assert record is not None
    assert record["status"] == "failed"
    assert [lg["state"] for lg in record["legs"]] == ["failed", "skipped"]


async def test_an_answer_lost_before_placing_is_unknown_and_never_resent(
    make_client: ClientFactory, config: Config, tmp_path: Path
) -> None:
    """The broker lost the answer and has no order under the leg's client order id (yet): the leg is `unknown`
    with both facts and the id to check, in the answer, the journal and the order log; nothing is placed again
    and the next leg is not sent blind after it."""
    from tvbridge.keys import JOURNAL  # noqa: PLC0415 - only these tests read the journal directly

    config = with_accounts(config, {"sim": {"broker": "scripted", "unknown_symbols": ["TCS"]}})
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(symbol="TCS"), leg(symbol="INFY", sort_order="2")))
    body = await response.json()
    alert_id = body["alert_id"]
    assert scripted_orders(tmp_path) == []
    first = body["results"][0]
    assert (first["status"], first["account"], first["leg_number"], first["client_order_id"]) == (
        "unknown",
        "sim",
        1,
        f"{alert_id}-1",
    )
    assert first["message"] == (
        f"outcome unknown (timed out before the broker answered); the broker has no order {alert_id}-1 yet:"
        " check before resending"
    )
    record = await client.app[JOURNAL].get_alert(alert_id)
    assert record is not None
    journaled = record["legs"][0]
    assert (journaled["state"], journaled["client_order_id"]) == ("unknown", f"{alert_id}-1")
    with config.data_path(config.order_log.file).open(newline="") as f:
        row = next(csv.DictReader(f))
    assert (row["status"], row["symbol"], row["client_order_id"], row["message"]) == (
        "unknown",
        "TCS",
        f"{alert_id}-1",
        first["message"],
    )


async def test_an_order_the_broker_does_not_show_yet_is_unknown_and_never_placed_again(
    make_client: ClientFactory, config: Config, tmp_path: Path
) -> None:
    """The broker took the order and lost the answer, and its order book does not show it yet: the leg is
    `unknown` (check before resending), never placed a second time to "make sure". The broker here does not
    drop a repeated client order id, so a second placement would be a second order, a double position."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "late_symbols": ["TCS"]}})
    client = await make_client(config)
    response = await client.post("/webhook", json=alert(leg(symbol="TCS")))
    body = await response.json()
    alert_id = body["alert_id"]
    assert [o["client_order_id"] for o in scripted_orders(tmp_path)] == [f"{alert_id}-1"], "placed again"
    [result] = body["results"]
    assert (result["status"], result["client_order_id"]) == ("unknown", f"{alert_id}-1")
    assert result["message"] == (
        f"outcome unknown (connection dropped after sending); the broker has no order {alert_id}-1 yet:"
        " check before resending"
    )


async def test_a_lookup_that_fails_too_leaves_the_leg_unknown(
    make_client: ClientFactory, config: Config, tmp_path: Path
) -> None:
    """The answer is lost after placing and the lookup fails as well: `unknown`, saying both, never placed again."""
    settings = {"broker": "scripted", "lose_answer_symbols": ["TCS"], "lookup_error": "lookup API down"}
    client = await make_client(with_accounts(config, {"sim": settings}))
    response = await client.post("/webhook", json=alert(leg(symbol="TCS")))
    body = await response.json()
    alert_id = body["alert_id"]
    assert [o["client_order_id"] for o in scripted_orders(tmp_path)] == [f"{alert_id}-1"]
    [result] = body["results"]
    assert (body["status"], result["status"], result["symbol"], result["client_order_id"]) == (
        "failed",  # the alert did not go through as sent: the leg says why
        "unknown",
        "TCS",
        f"{alert_id}-1",
    )
    assert (result["account"], result["leg_number"]) == ("sim", 1)
    assert result["message"] == (
        "outcome unknown (connection dropped after sending); lookup failed too (lookup API down):"
        " check the broker before resending"
    )


async def test_a_placement_found_by_lookup_says_how_and_is_logged(
    make_client: ClientFactory, config: Config, tmp_path: Path
) -> None:
    """The order found by lookup after a lost answer: placed, its broker order id and client order id, the lost
    answer's reason in the message, and one `leg.resolved_by_lookup` warning naming the leg."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "lose_answer_symbols": ["TCS"]}})
    client = await make_client(config)
    with capture_logs(processors=[merge_contextvars]) as logs:
        response = await client.post("/webhook", json=alert(leg(symbol="TCS")))
    body = await response.json()
    alert_id = body["alert_id"]
    [result] = body["results"]
    assert (result["status"], result["order_id"], result["client_order_id"]) == ("success", "S00001", f"{alert_id}-1")
    assert result["message"] == "filled (found by lookup after: connection dropped after sending)"
    [line] = [e for e in logs if e["event"] == "leg.resolved_by_lookup"]
    assert {k: line[k] for k in ("log_level", "alert_id", "leg", "account", "broker", "order_id", "status")} == {
        "log_level": "warning",
        "alert_id": alert_id,
        "leg": 1,
        "account": "sim",
        "broker": "scripted",
        "order_id": "S00001",
        "status": "success",
    }
    assert line["reason"] == "connection dropped after sending"
    assert len(scripted_orders(tmp_path)) == 1
