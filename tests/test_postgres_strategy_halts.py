"""A strategy's kill switch across two real `tvbridge serve` processes on one PostgreSQL database (issue 20):
halted on one instance, the strategy is halted on the other too (its alerts refused, its queued alerts kept at
the open), the other strategies trade on; resumed on the other instance, it trades again everywhere and its
queued alerts go out. Each server places on its own `scripted` account file (tests/support)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import aiohttp
from durability_server import ADMIN_TOKEN, KillableServer, scripted_orders
from helpers import alert, leg
from test_postgres_instances import LEASE, post, start, stop, table

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from pgcluster import PgCluster

ALPHA = "alpha-secret-0123456789abcdef"
WITHIN_S = 30.0
"""Bound on every wait for another process: two servers and a database on a loaded 2-core machine."""
BEFORE_OPEN = "2026-11-30T09:14:45+05:30"
"""A Monday 15 s before NSE opens: alerts queue, and the open comes during the test."""


def serve(data_dir: Path, url: str, name: str) -> KillableServer:
    """A server with strategy `alpha` (its own secret) beside the default strategy, both on the account `sim`."""
    data_dir.mkdir(parents=True)
    (data_dir / "config.toml").write_text(f'[strategies.alpha]\nsecret = "{ALPHA}"\naccounts = ["sim"]\n')
    env = {
        "TVBRIDGE_JOURNAL__URL": url,
        "TVBRIDGE_SESSIONS__ENABLED": "true",
        "TVBRIDGE_TEST_NOW": BEFORE_OPEN,
        **LEASE,
    }
    return KillableServer(data_dir, env, name=name)


def trade(i: int, *, strategy: str | None = None) -> dict[str, Any]:
    secret = {"secret": ALPHA} if strategy == "alpha" else {}
    return alert({k: v for k, v in leg(quantity=str(i)).items() if k != "meta"}, id=f"t-{i}", **secret)


async def admin(session: aiohttp.ClientSession, url: str, action: str, body: dict[str, str]) -> int:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with session.post(f"{url}/admin/{action}", json=body, headers=headers) as response:
        return response.status


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll another process's files or rows, within `WITHIN_S`."""
    try:
        async with asyncio.timeout(WITHIN_S):
            while True:
                if condition():
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not within {WITHIN_S} s: {what}") from None


def quantities(*servers: KillableServer) -> list[int]:
    """The quantities every server's scripted account received (each trade's quantity is its number)."""
    return sorted(int(order["quantity"]) for server in servers for order in scripted_orders(server.data_dir))


async def test_a_strategy_halted_on_one_instance_is_halted_on_the_other(tmp_path: Path, pg_cluster: PgCluster) -> None:
    """Before the open, alpha's alert 1 and the default strategy's alert 2 are queued on B. Alpha is halted on A:
    B refuses alpha's alert 3 (503, A's reason) and still queues the default's alert 4. At the open the default's
    alerts 2 and 4 are sent, alpha's 1 stays queued. Alpha resumed on B: A places alpha's alert 5, and alpha's
    queued alert 1 goes out. Nothing is sent twice; alert 3 was never recorded."""
    url = pg_cluster.create_database()
    a = await start(serve(tmp_path / "a", url, "a"))
    b = await start(serve(tmp_path / "b", url, "b"))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            queued = [await post(session, b.url, trade(1, strategy="alpha")), await post(session, b.url, trade(2))]
            assert [(status, body["status"]) for status, body in queued] == [(202, "queued")] * 2, queued
            ids = {1: queued[0][1]["alert_id"], 2: queued[1][1]["alert_id"]}

            assert await admin(session, a.url, "halt", {"strategy": "alpha", "reason": "alpha misfires"}) == 200
            await until((b.data_dir / "HALTED.alpha").exists, "alpha's halt on A reaches B")
            status, refused = await post(session, b.url, trade(3, strategy="alpha"))
            assert (status, refused["message"]) == (503, "strategy alpha halted: alpha misfires")
            status, body = await post(session, b.url, trade(4))
            assert (status, body["status"]) == (202, "queued"), body
            ids[4] = body["alert_id"]
            assert not (b.data_dir / "HALTED").exists()  # the other strategies trade on

            def statuses() -> dict[str, str]:
                return dict(table(pg_cluster, url, "SELECT alert_id, status FROM alerts"))

            await until(lambda: quantities(a, b) == [2, 4], "the default strategy's queued alerts sent at the open")
            await until(lambda: statuses()[ids[4]] == "success", "the default strategy's alerts recorded")
            assert statuses()[ids[1]] == "queued"  # alpha's waits for the resume
            queue = dict(table(pg_cluster, url, "SELECT alert_id, state FROM queue"))
            assert queue[ids[1]] == "queued"

            assert await admin(session, b.url, "resume", {"strategy": "alpha"}) == 200
            await until(lambda: not (a.data_dir / "HALTED.alpha").exists(), "alpha's resume on B reaches A")
            status, body = await post(session, a.url, trade(5, strategy="alpha"))
            assert (status, body["status"]) == (200, "success"), body
            await until(lambda: quantities(a, b) == [1, 2, 4, 5], "alpha's queued alert sent after the resume")
            await until(lambda: statuses()[ids[1]] == "success", "alpha's queued alert recorded")
    finally:
        await stop(a, b)
    assert refused["alert_id"] not in statuses()
    assert quantities(a, b) == [1, 2, 4, 5]
