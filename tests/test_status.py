"""`GET /status`: the admin token guards it; it shows today's alerts; a real headless Chromium sees a new alert
appear within 2 s without a reload (server-sent events), and leaves a screenshot as a test artifact.

The trader's page (issue 21), in Chromium: a refused alert with its reason, a leg moving from open to filled
without a reload, P&L matching the paper fills, the charts' points, halt from the page (journaled), a control
without the CSRF token refused, nothing requested beyond 127.0.0.1, screenshots at desktop and phone width (into
`tmp_path`, and into `$TVBRIDGE_TEST_ARTIFACTS` when set)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from fake_dhan import CLIENT_ID, TOKEN, FakeDhan
from helpers import ClientFactory, alert, leg, with_accounts
from ops_tools import require_tool

from tvbridge.config import Config
from tvbridge.keys import BROKERS, CREDENTIALS, JOURNAL

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


def _chrome(tmp_path: Path, *, network_log: bool = False) -> Any:
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
    if network_log:  # every request the page makes, read back through `driver.get_log("performance")`
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
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


TYPO = "order_legs[0].quantity: must be a whole number, got 'ten'"


def _paper_config(config: Config) -> Config:
    """Paper with a reference price for RELIANCE only (a TCS limit rests); order follow-up's first look-up a
    minute away, so only the paper broker's report of the orders a later alert moved can show a fill this soon."""
    import attrs  # noqa: PLC0415 - only here

    from tvbridge.config import FollowupConfig  # noqa: PLC0415 - only here

    paper = with_accounts(config, {"paper": {"broker": "paper", "prices": {"RELIANCE": 2900}}})
    return attrs.evolve(paper, followup=FollowupConfig(first_interval_s=60, max_interval_s=60))


def _save_screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    """The screenshot in `tmp_path`, and in `$TVBRIDGE_TEST_ARTIFACTS` when that is set (CI keeps it)."""
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    if target := os.environ.get("TVBRIDGE_TEST_ARTIFACTS"):
        Path(target).mkdir(parents=True, exist_ok=True)
        (Path(target) / name).write_bytes(path.read_bytes())
    return path


def _requested_urls(driver: Any) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


