"""One paper account on two real `tvbridge serve` processes sharing one PostgreSQL database (issue 20).

"A paper account is the same account on every instance": what one instance bought the other sells, the same
alert landing on both at once is one paper order, both report the same positions, and an instance killed after
recording an alert leaves its paper order once, found by the other's recovery through `lookup()`.
The database is a real PostgreSQL server (tests/support/pgcluster.py); the book's rows are read with `psql`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import aiohttp
from durability_server import ADMIN_TOKEN, KillableServer
from helpers import alert, leg

if TYPE_CHECKING:
    from pathlib import Path

    from pgcluster import PgCluster

RECOVER_WITHIN_S = 30.0


def paper_env(url: str, **extra: str) -> dict[str, str]:
    return {
        "TVBRIDGE_JOURNAL__URL": url,
        "TVBRIDGE_JOURNAL__LEADER_LEASE_S": "3",
        "TVBRIDGE_ROUTING__ACCOUNTS": '["paper"]',
        **extra,
    }


def table(cluster: PgCluster, url: str, sql: str) -> list[list[str]]:
    out = cluster.psql(sql, url.rsplit("/", 1)[1])
    return [line.split("|") for line in out.splitlines() if line]


async def recovered(cluster: PgCluster, url: str) -> None:
    """Until no alert is left unfinished (`accepted`), within `RECOVER_WITHIN_S`."""
    async with asyncio.timeout(RECOVER_WITHIN_S):
        while True:
            if not table(cluster, url, "SELECT alert_id FROM alerts WHERE status = 'accepted'"):
                return
            await asyncio.sleep(0.2)  # polling another process's records, bounded by the timeout


async def start(*servers: KillableServer) -> None:
    await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers))


async def stop(*servers: KillableServer) -> None:
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            assert await asyncio.to_thread(server.terminate) == 0


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with session.post(url + "/webhook", json=body) as response:
        return response.status, await response.json()


async def positions(session: aiohttp.ClientSession, url: str) -> list[tuple[str, str, str]]:
    """The paper positions `/status` shows: (account, symbol, net quantity)."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "application/json"}
    async with session.get(url + "/status", headers=headers) as response:
        assert response.status == 200
        body = await response.json()
    return [(p["account"], p["symbol"], p["net_quantity"]) for p in body["positions"]]


async def test_one_paper_account_across_two_instances(tmp_path: Path, pg_cluster: PgCluster) -> None:
    """A buy sent to A, the EXIT_ALL sent to B: B closes A's position. The same alert sent to both at once: one
    paper order. Both instances show the same positions throughout."""
    url = pg_cluster.create_database()
    a = KillableServer(tmp_path / "a", paper_env(url), name="a")
    b = KillableServer(tmp_path / "b", paper_env(url), name="b")
    await start(a, b)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            status, bought = await post(session, a.url, alert(leg(price="2900"), id="buy-1"))
            assert (status, bought["status"]) == (200, "success")
            assert await positions(session, a.url) == await positions(session, b.url) == [("paper", "RELIANCE", "10")]

            exit_all = alert(leg(transactionType="S", quantity="", manage_position="EXIT_ALL", price="2950"), id="x-1")
            status, closed = await post(session, b.url, exit_all)
            assert (status, closed["status"]) == (200, "success"), closed
            assert await positions(session, a.url) == await positions(session, b.url) == []

            twice = alert(leg(price="2910", quantity="3"), id="resend-1")
            answers = await asyncio.gather(post(session, a.url, twice), post(session, b.url, twice))
            assert await positions(session, a.url) == await positions(session, b.url) == [("paper", "RELIANCE", "3")]
    finally:
        await stop(a, b)
    ran = [body for status, body in answers if status == 200 and body["status"] == "success"]
    assert len(ran) == 1, answers
    orders = table(pg_cluster, url, "SELECT account, side, quantity, state FROM paper_orders ORDER BY id")
    assert orders == [
        ["paper", "B", "10", "filled"],
        ["paper", "S", "10", "filled"],
        ["paper", "B", "3", "filled"],
    ]
    (placed,) = table(pg_cluster, url, f"SELECT order_id FROM legs WHERE alert_id = '{ran[0]['alert_id']}'")  # noqa: S608
    assert placed == ["PAPER-000003"]
    assert not (tmp_path / "a" / "paper-paper.sqlite3").exists()  # the book is the database's, not a file
    assert not (tmp_path / "b" / "paper-paper.sqlite3").exists()


async def test_an_instance_killed_after_recording_leaves_its_paper_order_once(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    """A is killed (SIGKILL) after the paper book committed the order and before the journal has its answer or
    the client an answer. Once A's lease expired, B recovers the alert: it looks the leg up by its client order
    id in the shared book, finds the order and records it; nothing is placed a second time."""
    url = pg_cluster.create_database()
    dying = KillableServer(tmp_path / "a", paper_env(url, TVBRIDGE_TEST_CRASH_AT="after_send"), name="a")
    living = KillableServer(tmp_path / "b", paper_env(url), name="b")
    await start(dying, living)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            try:
                await post(session, dying.url, alert(leg(price="2900"), id="dies-1"))
            except aiohttp.ClientError:
                pass
            else:
                raise AssertionError("the instance answered instead of dying after the send")
            assert await asyncio.to_thread(dying.wait, 30) == -9
            await recovered(pg_cluster, url)
            assert await positions(session, living.url) == [("paper", "RELIANCE", "10")]
    finally:
        await stop(living)
    assert [e for e in living.events() if e.get("event") == "recovery.alert"], "B recovered nothing"
    assert table(pg_cluster, url, "SELECT client_order_id, state FROM paper_orders") == [
        [table(pg_cluster, url, "SELECT client_order_id FROM legs")[0][0], "filled"]
    ]
    assert table(pg_cluster, url, "SELECT state, order_id FROM legs") == [["placed", "PAPER-000001"]]
    assert table(pg_cluster, url, "SELECT status FROM alerts") == [["success"]]
