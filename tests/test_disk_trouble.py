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
import sqlite3
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


def mount_small_tmpfs(where: Path, size: str, *, read_only: bool = False) -> None:
    """A real, small file system of its own at `where`: skipped where mounting is impossible, failed in CI."""
    import os  # noqa: PLC0415 - only the tmpfs tests need these
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    where.mkdir(parents=True)
    mount = shutil.which("mount") or "mount"
    options = f"size={size},mode=0700" + (",ro" if read_only else "")
    try:
        done = subprocess.run(
            [mount, "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        failure = "" if done.returncode == 0 else done.stderr.strip() or f"exit {done.returncode}"
    except OSError as e:
        failure = str(e)
    if failure:
        reason = f"cannot mount a tmpfs here ({failure}): needs root and mount(8)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def unmount(where: Path) -> None:
    import shutil  # noqa: PLC0415 - only the tmpfs tests need these
    import subprocess  # noqa: PLC0415

    subprocess.run([shutil.which("umount") or "umount", "-l", str(where)], capture_output=True, check=False, timeout=30)


def fill(disk: Path, name: str) -> None:
    """Write `disk/name` until the file system refuses another byte."""
    chunk = b"\0" * 4096
    with (disk / name).open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk * 16)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass


async def test_health_and_webhook_agree_on_a_nearly_full_disk(tmp_path: Path) -> None:
    """On a small tmpfs filled until an alert's journal write fails (503), `/health` says 503 too and keeps
    saying it while the disk stays full: its probe is a write as large as an alert's, so the little room left
    that a heartbeat row still fits in does not make it lie. Freed space turns both back to 200."""
    disk = tmp_path / "disk"
    mount_small_tmpfs(disk, "3m")
    server = KillableServer(tmp_path, {"TVBRIDGE_SERVER__DATA_DIR": str(disk)})
    # A reader holding its snapshot (as the status page, a backup or the CLI may) keeps SQLite from starting the
    # WAL over, so every journal write needs new room on the disk. Without it, a checkpoint that completes
    # between two requests (a matter of timing, often under load) lets the journal write into its WAL file's
    # space again: then it CAN take an alert on the full disk, and health and webhook rightly both answer 200.
    reader: sqlite3.Connection | None = None
    try:
        await asyncio.to_thread(server.start)
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.url}/webhook", json=alert(leg(symbol="INFY"))) as response:
                assert response.status == 200
            reader = sqlite3.connect(disk / "tvbridge.sqlite3", isolation_level=None)
            reader.execute("BEGIN")
            reader.execute("SELECT COUNT(*) FROM alerts").fetchone()
            (disk / "reserve").write_bytes(b"\0" * 12288)
            fill(disk, "filler")
            (disk / "reserve").unlink()  # a few pages left: a heartbeat row fits, an alert does not for long
            statuses = []
            for i in range(40):
                async with session.post(f"{server.url}/webhook", json=alert(leg(symbol=f"S{i}"))) as response:
                    statuses.append(response.status)
                    if response.status == 503:
                        assert "journal unwritable" in (await response.json())["message"]
                        break
            assert statuses[-1] == 503, f"the full disk never refused an alert: {statuses}"
            for _ in range(3):
                async with session.get(f"{server.url}/health") as response:
                    assert response.status == 503
                    health = await response.json()
                assert health["checks"]["journal"]["ok"] is False
                async with session.post(f"{server.url}/webhook", json=alert(leg(symbol="TCS"))) as response:
                    assert response.status == 503
            (disk / "filler").unlink()  # space again
            async with session.get(f"{server.url}/health") as response:
                assert response.status == 200
            async with session.post(f"{server.url}/webhook", json=alert(leg(symbol="WIPRO"))) as response:
                assert response.status == 200
        reader.close()
        reader = None
        assert await asyncio.to_thread(server.terminate) == 0
        _, _, integrity = journal_rows(disk)
        assert integrity == "ok"
    finally:
        if reader is not None:
            reader.close()
        if server.proc is not None:  # a failed assertion must not leave the server running (and unmounted)
            await asyncio.to_thread(server.kill)
        unmount(disk)
