"""A journal that cannot be written means 503 (nothing recorded, TradingView resends), never a 2xx.

How the disk is made to fail, honestly and also as root (where `chmod` stops nothing): the running server's
file-size limit (`RLIMIT_FSIZE`, set from outside with `prlimit`) is lowered to one byte, so the kernel refuses
every write past the first byte of any file with EFBIG, the way a full disk refuses them with ENOSPC. SQLite
sees a failed write either way (SQLITE_FULL / SQLITE_IOERR). Python ignores SIGXFSZ, so the process lives on.
Raising the limit again is the disk being freed. A journal that cannot be opened at all stops the start.
"""

from __future__ import annotations

import asyncio
import resource
import sys
from typing import TYPE_CHECKING

import aiohttp
import pytest
from durability_server import KillableServer, journal_rows, scripted_orders, server_env
from helpers import alert, leg

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prlimit is Linux-only")


async def test_unwritable_journal_gives_503_and_recovers(tmp_path: Path) -> None:
    """With writes refused, `/webhook` answers 503 "journal unwritable" and `/health` 503 naming the journal;
    nothing reaches the broker. Once writes work again both are back to 200 without a restart."""
    server = await asyncio.to_thread(KillableServer(tmp_path).start)
    soft, hard = resource.prlimit(server.pid, resource.RLIMIT_FSIZE)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/webhook", json=alert(leg(symbol="INFY"))) as response:
            assert response.status == 200
        resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (1, hard))  # the disk is full
        try:
            async with session.post(f"{server.url}/webhook", json=alert(leg(symbol="TCS"))) as response:
                assert response.status == 503
                refused = await response.json()
            async with session.get(f"{server.url}/health") as response:
                assert response.status == 503
                health = await response.json()
        finally:
            resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (soft, hard))  # space again
        assert "journal unwritable" in refused["message"]
        assert refused["alert_id"]
        assert health["checks"]["journal"]["ok"] is False
        assert health["checks"]["journal"]["detail"]
        async with session.get(f"{server.url}/health") as response:
            assert response.status == 200
        async with session.post(f"{server.url}/webhook", json=alert(leg(symbol="WIPRO"))) as response:
            assert response.status == 200
    assert await asyncio.to_thread(server.terminate) == 0
    alerts, _, integrity = journal_rows(tmp_path)
    assert integrity == "ok"
    assert refused["alert_id"] not in alerts
    assert [o["symbol"] for o in scripted_orders(tmp_path)] == ["INFY", "WIPRO"]


def test_journal_that_cannot_be_opened_stops_the_start(tmp_path: Path) -> None:
    """If the journal file cannot be opened (here its path is a directory), the server does not start: exit 1
    and one stderr line naming the journal, so no alert is ever answered without a journal behind it."""
    import subprocess  # noqa: PLC0415 - only this test runs the command to its end

    (tmp_path / "tvbridge.sqlite3").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "tvbridge", "serve"],
        cwd=tmp_path,
        env=server_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "journal" in done.stderr
    assert "Traceback" not in done.stderr
