"""`GET /status`: the admin token guards it; it shows today's alerts; a real headless Chromium sees a new alert
appear within 2 s without a reload (server-sent events), and leaves a screenshot as a test artifact."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from helpers import ClientFactory, alert, leg, with_accounts
from ops_tools import require_tool

from tvbridge.config import Config
from tvbridge.keys import CREDENTIALS

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("TVBRIDGE_TEST_ARTIFACTS", REPO / "test-artifacts"))
Client = TestClient[web.Request, web.Application]


def basic(client: Client, token: str | None = None) -> dict[str, str]:
    assert client.app is not None
    token = token if token is not None else client.app[CREDENTIALS].admin_token
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{token}".encode()).decode()}


async def scripted_client(make_client: ClientFactory, config: Config) -> Client:
    return await make_client(with_accounts(config, {"s": {"broker": "scripted", "reject_symbols": ["BAD"]}}))


async def test_status_needs_the_admin_token(make_client: ClientFactory, config: Config) -> None:
    """Without the token, or with a wrong one, 401 with a Basic challenge (a browser asks); the webhook secret
    does not open it."""
    client = await scripted_client(make_client, config)
    for headers in ({}, basic(client, "wrong"), {"Authorization": "Bearer test-secret-0123456789abcdef"}):
        response = await client.get("/status", headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith('Basic realm="tvbridge status"')
        assert "text/html" not in response.headers["Content-Type"]
    assert (await client.get("/status/events")).status == 401
    assert (await client.get("/status/events?key=guess")).status == 401


async def test_status_shows_todays_alerts_and_their_legs(make_client: ClientFactory, config: Config) -> None:
    """With the token (Basic or Bearer): an HTML page listing each exchange's state and each of today's alerts
    with its status and legs."""
    client = await scripted_client(make_client, config)
    ok = await (await client.post("/webhook", json=alert())).json()
    bad = await (await client.post("/webhook", json=alert(leg(symbol="BAD")))).json()
    response = await client.get("/status", headers=basic(client))
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/html")
    page = await response.text()
    assert f'<tr data-alert-id="{ok["alert_id"]}" class="success">' in page
    assert f'<tr data-alert-id="{bad["alert_id"]}" class="failed">' in page
    assert "s #1 B 10 BAD: failed" in page
    assert '<tbody id="market"><tr><td>NSE</td>' in page
    assert client.app is not None
    token = client.app[CREDENTIALS].admin_token
    assert (await client.get("/status", headers={"Authorization": f"Bearer {token}"})).status == 200
    assert token not in page


@pytest.mark.parametrize("placeholder", ["__KEY__", "__ALERTS__", "__VERSION__"])
async def test_field_values_that_look_like_placeholders_stay_text(
    make_client: ClientFactory, config: Config, placeholder: str
) -> None:
    """The page is filled in one pass: an alert's symbol reading `__KEY__` (or another placeholder) is shown as
    that text, not replaced by the stream key or a whole table."""
    client = await scripted_client(make_client, config)
    await client.post("/webhook", json=alert(leg(symbol=placeholder)))
    page = await (await client.get("/status", headers=basic(client))).text()
    key = page.split("/status/events?key=", 1)[1].split('"', 1)[0]
    assert f"s #1 B 10 {placeholder}: placed" in page
    assert page.count(key) == 1
    assert page.count('<tbody id="alerts">') == 1


async def test_the_event_stream_sends_the_summary(make_client: ClientFactory, config: Config) -> None:
    """`/status/events` (the page's key in the URL) starts with the whole summary as an `event: summary`."""
    client = await scripted_client(make_client, config)
    sent = await (await client.post("/webhook", json=alert())).json()
    page = await (await client.get("/status", headers=basic(client))).text()
    key = page.split("/status/events?key=", 1)[1].split('"', 1)[0]
    response = await client.get(f"/status/events?key={key}")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    async with asyncio.timeout(10):
        assert await response.content.readline() == b"event: summary\n"
        data = json.loads((await response.content.readline()).removeprefix(b"data: "))
    response.close()
    assert [a["alert_id"] for a in data["alerts"]] == [sent["alert_id"]]
    assert data["brokers"] == [{"account": "s", "ok": True, "detail": ""}]
    assert data["server"]["accepting"] is True
    assert [m["exchange"] for m in data["market"]] == ["NSE", "BSE", "NFO", "BFO", "MCX"]


def _chrome(tmp_path: Path) -> Any:
    chromium = require_tool("chromium", "chromium")
    driver_path = require_tool("chromedriver", "chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415 - only with selenium installed

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1200,800")
    options.add_argument(f"--user-data-dir={tmp_path / 'chrome'}")
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


def _wait_for(driver: Any, script: str, timeout_s: float) -> float:
    """Poll `script` in the page until it is true; the seconds it took (bounded)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if driver.execute_script(script):
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{script!r} not true within {timeout_s} s")


async def test_a_new_alert_appears_in_chromium_within_2_s(
    make_client: ClientFactory, config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real headless Chromium opens /status with the token; an alert posted afterwards shows up on the page
    within 2 s with no reload; the screenshot is written to test-artifacts/status.png."""
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium must not try to download a browser or a driver
    client = await scripted_client(make_client, config)
    await client.post("/webhook", json=alert())
    driver = await asyncio.to_thread(_chrome, tmp_path)
    try:
        auth = basic(client)
        await asyncio.to_thread(driver.execute_cdp_cmd, "Network.enable", {})
        await asyncio.to_thread(driver.execute_cdp_cmd, "Network.setExtraHTTPHeaders", {"headers": auth})
        await asyncio.to_thread(driver.get, f"http://127.0.0.1:{client.port}/status")
        await asyncio.to_thread(_wait_for, driver, 'return document.getElementById("live").textContent === "live"', 15)
        await asyncio.to_thread(driver.execute_script, "window.loadedOnce = true")
        sent = await (await client.post("/webhook", json=alert(leg(symbol="BAD")))).json()
        row = f"return !!document.querySelector('tr[data-alert-id=\"{sent['alert_id']}\"].failed')"
        took = await asyncio.to_thread(_wait_for, driver, row, 2.0)
        assert took < 2.0
        assert await asyncio.to_thread(driver.execute_script, "return window.loadedOnce === true")  # no reload
        text = await asyncio.to_thread(driver.execute_script, 'return document.getElementById("alerts").innerText')
        assert "BAD: failed" in text
        # the order's own state, rendered by the page's script from the stream
        assert "RELIANCE: placed (S00001 filled 10)" in text
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert await asyncio.to_thread(driver.save_screenshot, str(ARTIFACTS / "status.png"))
    finally:
        await asyncio.to_thread(driver.quit)


async def test_tvbridge_status_prints_the_pages_summary(
    make_client: ClientFactory, config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tvbridge status` asks the running server with the admin token and prints health and today's alerts;
    with a wrong token it says so on stderr and exits 1."""
    import argparse  # noqa: PLC0415 - only here

    import attrs  # noqa: PLC0415 - only here

    from tvbridge.commands import status as status_command  # noqa: PLC0415 - only here
    from tvbridge.config import ServerConfig  # noqa: PLC0415 - only here

    client = await scripted_client(make_client, config)
    sent = await (await client.post("/webhook", json=alert(leg(symbol="BAD")))).json()
    assert client.app is not None
    token = client.app[CREDENTIALS].admin_token
    assert client.port is not None
    cli_config = attrs.evolve(config, server=ServerConfig(port=client.port, admin_token=token))
    args = argparse.Namespace(url=None, json=False)
    assert await asyncio.to_thread(status_command.run, args, cli_config) == 0
    out = capsys.readouterr().out
    assert f"tvbridge 0.1.0 at http://127.0.0.1:{client.port}: accepting alerts · not halted · journal ok" in out
    assert "  s            ok" in out
    assert f"{sent['alert_id']}  multi_leg_order  failed    s #1 B 10 BAD: failed" in out
    wrong = attrs.evolve(cli_config, server=ServerConfig(port=client.port, admin_token="wrong"))
    assert await asyncio.to_thread(status_command.run, args, wrong) == 1
    assert "the admin token was refused" in capsys.readouterr().err
