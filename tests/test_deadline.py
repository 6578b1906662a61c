"""The 3-second rule: a slow broker gets a 202 with the alert id in time, and the outcome still lands."""

from __future__ import annotations

import asyncio
import csv
from typing import TYPE_CHECKING, Any

import attrs
from durability_server import ADMIN_TOKEN, scripted_orders
from helpers import alert, leg, with_accounts
from structlog.testing import capture_logs
from tvbridge_testbrokers import ScriptedBroker

from tvbridge.keys import BROKERS
from tvbridge.pluginguard import GuardedBroker

if TYPE_CHECKING:
    from pathlib import Path

    from helpers import ClientFactory

    from tvbridge.config import Config

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TRADINGVIEW_TIMEOUT_S = 3.0


def slow_config(config: Config) -> Config:
    """The `scripted` broker holds every INFY order until the test releases it: slower than any deadline."""
    config = with_accounts(config, {"sim": {"broker": "scripted", "hold_symbols": ["INFY"]}})
    server = attrs.evolve(config.server, response_deadline_s=0.2, admin_token=ADMIN_TOKEN)
    return attrs.evolve(config, server=server)


def release(client: Any) -> None:
    guarded = client.app[BROKERS]["sim"]
    assert isinstance(guarded, GuardedBroker)  # every plugin runs behind the host's guard (pluginguard.py)
    broker = guarded.plugin
    assert isinstance(broker, ScriptedBroker)
    broker.release()


async def poll_alert(client: Any, alert_id: str, timeout_s: float = 10) -> dict[str, Any]:
    """GET /alerts/<id> until the alert is no longer `accepted` (bounded)."""
    async with asyncio.timeout(timeout_s):
        while True:
            response = await client.get(f"/alerts/{alert_id}", headers=AUTH)
            assert response.status == 200
            record: dict[str, Any] = await response.json()
            if record["status"] != "accepted":
                return record
            await asyncio.sleep(0.05)


async def test_slow_broker_gets_202_then_the_result_lands(
    make_client: ClientFactory, config: Config, tmp_path: Path
) -> None:
    """A broker slower than `response_deadline_s` (it answers only when the test lets it) gets 202 with the
    alert id at the deadline, within TradingView's 3 s; execution goes on, and `GET /alerts/<id>` then shows the
    leg placed, the broker has the order once, and the CSV has its row."""
    client = await make_client(slow_config(config))
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.post("/webhook", json=alert(leg(symbol="INFY")))
    elapsed = loop.time() - started
    body = await response.json()
    assert response.status == 202
    assert elapsed < TRADINGVIEW_TIMEOUT_S
    alert_id = body["alert_id"]
    assert response.headers["X-Request-ID"] == alert_id
    assert body["status"] == "accepted"
    assert scripted_orders(tmp_path) == []  # the broker holds it: the 202 came from the deadline

    release(client)
    record = await poll_alert(client, alert_id)
    assert record["status"] == "success"
    assert [(lg["leg_number"], lg["state"]) for lg in record["legs"]] == [(1, "placed")]
    assert record["legs"][0]["order_id"]
    assert [o["client_order_id"] for o in scripted_orders(tmp_path)] == [f"{alert_id}-1"]
    with (tmp_path / "webhook_orders.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["alert_id"] == alert_id]
    assert [(r["symbol"], r["status"]) for r in rows] == [("INFY", "success")]


async def test_while_running_the_journal_shows_the_leg_sending(make_client: ClientFactory, config: Config) -> None:
    """During the broker call the journal already says `sending` for that leg (what recovery relies on)."""
    client = await make_client(slow_config(config))
    response = await client.post("/webhook", json=alert(leg(symbol="INFY")))
    assert response.status == 202
    alert_id = (await response.json())["alert_id"]
    record = await (await client.get(f"/alerts/{alert_id}", headers=AUTH)).json()
    assert record["status"] == "accepted"
    assert [lg["state"] for lg in record["legs"]] == ["sending"]
    release(client)
    assert (await poll_alert(client, alert_id))["status"] == "success"


async def test_get_alert_needs_the_admin_token(make_client: ClientFactory, config: Config) -> None:
    """`GET /alerts/<id>` without the admin token is 401; an unknown id is 404."""
    client = await make_client(slow_config(config))
    assert (await client.get("/alerts/nope")).status == 401
    assert (await client.get("/alerts/nope", headers=AUTH)).status == 404


async def test_past_the_deadline_the_access_line_stays_and_alert_done_follows(
    make_client: ClientFactory, config: Config
) -> None:
    """The 202 is answered before the alert is done: its `http.request` line stays at info with the 202, and
    `alert.done` is written when the broker answers, with the source, never dropped."""
    client = await make_client(slow_config(config))
    with capture_logs() as events:
        response = await client.post("/webhook", json=alert(leg(symbol="INFY")))
        assert response.status == 202
        alert_id = (await response.json())["alert_id"]
        [access] = [e for e in events if e["event"] == "http.request" and e["path"] == "/webhook"]
        assert (access["log_level"], access["status"]) == ("info", 202)
        release(client)
        assert (await poll_alert(client, alert_id))["status"] == "success"
    [done] = [e for e in events if e["event"] == "alert.done"]
    assert (done["log_level"], done["alert_id"], done["status"], done["source"]) == (
        "info",
        alert_id,
        "success",
        "127.0.0.1",
    )
    assert "http_status" not in done
