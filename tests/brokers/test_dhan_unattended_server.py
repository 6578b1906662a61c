"""The unattended day through a real `tvbridge serve` process: the token renewed at start is the one the next
order carries and is written back where it came from (`.env`); a stale master is refreshed at start and a
contract listed today resolves; a token that cannot be renewed reaches the operator as a notification.

The real dhanhq client against the fake Dhan API on loopback, the machine's clock."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from fake_dhan import CLIENT_ID, PIN, TOTP_SECRET, FakeDhan, Misbehave, jwt
from helpers import alert, leg
from server_process import ServerProcess

from tvbridge_brokers.dhan.broker import IST
from tvbridge_brokers.dhan.instruments import sample_master_path

SECRET = "unattended-test-secret-0123456789"
WAIT_S = 20.0


@pytest.fixture
async def fake() -> AsyncIterator[FakeDhan]:
    fake = FakeDhan()
    await fake.start()
    yield fake
    await fake.close()


def server_env(tmp_path: Path, fake: FakeDhan, token: str, master: Path, **extra: str) -> dict[str, str]:
    (tmp_path / ".env").write_text(f"DHAN_CLIENT_ID={CLIENT_ID}\nDHAN_ACCESS_TOKEN={token}\nENABLE_DHAN=true\n")
    (tmp_path / ".env").chmod(0o600)
    return {
        "WEBHOOK_SECRET": SECRET,
        "TVBRIDGE_ACCOUNTS__DHAN__BASE_URL": fake.base_url,
        "TVBRIDGE_ACCOUNTS__DHAN__AUTH_URL": fake.auth_url,
        "TVBRIDGE_ACCOUNTS__DHAN__INSTRUMENTS_PATH": str(master),
        "TVBRIDGE_ACCOUNTS__DHAN__INSTRUMENTS_URL": fake.master_url,
        **extra,
    }


def copy_master(tmp_path: Path, *, age: timedelta = timedelta(0)) -> Path:
    path = tmp_path / "master.csv"
    shutil.copyfile(sample_master_path(), path)
    if age:
        at = time.time() - age.total_seconds()
        os.utime(path, (at, at))
    return path


async def wait_for(what: str, check: Any) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)  # polling a real process, bounded by the deadline


async def test_a_token_near_expiry_is_renewed_at_start_and_the_next_order_carries_it(
    tmp_path: Path, fake: FakeDhan
) -> None:
    old = jwt((datetime.now(IST) + timedelta(minutes=30)).timestamp())
    fake.valid_tokens = {old}
    server = ServerProcess(tmp_path, server_env(tmp_path, fake, old, copy_master(tmp_path)))
    await asyncio.to_thread(server.start)
    try:
        [new] = fake.issued
        raw = json.dumps(alert(leg(symbol="RELIANCE", quantity="1"), secret=SECRET)).encode()
        status, _, body = await asyncio.to_thread(server.post, "/webhook", raw)
        assert status == 200, body
        assert [r.token for r in fake.requests if r.path == "/v2/orders"] == [new]
        code, _, health = await asyncio.to_thread(server.get, "/health")
        assert code == 200
        assert "it expires" in health["checks"]["broker:dhan"]["detail"]
    finally:
        assert await asyncio.to_thread(server.stop) == 0
    assert f"DHAN_ACCESS_TOKEN={new}\n" in (tmp_path / ".env").read_text()
    assert (tmp_path / "dhan-dhan.token").stat().st_mode & 0o777 == 0o600
    renewed = [e for e in server.events() if e.get("event") == "dhan.token_renewed"]
    assert renewed
    assert renewed[0]["how"] == "renewed"
    everything = server.output + (tmp_path / "webhook_server.log").read_text()
    assert old not in everything
    assert new not in everything


async def test_a_stale_master_is_refreshed_by_the_server_and_todays_contract_resolves(
    tmp_path: Path, fake: FakeDhan
) -> None:
    fake.master = sample_master_path().read_bytes()
    fake.master += b"NSE,E,99001,EQUITY,,NEWLISTING,1.0,New Listing,,-0.01000,XX,10.0000,NA,ES,EQ,NEW LISTING LTD\n"
    token = jwt((datetime.now(IST) + timedelta(hours=20)).timestamp())
    fake.valid_tokens = {token}
    master = copy_master(tmp_path, age=timedelta(days=5))
    server = ServerProcess(tmp_path, server_env(tmp_path, fake, token, master))
    await asyncio.to_thread(server.start)
    try:
        await wait_for(
            "the refresh", lambda: any(e.get("event") == "dhan.instruments.refreshed" for e in server.events())
        )
        raw = json.dumps(alert(leg(symbol="NEWLISTING", quantity="1"), secret=SECRET)).encode()
        status, _, body = await asyncio.to_thread(server.post, "/webhook", raw)
        assert status == 200, body
        assert fake.placed()[-1]["securityId"] == "99001"
    finally:
        assert await asyncio.to_thread(server.stop) == 0
    assert master.read_bytes() == fake.master


async def test_a_token_that_cannot_be_renewed_notifies_the_operator(tmp_path: Path, fake: FakeDhan) -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    chat = TestServer(app, host="127.0.0.1")
    await chat.start_server()
    old = jwt((datetime.now(IST) + timedelta(minutes=20)).timestamp())
    fake.valid_tokens = {old}
    fake.next_reply("renew", *[Misbehave.error("DH-905")] * 5)
    config = tmp_path / "config.toml"
    config.write_text(f'[notify]\nurls = ["json://127.0.0.1:{chat.port}/hook"]\n')
    env = server_env(tmp_path, fake, old, copy_master(tmp_path), TVBRIDGE_CONFIG=str(config))
    server = ServerProcess(tmp_path, env)
    await asyncio.to_thread(server.start)
    try:
        await wait_for("the notification", lambda: received)
    finally:
        assert await asyncio.to_thread(server.stop) == 0
        await chat.close()
    [note] = received
    assert "cannot be renewed" in note["title"]
    assert "tvbridge dhan token set --account dhan" in note["message"]
    assert old not in json.dumps(received)


async def test_an_expired_token_is_generated_from_pin_and_totp_at_start(tmp_path: Path, fake: FakeDhan) -> None:
    old = jwt((datetime.now(IST) - timedelta(hours=2)).timestamp())
    fake.valid_tokens = set()
    env = server_env(
        tmp_path,
        fake,
        old,
        copy_master(tmp_path),
        DHAN_PIN=PIN,
        DHAN_TOTP_SECRET=TOTP_SECRET,
    )
    server = ServerProcess(tmp_path, env)
    await asyncio.to_thread(server.start)
    try:
        [new] = fake.issued
        raw = json.dumps(alert(leg(symbol="RELIANCE", quantity="1"), secret=SECRET)).encode()
        status, _, body = await asyncio.to_thread(server.post, "/webhook", raw)
        assert status == 200, body
        assert [r.token for r in fake.requests if r.path == "/v2/orders"] == [new]
    finally:
        assert await asyncio.to_thread(server.stop) == 0
    everything = server.output + (tmp_path / "webhook_server.log").read_text()
    for secret in (old, new, PIN, TOTP_SECRET):
        assert secret not in everything
