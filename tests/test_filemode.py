"""Every file tvbridge creates that holds trading data is 0600, whatever the umask (`tvbridge/filemode.py`)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from typing import TYPE_CHECKING

import aiohttp
import pytest
from durability_server import KillableServer, server_env
from helpers import alert, leg
from test_disk_trouble import mount_small_tmpfs, unmount

from tvbridge.filemode import create_private

if TYPE_CHECKING:
    from pathlib import Path

DATA_FILES = (
    "tvbridge.sqlite3",
    "tvbridge.sqlite3-wal",
    "tvbridge.sqlite3-shm",
    "paper-paper.sqlite3",
    "paper-paper.sqlite3-wal",
    "paper-paper.sqlite3-shm",
    "webhook_orders.csv",
    "webhook_server.log",
)


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask 022", "umask 000"])
async def test_trading_data_files_are_created_0600(tmp_path: Path, umask: int) -> None:
    """A real server started under umask 022 (or 000) with a paper account and a log file takes an alert; the
    journal and its WAL/SHM, the paper database and its WAL/SHM, the order log and the log file are all 0600.
    The paper account keeps a database of its own (`synchronous = "full"`: by default its book is in the journal)."""
    (tmp_path / "config.toml").write_text(
        '[accounts.paper]\nbroker = "paper"\nsynchronous = "full"\n[accounts.paper.prices]\nINFY = 100\n'
    )
    env = {"TVBRIDGE_ROUTING__ACCOUNTS": '["paper"]', "TVBRIDGE_LOGGING__FILE": "webhook_server.log"}
    previous = os.umask(umask)  # inherited by the server process
    try:
        server = await asyncio.to_thread(KillableServer(tmp_path, env).start)
    finally:
        os.umask(previous)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/webhook", json=alert(leg(symbol="INFY"))) as response:
            assert response.status == 200
        modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in DATA_FILES}
    assert await asyncio.to_thread(server.terminate) == 0
    assert modes == dict.fromkeys(DATA_FILES, 0o600)


def run_serve(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tvbridge", "serve"],
        cwd=tmp_path,
        env=server_env(tmp_path / "data", env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_line_exit_1(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    for text in expected:
        assert text in lines[0]


@pytest.mark.parametrize(
    ("name", "env"),
    [
        ("tvbridge.sqlite3", {}),
        ("webhook_orders.csv", {}),
        ("webhook_server.log", {"TVBRIDGE_LOGGING__FILE": "webhook_server.log"}),
        ("webhook_secret.txt", {"WEBHOOK_SECRET": ""}),
        ("paper-paper.sqlite3", {"TVBRIDGE_ROUTING__ACCOUNTS": '["paper"]'}),
    ],
)
def test_a_state_file_that_cannot_be_opened_stops_the_start_in_one_line(
    tmp_path: Path, name: str, env: dict[str, str]
) -> None:
    """A state file that cannot be opened (here a directory stands where it goes) stops `tvbridge serve`
    with exit 1 and one stderr line naming the file; never a traceback."""
    (tmp_path / "data" / name).mkdir(parents=True)
    assert_one_line_exit_1(run_serve(tmp_path, env), name)


@pytest.mark.parametrize(
    "env",
    [{}, {"WEBHOOK_SECRET": "", "TVBRIDGE_SERVER__ADMIN_TOKEN": ""}, {"TVBRIDGE_LOGGING__FILE": "x.log"}],
    ids=["secret given", "secret generated", "log file"],
)
def test_a_read_only_data_directory_stops_the_start_in_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    """A data directory on a read-only file system (a real read-only tmpfs: as root, permissions stop
    nothing) stops `tvbridge serve` with exit 1 and one stderr line naming the problem."""
    data = tmp_path / "data"
    mount_small_tmpfs(data, "1m", read_only=True)
    try:
        assert_one_line_exit_1(run_serve(tmp_path, env), "Read-only file system")
    finally:
        unmount(data)


def test_a_journal_path_that_is_a_symlink_to_no_file_yet_is_created_0600(tmp_path: Path) -> None:
    """An operator who points the journal's path at another disk with a symlink, before the first start: the
    file it names is created 0600 (SQLite gives `-wal` and `-shm` its mode), not left to SQLite's 0644; a file
    that exists keeps the mode its owner chose, and is not opened at all (which would drop SQLite's locks)."""
    target = tmp_path / "disk" / "tvbridge.sqlite3"
    target.parent.mkdir()
    link = tmp_path / "tvbridge.sqlite3"
    link.symlink_to(target)
    previous = os.umask(0o022)
    try:
        create_private(link)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    target.chmod(0o640)
    create_private(link)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
