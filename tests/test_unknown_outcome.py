"""Unknown outcomes: a broker that takes the order and loses the answer is settled by client order id."""

from __future__ import annotations

from typing import TYPE_CHECKING

from durability_server import scripted_orders
from helpers import alert, leg, with_accounts

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
