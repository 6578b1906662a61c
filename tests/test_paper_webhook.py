"""The default install end to end: alerts become paper orders, positions and resting limits, across restarts."""

from __future__ import annotations

import csv
from typing import Any

from helpers import ClientFactory, alert, leg

from tvbridge.config import Config
from tvbridge.keys import BROKERS


async def post(client: Any, raw: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/webhook", json=raw)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def test_market_order_fills_at_the_legs_price(make_client: ClientFactory, config: Config) -> None:
    client = await make_client(config)
    body = await post(client, alert(leg(symbol="INFY", quantity="4", price="1500")))
    (result,) = body["results"]
    assert (result["status"], result["account"], result["broker"]) == ("success", "paper", "paper")
    assert result["order_state"] == "filled"
    assert result["order_id"].startswith("PAPER-")
    with config.data_path("webhook_orders.csv").open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["status"], row["order_id"], row["account"]) == ("success", result["order_id"], "paper")


async def test_limit_rests_until_a_later_alert_crosses_it(make_client: ClientFactory, config: Config) -> None:
    """A buy limit at 100 stays open; a later alert priced at 99 on the same symbol fills it."""
    client = await make_client(config)
    first = await post(client, alert(leg(symbol="TCS", orderType="LMT", price="100")))
    assert first["results"][0]["order_state"] == "open"
    limit_id = first["results"][0]["order_id"]
    paper: Any = client.app[BROKERS]["paper"]
    assert {o.order_id: o.state.value for o in await paper.orders()} == {limit_id: "open"}
    await post(client, alert(leg(symbol="TCS", transactionType="S", quantity="1", price="99")))
    states = {o.order_id: o.state.value for o in await paper.orders()}
    assert states[limit_id] == "filled"
    status = await client.get(
        f"/alerts/{first['alert_id']}",
        headers={"Authorization": f"Bearer {config.data_path('admin_token.txt').read_text().strip()}"},
    )
    assert status.status == 200
    record = await status.json()
    assert record["status"] == "success"
    assert record["legs"][0]["order_id"] == limit_id


async def test_cancel_order_cancels_resting_orders(make_client: ClientFactory, config: Config) -> None:
    client = await make_client(config)
    placed = await post(client, alert(leg(symbol="SBIN", orderType="LMT", price="500")))
    order_id = placed["results"][0]["order_id"]
    cancelled = await post(client, alert({"symbol": "SBIN", "exchange": "NSE"}, alert_type="cancel_order"))
    assert cancelled["status"] == "success"
    assert cancelled["results"][0]["message"] == f"cancelled 1 order(s): {order_id}"
    again = await post(client, alert({"symbol": "SBIN"}, alert_type="cancel_order"))
    assert again["results"][0]["message"] == "cancelled 0 order(s)"


async def test_state_survives_a_restart(make_client: ClientFactory, config: Config) -> None:
    """A limit placed before a restart is still there after it, and is cancelled by a later alert."""
    first = await make_client(config)
    placed = await post(first, alert(leg(symbol="ITC", orderType="LMT", price="400")))
    await first.close()
    second = await make_client(config)
    cancelled = await post(second, alert({"symbol": "ITC"}, alert_type="cancel_order"))
    assert cancelled["results"][0]["message"] == f"cancelled 1 order(s): {placed['results'][0]['order_id']}"


async def test_exit_all_closes_the_position(make_client: ClientFactory, config: Config) -> None:
    client = await make_client(config)
    await post(client, alert(leg(symbol="LT", quantity="7", price="3000")))
    body = await post(
        client, alert(leg(symbol="LT", transactionType="S", quantity="1", price="3100", manage_position="EXIT_ALL"))
    )
    assert body["results"][0]["status"] == "success"
    assert "7" in body["results"][0]["message"]


async def test_guide_example_with_price_zero_fills(make_client: ClientFactory, config: Config) -> None:
    """The guide's template sends price "0" for market orders: paper fills it and says the price is unknown."""
    client = await make_client(config)
    body = await post(client, alert(leg()))
    assert body["status"] == "success"
    assert body["results"][0]["order_state"] == "filled"