async def test_the_traders_page_in_chromium(  # noqa: PLR0915 - one page, one story
    make_client: ClientFactory, config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole page in a real Chromium: refused alert with its reason; positions and P&L match the paper fills;
    the charts have one point per fill and one bar per minute and outcome; a resting limit moves to filled
    without a reload; halt from the page stops the next alert and is journaled; a control without the CSRF
    token is refused; flatten shows its plan and sends nothing until confirmed; every request stays on 127.0.0.1; phone width has no sideways scroll; screenshots."""
    monkeypatch.setenv("SE_OFFLINE", "true")
    client = await make_client(_paper_config(config))
    assert client.app is not None
    for sent in (
        alert(leg(quantity="10", price="2800")),
        alert(leg(quantity="4", price="2850", transactionType="S")),
    ):
        assert (await (await client.post("/webhook", json=sent)).json())["status"] == "success"
    resting = await (
        await client.post("/webhook", json=alert(leg(symbol="TCS", orderType="LMT", price="3000", quantity="5")))
    ).json()
    assert resting["results"][0]["order_state"] == "open"
    typo = await client.post("/webhook", json=alert(leg(quantity="ten")))
    assert typo.status == 422
    typo_id = (await typo.json())["alert_id"]

    driver = await asyncio.to_thread(_chrome, tmp_path, network_log=True)

    def run(script: str, *args: Any) -> Any:
        return driver.execute_script(script, *args)

    try:
        await asyncio.to_thread(driver.execute_cdp_cmd, "Network.enable", {})
        await asyncio.to_thread(driver.execute_cdp_cmd, "Network.setExtraHTTPHeaders", {"headers": basic(client)})
        await asyncio.to_thread(_requested_urls, driver)  # drains the log: the browser's own start page is not ours
        await asyncio.to_thread(driver.get, f"http://127.0.0.1:{client.port}/status")
        await asyncio.to_thread(_wait_for, driver, 'return document.getElementById("live").textContent === "live"', 15)
        await asyncio.to_thread(run, "window.loadedOnce = true")

        # a refused alert, with its reason in plain words and a link to its record
        reason = await asyncio.to_thread(
            run, f"return document.querySelector('tr[data-alert-id=\"{typo_id}\"].refused td.reason').textContent"
        )
        assert reason == TYPO
        outcome = await asyncio.to_thread(
            run, f"return document.querySelector('tr[data-alert-id=\"{typo_id}\"]').children[3].textContent"
        )
        assert outcome == "refused 422"
        # times in IST to the second, UTC on hover
        stamp = await asyncio.to_thread(
            run,
            f"const t = document.querySelector('tr[data-alert-id=\"{typo_id}\"] time');"
            " return [t.getAttribute('datetime'), t.textContent, t.title];",
        )
        moment = datetime.fromisoformat(stamp[0])
        assert stamp[1] == moment.astimezone(ZoneInfo("Asia/Kolkata")).strftime("%H:%M:%S")
        assert stamp[2] == moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

        # positions and P&L from the fills, as the paper broker's own book has them
        broker: Any = client.app[BROKERS]["paper"]
        (book,) = [p for p in await broker.book_positions() if p.symbol == "RELIANCE"]
        assert (book.net_quantity, book.average_price, book.realized_pnl) == (6, 2800, 200)
        cells = "return [...document.querySelectorAll('#pnl tr[data-symbol=\"RELIANCE\"] td')].map(c => c.innerText)"
        assert await asyncio.to_thread(run, cells) == [
            "paper",
            "NSE RELIANCE",
            "6",
            "2800.00",
            "2850",
            "200.00",
            "300.00",
        ]
        headers = await asyncio.to_thread(run, "return [...document.querySelectorAll('th')].map(h => h.innerText)")
        assert {"net qty", "avg price", "realised", "unrealised"} <= set(headers)

        # the charts: one point per fill so far (2), one bar per minute and outcome
        summary = await (await client.get("/status", headers={**basic(client), "Accept": "application/json"})).json()
        assert len(summary["pnl"]["series"]) == 2
        assert await asyncio.to_thread(run, "return document.querySelectorAll('#pnl-chart circle.point').length") == 2
        bars = await asyncio.to_thread(run, "return document.querySelectorAll('#rate-chart rect.bar').length")
        assert bars == len(summary["per_minute"]) >= 2
        assert sum(p["count"] for p in summary["per_minute"]) == 4

        # a leg moves from open to filled without a reload: a later alert's price crosses the resting limit
        leg_text = f"return document.querySelector('tr[data-alert-id=\"{resting['alert_id']}\"] li').textContent"
        assert (await asyncio.to_thread(run, leg_text)).endswith(" open)")
        later = alert(leg(symbol="TCS", orderType="LMT", price="2990", quantity="5", transactionType="S"))
        assert (await client.post("/webhook", json=later)).status == 200
        filled = leg_text.replace(".textContent", ".textContent.endsWith(' filled 5 @ 3000)')")
        await asyncio.to_thread(_wait_for, driver, filled, 10)
        await asyncio.to_thread(
            _wait_for, driver, "return document.querySelectorAll('#pnl-chart circle').length === 3", 5
        )
        assert await asyncio.to_thread(run, "return window.loadedOnce === true")

        # halt from the page: the next alert is refused (and listed), the action is journaled with its source
        await asyncio.to_thread(run, "document.getElementById('halt-reason').value = 'lunch break'")
        await asyncio.to_thread(run, "document.getElementById('halt').click()")
        await asyncio.to_thread(
            _wait_for, driver, "return document.getElementById('halt-state').textContent.includes('lunch break')", 10
        )
        stopped = await client.post("/webhook", json=alert())
        assert stopped.status == 503
        stopped_id = (await stopped.json())["alert_id"]
        row = f"document.querySelector('tr[data-alert-id=\"{stopped_id}\"].refused td.reason')"
        await asyncio.to_thread(
            _wait_for, driver, f"return {row} !== null && {row}.textContent === 'trading halted: lunch break'", 10
        )
        journaled = [
            tuple(r) for r in await client.app[JOURNAL].fetch("SELECT action, detail, source, by FROM admin_actions")
        ]
        assert journaled == [("halt", '{"reason": "lunch break"}', "127.0.0.1", "status page")]

        # a control posted from the page's own origin without the CSRF token: 403, still halted
        status = await asyncio.to_thread(
            driver.execute_async_script,
            "const done = arguments[0];"
            "fetch('/status/actions/resume', {method: 'POST', body: '{}'}).then(r => done(r.status));",
        )
        assert status == 403
        assert (await client.post("/webhook", json=alert())).status == 503

        # nothing left 127.0.0.1 while the page loaded and ran
        urls = await asyncio.to_thread(_requested_urls, driver)
        assert f"http://127.0.0.1:{client.port}/status" in urls
        assert any("/status/events?key=" in url for url in urls)
        assert [u for u in urls if not u.startswith(f"http://127.0.0.1:{client.port}/")] == []

        # flatten: the preview first, nothing sent until the explicit confirmation
        await asyncio.to_thread(run, "document.querySelector('button[data-flatten=\"paper\"]').click()")
        preview = "document.getElementById('flatten-preview')"
        await asyncio.to_thread(
            _wait_for,
            driver,
            f"return !{preview}.hidden && {preview}.textContent.includes('close: SELL 6 NSE RELIANCE')",
            10,
        )
        assert sorted(p.net_quantity for p in await broker.positions()) == [5, 6]

        # desktop, phone width (no sideways scroll), and dark mode: screenshots for review
        await asyncio.to_thread(driver.set_window_size, 1280, 2200)
        await asyncio.to_thread(_save_screenshot, driver, tmp_path, "status-desktop.png")
        phone = {"width": 390, "height": 2600, "deviceScaleFactor": 1, "mobile": True}
        await asyncio.to_thread(driver.execute_cdp_cmd, "Emulation.setDeviceMetricsOverride", phone)
        assert await asyncio.to_thread(run, "return document.documentElement.scrollWidth") <= 390
        # the alerts stack into one card per alert: readable without scrolling sideways
        assert await asyncio.to_thread(run, "return document.querySelector('table.stack').scrollWidth") <= 390
        await asyncio.to_thread(_save_screenshot, driver, tmp_path, "status-phone.png")
        light = await asyncio.to_thread(run, "return getComputedStyle(document.body).backgroundColor")
        dark_media = {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
        await asyncio.to_thread(driver.execute_cdp_cmd, "Emulation.setEmulatedMedia", dark_media)
        assert await asyncio.to_thread(run, "return getComputedStyle(document.body).backgroundColor") != light
        await asyncio.to_thread(_save_screenshot, driver, tmp_path, "status-phone-dark.png")

        await asyncio.to_thread(run, "document.querySelector('button[data-confirm-flatten=\"paper\"]').click()")
        await asyncio.to_thread(_wait_for, driver, f"return {preview}.textContent.startsWith('Done:')", 10)
        assert await broker.positions() == []
        assert await broker.orders(resting_only=True) == []
        actions = [r[0] for r in await client.app[JOURNAL].fetch("SELECT action FROM admin_actions ORDER BY id")]
        assert actions == ["halt", "flatten"]
    finally:
        await asyncio.to_thread(driver.quit)


@pytest.fixture
async def fake_dhan() -> AsyncIterator[FakeDhan]:
    fake = FakeDhan()
    await fake.start()
    yield fake
    await fake.close()


async def test_a_leg_fills_on_the_page_with_no_new_alert(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Dhan limit order (the real dhanhq client against the fake Dhan API) is `open` on the page; the
    exchange fills it later (no alert arrives): order follow-up records it and the open page shows the leg
    filled with its quantity and price, without a reload, through the event stream alone; so does a halt made
    outside the page. The alert's link opens its record as a page."""
    import attrs  # noqa: PLC0415 - only here

    from tvbridge.config import FollowupConfig  # noqa: PLC0415 - only here
    from tvbridge_brokers.dhan.instruments import sample_master_path  # noqa: PLC0415 - only here

    monkeypatch.setenv("SE_OFFLINE", "true")
    master = tmp_path / "master.csv"
    shutil.copyfile(sample_master_path(), master)
    account = {
        "broker": "dhan",
        "client_id": CLIENT_ID,
        "access_token": TOKEN,
        "live": True,
        "base_url": fake_dhan.base_url,
        "instruments_path": str(master),
        "timeout_s": 5,
        "max_orders_per_s": 1000,
    }
    dhan = with_accounts(config, {"dhan": account})
    client = await make_client(attrs.evolve(dhan, followup=FollowupConfig(first_interval_s=0.05, max_interval_s=0.2)))
    answer = await (await client.post("/webhook", json=alert(leg(orderType="LMT", price="2800")))).json()
    assert answer["status"] == "success", answer
    order_id = answer["results"][0]["order_id"]
    leg_text = f"return document.querySelector('tr[data-alert-id=\"{answer['alert_id']}\"] li').textContent"
    driver = await asyncio.to_thread(_chrome, tmp_path)
    try:
        await asyncio.to_thread(driver.execute_cdp_cmd, "Network.enable", {})
        await asyncio.to_thread(driver.execute_cdp_cmd, "Network.setExtraHTTPHeaders", {"headers": basic(client)})
        await asyncio.to_thread(driver.get, f"http://127.0.0.1:{client.port}/status")
        await asyncio.to_thread(_wait_for, driver, 'return document.getElementById("live").textContent === "live"', 15)
        await asyncio.to_thread(driver.execute_script, "window.loadedOnce = true")
        assert (await asyncio.to_thread(driver.execute_script, leg_text)).endswith(f"({order_id} open)")
        fake_dhan.trade(order_id, price="2799.5")
        filled = leg_text.replace(".textContent", f".textContent.endsWith('({order_id} filled 10 @ 2799.5)')")
        await asyncio.to_thread(_wait_for, driver, filled, 15)
        assert await asyncio.to_thread(driver.execute_script, "return window.loadedOnce === true")
        count = await asyncio.to_thread(driver.execute_script, "return document.getElementById('count').textContent")
        assert count == "(1)"
        # a halt made outside the page (`tvbridge halt` writes the halt file) shows too
        from tvbridge.halt import halt_path, set_halt  # noqa: PLC0415 - only here

        set_halt(halt_path(dhan.server.data_dir), reason="halted from the CLI", by="cli")
        shown = "return document.getElementById('halt-state').textContent.includes('halted from the CLI')"
        await asyncio.to_thread(_wait_for, driver, shown, 10)
        # the alert's link opens its record as a page (the browser asks for HTML), with the filled order
        link = f"document.querySelector('tr[data-alert-id=\"{answer['alert_id']}\"] a').click()"
        await asyncio.to_thread(driver.execute_script, link)
        await asyncio.to_thread(_wait_for, driver, "return document.getElementById('outcome') !== null", 10)
        assert (
            await asyncio.to_thread(driver.execute_script, "return document.getElementById('outcome').textContent")
            == "success"
        )
        cells = "return [...document.querySelectorAll('tbody td')].map(c => c.textContent)"
        assert (await asyncio.to_thread(driver.execute_script, cells))[7:10] == ["filled", "10", "2799.5"]
        await asyncio.to_thread(_save_screenshot, driver, tmp_path, "alert-page.png")
    finally:
        await asyncio.to_thread(driver.quit)


async def test_cancel_a_queued_alert_from_the_page(
    aiohttp_client: Any, converter: Any, config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a Sunday an alert waits in the queue; its row has a Cancel button; pressing it removes it from the queue
    (the row turns `cancelled`, live) and nothing is sent at the open."""
    import attrs  # noqa: PLC0415 - only here

    from tvbridge.app import create_app  # noqa: PLC0415 - only here
    from tvbridge.config import SessionsConfig  # noqa: PLC0415 - only here
    from tvbridge.keys import SCHEDULER  # noqa: PLC0415 - only here
    from tvbridge.secretstore import resolve_credentials  # noqa: PLC0415 - only here

    monkeypatch.setenv("SE_OFFLINE", "true")
    config = attrs.evolve(config, sessions=SessionsConfig())
    moment = {"now": datetime(2026, 11, 29, 5, 0, tzinfo=UTC)}  # Sunday 10:30 IST
    app = create_app(config, converter, resolve_credentials(config), clock=lambda: moment["now"])
    client: Client = await aiohttp_client(app)
    queued = await client.post("/webhook", json=alert())
    assert queued.status == 202
    alert_id = (await queued.json())["alert_id"]
    driver = await asyncio.to_thread(_chrome, tmp_path)
    try:
        await asyncio.to_thread(driver.execute_cdp_cmd, "Network.enable", {})
        await asyncio.to_thread(driver.execute_cdp_cmd, "Network.setExtraHTTPHeaders", {"headers": basic(client)})
        await asyncio.to_thread(driver.get, f"http://127.0.0.1:{client.port}/status")
        await asyncio.to_thread(_wait_for, driver, 'return document.getElementById("live").textContent === "live"', 15)
        button = f"document.querySelector('tr[data-alert-id=\"{alert_id}\"].queued button[data-cancel]')"
        await asyncio.to_thread(driver.execute_script, f"{button}.click()")
        row = f"return document.querySelector('tr[data-alert-id=\"{alert_id}\"].cancelled') !== null"
        await asyncio.to_thread(_wait_for, driver, row, 10)
    finally:
        await asyncio.to_thread(driver.quit)
    moment["now"] = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)  # Monday 09:30 IST: the market is open
    assert await client.app[SCHEDULER].run_due() == 0
    broker: Any = client.app[BROKERS]["paper"]
    assert await broker.orders() == []
    actions = [r[0] for r in await client.app[JOURNAL].fetch("SELECT action FROM admin_actions ORDER BY id")]
    assert actions == ["cancel_queued"]
