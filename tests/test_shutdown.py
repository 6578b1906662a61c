"""Graceful shutdown of a real process: SIGTERM refuses new alerts with 503, lets running ones finish within
`server.shutdown_grace_s`, leaves the rest journaled for recovery, and exits 0 with the records flushed."""

from __future__ import annotations

import asyncio
import csv
import signal
import time
from typing import TYPE_CHECKING

import aiohttp
from durability_server import KillableServer, journal_rows, scripted_orders
from helpers import alert, leg

if TYPE_CHECKING:
    from pathlib import Path


async def wait_for_event(server: KillableServer, event: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(e.get("event") == event for e in server.events()):
        assert time.monotonic() < deadline, f"no {event} within {timeout_s} s"
        await asyncio.sleep(0.02)


async def test_sigterm_answers_503_finishes_in_flight_and_exits_0(tmp_path: Path) -> None:
    """An alert still at the (slow) broker when SIGTERM arrives is finished and recorded before the exit; an
    alert arriving during the drain gets 503 (TradingView resends it) and is neither journaled nor sent."""
    env = {
        "TVBRIDGE_ACCOUNTS__SIM__DELAY_S": "1.0",
        "TVBRIDGE_SERVER__RESPONSE_DEADLINE_S": "0.2",
        "TVBRIDGE_SERVER__SHUTDOWN_GRACE_S": "10",
    }
    server = await asyncio.to_thread(KillableServer(tmp_path, env).start)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/webhook", json=alert(leg(symbol="INFY"))) as response:
            assert response.status == 202
            first = (await response.json())["alert_id"]
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        await wait_for_event(server, "server.draining")
        async with session.post(f"{server.url}/webhook", json=alert(leg(symbol="TCS"))) as response:
            assert response.status == 503
            refused = await response.json()
        async with session.get(f"{server.url}/health") as response:
            assert response.status == 503
    assert "shutting down" in refused["message"]
    assert await asyncio.to_thread(server.wait, 30) == 0
    alerts, legs, integrity = journal_rows(tmp_path)
    assert integrity == "ok"
    assert alerts == {first: "success"}
    assert legs[first, 1] == "placed"
    assert [o["client_order_id"] for o in scripted_orders(tmp_path)] == [f"{first}-1"]
    with (tmp_path / "webhook_orders.csv").open(newline="") as f:
        assert [(r["alert_id"], r["status"]) for r in csv.DictReader(f)] == [(first, "success")]
    events = [e["event"] for e in server.events()]
    assert events.index("alert.done") < events.index("server.stopped")


async def test_grace_runs_out_the_alert_stays_journaled_and_recovery_sends_it(tmp_path: Path) -> None:
    """When the broker is slower than `shutdown_grace_s`, the process still exits 0 in time; the leg stays
    `sending` in the journal, and the next start asks the broker, finds nothing, and sends it once."""
    env = {
        "TVBRIDGE_ACCOUNTS__SIM__DELAY_S": "30",
        "TVBRIDGE_SERVER__RESPONSE_DEADLINE_S": "0.2",
        "TVBRIDGE_SERVER__SHUTDOWN_GRACE_S": "0.5",
    }
    server = await asyncio.to_thread(KillableServer(tmp_path, env).start)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.url}/webhook", json=alert(leg(symbol="INFY"))) as response,
    ):
        assert response.status == 202
        alert_id = (await response.json())["alert_id"]
    # 15 s, half the broker's 30: a shutdown that waited for the broker instead of its grace would not exit in it
    assert await asyncio.to_thread(server.terminate, 15) == 0
    alerts, legs, _ = journal_rows(tmp_path)
    assert alerts[alert_id] == "accepted"
    assert legs[alert_id, 1] == "sending"

    restarted = await asyncio.to_thread(KillableServer(tmp_path, name="restarted").start)
    assert await asyncio.to_thread(restarted.terminate) == 0
    alerts, legs, integrity = journal_rows(tmp_path)
    assert integrity == "ok"
    assert (alerts[alert_id], legs[alert_id, 1]) == ("success", "placed")
    assert [o["client_order_id"] for o in scripted_orders(tmp_path)] == [f"{alert_id}-1"]
