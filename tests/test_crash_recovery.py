"""Nothing lost, nothing twice, with real processes: kill -9 at random and at named points, restart, count.

After every scenario the broker's orders (the scripted broker's JSON lines, which it reads back on start like a
real broker remembers its orders) are compared with the alerts answered 2xx: each of their legs is there exactly
once, no order is there twice or without a journaled alert, no alert is left unfinished, and SQLite's
`integrity_check` passes.
"""

from __future__ import annotations

import asyncio
import collections
import csv
import os
import random
import sqlite3
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from durability_server import KillableServer, journal_rows, scripted_orders
from helpers import alert, leg

if TYPE_CHECKING:
    from pathlib import Path

LEGS = 2


def two_leg_alert(i: int) -> dict[str, Any]:
    return alert(leg(symbol=f"SYM{i}", quantity=str(i + 1)), leg(symbol=f"SYM{i}", sort_order="2", transactionType="S"))


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """(status, body), or None when the server died before answering."""
    try:
        async with session.post(f"{url}/webhook", json=body, timeout=aiohttp.ClientTimeout(total=10)) as response:
            return response.status, await response.json()
    except (aiohttp.ClientError, TimeoutError):
        return None


def paper_orders(data_dir: Path) -> list[str]:
    """The client order ids in the paper broker's own SQLite file, after its integrity check."""
    conn = sqlite3.connect(data_dir / "paper-paper.sqlite3")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [row[0] for row in conn.execute("SELECT client_order_id FROM orders")]
    finally:
        conn.close()


def order_log_rows(data_dir: Path) -> collections.Counter[tuple[str, str, str]]:
    """How many rows `webhook_orders.csv` has for each (alert id, leg number, account)."""
    with (data_dir / "webhook_orders.csv").open(newline="", encoding="utf-8") as f:
        return collections.Counter((r["alert_id"], r["leg_number"], r["account"]) for r in csv.DictReader(f))


def check_exactly_once(data_dir: Path, answered_2xx: set[str], orders: list[str] | None = None) -> None:
    """The invariants, read from the files the server left behind (the scripted broker's by default); the order
    log has exactly one row per leg of every journaled alert (a repeated row reads as a double order)."""
    alerts, legs, integrity = journal_rows(data_dir)
    assert integrity == "ok"
    assert [a for a, status in alerts.items() if status == "accepted"] == [], "an alert was left unfinished"
    if orders is None:
        orders = [o["client_order_id"] for o in scripted_orders(data_dir)]
    counts = collections.Counter(orders)
    assert [cid for cid, n in counts.items() if n > 1] == [], "an order was placed twice"
    for cid in counts:
        alert_id = cid.rsplit("-", 1)[0]
        assert alert_id in alerts, f"order {cid} has no journaled alert"
    rows = order_log_rows(data_dir)
    assert {key: n for key, n in rows.items() if n > 1} == {}, "a leg has more than one row in the order log"
    assert {a for a, _, _ in rows} == set(alerts), "the order log and the journal list different alerts"
    for alert_id in answered_2xx:
        assert alert_id in alerts, f"alert {alert_id} was answered 2xx but is not in the journal"
        assert {n for a, n, _ in rows if a == alert_id} == {str(n) for n in range(1, LEGS + 1)}
        for n in range(1, LEGS + 1):
            assert counts[f"{alert_id}-{n}"] == 1, f"leg {n} of answered alert {alert_id} is missing"
            assert legs[alert_id, n] == "placed"


def start(data_dir: Path, env: dict[str, str] | None = None, name: str = "server") -> KillableServer:
    return KillableServer(data_dir, env, name=name).start()


@pytest.mark.parametrize("point", ["after_record", "before_send", "after_send", "before_finish", "after_order_log"])
async def test_kill_at_a_named_point_then_restart(tmp_path: Path, point: str) -> None:
    """Killed with SIGKILL at a named point of the send path (on its 3rd hit), a restarted server finishes the
    interrupted alert: what the broker already has is recorded, what it lacks is sent, nothing twice."""
    server = await asyncio.to_thread(start, tmp_path, {"TVBRIDGE_TEST_CRASH_AT": f"{point}:3"}, "crashing")
    answered: set[str] = set()
    async with aiohttp.ClientSession() as session:
        for i in range(6):
            outcome = await post(session, server.url, two_leg_alert(i))
            if outcome is None:
                break
            status, body = outcome
            assert status == 200
            answered.add(body["alert_id"])
    assert await asyncio.to_thread(server.wait, 10) == -9
    alerts_before, legs_before, _ = journal_rows(tmp_path)
    interrupted = [a for a, s in alerts_before.items() if s == "accepted"]
    assert len(interrupted) == 1
    expected_state = {"after_record": "pending", "before_send": "sending", "after_send": "sending"}
    if point in expected_state:
        assert expected_state[point] in {legs_before[interrupted[0], n] for n in (1, 2)}

    restarted = await asyncio.to_thread(start, tmp_path, None, "restarted")
    assert any(e["event"] == "recovery.alert" and e["alert_id"] == interrupted[0] for e in restarted.events())
    assert await asyncio.to_thread(restarted.terminate) == 0
    # the interrupted alert was young: recovery completed it, so it counts like an answered one
    check_exactly_once(tmp_path, answered | set(interrupted))
    with (tmp_path / "webhook_orders.csv").open(newline="") as f:
        logged = {(r["alert_id"], r["leg_number"]) for r in csv.DictReader(f)}
    assert {(interrupted[0], "1"), (interrupted[0], "2")} <= logged


