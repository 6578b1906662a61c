"""The status page's controls (`POST /status/actions/*`): the admin token and the page's CSRF token, nothing on
a GET, every action journaled and logged with its source; and the day's P&L worked out from the fills."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs
from helpers import alert, leg, with_accounts
from structlog.testing import capture_logs

from tvbridge.app import create_app
from tvbridge.config import SessionsConfig
from tvbridge.keys import BROKERS, CREDENTIALS, JOURNAL
from tvbridge.pnl import Fill, day_pnl
from tvbridge.secretstore import resolve_credentials

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.test_utils import TestClient
    from helpers import ClientFactory

    from tvbridge.config import Config

    Client = TestClient[web.Request, web.Application]


def basic(client: Client) -> dict[str, str]:
    assert client.app is not None
    token = client.app[CREDENTIALS].admin_token
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{token}".encode()).decode()}


async def page_csrf(client: Client) -> str:
    page = await (await client.get("/status", headers=basic(client))).text()
    found = re.search(r'const CSRF = "([0-9a-f]{64})";', page)
    assert found is not None
    return found.group(1)


async def with_csrf(client: Client) -> dict[str, str]:
    return {**basic(client), "X-CSRF-Token": await page_csrf(client)}


async def actions(client: Client) -> list[tuple[str, str, str | None]]:
    assert client.app is not None
    rows = await client.app[JOURNAL].fetch("SELECT action, detail, source FROM admin_actions ORDER BY id")
    return [(r["action"], r["detail"], r["source"]) for r in rows]


def paper(config: Config) -> Config:
    return with_accounts(config, {"paper": {"broker": "paper", "prices": {"RELIANCE": 2900}}})


async def test_a_control_without_the_csrf_token_is_refused(make_client: ClientFactory, config: Config) -> None:
    """With the admin token but without (or with a wrong) CSRF token: 403 and nothing done; without the admin
    token: 401; a GET changes nothing (405). Trading stays open and nothing is journaled."""
    client = await make_client(config)
    for headers, status in (
        (basic(client), 403),
        ({**basic(client), "X-CSRF-Token": "0" * 64}, 403),
        ({"X-CSRF-Token": await page_csrf(client)}, 401),
    ):
        response = await client.post("/status/actions/halt", json={"reason": "x"}, headers=headers)
        assert response.status == status
    assert (await client.get("/status/actions/halt", headers=await with_csrf(client))).status == 405
    assert (await client.post("/webhook", json=alert())).status == 200
    assert await actions(client) == []


async def test_halt_and_resume_from_the_page_are_journaled(make_client: ClientFactory, config: Config) -> None:
    """Halt (with its reason) stops the next alert with 503; resume lets it through; both are journaled with the
    source address and logged."""
    client = await make_client(config)
    headers = await with_csrf(client)
    with capture_logs() as logs:
        halted = await client.post("/status/actions/halt", json={"reason": "news at 2"}, headers=headers)
    assert halted.status == 200
    assert (await halted.json())["journaled"] is True
    assert [(e["action"], e["source"], e["by"]) for e in logs if e["event"] == "admin.action"] == [
        ("halt", "127.0.0.1", "status page")
    ]
    refused = await client.post("/webhook", json=alert())
    assert refused.status == 503
    assert (await client.post("/status/actions/resume", headers=headers)).status == 200
    assert (await client.post("/webhook", json=alert())).status == 200
    assert await actions(client) == [
        ("halt", '{"reason": "news at 2"}', "127.0.0.1"),
        ("resume", '{"was_halted": true}', "127.0.0.1"),
    ]


async def test_flatten_previews_then_needs_confirmation(make_client: ClientFactory, config: Config) -> None:
    """Flatten without `confirm` answers the plan and sends nothing; with `confirm: true` it closes the position
    and is journaled."""
    client = await make_client(paper(config))
    assert (await client.post("/webhook", json=alert(leg(quantity="10")))).status == 200
    headers = await with_csrf(client)
    assert client.app is not None
    broker: Any = client.app[BROKERS]["paper"]
    preview = await (await client.post("/status/actions/flatten", json={"account": "paper"}, headers=headers)).json()
    assert preview["lines"][1:] == ["  close: SELL 10 NSE RELIANCE (C) at market"]
    assert preview["done"] == []
    assert [p.net_quantity for p in await broker.positions()] == [10]
    assert await actions(client) == []
    done = await client.post("/status/actions/flatten", json={"account": "paper", "confirm": True}, headers=headers)
    assert len((await done.json())["done"]) == 1
    assert await broker.positions() == []
    assert [a[0] for a in await actions(client)] == ["flatten"]


async def test_cancel_a_queued_alert(aiohttp_client: Any, converter: Any, config: Config) -> None:
    """An alert queued while the market is closed can be cancelled from the page: its status becomes
    `cancelled` and the action is journaled; cancelling it again is a 404."""
    config = attrs.evolve(config, sessions=SessionsConfig())
    sunday = datetime(2026, 11, 29, 5, 0, tzinfo=UTC)
    client: Client = await aiohttp_client(
        create_app(config, converter, resolve_credentials(config), clock=lambda: sunday)
    )
    queued = await client.post("/webhook", json=alert())
    assert queued.status == 202
    alert_id = (await queued.json())["alert_id"]
    headers = await with_csrf(client)
    response = await client.post("/status/actions/cancel", json={"alert_id": alert_id}, headers=headers)
    assert (response.status, (await response.json())["cancelled"]) == (200, ["paper"])
    assert client.app is not None
    record = await client.app[JOURNAL].get_alert(alert_id)
    assert record is not None
    assert record["status"] == "cancelled"
    assert [a[0] for a in await actions(client)] == ["cancel_queued"]
    again = await client.post("/status/actions/cancel", json={"alert_id": alert_id}, headers=headers)
    assert again.status == 404


def test_day_pnl_average_cost() -> None:
    """Buy 10 @ 100, buy 10 @ 110 (average 105), sell 15 @ 120 (realised 225), sell 10 @ 100 (closes 5 at a loss
    of 25, then short 5 @ 100): one series point per fill; unrealised on the open short at the last price."""

    def fill(at: str, side: str, quantity: int, price: str) -> Fill:
        return Fill(at=at, account="a", exchange="NSE", symbol="X", side=side, quantity=quantity, price=Decimal(price))

    fills = [fill("1", "B", 10, "100"), fill("2", "B", 10, "110"), fill("3", "S", 15, "120"), fill("4", "S", 10, "100")]
    result = day_pnl(fills, {("NSE", "X"): Decimal(90)})
    assert [p["realised"] for p in result["series"]] == ["0.00", "0.00", "225.00", "200.00"]
    (account,) = result["accounts"]
    assert (account["realised"], account["unrealised"]) == ("200.00", "50.00")
    assert account["positions"][0] == {
        "exchange": "NSE",
        "symbol": "X",
        "net_quantity": -5,
        "average_price": "100.00",
        "realised": "200.00",
        "last_price": "90",
        "unrealised": "50.00",
    }


async def test_pnl_follows_the_paper_fills_also_for_an_exit(make_client: ClientFactory, config: Config) -> None:
    """`/status` P&L from the journal's fills equals the paper broker's own book, also when an `EXIT_ALL` leg
    (sent as a BUY) closed a long position with a sell."""
    client = await make_client(paper(config))
    for sent in (
        leg(quantity="10", price="2800"),
        leg(quantity="4", price="2850", transactionType="S"),
        leg(quantity="1", price="2900", manage_position="EXIT_ALL"),
    ):
        assert (await (await client.post("/webhook", json=alert(sent))).json())["status"] == "success"
    assert client.app is not None
    broker: Any = client.app[BROKERS]["paper"]
    (book,) = await broker.book_positions(include_flat=True)
    assert (book.net_quantity, book.realized_pnl) == (0, 800)
    response = await client.get("/status", headers={**basic(client), "Accept": "application/json"})
    pnl = (await response.json())["pnl"]
    (account,) = pnl["accounts"]
    assert (account["realised"], account["unrealised"]) == ("800.00", "0.00")
    assert account["positions"][0]["net_quantity"] == 0
    assert [p["realised"] for p in pnl["series"]] == ["0.00", "200.00", "800.00"]
