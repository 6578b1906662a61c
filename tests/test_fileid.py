"""A record file deleted or replaced under the running server is noticed: `/webhook` and `/health` answer 503
instead of accepting alerts into a file the next start will never see (`tvbridge/fileid.py`)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from typing import TYPE_CHECKING

import aiohttp
import pytest
from durability_server import KillableServer, journal_rows, scripted_orders
from helpers import alert, leg

from tvbridge.fileid import Unchanged

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize("how", ["deleted", "replaced"])
@pytest.mark.parametrize(
    ("name", "check"),
    [("tvbridge.sqlite3", "journal"), ("tvbridge.sqlite3-wal", "journal"), ("webhook_orders.csv", "order_log")],
)
async def test_a_record_file_gone_under_the_server_gives_503(tmp_path: Path, name: str, check: str, how: str) -> None:
    """Delete the journal or the order log (or move another file over it) while the server runs: the next alert
    gets 503 naming the file, nothing of it reaches the broker, and `/health` is 503 with the reason in the
    file's check. After a restart the alert resent is accepted and placed once."""
    server = await asyncio.to_thread(KillableServer(tmp_path).start)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/webhook", json=alert(leg(symbol="INFY"))) as response:
            assert response.status == 200
        path = tmp_path / name
        if how == "deleted":
            path.unlink()
        else:
            other = tmp_path / f"{name}.new"
            other.write_bytes(path.read_bytes())
            other.replace(path)
        async with session.post(f"{server.url}/webhook", json=alert(leg(symbol="TCS"), id="resend-me")) as response:
            assert response.status == 503
            refused = await response.json()
        async with session.get(f"{server.url}/health") as response:
            assert response.status == 503
            health = await response.json()
    assert f"{name} was {how}" in refused["message"]
    assert "restart tvbridge" in refused["message"]
    assert health["checks"][check]["ok"] is False
    assert name in health["checks"][check]["detail"]
    assert [o["symbol"] for o in scripted_orders(tmp_path)] == ["INFY"]
    assert await asyncio.to_thread(server.terminate) == 0

    restarted = await asyncio.to_thread(KillableServer(tmp_path, name="restarted").start)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{restarted.url}/webhook", json=alert(leg(symbol="TCS"), id="resend-me")) as response:
            assert response.status == 200
        async with session.get(f"{restarted.url}/health") as response:
            assert response.status == 200
    assert await asyncio.to_thread(restarted.terminate) == 0
    assert [o["symbol"] for o in scripted_orders(tmp_path)] == ["INFY", "TCS"]
    alerts, _, integrity = journal_rows(tmp_path)
    assert integrity == "ok"
    assert refused["alert_id"] not in alerts


async def test_a_paper_database_gone_under_the_server_gives_503(tmp_path: Path) -> None:
    """Delete the paper broker's database while the server runs: the next alert gets 503 naming the file (paper
    declares it through `Broker.state_files()`), nothing is booked into the deleted file, `/health` is 503 on the
    paper account, and after a restart the alert resent is placed once in the new file. The account keeps a file
    of its own (`synchronous = "full"`, more than the journal's "normal": it does not join the journal)."""
    (tmp_path / "config.toml").write_text(
        '[accounts.paper]\nbroker = "paper"\nsynchronous = "full"\n[accounts.paper.prices]\nINFY = 100\n'
    )
    env = {"TVBRIDGE_ROUTING__ACCOUNTS": '["paper"]'}
    server = await asyncio.to_thread(KillableServer(tmp_path, env).start)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/webhook", json=alert(leg(symbol="INFY"))) as response:
            assert response.status == 200
        (tmp_path / "paper-paper.sqlite3").unlink()
        async with session.post(f"{server.url}/webhook", json=alert(leg(symbol="INFY"), id="again")) as response:
            assert response.status == 503
            refused = await response.json()
        async with session.get(f"{server.url}/health") as response:
            assert response.status == 503
            health = await response.json()
    assert "paper-paper.sqlite3 was deleted" in refused["message"]
    assert "restart tvbridge" in refused["message"]
    assert health["checks"]["broker:paper"]["ok"] is False
    assert "was deleted" in health["checks"]["broker:paper"]["detail"]
    assert await asyncio.to_thread(server.terminate) == 0
    alerts, _, _ = journal_rows(tmp_path)
    assert refused["alert_id"] not in alerts  # refused before anything was recorded: a resend is welcome

    restarted = await asyncio.to_thread(KillableServer(tmp_path, env, name="restarted").start)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{restarted.url}/webhook", json=alert(leg(symbol="INFY"), id="again")) as response,
    ):
        assert response.status == 200
        placed = await response.json()
    assert await asyncio.to_thread(restarted.terminate) == 0
    assert placed["status"] == "success", placed
    conn = sqlite3.connect(tmp_path / "paper-paper.sqlite3")
    try:
        assert [row[0] for row in conn.execute("SELECT client_order_id FROM orders")] == [f"{placed['alert_id']}-1"]
    finally:
        conn.close()


