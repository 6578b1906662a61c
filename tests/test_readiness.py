"""Pre-open readiness through the server: `GET /admin/ready` (what `tvbridge ready` asks), the `/status` panel,
the metrics, the log line and the `not_ready` notification; the daily schedule at `[sessions] readiness_at`.

A live Dhan account on the fake Dhan API (the real dhanhq client), the real aiohttp app; the machine's clock,
which the clock check compares with the fake's `Date` header."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import structlog
from aiohttp import web
from fake_dhan import CLIENT_ID, FakeDhan, jwt
from helpers import SECRET, ClientFactory, with_accounts
from notify_sink import Sink, running_sink
from server_process import ServerProcess, run_cli

from tvbridge.config import Config, NotifyConfig
from tvbridge.keys import CALENDAR, CONFIG
from tvbridge.readiness import check_readiness, close_of, next_check
from tvbridge.secretstore import ADMIN_TOKEN_FILE
from tvbridge.sessions import EXCHANGE_TZ, Calendar
from tvbridge_brokers.dhan.instruments import sample_master_path

if TYPE_CHECKING:
    from aiohttp.test_utils import TestClient


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    """A chat API on loopback that keeps what it is sent (apprise's json:// posts there)."""
    async with running_sink() as running:
        yield running


@pytest.fixture
async def fake() -> AsyncIterator[FakeDhan]:
    fake = FakeDhan()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def master(tmp_path: Path) -> Path:
    path = tmp_path / "master.csv"
    shutil.copyfile(sample_master_path(), path)
    return path


def live(config: Config, fake: FakeDhan, master: Path) -> Config:
    token = jwt((datetime.now(EXCHANGE_TZ) + timedelta(days=3)).timestamp())
    fake.valid_tokens = {token}
    account = {
        "broker": "dhan",
        "client_id": CLIENT_ID,
        "access_token": token,
        "live": True,
        "base_url": fake.base_url,
        "instruments_path": str(master),
        "instruments_url": fake.master_url,
        "timeout_s": 2.0,
    }
    return with_accounts(config, {"dhan": account})


def admin(config: Config) -> dict[str, str]:
    token = (config.server.data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    return {"Authorization": f"Bearer {token}"}


async def ready(client: TestClient[web.Request, web.Application], config: Config) -> tuple[int, dict[str, Any]]:
    response = await client.get("/admin/ready", headers=admin(config))
    return response.status, await response.json()


def failing(report: dict[str, Any]) -> list[str]:
    return [f"{a['account']} {c['name']}" for a in report["accounts"] for c in a["checks"] if not c["ok"]]


async def test_a_ready_account_answers_200_and_shows_on_status_and_metrics(
    make_client: ClientFactory, config: Config, fake: FakeDhan, master: Path
) -> None:
    config = live(config, fake, master)
    client = await make_client(config)
    response = await client.get("/admin/ready")
    assert response.status == 401
    with structlog.testing.capture_logs() as events:
        status, report = await ready(client, config)
    assert status == 200, report
    assert report["ready"] is True
    [account] = report["accounts"]
    assert [c["name"] for c in account["checks"]] == ["halt", "token", "instruments", "reachable", "clock"]
    assert next(e for e in events if e["event"] == "readiness.checked")["ready"] is True
    summary = await (await client.get("/status", headers={**admin(config), "Accept": "application/json"})).json()
    assert summary["readiness"]["ready"] is True
    [token] = summary["tokens"]
    assert token["account"] == "dhan"
    assert token["expires_at"].endswith("+05:30")
    page = await (await client.get("/status", headers=admin(config))).text()
    assert "Pre-open readiness" in page
    assert "READY" in page
    # the accounts table shows when the token expires: IST on the page, the moment itself in `datetime`
    assert f'<time datetime="{token["expires_at"]}"' in page
    metrics = await (await client.get("/metrics")).text()
    assert 'tvbridge_ready{account="dhan"} 1.0' in metrics
    health = await (await client.get("/health")).text()
    [secret] = fake.valid_tokens
    for text in (json.dumps(report), json.dumps(summary), page, metrics, health):
        assert secret not in text
    expiry = datetime.fromisoformat(token["expires_at"]).timestamp()
    found = re.search(
        r'^tvbridge_broker_token_expiry_timestamp_seconds\{account="dhan"\} (\S+)$', metrics, re.MULTILINE
    )
    assert found
    assert float(found.group(1)) == expiry


async def test_each_failure_is_reported_logged_and_notified(
    make_client: ClientFactory, config: Config, fake: FakeDhan, master: Path, sink: Sink
) -> None:
    config = attrs.evolve(live(config, fake, master), notify=NotifyConfig(urls=(sink.url,), min_interval_s=0))
    client = await make_client(config)
    fake.date_skew_s = 30.0
    halted = await client.post("/admin/halt", json={"reason": "test"}, headers=admin(config))
    assert halted.status == 200
    with structlog.testing.capture_logs() as events:
        status, report = await ready(client, config)
    assert status == 503
    assert report["ready"] is False
    assert failing(report) == ["dhan halt", "dhan clock"]
    [line] = [e for e in events if e["event"] == "readiness.checked"]
    assert line["ready"] is False
    assert any("clock" in problem for problem in line["problems"])
    metrics = await (await client.get("/metrics")).text()
    assert 'tvbridge_ready{account="dhan"} 0.0' in metrics
    received = await sink.wait_for(2)  # "halted", then "not_ready"
    texts = [m["title"] + " " + m["message"] for m in received]
    not_ready = [t for t in texts if "NOT READY" in t]
    assert not_ready
    assert "dhan clock" in not_ready[0]
    assert "dhan halt" in not_ready[0]
    assert not [t for t in texts if fake.valid_tokens & set(t.split())]


def test_the_daily_check_runs_once_on_trading_days_at_readiness_at(config: Config) -> None:
    app = web.Application()
    app[CONFIG] = config  # readiness_at 08:45 by default
    app[CALENDAR] = Calendar()

    def at(day: int, hour: int, minute: int) -> datetime:
        return datetime(2026, 11, day, hour, minute, tzinfo=EXCHANGE_TZ)

    wednesday = date(2026, 11, 25)
    assert next_check(app, at(25, 8, 44), None) is None
    assert next_check(app, at(25, 8, 45), None) == at(25, 8, 45)
    assert next_check(app, at(25, 9, 10), None) == at(25, 8, 45)  # started a little late: still checked
    assert next_check(app, at(25, 9, 16), None) is None  # the open is past: `tvbridge ready` is for that
    assert next_check(app, at(25, 8, 50), wednesday) is None  # once a day
    assert next_check(app, at(28, 8, 50), None) is None  # Saturday
    later = attrs.evolve(config, sessions=attrs.evolve(config.sessions, readiness_at="09:00"))
    app2 = web.Application()
    app2[CONFIG], app2[CALENDAR] = later, Calendar()
    assert next_check(app2, at(25, 8, 50), None) is None
    assert next_check(app2, at(25, 9, 0), None) == at(25, 9, 0)


async def test_tvbridge_ready_exits_0_when_ready_and_1_when_not(tmp_path: Path, fake: FakeDhan, master: Path) -> None:
    token = jwt((datetime.now(EXCHANGE_TZ) + timedelta(days=3)).timestamp())
    fake.valid_tokens = {token}
    (tmp_path / ".env").write_text(f"DHAN_CLIENT_ID={CLIENT_ID}\nDHAN_ACCESS_TOKEN={token}\nENABLE_DHAN=true\n")
    env = {
        "WEBHOOK_SECRET": SECRET,
        "TVBRIDGE_ACCOUNTS__DHAN__BASE_URL": fake.base_url,
        "TVBRIDGE_ACCOUNTS__DHAN__INSTRUMENTS_PATH": str(master),
        "TVBRIDGE_ACCOUNTS__DHAN__INSTRUMENTS_URL": fake.master_url,
    }
    server = ServerProcess(tmp_path, env)
    await asyncio.to_thread(server.start)
    try:
        good = await asyncio.to_thread(run_cli, tmp_path, env, "ready", "--url", server.url)
        fake.date_skew_s = -30.0
        bad = await asyncio.to_thread(run_cli, tmp_path, env, "ready", "--url", server.url)
    finally:
        code = await asyncio.to_thread(server.stop)
    assert code == 0
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.startswith("READY for the open")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "BAD dhan         clock" in bad.stdout
    assert token not in server.output + good.stdout + bad.stdout + good.stderr + bad.stderr


def test_tvbridge_status_prints_token_expiry_and_the_last_readiness() -> None:
    from tvbridge.commands.status import render  # noqa: PLC0415 - the terminal view of the summary

    summary: dict[str, Any] = {
        "server": {"version": "x", "accepting": True, "halted": False, "journal_ok": True, "started_at": "2026"},
        "brokers": [{"account": "dhan", "ok": True, "detail": "Dhan token valid"}],
        "tokens": [{"account": "dhan", "expires_at": "2026-11-26T08:12:00+05:30"}],
        "readiness": {
            "ready": False,
            "checked_at": "2026-11-25T08:45:00+05:30",
            "close_at": "2026-11-25T15:30:00+05:30",
            "accounts": [
                {
                    "account": "dhan",
                    "ready": False,
                    "checks": [
                        {"name": "token", "ok": True, "detail": ""},
                        {"name": "clock", "ok": False, "detail": "off"},
                    ],
                }
            ],
        },
        "alerts": [],
        "positions": [],
    }
    text = render(summary, "http://127.0.0.1:8080")
    assert "dhan         token expires 2026-11-26 08:12" in text
    assert "Pre-open readiness (2026-11-25 08:45 IST): NOT READY: dhan clock" in text


def test_the_close_checked_against_is_todays_until_it_passes(config: Config) -> None:
    app = web.Application()
    app[CONFIG], app[CALENDAR] = config, Calendar()
    wednesday_close = datetime(2026, 11, 25, 15, 30, tzinfo=EXCHANGE_TZ)
    assert close_of(app, datetime(2026, 11, 25, 8, 45, tzinfo=EXCHANGE_TZ)) == wednesday_close
    assert close_of(app, datetime(2026, 11, 25, 20, 0, tzinfo=EXCHANGE_TZ)) == wednesday_close + timedelta(days=1)
    assert close_of(app, datetime(2026, 11, 28, 9, 0, tzinfo=EXCHANGE_TZ)) == wednesday_close + timedelta(days=5)


async def test_an_instance_that_does_not_announce_notifies_only_its_own_problems(
    make_client: ClientFactory, config: Config, fake: FakeDhan, master: Path, sink: Sink
) -> None:
    """A follower on a shared store (announce=False): its clock is its own (the leader cannot see it), so it
    notifies that; the halt, as every instance sees it, is the leader's to notify."""
    config = attrs.evolve(live(config, fake, master), notify=NotifyConfig(urls=(sink.url,), min_interval_s=0))
    client = await make_client(config)
    fake.date_skew_s = 30.0
    halted = await client.post("/admin/halt", json={"reason": "test"}, headers=admin(config))
    assert halted.status == 200
    report = await check_readiness(client.app, announce=False)
    assert report.problems()[0].startswith("dhan halt")
    received = await sink.wait_for(2)  # "halted", then "not_ready"
    [not_ready] = [m["title"] + " " + m["message"] for m in received if "NOT READY" in m["title"] + m["message"]]
    assert "dhan clock" in not_ready
    assert "dhan halt" not in not_ready