async def kill_bursts(tmp_path: Path, env: dict[str, str], rounds: int = 3) -> set[str]:
    """`rounds` concurrent bursts of two-leg alerts, each cut by SIGKILL at a random moment and followed by a
    restart; returns the ids of the alerts answered 2xx. Ends with a clean start and SIGTERM."""
    seed = int(os.environ.get("TVBRIDGE_TEST_SEED", str(random.randrange(1 << 30))))  # noqa: S311 - a test schedule, not a secret
    rng = random.Random(seed)  # noqa: S311 - same
    answered: set[str] = set()
    counter = 0
    for round_ in range(rounds):
        server = await asyncio.to_thread(start, tmp_path, env, f"round{round_}")

        async def burst(url: str, first: int) -> list[tuple[int, dict[str, Any]] | None]:
            semaphore = asyncio.Semaphore(6)
            async with aiohttp.ClientSession() as session:

                async def one(i: int) -> tuple[int, dict[str, Any]] | None:
                    async with semaphore:
                        return await post(session, url, two_leg_alert(i))

                return await asyncio.gather(*(one(first + i) for i in range(40)))

        task = asyncio.create_task(burst(server.url, counter))
        counter += 40
        await asyncio.sleep(rng.uniform(0.02, 0.4))  # the random kill moment, not a wait for a result
        server.kill()
        for outcome in await asyncio.wait_for(task, 20):
            if outcome is not None and 200 <= outcome[0] < 300:
                answered.add(outcome[1]["alert_id"])
    final = await asyncio.to_thread(start, tmp_path, env, "final")
    assert await asyncio.to_thread(final.terminate) == 0
    assert answered, f"seed {seed}: no alert was answered before the kills"
    return answered


async def test_random_kills_during_a_burst(tmp_path: Path) -> None:
    """Three rounds of a concurrent burst of two-leg alerts, each cut by SIGKILL at a random moment, each
    followed by a restart: every alert answered 2xx has each leg exactly once at the broker, none extra."""
    answered = await kill_bursts(tmp_path, {"TVBRIDGE_ACCOUNTS__SIM__DELAY_S": "0.003"})
    check_exactly_once(tmp_path, answered)


async def test_random_kills_with_the_paper_broker(tmp_path: Path) -> None:
    """The same with the paper broker (its own SQLite file, idempotent on client order id): every alert answered
    2xx has each leg exactly once in paper's orders, no order without a journaled alert, both files intact."""
    prices = "\n".join(f"SYM{i} = 100" for i in range(120))
    (tmp_path / "config.toml").write_text(f'[accounts.paper]\nbroker = "paper"\n[accounts.paper.prices]\n{prices}\n')
    answered = await kill_bursts(tmp_path, {"TVBRIDGE_ROUTING__ACCOUNTS": '["paper"]'})
    check_exactly_once(tmp_path, answered, paper_orders(tmp_path))


async def test_unsent_leg_expires_after_max_age(tmp_path: Path) -> None:
    """An alert killed before its leg was sent and restarted after `alerts.max_age_s` is not sent: the leg is
    `expired` in the journal and the order log, with a `recovery.leg_expired` warning naming it."""
    env = {"TVBRIDGE_TEST_CRASH_AT": "before_send", "TVBRIDGE_ALERTS__MAX_AGE_S": "0.3"}
    server = await asyncio.to_thread(start, tmp_path, env, "crashing")
    body = alert({k: v for k, v in leg(symbol="INFY").items() if k != "meta"})
    async with aiohttp.ClientSession() as session:
        assert await post(session, server.url, body) is None
    posted = time.monotonic()
    assert await asyncio.to_thread(server.wait, 10) == -9
    alerts, _, _ = journal_rows(tmp_path)
    (alert_id,) = alerts
    await asyncio.sleep(max(0.0, posted + 0.5 - time.monotonic()))  # the alert must be older than max_age_s
    restarted = await asyncio.to_thread(start, tmp_path, {"TVBRIDGE_ALERTS__MAX_AGE_S": "0.3"}, "restarted")
    assert await asyncio.to_thread(restarted.terminate) == 0
    alerts, legs, integrity = journal_rows(tmp_path)
    assert integrity == "ok"
    assert alerts[alert_id] == "failed"
    assert legs[alert_id, 1] == "expired"
    assert scripted_orders(tmp_path) == []
    expired = [e for e in restarted.events() if e["event"] == "recovery.leg_expired"]
    assert [(e["alert_id"], e["client_order_id"]) for e in expired] == [(alert_id, f"{alert_id}-1")]
    with (tmp_path / "webhook_orders.csv").open(newline="") as f:
        assert [(r["alert_id"], r["status"]) for r in csv.DictReader(f)] == [(alert_id, "expired")]