def test_one_stat_of_a_long_unchanged_directory_answers_for_its_files(tmp_path: Path) -> None:
    """`Unchanged`: a directory whose mtime is older than the racy margin and the same as at the last clean check
    answers for its files; a file deleted or replaced in it, a check that found a problem, or a directory changed
    too recently to be sure of, all mean checking the files again."""
    journal = tmp_path / "tvbridge.sqlite3"
    journal.write_text("x")
    directories = (str(tmp_path),)
    unchanged = Unchanged()
    before = unchanged.stamp(directories)
    assert not unchanged.unchanged(before)
    unchanged.checked(before, clean=True)  # just made: too recent to trust
    assert not unchanged.unchanged(unchanged.stamp(directories))
    old = time.time() - 10
    os.utime(tmp_path, (old, old))
    aged = unchanged.stamp(directories)
    unchanged.checked(aged, clean=False)
    assert not unchanged.unchanged(unchanged.stamp(directories))
    unchanged.checked(aged, clean=True)
    assert unchanged.unchanged(unchanged.stamp(directories))
    other = tmp_path / "other"
    other.write_text("y")
    other.replace(journal)
    assert not unchanged.unchanged(unchanged.stamp(directories))
    assert unchanged.stamp((str(tmp_path / "gone"),)) is None


async def test_a_record_file_deleted_in_a_long_unchanged_directory_gives_503(tmp_path: Path) -> None:
    """The one-stat path end to end: with the data directory untouched for a while (so its files' own checks are
    skipped), deleting the journal's WAL is still noticed by the very next alert, which gets 503 and is not sent."""
    server = await asyncio.to_thread(KillableServer(tmp_path).start)
    async with aiohttp.ClientSession() as session:
        old = time.time() - 10
        os.utime(tmp_path, (old, old))
        for symbol in ("INFY", "SBIN"):  # the second one finds the directory as the first one left it
            async with session.post(f"{server.url}/webhook", json=alert(leg(symbol=symbol))) as response:
                assert response.status == 200
        (tmp_path / "tvbridge.sqlite3-wal").unlink()
        async with session.post(f"{server.url}/webhook", json=alert(leg(symbol="TCS"))) as response:
            assert response.status == 503
            refused = await response.json()
    assert "tvbridge.sqlite3-wal was deleted" in refused["message"]
    assert [o["symbol"] for o in scripted_orders(tmp_path)] == ["INFY", "SBIN"]
    assert await asyncio.to_thread(server.terminate) == 0


async def test_the_kill_switch_is_seen_through_the_one_stat_path(tmp_path: Path) -> None:
    """The halt file lives in the data directory, whose one stat() also answers "no halt file" while it is
    unchanged: a halt file written by hand into a long unchanged directory stops the very next alert (503,
    nothing sent), it keeps stopping them while it is there however old the directory gets, and once it is
    gone alerts run again."""
    server = await asyncio.to_thread(KillableServer(tmp_path).start)
    halt = tmp_path / "HALTED"

    def age_directory() -> None:
        old = time.time() - 10
        os.utime(tmp_path, (old, old))

    try:
        async with aiohttp.ClientSession() as session:

            async def send(symbol: str) -> int:
                async with session.post(f"{server.url}/webhook", json=alert(leg(symbol=symbol))) as response:
                    return response.status

            age_directory()
            assert [await send("INFY"), await send("SBIN")] == [200, 200]  # the second one: the one-stat path
            halt.write_text("stop by hand\n")
            assert await send("TCS") == 503
            age_directory()  # the halt file is there and the directory is old: still no alert runs
            assert [await send("TCS"), await send("TCS")] == [503, 503]
            halt.unlink()
            age_directory()
            assert [await send("WIPRO"), await send("ITC")] == [200, 200]
        assert [o["symbol"] for o in scripted_orders(tmp_path)] == ["INFY", "SBIN", "WIPRO", "ITC"]
    finally:  # a failed assertion must not leave the server running
        assert await asyncio.to_thread(server.terminate) == 0
