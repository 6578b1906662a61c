"""Renewing an expired Dhan token on a running server: `tvbridge dhan token set` + SIGHUP, no restart.

A real `tvbridge serve` process, the real dhanhq client, the fake Dhan API on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fake_dhan import CLIENT_ID, TOKEN, FakeDhan
from helpers import alert, leg
from server_process import ServerProcess

NEW_TOKEN = "renewed-token-abcdef0123456789"
SECRET = "renewal-test-secret-0123456789"


async def wait_for_health(server: ServerProcess, status: int, limit_s: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + limit_s
    while True:
        code, _, body = await asyncio.to_thread(server.get, "/health")
        if code == status or time.monotonic() > deadline:
            assert code == status, body
            return body  # type: ignore[no-any-return]  # the health body is a JSON object
        await asyncio.sleep(0.1)  # polling a real process, bounded by the deadline


async def test_expired_token_is_replaced_without_a_restart(tmp_path: Path, dhan_master: Path) -> None:
    fake = FakeDhan()
    await fake.start()
    fake.valid_tokens = {NEW_TOKEN}  # the configured token has expired
    (tmp_path / ".env").write_text(f"DHAN_CLIENT_ID={CLIENT_ID}\nDHAN_ACCESS_TOKEN={TOKEN}\nENABLE_DHAN=true\n")
    env = {
        "WEBHOOK_SECRET": SECRET,
        "TVBRIDGE_ACCOUNTS__DHAN__BASE_URL": fake.base_url,
        "TVBRIDGE_ACCOUNTS__DHAN__INSTRUMENTS_PATH": str(dhan_master),
    }
    server = ServerProcess(tmp_path, env)
    await asyncio.to_thread(server.start)
    try:
        health = await wait_for_health(server, 503)
        assert health["checks"]["broker:dhan"]["ok"] is False  # type: ignore[index]  # JSON
        token_set = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "tvbridge", "dhan", "token", "set"],
            input=NEW_TOKEN + "\n",
            cwd=tmp_path,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert token_set.returncode == 0, token_set.stderr
        assert "told to reload" in token_set.stdout
        await wait_for_health(server, 200)
        raw = json.dumps(alert(leg(symbol="RELIANCE", quantity="1"), secret=SECRET)).encode()
        status, _, body = await asyncio.to_thread(server.post, "/webhook", raw)
        assert status == 200, body
        assert body["status"] == "success"
        assert len(fake.placed()) == 1
    finally:
        code = await asyncio.to_thread(server.stop)
        await fake.close()
    assert code == 0
    everything = server.output + token_set.stdout + token_set.stderr + (tmp_path / "webhook_server.log").read_text()
    assert NEW_TOKEN not in everything
    assert TOKEN not in everything
    assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
    store = tmp_path / "dhan-dhan.token"  # the account's own store: it outlives a stale configured token
    assert store.read_text() == NEW_TOKEN + "\n"
    assert store.stat().st_mode & 0o777 == 0o600


async def test_instruments_refresh_command(tmp_path: Path, dhan_master: Path) -> None:
    """`tvbridge dhan instruments refresh` downloads the master to the account's path, atomically."""
    from aiohttp import web  # noqa: PLC0415 - only here

    async def serve_master(_: web.Request) -> web.FileResponse:
        return web.FileResponse(dhan_master)

    app = web.Application()
    app.router.add_get("/master.csv", serve_master)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    dest = tmp_path / "master.csv"
    env = {
        "DHAN_CLIENT_ID": CLIENT_ID,
        "DHAN_ACCESS_TOKEN": TOKEN,
        "TVBRIDGE_ACCOUNTS__DHAN__INSTRUMENTS_URL": f"http://127.0.0.1:{port}/master.csv",
        "TVBRIDGE_ACCOUNTS__DHAN__INSTRUMENTS_PATH": str(dest),
    }
    try:
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "tvbridge", "dhan", "instruments", "refresh"],
            cwd=tmp_path,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        await runner.cleanup()
    assert result.returncode == 0, result.stderr
    assert "Done: " in result.stdout
    assert dest.read_bytes() == dhan_master.read_bytes()
