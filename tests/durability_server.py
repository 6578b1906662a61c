"""A real `python -m tvbridge serve` to kill: the durability tests' server, with its records at hand.

Unlike `server_process.ServerProcess`, stdout and stderr go to files in the data directory, so a server killed
with SIGKILL (or restarted several times in one test) leaves its log lines behind to read, and there is no pipe
to fill up and block it. It runs a `scripted` account `sim` (tests/support) whose orders are readable with
`scripted_orders()`; `journal_rows()` reads the journal file directly. Every wait is bounded.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

from helpers import SECRET

ADMIN_TOKEN = "admin-token-0123456789abcdef"
START_TIMEOUT_S = 30.0


def server_env(data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a test server: a `scripted` account `sim`, JSON logs, no log file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TVBRIDGE_", "WEBHOOK_"))}
    env.update(
        {
            "WEBHOOK_SECRET": SECRET,
            "TVBRIDGE_SERVER__HOST": "127.0.0.1",
            "TVBRIDGE_SERVER__PORT": "0",
            "TVBRIDGE_SERVER__DATA_DIR": str(data_dir),
            "TVBRIDGE_SERVER__ADMIN_TOKEN": ADMIN_TOKEN,
            "TVBRIDGE_LOGGING__FORMAT": "json",
            "TVBRIDGE_LOGGING__FILE": "",
            "TVBRIDGE_SESSIONS__ENABLED": "false",  # these tests are about durability, not the clock
            "TVBRIDGE_ROUTING__ACCOUNTS": '["sim"]',
            "TVBRIDGE_ACCOUNTS__SIM__BROKER": "scripted",
        }
    )
    env.update(extra or {})
    return env


class KillableServer:
    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None, *, name: str = "server") -> None:
        self.data_dir = data_dir
        self.env = server_env(data_dir, env)
        self.out = data_dir / f"{name}.out"
        self.err = data_dir / f"{name}.err"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> KillableServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tvbridge", "serve"], cwd=self.data_dir, env=self.env, stdout=out, stderr=err
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            started = [e for e in self.events() if e.get("event") == "server.started"]
            if started:
                self.port = int(started[-1]["port"])
                return self
            if self.proc.poll() is not None:
                msg = f"server exited with {self.proc.returncode}: {self.err.read_text()[-2000:]}"
                raise AssertionError(msg)
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"no server.started line within {START_TIMEOUT_S} s: {self.err.read_text()[-2000:]}")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (a line torn by a kill is skipped)."""
        events = []
        for line in self.out.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def kill(self) -> None:
        """SIGKILL: no cleanup, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def terminate(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)


def scripted_orders(data_dir: Path, account: str = "sim") -> list[dict[str, Any]]:
    """What the scripted broker received, in order (complete lines only)."""
    path = data_dir / f"scripted-{account}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.endswith("}")]


def journal_rows(data_dir: Path) -> tuple[dict[str, str], dict[tuple[str, int], str], str]:
    """(alert status by id, leg state by (alert id, leg number), integrity_check) read straight from the file."""
    conn = sqlite3.connect(data_dir / "tvbridge.sqlite3")
    try:
        alerts = dict(conn.execute("SELECT alert_id, status FROM alerts").fetchall())
        legs = {(a, n): s for a, n, s in conn.execute("SELECT alert_id, leg_number, state FROM legs").fetchall()}
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    return alerts, legs, integrity


async def post_alert(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """POST `body` to the server's `/webhook`: (status, answer), or None when the server died before answering."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/webhook", json=body, timeout=aiohttp.ClientTimeout(total=10)) as response,
        ):
            return response.status, await response.json()
    except (aiohttp.ClientError, TimeoutError):
        return None


async def alert_record(url: str, alert_id: str) -> dict[str, Any]:
    """`GET /alerts/<id>` with the admin token: the journal's record of the alert, as an operator reads it."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/alerts/{alert_id}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as response,
    ):
        assert response.status == 200
        record: dict[str, Any] = await response.json()
        return record


def order_log(data_dir: Path) -> list[dict[str, str]]:
    """The order log's rows (`webhook_orders.csv` in `data_dir`), none when it was never written."""
    path = data_dir / "webhook_orders.csv"
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
